"""LoRA adapters (Hu et al. 2021) on the decoder's projections, PEFT-compatible.

Layout. For a projection ``p`` (see ``models.specs.PROJECTIONS``) whose weight is
[L, in..., out...], the adapter is two parameters on ``model.layers``, declared by
``models.specs.lora_weight_specs`` (names from ``lora_names``, shapes and logical axes from
the base weight's spec, so the sharding rules place them like everything else):

  A  [L, in...,  R]   e.g. q: [L, D, R],    o: [L, N, H, R]
  B  [L, R, out...]   e.g. q: [L, R, N, H], o: [L, R, D]

and ``model.lora_config`` (a static ``LoRAConfig``) carries ``scale = alpha / r`` and the
dropout rate. ``project()`` adds ``scale · dropout(x)·A·B`` to the projection, so these are
PEFT's ``lora_A`` / ``lora_B`` with our axis order (torch's ``lora_A.weight`` is [R, in],
``lora_B.weight`` [out, R]; ``checkpoints.peft`` converts). As in PEFT, A starts
kaiming-uniform and B at zero, so a freshly attached adapter leaves the model unchanged.

The parameters are ``LoRAWeight`` (a subclass of ``nnx.LoRAParam`` and thus of ``nnx.Param``):
train with ``LORA_FILTER``, and use ``FROZEN_FILTER`` for "every base weight".

Merging: ``merge_lora`` folds W += scale·A·B into the base weights and removes the adapter,
returning it as a ``LoRAAdapter``; ``unmerge_lora(model, adapter)`` subtracts it again and
re-attaches it (W + Δ − Δ: exact up to float rounding). ``merge_and_reattach`` merges and
attaches a fresh adapter (SimCSE after MNTP). Merging is one jitted call over all adapted
weights whose outputs keep the weights' shardings, and fresh adapters are drawn inside jit
into the shardings ``sharding_fn`` gives their specs (the loader's, e.g.
``sharding.weight_sharding_fn(mesh)``), so sharded models never pass through the host.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .models.specs import (PROJECTIONS, WeightSpec, init_weight, lora_names, lora_weight_specs,
                           projection_einsum)
from .models.transformer import Transformer

ALL_TARGETS: tuple[str, ...] = tuple(PROJECTIONS)
# Our projection name → the HF module name PEFT's target_modules uses.
HF_MODULES: dict[str, str] = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                              "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
_HF_QUALIFIED = {p: ("self_attn." if p in "qkvo" else "mlp.") + m for p, m in HF_MODULES.items()}
ShardingFn = Callable[[WeightSpec], jax.sharding.Sharding]


class LoRAError(ValueError):
    """An adapter operation that does not fit the model's current state."""


class LoRAWeight(nnx.LoRAParam):
    """A LoRA A or B matrix (an ``nnx.LoRAParam``, so LoRA filters select it)."""


LORA_FILTER = nnx.LoRAParam
# LoRAParam subclasses Param: "all Params" would include the adapter.
FROZEN_FILTER = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


