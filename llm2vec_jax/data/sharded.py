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



def shards_of_process(num_shards: int, process_index: int, process_count: int) -> range:
    if num_shards % process_count:
        raise ValueError(f"data.num_shards={num_shards} must be a multiple of the process "
                         f"count {process_count}")
    per = num_shards // process_count
    return range(process_index * per, (process_index + 1) * per)


class ShardedBatches:
    """Concatenates per-shard batches (each with ``get_state``/``set_state``/
    ``batches_per_epoch``/``__next__``) into this process's batch, by the batch type's own
    ``concat`` (rows in shard order)."""

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

    def __next__(self):
        parts = [next(it) for it in self.iterators]
        self.step += 1
        return parts[0] if len(parts) == 1 else type(parts[0]).concat(parts)
