"""Llama-style decoders (Llama, Mistral, Qwen2, Qwen3, Gemma) with a causal flag:
configuration, weight table, the module itself.

Loading and saving checkpoints is ``llm2vec_jax.checkpoints`` (``load_hf_checkpoint``, also
exported by the top-level package); this package knows nothing of files.
"""

from .config import ConfigError, ModelConfig, RopeScaling
from .kernels import Kernels, resolve_kernels
from .specs import WeightSpec, lora_weight_specs, weight_specs
from .transformer import Transformer, abstract_model, init_model

__all__ = ["ConfigError", "Kernels", "ModelConfig", "RopeScaling", "Transformer", "WeightSpec",
           "abstract_model", "init_model", "lora_weight_specs", "resolve_kernels",
           "weight_specs"]


def __getattr__(name):
    # The README once documented `from llm2vec_jax.models import load_hf_checkpoint`; keep it
    # working without making the model package import the checkpoint code.
    if name == "load_hf_checkpoint":
        import warnings

        from ..checkpoints.hf import load_hf_checkpoint
        warnings.warn("import load_hf_checkpoint from llm2vec_jax (or llm2vec_jax.checkpoints); "
                      "llm2vec_jax.models no longer exports it", DeprecationWarning, stacklevel=2)
        return load_hf_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
