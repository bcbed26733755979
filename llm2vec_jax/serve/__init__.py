"""OpenAI-compatible embeddings over HTTP: ``python -m llm2vec_jax.serve`` (server.py)."""

from .server import Batcher, RequestError, ServeConfig, ServeConfigError, create_app

__all__ = ["Batcher", "RequestError", "ServeConfig", "ServeConfigError", "create_app"]
