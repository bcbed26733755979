"""The paper's word-level trend at our scale: POS accuracy of a linear probe on SmolLM2-135M's
frozen word vectors, for causal attention, bidirectional attention (untrained), bidirectional
+ MNTP and the final recipe encoder (MNTP + SimCSE).

    python bench/word_probe.py                       # every row whose adapter exists
    python bench/word_probe.py --rows mntp,final     # add rows to the same results file

Data: UD English Web Treebank dev (``../shared/data/ud_ewt``, UPOS), split here into train /
early-stopping dev / test sentences (seeded; ``llm2vec_jax.word_tasks.load_word_task``). The
MNTP adapter and the final encoder are the ablation grid's (``bench/ablation_grid.py``, seed 0:
``mntp/adapter`` and ``encoder``); their budgets are read from the grid's stage configs.

Token states are extracted once per model (``encode(output_value="token_embeddings")``) and
each alignment's word vectors derived from them (mean over subwords, as the reference). Every
row is scored on all test words and on the words after each sentence's first (the words every
alignment has a vector for: SmolLM2 adds no BOS, so ``next_token`` has none for a first word).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from llm2vec_jax.checkpoints.merged import load_merged  # noqa: E402
from llm2vec_jax.encoder import LLM2Vec  # noqa: E402
from llm2vec_jax.text.words import TokenEmbeddings, join_words, word_embeddings  # noqa: E402
from llm2vec_jax.word_probe import ProbeConfig, probe_word_task, stack_words  # noqa: E402
from llm2vec_jax.word_tasks import load_word_task  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SHARED = REPO.parent / "shared" / "data"
ROWS = ("causal", "bidirectional", "mntp", "final")
ALIGNMENTS = ("same_token", "next_token")


def load_row(row: str, grid: Path, dtype: str) -> tuple[LLM2Vec, dict]:
    """The encoder of a table row, and where its weights came from (with training budgets)."""
    if row in ("causal", "bidirectional"):
        return (LLM2Vec.from_pretrained("smollm2", bidirectional=row == "bidirectional",
                                        dtype=dtype), {"model": "smollm2"})
    mntp = {"mntp_budget": budget(grid / "mntp")}
    if row == "mntp":
        adapter = grid / "mntp" / "adapter"
        return (LLM2Vec.from_pretrained("smollm2", adapter=adapter, bidirectional=True,
                                        dtype=dtype), {"adapter": str(adapter), **mntp})
    source = {**mntp, "simcse_budget": budget(grid / "simcse")}
    encoder = grid / "encoder"
    if encoder.is_dir():
        return LLM2Vec.from_pretrained(encoder, dtype=dtype), {"encoder": str(encoder), **source}
    # The grid exports the encoder after its last stage; until then, the same merge of the
    # stage adapters (base + MNTP + SimCSE) that the export writes.
    chain = [str(grid / "mntp" / "adapter"), str(grid / "simcse" / "adapter")]
    directory, model = load_merged("smollm2", chain, dtype=dtype)
    return (LLM2Vec.from_loaded(model, directory, bidirectional=True),
            {"adapters": chain, **source})


def budget(stage_dir: Path) -> dict:
    """A grid stage's training budget, from the config it ran with."""
    with open(stage_dir / "train_config.json", encoding="utf-8") as f:
        config = json.load(f)
    return {"steps": config["run"]["max_steps"], "batch": config["run"]["global_batch_size"],
            "max_seq_length": config["data"].get("max_seq_length"),
            "contrastive_max_length": config["contrastive"].get("max_length"),
            "data": config["data"].get("path")}


