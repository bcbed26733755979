"""LoRA adapters in Hugging Face PEFT format: ``adapter_config.json`` + ``adapter_model.safetensors``.

Keys are what PEFT writes after stripping the adapter name. The PyTorch llm2vec reference
applies PEFT to the bare ``LlamaModel`` (``AutoModel``), so its module paths have no ``model.``
segment::

    base_model.model.layers.{i}.self_attn.q_proj.lora_A.weight   [r, in_features]
    base_model.model.layers.{i}.mlp.gate_proj.lora_B.weight      [out_features, r]

That is ``"base_model.model." + HF_NAMES[p]`` with ``model.`` and ``.weight`` dropped; we
write exactly this. On a ``*ForCausalLM`` PEFT writes ``base_model.model.model.layers...``;
``load_peft_adapter`` accepts both prefixes. Tensors are torch ``nn.Linear`` layout, heads
flattened as HF does: ``lora_A`` [r, in] is our A [in..., R] transformed by ``to_hf`` like
any projection; ``lora_B`` [out, r] is our B [R, out...] flattened and transposed; import
uses ``to_ours`` for both (transpose, then reshape to our shape).

Only plain LoRA is supported (bias "none", no DoRA/rsLoRA, one rank and alpha for all
modules, adapters only on the seven decoder projections); anything else is refused with
an error naming the offending field rather than loaded wrongly.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from ..lora import (ALL_TARGETS, HF_MODULES, LoRAConfig, LoRAError, ShardingFn, get_adapter,
                    require_no_lora, set_adapter)
from ..models.specs import lora_names, lora_weight_specs
from ..models.transformer import Transformer
from .hf import HF_NAMES, to_hf, to_ours
from .io import staged_directory
from .safetensors_io import SafetensorsFile, SafetensorsFormatError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."            # PEFT on the bare LlamaModel (the llm2vec reference)
CAUSAL_LM_PREFIX = "base_model.model.model."  # PEFT on LlamaForCausalLM


class PeftFormatError(LoRAError):
    """An adapter directory we cannot load faithfully."""


def _module_path(p: str, layer: int) -> str:
    """``layers.{i}.self_attn.q_proj`` from the HF weight name table."""
    name = HF_NAMES[p].format(i=layer)
    assert name.startswith("model.") and name.endswith(".weight")
    return name[len("model."):-len(".weight")]


def peft_key(p: str, layer: int, which: str, prefix: str = PREFIX) -> str:
    """The safetensors key of ``lora_A`` / ``lora_B`` (``which`` = "A" or "B")."""
    return f"{prefix}{_module_path(p, layer)}.lora_{which}.weight"


def _torch_b(b: np.ndarray) -> np.ndarray:
    # [R, out...] -> [out, R]; to_hf cannot do it: it splits at the projection's input rank.
    return np.ascontiguousarray(b.reshape(b.shape[0], -1).T)


# -- save -------------------------------------------------------------------------------------

def adapter_config_dict(config: LoRAConfig, base_model_name_or_path: str | None = None) -> dict:
    """adapter_config.json content, with the fields PEFT (0.13 to 0.21) reads."""
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": [HF_MODULES[p] for p in config.targets],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
        "revision": None,
    }


def save_peft_adapter(model: Transformer, out_dir: str | os.PathLike, *,
                      base_model_name_or_path: str | None = None) -> str:
    """Write the attached adapter as a PEFT LoRA adapter directory; returns ``out_dir``.

    The directory is replaced as a whole once complete (``io.staged_directory``); an existing
    one keeps its other files (e.g. a tokenizer saved next to the adapter).
    """
    adapter = get_adapter(model)
    if adapter is None:
        raise LoRAError("model has no LoRA adapter to save (attach_lora or load_peft_adapter)")
    tensors = {}
    for p in adapter.config.targets:
        a, b = (np.asarray(jax.device_get(x)) for x in adapter.arrays[p])
        for i in range(model.config.num_layers):
            tensors[peft_key(p, i, "A")] = to_hf(p, a[i])
            tensors[peft_key(p, i, "B")] = _torch_b(b[i])
    config = adapter_config_dict(adapter.config, base_model_name_or_path)

    with staged_directory(out_dir, keep_existing=True) as tmp:
        save_file(tensors, os.path.join(tmp, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    return os.fspath(out_dir)


# -- load -------------------------------------------------------------------------------------

# Config fields that change the maths if set; their harmless defaults.
_MUST_BE = {
    "bias": ("none",), "use_dora": (False, None), "use_rslora": (False, None),
    "fan_in_fan_out": (False, None), "lora_bias": (False, None),
    "rank_pattern": ({}, None), "alpha_pattern": ({}, None), "modules_to_save": (None, []),
    "layers_to_transform": (None,), "layer_replication": (None,), "use_qalora": (False, None),
    "trainable_token_indices": (None,), "alora_invocation_tokens": (None,),
    "target_parameters": (None, []), "use_bdlora": (None, False), "arrow_config": (None,),
    "loftq_config": ({}, None),
}
# Initialisations that rewrite the base weights: the adapter alone would not reproduce them.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")


def _config_from_json(raw: dict) -> LoRAConfig:
    if raw.get("peft_type") != "LORA":
        raise PeftFormatError(f"peft_type={raw.get('peft_type')!r}: only LORA adapters load")
    bad = [f"{k}={raw[k]!r}" for k, ok in _MUST_BE.items() if k in raw and raw[k] not in ok]
    init = raw.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        bad.append(f"init_lora_weights={init!r} (modifies the base weights)")
    if bad:
        raise PeftFormatError("unsupported adapter_config.json settings: " + ", ".join(bad))
    targets = raw.get("target_modules")
    if isinstance(targets, (list, tuple)):
        unknown = sorted(set(targets) - set(HF_MODULES.values()))
        if unknown:
            raise PeftFormatError(f"target_modules {unknown} are not decoder projections "
                                  f"this model supports ({list(HF_MODULES.values())})")
    elif not isinstance(targets, str):
        raise PeftFormatError(f"target_modules={targets!r}: expected a list or a regex string")
    try:
        return LoRAConfig(r=raw["r"], alpha=raw["lora_alpha"], dropout=raw.get("lora_dropout", 0.0),
                          targets=tuple(targets) if isinstance(targets, (list, tuple))
                          else ALL_TARGETS)
    except KeyError as e:
        raise PeftFormatError(f"adapter_config.json lacks {e.args[0]!r}") from e


def load_peft_adapter(model: Transformer, adapter_dir: str | os.PathLike, *,
                      dtype: str = "float32", sharding_fn: ShardingFn | None = None) -> LoRAConfig:
    """Attach the PEFT LoRA adapter in ``adapter_dir`` to ``model`` (in place).

    Targets come from the tensors present (checked against ``target_modules``): every layer
    must have both matrices with the shapes this model and ``r`` imply. Arrays are stored in
    ``dtype`` and placed by ``sharding_fn`` (the loader's; None: the default device).
    """
    require_no_lora(model)
    adapter_dir = os.fspath(adapter_dir)
    config_path = os.path.join(adapter_dir, ADAPTER_CONFIG)
    weights_path = os.path.join(adapter_dir, ADAPTER_WEIGHTS)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            hint = " (adapter_model.bin is not loaded: no pickle)" if path == weights_path and \
                os.path.isfile(os.path.join(adapter_dir, "adapter_model.bin")) else ""
            raise FileNotFoundError(f"{path!r} not found{hint}")
    with open(config_path, encoding="utf-8") as f:
        raw = json.load(f)
    declared = _config_from_json(raw)
    try:
        handle = SafetensorsFile(weights_path)
    except (SafetensorsFormatError, OSError) as e:
        raise PeftFormatError(f"cannot read {weights_path!r}: {e}") from e
    with handle as f:
        keys = set(f.keys())
        prefix = CAUSAL_LM_PREFIX if any(k.startswith(CAUSAL_LM_PREFIX) for k in keys) else PREFIX
        num_layers = model.config.num_layers
        present = tuple(p for p in ALL_TARGETS
                        if any(peft_key(p, i, w, prefix) in keys
                               for i in range(num_layers) for w in "AB"))
        if not present:
            raise PeftFormatError(f"{weights_path!r} has no LoRA tensors for the decoder "
                                  f"projections (expected keys like {peft_key('q', 0, 'A')!r})")
        if isinstance(raw["target_modules"], str):
            # PEFT fullmatches the regex against module paths relative to the wrapped model.
            root = prefix[len(PREFIX):]
            if not all(re.fullmatch(raw["target_modules"], root + _module_path(p, 0))
                       for p in present):
                raise PeftFormatError(f"tensors for {list(present)} do not all match "
                                      f"target_modules regex {raw['target_modules']!r}")
        elif set(present) != set(declared.targets):
            raise PeftFormatError(f"target_modules {raw['target_modules']} but tensors for "
                                  f"{[HF_MODULES[p] for p in present]}")
        config = LoRAConfig(r=declared.r, alpha=declared.alpha, dropout=declared.dropout,
                            targets=present)
        wanted = {peft_key(p, i, w, prefix) for p in present for i in range(num_layers)
                  for w in "AB"}
        missing = sorted(wanted - keys)
        unexpected = sorted(keys - wanted)
        problems = []
        if missing:
            problems.append(f"missing {missing[:6]}" + (f" (+{len(missing) - 6})" if len(missing) > 6 else ""))
        if unexpected:
            problems.append(f"unexpected {unexpected[:6]}"
                            + (f" (+{len(unexpected) - 6})" if len(unexpected) > 6 else ""))
        specs = lora_weight_specs(model.config, config)
        for p in present:
            shape_a, shape_b = (specs[name].shape[1:] for name in lora_names(p))
            want = {"A": to_hf(p, np.empty(shape_a, np.int8)).shape,
                    "B": _torch_b(np.empty(shape_b, np.int8)).shape}
            for i in range(num_layers):
                for w in "AB":
                    key = peft_key(p, i, w, prefix)
                    if key in keys:
                        got = f.shape(key)
                        if got != want[w]:
                            problems.append(f"{key} has shape {list(got)}, expected "
                                            f"{list(want[w])} (r={config.r})")
        if problems:
            raise PeftFormatError(f"adapter {adapter_dir!r} does not fit this model: "
                                  + "; ".join(problems))
        arrays = {}
        for p in present:
            arrays[p] = tuple(
                np.stack([to_ours(p, f.read(peft_key(p, i, w, prefix)), specs[name].shape[1:])
                          for i in range(num_layers)]).astype(jnp.dtype(dtype))
                for w, name in zip("AB", lora_names(p)))
    set_adapter(model, config, arrays, sharding_fn=sharding_fn)
    return config
