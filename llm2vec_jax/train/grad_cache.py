"""GradCache (Gao et al. 2021), ``contrastive.grad_cache_chunk``: the in-batch-negative loss
needs every embedding of the global batch, but activation memory should scale with a chunk.
Inside one jitted step: embed all chunks without keeping activations, take the loss and its
gradient w.r.t. the embeddings, then re-run each chunk under ``jax.vjp`` and pull that
chunk's embedding gradient back to the LoRA parameters, summing over chunks. It is written
as a ``custom_vjp`` on the embedding function, so the ordinary train step (``value_and_grad``
of the objective) gets GradCache gradients unchanged. Every row draws its dropout from its
own key (``steps.encode_rows``), so both passes, and the plain step, see the same masks.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ..data.batches import ContrastiveBatch, Features
from ..lora import FROZEN_FILTER, LORA_FILTER
from ..models.pooling import pool
from ..typed_config import TrainConfigError
from .losses import matryoshka_loss
from .steps import encode_rows, false_negatives, row_keys, view_keys


def _to_chunks(x, n_chunks: int):
    # Chunk c holds rows c, c + C, c + 2C, ...: with the batch sharded in contiguous blocks
    # over devices, every chunk then spans all devices instead of living on one.
    return x.reshape(x.shape[0] // n_chunks, n_chunks, *x.shape[1:]).swapaxes(0, 1)


def _from_chunks(x):
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def _embed_chunk(graphdef, pooling, causal, lora, frozen, view: Features, keys):
    model = nnx.merge(graphdef, lora, frozen)
    hidden = encode_rows(model, view.input_ids, view.attention_mask, keys, causal=causal)
    return pool(hidden, view.attention_mask, view.embed_mask, pooling)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def chunked_embed(graphdef, pooling: str, causal: bool, n_chunks: int, lora, frozen, feats,
                  keys):
    """[B, E] embeddings of ``feats`` computed ``n_chunks`` chunks at a time (GradCache)."""
    chunks = jax.tree.map(lambda x: _to_chunks(x, n_chunks), (feats, keys))
    out = jax.lax.map(lambda xs: _embed_chunk(graphdef, pooling, causal, lora, frozen, *xs),
                      chunks)
    return _from_chunks(out)


def _chunked_embed_fwd(graphdef, pooling, causal, n_chunks, lora, frozen, feats, keys):
    # Residuals are the inputs only: no activation outlives its chunk.
    return (chunked_embed(graphdef, pooling, causal, n_chunks, lora, frozen, feats, keys),
            (lora, frozen, feats, keys))


def _chunked_embed_bwd(graphdef, pooling, causal, n_chunks, residuals, grad):
    lora, frozen, feats, keys = residuals

    def body(acc, xs):
        feats_c, keys_c, grad_c = xs
        _, vjp = jax.vjp(
            lambda l: _embed_chunk(graphdef, pooling, causal, l, frozen, feats_c, keys_c), lora)
        (d_lora,) = vjp(grad_c)
        return jax.tree.map(lambda a, d: a + d.astype(jnp.float32), acc, d_lora), None

    # Accumulate in float32 whatever the parameter dtype: chunks add up many small terms.
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), lora)
    xs = jax.tree.map(lambda x: _to_chunks(x, n_chunks), (feats, keys, grad))
    total, _ = jax.lax.scan(body, zeros, xs)
    total = jax.tree.map(lambda t, x: t.astype(x.dtype), total, lora)
    return total, None, None, None  # frozen weights, tokens and keys get no gradient


chunked_embed.defvjp(_chunked_embed_fwd, _chunked_embed_bwd)


def grad_cache_objective(model, batch: ContrastiveBatch, rng, *, scale: float,
                         pooling: str = "mean", chunk: int, causal: bool = False,
                         mask_duplicates: bool = True,
                         matryoshka_dims: tuple[int, ...] | None = None):
    """``contrastive_objective`` with the same value and gradients, ``chunk`` rows at a time."""
    if any(view.packed for view in batch.views):
        raise ValueError("GradCache chunks one text a row; packed batches are not chunked "
                         "(the data pipeline packs only without contrastive.grad_cache_chunk)")
    graphdef, lora, frozen = nnx.split(model, LORA_FILTER, FROZEN_FILTER)
    embeddings = []
    for view, key in zip(batch.views, view_keys(rng, len(batch.views))):
        rows = view.input_ids.shape[0]
        if rows % chunk:
            # A setting to fix (one line in the CLIs): the plan CLI reaches here unchecked.
            raise TrainConfigError(f"contrastive.grad_cache_chunk={chunk} does not divide the "
                                   f"global batch of {rows}")
        # The same per-row keys as steps.embed, so chunking changes no dropout mask.
        embeddings.append(chunked_embed(graphdef, pooling, causal, rows // chunk, lora, frozen,
                                        view, row_keys(key, rows)))
    loss = matryoshka_loss(*embeddings, scale=scale,
                           exclude=false_negatives(batch, mask_duplicates), dims=matryoshka_dims)
    return loss, {"loss": loss}
