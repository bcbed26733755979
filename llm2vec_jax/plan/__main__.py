"""``python -m llm2vec_jax.plan``: the command line (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

# jax is imported here but its backend is not initialised until ``jax.devices()``: main() sets
# the fake device count first (and re-executes itself if something initialised it earlier).
import jax

from ..cli_errors import add_debug_flag, run_cli
from ..train.config import load_config
from .compile import PlanError, parse_mesh, plan
from .report import CHIPS, format_report


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm2vec_jax.plan",
        description="Compile a training stage's real train step for a fake mesh of N devices "
                    "(no weights allocated) and report per-device memory vs HBM, FLOPs and "
                    "the step time at an assumed MFU.")
    p.add_argument("--config", help="training YAML (configs/mntp/*.yaml, configs/simcse/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as for python -m llm2vec_jax.train (repeatable)")
    p.add_argument("--mesh", required=True,
                   help="mesh axis sizes, e.g. fsdp=8 or data=2,fsdp=4 (missing axes are 1); "
                        "their product is the device count")
    p.add_argument("--device", choices=sorted(CHIPS), action="append",
                   help="chip to compare against (repeatable; default: all)")
    p.add_argument("--remat", choices=("none", "dots", "dots_no_batch", "full"),
                   help="override model.remat")
    p.add_argument("--model", help="built-in architecture name / hub id, a config.json or an "
                                    "HF checkpoint directory (default: model.path)")
    p.add_argument("--batch", type=int, help="global batch (default: run.global_batch_size)")
    p.add_argument("--seq", type=int, help="sequence length (default: the stage's max length)")
    p.add_argument("--mfu", type=float, default=0.5, help="assumed MFU for the step time")
    p.add_argument("--backend", choices=("cpu", "native"), default="cpu",
                   help="cpu: fake host devices (default); native: compile for the real "
                        "devices of this machine (e.g. to check the estimate on a GPU)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_debug_flag(p)
    return p


def _prepare_devices(args, argv) -> None:
    """Make ``n`` CPU devices exist before jax's backend starts, or re-exec so they do."""
    n = math.prod(parse_mesh(args.mesh).values())
    if args.backend == "native":
        return
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", "")).strip()
    wanted = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
        os.environ["XLA_FLAGS"] = wanted
        # A GPU/TPU backend would only take memory and start-up time: the plan is a CPU compile.
        os.environ["JAX_PLATFORMS"] = "cpu"
        jax.config.update("jax_platforms", "cpu")
        return
    if len(jax.devices("cpu")) >= n:
        return
    if os.environ.get("_LLM2VEC_PLAN_REEXEC"):
        raise PlanError(f"could not create {n} CPU devices (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})")
    env = dict(os.environ, XLA_FLAGS=wanted, JAX_PLATFORMS="cpu", _LLM2VEC_PLAN_REEXEC="1")
    os.execve(sys.executable, [sys.executable, "-m", "llm2vec_jax.plan", *argv], env)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    return run_cli(lambda: _run(args, argv), args.debug)


def _run(args, argv: list[str]) -> int:
    mesh_sizes = parse_mesh(args.mesh)
    _prepare_devices(args, argv)
    config = load_config(args.config, args.set)
    devices = jax.devices() if args.backend == "native" else jax.devices("cpu")
    report = plan(config, mesh_sizes, model=args.model, remat=args.remat, batch=args.batch,
                  seq=args.seq, chips=args.device, assumed_mfu=args.mfu, devices=devices)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
