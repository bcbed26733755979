"""Multi-host training on JAX's own runtime: 2 local processes (4 fake CPU devices each,
coordinator on 127.0.0.1) give the same losses as 1 process with 8 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import WIKITEXT
from hf_oracle import tiny_model_with_tokenizer
from llm2vec_jax.data.batches import MNTPBatch
from llm2vec_jax.data.sharded import ShardedBatches, shards_of_process


class CountingShard:
    """A stand-in shard iterator: batch = rows numbered by (epoch, position)."""

    def __init__(self, tag, batches_per_epoch, rows=2, seq=3):
        self.tag, self.batches_per_epoch, self.rows, self.seq = tag, batches_per_epoch, rows, seq
        self.epoch = self.position = 0

    def set_state(self, state):
        self.epoch, self.position = state["epoch"], state["position"]

    def __next__(self):
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        value = 1000 * self.tag + 10 * self.epoch + self.position
        self.position += 1
        positions = np.array([[0, 1]] * self.rows)
        return MNTPBatch(np.full((self.rows, self.seq), value), np.ones((self.rows, self.seq)),
                         positions, positions + value)


def test_sharded_batches_concatenate_and_resume_from_the_step():
    batches = ShardedBatches([CountingShard(0, 3), CountingShard(1, 2)])
    seen = [next(batches) for _ in range(5)]
    assert [b.input_ids[0, 0] for b in seen] == [0, 1, 2, 10, 11]      # shard 0: 3 per epoch
    assert [b.input_ids[2, 0] for b in seen] == [1000, 1001, 1010, 1011, 1020]
    # Row-local prediction slots: joined as they are, no offsets.
    np.testing.assert_array_equal(seen[0].predict_positions, [[0, 1]] * 4)
    np.testing.assert_array_equal(seen[0].predict_labels[:, 0], [0, 0, 1000, 1000])
    again = ShardedBatches([CountingShard(0, 3), CountingShard(1, 2)])
    again.set_state(batches.get_state())
    assert batches.get_state() == {"step": 5}
    np.testing.assert_array_equal(next(again).input_ids, next(batches).input_ids)


def test_shards_of_process():
    assert list(shards_of_process(4, 1, 2)) == [2, 3]
    with pytest.raises(ValueError, match="must be a multiple of the process count 2"):
        shards_of_process(3, 0, 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(out):
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if r["split"] == "train"}


def test_two_processes_match_one_process_with_eight_devices(tmp_path, tokenizer_dir):
    model = tiny_model_with_tokenizer(tmp_path / "model", tokenizer_dir)
    corpus = tmp_path / "corpus.txt"
    lines = WIKITEXT.read_text(encoding="utf-8").splitlines()
    corpus.write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")

    def command(out):
        return [sys.executable, "-m", "llm2vec_jax.train", "--set", f"model.path={model}",
                "--set", "data.kind=file", "--set", f"data.path={corpus}",
                "--set", "data.max_seq_length=32", "--set", "data.num_shards=2",
                "--set", "mesh.data=8", "--set", "run.global_batch_size=8",
                "--set", "run.max_steps=4", "--set", "run.log_every=1", "--set", "run.eval_every=4",
                "--set", "run.save_every=2", "--set", "run.progress_bar=false",
                "--set", f"run.output_dir={out}"]

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM2VEC_JAX_", "XLA_FLAGS"))}
    single = subprocess.run(command(tmp_path / "one"), capture_output=True, text=True, timeout=600,
                            env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert single.returncode == 0, single.stderr[-3000:]

    port = free_port()
    procs = [subprocess.Popen(command(tmp_path / "two"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                                   "LLM2VEC_JAX_COORDINATOR": f"127.0.0.1:{port}",
                                   "LLM2VEC_JAX_NUM_PROCESSES": "2",
                                   "LLM2VEC_JAX_PROCESS_ID": str(i)})
             for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == [1, 2, 3, 4] and sorted(two) == [1, 2, 3, 4]
    for step in one:  # cross-process all-reduces may sum in another order than in-process
        assert two[step] == pytest.approx(one[step], rel=1e-5)
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()
