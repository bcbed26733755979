"""The Llama-family decoder (Llama 2/3/3.1, Mistral) as one Flax NNX module.

Dimension legend used in shapes and einsums:
  B batch, S sequence, L layers, V vocab, D model, N query heads, K kv heads, H head dim,
  F mlp hidden, R LoRA rank.

Every weight is declared once in ``weight_specs`` (shape, logical axes, initializer): the
module, abstract shapes, sharding rules and checkpoint conversion all read that table.
Decoder layers are stacked on a leading L axis and run with ``jax.lax.scan`` (compile time
does not grow with depth). One set of weights serves both attention modes: ``causal`` is a
per-call flag (default from the config); bidirectional mode only drops the causal mask,
padding stays masked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from .attention import attend, attention_allowed
from .config import ModelConfig
from .dropout import dropout, fold_in_keys, split_keys
from .rope import apply_rope, rope_tables
from ..sharding import constrain

# The residual stream [B, S, D]: split over the batch, whole along sequence and model dims.
ACTIVATION_AXES = ("batch", "seq", None)


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    shape: tuple[int, ...]
    axes: tuple[str, ...]  # logical axis names, mapped to mesh axes by llm2vec_jax.sharding
    init: str = "normal"   # "normal" (std = initializer_range), "ones" or "zeros"


# Per-layer projections: the einsum that applies each one (x on the left, weight on the right).
PROJECTIONS: dict[str, str] = {
    "q": "bsd,dnh->bsnh",
    "k": "bsd,dkh->bskh",
    "v": "bsd,dkh->bskh",
    "o": "bsnh,nhd->bsd",
    "gate": "bsd,df->bsf",
    "up": "bsd,df->bsf",
    "down": "bsf,fd->bsd",
}


def input_rank(name: str) -> int:
    """How many leading axes of projection ``name``'s weight are its input (o: N, H → 2)."""
    x_sub, w_sub = PROJECTIONS[name].split("->")[0].split(",")
    return sum(ch in x_sub for ch in w_sub)


def weight_specs(config: ModelConfig) -> dict[str, dict[str, WeightSpec]]:
    """{"top": {...}, "layers": {...}}: every parameter of the model, declared once.

    Layer weights carry a leading L axis (``layers``) because the stack is scanned.
    """
    c = config
    D, N, K, H, F, V, L = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                           c.intermediate_size, c.vocab_size, c.num_layers)
    top = {
        "embed": WeightSpec((V, D), ("vocab", "embed")),
        "final_norm": WeightSpec((D,), ("norm",), "ones"),
    }
    if not c.tie_word_embeddings:
        top["lm_head"] = WeightSpec((V, D), ("vocab", "embed"))
    layer = {
        "attn_norm": WeightSpec((D,), ("norm",), "ones"),
        "q": WeightSpec((D, N, H), ("embed", "heads", "head_dim")),
        "k": WeightSpec((D, K, H), ("embed", "kv_heads", "head_dim")),
        "v": WeightSpec((D, K, H), ("embed", "kv_heads", "head_dim")),
        "o": WeightSpec((N, H, D), ("heads", "head_dim", "embed")),
        "mlp_norm": WeightSpec((D,), ("norm",), "ones"),
        "gate": WeightSpec((D, F), ("embed", "mlp")),
        "up": WeightSpec((D, F), ("embed", "mlp")),
        "down": WeightSpec((F, D), ("mlp", "embed")),
    }
    if c.attention_bias:
        layer.update(
            q_bias=WeightSpec((N, H), ("heads", "head_dim"), "zeros"),
            k_bias=WeightSpec((K, H), ("kv_heads", "head_dim"), "zeros"),
            v_bias=WeightSpec((K, H), ("kv_heads", "head_dim"), "zeros"),
            o_bias=WeightSpec((D,), ("embed",), "zeros"),
        )
    if c.mlp_bias:
        layer.update(
            gate_bias=WeightSpec((F,), ("mlp",), "zeros"),
            up_bias=WeightSpec((F,), ("mlp",), "zeros"),
            down_bias=WeightSpec((D,), ("embed",), "zeros"),
        )
    layers = {name: WeightSpec((L, *s.shape), ("layers", *s.axes), s.init)
              for name, s in layer.items()}
    return {"top": top, "layers": layers}


