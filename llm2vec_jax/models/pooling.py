"""Pooling: [B, S, D] hidden states to one float32 embedding per text, in every mode the
PyTorch reference ``llm2vec`` 0.2.3 offers (its ``get_pooling``), for plain and packed rows.

Pooling (``get_pooling``, left padding asserted). With ``skip_instruction`` the pooling mask is
``embed_mask``, else ``attention_mask`` (we fold that choice into the returned ``embed_mask``);
the model itself always sees the full ``attention_mask``. With k = mask.sum():
- ``mean``: mean of the last k positions. For k = 0 (empty text) the slice ``[-0:]`` is the
  whole padded row, so the reference averages pad states too; we return zeros instead (its
  result depends on the batch's padding, so it is not reproducible and not meaningful).
- ``weighted_mean``: weights 1..k on the last k positions (later tokens weigh more, the
  position-weighted mean of SGPT), normalized by their sum; k = 0 gives zeros (as here).
- ``eos_token`` / ``last_token``: ``hidden[:, -1]``, the last real token under left padding,
  whatever the masks say (so with an instruction it is still the row's last token). Empty rows:
  the reference returns the last pad state; we return zeros.
- ``bos_token``: ``hidden[input_ids == bos_token_id]`` -- a boolean gather that returns
  [num_bos, D], silently [0, D] if the tokenizer adds no BOS (SmolLM2) and too many rows if a
  BOS appears inside a text. We take the first real position of each row (the BOS when the
  tokenizer adds one) and refuse the mode up front when the tokenizer adds no BOS
  (``text.reference.validate_pooling(mode, tokenizer)``).
Our ``pool`` uses mask positions rather than "last k columns", which coincide for the masks
``tokenize`` builds (a suffix of the real tokens) and make left and right padding agree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

POOLING_MODES = ("mean", "weighted_mean", "eos_token", "last_token", "bos_token")


class PoolingModeError(ValueError):
    """A pooling mode that does not exist or does not fit the tokenizer: a setting to fix (one
    line in the CLIs, see llm2vec_jax/cli_errors.py), not a bug."""


def check_pooling_mode(mode: str) -> str:
    if mode not in POOLING_MODES:
        raise PoolingModeError(
            f"unknown pooling mode {mode!r}; valid modes: {', '.join(POOLING_MODES)}")
    return mode


def pool(hidden: jax.Array, attention_mask: jax.Array, embed_mask: jax.Array,
         mode: str) -> jax.Array:
    """[B, S, D] hidden states -> [B, D] float32 sentence embeddings (padding-side agnostic).

    ``embed_mask`` is the pooling mask (instruction excluded, or equal to ``attention_mask``
    when instructions are not skipped). Rows with nothing to pool give zeros.
    """
    embed_mask = jnp.asarray(embed_mask)
    row = jnp.asarray(attention_mask) > 0
    if mode in ("mean", "weighted_mean"):
        # The averaged positions are embed_mask's, even padding (the reference's SimCSE
        # collator pools every column: ``simcse_features(compat_pool_all_positions=True)``).
        row = row | (embed_mask > 0)
    return pool_segments(hidden, row.astype(jnp.int32), embed_mask, mode, 1)[:, 0]


def pool_segments(hidden: jax.Array, segment_ids: jax.Array, embed_mask: jax.Array,
                  mode: str, num_segments: int) -> jax.Array:
    """Packed rows: [B, S, D] hidden states -> [B, num_segments, D] float32, one embedding per
    text; text j of a row is the run of tokens with ``segment_ids == j + 1`` (0 = padding).

    Each segment is pooled exactly as ``pool`` pools a row of its own; absent segments give
    zeros.
    """
    check_pooling_mode(mode)
    hidden = jnp.asarray(hidden).astype(jnp.float32)
    segment_ids = jnp.asarray(segment_ids)
    member = segment_ids[..., None] == jnp.arange(1, num_segments + 1)  # [B, S, P]
    pooled = member & (jnp.asarray(embed_mask) > 0)[..., None]
    if mode in ("mean", "weighted_mean"):
        if mode == "mean":
            weights = pooled.astype(jnp.float32)
        else:
            # Rank within the pooled tokens, 1..k: equals the reference's arange over its last k
            # columns because the pooled tokens are a contiguous suffix of the real ones.
            weights = jnp.cumsum(pooled, axis=1).astype(jnp.float32) * pooled
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / jnp.maximum(total, 1e-9)
        # where(), not multiply: pad-position states may be non-finite and 0*nan is nan.
        masked = jnp.where(pooled.any(-1)[..., None], hidden, 0.0)
        return jnp.einsum("bsp,bsd->bpd", weights, masked,
                          precision=jax.lax.Precision.HIGHEST)
    s = hidden.shape[1]
    position = jnp.arange(s)[None, :, None]
    if mode in ("eos_token", "last_token"):
        idx = jnp.where(member, position, -1).max(axis=1)  # [B, P]
    else:  # bos_token: first real token, which is the BOS for tokenizers that add one
        idx = jnp.where(member, position, s).min(axis=1)
    picked = jnp.take_along_axis(hidden, jnp.clip(idx, 0, s - 1)[..., None], axis=1)
    return jnp.where(member.any(axis=1)[..., None], picked, 0.0)
