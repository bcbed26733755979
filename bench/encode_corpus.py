"""Corpus encoding (``llm2vec_jax.encode_corpus``) vs ``encode()`` on the same texts, and the
PyTorch reference's ``encode()``, in one run: passages/s and peak RSS per size.

SmolLM2-135M, bidirectional, mean pooling, max_length 128, batch 32, float32 embeddings,
on the English Wikipedia sentences of ../shared/data/wikipedia_sentences_gd (14,041 lines;
sizes above that cycle through them again, and the result says so). Every measurement runs
in its own subprocess (peak RSS is per run) and includes loading and XLA compilation: a
corpus job is one cold run. Peak RSS growth between sizes is what streaming must keep small
(host memory independent of corpus size: about one output shard).

    python bench/encode_corpus.py --sizes 10000,100000 [--shard-size 10000] [--sides ours,ref]
        (the corpus job on every size; encode() and the reference on the first size)
    python bench/encode_corpus.py --sizes 300,600 --shard-size 200 --sides ours   # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

WIKI = common.REPO_ROOT.parent / "shared" / "data" / "wikipedia_sentences_gd" / "wiki_sentences.dedup.txt"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(mode: str, model_dir: str, texts_file: str, out_dir: str, a) -> dict:
    from llm2vec_jax.encoder import LLM2Vec

    t0 = time.perf_counter()
    encoder = LLM2Vec.from_pretrained(model_dir, pooling_mode="mean", max_length=a.max_length)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    by_shard = None
    if mode == "corpus":
        from llm2vec_jax.corpus import ShardFormat, encode_corpus
        with _PeakPerShard(out_dir) as by_shard:
            manifest = encode_corpus(encoder, texts_file, out_dir,
                                     ShardFormat(shard_size=a.shard_size), input_fmt="text",
                                     batch_size=a.batch_size, progress=False)
        n = manifest["count"]
    else:
        with open(texts_file, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f]
        n = len(encoder.encode(texts, batch_size=a.batch_size, show_progress_bar=False))
    seconds = time.perf_counter() - t0
    return {"mode": mode, "n": n, "load_s": round(load_s, 2), "encode_s": round(seconds, 2),
            "passages_per_s": n / seconds, "peak_rss_mb": round(_peak_rss_mb(), 1),
            "compilations": encoder.num_compilations,
            **({"peak_rss_mb_by_shard": by_shard.peaks} if by_shard is not None else {})}


class _PeakPerShard:
    """The process's peak RSS as each shard's record appears in ``out_dir`` (polled): growth
    after the first shard is what the corpus job adds as it goes on, apart from the
    compile-time peak of its first shard, which differs between processes by tens of MiB."""

    def __init__(self, out_dir: str, every_s: float = 0.5):
        self.out_dir, self.every_s, self.peaks = out_dir, every_s, []
        self._stop = threading.Event()

    def _record(self):
        from llm2vec_jax.corpus import shard_record
        while shard_record(self.out_dir, len(self.peaks)) is not None:
            self.peaks.append(round(_peak_rss_mb(), 1))

    def _poll(self):
        while not self._stop.wait(self.every_s):
            self._record()

    def __enter__(self):
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._record()


def write_texts(path: Path, n: int, source: str) -> bool:
    """The first ``n`` sentences of ``source``, cycling through them again past the end;
    True if it had to cycle."""
    with open(source, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    path.write_text("\n".join(itertools.islice(itertools.cycle(lines), n)) + "\n", encoding="utf-8")
    return n > len(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--data", default=str(WIKI), help="one sentence a line")
    p.add_argument("--sides", default="ours,ref",
                   help="ours: the corpus job on every size, encode() on the first; ref: the "
                        "reference's encode() on the first size")
    p.add_argument("--shard-size", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--ref-venv", default=None)
    p.add_argument("--cache-dir", default=str(common.CACHE_DIR))
    p.add_argument("--timeout", type=float, default=6 * 3600, help="per subprocess, seconds")
    p.add_argument("--name", default="encode_corpus")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--texts", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.model_dir, a.texts, a.out, a)), flush=True)
        return

    state, hf_dir, sides, ref_dir = common.prepare_run(a)
    sizes = [int(s) for s in common.split_list(a.sizes)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        for i, n in enumerate(sizes):
            texts = Path(tmp) / f"texts-{n}.txt"
            row = {"n": n, "cycled": write_texts(texts, n, a.data)}
            # encode() and the reference on the first size only: the corpus job is what
            # must scale, and the reference is slow on a CPU.
            runs = (["corpus"] + (["encode"] if i == 0 else [])) if "ours" in sides else []
            if "ref" in sides and i == 0:
                runs.append("ref")
            for mode in runs:
                if mode == "ref":
                    cmd = [common.ref_python(a.ref_venv), str(common.BENCH_DIR / "reference_side.py"),
                           "encode", "--model-dir", str(ref_dir), "--sentences", str(texts),
                           "--dtype", "float32", "--warmup", "0", "--passes", "1",
                           "--batch-size", str(a.batch_size), "--max-length", str(a.max_length)]
                else:
                    cmd = [sys.executable, __file__, "--worker", mode, "--model-dir", str(hf_dir),
                           "--texts", str(texts), "--out", str(Path(tmp) / f"out-{n}"),
                           "--shard-size", str(a.shard_size), "--batch-size", str(a.batch_size),
                           "--max-length", str(a.max_length)]
                print(f"{mode} n={n} ...", file=sys.stderr, flush=True)
                r = common.run_side(cmd, a.timeout, common.hugepage_env(mode != "ref"))
                if mode == "ref" and "error" not in r:
                    r = {"n": r["n_sentences"], "encode_s": r["median_s"],
                         "passages_per_s": r["sentences_per_s"], "peak_rss_mb": r["peak_rss_mb"],
                         "load_s": r["load_s"]}
                print(f"   {json.dumps(r)[:300]}", file=sys.stderr, flush=True)
                row[mode] = r
            rate = {m: row[m]["passages_per_s"] for m in runs if "error" not in row[m]}
            for m, base in (("corpus", "encode"), ("corpus", "ref"), ("encode", "ref")):
                if m in rate and base in rate:
                    row[f"{m}_vs_{base}"] = rate[m] / rate[base]
            rows.append(row)
    shard_mb = a.shard_size * 576 * 4 / 2 ** 20  # SmolLM2: D = 576, float32
    growth = (rows[-1]["corpus"]["peak_rss_mb"] - rows[0]["corpus"]["peak_rss_mb"]
              if len(rows) > 1 and "ours" in sides else None)
    # Within the largest run: its peak at the end minus its peak when the first shard was
    # written (free of the first shard's compile-time peak, which varies between processes).
    by_shard = rows[-1].get("corpus", {}).get("peak_rss_mb_by_shard") if rows else None
    growth_within = by_shard[-1] - by_shard[0] if by_shard else None
    state_after = common.machine_state()
    payload = {"bench": "encode_corpus", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "model": "SmolLM2-135M-Instruct", "data": a.data, "args": vars(a),
               "shard_mb": shard_mb, "corpus_rss_growth_mb": growth,
               "corpus_rss_growth_after_first_shard_mb": growth_within,
               "machine_before": state, "machine_after": state_after,
               "timings_valid": bool(state["idle"] and state_after["idle"]), "rows": rows}
    path = common.write_results(a.name, payload)
    for r in rows:
        print(json.dumps({k: (v if not isinstance(v, dict) else
                              {x: v.get(x) for x in ("passages_per_s", "peak_rss_mb", "error")})
                          for k, v in r.items()}))
    print(f"corpus peak RSS growth {growth} MB over sizes {sizes}, {growth_within} MB after the "
          f"largest run's first shard (one shard: {shard_mb:.1f} MB)")
    if not payload["timings_valid"]:
        print("**machine was busy during this run: numbers are smoke-test only**")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
