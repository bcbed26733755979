"""Training losses: MNTP (masked next-token prediction) and the contrastive InfoNCE loss.

Both take plain arrays and are jit/grad friendly (static shapes, no host sync).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..data.batches import IGNORE_INDEX
from ..models import kernels as K
from ..models.attention import soft_cap


def lm_head_weight(model) -> jax.Array:
    """The [V, D] output projection of a ``Transformer`` (the embedding when tied)."""
    return model.lm_head_weight()


def mntp_loss(hidden: jax.Array, head: jax.Array, predict_positions: jax.Array,
              predict_labels: jax.Array, *, precision=None,
              softcap: float | None = None,
              matmul_backward: str = "autodiff",
              matmul_operands: str = "native") -> tuple[jax.Array, dict]:
    """Mean cross-entropy of the scored MNTP tokens; ``(loss, metrics)``.

    ``hidden`` [B, S, D] are the final hidden states, ``head`` [V, D] the LM head,
    ``predict_positions`` [B, P] each row's *predicting* positions (i-1 for a token masked at
    i), ``predict_labels`` [B, P] the target ids, -100 for padding slots (``MNTPBatch``).

    Equal to the reference ``CrossEntropyLoss()(logits[:, :-1].flatten, labels[:, 1:].flatten)``
    but the scored rows are gathered *before* the vocabulary projection, so only B·P×V
    logits exist instead of B·S×V (for S=512, p=0.2 that is ~3x less memory and FLOPs in the
    head), and each row gathers from itself (no cross-device gather of a sharded batch). The
    projection runs in the hidden dtype with float32 accumulation (as ``Transformer.logits``)
    and the softmax in float32. With no scored token at all the loss is 0, not the
    reference's NaN, so one empty batch cannot poison training.

    ``softcap``: the model's final-logit soft-capping (Gemma 2), applied as HF does.

    ``matmul_backward="operands"`` (``models/kernels.py``) runs the head's backward matmul on
    the logits' cotangent rounded to the 16-bit hidden dtype. Unlike the projections' rounding
    this one is not exact (the logits stay float32), but it is the precision of the torch
    reference's bf16 step, whose logits and their gradient are bf16; autodiff instead runs a
    float32 GEMM on a float32 copy of the [V, D] head. With ``matmul_operands="float32"``
    (16-bit operands multiplied as float32) neither rounds: the head's backward is autodiff's.

    metrics: ``loss``, ``accuracy`` (the label's logit is the largest, over scored tokens; a
    tie counts, where argmax would take the first), ``count``.
    """
    index = predict_positions.astype(jnp.int32)[..., None]
    rows = jnp.take_along_axis(hidden, index, axis=1)  # [B, P, D]
    head = head.astype(rows.dtype)
    if precision is not None:
        logits = jnp.einsum("bpd,vd->bpv", rows, head, precision=precision,
                            preferred_element_type=jnp.float32)
    elif matmul_backward == "operands" and K.is_16bit_float(rows.dtype):
        logits = K.operands_dtype_einsum("bpd,vd->bpv", rows, head, matmul_operands)
    else:
        logits = K.matmul("bpd,vd->bpv", rows, head, matmul_operands)
    logits = logits.astype(jnp.float32)
    logits = soft_cap(logits, softcap)
    valid = predict_labels != IGNORE_INDEX
    target = jnp.where(valid, predict_labels, 0).astype(jnp.int32)
    target_logit = jnp.take_along_axis(logits, target[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
    count = jnp.sum(valid)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    loss = jnp.sum(jnp.where(valid, nll, 0.0)) / denom
    # Not argmax: XLA:CPU runs its (value, index) reduction single-threaded, 48 ms of a
    # 3 s bf16 MNTP step for 450 scored rows x 49k tokens; the max is logsumexp's own.
    correct = jnp.sum(valid & (target_logit >= jnp.max(logits, axis=-1)))
    metrics = {"loss": loss, "accuracy": correct.astype(jnp.float32) / denom, "count": count}
    return loss, metrics


def _l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    # torch.nn.functional.normalize: x / max(||x||, eps).
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def same_text_as_positive(positive_ids: jax.Array, positive_mask: jax.Array,
                          doc_ids: list[jax.Array], doc_masks: list[jax.Array]) -> jax.Array:
    """[B, B + Bn] True where document column j is not row i's own positive but holds the same
    text (the same real tokens at the same positions of a left-padded row): a false negative.

    Views narrower than the positives' are left-padded to their width first (every
    contrastive batch is left-padded, so equal texts then line up).
    """
    width = positive_ids.shape[1]

    def real_tokens(ids, mask):
        pad = ((0, 0), (width - ids.shape[1], 0))
        mask = jnp.pad(mask, pad)
        return jnp.where(mask > 0, jnp.pad(ids, pad), -1)

    key = real_tokens(positive_ids, positive_mask)
    docs = jnp.concatenate([real_tokens(i, m) for i, m in zip(doc_ids, doc_masks)])
    same = jnp.all(key[:, None, :] == docs[None, :, :], axis=-1)
    own = jnp.arange(docs.shape[0])[None, :] == jnp.arange(key.shape[0])[:, None]
    return same & ~own


def contrastive_loss(q: jax.Array, d: jax.Array, n: jax.Array | None = None,
                     scale: float = 20.0, exclude: jax.Array | None = None) -> jax.Array:
    """The reference ``HardNegativeNLLLoss``: InfoNCE over cosine similarities × ``scale``.

    Row i of ``q`` [B, E] must pick column i of the documents ``[d; n]`` ([B + Bn, E]):
    its positive is ``d[i]``, every other positive and every hard negative in ``n`` is a
    negative. Only the query → document direction is scored (no symmetric term). The
    reference all-gathers q/d/n across data-parallel workers before scoring; in JAX, pass
    the global (sharded) batch and the gather is implicit. Computed in float32 with full
    matmul precision (the B × B score matrix is tiny, TPUs would otherwise use bf16 passes).

    ``exclude`` [B, B + Bn] drops those documents from row i's softmax (false negatives,
    ``same_text_as_positive``); the reference has no such option.
    """
    docs = d if n is None else jnp.concatenate([d, n], axis=0)
    scores = jnp.matmul(_l2_normalize(q), _l2_normalize(docs).T,
                        precision=jax.lax.Precision.HIGHEST) * scale
    if exclude is not None:
        scores = jnp.where(exclude, -jnp.inf, scores)
    B = q.shape[0]
    positive = scores[jnp.arange(B), jnp.arange(B)]
    return jnp.mean(jax.nn.logsumexp(scores, axis=-1) - positive)


def matryoshka_loss(q: jax.Array, d: jax.Array, n: jax.Array | None = None,
                    scale: float = 20.0, exclude: jax.Array | None = None,
                    dims: tuple[int, ...] | None = None) -> jax.Array:
    """Matryoshka representation learning (Kusupati et al. 2022) on ``contrastive_loss``:
    the unweighted sum of the InfoNCE losses of the first ``m`` dimensions of every
    embedding, for each ``m`` in ``dims`` (each prefix is normalised on its own, so a
    truncated embedding is trained as what ``encode(truncate_dim=m)`` returns). Only the
    listed widths are scored: list the full width too to keep training it. ``dims`` None:
    plain ``contrastive_loss``."""
    if not dims:
        return contrastive_loss(q, d, n, scale, exclude)
    return sum(contrastive_loss(q[:, :m], d[:, :m], None if n is None else n[:, :m], scale,
                                exclude) for m in dims)
