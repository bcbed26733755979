"""SimCSE at batch 64-128 on this CPU with GradCache: speed and peak memory of the shipped
SimCSE config (`configs/simcse/smollm2.yaml`, base model, bundled Wiki1M sample) at each
global batch and GradCache chunk, each setting a fresh training process.

    python bench/grad_cache.py                                  # 32 | 64/32 | 128/32, bf16
    python bench/grad_cache.py --settings 32,128/16 --dtype float32 --steps 8

A setting is ``batch`` (one pass, packed rows as shipped) or ``batch/chunk`` (GradCache: the
embeddings of all ``batch`` texts without gradients in chunks of ``chunk`` rows, the loss over
the whole batch, then the gradient chunk by chunk; one text a row). Reported per setting:
median real tokens/s over the logged steps after the first ``--skip`` (compilation of
new row widths lands there), the process's peak RSS and wall time, and the final loss.
Results: ``bench/results/<name>-<date>.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import common

CONFIG = "configs/simcse/smollm2.yaml"


def parse_setting(text: str) -> tuple[int, int | None]:
    batch, _, chunk = text.partition("/")
    return int(batch), int(chunk) if chunk else None


def overrides(batch: int, chunk: int | None, a) -> list[str]:
    """The ``--set`` values of one setting's training run."""
    values = {"model.adapter": "null", "model.dtype": a.dtype, "data.path": a.data,
              "data.max_texts": "null", "run.global_batch_size": batch,
              # the held-out split must hold one batch (3,000 sample sentences × 0.05 = 150)
              "data.eval_fraction": a.eval_fraction,
              "run.max_steps": a.steps, "run.log_every": 1,
              "run.eval_every": a.steps + 1, "run.save_every": a.steps, "run.seed": a.seed,
              "contrastive.grad_cache_chunk": chunk or "null"}
    return [f"{key}={value}" for key, value in values.items()]


def run_setting(batch: int, chunk: int | None, a, out_dir: Path) -> dict:
    done = common.run_train(CONFIG, overrides(batch, chunk, a), out_dir)
    if done["returncode"] != 0:
        return {"batch": batch, "chunk": chunk, "error": done["output"][-2000:]}
    train, usage, wall = done["train"], done["usage"], done["wall_s"]
    timed = train[a.skip:]
    tokens_s = statistics.median(m["tokens_per_s"] for m in timed)
    return {"batch": batch, "chunk": chunk, "steps": len(train), "timed_steps": len(timed),
            "tokens_per_s": round(tokens_s, 1),
            "tokens_per_s_each": [round(m["tokens_per_s"], 1) for m in train],
            "final_loss": round(train[-1]["loss"], 4),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "process_wall_s": round(wall, 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default="32,64/32,128/32",
                   help="comma list of BATCH or BATCH/CHUNK")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--skip", type=int, default=2, help="logged steps left out of the timing")
    p.add_argument("--data", default="sample:wiki1m")
    p.add_argument("--eval-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="grad_cache")
    a = p.parse_args(argv)
    state = common.machine_state()
    common.warn_if_busy(state)
    rows = []
    with tempfile.TemporaryDirectory(prefix="grad_cache-") as tmp:
        for i, text in enumerate(common.split_list(a.settings)):
            batch, chunk = parse_setting(text)
            print(f"batch {batch}, chunk {chunk or '-'} ...", flush=True)
            row = run_setting(batch, chunk, a, Path(tmp) / f"run-{i}")
            print("  " + json.dumps(row)[:300], flush=True)
            rows.append(row)
    print("\n| batch | GradCache chunk | real tok/s | peak RSS | process wall | final loss |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['batch']} | {r['chunk'] or '-'} | error | | | |")
            continue
        print(f"| {r['batch']} | {r['chunk'] or '-'} | {r['tokens_per_s']} | "
              f"{r['peak_rss_mb']} MB | {r['process_wall_s']} s | {r['final_loss']} |")
    path = common.write_results(a.name, {"bench": "grad_cache",
                                         "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                         "args": vars(a), "machine_before": state,
                                         "machine_after": common.machine_state(),
                                         "rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
