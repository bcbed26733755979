"""Inverted dropout from 16 random bits per element.

Training draws a keep mask for every LoRA input and every attention-probability matrix, and
on CPU the threefry bits behind ``jax.random.bernoulli`` (one 32-bit word and a float
conversion per element) cost as much as a third of the step's matmuls. Two 16-bit halves of
each word halve the random work; the keep probability is quantised to a multiple of 2⁻¹⁶
(rate 0.05 → 0.0500031, rate 0.3 → 0.2999878), well inside the sampling noise of any run.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_LEVELS = 1 << 16


def keep_threshold(rate: float) -> int:
    """Elements whose 16-bit draw is below this are kept: P(keep) = threshold / 2¹⁶."""
    return round((1.0 - rate) * _LEVELS)


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Boolean mask, True with probability ≈ 1 - ``rate`` (see ``keep_threshold``)."""
    size = math.prod(shape)
    words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16])[:size]
    return (halves < keep_threshold(rate)).reshape(shape)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Zero elements with probability ``rate`` and scale the rest by 1/(1-rate); identity when
    ``key`` is None or ``rate`` is 0."""
    if key is None or rate <= 0.0:
        return x
    keep = keep_mask(key, rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
