"""Every decoder family trains: LoRA on every projection, the MNTP and SimCSE objectives give
a finite loss and a gradient on each adapter, and a step lowers the loss."""

import jax
import numpy as np
import pytest
from flax import nnx

from hf_oracle import batch, hf_logits, make_hf_model, save_hf_model
from llm2vec_jax import load_hf_checkpoint
from llm2vec_jax.data.batches import ContrastiveBatch, Features, MNTPBatch
from llm2vec_jax.lora import ALL_TARGETS, LORA_FILTER, LoRAConfig, attach_lora
from llm2vec_jax.train.steps import contrastive_objective, mntp_objective


def _mntp_batch():
    ids, mask = batch("right", 3, 10, seed=1)
    positions = np.tile(np.arange(4, dtype=np.int32), (3, 1))
    return MNTPBatch(ids, mask, positions, ids[:, 1:5].copy())


def _simcse_batch():
    # Different texts on the two sides, so the loss is not already ~0 for any encoder.
    views = [batch("right", 3, 10, seed=seed) for seed in (2, 3)]
    return ContrastiveBatch(*(Features(ids, mask, mask.copy()) for ids, mask in views))


@pytest.mark.parametrize("name", ["qwen2", "qwen3_tied", "gemma", "gemma2", "gemma3"])
def test_lora_mntp_and_simcse_steps(name, tmp_path):
    model = load_hf_checkpoint(save_hf_model(make_hf_model(name), tmp_path / name))
    attach_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.05))
    objectives = {
        "mntp": (lambda m, rng: mntp_objective(m, _mntp_batch(), rng)[0]),
        "simcse": (lambda m, rng: contrastive_objective(m, _simcse_batch(), rng, scale=20.0)[0]),
    }
    for stage, objective in objectives.items():
        @nnx.jit
        def loss_and_grads(model, rng):
            return nnx.value_and_grad(objective, argnums=nnx.DiffState(0, LORA_FILTER))(model, rng)

        rng = jax.random.key(0)
        loss, grads = loss_and_grads(model, rng)
        grads = nnx.to_pure_dict(grads)["layers"]
        assert np.isfinite(float(loss)), stage
        # B starts at zero, so every adapter's B has a gradient (A's waits for B to move).
        for p in ALL_TARGETS:
            assert np.abs(np.asarray(grads[f"{p}_lora_b"])).max() > 0, (stage, p)
        # A short step down the normalised gradient: first order, so the loss must drop.
        norm = np.sqrt(sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grads)))
        step = jax.tree.map(lambda g: -1e-3 / norm * g, grads)
        for key, delta in step.items():
            var = getattr(model.layers, key)
            var.set_value(var[...] + delta)
        assert float(loss_and_grads(model, rng)[0]) < float(loss), stage


def test_mntp_loss_is_on_the_soft_capped_logits(tmp_path):
    """Gemma 2 caps its final logits: the MNTP loss is HF's cross-entropy on those."""
    hf = make_hf_model("gemma2")
    model = load_hf_checkpoint(save_hf_model(hf, tmp_path / "gemma2"))
    mntp = _mntp_batch()
    loss = float(mntp_objective(model, mntp, None, causal=True)[0])
    logits = hf_logits(hf, mntp.input_ids, mntp.attention_mask)
    rows = np.take_along_axis(logits, mntp.predict_positions[..., None], axis=1)
    logz = np.log(np.exp(rows).sum(-1))
    nll = logz - np.take_along_axis(rows, mntp.predict_labels[..., None], axis=-1)[..., 0]
    assert abs(loss - nll.mean()) <= 1e-5
