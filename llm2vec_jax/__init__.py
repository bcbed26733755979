"""llm2vec-jax: LLM2Vec (arXiv 2404.05961) in JAX/Flax."""

from .host_memory import running_as_command, restart_with_transparent_hugepages

if running_as_command():  # before JAX is imported, while a restart is cheap (host_memory.py)
    restart_with_transparent_hugepages()

from .checkpoints.hf import load_hf_checkpoint
from .encoder import LLM2Vec
from .models import ModelConfig

__all__ = ["LLM2Vec", "ModelConfig", "load_hf_checkpoint"]
__version__ = "0.1.0"
