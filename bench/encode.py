"""Encode throughput, llm2vec-jax vs the PyTorch reference, in one run.

SmolLM2-135M (converted from the GGUF once into the cache dir), bidirectional, mean pooling,
max_length 128, batch 32, on the 512 sentences of tests/fixtures/smollm2; fp32 and bf16. The two
sides alternate, each configuration in its own subprocess (so peak RSS is per side and per
dtype); each subprocess does ``--warmup`` untimed passes over all sentences (ours: compiles)
and reports the median of ``--passes`` timed ones.

    python bench/encode.py                       # full run, writes bench/results/encode-<date>.json
    python bench/encode.py --limit 64 --passes 1 # smoke run
    python bench/encode.py --sides ours          # only our side (no reference venv needed)

The reference side runs in the venv made by bench/setup_reference_env.sh
(``--ref-venv`` / $LLM2VEC_REF_VENV, default ~/.cache/llm2vec-jax/refvenv).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


# ---------------------------------------------------------------------------- our side (worker)


def ours_encode(model_dir: str, sentences: str, dtype: str, limit, warmup: int, passes: int,
                batch_size: int, max_length: int, save_embeddings: str | None) -> dict:
    import resource

    import jax
    import numpy as np

    try:
        from llm2vec_jax import LLM2Vec
    except ImportError:  # until the package root exports it
        from llm2vec_jax.encoder import LLM2Vec

    t0 = time.perf_counter()
    model = LLM2Vec.from_pretrained(model_dir, pooling_mode="mean", max_length=max_length, dtype=dtype)
    load_s = time.perf_counter() - t0
    with open(sentences) as fh:
        texts = [l.rstrip("\n") for l in fh if l.strip()]
    texts = texts[:limit] if limit else texts
    real_tokens = int(model.tokenize(texts)["attention_mask"].sum())

    times, first_s, emb = [], None, None
    for i in range(warmup + passes):
        t = time.perf_counter()
        emb = model.encode(texts, batch_size=batch_size, show_progress_bar=False)
        dt = time.perf_counter() - t
        if i == 0:
            first_s = dt  # includes XLA compilation of every bucket shape
        if i >= warmup:
            times.append(dt)
    med = statistics.median(times)
    out = {
        "bench": "encode", "side": "ours", "dtype": dtype, "n_sentences": len(texts),
        "batch_size": batch_size, "max_length": max_length, "real_tokens": real_tokens,
        "warmup": warmup, "passes": passes, "load_s": round(load_s, 2),
        "first_pass_s": round(first_s, 3), "median_s": med, "min_s": min(times), "max_s": max(times),
        "times_s": [round(t, 4) for t in times],
        "tokens_per_s": real_tokens / med, "sentences_per_s": len(texts) / med,
        "compilations": getattr(model, "num_compilations", None),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "versions": {"jax": jax.__version__, "backend": jax.default_backend(),
                     "devices": [str(d) for d in jax.devices()]},
    }
    if save_embeddings:
        np.save(save_embeddings, emb)
        out["embeddings"] = save_embeddings
    return out


# ---------------------------------------------------------------------------- driver


def _shared_args(a, emb_path) -> list[str]:
    return ((["--limit", str(a.limit)] if a.limit else [])
            + (["--save-embeddings", emb_path] if emb_path else []))


def _ours_cmd(a, model_dir, dtype, emb_path):
    cmd = [sys.executable, __file__, "--worker", "--model-dir", str(model_dir), "--sentences", str(a.sentences),
           "--dtypes", dtype, "--warmup", str(a.warmup), "--passes", str(a.passes),
           "--batch-size", str(a.batch_size), "--max-length", str(a.max_length)]
    return cmd + _shared_args(a, emb_path)


def _ref_cmd(a, ref_dir, dtype, emb_path):
    cmd = [common.ref_python(a.ref_venv), str(common.BENCH_DIR / "reference_side.py"), "encode",
           "--model-dir", str(ref_dir), "--sentences", str(a.sentences), "--dtype", dtype,
           "--warmup", str(a.warmup), "--passes", str(a.passes),
           "--batch-size", str(a.batch_size), "--max-length", str(a.max_length)]
    return cmd + _shared_args(a, emb_path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sentences", default=str(common.SENTENCES_512))
    p.add_argument("--limit", type=int, default=None, help="first N sentences only (smoke runs)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--sides", default="ours,ref")
    p.add_argument("--rounds", type=int, default=1, help="times each side/config is run (alternating order)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--ref-venv", default=None)
    p.add_argument("--cache-dir", default=str(common.CACHE_DIR))
    p.add_argument("--timeout", type=float, default=3600, help="per subprocess, seconds")
    p.add_argument("--compare-embeddings", action="store_true",
                   help="also save both sides' embeddings and report max |ours - ref| per dtype")
    p.add_argument("--name", default="encode")
    # worker mode: our side in its own process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--save-embeddings", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        print(json.dumps(ours_encode(a.model_dir, a.sentences, a.dtypes, a.limit, a.warmup, a.passes,
                                     a.batch_size, a.max_length, a.save_embeddings)), flush=True)
        return

    state, hf_dir, sides, ref_dir = common.prepare_run(a)
    dtypes = common.split_list(a.dtypes)
    emb_dir = Path(a.cache_dir) / "bench-embeddings"
    if a.compare_embeddings:
        emb_dir.mkdir(parents=True, exist_ok=True)

    runs: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(a.rounds):
        for i, dtype in enumerate(dtypes):
            # Alternate who goes first so drift in machine load does not favour one side.
            order = sides if (rnd + i) % 2 == 0 else sides[::-1]
            for side in order:
                emb = str(emb_dir / f"{side}-{dtype}.npy") if a.compare_embeddings else None
                cmd = _ours_cmd(a, hf_dir, dtype, emb) if side == "ours" else _ref_cmd(a, ref_dir, dtype, emb)
                print(f"[round {rnd + 1}/{a.rounds}] {side} {dtype} ...", file=sys.stderr, flush=True)
                r = common.run_side(cmd, a.timeout, common.hugepage_env(side == "ours"))
                if "error" in r:
                    print(f"   {side} {dtype} failed: {r['error'][-400:]}", file=sys.stderr)
                else:
                    print(f"   {r['tokens_per_s']:.1f} tok/s, median {r['median_s']:.3f} s, "
                          f"peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
                runs.setdefault((dtype, side), []).append(r)

    rows = []
    for dtype in dtypes:
        row = {"config": f"encode {dtype}"}
        for side in sides:
            row["ours" if side == "ours" else "ref"] = common.combine_runs(
                runs.get((dtype, side), []), lambda r: r["real_tokens"], lambda r: r["n_sentences"])
        if a.compare_embeddings and len(sides) == 2:
            try:
                import numpy as np

                o = np.load(emb_dir / f"ours-{dtype}.npy")
                f = np.load(emb_dir / f"ref-{dtype}.npy")
                cos = (o * f).sum(1) / (np.linalg.norm(o, axis=1) * np.linalg.norm(f, axis=1))
                row["max_abs_diff"] = float(np.abs(o - f).max())
                row["min_cosine"] = float(cos.min())
            except Exception as e:
                row["embedding_compare_error"] = str(e)
        rows.append(row)

    state_after = common.machine_state()
    payload = {
        "bench": "encode", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized, fp32 checkpoint)",
        "model_dir": str(hf_dir), "reference_model_dir": str(ref_dir) if ref_dir else None,
        "sentences": a.sentences, "limit": a.limit, "args": vars(a),
        "machine_before": state, "machine_after": state_after,
        "timings_valid": bool(state["idle"] and state_after["idle"]),
        "rows": rows,
    }
    path = common.write_results(a.name, payload)
    table = common.markdown_table(rows)
    print(table)
    for r in rows:
        if "max_abs_diff" in r:
            print(f"{r['config']}: max |ours-ref| = {r['max_abs_diff']:.2e}, min cosine = {r['min_cosine']:.6f}")
    if not payload["timings_valid"]:
        print("\n**machine was busy during this run: numbers are smoke-test only**")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
