"""A shipped recipe run end to end for several seeds, offline on this checkout's local data
copies, with the STS-B dev score after every stage (mean ± std over seeds) and each stage's
wall time: the numbers behind the README's recipe tables.

    python bench/recipe_seeds.py configs/recipes/smollm2-1h.yaml --seeds 3

Each hub dataset the recipe names (``data.path``/``eval.sts_dev``) is replaced by its local
copy in ``../shared/data`` when one is known (``LOCAL_COPIES``); anything else runs as
written. Seed s sets every stage's ``run.seed`` to s and writes to ``OUT_DIR/seed-s`` (a
rerun resumes and skips finished stages). ``--set`` takes the recipe's own dotted overrides
(``stages.simcse.run.max_steps=10``) for quick looks; ``--stages simcse`` runs only the named
stages (the unsupervised half of a recipe, say), as the train command's ``--stages`` does.
Results: ``bench/results/<name>-<date>.json``. Tune on STS-B dev only.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHARED = common.REPO_ROOT.parent / "shared" / "data"
# hub reference -> (local file, data settings that read it like the hub copy)
LOCAL_COPIES = {
    "hf:mteb/stsbenchmark-sts": (SHARED / "stsb" / "dev.tsv", {}),
    "hf:princeton-nlp/datasets-for-simcse": (
        SHARED / "wiki1m_prefix" / "wiki1m_for_simcse.first11914.txt", {"data_files": None}),
    "hf:Salesforce/wikitext": (SHARED / "wikitext103" / "wiki.test.raw.txt",
                               {"config": None, "split": "train"}),
    "hf:sentence-transformers/all-nli": (SHARED / "nli" / "triplets.tsv",
                                         {"config": None, "columns": None,
                                          "dataset_name": "allnli"}),
}


def localise(raw: dict, recipe_dir: Path) -> tuple[dict, list[str]]:
    """The recipe with local copies for the hub data it names, stage config paths made
    absolute; and what was replaced."""
    raw = copy.deepcopy(raw)
    replaced = []
    sts = (raw.get("eval") or {}).get("sts_dev")
    if sts in LOCAL_COPIES and LOCAL_COPIES[sts][0].is_file():
        raw["eval"]["sts_dev"] = str(LOCAL_COPIES[sts][0])
        raw["eval"].pop("split", None)
        replaced.append(f"eval: {sts} -> {LOCAL_COPIES[sts][0]}")
    for stage in raw["stages"]:
        if stage.get("config"):
            stage["config"] = str((recipe_dir / stage["config"]).resolve())
        path = _stage_data_path(stage)
        if path in LOCAL_COPIES and LOCAL_COPIES[path][0].is_file():
            local, settings = LOCAL_COPIES[path]
            stage.setdefault("data", {}).update({"path": str(local), "kind": "auto", **settings})
            replaced.append(f"{stage.get('name')}: {path} -> {local}")
    return raw, replaced


def _stage_data_path(stage: dict) -> str | None:
    """The stage's data.path: inline, else from its stage config file."""
    inline = (stage.get("data") or {}).get("path")
    if inline or not stage.get("config"):
        return inline
    with open(stage["config"], encoding="utf-8") as f:
        return ((yaml.safe_load(f) or {}).get("data") or {}).get("path")


def for_seed(raw: dict, seed: int, out_dir: Path) -> dict:
    raw = copy.deepcopy(raw)
    raw["output_dir"] = str(out_dir)
    for stage in raw["stages"]:
        stage.setdefault("run", {})["seed"] = seed
    return raw


def summarise(per_seed: dict[int, dict]) -> list[dict]:
    """Per stage and STS column: Spearman x100 per seed, mean, std; wall seconds per seed."""
    rows = []
    first = next(iter(per_seed.values()))["rows"]
    for stage, row in first.items():
        for column in row.get("sts", {}):
            values = [100 * r["rows"][stage]["sts"][column]["spearman"]
                      for r in per_seed.values() if column in r["rows"].get(stage, {}).get("sts", {})]
            walls = [r["rows"][stage].get("train_wall_s") for r in per_seed.values()]
            mean, std = common.mean_std(values)
            rows.append({"stage": stage, "column": column, "spearman_x100": values,
                         "mean": mean, "std": std, "train_wall_s": walls})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--out-dir", default=None, help="default: outputs/<recipe name>-seeds")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stages", default=None, metavar="A,B",
                   help="run only these stages (default: all)")
    p.add_argument("--name", default=None, help="results file prefix (default: recipe name)")
    a = p.parse_args(argv)
    from llm2vec_jax.recipe import load_recipe, run_recipe

    recipe_path = Path(a.recipe)
    name = a.name or recipe_path.stem
    out_root = Path(a.out_dir or f"outputs/{name}-seeds")
    out_root.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(recipe_path.read_text())
    only = a.stages.split(",") if a.stages else None
    raw, replaced = localise(raw, recipe_path.parent)
    for line in replaced:
        print(f"[recipe_seeds] local copy: {line}", flush=True)
    per_seed, walls, started = {}, {}, time.time()
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        seed_file = out_root / f"recipe-seed-{seed}.yaml"
        seed_file.write_text(yaml.safe_dump(for_seed(raw, seed, out_root / f"seed-{seed}"),
                                            sort_keys=False))
        t0 = time.time()
        per_seed[seed] = run_recipe(load_recipe(seed_file, a.set, only=only))
        walls[seed] = round(time.time() - t0, 1)
        print(f"[recipe_seeds] seed {seed} done in {walls[seed]:.0f} s", flush=True)
    table = summarise(per_seed)
    path = common.write_results(name, {
        "bench": "recipe_seeds", "recipe": str(recipe_path), "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "args": vars(a), "local_copies": replaced, "recipe_wall_s": walls,
        "wall_s": round(time.time() - started, 1), "table": table, "results": per_seed,
        "machine": common.machine_state()})
    print("| stage | STS column | mean ± std | per seed | train wall s |\n| --- | --- | --- | --- | --- |")
    for r in table:
        print(f"| {r['stage']} | {r['column']} | {common.mean_std_text(r['mean'], r['std'])} | "
              f"{', '.join(f'{v:.2f}' for v in r['spearman_x100'])} | {r['train_wall_s']} |")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    common.run_as_the_commands_do()
    sys.exit(main())
