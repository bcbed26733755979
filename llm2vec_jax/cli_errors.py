"""The error contract of every ``python -m llm2vec_jax.*`` entry point (train, evaluate,
convert, plan, encode_corpus): an error that is the input's (a bad file, config, mesh, checkpoint) prints as
one line ``KIND error: MESSAGE`` on stderr and exits with 2; anything else is a bug and keeps
its traceback (exit 1), and ``--debug`` keeps the traceback of input errors too.

One table for all of them, so the same bad model directory reads the same in every command.
"""

from __future__ import annotations

import argparse
import errno
import sys
from typing import Callable


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of input errors too (bad data, config, "
                             "checkpoints), not only their one-line message")


def positive_int(s: str) -> int:
    """argparse ``type=`` for counts and sizes: a bad value is the usage error argparse prints."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def run_cli(body: Callable[[], int], debug: bool) -> int:
    """``body()``, with an input error turned into its one line on stderr and exit status 2."""
    try:
        return body()
    except Exception as e:
        kind = input_error_kind(e)
        if kind is None or debug:
            raise
        print(f"{kind} error: {e}", file=sys.stderr)
        return 2


# (module, class, kind). Looked up only in modules already imported: an error of a class can
# only exist once its module ran, and a CLI that fails on its arguments should not pay for
# importing jax and orbax (nor risk an import cycle) just to classify the error.
_KINDS = [
    ("llm2vec_jax.typed_config", "TrainConfigError", "config"),
    ("llm2vec_jax.models.pooling", "PoolingModeError", "config"),
    ("llm2vec_jax.data.sources", "SourceError", "data"),
    ("llm2vec_jax.evaluation", "STSFormatError", "data"),
    ("llm2vec_jax.mteb_wrapper", "MTEBError", "mteb"),
    ("llm2vec_jax.serve.server", "ServeConfigError", "config"),
    ("llm2vec_jax.word_tasks", "WordTaskError", "data"),
    ("llm2vec_jax.corpus", "CorpusError", "data"),
    ("llm2vec_jax.train.checkpointing", "ResumeError", "resume"),
    ("llm2vec_jax.train.checkpointing", "CheckpointWriteError", "checkpoint"),
    ("llm2vec_jax.sharding", "ShardingError", "mesh"),
    ("llm2vec_jax.plan.compile", "PlanError", "plan"),
    ("llm2vec_jax.checkpoints.hf", "CheckpointError", "model"),
    ("llm2vec_jax.checkpoints.safetensors_io", "SafetensorsFormatError", "model"),
    ("llm2vec_jax.checkpoints.gguf.metadata", "GGUFError", "model"),
    ("llm2vec_jax.checkpoints.encoder_config", "EncoderConfigError", "model"),
    ("llm2vec_jax.models.config", "ConfigError", "model"),
    ("llm2vec_jax.lora", "LoRAError", "adapter"),
    ("builtins", "FileNotFoundError", "file"),
    ("builtins", "NotADirectoryError", "file"),
    ("builtins", "IsADirectoryError", "file"),
    ("builtins", "PermissionError", "file"),
    # convert's refusal to write into a non-empty directory without --overwrite
    ("builtins", "FileExistsError", "file"),
]


def input_error_kind(error: Exception) -> str | None:
    """What was wrong with the input, for errors that are the input's and not a bug (those
    print as one line; anything else keeps its traceback)."""
    for module, name, kind in _KINDS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(error, getattr(loaded, name)):
            return kind
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return "disk"
    return None
