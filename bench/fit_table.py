"""Rerun every CPU-estimate row of docs/fit.md: Llama-3-8B and Mistral-7B, MNTP and SimCSE,
fsdp over 1 / 4 / 8 devices, remat none / dots / full, one `python -m llm2vec_jax.plan`
compile each (the v4-8 and v5p-8 rows share the fsdp=4 compile).

    python bench/fit_table.py [--out bench/results/fit-DATE.jsonl] [--devices 4,8,1]

Appends one JSON report per compile to --out (a rerun skips compiles already there) and
prints the markdown rows of docs/fit.md's table from them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"llama3-8b": "Llama-3-8B", "mistral-7b": "Mistral-7B"}
STAGES = {"mntp": "MNTP", "simcse": "SimCSE"}
REMATS = ("none", "dots", "full")
# (label, chip key in plan.CHIPS, fsdp size)
TARGETS = [("v4-8 (4 × 32 GiB)", "tpu-v4", 4), ("v5e-8 (8 × 16 GiB)", "tpu-v5e", 8),
           ("v5p-8 (4 × 95 GiB)", "tpu-v5p", 4), ("1 × H100 80 GB", "h100", 1)]


def _key(model, stage, n, remat):
    return f"{model}/{stage}/fsdp={n}/{remat}"


def run(out: Path, sizes: list[int]) -> dict[str, dict]:
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done[row["key"]] = row
    for model in MODELS:
        for stage in STAGES:
            for n in sizes:
                for remat in REMATS:
                    key = _key(model, stage, n, remat)
                    if key in done:
                        continue
                    cmd = [sys.executable, "-m", "llm2vec_jax.plan", "--config",
                           f"configs/{stage}/{model}.yaml", "--mesh", f"fsdp={n}",
                           "--remat", remat, "--json"]
                    print("$", " ".join(cmd[1:]), flush=True)
                    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                    if proc.returncode:
                        row = {"key": key, "error": proc.stderr.strip().splitlines()[-1]}
                    else:
                        row = {"key": key, "report": json.loads(proc.stdout)}
                    done[key] = row
                    with out.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    return done


def table(done: dict[str, dict]) -> str:
    lines = ["| model | stage | target | mesh | totals CPU est. none / dots / full (GiB/device) "
             "| fits with (CPU est.) | step @ 50 % MFU |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for model, model_name in MODELS.items():
        for stage, stage_name in STAGES.items():
            for label, chip, n in TARGETS:
                rows = [done.get(_key(model, stage, n, r)) for r in REMATS]
                if not all(rows):
                    continue
                totals, verdict, step = [], None, None
                for remat, row in zip(REMATS, rows):
                    if "error" in row:
                        totals.append("error")
                        continue
                    rep = row["report"]
                    totals.append(f"{rep['memory_per_device']['total'] / 2**30:.1f}")
                    fit = rep["chips"][chip]
                    step = fit["step_time_s"]
                    if verdict is None and fit["verdict"] == "fits":
                        verdict = f"**{remat}** ({fit['used_fraction']:.0%})"
                if verdict is None:
                    full = rows[-1].get("report", {}).get("chips", {}).get(chip)
                    verdict = f"no (full: {full['used_fraction']:.0%})" if full else "no"
                step_text = f"{step:.2f} s" if step else "n/a"
                lines.append(f"| {model_name} | {stage_name} | {label} | fsdp={n} | "
                             f"{' / '.join(totals)} | {verdict} | {step_text} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path,
                   default=REPO / "bench" / "results" / f"fit-{datetime.date.today()}.jsonl")
    p.add_argument("--devices", default="4,8,1", help="fsdp sizes to compile (comma list)")
    a = p.parse_args()
    print(table(run(a.out, [int(n) for n in a.devices.split(",")])))


if __name__ == "__main__":
    main()
