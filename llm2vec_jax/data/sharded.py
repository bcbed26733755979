"""Process-count-independent batches: the data is cut into ``num_shards`` shards, each
process owns a contiguous group of them, and the global batch of step t is the concatenation
of every shard's batch t.

So a run on 1 process and a run on 2 processes (with the same ``num_shards``) see exactly the
same global batches, and each process reads only its own shards. Every shard iterator is
positioned from the global step alone (epoch = t // batches_per_epoch, position = t mod it),
so the data position to checkpoint is just the step, identical on every process, even when
shards hold different numbers of examples.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def shards_of_process(num_shards: int, process_index: int, process_count: int) -> range:
    if num_shards % process_count:
        raise ValueError(f"data.num_shards={num_shards} must be a multiple of the process "
                         f"count {process_count}")
    per = num_shards // process_count
    return range(process_index * per, (process_index + 1) * per)


class ShardedBatches:
    """Concatenates per-shard batches (each with ``get_state``/``set_state``/
    ``batches_per_epoch``/``__next__``) into this process's batch.

    ``predict_index`` entries (flat indices into a shard's rows × seq positions) are offset to
    this process's concatenated rows.
    """

    def __init__(self, iterators: Sequence[Any]):
        if not iterators:
            raise ValueError("no shard iterators for this process")
        self.iterators = list(iterators)
        self.step = 0
        self.set_state({"step": 0})

    @property
    def batches_per_epoch(self) -> int:
        return min(it.batches_per_epoch for it in self.iterators)

    def get_state(self) -> dict[str, int]:
        return {"step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        for it in self.iterators:
            per_epoch = it.batches_per_epoch
            it.set_state({"epoch": self.step // per_epoch, "position": self.step % per_epoch})

    def __iter__(self) -> "ShardedBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self.iterators]
        self.step += 1
        out = {}
        for key in parts[0]:
            if key == "predict_index":
                offsets, rows = [], 0
                for part in parts:
                    offsets.append(part["predict_index"] + rows * part["input_ids"].shape[1])
                    rows += part["input_ids"].shape[0]
                out[key] = np.concatenate(offsets)
            else:
                out[key] = np.concatenate([part[key] for part in parts])
        return out