def _init(spec: WeightSpec, key: jax.Array, dtype, std: float) -> jax.Array:
    if spec.init == "ones":
        return jnp.ones(spec.shape, dtype)
    if spec.init == "zeros":
        return jnp.zeros(spec.shape, dtype)
    return (std * jax.random.normal(key, spec.shape, jnp.float32)).astype(dtype)


def _param(spec: WeightSpec, key, dtype, std) -> nnx.Param:
    return nnx.Param(_init(spec, key, dtype, std), logical_axes=spec.axes)


def is_16bit_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2


def _indexed_as_bits(x: jax.Array) -> bool:
    """A 16-bit float array on an XLA:CPU backend: the one that needs ``_indexed``'s bits
    (GPU and TPU slice 16-bit floats natively; there a bitcast of the stack could cost a
    copy of all weights)."""
    return is_16bit_float(x.dtype) and jax.default_backend() == "cpu"


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _index_bits(op: Callable, x: jax.Array, index: jax.Array) -> jax.Array:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint16)
    return jax.lax.bitcast_convert_type(op(bits, index), x.dtype)


@_index_bits.defjvp
def _index_bits_jvp(op, primals, tangents):
    x, index = primals
    return _index_bits(op, x, index), op(tangents[0], index)


def _indexed(op: Callable, x: jax.Array, index: jax.Array) -> jax.Array:
    """``op(x, index)`` (a gather or slice); a 16-bit float ``x`` is indexed as raw bits.

    XLA:CPU has no 16-bit float gather or dynamic-slice: it converts the whole operand to
    float32 first, which made every bf16 forward copy all stacked layer weights and the
    embedding table to float32 (a third of a bf16 encode's time). Integer slices are
    native, and the JVP indexes the tangent directly, so gradients stay exact.
    """
    return _index_bits(op, x, index) if _indexed_as_bits(x) else op(x, index)


def embed_tokens(table: jax.Array, input_ids: jax.Array) -> jax.Array:
    return _indexed(lambda t, i: jnp.take(t, i, axis=0), table, input_ids)


