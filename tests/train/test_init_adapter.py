"""``model.init_adapter``: a stage trains an earlier adapter further (kept unmerged) instead of
a fresh LoRA: the model it starts from computes what base + that adapter computes."""

import jax
import numpy as np
import pytest
from flax import nnx

from hf_oracle import batch, make_hf_model, save_hf_model
from llm2vec_jax import load_hf_checkpoint
from llm2vec_jax.checkpoints.peft import save_peft_adapter
from llm2vec_jax.lora import LoRAConfig, attach_lora, get_adapter, remove_lora, set_adapter
from llm2vec_jax.sharding import make_mesh
from llm2vec_jax.train.config import ModelSection, RunSection, TrainConfig
from llm2vec_jax.train.prepare import prepare_model
from llm2vec_jax.typed_config import TrainConfigError


@nnx.jit
def hidden(model, ids, mask):
    return model(ids, mask, causal=False)


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory):
    """(base checkpoint, adapter dir, the model that wrote it): LoRA with non-zero B, as an
    earlier stage leaves it (a fresh B is zero and would not show the adapter is applied)."""
    root = tmp_path_factory.mktemp("init-adapter")
    checkpoint = save_hf_model(make_hf_model("llama"), root / "base")
    model = load_hf_checkpoint(checkpoint)
    attach_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.0), seed=3)
    fresh = remove_lora(model)
    rng = np.random.default_rng(0)
    set_adapter(model, fresh.config, {
        p: (a, rng.normal(0, 0.05, b.shape).astype(np.float32))
        for p, (a, b) in fresh.arrays.items()})
    adapter = save_peft_adapter(model, root / "adapter")
    return checkpoint, adapter, model


def config(checkpoint, adapter, lora):
    return TrainConfig(model=ModelSection(path=checkpoint, init_adapter=adapter), lora=lora,
                       run=RunSection(stage="simcse", seed=7))


def test_the_stage_starts_from_the_adapter_unmerged(trained_adapter):
    checkpoint, adapter, writer = trained_adapter
    lora = LoRAConfig(r=4, alpha=8, dropout=0.1)
    model = prepare_model(config(checkpoint, adapter, lora), checkpoint, make_mesh())
    started, written = get_adapter(model), get_adapter(writer)
    assert started.config == lora           # the adapter's shape, this stage's dropout
    assert set(started.arrays) == set(written.arrays)
    for p, (a, b) in written.arrays.items():
        assert np.abs(np.asarray(b)).max() > 0
        np.testing.assert_array_equal(np.asarray(started.arrays[p][0]), np.asarray(a))
        np.testing.assert_array_equal(np.asarray(started.arrays[p][1]), np.asarray(b))
    ids, mask = batch("right", 2, 8)
    model.config = model.config.replace(attention_dropout=0.0)  # eval: no dropout either side
    np.testing.assert_allclose(np.asarray(hidden(model, ids, mask)),
                               np.asarray(hidden(writer, ids, mask)), rtol=1e-5, atol=1e-5)
    base = load_hf_checkpoint(checkpoint)
    assert not np.allclose(np.asarray(hidden(base, ids, mask)),
                           np.asarray(hidden(writer, ids, mask)), atol=1e-3)


@pytest.mark.parametrize("lora, named", [(LoRAConfig(r=8, alpha=8), "r=8"),
                                         (LoRAConfig(r=4, alpha=16), "alpha=16"),
                                         (LoRAConfig(r=4, alpha=8, targets=("q", "v")),
                                          "targets ['q', 'v']")])
def test_an_adapter_of_another_shape_is_refused_naming_both(trained_adapter, lora, named):
    checkpoint, adapter, _ = trained_adapter
    with pytest.raises(TrainConfigError, match="init_adapter") as err:
        prepare_model(config(checkpoint, adapter, lora), checkpoint, make_mesh())
    assert named in str(err.value) and "r=4, alpha=8" in str(err.value)


def test_a_missing_adapter_names_the_file(trained_adapter, tmp_path):
    checkpoint, _, _ = trained_adapter
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        prepare_model(config(checkpoint, str(tmp_path / "nothing"), LoRAConfig(r=4, alpha=8)),
                      checkpoint, make_mesh())


def test_without_it_the_lora_is_fresh(trained_adapter):
    checkpoint, _, _ = trained_adapter
    model = prepare_model(config(checkpoint, None, LoRAConfig(r=4, alpha=8)), checkpoint,
                          make_mesh())
    assert all(not np.asarray(b).any() for _, b in get_adapter(model).arrays.values())
    assert jax.tree.leaves(get_adapter(model).arrays)
