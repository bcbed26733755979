"""PEFT adapter files: ours load into HF + peft and match, peft's load into ours and match."""

import json
import os

import jax
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from hf_oracle import batch, make_hf_model, random_normal, save_hf_model
from llm2vec_jax.checkpoints.peft import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, PeftFormatError,
                                          load_peft_adapter, save_peft_adapter)
from llm2vec_jax.lora import (LORA_FILTER, LoRAConfig, LoRAError, attach_lora,
                              get_adapter, remove_lora)
from llm2vec_jax import load_hf_checkpoint

TOL = 1e-4
SEQ = 8


@nnx.jit(static_argnames="causal")
def run(model, ids, mask, causal=True):
    return model(ids, mask, causal=causal)


@pytest.fixture(scope="module", params=["llama", "gqa_kv4_bias"])
def checkpoint(request, tmp_path_factory):
    hf = make_hf_model(request.param)
    return save_hf_model(hf, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def base(checkpoint):
    return load_hf_checkpoint(checkpoint)


@pytest.fixture
def ours(base):
    return nnx.clone(base)


def hf_base(checkpoint):
    return transformers.AutoModel.from_pretrained(checkpoint, attn_implementation="eager").eval()


def torch_hidden(model, ids, mask, causal) -> np.ndarray:
    """Last hidden states of a (PEFT-wrapped) bare LlamaModel; bidirectional via a 4-D mask."""
    mask_t = torch.tensor(mask, dtype=torch.long)
    if not causal:
        additive = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])
        mask_t = additive.masked_fill_(mask_t[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=mask_t)
    return out.last_hidden_state.float().numpy()


def err_on_tokens(ours, ref, mask):
    real = mask.astype(bool)
    return float(np.abs(np.asarray(ours)[real] - ref[real]).max())


def randomize(model, seed=1, std=0.05):
    key = jax.random.key(seed)
    for i, name in enumerate(sorted(nnx.to_pure_dict(nnx.state(model, LORA_FILTER))["layers"])):
        var = getattr(model.layers, name)
        var.set_value(std * random_normal(jax.random.fold_in(key, i), var.shape))


def test_our_adapter_loads_into_peft(checkpoint, ours, tmp_path):
    attach_lora(ours, LoRAConfig(r=4, alpha=8, dropout=0.1))
    randomize(ours)
    out = save_peft_adapter(ours, tmp_path / "adapter", base_model_name_or_path=checkpoint)
    assert sorted(os.listdir(out)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    with open(os.path.join(out, ADAPTER_CONFIG)) as f:
        config = json.load(f)
    assert config["peft_type"] == "LORA" and config["task_type"] is None
    assert (config["r"], config["lora_alpha"], config["lora_dropout"], config["bias"]) == (4, 8, 0.1, "none")
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                             "up_proj", "down_proj"}
    tensors = load_file(os.path.join(out, ADAPTER_WEIGHTS))
    assert len(tensors) == 2 * 7 * ours.config.num_layers
    assert tensors["base_model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert tensors["base_model.model.layers.1.self_attn.o_proj.lora_A.weight"].shape == (4, 64)
    assert tensors["base_model.model.layers.1.mlp.gate_proj.lora_B.weight"].shape == (96, 4)
    assert tensors["base_model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (4, 96)

    hf = peft.PeftModel.from_pretrained(hf_base(checkpoint), out).eval()
    # peft really applied every adapter (it warns, not fails, on unused keys).
    loaded = {n for n, _ in hf.named_parameters() if "lora_" in n}
    assert len(loaded) == len(tensors)
    ids, mask = batch("right", 3, SEQ)
    for causal in (True, False):
        ref = torch_hidden(hf, ids, mask, causal)
        assert err_on_tokens(run(ours, ids, mask, causal=causal), ref, mask) <= TOL
    # And the adapter matters: without it the outputs differ.
    with hf.disable_adapter():
        plain = torch_hidden(hf, ids, mask, True)
    assert err_on_tokens(run(ours, ids, mask), plain, mask) > 1e-3


@pytest.mark.parametrize("head", ["bare", "causal_lm"])
def test_peft_adapter_loads_into_ours(checkpoint, ours, tmp_path, head):
    torch.manual_seed(0)
    if head == "bare":
        hf = hf_base(checkpoint)
    else:
        hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoint,
                                                               attn_implementation="eager")
    targets = ["q_proj", "v_proj", "o_proj", "down_proj"]
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=targets))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(0.05 * torch.randn_like(p))
    pm.save_pretrained(tmp_path / "adapter")
    pm.eval()
    keys = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)
    prefix = "base_model.model." + ("model." if head == "causal_lm" else "")
    assert all(k.startswith(prefix + "layers.") for k in keys)

    config = load_peft_adapter(ours, tmp_path / "adapter")
    assert config == LoRAConfig(r=4, alpha=16, dropout=0.1, targets=("q", "v", "o", "down"))
    assert ours.lora_config == config
    ids, mask = batch("left", 3, SEQ)
    ref = torch_hidden(pm if head == "bare" else pm.base_model.model.model, ids, mask, True)
    assert err_on_tokens(run(ours, ids, mask), ref, mask) <= TOL

    # Saving what we loaded reproduces peft's tensors (keys as on the bare model).
    save_peft_adapter(ours, tmp_path / "again")
    again = load_file(tmp_path / "again" / ADAPTER_WEIGHTS)
    assert set(again) == {k.replace(prefix, "base_model.model.") for k in keys}
    for k, v in keys.items():
        np.testing.assert_array_equal(again[k.replace(prefix, "base_model.model.")], v)


