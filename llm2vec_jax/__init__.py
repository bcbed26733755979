"""llm2vec-jax: LLM2Vec (arXiv 2404.05961) in JAX/Flax."""

from .checkpoints.hf import load_hf_checkpoint
from .encoder import LLM2Vec
from .models import ModelConfig

__all__ = ["LLM2Vec", "ModelConfig", "load_hf_checkpoint"]
__version__ = "0.1.0"
