"""A base checkpoint with a chain of PEFT adapters merged into its weights, in order: what each
training stage starts from, what the recipe evaluates and exports, what ``LLM2Vec`` loads."""

from __future__ import annotations

import os
from typing import Sequence

from ..lora import ShardingFn, merge_lora
from ..models.transformer import Transformer
from .default_model import resolve_model
from .hf import load_hf_checkpoint, resolve_checkpoint_dir
from .peft import load_peft_adapter


def load_merged(base: str | os.PathLike, adapters: Sequence[str | os.PathLike] = (), *,
                dtype: str = "float32", sharding_fn: ShardingFn | None = None,
                **config_overrides) -> tuple[str, Transformer]:
    """(checkpoint directory, model): ``base`` ("smollm2", a directory or a hub id) loaded
    in ``dtype`` and placed by ``sharding_fn``, each adapter merged in turn (W += scale·A·B,
    computed from float32 adapters). ``config_overrides`` go to ``ModelConfig``."""
    directory = resolve_checkpoint_dir(resolve_model(os.fspath(base)))
    model = load_hf_checkpoint(directory, dtype=dtype, sharding_fn=sharding_fn,
                               **config_overrides)
    for adapter in adapters:
        if not os.path.isdir(adapter):
            raise FileNotFoundError(f"adapter directory {os.fspath(adapter)!r} does not exist")
        load_peft_adapter(model, adapter, sharding_fn=sharding_fn)
        merge_lora(model)
    return directory, model