# -- errors and file handling -----------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_adapter(base, tmp_path_factory):
    model = nnx.clone(base)
    attach_lora(model, LoRAConfig(r=2, alpha=4, targets=("q", "up")))
    return save_peft_adapter(model, tmp_path_factory.mktemp("adapter") / "a")


def _edited_copy(src, dst, config_edit=None, tensor_edit=None):
    os.makedirs(dst)
    with open(os.path.join(src, ADAPTER_CONFIG)) as f:
        config = json.load(f)
    tensors = load_file(os.path.join(src, ADAPTER_WEIGHTS))
    if config_edit:
        config_edit(config)
    if tensor_edit:
        tensor_edit(tensors)
    with open(os.path.join(dst, ADAPTER_CONFIG), "w") as f:
        json.dump(config, f)
    save_file(tensors, os.path.join(dst, ADAPTER_WEIGHTS))
    return dst


Q_A0 = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"


@pytest.mark.parametrize("config_edit,tensor_edit,match", [
    (lambda c: c.update(bias="all"), None, "bias='all'"),
    (lambda c: c.update(use_dora=True), None, "use_dora=True"),
    (lambda c: c.update(rank_pattern={"q_proj": 8}), None, "rank_pattern"),
    (lambda c: c.update(init_lora_weights="pissa"), None, "modifies the base weights"),
    (lambda c: c.update(peft_type="IA3"), None, "only LORA"),
    (lambda c: c.update(target_modules=["q_proj", "lm_head"]), None, "lm_head"),
    (lambda c: c.update(target_modules=["q_proj", "up_proj", "k_proj"]), None, "but tensors"),
    (lambda c: c.update(r=3), None, "expected \\[3, 64\\]"),
    (None, lambda t: t.pop(Q_A0), "missing.*layers.0.self_attn.q_proj.lora_A"),
    (None, lambda t: t.update({Q_A0: np.zeros((2, 63), np.float32)}), "has shape \\[2, 63\\]"),
    (None, lambda t: t.update({"base_model.model.lm_head.lora_A.weight": np.zeros((2, 64), np.float32)}),
     "unexpected.*lm_head"),
    (None, lambda t: t.clear() or t.update(x=np.zeros(1, np.float32)), "no LoRA tensors"),
], ids=["bias", "dora", "rank_pattern", "pissa", "ia3", "lm_head_target", "target_mismatch",
        "wrong_r", "missing_key", "bad_shape", "unexpected_key", "empty"])
def test_load_rejects(ours, saved_adapter, tmp_path, config_edit, tensor_edit, match):
    bad = _edited_copy(saved_adapter, tmp_path / "bad", config_edit, tensor_edit)
    with pytest.raises(PeftFormatError, match=match):
        load_peft_adapter(ours, bad)
    assert get_adapter(ours) is None  # nothing half-attached


def test_load_refuses_attached_and_missing_files(ours, saved_adapter, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_peft_adapter(ours, tmp_path)
    load_peft_adapter(ours, saved_adapter)
    with pytest.raises(LoRAError, match="already has a LoRA adapter"):
        load_peft_adapter(ours, saved_adapter)
    remove_lora(ours)
    with pytest.raises(LoRAError, match="no LoRA adapter"):
        save_peft_adapter(ours, tmp_path / "x")


def test_save_into_existing_dir_keeps_other_files(ours, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "tokenizer.json").write_text("{}")
    attach_lora(ours, LoRAConfig(r=2, targets="q_proj"))
    save_peft_adapter(ours, out)
    save_peft_adapter(ours, out)  # overwrite in place
    assert sorted(os.listdir(out)) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "tokenizer.json"]
    with open(out / ADAPTER_CONFIG) as f:
        assert json.load(f)["target_modules"] == ["q_proj"]
