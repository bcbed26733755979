"""llm2vec-jax: LLM2Vec (arXiv 2404.05961) in JAX/Flax."""

from .models import ModelConfig, load_hf_checkpoint
from .encoder import LLM2Vec

__all__ = ["LLM2Vec", "ModelConfig", "load_hf_checkpoint"]
__version__ = "0.1.0"
