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
matmul_backward    ``autodiff`` | ``operands``  the frozen projections', the attention
                                                output's and the MNTP head's backward matmuls:
                                                on a float32 cotangent (JAX's transpose rule),
                                                or on the cotangent in the dtype the operands
                                                are multiplied in (16-bit: exact but for the
                                                head's, ``train/losses.py``)
matmul_operands    ``native`` | ``float32``     16-bit matmul operands multiplied as themselves
                                                or converted to float32 first (float32
                                                accumulation either way; a product of two
                                                16-bit floats is exact in float32)
=================  ===========================  ===============================================

A ``Kernels`` value left ``None`` is the backend's choice: ``resolve_kernels`` fills it in when
the model is built, and the model's config records the result. On CPU, ``matmul_operands``
also depends on the processor (``cpu_multiplies_bf16``). The non-plain implementations
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

from ..cpuinfo import FLAG_FIELDS, cpu_fields
from .einsum import Einsum

CHOICES = {
    "weight_indexing": ("native", "bits"),
    "lora_grad": ("autodiff", "narrow_first"),
    "dropout": ("bernoulli", "bits16"),
    "attention": ("xla", "cudnn"),
    "residuals": ("native", "bits"),
    "matmul_backward": ("autodiff", "operands"),
    "matmul_operands": ("native", "float32"),
}


@dataclasses.dataclass(frozen=True)
class Kernels:
    """One implementation per choice (see the module docstring); ``None``: the backend's."""

    weight_indexing: str | None = None
    lora_grad: str | None = None
    dropout: str | None = None
    attention: str | None = None
    residuals: str | None = None
    matmul_backward: str | None = None
    matmul_operands: str | None = None

    def __post_init__(self):
        for name, options in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in options:
                raise ValueError(f"kernels.{name}={value!r}; choose one of {options}")

    @property
    def resolved(self) -> bool:
        return all(getattr(self, name) is not None for name in CHOICES)


PLAIN = Kernels(weight_indexing="native", lora_grad="autodiff", dropout="bernoulli",
                attention="xla", residuals="native", matmul_backward="autodiff",
                matmul_operands="native")
# Measured choices per backend (jax.default_backend() names); unlisted backends get PLAIN.
# The CPU's matmul_operands is the processor's (None here: see resolve_kernels).
BACKEND_KERNELS = {
    "cpu": Kernels(weight_indexing="bits", lora_grad="narrow_first", dropout="bits16",
                   attention="xla", residuals="bits", matmul_backward="operands"),
}

# /proc/cpuinfo flags of processors with bf16 dot-product instructions (x86: AVX-512 BF16,
# AMX; Arm: FEAT_BF16), where XLA:CPU's bf16 matmuls run at least at float32's speed.
BF16_DOT_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_multiplies_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this host's processor has bf16 dot-product instructions (``cpuinfo``: the text
    of /proc/cpuinfo, read when None); None where that cannot be told (no /proc/cpuinfo)."""
    fields = cpu_fields(cpuinfo) or {}
    flags = next((fields[key] for key in FLAG_FIELDS if key in fields), None)
    return None if flags is None else not BF16_DOT_FLAGS.isdisjoint(flags.split())


def resolve_kernels(requested: Kernels | None = None, backend: str | None = None,
                    cpu_bf16: bool | None = None) -> Kernels:
    """``requested`` with every ``None`` replaced by ``backend``'s choice (default: the
    backend JAX runs on). On CPU, 16-bit matmul operands are multiplied as float32 unless the
    processor has bf16 dot instructions (``cpu_bf16``, default ``cpu_multiplies_bf16()``;
    unknown: native): without them XLA:CPU's bf16 GEMMs ran ~1.5x slower than float32's
    on an AVX2 EPYC (docs/performance.md)."""
    requested = requested or Kernels()
    if requested.resolved:
        return requested
    backend = backend or jax.default_backend()
    defaults = BACKEND_KERNELS.get(backend, PLAIN)
    if defaults.matmul_operands is None:
        bf16 = cpu_multiplies_bf16() if cpu_bf16 is None else cpu_bf16
        defaults = dataclasses.replace(
            defaults, matmul_operands="float32" if bf16 is False else "native")
    return Kernels(**{name: getattr(requested, name) or getattr(defaults, name)
                      for name in CHOICES})


def multiply_dtype(dtype, operands: str):
    """The dtype ``operands`` (a ``matmul_operands`` choice) multiplies ``dtype`` values in."""
    return jnp.float32 if operands == "float32" and is_16bit_float(dtype) else jnp.dtype(dtype)


def matmul(equation: str, x: jax.Array, y: jax.Array, operands: str = "native") -> jax.Array:
    """``einsum(equation, x, y)`` accumulated in float32, its operands multiplied per
    ``operands`` (a ``matmul_operands`` choice)."""
    return jnp.einsum(equation, x.astype(multiply_dtype(x.dtype, operands)),
                      y.astype(multiply_dtype(y.dtype, operands)),
                      preferred_element_type=jnp.float32)


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

@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def narrow_first_einsum(equation: str, x: jax.Array, w: jax.Array,
                        operands: str = "native") -> jax.Array:
    """``matmul(equation, x, w, operands)``, for the (LoRA) weights that train.

    The custom VJP only changes how the weight gradient is laid out. JAX's transpose rule
    yields it as dot(grad, x) followed by a transpose, which XLA:CPU fuses into a strided
    copy of the whole [B, S, ·] activation for every layer and projection. Here the
    contraction produces the narrow operand's axes first (the LoRA rank R: [R, big] is the
    cheap orientation), and only that small result is transposed, behind an optimization
    barrier so XLA cannot fold the transpose back into the dot.
    """
    return matmul(equation, x, w, operands)


def _narrow_first_fwd(equation, x, w, operands):
    return narrow_first_einsum(equation, x, w, operands), (x, w)


def _narrow_first_bwd(equation, operands, residuals, grad):
    x, w = residuals
    e = Einsum.parse(equation)
    grad = grad.astype(multiply_dtype(x.dtype, operands))
    dx = matmul(f"{e.out},{e.w}->{e.x}", grad, w, operands)
    size = dict(zip(e.x, x.shape)) | dict(zip(e.out, grad.shape))
    from_x, from_out = e.weight_inputs, "".join(ch for ch in e.w if ch in e.out)
    narrow, wide = sorted((from_x, from_out), key=lambda axes: math.prod(size[a] for a in axes))
    order = narrow + wide
    dw = matmul(f"{e.x},{e.out}->{order}", x, grad, operands)
    if order != e.w:
        dw = jnp.transpose(jax.lax.optimization_barrier(dw), [order.index(a) for a in e.w])
    return dx.astype(x.dtype), dw.astype(w.dtype)


narrow_first_einsum.defvjp(_narrow_first_fwd, _narrow_first_bwd)


def trainable_einsum(equation: str, x: jax.Array, w: jax.Array, kernels: Kernels) -> jax.Array:
    """``matmul`` for a weight that trains, with ``kernels``'s operands and weight-gradient
    layout."""
    if kernels.lora_grad == "narrow_first":
        return narrow_first_einsum(equation, x, w, kernels.matmul_operands)
    return matmul(equation, x, w, kernels.matmul_operands)


# -- matmul_backward ----------------------------------------------------------------------------
# A float32-accumulated einsum of 16-bit operands has a float32 output, so autodiff hands its
# backward a float32 cotangent, and XLA runs each transposed dot as a float32 GEMM on a
# float32 copy of the 16-bit operand: half the speed of the forward's GEMMs on CPU. Where the
# output is cast to the 16-bit dtype right after (every projection, the attention output),
# that cotangent holds 16-bit values, so rounding it back is exact and the backward GEMMs
# run on 16-bit operands with the same float32 accumulation.

@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def operands_dtype_einsum(equation: str, x: jax.Array, y: jax.Array,
                          operands: str = "native") -> jax.Array:
    """``matmul(equation, x, y, operands)``, its backward's matmuls on the cotangent rounded
    to the dtype the (common) operand dtype is multiplied in: the 16-bit dtype itself, or
    float32 with ``operands="float32"`` (no rounding: JAX's transpose rule)."""
    return matmul(equation, x, y, operands)


def _operands_dtype_fwd(equation, x, y, operands):
    # Each operand is kept only for the other's gradient: a frozen weight's projection does
    # not save its input (what autodiff skips too, and a custom VJP must be told).
    out = operands_dtype_einsum(equation, x.value, y.value, operands)
    return out, (x.value if y.perturbed else None, y.value if x.perturbed else None)


def _operands_dtype_bwd(equation, operands, residuals, grad):
    x, y = residuals
    if isinstance(grad, jax.custom_derivatives.SymbolicZero) or (x is None and y is None):
        return None, None
    e = Einsum.parse(equation)
    dtype = (x if y is None else y).dtype
    grad = grad.astype(multiply_dtype(dtype, operands))
    dx = dy = None
    if y is not None:
        dx = matmul(f"{e.out},{e.w}->{e.x}", grad, y, operands).astype(y.dtype)
    if x is not None:
        dy = matmul(f"{e.x},{e.out}->{e.w}", x, grad, operands).astype(x.dtype)
    return dx, dy


operands_dtype_einsum.defvjp(_operands_dtype_fwd, _operands_dtype_bwd, symbolic_zeros=True)


def rounding_einsum(equation: str, x: jax.Array, y: jax.Array,
                    backward: str = "autodiff", operands: str = "native") -> jax.Array:
    """``matmul`` whose output the caller casts to the operands' dtype before any other use
    (so the cotangent is exact in that dtype); ``backward`` is a ``matmul_backward`` choice,
    ``operands`` a ``matmul_operands`` one."""
    e = Einsum.parse(equation)
    if set(e.x) - set(e.w + e.out) or set(e.w) - set(e.x + e.out):
        raise ValueError(f"{equation!r}: every operand axis must be shared or kept")
    if (backward == "operands" and x.dtype == y.dtype
            and is_16bit_float(x.dtype)):
        return operands_dtype_einsum(equation, x, y, operands)
    return matmul(equation, x, y, operands)


# -- residuals ----------------------------------------------------------------------------------
# The same missing 16-bit float support, on the way back: the layer scan stacks each layer's
# saved activations with a dynamic-update-slice, which XLA:CPU runs in float32, so a bf16
# step kept float32 residuals as large as the float32 step's (``bench/step_memory.py``).
# Saved as their uint16 bits, they stay 16-bit; the bitcasts are free.

@jax.tree_util.register_pytree_node_class
class _BitsResiduals:
    """A ``jax.vjp`` pullback whose 16-bit float leaves are held as uint16 bits, less the
    leaves that are the layer's weight slices (``names``: the slice each one is, else None),
    which the backward slices again from the stacked weights. ``inputs``: the layer's input
    tree and which of its leaves were differentiated (static)."""

    def __init__(self, leaves, treedef, dtypes, names, inputs):
        self.leaves, self.treedef, self.dtypes, self.names = leaves, treedef, dtypes, names
        self.inputs = inputs

    @classmethod
    def pack(cls, pullback, slices: dict[str, jax.Array], inputs) -> "_BitsResiduals":
        leaves, treedef = jax.tree.flatten(pullback)
        names = tuple(next((k for k, v in slices.items() if leaf is v), None) for leaf in leaves)
        dtypes = tuple(leaf.dtype if is_16bit_float(leaf.dtype) else None for leaf in leaves)
        leaves = [None if name is not None else
                  leaf if dtype is None else jax.lax.bitcast_convert_type(leaf, jnp.uint16)
                  for leaf, dtype, name in zip(leaves, dtypes, names)]
        return cls(leaves, treedef, dtypes, names, inputs)

    def unpack(self, slices: dict[str, jax.Array]):
        leaves = [slices[name] if name is not None else
                  leaf if dtype is None else jax.lax.bitcast_convert_type(leaf, dtype)
                  for leaf, dtype, name in zip(self.leaves, self.dtypes, self.names)]
        return jax.tree.unflatten(self.treedef, leaves)

    def tree_flatten(self):
        return self.leaves, (self.treedef, self.dtypes, self.names, self.inputs)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(list(leaves), *aux)


def _slices(stacked: dict[str, jax.Array], index: jax.Array, kernels: Kernels):
    return {k: layer_slice(v, index, kernels) for k, v in stacked.items()}


def _with_slices(inputs, slices):
    w, key, index = inputs
    return {**w, **slices}, key, index


def _residuals_as_bits(layer: Callable, kernels: Kernels) -> Callable:
    @jax.custom_vjp
    def wrapped(x, inputs, stacked):
        return layer(x, _with_slices(inputs, _slices(stacked, inputs[2], kernels)))

    def fwd(x, inputs, stacked):
        if any(leaf.perturbed for leaf in jax.tree.leaves(stacked)):
            raise NotImplementedError(
                "16-bit weights sliced per layer are not differentiable with "
                "kernels.residuals='bits'; train them with kernels.residuals='native'")
        leaves, treedef = jax.tree.flatten((x, inputs))
        perturbed = tuple(leaf.perturbed for leaf in leaves)
        values = [leaf.value for leaf in leaves]
        index = inputs[2].value
        stacked = jax.tree.map(lambda p: p.value, stacked)
        slices = _slices(stacked, index, kernels)

        # Differentiated only where the caller differentiates (the LoRA weights, not the
        # frozen ones), so nothing is saved for gradients nobody asked for.
        def differentiable(*diff):
            diff = iter(diff)
            x, inputs = jax.tree.unflatten(
                treedef, [next(diff) if p else v for v, p in zip(values, perturbed)])
            return layer(x, _with_slices(inputs, slices))

        out, pullback = jax.vjp(differentiable,
                                *[v for v, p in zip(values, perturbed) if p])
        # The weight slices are not saved per layer: the stacked weights they come from are
        # the scan's inputs already, so the backward slices them again.
        return out, (_BitsResiduals.pack(pullback, slices, (treedef, perturbed)), index,
                     stacked)

    def bwd(residuals, grad):
        packed, index, stacked = residuals
        treedef, perturbed = packed.inputs
        grad = jax.tree.map(lambda g: jnp.zeros(g.shape, g.dtype)
                            if isinstance(g, jax.custom_derivatives.SymbolicZero) else g, grad,
                            is_leaf=lambda g: isinstance(g, jax.custom_derivatives.SymbolicZero))
        diff = iter(packed.unpack(_slices(stacked, index, kernels))(grad))
        dx, dinputs = jax.tree.unflatten(treedef, [next(diff) if p else None for p in perturbed])
        return dx, dinputs, None

    wrapped.defvjp(fwd, bwd, symbolic_zeros=True)
    return wrapped


def scan_body(layer: Callable, stacked: dict[str, jax.Array], kernels: Kernels,
              remat: Callable | None = None) -> Callable:
    """The layer scan's body ``(x, (w, key, index)) -> (x, None)`` around
    ``layer(x, (weights, key, index))``: ``weights`` are ``w`` (this layer's slice of the
    scanned weights) plus this layer's slice of each of ``stacked`` (``split_for_scan``'s
    sliced weights); ``remat`` (a ``jax.checkpoint``) wraps the layer with its slicing. The
    saved activations are stored per ``kernels.residuals``."""
    if kernels.residuals == "bits":
        wrapped = _residuals_as_bits(remat(layer) if remat else layer, kernels)
        return lambda x, inputs: wrapped(x, inputs, stacked)

    def sliced_layer(x, inputs, stacked):
        return layer(x, _with_slices(inputs, _slices(stacked, inputs[2], kernels)))
    if remat:
        sliced_layer = remat(sliced_layer)
    return lambda x, inputs: sliced_layer(x, inputs, stacked)
