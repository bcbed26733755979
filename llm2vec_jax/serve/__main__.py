"""python -m llm2vec_jax.serve --model DIR [--adapter DIR] [--host 127.0.0.1] [--port 8000]
    [--max-batch-texts 256] [--max-wait-ms 5] [--max-queue-texts 1024] [--max-inputs 256]
    [--max-body-bytes 4194304] [--batch-size 32] [--max-length N] [--dtype float32]

Serves ``POST /v1/embeddings`` (OpenAI's shape) and ``GET /health``; see server.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..cli_errors import add_debug_flag, run_cli
from .server import ServeConfig, create_app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm2vec_jax.serve",
                                     description="OpenAI-compatible /v1/embeddings server.")
    parser.add_argument("--model", required=True, help="HF checkpoint directory or hub id")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory (merged on load)")
    parser.add_argument("--model-name", default=None,
                        help="the name responses carry (default: the model argument)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    defaults = ServeConfig()
    for field in dataclasses.fields(ServeConfig):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                            default=getattr(defaults, field.name))
    add_debug_flag(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _serve(args), args.debug)


def _serve(args) -> int:
    try:
        import uvicorn
    except ImportError:
        raise SystemExit("the server needs uvicorn and starlette: pip install uvicorn starlette")
    from ..encoder import LLM2Vec

    config = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    encoder = LLM2Vec.from_pretrained(args.model, adapter=args.adapter,
                                      max_length=args.max_length, dtype=args.dtype)
    app = create_app(encoder, args.model_name or args.model, config)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
