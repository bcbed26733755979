"""Training: losses (MNTP, contrastive)."""

from .losses import contrastive_loss, lm_head_weight, mntp_loss

__all__ = ["contrastive_loss", "lm_head_weight", "mntp_loss"]
