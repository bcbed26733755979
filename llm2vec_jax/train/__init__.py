"""Training: one loop for every stage (``loop``), fed by the stage definitions (``stages``)
with pure jitted steps (``steps``, ``losses``, ``grad_cache``, ``optim``); around it the model
a stage starts from (``prepare``), resumable checkpoints (``checkpointing``), metrics and the
exported adapter. ``python -m llm2vec_jax.train`` is ``__main__``."""

from .losses import contrastive_loss, lm_head_weight, mntp_loss

__all__ = ["contrastive_loss", "lm_head_weight", "mntp_loss"]
