"""Inverted dropout, with keep masks from ``jax.random.bernoulli`` or from 16 random bits per
element (``Kernels.dropout``: ``bernoulli`` | ``bits16``).

Training draws a keep mask for every LoRA input and every attention-probability matrix, and
on CPU the threefry bits behind ``jax.random.bernoulli`` (one 32-bit word and a float
conversion per element) cost a large share of the step (docs/performance.md). ``bits16`` uses two
16-bit halves of each word, halving the random work; its keep probability is quantised to a
multiple of 2⁻¹⁶ (rate 0.05 → 0.0500031, rate 0.3 → 0.2999878), well inside the sampling
noise of any run. Its words are ``jax.random.bits``' own, from the threefry hash written out
round by round (``threefry_bits``): XLA:CPU lowers JAX's threefry as a 5-iteration loop that
no fusion crosses, 7x slower for a layer's LoRA masks (25 vs 3.6 ms for 2.56M words).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

_LEVELS = 1 << 16
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = np.uint32(0x1BD11BDA)


def keep_threshold(rate: float) -> int:
    """Elements whose 16-bit draw is below this are kept: P(keep) = threshold / 2¹⁶."""
    return round((1.0 - rate) * _LEVELS)


def split_keys(keys: jax.Array, num: int) -> jax.Array:
    """``jax.random.split`` for a key or an array of keys: [*K] → [num, *K]."""
    if keys.ndim == 0:
        return jax.random.split(keys, num)
    split = jax.vmap(lambda k: jax.random.split(k, num))(keys.reshape(-1))
    return jnp.moveaxis(split, 1, 0).reshape((num, *keys.shape))


def fold_in_keys(keys: jax.Array, data: int) -> jax.Array:
    """``jax.random.fold_in`` for a key or an array of keys."""
    if keys.ndim == 0:
        return jax.random.fold_in(keys, data)
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys.reshape(-1)).reshape(keys.shape)


def threefry_bits(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.bits(key, (n,), jnp.uint32)`` for a threefry2x32 key (under JAX's default
    ``jax_threefry_partitionable``): the hash of the counters (0, i), its five blocks of four
    rounds unrolled so that XLA fuses them into one pass. Other key kinds go to JAX."""
    if str(jax.random.key_impl(key)) != "threefry2x32" or n >= 2 ** 32:
        return jax.random.bits(key, (n,), jnp.uint32)
    k0, k1 = jax.random.key_data(key)
    schedule = (k0, k1, k0 ^ k1 ^ _THREEFRY_PARITY)
    x0 = jnp.full((n,), k0, jnp.uint32)  # the counters' high words, 0, plus the key
    x1 = jnp.arange(n, dtype=jnp.uint32) + k1
    for block in range(5):
        for rotation in _THREEFRY_ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation)))
        x0 = x0 + schedule[(block + 1) % 3]
        x1 = x1 + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x0 ^ x1


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...],
              impl: str = "bits16") -> jax.Array:
    """Boolean mask, True with probability 1 - ``rate`` (``bits16``: ≈, see ``keep_threshold``).

    ``key`` is one key, or an array of keys matching the leading axes of ``shape`` (one per
    row): then each row's mask depends on its own key only, exactly as if that row were drawn
    alone, so a row keeps its mask in any batch it lands in (GradCache chunks).
    """
    if key.ndim:
        if tuple(shape[:key.ndim]) != key.shape:
            raise ValueError(f"per-row keys {key.shape} do not lead mask shape {tuple(shape)}")
        rows = jax.vmap(lambda k: keep_mask(k, rate, shape[key.ndim:], impl))(key.reshape(-1))
        return rows.reshape(shape)
    if impl == "bernoulli":
        return jax.random.bernoulli(key, 1.0 - rate, shape)
    size = math.prod(shape)
    words = threefry_bits(key, (size + 1) // 2)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16])[:size]
    return (halves < keep_threshold(rate)).reshape(shape)


def dropout(x: jax.Array, rate: float, key: jax.Array | None, impl: str = "bits16",
            mask_name: str | None = None) -> jax.Array:
    """Zero elements with probability ``rate`` and scale the rest by 1/(1-rate); identity when
    ``key`` is None or ``rate`` is 0. ``mask_name`` names the keep mask for a
    ``jax.checkpoint`` policy (``checkpoint_name``)."""
    if key is None or rate <= 0.0:
        return x
    keep = keep_mask(key, rate, x.shape, impl)
    if mask_name is not None:
        keep = checkpoint_name(keep, mask_name)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
