"""What a train step eats: one batch type per objective, each knowing its own abstract shape.

The collators build them (numpy, one process's rows), ``sharding.global_batch`` turns them
into global arrays (every field is split along its leading batch axis), the steps and
``train.flops`` read their fields, and the planner compiles a step for ``abstract(...)``
without any data. Both are pytrees (``flax.struct.dataclass``), so ``jax.tree`` functions
map over their arrays.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import numpy as np

from ..text.packing import segments_per_row

IGNORE_INDEX = -100  # "not scored" (HF / torch CrossEntropyLoss convention)
Array = Any          # numpy on the host, jax.Array on devices, ShapeDtypeStruct when planned


def _int32(shape, sharding_fn: Callable | None):
    sharding = None if sharding_fn is None else sharding_fn(len(shape))
    return jax.ShapeDtypeStruct(shape, np.int32, sharding=sharding)


@flax.struct.dataclass
class MNTPBatch:
    """Masked sequences and, per row, the positions whose outputs are scored.

    ``predict_positions`` [B, P] holds, within each row, the *predicting* position i-1 of
    every scored token i (the reference's ``CE(logits[:, :-1], labels[:, 1:])``), padded with
    0; ``predict_labels`` [B, P] the scored tokens' ids, ``IGNORE_INDEX`` in the padding.
    Row-local, so a batch split or concatenated along rows needs no index arithmetic.
    """

    input_ids: Array        # int32 [B, S], masking applied
    attention_mask: Array   # int32 [B, S]
    predict_positions: Array
    predict_labels: Array

    @staticmethod
    def abstract(batch: int, seq: int, slots: int, sharding_fn: Callable | None = None):
        """ShapeDtypeStructs of a batch; ``sharding_fn(ndim)`` gives each field's sharding."""
        return MNTPBatch(*(_int32(shape, sharding_fn) for shape in
                           ((batch, seq), (batch, seq), (batch, slots), (batch, slots))))

    @staticmethod
    def from_labels(input_ids: np.ndarray, attention_mask: np.ndarray, labels: np.ndarray,
                    slots: int) -> "MNTPBatch":
        """The batch of masked ``input_ids`` whose ``labels`` (the reference's: the original id
        where masked, -100 elsewhere) are scored: token (b, i) from position (b, i - 1), so a
        token masked at position 0 has no predictor. ``slots`` grows (doubling, up to S) if
        a row scores more tokens."""
        B, S = labels.shape
        scored = labels[:, 1:] != IGNORE_INDEX
        width = slots
        while width < min(int(scored.sum(axis=1).max(initial=0)), S):
            width = min(S, 2 * width)
        positions = np.zeros((B, width), np.int32)
        targets = np.full((B, width), IGNORE_INDEX, np.int32)
        for b in range(B):
            i = np.flatnonzero(scored[b])
            positions[b, :i.size] = i
            targets[b, :i.size] = labels[b, i + 1]
        return MNTPBatch(np.asarray(input_ids, np.int32), np.asarray(attention_mask, np.int32),
                         positions, targets)

    def token_ids(self) -> list[Array]:
        return [self.input_ids]

    def attention_masks(self) -> list[Array]:
        return [self.attention_mask]

    @property
    def head_rows(self) -> int:
        """Positions the LM head is applied to (the scored slots)."""
        return int(np.prod(self.predict_positions.shape))

    @staticmethod
    def concat(parts: list["MNTPBatch"]) -> "MNTPBatch":
        """Rows of several batches in order; prediction slots padded to the widest."""
        slots = max(p.predict_positions.shape[1] for p in parts)

        def widen(x, fill):
            return np.pad(x, ((0, 0), (0, slots - x.shape[1])), constant_values=fill)
        return MNTPBatch(np.concatenate([p.input_ids for p in parts]),
                         np.concatenate([p.attention_mask for p in parts]),
                         np.concatenate([widen(p.predict_positions, 0) for p in parts]),
                         np.concatenate([widen(p.predict_labels, IGNORE_INDEX) for p in parts]))


@flax.struct.dataclass
class Features:
    """One view of a contrastive batch: token ids, attention and pooling masks, one text a
    row (left-padded), or several texts a row when packed (``slots`` given)."""

    input_ids: Array       # int32 [R, S]
    attention_mask: Array  # int32 [R, S]: 0 padding, else 1 (packed: text j of a row is j + 1)
    embed_mask: Array      # int32 [R, S]: the pooled positions (instruction excluded)
    # Packed only: int32 [R, S] positions restarting at 0 for each text, and int32 [B] the
    # index of text b's embedding in the row-major [R · P, D] pooled output (P texts a row
    # at most: text.packing.segments_per_row(S)).
    positions: Array | None = None
    slots: Array | None = None

    @property
    def packed(self) -> bool:
        return self.slots is not None

    def real_tokens(self) -> int:
        """Non-padding tokens (numpy); packed: in the rows holding texts, not in the copies
        of the first row that fill the row count."""
        mask = np.asarray(self.attention_mask)
        if self.packed:
            rows = np.unique(np.asarray(self.slots) // segments_per_row(mask.shape[1]))
            mask = mask[rows]
        return int((mask > 0).sum())


@flax.struct.dataclass
class ContrastiveBatch:
    """Query, positive document and (supervised, optional) hard-negative views; SimCSE passes
    one tokenization as both ``q`` and ``d`` (dropout makes the two encodings differ)."""

    q: Features
    d: Features
    n: Features | None = None
    # [B, B + Bn] bool, computed by the collator: document j is a copy of row i's positive
    # (``losses.same_text_as_positive``, which packed views cannot be compared by on device).
    duplicates: Array | None = None
    # Every view is the same packed rows with its own ``slots`` (supervised packing): the
    # rows are encoded once, and each view pools its texts from them.
    shared_rows: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def views(self) -> list[Features]:
        return [self.q, self.d] + ([self.n] if self.n is not None else [])

    @property
    def encoded_views(self) -> list[Features]:
        """The views a forward pass runs over (one when they share their rows)."""
        return self.views[:1] if self.shared_rows else self.views

    @staticmethod
    def abstract(batch: int, seq: int, negatives: bool, sharding_fn: Callable | None = None):
        def view():
            return Features(*(_int32((batch, seq), sharding_fn) for _ in range(3)))
        return ContrastiveBatch(view(), view(), view() if negatives else None)

    def token_ids(self) -> list[Array]:
        return [v.input_ids for v in self.encoded_views]

    def attention_masks(self) -> list[Array]:
        return [v.attention_mask for v in self.encoded_views]

    @property
    def head_rows(self) -> int:
        return 0

    @staticmethod
    def concat(parts: list["ContrastiveBatch"]) -> "ContrastiveBatch":
        widths = {p.q.input_ids.shape[1] for p in parts}
        if len(widths) > 1:
            raise ValueError(f"contrastive shard batches of different widths {sorted(widths)}: "
                             "several shards must pad to max_length")
        return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def real_tokens(batch) -> int:
    """Non-padding tokens over every view of a (numpy) batch."""
    if isinstance(batch, ContrastiveBatch):
        if batch.shared_rows:
            return batch.q.replace(slots=np.concatenate([v.slots for v in batch.views])
                                   ).real_tokens()
        return sum(view.real_tokens() for view in batch.views)
    return int(sum((np.asarray(mask) > 0).sum() for mask in batch.attention_masks()))