def _resolve_targets(targets) -> tuple[str, ...]:
    """Our projection names, canonical order, from names/HF names or a regex over them."""
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise LoRAError(f"targets regex {targets!r} does not compile: {e}") from e
        found = tuple(p for p in ALL_TARGETS
                      if any(pattern.fullmatch(n) for n in (p, HF_MODULES[p], _HF_QUALIFIED[p])))
        if not found:
            raise LoRAError(f"targets regex {targets!r} matches no projection; it is matched "
                            f"(fullmatch) against {list(ALL_TARGETS)}, "
                            f"{list(HF_MODULES.values())} and {list(_HF_QUALIFIED.values())}")
        return found
    targets = tuple(targets)
    if not targets:
        raise LoRAError("targets is empty: LoRA needs at least one projection")
    lookup = {n: p for p in ALL_TARGETS for n in (p, HF_MODULES[p], _HF_QUALIFIED[p])}
    unknown = [t for t in targets if t not in lookup]
    if unknown:
        raise LoRAError(f"unknown LoRA targets {unknown}; choose from {list(ALL_TARGETS)} "
                        f"(or the HF names {list(HF_MODULES.values())}, or one regex string)")
    chosen = {lookup[t] for t in targets}
    return tuple(p for p in ALL_TARGETS if p in chosen)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Rank ``r``, ``alpha`` (scale = alpha / r, as PEFT), input ``dropout`` rate, ``targets``.

    ``targets``: our projection names or HF module names (``q_proj``...), or one regex string
    fullmatched against either; normalised to our names in canonical order. Hashable: it is a
    static attribute of the model.
    """

    r: int = 16
    alpha: float = 32
    dropout: float = 0.05
    targets: tuple[str, ...] | str = ALL_TARGETS

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, (int, np.integer)) or self.r <= 0:
            raise LoRAError(f"r must be a positive integer, got {self.r!r}")
        if not isinstance(self.alpha, (int, float, np.number)) or not self.alpha > 0:
            raise LoRAError(f"alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float, np.number)) or not 0.0 <= self.dropout < 1.0:
            raise LoRAError(f"dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "r", int(self.r))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "targets", _resolve_targets(self.targets))

    @property
    def scale(self) -> float:
        return self.alpha / self.r


@dataclasses.dataclass
class LoRAAdapter:
    """An adapter detached from a model: its config and {projection: (A, B)} stacked arrays."""

    config: LoRAConfig
    arrays: dict[str, tuple[jax.Array, jax.Array]]


# -- attach / read / detach -------------------------------------------------------------------

def has_lora(model: Transformer) -> bool:
    return model.lora_config is not None


def require_no_lora(model: Transformer) -> None:
    if has_lora(model):
        raise LoRAError("model already has a LoRA adapter; merge_lora() or remove_lora() first "
                        "(or use merge_and_reattach)")


def set_adapter(model: Transformer, config: LoRAConfig, arrays: Mapping[str, tuple], *,
                sharding_fn: ShardingFn | None = None) -> None:
    """Attach given (A, B) arrays per target after checking their shapes against the model's
    LoRA specs; ``sharding_fn`` places each by its spec (None: left where they are)."""
    require_no_lora(model)
    specs = lora_weight_specs(model.config, config)
    if set(arrays) != set(config.targets):
        raise LoRAError(f"adapter arrays for {sorted(arrays)} but config targets "
                        f"{list(config.targets)}")
    for p, pair in arrays.items():
        for name, value in zip(lora_names(p), pair):
            if tuple(value.shape) != specs[name].shape:
                raise LoRAError(f"{name} has shape {tuple(value.shape)}, expected "
                                f"{specs[name].shape} for this model and r={config.r}")
    for p in config.targets:
        for name, value in zip(lora_names(p), arrays[p]):
            spec = specs[name]
            value = jnp.asarray(value) if sharding_fn is None else jax.device_put(
                value, sharding_fn(spec))
            setattr(model.layers, name, LoRAWeight(value, logical_axes=spec.axes))
    model.lora_config = config


@functools.lru_cache(maxsize=None)
def _init_fn(specs: tuple[WeightSpec, ...], dtype, shardings: tuple | None):
    """One jitted draw of every A and B: one compile per adapter layout, not per projection.

    Drawn inside jit with the target shardings, so each device creates only its shard.
    """
    def init(keys):
        return tuple(init_weight(spec, key, dtype) for spec, key in zip(specs, keys))
    return jax.jit(init) if shardings is None else jax.jit(init, out_shardings=shardings)


def attach_lora(model: Transformer, config: LoRAConfig | None = None, *, seed: int = 0,
                dtype: str = "float32", sharding_fn: ShardingFn | None = None) -> None:
    """Attach a fresh adapter in place: A ~ PEFT's kaiming_uniform(a=√5), i.e.
    U(±1/√fan_in) with fan_in = the projection's input features; B = 0 (identity).

    ``dtype`` is the adapter's storage dtype: float32 by default even for bf16 models, as
    PEFT's autocast_adapter_dtype does, so optimizer updates are not rounded away.
    ``sharding_fn`` places the adapter by its logical axes (None: the default device).
    """
    config = LoRAConfig() if config is None else config
    require_no_lora(model)
    specs = lora_weight_specs(model.config, config)
    names = [name for p in config.targets for name in lora_names(p)]
    shardings = None if sharding_fn is None else tuple(sharding_fn(specs[n]) for n in names)
    root = jax.random.key(seed)
    # Keyed by the projection's name, so a target's draw does not depend on the others (B,
    # zeros, takes the same key unused).
    keys = tuple(jax.random.fold_in(root, ALL_TARGETS.index(p)) for p in config.targets
                 for _ in range(2))
    drawn = _init_fn(tuple(specs[n] for n in names), jnp.dtype(dtype), shardings)(keys)
    arrays = dict(zip(config.targets, zip(drawn[0::2], drawn[1::2])))
    set_adapter(model, config, arrays)


def get_adapter(model: Transformer) -> LoRAAdapter | None:
    """The attached adapter (config and current arrays), or None."""
    if not has_lora(model):
        return None
    config = model.lora_config
    return LoRAAdapter(config, {p: tuple(getattr(model.layers, name)[...]
                                         for name in lora_names(p))
                                for p in config.targets})


def remove_lora(model: Transformer) -> LoRAAdapter:
    """Detach the adapter without merging; returns it."""
    adapter = get_adapter(model)
    if adapter is None:
        raise LoRAError("model has no LoRA adapter")
    for p in adapter.config.targets:
        for name in lora_names(p):
            delattr(model.layers, name)
    model.lora_config = None
    return adapter


# -- merge ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _merge_fn(targets: tuple[str, ...], shardings):
    """W + scale·A·B for every target in one jitted call (one compile per layout); the
    outputs keep the weights' shardings."""
    # float32 and HIGHEST precision: accelerators' default fp32 matmul (TF32/bf16 passes)
    # would put visible error into the merged weights.
    def merge(ws, adapters, scale):
        out = []
        for p, w, (a, b) in zip(targets, ws, adapters):
            delta = jnp.einsum(projection_einsum(p).lora_delta(), a.astype(jnp.float32),
                               b.astype(jnp.float32),
                               precision=jax.lax.Precision.HIGHEST)
            out.append((w.astype(jnp.float32) + scale * delta).astype(w.dtype))
        return tuple(out)
    # No buffer donation: callers may still hold the old weights (e.g. to compare).
    return jax.jit(merge) if shardings is None else jax.jit(merge, out_shardings=shardings)


