"""Length buckets and packing: which texts share a padded row, and the rows' features.

A jitted forward compiles once per (rows, width) shape, so widths come from a small set of
buckets; packing puts several short texts in one row, each attending and pooled within
itself (segment ids, per-text positions), so little compute goes to padding.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Iterable, Sequence

import numpy as np

from .tokenize import TokenizedRow


def default_buckets(max_length: int, *, min_bucket: int = 16, min_step: int = 16) -> tuple[int, ...]:
    """Padded widths from ``min_bucket`` up to, and always including, ``max_length``:
    ``min_step`` apart below 64 tokens, then each ~1/4 wider than the last (multiples of 8),
    so a long row is padded by at most ~25% (powers of two waste up to 50%) while the number
    of compiled shapes stays small.

    ``LLM2Vec`` takes its row widths from ``min_step=8`` buckets: a forward compiles fast, and
    a batch of short texts gets a closer fit. Training keeps 16, as a train step takes far
    longer to compile. Measurements: docs/performance.md."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if min_step < 8 or min_step % 8:
        raise ValueError(f"min_step must be a positive multiple of 8, got {min_step}")
    buckets, b = [], min_bucket
    while b < max_length:
        buckets.append(b)
        b += min_step if b < 64 else max(min_step, -(-b // 32) * 8)  # b/4 rounded up to 8s
    buckets.append(max_length)
    return tuple(buckets)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"a row of {length} tokens fits no bucket (largest {max(buckets)})")


def segments_per_row(width: int) -> int:
    """How many texts a packed row of ``width`` tokens may hold (the static P of its pooled
    output [rows, P, D]): a text of 4 tokens or more never finds a row full by count."""
    return max(1, width // 4)


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """One forward pass: rows of ``width`` tokens, each holding the texts ``rows[r]`` (input
    indices) one after another, at most ``segments`` of them; computed as ``computed_rows``
    rows (the plan's compiled row count: filler rows after ``rows``)."""

    width: int
    segments: int
    rows: tuple[tuple[int, ...], ...]
    computed_rows: int


@dataclasses.dataclass(frozen=True)
class PackPlan:
    """Every non-empty text in exactly one batch; ``empty``: the zero-token texts, which have
    nothing to pool (their embedding is the zero vector)."""

    batches: tuple[PackedBatch, ...]
    empty: tuple[int, ...]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def padded_row_count(rows: int, rows_per_batch: int) -> int:
    """Rows a batch of ``rows`` is computed with: full batches as they are, a final partial one
    padded to the next power of two (capped at ``rows_per_batch``), so row counts, like widths,
    come from a small set of compiled shapes."""
    return rows if rows >= rows_per_batch else min(rows_per_batch, 1 << max(0, rows - 1).bit_length())


class Unplaced:
    """Texts not yet in a row, by length: the longest one that fits a room, in O(log n)."""

    def __init__(self, lengths: Sequence[int], indices: Iterable[int]):
        self.lengths = lengths
        self._by_length: dict[int, list[int]] = {}
        for i in sorted(indices, reverse=True):  # reversed: pop() yields input order
            self._by_length.setdefault(lengths[i], []).append(i)
        self._present = sorted(self._by_length)  # distinct lengths still to place

    def __bool__(self) -> bool:
        return bool(self._present)

    def longest(self) -> int:
        return self._present[-1]

    def take_at_most(self, room: int) -> int | None:
        at = bisect.bisect_right(self._present, room) - 1
        if at < 0:
            return None
        n = self._present[at]
        index = self._by_length[n].pop()
        if not self._by_length[n]:
            del self._present[at]
        return index

    def fill_rows(self, width: int, per_row: int, max_rows: int) -> list[tuple[int, ...]]:
        """Up to ``max_rows`` rows: each takes the longest text left, then, while there is
        room, the longest that still fits, up to ``per_row`` texts."""
        rows = []
        while self and len(rows) < max_rows:
            row, room = [], width
            while len(row) < per_row and (index := self.take_at_most(room)) is not None:
                row.append(index)
                room -= self.lengths[index]
            rows.append(tuple(row))
        return rows


def _sorted_buckets(buckets: Sequence[int] | None, max_length: int) -> tuple[int, ...]:
    return tuple(sorted(buckets)) if buckets is not None else default_buckets(max_length)


def _texts_per_row(width: int, packing: bool) -> int:
    return segments_per_row(width) if packing else 1


def _narrowest_width(buckets: Sequence[int], packing: bool, min_width: int) -> int:
    """No batch is packed narrower than this (0: any bucket)."""
    return min(min_width, buckets[-1]) if packing else 0


def fixed_row_shapes(*, rows_per_batch: int, max_length: int,
                     buckets: Sequence[int] | None = None, packing: bool = True,
                     min_width: int = 64) -> tuple[tuple[int, int, int], ...]:
    """Every (rows, width, texts a row) a batch of ``plan_packed(..., fixed_rows=True)`` with
    these settings can have, whatever the lengths: a job that encodes chunk after chunk can
    compile them all before its first chunk's tokens and arrays are in host memory."""
    buckets = _sorted_buckets(buckets, max_length)
    floor = _narrowest_width(buckets, packing, min_width)
    return tuple((rows_per_batch, b, _texts_per_row(b, packing)) for b in buckets if b >= floor)


def plan_packed(lengths: Iterable[int], *, rows_per_batch: int, max_length: int,
                buckets: Sequence[int] | None = None, packing: bool = True,
                min_width: int = 64, fixed_rows: bool = False) -> PackPlan:
    """Pack texts of the given token lengths into batches of ``rows_per_batch`` rows.

    Each batch is as wide as the bucket of its longest text (at least ``min_width`` when
    packing); a row takes the longest text left, then, while there is room, the longest
    that still fits (at most ``segments_per_row(width)`` texts). Rows come out nearly full,
    so almost no compute goes to padding; widths stay in ``buckets``, so a jitted forward
    compiles a bounded number of times. The final batch, whose rows are padded to a power of
    two anyway (``padded_row_count``), is repacked into that many rows of the narrowest
    bucket that holds its texts. ``packing=False``: one text per row, longest first (plain
    length-sorted batching). ``fixed_rows``: the final batch keeps ``rows_per_batch`` rows and
    is repacked no narrower than the others may be, so the shapes of a long stream of plans
    (a corpus encoded shard by shard) come from the widths alone.

    Why ``min_width``: attention costs grow with the row width, but up to 64 tokens they are
    a small part of a forward, while rows of 64 pack typical sentences (10-40 tokens) two to
    five a row (the widths and padding shares measured: docs/performance.md).
    """
    if rows_per_batch < 1:
        raise ValueError(f"batch_size must be >= 1, got {rows_per_batch}")
    lengths = [int(n) for n in lengths]
    buckets = _sorted_buckets(buckets, max_length)
    empty = tuple(i for i, n in enumerate(lengths) if n == 0)
    unplaced = Unplaced(lengths, (i for i, n in enumerate(lengths) if n > 0))
    if unplaced:
        bucket_for(unplaced.longest(), buckets)  # fail early, naming the length
    floor = _narrowest_width(buckets, packing, min_width)

    def computed_rows(rows: int) -> int:
        return rows_per_batch if fixed_rows else padded_row_count(rows, rows_per_batch)

    batches = []
    while unplaced:
        width = bucket_for(max(unplaced.longest(), floor), buckets)
        rows = unplaced.fill_rows(width, _texts_per_row(width, packing), rows_per_batch)
        if not unplaced and len(rows) < rows_per_batch:
            texts = [i for row in rows for i in row]
            room = computed_rows(len(rows))
            for narrower in (b for b in buckets if (floor if fixed_rows else 0) <= b < width):
                tail = Unplaced(lengths, texts)
                repacked = tail.fill_rows(narrower, _texts_per_row(narrower, packing), room)
                if not tail:
                    rows, width = repacked, narrower
                    break
        batches.append(PackedBatch(width, _texts_per_row(width, packing), tuple(rows),
                                   computed_rows(len(rows))))
    return PackPlan(tuple(batches), empty)


def collate_packed(rows: Sequence[TokenizedRow], batch: PackedBatch, *, pad_id: int,
                   num_rows: int | None = None) -> dict[str, np.ndarray]:
    """A packed batch's int32 [num_rows, width] ``input_ids``, ``segment_ids`` (text j of a
    row is j + 1, padding 0), ``positions`` (0.. within each text, so RoPE sees each text as
    if alone) and ``embed_mask``; plus ``slots``, the flat index into the pooled
    [num_rows * P, D] output of each text in ``indices`` (the batch's input indices).

    Rows past the batch's own (``num_rows`` pads the row count to a compiled shape) repeat its
    first row and own no slot (rather than padding alone: a row with no visible key is left to
    each attention kernel's own conventions, cuDNN's included).
    """
    num_rows = batch.computed_rows if num_rows is None else num_rows
    if num_rows < len(batch.rows):
        raise ValueError(f"num_rows={num_rows} < the batch's {len(batch.rows)} rows")
    width, per_row = batch.width, batch.segments
    shape = (num_rows, width)
    feats = {"input_ids": np.full(shape, pad_id, np.int32),
             "segment_ids": np.zeros(shape, np.int32),
             "positions": np.zeros(shape, np.int32),
             "embed_mask": np.zeros(shape, np.int32)}
    indices, slots = [], []
    for r, row in enumerate(batch.rows):
        start = 0
        for j, index in enumerate(row):
            text = rows[index]
            end = start + len(text)
            if end > width:
                raise ValueError(f"row {r} of the batch holds {end} tokens > width {width}")
            feats["input_ids"][r, start:end] = text.input_ids
            feats["segment_ids"][r, start:end] = j + 1
            feats["positions"][r, start:end] = np.arange(len(text))
            feats["embed_mask"][r, end - text.n_pooled:end] = 1
            indices.append(index)
            slots.append(r * per_row + j)
            start = end
    for key in feats:
        feats[key][len(batch.rows):] = feats[key][0]
    feats["indices"] = np.asarray(indices, np.int64)
    feats["slots"] = np.asarray(slots, np.int64)
    return feats
