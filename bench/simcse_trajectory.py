"""STS-B dev at each saved checkpoint of finished contrastive stages, not only their last
step, and at the mean of those checkpoints' weight deltas: does the chaotic bidirectional
SimCSE stage's score swing along one run, and would averaging its weights steady it?

    python bench/simcse_trajectory.py outputs/recipe_1h_bi_200-seeds/seed-{0,1,2}/simcse

Each argument is a stage's output directory (``train_config.json``, ``checkpoints/<step>``,
``adapter/``). The base is the stage's own (``model.path`` plus the adapter it trained on,
merged); a checkpoint's LoRA is merged on top, or, for the average, every listed
checkpoint's with its delta divided by their number (base + mean of scale·A·B). Scored as the
recipes score: the STS instruction on both sentences, max_length 128, mean pooling, the
stage's attention. Results: ``bench/results/<name>-<date>.json``. Tune on STS-B dev only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHARED_DEV = common.REPO_ROOT.parent / "shared" / "data" / "stsb" / "dev.tsv"
STS_INSTRUCTION = "Retrieve semantically similar text."


def checkpoint_lora(step_dir: Path) -> dict:
    """{target: (A, B)} of one orbax train checkpoint, as numpy arrays."""
    import orbax.checkpoint as ocp
    layers = ocp.PyTreeCheckpointer().restore(str((step_dir / "train").resolve()))["lora"]["layers"]
    targets = sorted({name.rsplit("_lora_", 1)[0] for name in layers})
    return {p: (layers[f"{p}_lora_a"]["value"], layers[f"{p}_lora_b"]["value"]) for p in targets}


def read_stage(stage_dir: Path) -> dict:
    """The stage's train_config.json, with its LoRA config and checkpoint steps added."""
    from llm2vec_jax.lora import LoRAConfig
    stage = json.loads((stage_dir / "train_config.json").read_text())
    stage["lora_config"] = LoRAConfig(**{**stage["lora"], "targets": tuple(stage["lora"]["targets"])})
    stage["steps"] = sorted(int(d.name) for d in (stage_dir / "checkpoints").iterdir()
                            if d.name.isdigit())
    return stage


def merged_model(stage: dict, loras: list[dict]):
    """(checkpoint directory, model): the stage's base + the mean of the given LoRAs' deltas."""
    from llm2vec_jax.checkpoints.merged import load_merged
    from llm2vec_jax.lora import merge_lora, set_adapter

    prior = [stage["model"]["adapter"]] if stage["model"].get("adapter") else []
    directory, model = load_merged(stage["model"]["path"], prior, dtype=stage["model"]["dtype"])
    for arrays in loras:
        # Dividing B by n divides A·B, so merging every checkpoint this way adds their mean.
        set_adapter(model, stage["lora_config"], {p: (A, B / len(loras))
                                                  for p, (A, B) in arrays.items()})
        merge_lora(model)
    return directory, model


def score(stage: dict, loras: list[dict], data, a) -> dict:
    from llm2vec_jax import LLM2Vec
    from llm2vec_jax.evaluation import evaluate_sts

    directory, model = merged_model(stage, loras)
    encoder = LLM2Vec.from_loaded(model, directory, pooling_mode=stage["contrastive"]["pooling"],
                                  max_length=a.max_length,
                                  bidirectional=stage["model"]["attention"] == "bidirectional")
    return evaluate_sts(encoder, data, limit=a.limit, batch_size=32,
                        instruction=a.instruction or None, show_progress_bar=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stages", nargs="+", help="stage output directories")
    p.add_argument("--sts", default=str(SHARED_DEV))
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--instruction", default=STS_INSTRUCTION, help="'' for none")
    p.add_argument("--steps", default=None, help="comma-separated checkpoint steps (default: all)")
    p.add_argument("--limit", type=int, default=None, help="first N pairs only (smoke runs)")
    p.add_argument("--name", default="simcse_trajectory")
    a = p.parse_args(argv)
    from llm2vec_jax.evaluation import load_sts

    data = load_sts(a.sts)
    runs, started = {}, time.time()
    for stage_dir in map(Path, a.stages):
        stage = read_stage(stage_dir)
        steps = [s for s in stage["steps"] if not a.steps or str(s) in a.steps.split(",")]
        loras = {s: checkpoint_lora(stage_dir / "checkpoints" / str(s)) for s in steps}
        rows = {}
        for label, chosen in [*((str(s), [loras[s]]) for s in steps),
                              *([("mean of " + "+".join(map(str, steps)), list(loras.values()))]
                                if len(steps) > 1 else [])]:
            t0 = time.time()
            rows[label] = {**score(stage, chosen, data, a), "wall_s": round(time.time() - t0, 1)}
            print(f"{stage_dir} step {label}: spearman {100 * rows[label]['spearman']:.2f} "
                  f"({rows[label]['wall_s']:.0f} s)", flush=True)
        runs[str(stage_dir)] = rows
    labels = list(next(iter(runs.values())))
    table = []
    for label in labels:
        values = [100 * rows[label]["spearman"] for rows in runs.values() if label in rows]
        mean, std = common.mean_std(values)
        table.append({"checkpoint": label, "spearman_x100": values, "mean": mean, "std": std})
    path = common.write_results(a.name, {
        "bench": "simcse_trajectory", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(a),
        "wall_s": round(time.time() - started, 1), "table": table, "runs": runs,
        "machine": common.machine_state()})
    print("| checkpoint | STS-B dev, mean ± std | per run |\n| --- | --- | --- |")
    for r in table:
        print(f"| {r['checkpoint']} | {common.mean_std_text(r['mean'], r['std'])} | "
              f"{', '.join(f'{v:.2f}' for v in r['spearman_x100'])} |")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    common.run_as_the_commands_do()
    sys.exit(main())
