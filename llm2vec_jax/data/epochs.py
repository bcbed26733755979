"""Position bookkeeping shared by the batch iterators: batch ``position`` of ``epoch``,
a JSON-able state to checkpoint, and (for flat example lists) a per-epoch shuffle.

The state names what it was taken from (``num_examples``, ``batch_size``), so resuming
against different data fails loudly instead of silently yielding other batches.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


class EpochIterator:
    """Endless (or ``num_epochs``-long) iteration; subclasses define ``batches_per_epoch``,
    ``_identity`` and ``__next__`` (calling ``_advance`` first)."""

    def __init__(self, *, seed: int, shuffle: bool, num_epochs: int | None):
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.num_epochs = num_epochs
        self.epoch = 0
        self.position = 0

    def _identity(self) -> dict[str, int]:
        raise NotImplementedError

    @property
    def batches_per_epoch(self) -> int:
        raise NotImplementedError

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                **self._identity()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        for key, mine in self._identity().items():
            if key in state and int(state[key]) != mine:
                raise ValueError(f"iterator state is for {key}={state[key]}, this iterator has "
                                 f"{mine}: resuming would not reproduce the same batches")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.seed = int(state.get("seed", self.seed))

    def __iter__(self):
        return self

    def _advance(self) -> None:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration


class ShuffledBatches(EpochIterator):
    """Batches of ``batch_size`` rows out of ``num_examples``, in a fresh permutation each
    epoch (seeded by (seed, epoch)); the incomplete last batch is dropped so every batch has
    the same shape."""

    def __init__(self, num_examples: int, batch_size: int, *, seed: int, shuffle: bool,
                 num_epochs: int | None, what: str = "examples"):
        super().__init__(seed=seed, shuffle=shuffle, num_epochs=num_epochs)
        if batch_size < 1:
            raise ValueError(f"per_process_batch_size must be positive, got {batch_size}")
        if num_examples < batch_size:
            raise ValueError(f"only {num_examples} {what} for a batch of {batch_size}")
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self._order_epoch: int | None = None
        self._order: np.ndarray | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    def _identity(self) -> dict[str, int]:
        return {"num_examples": self.num_examples, "batch_size": self.batch_size}

    def set_state(self, state: Mapping[str, Any]) -> None:
        super().set_state(state)
        self._order_epoch = None

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            n = self.num_examples
            self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(n)
                           if self.shuffle else np.arange(n))
            self._order_epoch = self.epoch
        return self._order

    def _next_rows(self) -> np.ndarray:
        """Advance and return the example indices of the next batch."""
        self._advance()
        start = self.position * self.batch_size
        self.position += 1
        return self._epoch_order()[start:start + self.batch_size]
