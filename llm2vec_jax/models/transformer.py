"""The Llama-style decoder (Llama 2/3/3.1, Mistral, Qwen2/2.5, Qwen3, Gemma) as one Flax NNX
module.

Dimension legend used in shapes and einsums:
  B batch, S sequence, L layers, V vocab, D model, N query heads, K kv heads, H head dim,
  F mlp hidden, R LoRA rank.

Every weight is declared once in ``specs.weight_specs`` (shape, logical axes, initializer):
the module, abstract shapes, sharding rules and checkpoint conversion all read that table.
The backend-dependent implementations are ``config.kernels`` (``models/kernels.py``),
resolved when the model is built. Decoder layers are stacked on a leading L axis and run
with ``jax.lax.scan`` (compile time does not grow with depth). One set of weights serves both attention modes: ``causal`` is a
per-call flag (default from the config); bidirectional mode only drops the causal mask,
padding stays masked.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from flax import nnx

from . import kernels as K
from .attention import attend, attention_allowed, soft_cap
from .config import ModelConfig, RopeScaling
from .dropout import dropout, fold_in_keys, split_keys
from .rope import apply_rope, rope_tables
from .specs import (PROJECTIONS, WeightSpec, init_weight, lora_names, projection_einsum,
                    weight_specs)
from ..sharding import constrain

# The residual stream [B, S, D]: split over the batch, whole along sequence and model dims.
ACTIVATION_AXES = ("batch", "seq", None)


def _param(spec: WeightSpec, key, dtype, std) -> nnx.Param:
    return nnx.Param(init_weight(spec, key, dtype, std), logical_axes=spec.axes)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, gemma: bool = False) -> jax.Array:
    """HF LlamaRMSNorm: normalise in float32, scale in the input dtype. ``gemma``: HF
    GemmaRMSNorm, which scales by (1 + w) in float32 and rounds once at the end."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if gemma:
        return (xf * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)
    return weight.astype(x.dtype) * xf.astype(x.dtype)


# The MLP gate activations, by HF ``hidden_act`` name.
ACTIVATIONS: dict[str, Callable] = {
    "silu": jax.nn.silu,
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
}


def project(x: jax.Array, weights: dict, name: str, dtype, kernels: K.Kernels, lora=None,
            lora_dropout: float = 0.0, dropout_rng=None) -> jax.Array:
    """Apply projection ``name`` (plus its bias and, when ``lora`` targets it, the adapter
    ``scale · dropout(x)·A·B``).

    Matmuls accumulate in float32 (fast bf16 on CPU needs preferred_element_type=float32),
    their operands multiplied per ``kernels.matmul_operands``.
    """
    einsum = projection_einsum(name)
    y = checkpoint_name(K.rounding_einsum(einsum.equation, x, weights[name].astype(dtype),
                                          kernels.matmul_backward, kernels.matmul_operands),
                        "projection")
    if f"{name}_bias" in weights:
        y = y + weights[f"{name}_bias"].astype(jnp.float32)
    if lora is not None and name in lora.targets:
        eq_a, eq_b = einsum.lora()
        name_a, name_b = lora_names(name)
        key = None
        if dropout_rng is not None:
            key = fold_in_keys(dropout_rng, list(PROJECTIONS).index(name))
        lora_x = dropout(x, lora_dropout, key, kernels.dropout)
        h = K.trainable_einsum(eq_a, lora_x, weights[name_a].astype(dtype), kernels)
        y = y + lora.scale * K.trainable_einsum(eq_b, h.astype(dtype),
                                                weights[name_b].astype(dtype), kernels)
    return y.astype(dtype)


# A projection whose backward is a custom VJP (``kernels.matmul_backward``) is no dot_general
# to a policy, so the dot policies also save the outputs named "projection".
_PROJECTIONS_SAVED = jax.checkpoint_policies.save_only_these_names("projection")
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    "dots": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots, _PROJECTIONS_SAVED),
    "dots_no_batch": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims, _PROJECTIONS_SAVED),
}


class DecoderStack(nnx.Module):
    """All decoder layers, each weight stacked on a leading L axis.

    Attributes are the names of ``weight_specs(config)["layers"]`` (and, with an adapter
    attached, of ``lora_weight_specs``), so the scan body receives one layer's slice of every
    attribute.
    """

    def __init__(self, config: ModelConfig, specs: dict[str, WeightSpec], rngs: nnx.Rngs):
        dtype = jnp.dtype(config.param_dtype)
        for name, spec in specs.items():
            setattr(self, name, _param(spec, rngs.params(), dtype, config.initializer_range))

    def arrays(self) -> dict[str, jax.Array]:
        return {name: var[...] for name, var in vars(self).items()
                if isinstance(var, nnx.Variable)}


