"""Is the 14.5-point effect of ``contrastive.mask_duplicates`` on the README's SimCSE row
(45.27 with, 59.76 without, seed 42) the masking, or the chaos of a 100-step lr-3e-4 run?

1. Walks the row's training batches (``configs/simcse/smollm2.yaml --set model.adapter=null``,
   Wiki1M prefix, seed 42) and lists the steps at which the mask leaves anything out.
2. Trains the first ``--steps`` steps twice, masking on and off, logging every step, and
   compares the two loss curves: before the first masked step the two runs see the same
   batches and the same scores, so any difference there comes from the two compiled
   programs rounding differently, not from the mask.

    python bench/simcse_divergence.py              # 30 steps each way (~9 min, 2 cores)
    python bench/simcse_divergence.py --steps 3    # a smoke run

Results: ``bench/results/simcse_divergence-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from ablation_grid import SHARED, _local_or  # noqa: E402

CONFIG = common.REPO_ROOT / "configs" / "simcse" / "smollm2.yaml"


def row_overrides(data: str) -> list[str]:
    """The README row's command line, as ``--set`` values."""
    return ["model.adapter=null", f"data.path={data}", "data.data_files=null",
            "run.progress_bar=false"]


def masked_steps(overrides: list[str], steps: int, tokenizer) -> dict[int, int]:
    """Step (1-based) -> the number of (row, document) pairs the mask drops there."""
    from llm2vec_jax.train import stages
    from llm2vec_jax.train.config import load_config
    config = load_config(CONFIG, overrides)
    batches = iter(stages.iterators(config, tokenizer, "llama")[0])
    dropped = {}
    for step in range(1, steps + 1):
        duplicates = next(batches).duplicates
        count = 0 if duplicates is None else int(np.asarray(duplicates).sum())
        if count:
            dropped[step] = count
    return dropped


def loss_curve(overrides: list[str], out_dir: Path) -> list[float]:
    cmd = [sys.executable, "-m", "llm2vec_jax.train", "--config", str(CONFIG)]
    for value in overrides + [f"run.output_dir={out_dir}", "run.log_every=1",
                              "run.eval_every=100000", "run.save_every=100000"]:
        cmd += ["--set", value]
    subprocess.run(cmd, check=True, cwd=common.REPO_ROOT, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in sorted((r for r in rows if r.get("split") == "train"),
                                      key=lambda r: r["step"])]


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=common.REPO_ROOT, check=True).stdout.strip()


def compare(a: list[float], b: list[float]) -> dict:
    """Per-step |a - b| and the first step (1-based) at which the curves differ at all."""
    gaps = [abs(x - y) for x, y in zip(a, b)]
    first = next((i + 1 for i, g in enumerate(gaps) if g > 0), None)
    return {"abs_diff": gaps, "first_different_step": first,
            "max_abs_diff": max(gaps) if gaps else None}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=_local_or(
        SHARED / "wiki1m_prefix" / "wiki1m_for_simcse.first11914.txt", "sample:wiki1m"))
    p.add_argument("--steps", type=int, default=30, help="steps trained each way")
    p.add_argument("--run-steps", type=int, default=100,
                   help="the row's steps, walked for masked pairs")
    a = p.parse_args(argv)
    overrides = row_overrides(a.data)
    from llm2vec_jax.checkpoints.default_model import resolve_model
    from llm2vec_jax.text.tokenize import load_tokenizer
    dropped = masked_steps(overrides, a.run_steps, load_tokenizer(resolve_model("smollm2")))
    print(f"steps where the mask drops pairs (of {a.run_steps}): {dropped or 'none'}")
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mask in ("true", "false"):
            curves[mask] = loss_curve(overrides + [f"run.max_steps={a.steps}",
                                                   f"contrastive.mask_duplicates={mask}"],
                                      Path(tmp) / mask)
    diff = compare(curves["true"], curves["false"])
    first_masked = min(dropped) if dropped else None
    print(f"first masked step: {first_masked}; loss curves first differ at step "
          f"{diff['first_different_step']} (|diff| {diff['abs_diff'][:3]} ...), "
          f"max |diff| over {a.steps} steps {diff['max_abs_diff']:.3g}")
    path = common.write_results("simcse_divergence", {
        "bench": "simcse_divergence", "commit": head_commit(),
        "command": f"train --config configs/simcse/smollm2.yaml {' '.join(overrides)} "
                   f"(seed 42), {a.steps} steps, mask_duplicates true vs false",
        "masked_pairs_by_step": dropped, "first_masked_step": first_masked,
        "loss_mask_on": curves["true"], "loss_mask_off": curves["false"], **diff,
        "machine": common.machine_state()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
