"""Model configuration: one frozen, validated dataclass for the Llama-style decoders (Llama
2/3/3.1, Mistral, Qwen2/2.5, Qwen3, Gemma), built from and written back to a Hugging Face
``config.json``. A family is a few switches of the one decoder (``FAMILIES``), not a model
file of its own."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from .kernels import Kernels


@dataclasses.dataclass(frozen=True)
class Family:
    """What a ``model_type`` fixes about the decoder, as transformers builds it."""

    hf_class: str                      # "Llama" → LlamaForCausalLM / LlamaModel
    # Qwen2 hard-codes q/k/v biases and no o bias; the others have one attention_bias flag.
    fixed_qkv_bias: bool | None = None
    qk_norm: bool = False              # per-head RMSNorm of q and k before RoPE (Qwen3)
    sliding_window: bool = False       # one window on every layer (Mistral)
    layer_types: bool = False          # config.json lists per-layer attention types (Qwen)
    hidden_act: str = "silu"           # the MLP's gate activation
    # Gemma: embeddings × √D, RMSNorm scaling by (1 + w) in float32.
    gemma_scaling: bool = False
    # Gemma 2: RMSNorm after attention and after the MLP too (before the residual add).
    post_norms: bool = False
    # Gemma 2: attention- and final-logit soft-capping, query_pre_attn_scalar.
    softcapping: bool = False
    sliding_layers: bool = False       # per-layer windows from config.json's layer_types
    local_rope: bool = False           # sliding layers have a RoPE base of their own (Gemma 3)


FAMILIES: dict[str, Family] = {
    "llama": Family("Llama"),
    "mistral": Family("Mistral", sliding_window=True),
    "qwen2": Family("Qwen2", fixed_qkv_bias=True, layer_types=True),
    "qwen3": Family("Qwen3", qk_norm=True, layer_types=True),
    "gemma": Family("Gemma", hidden_act="gelu_pytorch_tanh", gemma_scaling=True),
    "gemma2": Family("Gemma2", hidden_act="gelu_pytorch_tanh", gemma_scaling=True,
                     post_norms=True, softcapping=True, sliding_window=True,
                     layer_types=True, sliding_layers=True),
    "gemma3_text": Family("Gemma3", hidden_act="gelu_pytorch_tanh", gemma_scaling=True,
                          qk_norm=True, post_norms=True, softcapping=True,
                          sliding_window=True, layer_types=True, sliding_layers=True,
                          local_rope=True),
}
# config.json fields of features no family here implements (soft-capping, Gemma 2's query
# scaling, mixtures of experts): set, they would be silently ignored, so they are refused.
SOFTCAPPING_HF_FIELDS = ("attn_logit_softcapping", "final_logit_softcapping",
                         "query_pre_attn_scalar")
MOE_HF_FIELDS = ("num_local_experts", "num_experts", "moe_intermediate_size")
# Gemma's releases say "gelu" but mean the tanh approximation (transformers rewrites it too).
HIDDEN_ACT_ALIASES = {("gemma", "gelu"): "gelu_pytorch_tanh",
                      ("gemma2", "gelu"): "gelu_pytorch_tanh",
                      ("gemma3_text", "gelu"): "gelu_pytorch_tanh"}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
# How an encoder attends: LLM2Vec's bidirectional (causal mask off, padding still masked) or
# the decoder's own causal attention (the paper's "Uni" rows).
ATTENTION_MODES = ("bidirectional", "causal")


class ConfigError(ValueError):
    """A model configuration we cannot (or will not) represent faithfully."""


def read_hf_config(path: str | os.PathLike) -> dict:
    """The dict in a ``config.json`` file, or in ``path/config.json`` for a directory."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config.json at {path!r}: is this an HF checkpoint directory?")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling; ``rope_type`` follows transformers' names."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"rope_scaling.rope_type={self.rope_type!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if self.factor <= 0:
            raise ConfigError(f"rope_scaling.factor must be > 0, got {self.factor}")

    @classmethod
    def from_hf(cls, d: Mapping[str, Any] | None) -> "RopeScaling":
        if not d:
            return cls()
        rope_type = d.get("rope_type", d.get("type", "default"))
        if rope_type == "default":
            return cls()
        known = {"rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
                 "original_max_position_embeddings", "rope_theta"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"rope_scaling has fields we do not implement: {unknown}")
        kwargs = {k: d[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                    "original_max_position_embeddings") if k in d}
        return cls(rope_type=rope_type, **kwargs)

    def to_hf(self) -> dict | None:
        if self.rope_type == "default":
            return None
        if self.rope_type == "linear":
            return {"rope_type": "linear", "factor": self.factor}
        return {"rope_type": "llama3", "factor": self.factor,
                "low_freq_factor": self.low_freq_factor,
                "high_freq_factor": self.high_freq_factor,
                "original_max_position_embeddings": self.original_max_position_embeddings}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture plus the runtime choices that change the computation.

    Architecture fields mirror the HF names' meaning; ``dtype`` is the compute dtype,
    ``param_dtype`` the storage dtype, ``causal`` the default attention mode (overridable per
    call), ``attention_dropout`` the attention-probability dropout rate used only when a dropout
    rng is passed, ``remat`` the gradient-checkpointing policy of the scanned layer,
    ``kernels`` the backend-dependent implementations (``models/kernels.py``; fields left
    None are resolved for the backend when the model is built, and the model's config
    records them).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    model_type: str = "llama"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    # Set by the family (``FAMILIES``): biases of q/k/v and of o, q/k RMSNorm.
    attention_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    hidden_act: str = "silu"
    gemma_scaling: bool = False
    post_norms: bool = False
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    query_pre_attn_scalar: float | None = None   # None: attention scaled by head_dim ** -0.5
    # Which layers use ``sliding_window`` (Gemma 2); None: every layer (Mistral).
    sliding_layers: tuple[bool, ...] | None = None
    rope_local_theta: float | None = None   # the sliding layers' RoPE base (Gemma 3)
    # False for a bare ``*Model`` checkpoint (an encoder saved without its LM head): it then
    # has logits only through tied embeddings.
    lm_head: bool = True
    mlp_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    # runtime choices
    causal: bool = True
    attention_dropout: float = 0.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    kernels: Kernels = Kernels()

    def __post_init__(self):
        family = family_of(self.model_type)
        if family.fixed_qkv_bias is not None:
            if (self.attention_bias, self.o_bias) != (family.fixed_qkv_bias, False):
                raise ConfigError(f"{self.model_type} has q/k/v biases and no o bias: "
                                  "attention_bias=True, o_bias=False")
        elif self.o_bias != self.attention_bias:
            raise ConfigError(f"{self.model_type} biases all of q/k/v/o or none: o_bias must "
                              f"equal attention_bias={self.attention_bias}")
        for name in ("hidden_act", "gemma_scaling", "post_norms"):
            if getattr(self, name) != getattr(family, name):
                raise ConfigError(f"{name}={getattr(self, name)!r} is not supported for "
                                  f"{self.model_type}; supported: {getattr(family, name)!r}")
        if self.qk_norm != family.qk_norm:
            raise ConfigError(f"qk_norm={self.qk_norm} but {self.model_type} has "
                              f"{'' if family.qk_norm else 'no '}q/k norm")
        if not family.softcapping:
            for name in SOFTCAPPING_HF_FIELDS:
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name}={getattr(self, name)!r} is not supported for "
                                      f"{self.model_type}; supported: None (gemma2 has it)")
        if self.sliding_layers is not None and (not family.sliding_layers
                                                or len(self.sliding_layers) != self.num_layers):
            raise ConfigError(f"sliding_layers must be None or one flag per layer (gemma2), "
                              f"got {self.sliding_layers!r} for {self.model_type}")
        if (self.rope_local_theta is not None) != family.local_rope:
            raise ConfigError(f"rope_local_theta={self.rope_local_theta!r}: only gemma3_text "
                              "has (and needs) a RoPE base of its own for sliding layers")
        if self.sliding_window is not None and not family.sliding_window:
            raise ConfigError(f"sliding_window={self.sliding_window}: {self.model_type} has no "
                              "sliding window here (supported with: mistral, gemma2)")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads="
                f"{self.num_kv_heads} (grouped-query attention needs whole groups)"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ConfigError(f"sliding_window must be positive or None, got {self.sliding_window}")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ConfigError(f"attention_dropout must be in [0, 1), got {self.attention_dropout}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in SUPPORTED_DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r}; choose one of {SUPPORTED_DTYPES}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat={self.remat!r}; choose one of {REMAT_POLICIES}")
        if not isinstance(self.kernels, Kernels):
            raise ConfigError(f"kernels must be a Kernels, got {self.kernels!r}")

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def has_logits(self) -> bool:
        return self.lm_head or self.tie_word_embeddings

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # -- Hugging Face config.json ------------------------------------------------------------

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any] | str | os.PathLike, **overrides) -> "ModelConfig":
        """Build from an HF config dict, a ``config.json`` path, or a checkpoint directory."""
        if not isinstance(hf, Mapping):
            hf = read_hf_config(hf)
        model_type = hf.get("model_type")
        family = family_of(model_type)
        if hf.get("use_bidirectional_attention"):
            raise ConfigError("use_bidirectional_attention=true (EmbeddingGemma's symmetric "
                              "sliding windows) is not supported; supported: false")
        unsupported = MOE_HF_FIELDS + (() if family.softcapping else SOFTCAPPING_HF_FIELDS)
        for field in unsupported:
            if hf.get(field) is not None:
                raise ConfigError(f"{field}={hf[field]!r} is not supported for {model_type}: "
                                  "no family here implements it; supported: absent or null")
        act = hf.get("hidden_activation") or hf.get("hidden_act", family.hidden_act)
        act = HIDDEN_ACT_ALIASES.get((model_type, act), act)
        if act != family.hidden_act:
            raise ConfigError(f"hidden_act={act!r} is not supported; {model_type} uses "
                              f"{family.hidden_act!r}")
        if family.layer_types and not family.sliding_layers and (hf.get("use_sliding_window")
                                   or set(hf.get("layer_types") or ()) - {"full_attention"}):
            raise ConfigError(f"use_sliding_window=true (per-layer sliding windows) is not "
                              f"supported for {model_type}; supported: false")
        if hf.get("pretraining_tp", 1) != 1:
            raise ConfigError(f"pretraining_tp={hf['pretraining_tp']} is not supported; only 1")
        heads = hf["num_attention_heads"]
        hidden = hf["hidden_size"]
        head_dim = hf.get("head_dim") or hidden // heads
        # transformers 5 keeps rope_theta inside rope_parameters; 4.x keeps both top-level.
        rope = hf.get("rope_parameters") or hf.get("rope_scaling")
        rope_local_theta = None
        if family.local_rope:
            # transformers 5: one rope_parameters entry per layer type; 4.x: top-level keys.
            local = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 1e4)}
            if rope and "full_attention" in rope:
                rope, local = rope["full_attention"], rope.get("sliding_attention", local)
            if local.get("rope_type", "default") != "default":
                raise ConfigError(f"rope_parameters.sliding_attention.rope_type="
                                  f"{local['rope_type']!r} is not supported; supported: default")
            rope_local_theta = float(local["rope_theta"])
        rope_theta = hf.get("rope_theta") or (rope or {}).get("rope_theta", 10000.0)
        sliding = hf.get("sliding_window") if family.sliding_window else None
        sliding_layers = None
        if family.sliding_layers:
            # transformers' default when config.json lists none: every other layer, from 0.
            types = hf.get("layer_types") or [
                "sliding_attention" if (i + 1) % 2 else "full_attention"
                for i in range(hf["num_hidden_layers"])]
            unknown = sorted(set(types) - {"sliding_attention", "full_attention"})
            if unknown:
                raise ConfigError(f"layer_types {unknown} are not supported for {model_type}; "
                                  "supported: sliding_attention, full_attention")
            sliding_layers = tuple(t == "sliding_attention" for t in types)
        attention_bias = (family.fixed_qkv_bias if family.fixed_qkv_bias is not None
                          else bool(hf.get("attention_bias", False)))
        eos = hf.get("eos_token_id")
        architectures = hf.get("architectures") or []
        kwargs = dict(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hidden,
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=RopeScaling.from_hf(rope),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            lm_head=not (architectures and architectures[0].endswith("Model")),
            attention_bias=attention_bias,
            o_bias=attention_bias and family.fixed_qkv_bias is None,
            qk_norm=family.qk_norm,
            hidden_act=act,
            gemma_scaling=family.gemma_scaling,
            post_norms=family.post_norms,
            **{name: hf.get(name) for name in SOFTCAPPING_HF_FIELDS if family.softcapping},
            sliding_layers=sliding_layers,
            rope_local_theta=rope_local_theta,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            sliding_window=sliding,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"),
            initializer_range=float(hf.get("initializer_range", 0.02)),
            attention_dropout=float(hf.get("attention_dropout", 0.0)),
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict:
        """An HF ``config.json`` dict that transformers loads as the same architecture."""
        family = FAMILIES[self.model_type]
        arch = family.hf_class + ("ForCausalLM" if self.lm_head else "Model")
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        hf = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.to_hf(),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": self.attention_dropout,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
            "torch_dtype": self.param_dtype,
        }
        if family.fixed_qkv_bias is None:
            hf["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            hf["mlp_bias"] = self.mlp_bias
            hf["pretraining_tp"] = 1
        if family.sliding_window:
            hf["sliding_window"] = self.sliding_window
        if family.sliding_layers:
            hf.update(hidden_activation=self.hidden_act,
                      layer_types=["sliding_attention" if s else "full_attention"
                                   for s in self.sliding_layers],
                      **{name: getattr(self, name) for name in SOFTCAPPING_HF_FIELDS})
        elif family.layer_types:
            hf.update(use_sliding_window=False, sliding_window=None,
                      max_window_layers=self.num_layers,
                      layer_types=["full_attention"] * self.num_layers)
        if family.local_rope:
            hf["rope_parameters"] = {
                "full_attention": {**(self.rope_scaling.to_hf() or {"rope_type": "default"}),
                                   "rope_theta": self.rope_theta},
                "sliding_attention": {"rope_type": "default", "rope_theta": self.rope_local_theta}}
            del hf["rope_theta"], hf["rope_scaling"]
        return hf


def family_of(model_type) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError(f"model_type={model_type!r} is not supported; supported: "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    return FAMILIES[model_type]