class Transformer(nnx.Module):
    """The decoder. ``model(input_ids, attention_mask, causal=...)`` → final
    (normed) hidden states [B, S, D]; ``model.logits(hidden)`` → [.., V] float32.

    ``lora_config`` is the attached LoRA adapter's ``llm2vec_jax.lora.LoRAConfig`` (None when
    there is none); ``llm2vec_jax.lora`` attaches, merges and removes it.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config.replace(kernels=K.resolve_kernels(config.kernels))
        specs = weight_specs(config)
        dtype = jnp.dtype(config.param_dtype)
        for name, spec in specs["top"].items():
            setattr(self, name, _param(spec, rngs.params(), dtype, config.initializer_range))
        self.layers = DecoderStack(config, specs["layers"], rngs)
        self.lora_config = None

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
        kernels = config.kernels
        causal = config.causal if causal is None else causal
        dtype = jnp.dtype(config.dtype)
        batch, seq = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, seq), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        cos, sin = rope_tables(config, positions)
        if config.rope_local_theta is not None:  # Gemma 3's sliding layers: their own base
            local_rope = rope_tables(config.replace(rope_theta=config.rope_local_theta,
                                                    rope_scaling=RopeScaling()), positions)
        allowed = attention_allowed(attention_mask, causal=causal,
                                    sliding_window=config.sliding_window)
        if config.sliding_layers is not None:  # the window on some layers only (Gemma 2/3)
            full = attention_allowed(attention_mask, causal=causal)
            sliding_layers = jnp.asarray(config.sliding_layers)
        x = K.embed_tokens(self.embed[...], input_ids, kernels)
        if config.gemma_scaling:  # HF scales in the embedding's dtype
            x = x * jnp.asarray(config.hidden_size ** 0.5, x.dtype)
        x = x.astype(dtype)
        act = ACTIVATIONS[config.hidden_act]

        # The float32 elementwise islands (norms, the gated MLP product) are recomputed in the
        # backward pass from their 16-bit inputs instead of saving their float32
        # intermediates, F wide in the MLP, for every layer.
        @jax.checkpoint
        def norm(h, weight):
            return rms_norm(h, weight, config.rms_norm_eps, config.gemma_scaling)

        @jax.checkpoint
        def gated_product(gate, up):
            return (act(gate.astype(jnp.float32)) * up.astype(jnp.float32)).astype(dtype)

        scanned, sliced = K.split_for_scan(self.layers.arrays(), kernels)
        lora = self.lora_config
        lora_rate = lora.dropout if lora is not None and lora_dropout else 0.0

        def layer(x, inputs):
            w, key, index = inputs
            x = constrain(x, ACTIVATION_AXES)
            attn_key = proj_key = None
            if key is not None:
                attn_key, proj_key = split_keys(key, 2)

            def proj(h, name):
                return project(h, w, name, dtype, kernels, lora, lora_rate, proj_key)

            mask, layer_cos, layer_sin = allowed, cos, sin
            if config.sliding_layers is not None:
                mask = jnp.where(sliding_layers[index], allowed, full)
            if config.rope_local_theta is not None:
                layer_cos = jnp.where(sliding_layers[index], local_rope[0], cos)
                layer_sin = jnp.where(sliding_layers[index], local_rope[1], sin)
            h = norm(x, w["attn_norm"])
            q, k = proj(h, "q"), proj(h, "k")
            if config.qk_norm:
                q, k = norm(q, w["q_norm"]), norm(k, w["k_norm"])
            q, k = apply_rope(q, layer_cos, layer_sin), apply_rope(k, layer_cos, layer_sin)
            v = proj(h, "v")
            attn = attend(q, k, v, mask, impl=kernels.attention,
                          dropout_rate=config.attention_dropout, dropout_rng=attn_key,
                          dropout_impl=kernels.dropout,
                          matmul_backward=kernels.matmul_backward,
                          matmul_operands=kernels.matmul_operands, scale=config.attention_scale,
                          softcap=config.attn_logit_softcapping)
            attn = proj(attn, "o")
            if config.post_norms:
                attn = norm(attn, w["attn_post_norm"])
            x = x + attn
            h = norm(x, w["mlp_norm"])
            mlp = proj(gated_product(proj(h, "gate"), proj(h, "up")), "down")
            if config.post_norms:
                mlp = norm(mlp, w["mlp_post_norm"])
            x = x + mlp
            return x, None

        remat = None
        if config.remat != "none":
            remat = functools.partial(jax.checkpoint, policy=REMAT_POLICIES[config.remat])
        layer = K.scan_body(layer, sliced, kernels, remat)
        keys = None
        if dropout_rng is not None:
            keys = split_keys(dropout_rng, config.num_layers)
        x, _ = jax.lax.scan(layer, constrain(x, ACTIVATION_AXES),
                            (scanned, keys, jnp.arange(config.num_layers)))
        return norm(x, self.final_norm[...])

    def lm_head_weight(self) -> jax.Array:
        """The [V, D] output projection (the embedding when tied)."""
        if not self.config.has_logits:
            raise ValueError(
                "this model has no LM head: it was loaded from a bare *Model checkpoint (no "
                "lm_head.weight) with untied embeddings, so it has no logits; load the "
                "*ForCausalLM checkpoint it came from for MNTP or logits")
        return (self.embed if self.config.tie_word_embeddings else self.lm_head)[...]

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head (tied to the embedding when the config says so); float32 logits,
        soft-capped when the config says so (Gemma 2)."""
        logits = K.matmul("...d,vd->...v", hidden, self.lm_head_weight().astype(hidden.dtype),
                          self.config.kernels.matmul_operands)
        return soft_cap(logits, self.config.final_logit_softcapping)


def abstract_model(config: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStruct leaves: no memory allocated, for loading and planning."""
    return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def init_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model (HF's init: normal(0, initializer_range), norms at 1)."""
    return Transformer(config, rngs=nnx.Rngs(seed))
