"""Evaluation CLI.

    python -m llm2vec_jax.evaluate sts --model DIR [--adapter DIR]
        --data FILE.tsv | sample:stsb-dev | hf:mteb/stsbenchmark-sts [--split validation]
        [--pooling-mode mean] [--batch-size 32] [--max-length 512]
        [--attention bidirectional|causal] [--limit N]
        [--instruction TEXT] [--dtype float32]

prints one JSON line ``{"task": "sts", "spearman": ..., "pearson": ..., "n": ...}`` on stdout;
progress and errors go to stderr: a bad argument or input file is one line ``KIND error: ...``
and exit status 2 (``--debug`` shows its traceback), see llm2vec_jax/cli_errors.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from .cli_errors import add_debug_flag, run_cli
from .evaluation import evaluate_sts, load_sts


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm2vec_jax.evaluate",
                                     description="Evaluate an LLM2Vec encoder.")
    sub = parser.add_subparsers(dest="task", required=True)
    sts = sub.add_parser("sts", help="STS-B style TSV: Spearman/Pearson of cosine vs gold")
    sts.add_argument("--model", required=True, help="HF checkpoint directory or hub id")
    sts.add_argument("--adapter", default=None, help="PEFT adapter directory (merged on load)")
    sts.add_argument("--data", required=True,
                     help="TSV with header source<TAB>score<TAB>sentence1<TAB>sentence2, "
                          "sample:stsb-dev (300 bundled STS-B dev pairs) or a hub dataset "
                          "hf:ID with columns sentence1, sentence2, score "
                          "(e.g. hf:mteb/stsbenchmark-sts)")
    sts.add_argument("--split", default="validation", help="split of an hf: dataset")
    sts.add_argument("--pooling-mode", default=None,
                     help="mean, weighted_mean, eos_token, last_token, bos_token "
                          "(default: llm2vec_config.json, else mean)")
    sts.add_argument("--batch-size", type=_positive_int, default=32)
    sts.add_argument("--max-length", type=_positive_int, default=None,
                     help="default: llm2vec_config.json, else 512")
    sts.add_argument("--attention", choices=("bidirectional", "causal"), default=None,
                     help="default: the mode the encoder was trained with "
                          "(llm2vec_jax_config.json), else bidirectional")
    sts.add_argument("--causal", dest="attention", action="store_const", const="causal",
                     help="same as --attention causal")
    sts.add_argument("--limit", type=_positive_int, default=None, help="first N pairs only")
    sts.add_argument("--instruction", default="",
                     help="instruction applied to both sentences (default: none)")
    sts.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    sts.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_flag(sts)
    return parser


def run_sts(args) -> dict:
    data = load_sts(args.data, split=args.split)
    from .encoder import LLM2Vec  # after the data check: a bad file fails before loading jax

    start = time.perf_counter()
    encoder = LLM2Vec.from_pretrained(args.model, adapter=args.adapter,
                                      pooling_mode=args.pooling_mode, max_length=args.max_length,
                                      bidirectional=(None if args.attention is None
                                                     else args.attention == "bidirectional"),
                                      dtype=args.dtype)
    result = {"task": "sts", **evaluate_sts(encoder, data, limit=args.limit,
                                            batch_size=args.batch_size,
                                            instruction=args.instruction,
                                            show_progress_bar=not args.quiet)}
    print(f"encoded {2 * result['n']} sentences in {time.perf_counter() - start:.1f} s "
          f"(pooling={encoder.pooling_mode}, bidirectional={encoder.bidirectional}, "
          f"max_length={encoder.max_length})", file=sys.stderr)
    return result


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), args.debug)


def _run(args) -> int:
    if args.task == "sts":
        result = run_sts(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
