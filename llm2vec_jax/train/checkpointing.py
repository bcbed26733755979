"""Resumable training: orbax checkpoints of what trains (LoRA, optimizer state, step) and of the
data position, in ``OUTPUT_DIR/checkpoints``; and the record of the settings a run used.

The frozen base weights are not checkpointed (they come from the base model), and the step's
dropout rng is derived from (seed, step), so a resumed run reproduces the uninterrupted one
exactly.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from ..checkpoints.io import is_remote, join
from ..distributed import is_main_process
from .config import TrainConfig
from .steps import TrainState

log = logging.getLogger("llm2vec_jax.train")


def checkpoint_manager(config: TrainConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.run.keep_checkpoints,
        enable_async_checkpointing=config.run.async_checkpointing)
    directory = join(config.run.output_dir, "checkpoints")
    if not is_remote(directory):
        directory = os.path.abspath(directory)
    return ocp.CheckpointManager(directory, options=options, item_names=("train", "data"))


def trainable(state: TrainState) -> dict:
    # The frozen base weights are not checkpointed: they come from the base model.
    return {"step": state.step, "lora": state.lora, "opt_state": state.opt_state}


def restore(manager: ocp.CheckpointManager, state: TrainState, iterator) -> TrainState:
    step = manager.latest_step()
    if step is None:
        return state
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            trainable(state))
    restored = manager.restore(step, args=ocp.args.Composite(
        train=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    iterator.set_state(restored["data"])
    train = restored["train"]
    log.info("resumed from step %d", step)
    return state.replace(step=train["step"], lora=train["lora"], opt_state=train["opt_state"])


def save(manager: ocp.CheckpointManager, step: int, state: TrainState, iterator) -> None:
    manager.save(step, args=ocp.args.Composite(train=ocp.args.StandardSave(trainable(state)),
                                               data=ocp.args.JsonSave(iterator.get_state())),
                 force=True)


def record_settings(config: TrainConfig, start: int) -> None:
    """Write ``OUTPUT_DIR/train_config.json``; when resuming, warn about every setting that
    differs from the run that wrote the checkpoints (main process only)."""
    if not is_main_process():
        return
    config_file = epath.Path(join(config.run.output_dir, "train_config.json"))
    settings = json.dumps(config.to_dict(), indent=2)
    if start and config_file.exists():
        # Compared as JSON, the form the earlier run wrote (tuples read back as lists).
        changed = changed_settings(json.loads(config_file.read_text()), json.loads(settings))
        if changed:
            log.warning("resuming %s at step %d with settings that differ from the run "
                        "that wrote its checkpoints: %s", config.run.output_dir, start,
                        "; ".join(changed))
    config_file.write_text(settings)


def changed_settings(before: dict, after: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two config dicts."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
