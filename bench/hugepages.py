"""Does glibc's transparent-huge-page tunable pay on this machine? A short SimCSE run of the
one-hour recipe's first stage (SmolLM2-135M, float32, the bundled Wiki1M sample), as
``python -m llm2vec_jax.train`` runs it, with its huge pages (the commands' default) and
with ``LLM2VEC_JAX_HUGEPAGES=0``, interleaved over rounds. Ten steps hold five new packed
shapes, so this is a short run's view; more ``--steps`` weigh the steady state more. Each
run's wall, user and system time, minor page faults and peak RSS come from ``wait4``; its
per-step real tokens/s from ``metrics.jsonl`` (the same batches in every run). One untimed
run first fills a compile cache that all runs share, so the timed runs load their programs
instead of compiling them.

    python bench/hugepages.py [--rounds 2] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import common

from llm2vec_jax.compile_cache import CACHE_CHOICE
from llm2vec_jax.host_memory import HUGEPAGE_OPT_OUT

# Each setting's environment additions: the commands ask for huge pages unless told not to.
SETTINGS = {f"glibc defaults ({HUGEPAGE_OPT_OUT}=0)": {HUGEPAGE_OPT_OUT: "0"},
            "huge pages (the default)": {}}


def run(steps: int, setting: dict, cache: str, out: Path) -> dict:
    sets = ["model.adapter=null", "model.dtype=float32", "data.path=sample:wiki1m",
            f"run.max_steps={steps}", "run.eval_every=1000", "run.save_every=1000",
            "run.log_every=1", "run.progress_bar=false"]
    environ = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", HUGEPAGE_OPT_OUT)}
    environ.update(setting, **{CACHE_CHOICE: cache})
    done = common.run_train("configs/simcse/smollm2.yaml", sets, out, env=environ)
    if done["returncode"] != 0:
        raise RuntimeError(f"{' '.join(done['cmd'])} failed:\n{done['output'][-2000:]}")
    usage = done["usage"]
    return {"wall_s": done["wall_s"], "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "minor_faults": usage.ru_minflt, "peak_rss_gb": usage.ru_maxrss / 2**20,
            "tokens_per_s_per_step": [m["tokens_per_s"] for m in done["train"]]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--name", default="hugepages")
    a = p.parse_args()
    machine = common.machine_state()
    common.warn_if_busy(machine)
    runs = {label: [] for label in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "xla")
        run(a.steps, {HUGEPAGE_OPT_OUT: "0"}, cache, Path(tmp) / "warm-up")
        for rnd in range(a.rounds):
            order = list(SETTINGS.items())
            for i, (label, setting) in enumerate(order if rnd % 2 == 0 else order[::-1]):
                r = run(a.steps, setting, cache, Path(tmp) / f"{rnd}-{i}")
                runs[label].append(r)
                print(f"[round {rnd + 1}] {label}: wall {r['wall_s']:.1f} s, "
                      f"sys {r['sys_s']:.1f} s, {r['minor_faults']} faults, "
                      f"peak {r['peak_rss_gb']:.2f} GB", flush=True)
    summary = {label: {key: sum(r[key] for r in rs) / len(rs)
                       for key in ("wall_s", "user_s", "sys_s", "minor_faults", "peak_rss_gb")}
               for label, rs in runs.items()}
    for label, s in summary.items():
        print(f"| {label} | {s['wall_s']:.1f} s | {s['user_s']:.1f} s | {s['sys_s']:.1f} s | "
              f"{s['minor_faults']:,.0f} | {s['peak_rss_gb']:.2f} GB |")
    path = common.write_results(a.name, {"steps": a.steps, "rounds": a.rounds, "runs": runs,
                                         "mean": summary, "machine": machine})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
