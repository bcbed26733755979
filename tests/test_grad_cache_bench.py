"""``bench/grad_cache.py``'s settings: ``BATCH`` or ``BATCH/CHUNK``, and the training config
each one runs (the shipped SimCSE config with the bench's overrides, loaded by the trainer's
own config loader)."""

from __future__ import annotations

import argparse
import sys

from conftest import REPO
from llm2vec_jax.train.config import load_config

sys.path.insert(0, str(REPO / "bench"))
import grad_cache  # noqa: E402


def test_each_setting_runs_the_shipped_simcse_config_at_its_batch_and_chunk():
    assert grad_cache.parse_setting("32") == (32, None)
    assert grad_cache.parse_setting("128/16") == (128, 16)
    args = argparse.Namespace(dtype="bfloat16", data="sample:wiki1m", eval_fraction=0.05,
                              steps=6, seed=0)
    for batch, chunk in ((32, None), (128, 16)):
        config = load_config(REPO / grad_cache.CONFIG,
                             grad_cache.overrides(batch, chunk, args))
        assert config.run.stage == "simcse" and config.model.adapter is None
        assert config.model.dtype == "bfloat16" and config.data.path == "sample:wiki1m"
        assert config.run.global_batch_size == batch
        assert config.contrastive.grad_cache_chunk == chunk
        assert config.run.max_steps == 6 and config.run.log_every == 1
        assert config.run.eval_every > config.run.max_steps  # no evaluation in the timing
        assert config.data.eval_fraction * 3000 >= 128  # the sample's held-out split holds a batch
