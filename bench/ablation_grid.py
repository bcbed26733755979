"""The paper's ablation grid (LLM2Vec, Table/Figure "Uni / Bi / + MNTP / + SimCSE") on one model
at one fixed budget, STS-B dev after each row, several seeds for the trained rows.

    python bench/ablation_grid.py --with-bi-simcse      # SmolLM2, the README's budget, 3 seeds
    python bench/ablation_grid.py --seeds 1 --mntp-steps 20 --simcse-steps 10   # a quick look

Rows (mean pooling everywhere):

    Uni                     the decoder as it is: causal attention, no training
    Uni + SimCSE            SimCSE trained and evaluated with causal attention
    Bi                      the causal mask switched off, no training
    Bi + MNTP               MNTP adapter, bidirectional
    Bi + MNTP + SimCSE      SimCSE on top of the MNTP adapter (the LLM2Vec recipe)
    Bi + SimCSE             (extra, --with-bi-simcse) SimCSE without MNTP

Each seed is one recipe (``llm2vec_jax.recipe``) with three stages: ``mntp`` and ``simcse``
(after mntp, bidirectional) and ``uni_simcse`` (from the base model, ``model.attention:
causal``); the recipe's base evaluation gives the two untrained rows. Stage settings come from
the shipped SmolLM2 configs (``configs/mntp/smollm2-wikitext.yaml``,
``configs/simcse/smollm2.yaml``) with this script's budget on top. Data: this checkout's
``../shared/data`` copies when they exist (WikiText-103 test, the Wiki1M prefix, STS-B dev),
else the bundled samples, or any ``--*-data`` given (``hf:`` names work where there is
network). Results: ``bench/results/<name>-<date>.json`` and a markdown table on stdout.
Tune on STS-B dev only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHARED = common.REPO_ROOT.parent / "shared" / "data"
CONFIGS = common.REPO_ROOT / "configs"
# (label, stage row in the recipe's results, STS column)
ROWS = [
    ("Uni", "base", "causal_mean"),
    ("Uni + SimCSE", "uni_simcse", "causal_mean"),
    ("Bi", "base", "bidirectional_mean"),
    ("Bi + MNTP", "mntp", "bidirectional_mean"),
    ("Bi + MNTP + SimCSE", "simcse", "bidirectional_mean"),
    ("Bi + SimCSE", "bi_simcse", "bidirectional_mean"),
]


def _local_or(path: Path, fallback: str) -> str:
    return str(path) if path.is_file() else fallback


def model_and_data_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The base model, STS set and stage corpora (the developers' shared copies where this
    checkout has them, else the package's bundled samples): shared with mntp_study."""
    p.add_argument("--model", default="smollm2", help="base model (default: SmolLM2-135M)")
    p.add_argument("--sts", default=_local_or(SHARED / "stsb" / "dev.tsv", "sample:stsb-dev"))
    p.add_argument("--sts-limit", type=int, default=None, help="first N STS pairs only")
    p.add_argument("--mntp-data",
                   default=_local_or(SHARED / "wikitext103" / "wiki.test.raw.txt",
                                     "sample:wikitext"))
    p.add_argument("--simcse-data",
                   default=_local_or(SHARED / "wiki1m_prefix" / "wiki1m_for_simcse.first11914.txt",
                                     "sample:wiki1m"))
    return p


def _parser() -> argparse.ArgumentParser:
    p = model_and_data_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--mntp-steps", type=int, default=60)
    p.add_argument("--mntp-batch", type=int, default=8)
    p.add_argument("--mntp-length", type=int, default=128)
    p.add_argument("--simcse-steps", type=int, default=40)
    p.add_argument("--simcse-batch", type=int, default=32)
    p.add_argument("--simcse-length", type=int, default=64)
    p.add_argument("--simcse-texts", type=int, default=None,
                   help="cap on SimCSE sentences read (default: the config's)")
    p.add_argument("--with-bi-simcse", action="store_true",
                   help="also the extra row Bi + SimCSE (SimCSE without MNTP)")
    p.add_argument("--out-dir", default="outputs/ablation-grid",
                   help="run directories (one per seed; a rerun resumes and skips what is done)")
    p.add_argument("--name", default="ablation", help="results file prefix")
    p.add_argument("--results-dir", default=None,
                   help="where the results JSON goes (default: bench/results)")
    return p