def _add_delta(model: Transformer, adapter: LoRAAdapter, sign: float) -> None:
    targets = tuple(adapter.arrays)
    ws = tuple(getattr(model.layers, p)[...] for p in targets)
    shardings = tuple(getattr(w, "sharding", None) for w in ws)
    merge = _merge_fn(targets, None if None in shardings else shardings)
    merged = merge(ws, tuple(adapter.arrays[p] for p in targets),
                   jnp.float32(sign * adapter.config.scale))
    for p, w in zip(targets, merged):
        getattr(model.layers, p).set_value(w)


def merge_lora(model: Transformer) -> LoRAAdapter:
    """Fold the adapter into the base weights (W += scale·A·B per layer), in place.

    The LoRA attributes are removed and returned as a ``LoRAAdapter``; pass it to
    ``unmerge_lora`` to undo (exact up to float rounding of W + Δ − Δ).
    """
    adapter = remove_lora(model)
    _add_delta(model, adapter, +1.0)
    return adapter


def unmerge_lora(model: Transformer, adapter: LoRAAdapter) -> None:
    """Undo ``merge_lora``: W −= scale·A·B, and re-attach ``adapter``."""
    if has_lora(model):
        raise LoRAError("model has an attached LoRA adapter; unmerge_lora expects the state "
                        "merge_lora left (adapter merged and removed)")
    set_adapter(model, adapter.config, adapter.arrays)  # validates shapes before touching W
    _add_delta(model, adapter, -1.0)


def merge_and_reattach(model: Transformer, new_config: LoRAConfig | None = None, *,
                       seed: int = 0, dtype: str = "float32",
                       sharding_fn: ShardingFn | None = None) -> LoRAAdapter:
    """Merge the current adapter into the weights, then attach a fresh one (e.g. SimCSE
    training after MNTP). Returns the merged adapter."""
    adapter = merge_lora(model)
    attach_lora(model, new_config if new_config is not None else adapter.config, seed=seed,
                dtype=dtype, sharding_fn=sharding_fn)
    return adapter


def lora_parameter_count(model: Transformer) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, LORA_FILTER)))
