"""Why does MNTP not help SimCSE on SmolLM2 here, when the paper finds it helps every model?
One recipe per seed trains SimCSE from the plain bidirectional model (the control) and on top
of each MNTP variant below, one factor changed at a time, and scores STS-B dev after every
stage: the numbers behind the README's MNTP study.

    python bench/mntp_study.py                       # every variant, seed 0 (~3 h, 2 cores)
    python bench/mntp_study.py --variants wikitext,lr2e-4 --seeds 3
    python bench/mntp_study.py --mntp-steps 2 --simcse-steps 2 --sts-limit 50   # a smoke run
    python bench/mntp_study.py --mntp-only           # each variant's MNTP stage alone

``--mntp-only`` scores each MNTP variant without the SimCSE stage on top: a 100-step SimCSE
run's score moves by up to ~15 points with rounding alone (``bench/simcse_divergence.py``),
so one seed of it cannot rank variants, while the MNTP stage's own score varies by well
under a point across seeds (the ablation grid's Bi + MNTP row). In the same ``--out-dir``,
stages that are already done are skipped, so it completes an interrupted full study.

Variants (each an MNTP stage, merged into the base before its SimCSE stage, the paper's way):

    wikitext    the shipped MNTP config (configs/mntp/smollm2-wikitext.yaml) at this budget
    wiki1m      MNTP on the SimCSE corpus (Wiki1M sentences) instead of WikiText
    lr2e-4      4x the learning rate (5e-5 -> 2e-4)
    steps3x     3x the MNTP steps
    mask-eos    the EOS token as the mask instead of "_" (the reference's choice for Llama)
    rank64      LoRA rank 64 (alpha 128) instead of 16 (alpha 32)
    unmerged    wikitext's MNTP adapter not merged: SimCSE trains it further
                (``model.init_adapter``) instead of a fresh LoRA on the merged model

Budgets default to the ablation grid's MNTP (60 steps x 8 x 128 tokens) and the one-hour
recipe's SimCSE (100 steps x 32 x 64 tokens, lr 3e-4); STS-B dev is scored bidirectional,
mean pooling, max_length 128, no instruction. Data: this checkout's ``../shared/data``
copies (else the bundled samples, or ``--*-data``). Results: ``bench/results/<name>-<date>.json``
and a markdown table on stdout. Tune on STS-B dev only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from ablation_grid import _stage, model_and_data_args, run_seeds  # noqa: E402

CONTROL = "bi_simcse"


UNMERGED = "unmerged"   # no MNTP stage of its own: wikitext's, continued by SimCSE


def variants(simcse_data: str, mntp_steps: int) -> dict[str, dict]:
    """Variant -> the MNTP stage sections it changes."""
    return {
        "wikitext": {},
        "wiki1m": {"data": {"path": simcse_data}},
        "lr2e-4": {"optimizer": {"learning_rate": 2e-4}},
        "steps3x": {"run": {"max_steps": 3 * mntp_steps}},
        "mask-eos": {"data": {"mask_token_type": "eos"}},
        "rank64": {"lora": {"r": 64, "alpha": 128}},
        UNMERGED: {},
    }


def _parser() -> argparse.ArgumentParser:
    p = model_and_data_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    p.add_argument("--variants", default="all",
                   help="comma-separated variant names (default: all of them)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--mntp-steps", type=int, default=60)
    p.add_argument("--simcse-steps", type=int, default=100)
    p.add_argument("--mntp-only", action="store_true",
                   help="train and score the MNTP stages only (no SimCSE on top)")
    p.add_argument("--out-dir", default="outputs/mntp-study")
    p.add_argument("--name", default="mntp_study", help="results file prefix")
    return p


def chosen_variants(a) -> dict[str, dict]:
    known = variants(a.simcse_data, a.mntp_steps)
    if a.variants == "all":
        return known
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in known]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {sorted(known)}")
    return {v: known[v] for v in names}


def recipe_for_seed(a, seed: int, out_dir: Path) -> dict:
    mntp_data = {"path": a.mntp_data, "max_seq_length": 128}
    simcse_data = {"path": a.simcse_data}
    simcse_len = {"contrastive": {"max_length": 64}}

    def simcse(name, after):
        return _stage("simcse/smollm2.yaml", name, seed, a.simcse_steps, 32, simcse_data,
                      after, "bidirectional", simcse_len)

    def mntp(variant, changes):
        stage = _stage("mntp/smollm2-wikitext.yaml", f"mntp_{variant}", seed, a.mntp_steps, 8,
                       mntp_data, None, "bidirectional")
        for section, values in changes.items():
            stage.setdefault(section, {}).update(values)
        return stage

    chosen = chosen_variants(a)
    if a.mntp_only:
        stages = [mntp(v, changes) for v, changes in chosen.items() if v != UNMERGED]
        if not stages:
            raise SystemExit(f"--mntp-only: variant {UNMERGED!r} has no MNTP stage of its own")
    else:
        stages = [simcse(CONTROL, None)]
        for variant, changes in chosen.items():
            if variant != UNMERGED:
                stages += [mntp(variant, changes), simcse(f"simcse_{variant}", f"mntp_{variant}")]
        if UNMERGED in chosen:
            if "wikitext" not in chosen:
                stages.append(mntp("wikitext", {}))
            continued = simcse(f"simcse_{UNMERGED}", None)
            continued["model"]["init_adapter"] = str(
                (out_dir / "mntp_wikitext" / "adapter").resolve())
            stages.append(continued)
    return {"output_dir": str(out_dir), "model": {"path": a.model, "dtype": "float32"},
            "eval": {"sts_dev": a.sts, "limit": a.sts_limit, "batch_size": 32,
                     "max_length": 128, "causal_base": False},
            # The last stage's chain when only MNTP stages run.
            "encoder": {"stage": None if a.mntp_only else CONTROL, "max_length": 128},
            "stages": stages}


def _spearman(result: dict, stage: str) -> float | None:
    sts = result["rows"].get(stage, {}).get("sts", {})
    return 100 * sts["bidirectional_mean"]["spearman"] if "bidirectional_mean" in sts else None


def summarise(per_seed: dict[int, dict], names: list[str]) -> list[dict]:
    """Per variant: STS after MNTP and after MNTP + SimCSE (per seed, mean, std), the MNTP
    stage's final eval accuracy, and the SimCSE row's difference to the control's."""
    control = [_spearman(r, CONTROL) for r in per_seed.values()]
    table = [{"variant": "none (SimCSE from the bidirectional base)", "after_mntp": [],
              "after_simcse": control, "mntp_eval_accuracy": []}]
    for name in names:
        mntp = "mntp_wikitext" if name == UNMERGED else f"mntp_{name}"
        table.append({
            "variant": name,
            "after_mntp": [_spearman(r, mntp) for r in per_seed.values()],
            "after_simcse": [_spearman(r, f"simcse_{name}") for r in per_seed.values()],
            "mntp_eval_accuracy": [
                r["rows"].get(mntp, {}).get("train", {}).get("eval_accuracy")
                for r in per_seed.values()]})
    control_mean, _ = common.mean_std(control)
    for row in table:
        for key in ("after_mntp", "after_simcse"):
            row[key] = [v for v in row[key] if v is not None]
            row[f"{key}_mean"], row[f"{key}_std"] = common.mean_std(row[key])
        row["mntp_eval_accuracy"] = [v for v in row["mntp_eval_accuracy"] if v is not None]
        row["simcse_vs_control"] = (None if row["after_simcse_mean"] is None or control_mean is None
                                    else row["after_simcse_mean"] - control_mean)
    return table


