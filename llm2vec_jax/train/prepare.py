"""The model a stage trains: the base with the earlier stages' adapters merged, placed on the
mesh, and a LoRA adapter attached: a fresh one, or an earlier one to train further."""

from __future__ import annotations

from .. import sharding as shd
from ..checkpoints.merged import load_merged
from ..checkpoints.peft import load_peft_adapter
from ..lora import attach_lora
from ..typed_config import TrainConfigError
from .config import TrainConfig


def adapter_chain(config: TrainConfig) -> tuple[str, ...]:
    adapters = config.model.adapter or ()
    return (adapters,) if isinstance(adapters, str) else tuple(adapters)


def prepare_model(config: TrainConfig, path: str, mesh):
    """The model to train: ``path`` (``model.path``'s checkpoint directory) with
    ``model.adapter``(s) merged in order, sharded by the rules table, attention dropout set
    for the contrastive stages, and a fresh LoRA (``config.lora``) attached, or
    ``model.init_adapter`` loaded unmerged."""
    sharding_fn = shd.weight_sharding_fn(mesh)
    _, model = load_merged(path, adapter_chain(config), dtype=config.model.dtype,
                           compute_dtype=config.model.compute_dtype, sharding_fn=sharding_fn,
                           remat=config.model.remat)
    if config.run.stage == "mntp" and not model.config.has_logits:
        raise ValueError(
            f"MNTP needs an LM head, but model.path={config.model.path!r} is a bare *Model "
            "checkpoint (no lm_head.weight) with untied embeddings; start MNTP from the "
            "*ForCausalLM checkpoint it came from")
    if config.run.stage != "mntp":
        model.config = model.config.replace(attention_dropout=config.contrastive.dropout)
    if config.model.init_adapter:
        continue_adapter(model, config, sharding_fn)
    else:
        attach_lora(model, config.lora, seed=config.run.seed, sharding_fn=sharding_fn)
    return model


def continue_adapter(model, config: TrainConfig, sharding_fn) -> None:
    """Attach ``model.init_adapter`` as the LoRA to train; it must have ``lora``'s shape."""
    path = config.model.init_adapter
    loaded = load_peft_adapter(model, path, sharding_fn=sharding_fn)
    wanted = config.lora
    if (loaded.r, loaded.alpha, loaded.targets) != (wanted.r, wanted.alpha, wanted.targets):
        raise TrainConfigError(
            f"model.init_adapter={path!r} has r={loaded.r}, alpha={loaded.alpha:g}, targets "
            f"{list(loaded.targets)}, but lora has r={wanted.r}, alpha={wanted.alpha:g}, "
            f"targets {list(wanted.targets)}: set lora to the adapter's values")
    model.lora_config = wanted   # the adapter's shape, this stage's dropout
