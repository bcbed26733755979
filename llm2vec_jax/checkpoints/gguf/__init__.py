"""llama.cpp GGUF files as Hugging Face checkpoints: ``convert`` (config and weights),
``tokenizer`` (the byte-level BPE tokenizer from the GGUF vocabulary)."""

from .convert import convert_gguf, model_config, permute_qk, unpermute_qk
from .metadata import GGUFError

__all__ = ["GGUFError", "convert_gguf", "model_config", "permute_qk", "unpermute_qk"]