def markdown(table: list[dict], base: float | None, seeds: int) -> str:
    lines = [f"Bidirectional base, no training: {base:.2f}" if base is not None else "",
             f"| MNTP variant | STS after MNTP | MNTP eval accuracy | STS after + SimCSE "
             f"(mean ± std over {seeds} seeds) | vs SimCSE alone |",
             "| --- | --- | --- | --- | --- |"]
    for r in table:
        acc = (f"{statistics.fmean(r['mntp_eval_accuracy']):.3f}"
               if r["mntp_eval_accuracy"] else "-")
        delta = "-" if r["simcse_vs_control"] is None or not r["after_mntp"] else (
            f"{r['simcse_vs_control']:+.2f}")
        after_mntp = common.mean_std_text(r["after_mntp_mean"], r["after_mntp_std"])
        after_simcse = common.mean_std_text(r["after_simcse_mean"], r["after_simcse_std"])
        lines.append(f"| {r['variant']} | {after_mntp} | {acc} | {after_simcse} | {delta} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    names = list(chosen_variants(a))
    out_root, per_seed, wall_s = run_seeds(a, recipe_for_seed, "mntp_study")
    base = _spearman(per_seed[0], "base")
    table = summarise(per_seed, names)
    path = common.write_results(a.name, {
        "bench": "mntp_study", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(a),
        "wall_s": wall_s, "base_bidirectional": base, "table": table,
        "recipes": {seed: recipe_for_seed(a, seed, out_root / f"seed-{seed}")
                    for seed in per_seed},
        "results": per_seed, "machine": common.machine_state()})
    print(markdown(table, base, a.seeds))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    common.run_as_the_commands_do()
    sys.exit(main())
