"""Named implementations of the few operations whose best form depends on the backend, and the
one resolver that picks them.

=================  ===========================  ===============================================
choice             implementations              what differs
=================  ===========================  ===============================================
weight_indexing    ``native`` | ``bits``        16-bit float weights sliced per layer (and the
                                                embedding gathered) as themselves, or as their
                                                raw uint16 bits
lora_grad          ``autodiff`` | ``narrow_first``  the LoRA einsums' weight gradient: JAX's
                                                transpose rule, or a custom VJP contracting into
                                                the narrow [R, big] orientation first
dropout            ``bernoulli`` | ``bits16``   keep masks from ``jax.random.bernoulli``, or from
                                                two 16-bit halves of each random word
attention          ``xla`` | ``cudnn``          einsum + softmax, or cuDNN's fused kernel
                                                (``models/attention.py``)
residuals          ``native`` | ``bits``        the layer scan's 16-bit float activations saved
                                                for the backward pass as themselves, or as
                                                their raw uint16 bits
=================  ===========================  ===============================================

A ``Kernels`` value left ``None`` is the backend's choice: ``resolve_kernels`` fills it in when
the model is built, and the model's config records the result. The non-plain implementations
were written for and measured on XLA:CPU (the reasons are below, the numbers in
docs/performance.md); every other backend gets the plain ones until they are measured there.
Each implementation is tested against the plain one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from .einsum import Einsum

CHOICES = {
    "weight_indexing": ("native", "bits"),
    "lora_grad": ("autodiff", "narrow_first"),
    "dropout": ("bernoulli", "bits16"),
    "attention": ("xla", "cudnn"),
    "residuals": ("native", "bits"),
}


@dataclasses.dataclass(frozen=True)
class Kernels:
    """One implementation per choice (see the module docstring); ``None``: the backend's."""

    weight_indexing: str | None = None
    lora_grad: str | None = None
    dropout: str | None = None
    attention: str | None = None
    residuals: str | None = None

    def __post_init__(self):
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in options:
                raise ValueError(f"kernels.{name}={value!r}; choose one of {options}")

    @property
    def resolved(self) -> bool:
        return all(getattr(self, name) is not None for name in CHOICES)


PLAIN = Kernels(weight_indexing="native", lora_grad="autodiff", dropout="bernoulli",
                attention="xla", residuals="native")
# Measured choices per backend (jax.default_backend() names); unlisted backends get PLAIN.
BACKEND_KERNELS = {
    "cpu": Kernels(weight_indexing="bits", lora_grad="narrow_first", dropout="bits16",
                   attention="xla", residuals="bits"),
}


def resolve_kernels(requested: Kernels | None = None, backend: str | None = None) -> Kernels:
    """``requested`` with every ``None`` replaced by ``backend``'s choice (default: the
    backend JAX runs on)."""
    requested = requested or Kernels()
    if requested.resolved:
        return requested
    defaults = BACKEND_KERNELS.get(backend or jax.default_backend(), PLAIN)
    return Kernels(**{name: getattr(requested, name) or getattr(defaults, name)
                      for name in CHOICES})


# -- weight_indexing ----------------------------------------------------------------------------
# XLA:CPU has no 16-bit float gather or dynamic-slice: it converts the whole operand to float32
# first, which made every bf16 forward copy all stacked layer weights and the embedding table
# to float32. Integer slices are native there; GPU and TPU slice 16-bit floats natively.

def is_16bit_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2


def indexed_as_bits(x: jax.Array, kernels: Kernels) -> bool:
    return kernels.weight_indexing == "bits" and is_16bit_float(x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _index_bits(op: Callable, x: jax.Array, index: jax.Array) -> jax.Array:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint16)
    return jax.lax.bitcast_convert_type(op(bits, index), x.dtype)


@_index_bits.defjvp
def _index_bits_jvp(op, primals, tangents):
    # The tangent is indexed directly, so gradients stay exact.
    x, index = primals
    return _index_bits(op, x, index), op(tangents[0], index)


def _indexed(op: Callable, x: jax.Array, index: jax.Array, kernels: Kernels) -> jax.Array:
    return _index_bits(op, x, index) if indexed_as_bits(x, kernels) else op(x, index)


def embed_tokens(table: jax.Array, input_ids: jax.Array, kernels: Kernels) -> jax.Array:
    return _indexed(lambda t, i: jnp.take(t, i, axis=0), table, input_ids, kernels)


def layer_slice(stacked: jax.Array, layer: jax.Array, kernels: Kernels) -> jax.Array:
    return _indexed(lambda w, i: jax.lax.dynamic_index_in_dim(w, i, keepdims=False),
                    stacked, layer, kernels)