def layer_slice(stacked: jax.Array, layer: jax.Array) -> jax.Array:
    return _indexed(lambda w, i: jax.lax.dynamic_index_in_dim(w, i, keepdims=False),
                    stacked, layer)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """HF LlamaRMSNorm: normalise in float32, scale in the input dtype."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * xf.astype(x.dtype)


def lora_equations(equation: str) -> tuple[str, str]:
    """The two einsums of a LoRA adapter on a projection: x·A (in → R), then ·B (R → out).

    A has the projection's input axes + R, B has R + its output axes, so e.g. for
    ``bsnh,nhd->bsd``: ``bsnh,nhr->bsr`` and ``bsr,rd->bsd``.
    """
    inputs, out = equation.split("->")
    x_sub, w_sub = inputs.split(",")
    contracted = "".join(ch for ch in w_sub if ch in x_sub)
    batch = "".join(ch for ch in x_sub if ch not in w_sub)
    produced = "".join(ch for ch in w_sub if ch not in x_sub)
    return f"{x_sub},{contracted}r->{batch}r", f"{batch}r,r{produced}->{out}"


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def trainable_einsum(equation: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """``einsum(equation, x, w)`` accumulated in float32, for the (LoRA) weights that train.

    The custom VJP only changes how the weight gradient is laid out. JAX's transpose rule
    yields it as dot(grad, x) followed by a transpose, which XLA:CPU fuses into a strided
    copy of the whole [B, S, ·] activation for every layer and projection (a quarter of an
    MNTP step). Here the contraction produces the narrow operand's axes first (the LoRA rank
    R: [R, big] is the cheap orientation), and only that small result is transposed, behind
    an optimization barrier so XLA cannot fold the transpose back into the dot.
    """
    return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32)


def _trainable_einsum_fwd(equation, x, w):
    return trainable_einsum(equation, x, w), (x, w)


def _trainable_einsum_bwd(equation, residuals, grad):
    x, w = residuals
    inputs, out = equation.split("->")
    x_sub, w_sub = inputs.split(",")
    grad = grad.astype(x.dtype)
    dx = jnp.einsum(f"{out},{w_sub}->{x_sub}", grad, w, preferred_element_type=jnp.float32)
    from_x = [ch for ch in w_sub if ch in x_sub]
    from_out = [ch for ch in w_sub if ch in out]
    size = dict(zip(x_sub, x.shape)) | dict(zip(out, grad.shape))
    narrow_first = sorted((from_x, from_out), key=lambda axes: math.prod(size[a] for a in axes))
    order = "".join(narrow_first[0] + narrow_first[1])
    dw = jnp.einsum(f"{x_sub},{out}->{order}", x, grad, preferred_element_type=jnp.float32)
    if order != w_sub:
        dw = jnp.transpose(jax.lax.optimization_barrier(dw), [order.index(a) for a in w_sub])
    return dx.astype(x.dtype), dw.astype(w.dtype)


trainable_einsum.defvjp(_trainable_einsum_fwd, _trainable_einsum_bwd)


def project(x: jax.Array, weights: dict, name: str, dtype, dropout_rng=None) -> jax.Array:
    """Apply projection ``name`` (plus its bias and LoRA adapter when present).

    Matmuls accumulate in float32 (fast bf16 on CPU needs preferred_element_type=float32).
    LoRA parameters, when a LoRA module attached them, are ``{name}_lora_a``/``_lora_b`` and
    the static ``lora_scale``/``lora_dropout`` entries of ``weights``.
    """
    equation = PROJECTIONS[name]
    y = jnp.einsum(equation, x, weights[name].astype(dtype), preferred_element_type=jnp.float32)
    if f"{name}_bias" in weights:
        y = y + weights[f"{name}_bias"].astype(jnp.float32)
    if f"{name}_lora_a" in weights:
        eq_a, eq_b = lora_equations(equation)
        key = None
        if dropout_rng is not None:
            key = fold_in_keys(dropout_rng, list(PROJECTIONS).index(name))
        lora_x = dropout(x, weights["lora_dropout"], key)
        h = trainable_einsum(eq_a, lora_x, weights[f"{name}_lora_a"].astype(dtype))
        y = y + weights["lora_scale"] * trainable_einsum(
            eq_b, h.astype(dtype), weights[f"{name}_lora_b"].astype(dtype))
    return y.astype(dtype)


REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class DecoderStack(nnx.Module):
    """All decoder layers, each weight stacked on a leading L axis.

    Attributes are the names of ``weight_specs(config)["layers"]`` (plus LoRA parameters when
    an adapter is attached), so the scan body receives one layer's slice of every attribute.
    """

    def __init__(self, config: ModelConfig, specs: dict[str, WeightSpec], rngs: nnx.Rngs):
        dtype = jnp.dtype(config.param_dtype)
        for name, spec in specs.items():
            setattr(self, name, _param(spec, rngs.params(), dtype, config.initializer_range))

    def arrays(self) -> dict[str, jax.Array]:
        return {name: var[...] for name, var in vars(self).items()
                if isinstance(var, nnx.Variable)}


class Transformer(nnx.Module):
    """Llama/Mistral decoder. ``model(input_ids, attention_mask, causal=...)`` → final
    (normed) hidden states [B, S, D]; ``model.logits(hidden)`` → [.., V] float32."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        specs = weight_specs(config)
        dtype = jnp.dtype(config.param_dtype)
        for name, spec in specs["top"].items():
            setattr(self, name, _param(spec, rngs.params(), dtype, config.initializer_range))
        self.layers = DecoderStack(config, specs["layers"], rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
                 causal: bool | None = None, positions: jax.Array | None = None,
                 dropout_rng: jax.Array | None = None, lora_dropout: bool = False) -> jax.Array:
        """Hidden states [B, S, D] in the compute dtype.

        ``attention_mask`` [B, S]: 0 = padding, 1 = token; or segment ids 1, 2, ... for rows
        packing several texts, each attending only within its own segment (pass
        ``positions`` restarting at 0 per text for it to see what it would alone).
        ``positions`` defaults to 0..S-1 for every row, as HF's forward does (RoPE is
        relative, so left padding does not change real tokens' results beyond rounding).
        ``dropout_rng`` turns on attention-probability dropout (rate ``config.attention_dropout``)
        and, with ``lora_dropout=True``, LoRA input dropout. It is one key, or one key per row
        ([B]): then row i's masks come from ``dropout_rng[i]`` alone.
        """
        config = self.config
        causal = config.causal if causal is None else causal
        dtype = jnp.dtype(config.dtype)
        batch, seq = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, seq), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        cos, sin = rope_tables(config, positions)
        allowed = attention_allowed(attention_mask, causal=causal,
                                    sliding_window=config.sliding_window)
        x = embed_tokens(self.embed[...], input_ids).astype(dtype)

        # 16-bit weights on CPU are sliced per layer inside the body (``layer_slice``); the
        # rest ride the scan's inputs, so their gradients come back stacked per layer.
        weights = self.layers.arrays()
        sliced = {k: v for k, v in weights.items() if _indexed_as_bits(v)}
        scanned = {k: v for k, v in weights.items() if k not in sliced}
        lora = getattr(self.layers, "lora_config", None)
        static = {}
        if lora is not None:
            static = {"lora_scale": lora.scale, "lora_dropout": lora.dropout if lora_dropout else 0.0}

        def layer(x, inputs):
            w, key, index = inputs
            x = constrain(x, ACTIVATION_AXES)
            w = {**w, **{k: layer_slice(v, index) for k, v in sliced.items()}, **static}
            attn_key = proj_key = None
            if key is not None:
                attn_key, proj_key = split_keys(key, 2)
            h = rms_norm(x, w["attn_norm"], config.rms_norm_eps)
            q = apply_rope(project(h, w, "q", dtype, proj_key), cos, sin)
            k = apply_rope(project(h, w, "k", dtype, proj_key), cos, sin)
            v = project(h, w, "v", dtype, proj_key)
            attn = attend(q, k, v, allowed, impl=config.attention_impl,
                          dropout_rate=config.attention_dropout, dropout_rng=attn_key)
            x = x + project(attn, w, "o", dtype, proj_key)
            h = rms_norm(x, w["mlp_norm"], config.rms_norm_eps)
            gated = jax.nn.silu(project(h, w, "gate", dtype, proj_key).astype(jnp.float32))
            up = project(h, w, "up", dtype, proj_key).astype(jnp.float32)
            x = x + project((gated * up).astype(dtype), w, "down", dtype, proj_key)
            return x, None

        if config.remat != "none":
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[config.remat])
        keys = None
        if dropout_rng is not None:
            keys = split_keys(dropout_rng, config.num_layers)
        x, _ = jax.lax.scan(layer, constrain(x, ACTIVATION_AXES),
                            (scanned, keys, jnp.arange(config.num_layers)))
        return rms_norm(x, self.final_norm[...], config.rms_norm_eps)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head (tied to the embedding when the config says so); float32 logits."""
        head = self.embed if self.config.tie_word_embeddings else self.lm_head
        return jnp.einsum("...d,vd->...v", hidden, head[...].astype(hidden.dtype),
                          preferred_element_type=jnp.float32)


def abstract_model(config: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStruct leaves: no memory allocated, for loading and planning."""
    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def init_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model (HF's init: normal(0, initializer_range), norms at 1)."""
    return Transformer(config, rngs=nnx.Rngs(seed))
