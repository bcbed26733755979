"""Encode a corpus into embedding shards, resumably, on one host or many.

    python -m llm2vec_jax.encode_corpus --model DIR [--adapter DIR] --input FILE --output DIR
        [--input-format auto|jsonl|tsv|text] [--instruction TEXT] [--shard-size 10000]
        [--dtype float32|float16|int8] [--format npy|safetensors] [--batch-size 32]
        [--mesh fsdp=8] [--model-dtype float32|bfloat16|float16] [--pooling-mode MODE]
        [--max-length N] [--attention bidirectional|causal] [--quiet] [--debug]

The output layout, resume and multi-host rules: ``llm2vec_jax.corpus``. Run the same command
again after a crash: finished shards are skipped. On several hosts, start it on each with the
``jax.distributed`` environment (``llm2vec_jax.distributed``); every process encodes its own
slice on its own devices (``--mesh`` shards the model over them) into the same ``--output``
(a shared filesystem), and process 0 writes the manifest and shows the progress bar.
Errors: one line ``KIND error: ...``, exit status 2 (``llm2vec_jax.cli_errors``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .cli_errors import add_debug_flag, positive_int, run_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llm2vec_jax.encode_corpus",
                                description="Encode a corpus into resumable embedding shards.")
    p.add_argument("--model", required=True, help="HF checkpoint directory, hub id or smollm2")
    p.add_argument("--adapter", default=None, help="PEFT adapter directory (merged on load)")
    p.add_argument("--input", required=True,
                   help="JSONL (id, text, optional title), TSV (id<TAB>text[<TAB>title]) or a "
                        "text file (one passage a line, id = line number from 0)")
    p.add_argument("--input-format", default="auto", choices=("auto", "jsonl", "tsv", "text"),
                   help="default: by extension (.jsonl/.json, .tsv, else text)")
    p.add_argument("--output", required=True, help="output directory (created; resumed if it "
                                                   "holds shards of the same job)")
    p.add_argument("--instruction", default="", help="instruction put before every passage")
    p.add_argument("--shard-size", type=positive_int, default=10000, help="passages per shard")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "int8"),
                   help="stored embedding dtype (int8: per-passage symmetric scale)")
    p.add_argument("--format", default="npy", choices=("npy", "safetensors"))
    p.add_argument("--batch-size", type=positive_int, default=32, help="rows per forward pass")
    p.add_argument("--mesh", default=None,
                   help="shard the model over this process's devices, e.g. fsdp=8 or "
                        "tensor=2,data=4 (default: replicated, batch over all devices)")
    p.add_argument("--model-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="parameter and compute dtype")
    p.add_argument("--pooling-mode", default=None, help="default: llm2vec_config.json, else mean")
    p.add_argument("--max-length", type=positive_int, default=None)
    p.add_argument("--attention", choices=("bidirectional", "causal"), default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_flag(p)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    return run_cli(lambda: _run(args), args.debug)


def _run(args) -> int:
    from .corpus import ShardFormat, encode_corpus, input_format, read_passages

    fmt = ShardFormat(dtype=args.dtype, file_type=args.format, shard_size=args.shard_size)
    input_format(args.input, args.input_format)
    if os.path.isfile(args.input):  # a bad first record fails before the model loads
        next(read_passages(args.input, args.input_format), None)
    elif not os.path.exists(args.input):
        raise FileNotFoundError(f"corpus file {args.input!r} does not exist")

    from .distributed import barrier, maybe_initialize_distributed
    maybe_initialize_distributed()  # before anything asks jax for devices
    import jax

    from .encoder import LLM2Vec
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                        format="%(message)s", stream=sys.stderr)
    encoder = LLM2Vec.from_pretrained(
        args.model, adapter=args.adapter, pooling_mode=args.pooling_mode,
        max_length=args.max_length, dtype=args.model_dtype, mesh=args.mesh,
        bidirectional=None if args.attention is None else args.attention == "bidirectional")
    job = {"model": args.model, "adapter": args.adapter, "model_dtype": args.model_dtype}
    manifest = encode_corpus(encoder, args.input, args.output, fmt, input_fmt=args.input_format,
                             instruction=args.instruction, batch_size=args.batch_size, job=job,
                             process_index=jax.process_index(),
                             process_count=jax.process_count(), progress=not args.quiet,
                             barrier=barrier)
    if manifest is not None:
        print(json.dumps({"output": args.output, "count": manifest["count"],
                          "shards": len(manifest["shards"]), "dim": manifest["dim"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
