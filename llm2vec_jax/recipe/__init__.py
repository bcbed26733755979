"""The whole LLM2Vec pipeline as one resumable run: base eval -> MNTP -> SimCSE [-> supervised]
-> a merged encoder. ``schema`` reads and validates a recipe file, ``runner`` runs it,
``report`` prints it; the default recipe (``python -m llm2vec_jax.train`` with no arguments)
is ``default.yaml`` beside this file."""

from .report import describe, format_table
from .runner import export_encoder, run_recipe
from .schema import DEFAULT_RECIPE, Recipe, Stage, is_recipe, load_recipe

__all__ = ["DEFAULT_RECIPE", "Recipe", "Stage", "describe", "export_encoder", "format_table",
           "is_recipe", "load_recipe", "run_recipe"]
