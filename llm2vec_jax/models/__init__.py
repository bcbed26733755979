"""Llama-family decoders with a causal flag, and their HF checkpoint loader."""

from .config import ConfigError, ModelConfig, RopeScaling
from .transformer import Transformer, WeightSpec, abstract_model, init_model, weight_specs

# Imported last: the checkpoint module depends on the model modules above.
from ..checkpoints.hf import load_hf_checkpoint  # noqa: E402

__all__ = ["ConfigError", "ModelConfig", "RopeScaling", "Transformer", "WeightSpec",
           "abstract_model", "init_model", "weight_specs", "load_hf_checkpoint"]
