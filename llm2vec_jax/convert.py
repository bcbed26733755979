"""Checkpoint conversion from the command line.

  python -m llm2vec_jax.convert gguf FILE.gguf OUT_DIR      # llama.cpp GGUF -> HF checkpoint
  python -m llm2vec_jax.convert export IN_DIR OUT_DIR       # HF -> our params -> HF (round trip)
  python -m llm2vec_jax.convert export IN_DIR OUT_DIR --bare  # ... as a bare *Model (no LM head)

A bad input (missing or corrupt checkpoint, non-empty OUT_DIR) is one line ``KIND error: ...``
on stderr and exit status 2; ``--debug`` shows its traceback (llm2vec_jax/cli_errors.py).
"""

from __future__ import annotations

import argparse
import sys

from .cli_errors import add_debug_flag, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm2vec_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gguf = sub.add_parser("gguf", help="convert a llama.cpp GGUF file to an HF checkpoint dir")
    gguf.add_argument("file")
    gguf.add_argument("out_dir")
    gguf.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    gguf.add_argument("--overwrite", action="store_true")
    add_debug_flag(gguf)
    export = sub.add_parser("export", help="load an HF checkpoint into our model and write it back")
    export.add_argument("in_dir", help="HF checkpoint directory or hub id")
    export.add_argument("out_dir")
    export.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    export.add_argument("--overwrite", action="store_true")
    export.add_argument("--bare", action="store_true",
                        help="write a bare *Model checkpoint (no LM head); default: the "
                             "input's layout (*ForCausalLM unless the input is bare)")
    add_debug_flag(export)
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), args.debug)


def _run(args) -> int:
    if args.command == "gguf":
        from .checkpoints.gguf import convert_gguf
        out = convert_gguf(args.file, args.out_dir, dtype=args.dtype, overwrite=args.overwrite)
    else:
        from .checkpoints.hf import load_hf_checkpoint, resolve_checkpoint_dir, save_hf_checkpoint
        source = resolve_checkpoint_dir(args.in_dir)
        model = load_hf_checkpoint(source, dtype=args.dtype)
        out = save_hf_checkpoint(model, args.out_dir, tokenizer_dir=source,
                                 overwrite=args.overwrite, bare=args.bare or None)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