def split_for_scan(weights: dict[str, jax.Array], kernels: Kernels):
    """(scanned, sliced): the stacked weights that ride the layer scan's inputs (their
    gradients come back stacked per layer), and those the scan body slices itself
    (``layer_slice``: 16-bit weights indexed as bits)."""
    sliced = {k: v for k, v in weights.items() if indexed_as_bits(v, kernels)}
    return {k: v for k, v in weights.items() if k not in sliced}, sliced


# -- lora_grad ----------------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def narrow_first_einsum(equation: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """``einsum(equation, x, w)`` accumulated in float32, for the (LoRA) weights that train.

    The custom VJP only changes how the weight gradient is laid out. JAX's transpose rule
    yields it as dot(grad, x) followed by a transpose, which XLA:CPU fuses into a strided
    copy of the whole [B, S, ·] activation for every layer and projection. Here the
    contraction produces the narrow operand's axes first (the LoRA rank R: [R, big] is the
    cheap orientation), and only that small result is transposed, behind an optimization
    barrier so XLA cannot fold the transpose back into the dot.
    """
    return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32)


def _narrow_first_fwd(equation, x, w):
    return narrow_first_einsum(equation, x, w), (x, w)


def _narrow_first_bwd(equation, residuals, grad):
    x, w = residuals
    e = Einsum.parse(equation)
    grad = grad.astype(x.dtype)
    dx = jnp.einsum(f"{e.out},{e.w}->{e.x}", grad, w, preferred_element_type=jnp.float32)
    size = dict(zip(e.x, x.shape)) | dict(zip(e.out, grad.shape))
    from_x, from_out = e.weight_inputs, "".join(ch for ch in e.w if ch in e.out)
    narrow, wide = sorted((from_x, from_out), key=lambda axes: math.prod(size[a] for a in axes))
    order = narrow + wide
    dw = jnp.einsum(f"{e.x},{e.out}->{order}", x, grad, preferred_element_type=jnp.float32)
    if order != e.w:
        dw = jnp.transpose(jax.lax.optimization_barrier(dw), [order.index(a) for a in e.w])
    return dx.astype(x.dtype), dw.astype(w.dtype)


narrow_first_einsum.defvjp(_narrow_first_fwd, _narrow_first_bwd)


def trainable_einsum(equation: str, x: jax.Array, w: jax.Array, kernels: Kernels) -> jax.Array:
    """``einsum`` with float32 accumulation for a weight that trains, with ``kernels``'s
    weight-gradient layout."""
    if kernels.lora_grad == "narrow_first":
        return narrow_first_einsum(equation, x, w)
    return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32)


# -- residuals ----------------------------------------------------------------------------------
# The same missing 16-bit float support, on the way back: the layer scan stacks each layer's
# saved activations with a dynamic-update-slice, which XLA:CPU runs in float32, so a bf16
# step kept float32 residuals as large as the float32 step's (``bench/step_memory.py``).
# Saved as their uint16 bits, they stay 16-bit; the bitcasts are free.

@jax.tree_util.register_pytree_node_class
class _BitsResiduals:
    """A ``jax.vjp`` pullback whose 16-bit float leaves are held as uint16 bits."""

    def __init__(self, leaves, treedef, dtypes):
        self.leaves, self.treedef, self.dtypes = leaves, treedef, dtypes

    @classmethod
    def pack(cls, pullback) -> "_BitsResiduals":
        leaves, treedef = jax.tree.flatten(pullback)
        dtypes = tuple(leaf.dtype if is_16bit_float(leaf.dtype) else None for leaf in leaves)
        leaves = [leaf if dtype is None else jax.lax.bitcast_convert_type(leaf, jnp.uint16)
                  for leaf, dtype in zip(leaves, dtypes)]
        return cls(leaves, treedef, dtypes)

    def unpack(self):
        leaves = [leaf if dtype is None else jax.lax.bitcast_convert_type(leaf, dtype)
                  for leaf, dtype in zip(self.leaves, self.dtypes)]
        return jax.tree.unflatten(self.treedef, leaves)

    def tree_flatten(self):
        return self.leaves, (self.treedef, self.dtypes)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(list(leaves), *aux)


def _residuals_as_bits(layer: Callable) -> Callable:
    @jax.custom_vjp
    def wrapped(*args):
        return layer(*args)

    def fwd(*args):
        out, pullback = jax.vjp(layer, *args)
        return out, _BitsResiduals.pack(pullback)

    def bwd(residuals, grad):
        return residuals.unpack()(grad)

    wrapped.defvjp(fwd, bwd)
    return wrapped


def scan_body(layer: Callable, kernels: Kernels) -> Callable:
    """``layer`` as the layer scan's body, its saved activations stored per ``kernels``."""
    return _residuals_as_bits(layer) if kernels.residuals == "bits" else layer
