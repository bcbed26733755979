"""Every weight of the decoder, its LoRA adapter included, declared once, with the einsums that
apply them.

Dimension legend used in shapes and einsums:
  B batch, S sequence, L layers, V vocab, D model, N query heads, K kv heads, H head dim,
  F mlp hidden, R LoRA rank.

The module, abstract shapes, the sharding rules (``llm2vec_jax.sharding``), the checkpoint
converters and the LoRA code all read these tables; nothing else names a weight's layout.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from .config import ModelConfig
from .einsum import Einsum

RANK_AXIS = "lora_rank"


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    shape: tuple[int, ...]
    axes: tuple[str, ...]  # logical axis names, mapped to mesh axes by llm2vec_jax.sharding
    # "normal" (std = initializer_range), "ones", "zeros", or "lora_a": PEFT's
    # kaiming_uniform(a=√5) of a LoRA A matrix, U(±1/√fan_in) over its input features.
    init: str = "normal"


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


@functools.cache
def projection_einsum(name: str) -> Einsum:
    return Einsum.parse(PROJECTIONS[name])


def input_rank(name: str) -> int:
    """How many leading axes of projection ``name``'s weight are its input (o: N, H → 2)."""
    return len(projection_einsum(name).weight_inputs)


def lora_names(projection: str) -> tuple[str, str]:
    """The stacked-layer weight names of the LoRA A and B matrices on ``projection``."""
    return f"{projection}_lora_a", f"{projection}_lora_b"


def weight_specs(config: ModelConfig) -> dict[str, dict[str, WeightSpec]]:
    """{"top": {...}, "layers": {...}}: every base parameter of the model, declared once.

    Layer weights carry a leading L axis (``layers``) because the stack is scanned.
    """
    c = config
    D, N, K, H, F, V, L = (c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
                           c.intermediate_size, c.vocab_size, c.num_layers)
    norm = "zeros" if c.gemma_scaling else "ones"  # Gemma stores w of the (1 + w) scale
    top = {
        "embed": WeightSpec((V, D), ("vocab", "embed")),
        "final_norm": WeightSpec((D,), ("norm",), norm),
    }
    if c.lm_head and not c.tie_word_embeddings:
        top["lm_head"] = WeightSpec((V, D), ("vocab", "embed"))
    layer = {
        "attn_norm": WeightSpec((D,), ("norm",), norm),
        "q": WeightSpec((D, N, H), ("embed", "heads", "head_dim")),
        "k": WeightSpec((D, K, H), ("embed", "kv_heads", "head_dim")),
        "v": WeightSpec((D, K, H), ("embed", "kv_heads", "head_dim")),
        "o": WeightSpec((N, H, D), ("heads", "head_dim", "embed")),
        "mlp_norm": WeightSpec((D,), ("norm",), norm),
        "gate": WeightSpec((D, F), ("embed", "mlp")),
        "up": WeightSpec((D, F), ("embed", "mlp")),
        "down": WeightSpec((F, D), ("mlp", "embed")),
    }
    if c.attention_bias:
        layer.update(
            q_bias=WeightSpec((N, H), ("heads", "head_dim"), "zeros"),
            k_bias=WeightSpec((K, H), ("kv_heads", "head_dim"), "zeros"),
            v_bias=WeightSpec((K, H), ("kv_heads", "head_dim"), "zeros"),
        )
    if c.o_bias:
        layer["o_bias"] = WeightSpec((D,), ("embed",), "zeros")
    if c.post_norms:
        layer.update(attn_post_norm=WeightSpec((D,), ("norm",), norm),
                     mlp_post_norm=WeightSpec((D,), ("norm",), norm))
    if c.qk_norm:  # one [H] scale shared by every head
        layer.update(q_norm=WeightSpec((H,), ("norm",), norm),
                     k_norm=WeightSpec((H,), ("norm",), norm))
    if c.mlp_bias:
        layer.update(
            gate_bias=WeightSpec((F,), ("mlp",), "zeros"),
            up_bias=WeightSpec((F,), ("mlp",), "zeros"),
            down_bias=WeightSpec((D,), ("embed",), "zeros"),
        )
    layers = {name: WeightSpec((L, *s.shape), ("layers", *s.axes), s.init)
              for name, s in layer.items()}
    return {"top": top, "layers": layers}


def lora_weight_specs(config: ModelConfig, lora) -> dict[str, WeightSpec]:
    """The adapter's stacked A [L, in..., R] and B [L, R, out...] for each of ``lora.targets``
    (``llm2vec_jax.lora.LoRAConfig``), derived from the base weight's spec."""
    layers = weight_specs(config)["layers"]
    out = {}
    for p in lora.targets:
        spec, n_in = layers[p], 1 + input_rank(p)  # the L axis plus the input axes
        name_a, name_b = lora_names(p)
        out[name_a] = WeightSpec(spec.shape[:n_in] + (lora.r,),
                                 spec.axes[:n_in] + (RANK_AXIS,), "lora_a")
        out[name_b] = WeightSpec((spec.shape[0], lora.r) + spec.shape[n_in:],
                                 (spec.axes[0], RANK_AXIS) + spec.axes[n_in:], "zeros")
    return out


def init_weight(spec: WeightSpec, key: jax.Array, dtype, std: float = 0.02) -> jax.Array:
    """A fresh array for ``spec`` (HF's init for base weights, PEFT's for LoRA)."""
    if spec.init == "ones":
        return jnp.ones(spec.shape, dtype)
    if spec.init == "zeros":
        return jnp.zeros(spec.shape, dtype)
    # Drawn flat and reshaped: the same values as a draw of the full shape (threefry counts in
    # row-major order), but XLA:CPU compiles a multi-dimensional draw several times slower
    # (seven [2, 64, 4] draws: 4.6 s against 0.6 s flat), and eager model init compiles one
    # per weight shape.
    size = (math.prod(spec.shape),)
    if spec.init == "lora_a":
        bound = 1.0 / math.sqrt(math.prod(spec.shape[1:-1]))
        drawn = jax.random.uniform(key, size, jnp.float32, -bound, bound)
    else:
        drawn = std * jax.random.normal(key, size, jnp.float32)
    return drawn.reshape(spec.shape).astype(dtype)