def _stage(config: str, name: str, seed: int, steps: int, batch: int, data: dict,
           after, attention: str, extra: dict | None = None) -> dict:
    stage = {"name": name, "config": str(CONFIGS / config), "after": after,
             "model": {"attention": attention},
             "data": dict(data),
             "run": {"seed": seed, "max_steps": steps, "global_batch_size": batch,
                     "log_every": max(1, steps // 5), "eval_every": steps,
                     "save_every": steps, "progress_bar": False}}
    for section, values in (extra or {}).items():
        stage.setdefault(section, {}).update(values)
    return stage


def recipe_for_seed(a, seed: int, out_dir: Path) -> dict:
    mntp_data = {"path": a.mntp_data, "max_seq_length": a.mntp_length}
    simcse_data = {"path": a.simcse_data}
    if a.simcse_texts:
        simcse_data["max_texts"] = a.simcse_texts
    simcse_len = {"contrastive": {"max_length": a.simcse_length}}
    stages = [
        _stage("mntp/smollm2-wikitext.yaml", "mntp", seed, a.mntp_steps, a.mntp_batch,
               mntp_data, None, "bidirectional"),
        _stage("simcse/smollm2.yaml", "simcse", seed, a.simcse_steps, a.simcse_batch,
               simcse_data, "mntp", "bidirectional", simcse_len),
        _stage("simcse/smollm2.yaml", "uni_simcse", seed, a.simcse_steps, a.simcse_batch,
               simcse_data, None, "causal", simcse_len),
    ]
    if a.with_bi_simcse:
        stages.append(_stage("simcse/smollm2.yaml", "bi_simcse", seed, a.simcse_steps,
                             a.simcse_batch, simcse_data, None, "bidirectional", simcse_len))
    return {"output_dir": str(out_dir), "model": {"path": a.model, "dtype": "float32"},
            "eval": {"sts_dev": a.sts, "limit": a.sts_limit, "batch_size": 32,
                     "max_length": 128, "causal_base": True},
            "encoder": {"stage": "simcse", "max_length": 512},
            "stages": stages}


def reuse_base_eval(first: Path, run_dir: Path) -> None:
    """The untrained rows do not depend on the seed: give a later seed's recipe the first
    seed's base evaluation, which the recipe then skips as already done."""
    results = run_dir / "results.json"
    source = first / "results.json"
    if results.exists() or not source.exists():
        return
    base = json.loads(source.read_text())["rows"].get("base")
    if base:
        run_dir.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps({"rows": {"base": base}}, indent=2))


def summarise(per_seed: dict[int, dict]) -> list[dict]:
    """Per row: Spearman x100 per seed, mean and (with 2+ seeds) sample std."""
    table = []
    for label, stage, column in ROWS:
        values = [100 * r["rows"][stage]["sts"][column]["spearman"]
                  for r in per_seed.values()
                  if column in r["rows"].get(stage, {}).get("sts", {})]
        if not values:
            continue
        trained = stage != "base"
        if not trained:  # every seed's recipe scores the same untrained model
            values = values[:1]
        mean, std = common.mean_std(values)  # untrained: one value, no std
        table.append({"row": label, "trained": trained, "spearman_x100": values,
                      "mean": mean, "std": std})
    return table


def markdown(table: list[dict], seeds: int) -> str:
    lines = [f"| encoder | STS-B dev Spearman x100 (mean ± std over {seeds} seeds) | per seed |",
             "| --- | --- | --- |"]
    for r in table:
        per_seed = ", ".join(f"{v:.2f}" for v in r["spearman_x100"]) if r["trained"] else "-"
        lines.append(f"| {r['row']} | {common.mean_std_text(r['mean'], r['std'])} | {per_seed} |")
    return "\n".join(lines)


def run_seeds(a, recipe_for_seed, label: str) -> tuple[Path, dict[int, dict], float]:
    """Run ``recipe_for_seed(a, seed, run_dir)`` for seeds 0..a.seeds-1 under ``a.out_dir``
    (each recipe file written beside its run, later seeds reusing seed 0's base evaluation);
    returns (out_dir, {seed: results}, wall seconds)."""
    from llm2vec_jax.recipe import load_recipe, run_recipe

    out_root = Path(a.out_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    per_seed, started = {}, time.time()
    for seed in range(a.seeds):
        run_dir = out_root / f"seed-{seed}"
        recipe_file = out_root / f"recipe-seed-{seed}.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe_for_seed(a, seed, run_dir), sort_keys=False))
        if seed:
            reuse_base_eval(out_root / "seed-0", run_dir)
        t0 = time.time()
        per_seed[seed] = run_recipe(load_recipe(recipe_file))
        print(f"[{label}] seed {seed} done in {time.time() - t0:.0f} s", flush=True)
    return out_root, per_seed, round(time.time() - started, 1)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    out_root, per_seed, wall_s = run_seeds(a, recipe_for_seed, "ablation")
    table = summarise(per_seed)
    payload = {"bench": "ablation_grid", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "args": vars(a), "wall_s": wall_s, "table": table,
               "recipes": {seed: recipe_for_seed(a, seed, out_root / f"seed-{seed}")
                           for seed in per_seed},
               "results": per_seed}
    results_dir = Path(a.results_dir) if a.results_dir else None
    if results_dir is None:
        path = common.write_results(a.name, payload)
    else:
        results_dir.mkdir(parents=True, exist_ok=True)
        path = results_dir / f"{a.name}.json"
        path.write_text(json.dumps(payload, indent=2))
    print(markdown(table, a.seeds))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    common.run_as_the_commands_do()
    sys.exit(main())
