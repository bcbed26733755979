"""Attention masks (the causal flag, padding, Mistral's sliding window) and grouped-query
attention.

Dimensions: B batch, S query length, T key length, N query heads, K kv heads, G = N/K query
heads per kv head, H head dim.

Masks are boolean "may attend" arrays built from an ``attention_mask`` [B, T]: 0 = padding,
any other value a segment id. A 0/1 mask is one text per row, so left padding, right padding
and batch size 1 all go through the same code; packed rows (several texts one after another,
ids 1, 2, ...) keep each text's attention inside its own segment.
A query row with no allowed key (a pad position in causal mode with left padding) gets a
uniform distribution instead of NaN: masked logits are the dtype's finite minimum, not -inf.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .dropout import dropout
from .kernels import matmul, rounding_einsum


def attention_allowed(attention_mask: jnp.ndarray, *, causal: bool,
                      sliding_window: int | None = None) -> jnp.ndarray:
    """[B, 1, S, S] bool: query s may attend key t (``attention_mask``: see module docstring).

    Bidirectional mode ignores ``sliding_window``, as the PyTorch llm2vec reference does (its
    bidirectional mask builder drops the window); causal mode honours it like HF Mistral:
    key t is visible from query s when ``s - sliding_window < t <= s``.
    """
    seq = attention_mask.shape[-1]
    keys = attention_mask[:, None, None, :]
    queries = attention_mask[:, None, :, None]
    # Padded keys are never visible; a real query sees its own segment. (Pad queries see all
    # real keys, as in HF: their outputs are never used.)
    allowed = (keys != 0) & ((keys == queries) | (queries == 0))
    if causal:
        query = jnp.arange(seq)[:, None]
        key = jnp.arange(seq)[None, :]
        visible = key <= query
        if sliding_window is not None:
            visible &= key > query - sliding_window
        allowed = allowed & visible[None, None]
    return allowed


def soft_cap(x: jnp.ndarray, cap: float | None) -> jnp.ndarray:
    """``cap · tanh(x / cap)`` (Gemma 2's logit soft-capping); x itself when cap is None."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def grouped_query_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray,
                            allowed: jnp.ndarray, *, dropout_rate: float = 0.0,
                            dropout_rng: jax.Array | None = None,
                            dropout_impl: str = "bits16", matmul_backward: str = "autodiff",
                            matmul_operands: str = "native", scale: float | None = None,
                            softcap: float | None = None) -> jnp.ndarray:
    """softmax(q kᵀ · scale) v with GQA; q [B,S,N,H], k/v [B,T,K,H], allowed [B,1,S,T].

    ``scale`` defaults to 1/√H; ``softcap`` caps the scaled logits at ±softcap with tanh
    before the mask (Gemma 2). Logits and softmax in float32; ``matmul_backward`` and
    ``matmul_operands`` are the ``Kernels`` choices for the two matmuls. Dropout (on the
    attention probabilities, as HF's ``attention_dropout``) only when ``dropout_rng`` is
    given.
    """
    batch, seq, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    # Heads-major [B,K,G,S,H] / [B,K,T,H] operands: both einsums become plain batched matmuls
    # over (B, K), which XLA:CPU runs faster than with the heads between the sequence axes.
    q = q.reshape(batch, seq, kv_heads, heads // kv_heads, head_dim).transpose(0, 2, 3, 1, 4)
    k = k.transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    # The mask is added (0 or the finite minimum, as HF), not select()ed: XLA:CPU fuses a
    # select of the [B,K,G,S,T] logits into the softmax badly. Adding the minimum to a logit
    # gives the minimum exactly (a logit is far below the minimum's ulp), so a row with no
    # visible key is still uniform.
    bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[:, :, None]
    scale = head_dim ** -0.5 if scale is None else scale

    # Recomputed in the backward pass from q, k, v (saved anyway), as flash attention does:
    # saved, the float32 and 16-bit probabilities are [B,K,G,S,T] per layer, quadratic in
    # the length. Only the dropout keep mask is saved (drawing it again costs more).
    @functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.save_only_these_names(
        "attention_keep_mask"))
    def core(q, k, v, bias, dropout_rng):
        logits = matmul("bkgsh,bkth->bkgst", q, k, matmul_operands)
        logits = soft_cap(logits * scale, softcap)
        probs = jax.nn.softmax(logits + bias, axis=-1)
        probs = dropout(probs, dropout_rate, dropout_rng, dropout_impl,
                        mask_name="attention_keep_mask")
        return rounding_einsum("bkgst,bkth->bkgsh", probs.astype(v.dtype), v, matmul_backward,
                               matmul_operands)

    out = core(q, k, v, bias, dropout_rng)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, seq, heads, head_dim).astype(q.dtype)


class AttentionImplError(ValueError):
    """The chosen attention kernel (``Kernels.attention``) cannot run this call."""


def cudnn_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, allowed: jnp.ndarray, *,
                    dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
                    implementation: str = "cudnn", scale: float | None = None,
                    softcap: float | None = None) -> jnp.ndarray:
    """The same function as ``grouped_query_attention`` through cuDNN's fused kernel.

    The mask goes in as ``allowed`` itself ([B,1,S,T], which cuDNN applies as an additive
    bias) rather than as sequence lengths: lengths describe right padding only, the boolean
    mask covers left padding, causal and sliding-window masks alike, and keeps the finite
    "uniform row" behaviour for queries with no visible key. ``implementation`` exists so
    the mask handling can be checked against the einsum path on CPU ("xla").
    """
    if dropout_rng is not None and dropout_rate > 0.0:
        raise AttentionImplError(
            "kernels.attention='cudnn' has no attention-probability dropout "
            "(jax.nn.dot_product_attention takes no rng); use kernels.attention='xla' when "
            "training with attention_dropout > 0")
    if softcap is not None:
        raise AttentionImplError("kernels.attention='cudnn' has no attention-logit soft-capping "
                                 "(Gemma 2); use kernels.attention='xla'")
    if implementation == "cudnn" and q.dtype not in (jnp.bfloat16, jnp.float16):
        raise AttentionImplError(
            f"kernels.attention='cudnn' needs bfloat16/float16 compute, got {q.dtype}; set "
            "dtype='bfloat16' or use kernels.attention='xla'")
    try:
        return jax.nn.dot_product_attention(q, k, v, mask=allowed, scale=scale,
                                            implementation=implementation)
    except (NotImplementedError, RuntimeError, ValueError) as e:
        raise AttentionImplError(
            f"kernels.attention='cudnn' is not supported here ({type(e).__name__}: {e}); "
            "use kernels.attention='xla'") from e


def attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, allowed: jnp.ndarray, *,
           impl: str = "xla", dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
           dropout_impl: str = "bits16", matmul_backward: str = "autodiff",
           matmul_operands: str = "native", scale: float | None = None,
           softcap: float | None = None) -> jnp.ndarray:
    """Dispatch on ``Kernels.attention``."""
    if impl == "cudnn":
        return cudnn_attention(q, k, v, allowed, dropout_rate=dropout_rate,
                               dropout_rng=dropout_rng, scale=scale, softcap=softcap)
    return grouped_query_attention(q, k, v, allowed, dropout_rate=dropout_rate,
                                   dropout_rng=dropout_rng, dropout_impl=dropout_impl,
                                   matmul_backward=matmul_backward,
                                   matmul_operands=matmul_operands, scale=scale,
                                   softcap=softcap)
