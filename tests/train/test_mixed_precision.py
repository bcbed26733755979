"""bf16 mixed-precision training: frozen base weights stored and multiplied in bfloat16 (float32
accumulation), the LoRA weights, their gradients and the Adam state in float32, softmax, loss
and pooling in float32 — against the same step computed in float32 on the same weights.

The tolerance, derived rather than tuned. Both runs use the *same* bf16-stored base weights
(the bf16 model's weights, upcast exactly for the float32 run), so they differ only in where
the bf16 run rounds an activation to bf16: relative error at most u = 2^-8 (bf16 keeps 8
significant bits) at each rounding. A transformer layer rounds at R_LAYER = 12 places on the
forward path (normed input, q, k, v, attention output, o-projection, residual sum, normed
input of the MLP, gate, up, their product, down) and at as many on the backward path
(their cotangents). Modelled as independent errors uniform in [-u, u] (standard deviation
u/√3) that add up as a random walk, a quantity behind R roundings has a relative error of
standard deviation u·√(R/3); the tests allow 4 of those standard deviations:

    forward (embeddings, loss terms):  tol = 4·u·√(R_LAYER·L / 3)
    gradients:                         tol = 4·u·√((2·R_LAYER·L + R_HEAD) / 3)

R_HEAD = 1 for MNTP: on CPU (``kernels.matmul_backward=operands``) the LM head's backward
rounds the float32 logits' cotangent to bf16, as the torch reference's bf16 logits do; 0 for
the contrastive loss, which has no head. (On a CPU without bf16 dot instructions,
``matmul_operands=float32``, that rounding does not happen: the bound then has one rounding
to spare.)

An operation computed in bf16 that should be float32 (the softmax, a pooling sum over the
sequence, the loss) adds errors the model does not count and fails these, and the dtype
checks name those operations directly.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hf_oracle import random_normal

from llm2vec_jax.data.batches import ContrastiveBatch, Features, MNTPBatch
from llm2vec_jax.lora import LoRAConfig, attach_lora
from llm2vec_jax.models import ModelConfig, init_model
from llm2vec_jax.train import steps as S

U_BF16 = 2.0 ** -8
R_LAYER = 12
LAYERS = 4
FORWARD_TOL = 4 * U_BF16 * math.sqrt(R_LAYER * LAYERS / 3)
R_HEAD = {"simcse": 0, "mntp": 1}
GRAD_TOL = {objective: 4 * U_BF16 * math.sqrt((2 * R_LAYER * LAYERS + r) / 3)
            for objective, r in R_HEAD.items()}
B, SEQ, VOCAB = 16, 24, 256


def model_pair(dropout: float = 0.0):
    """(graphdef, lora, frozen) for compute float32 and bfloat16 over the same bf16 weights
    and the same float32 LoRA (random A and B, so both carry gradient)."""
    config = ModelConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256,
                         num_layers=LAYERS, num_heads=4, num_kv_heads=2, head_dim=32,
                         param_dtype="bfloat16", dtype="bfloat16", attention_dropout=dropout)
    out = {}
    for compute in ("float32", "bfloat16"):
        model = init_model(dataclasses.replace(config, dtype=compute), seed=0)
        attach_lora(model, LoRAConfig(r=4, alpha=8, dropout=dropout), seed=0)
        graphdef, lora, frozen = S.split_model(model)
        leaves, treedef = jax.tree.flatten(lora)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        lora = jax.tree.unflatten(treedef, [0.05 * random_normal(k, x.shape, x.dtype)
                                            for k, x in zip(keys, leaves)])
        out[compute] = graphdef, lora, frozen
    return out


def contrastive_batch() -> ContrastiveBatch:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (B, SEQ)).astype(np.int32)
    mask = np.ones((B, SEQ), np.int32)
    mask[: B // 2, :6] = 0  # left padding, as contrastive batches are
    other = ids.copy()
    changed = rng.random((B, SEQ)) < 0.75  # positives share a quarter of the query's tokens
    other[changed] = rng.integers(0, VOCAB, changed.sum())
    return ContrastiveBatch(Features(ids, mask, mask), Features(other, mask, mask))


def mntp_batch() -> MNTPBatch:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, VOCAB, (B, SEQ)).astype(np.int64)
    labels = np.where(rng.random((B, SEQ)) < 0.2, ids, -100)
    masked = np.where(labels != -100, 0, ids)
    return MNTPBatch.from_labels(masked.astype(np.int32), np.ones((B, SEQ), np.int32),
                                 labels, 8)


def relative(a, b) -> float:
    """‖a − b‖ / ‖b‖ over all leaves of two pytrees."""
    num = sum(float(jnp.sum((x.astype(jnp.float32) - y) ** 2))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    den = sum(float(jnp.sum(y ** 2)) for y in jax.tree.leaves(b))
    return math.sqrt(num / den)


def simcse(model, batch, rng):
    return S.contrastive_objective(model, batch, rng, scale=20.0)


@pytest.mark.parametrize("objective", ["simcse", "mntp"])
def test_bf16_loss_and_lora_gradients_match_float32(objective):
    pair = model_pair()
    batch = contrastive_batch() if objective == "simcse" else mntp_batch()
    fn = simcse if objective == "simcse" else S.mntp_objective
    results = {}
    for compute, (graphdef, lora, frozen) in pair.items():
        def loss(lora):
            return fn(nnx.merge(graphdef, lora, frozen), batch, None)[0]
        results[compute] = jax.value_and_grad(loss)(lora)
    (loss32, grads32), (loss16, grads16) = results["float32"], results["bfloat16"]
    assert loss16.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}
    # A loss is a mean of per-row terms, each within FORWARD_TOL of its own size.
    assert abs(float(loss16) - float(loss32)) <= FORWARD_TOL * abs(float(loss32))
    assert relative(grads16, grads32) <= GRAD_TOL[objective]
    # The two runs do differ (the bf16 path really computes in bf16).
    assert relative(grads16, grads32) > U_BF16 / 16


def test_bf16_embeddings_are_float32_and_match():
    pair = model_pair()
    view = contrastive_batch().q
    pooled = {c: S.embed(nnx.merge(g, lora, frozen), view, None, "mean")
              for c, (g, lora, frozen) in pair.items()}
    assert pooled["bfloat16"].dtype == jnp.float32
    per_row = (jnp.linalg.norm(pooled["bfloat16"] - pooled["float32"], axis=-1)
               / jnp.linalg.norm(pooled["float32"], axis=-1))
    assert float(per_row.max()) <= FORWARD_TOL


def test_bf16_training_tracks_float32():
    """30 SimCSE steps with dropout (attention 0.3, LoRA 0.1) and AdamW from the same start:
    the bf16 run's LoRA, gradients and Adam moments stay float32 and its loss curve follows
    float32's. Dropout masks depend only on the rng, so both runs drop the same units; the
    runs' parameters drift apart by rounding only, so each step's loss stays within the
    forward tolerance of float32's, widened by the drift: an update of lr 1e-3 moves a LoRA
    weight by ~1e-3 per step, and a rounding-sized relative difference in the gradient
    changes the update by at most that (Adam normalises the gradient's size), so after t
    steps the parameters differ by ≲ t·GRAD_TOL·lr — far below one update, which keeps the
    per-step bound at FORWARD_TOL plus the gradient tolerance."""
    pair = model_pair(dropout=0.1)
    batch = contrastive_batch()
    tx = optax.adamw(1e-4, weight_decay=0.0)
    curves, states = {}, {}
    for compute, (graphdef, lora, frozen) in pair.items():
        state = S.TrainState(step=jnp.zeros((), jnp.int32), lora=lora, frozen=frozen,
                             opt_state=tx.init(lora))
        step = jax.jit(S.make_train_step(graphdef, tx, simcse))
        losses = []
        for n in range(30):
            state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(0), n))
            losses.append(float(metrics["loss"]))
        curves[compute], states[compute] = np.array(losses), state
    state16 = states["bfloat16"]
    assert {x.dtype for x in jax.tree.leaves((state16.lora, state16.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(state16.frozen)
            if jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype(jnp.bfloat16)}
    f32, bf16 = curves["float32"], curves["bfloat16"]
    assert f32[-5:].mean() < 0.8 * f32[:5].mean()  # it learns, so "tracks" means something
    assert np.all(np.abs(bf16 - f32) <= (FORWARD_TOL + GRAD_TOL["simcse"]) * np.abs(f32))