def run_row(row: str, splits: dict, grid: Path, args) -> dict:
    encoder, source = load_row(row, grid, args.dtype)
    names = list(splits)
    sentences = [s for n in names for s in splits[n]]
    texts, spans = zip(*(join_words(s.words) for s in sentences))
    n_words = sum(len(s.words) for s in sentences)
    out = {**source, "bidirectional": encoder.bidirectional}
    key = hashlib.sha256(json.dumps([row, args.data, args.seed, source,
                                     _newest(grid, row)]).encode()).hexdigest()[:16]
    states = Path(args.states_dir) / f"{row}-{key}.npz"
    if states.is_file():  # token states of an earlier run: only the probes run again
        with np.load(states) as f:
            tokens = [TokenEmbeddings(e, o, i) for e, o, i in zip(
                *(np.split(f[k], np.cumsum(f["lengths"])[:-1]) for k in ("emb", "off", "ids")))]
        with open(states.with_suffix(".json"), encoding="utf-8") as f:
            out["extraction"] = json.load(f)
    else:
        start = time.perf_counter()
        tokens = encoder.encode(list(texts), batch_size=args.batch_size,
                                show_progress_bar=False, output_value="token_embeddings")
        seconds = time.perf_counter() - start
        out["extraction"] = {
            "words": n_words, "tokens": int(sum(len(t) for t in tokens)), "seconds": seconds,
            "words_per_s": n_words / seconds, "note": "one pass, compilation included",
            "load_average": os.getloadavg()}
        states.parent.mkdir(parents=True, exist_ok=True)
        np.savez(states, emb=np.concatenate([t.embeddings for t in tokens]),
                 off=np.concatenate([t.offsets for t in tokens]),
                 ids=np.concatenate([t.token_ids for t in tokens]),
                 lengths=np.asarray([len(t) for t in tokens]))
        states.with_suffix(".json").write_text(json.dumps(out["extraction"]))
    if args.speed:
        k = args.speed
        out["extraction"]["warm"] = speed(encoder, list(texts[:k]),
                                          sum(len(s.words) for s in sentences[:k]),
                                          args.batch_size)
    bounds = np.cumsum([0] + [len(splits[n]) for n in names])
    for alignment in ALIGNMENTS:
        words = [word_embeddings(t, s, alignment=alignment) for t, s in zip(tokens, spans)]
        feats = {n: stack_words(words[a:b], encoder.hidden_size)
                 for n, a, b in zip(names, bounds[:-1], bounds[1:])}
        runs = []
        for seed in range(args.probe_seeds):  # the head's init order and batches vary
            result = probe_word_task(feats["train"], feats["dev"], feats["test"],
                                     splits["train"], splits["dev"], splits["test"],
                                     spans=False, config=ProbeConfig(seed=seed))
            hits = [[p == g for p, g in zip(pred, s.tags)]
                    for pred, s in zip(result.pop("predicted"), splits["test"])]
            result["accuracy_after_first_word"] = float(np.mean([h for s in hits
                                                                 for h in s[1:]]))
            runs.append(result)
        out[alignment] = {**runs[0], "probe_seeds": runs}
        for key in ("accuracy", "accuracy_after_first_word"):
            values = [r[key] for r in runs]
            out[alignment][key] = float(np.mean(values))
            out[alignment][key + "_range"] = [min(values), max(values)]
        print(f"{row:14s} {alignment:11s} accuracy {out[alignment]['accuracy']:.4f}  after "
              f"first word {out[alignment]['accuracy_after_first_word']:.4f}  "
              f"({args.probe_seeds} probe seeds)", flush=True)
    return out


def _newest(grid: Path, row: str) -> float:
    """When the row's trained weights were last written (0 for the untrained rows)."""
    directory = {"mntp": grid / "mntp" / "adapter", "final": grid / "encoder"}.get(row)
    if row == "final" and not directory.is_dir():
        directory = grid / "simcse" / "adapter"
    if directory is None:
        return 0.0
    return max((p.stat().st_mtime for p in directory.iterdir() if p.is_file()), default=0.0)


def speed(encoder: LLM2Vec, texts: list[str], n_words: int, batch_size: int) -> dict:
    """Warm (compiled) passes: token states vs pooled sentence embeddings, same texts."""
    out = {"sentences": len(texts), "words": n_words}
    for value in ("token_embeddings", "sentence_embedding"):
        encoder.encode(texts, batch_size=batch_size, show_progress_bar=False, output_value=value)
        start = time.perf_counter()
        encoder.encode(texts, batch_size=batch_size, show_progress_bar=False, output_value=value)
        seconds = time.perf_counter() - start
        out[value] = {"seconds": seconds, "words_per_s": n_words / seconds}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(SHARED / "ud_ewt" / "en_ewt-ud-dev.conllu"))
    p.add_argument("--grid", default=str(REPO / "outputs" / "ablation-grid" / "seed-0"),
                   help="the ablation grid's seed directory (stages mntp, simcse; encoder)")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0, help="the train / dev / test split")
    p.add_argument("--probe-seeds", type=int, default=3, help="probes trained per row")
    p.add_argument("--speed", type=int, default=0, metavar="N",
                   help="also time warm passes over the first N sentences (token states vs "
                        "pooled sentence embeddings) on the causal row")
    p.add_argument("--states-dir", default=str(Path.home() / ".cache" / "llm2vec-jax" /
                                               "word_probe_states"),
                   help="token states kept per row: a rerun only trains the probes")
    p.add_argument("--out", default=str(RESULTS / "word_probe-ud_ewt.json"),
                   help="results JSON; rows already in it are kept unless rerun")
    args = p.parse_args(argv)
    grid = Path(args.grid)
    splits = load_word_task("pos", args.data, seed=args.seed)
    results = {}
    if os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as f:
            results = json.load(f)
    results.update(data=args.data, split_seed=args.seed, task="pos (UPOS)",
                   sentences={k: len(v) for k, v in splits.items()},
                   test_words=sum(len(s.words) for s in splits["test"]))
    rows = results.setdefault("rows", {})
    for row in args.rows.split(","):
        needed = {"mntp": [grid / "mntp" / "DONE"],
                  "final": [grid / "encoder", grid / "simcse" / "DONE"]}.get(row, [])
        if needed and not any(p.exists() for p in needed):
            print(f"{row}: none of {', '.join(map(str, needed))} exists yet; skipped", flush=True)
            continue
        args.speed = args.speed if row == "causal" else 0
        rows[row] = {**run_row(row, splits, grid, args),
                     "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "load_average": os.getloadavg()}
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(common.portable(json.dumps(results, indent=2)))
    print(json.dumps({r: {a: rows[r][a]["accuracy"] for a in ALIGNMENTS} for r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
