"""llm2vec-jax: LLM2Vec (arXiv 2404.05961) in JAX/Flax."""

from . import compile_cache as _compile_cache
from . import host_memory as _host_memory

if _host_memory.running_as_command():  # before JAX is imported: a restart is cheap there
    _host_memory.restart_with_transparent_hugepages()
    _compile_cache.enable_for_commands()

from .checkpoints.hf import load_hf_checkpoint
from .encoder import LLM2Vec
from .models import ModelConfig

__all__ = ["LLM2Vec", "ModelConfig", "load_hf_checkpoint"]
__version__ = "0.1.0"
