"""The optimizer: AdamW with warmup, decay and global-norm clipping, for the LoRA parameters."""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with global-norm clipping; defaults are the reference MNTP recipe's."""

    learning_rate: float = 5e-5
    schedule: str = "linear"        # linear | constant | cosine (after warmup)
    warmup_steps: int = 0
    decay_steps: int | None = None  # None: decay over the run's max_steps
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if self.schedule not in ("linear", "constant", "cosine"):
            raise ValueError(f"optimizer.schedule={self.schedule!r}; choose linear, constant or cosine")
        if self.learning_rate <= 0:
            raise ValueError(f"optimizer.learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")

    def schedule_fn(self, max_steps: int) -> optax.Schedule:
        total = self.decay_steps or max_steps
        decay = max(total - self.warmup_steps, 1)
        lr = self.learning_rate
        after = {"constant": optax.constant_schedule(lr),
                 "linear": optax.linear_schedule(lr, 0.0, decay),
                 "cosine": optax.cosine_decay_schedule(lr, decay)}[self.schedule]
        if not self.warmup_steps:
            return after
        return optax.join_schedules([optax.linear_schedule(0.0, lr, self.warmup_steps), after],
                                    [self.warmup_steps])

    def build(self, max_steps: int) -> optax.GradientTransformation:
        parts = [optax.clip_by_global_norm(self.max_grad_norm)] if self.max_grad_norm else []
        parts.append(optax.adamw(self.schedule_fn(max_steps), b1=self.b1, b2=self.b2,
                                 eps=self.eps, weight_decay=self.weight_decay))
        return optax.chain(*parts)
