"""What the commands' persistent compile cache (``llm2vec_jax.compile_cache``) saves: one
training command on SmolLM2-135M run three times, each into a fresh output directory, with
the cache off, then on and empty (it fills), then on and filled (what a resumed run, a
recipe's next seed or a rerun finds): wall time, compiles and cache hits of each, and the
cache's size on disk.

    python bench/compile_cache.py               # supervised NLI, causal, 8 steps (~7 min, 2 cores)
    python bench/compile_cache.py --steps 2     # a smoke run

The data is the bundled ``sample:nli`` (1,000 triplets), so it runs on a clean checkout.
Results: ``bench/results/compile_cache-<date>.json``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from llm2vec_jax.compile_cache import CACHE_CHOICE, JAX_OWN  # noqa: E402

CONFIG = common.REPO_ROOT / "configs" / "supervised" / "smollm2-nli.yaml"
_COMPILED = re.compile(r"Finished XLA compilation of (\S+) in ([0-9.]+) sec")
_HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")


def compile_log(stderr: str) -> dict:
    """Programs compiled or loaded (JAX's ``jax_log_compiles`` lines) and their seconds;
    a cache hit is logged as a hit and, with the load's time, as a finished compilation."""
    finished = [(name, float(s)) for name, s in _COMPILED.findall(stderr)]
    return {"programs": len(finished), "seconds": round(sum(s for _, s in finished), 2),
            "cache_hits": len(_HIT.findall(stderr)),
            "step_programs": sum(name == "jit(step)" for name, _ in finished)}


def run(steps: int, out: Path, cache: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != JAX_OWN}
    environ.update({CACHE_CHOICE: cache, "JAX_LOG_COMPILES": "1"})
    cmd = [sys.executable, "-m", "llm2vec_jax.train", "--config", str(CONFIG)]
    for item in ("data.path=sample:nli", "data.config=null", "data.columns=null",
                 "data.eval_fraction=0.05",  # a full eval batch of the 1,000 triplets
                 "model.attention=causal", f"run.max_steps={steps}", f"run.output_dir={out}",
                 f"run.eval_every={steps}", f"run.save_every={steps}", "run.progress_bar=false"):
        cmd += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=environ, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"training failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return {"wall_s": round(wall, 1), **compile_log(done.stderr)}


def directory_size(path: Path) -> tuple[int, float]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), round(sum(p.stat().st_size for p in files) / 2**20, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args(argv)
    machine = common.machine_state()
    common.warn_if_busy(machine)
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as tmp:
        tmp = Path(tmp)
        runs = {"off": run(a.steps, tmp / "off", "0"),
                "empty cache": run(a.steps, tmp / "cold", str(tmp / "xla")),
                "filled cache": run(a.steps, tmp / "warm", str(tmp / "xla"))}
        entries, megabytes = directory_size(tmp / "xla")
    path = common.write_results("compile_cache", {
        "bench": "compile_cache", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": str(CONFIG.relative_to(common.REPO_ROOT)), "steps": a.steps, "runs": runs,
        "cache_entries": entries, "cache_mb": megabytes, "machine": machine})
    print("| cache | wall s | programs compiled or loaded | their seconds | cache hits |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for name, r in runs.items():
        print(f"| {name} | {r['wall_s']} | {r['programs']} | {r['seconds']} | {r['cache_hits']} |")
    print(f"cache: {entries} files, {megabytes} MB\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
