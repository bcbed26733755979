"""HF checkpoint import/export: round trips through transformers, sharded files, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from hf_oracle import batch, hf_logits, make_hf_model, save_hf_model
from llm2vec_jax.checkpoints import hf as hf_ckpt
from llm2vec_jax.checkpoints.hf import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from llm2vec_jax.convert import main as convert_main
from llm2vec_jax.models import ConfigError


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    model = make_hf_model("gqa_kv4_bias")
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf"))


def reload_logits(directory, ids, mask):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    return hf_logits(model.eval(), ids, mask)


@pytest.mark.parametrize("name", ["llama", "llama_tied", "llama3_rope", "gqa_kv4_bias",
                                  "mistral_window", "qwen2", "qwen3_tied", "gemma", "gemma2",
                                  "gemma3"])
def test_round_trip_through_transformers(name, tmp_path):
    hf = make_hf_model(name)
    src = save_hf_model(hf, tmp_path / "src")
    ours = load_hf_checkpoint(src)
    out = save_hf_checkpoint(ours, tmp_path / "out")
    ids, mask = batch("right", 2, 12)
    real = mask.astype(bool)  # pad rows are meaningless (fully masked under Mistral's window)
    np.testing.assert_allclose(reload_logits(out, ids, mask)[real], hf_logits(hf, ids, mask)[real],
                               atol=1e-5, rtol=0)
    # The tensors themselves come back bit-identical.
    before, after = load_file(os.path.join(src, "model.safetensors")), \
        load_file(os.path.join(out, "model.safetensors"))
    for key, value in after.items():
        np.testing.assert_array_equal(value, before[key])
    assert set(after) == set(before) - ({"lm_head.weight"} if hf.config.tie_word_embeddings else set())


def test_sharded_export_and_import(hf_dir, tmp_path):
    hf, src = hf_dir
    ours = load_hf_checkpoint(src)
    out = save_hf_checkpoint(ours, tmp_path / "sharded", max_shard_bytes=60_000)
    index = json.load(open(os.path.join(out, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 2
    again = load_hf_checkpoint(out)
    ids, mask = batch("left", 2, 8)
    np.testing.assert_array_equal(np.asarray(again(ids, mask)), np.asarray(ours(ids, mask)))


def test_cli_export(hf_dir, tmp_path):
    hf, src = hf_dir
    out = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "llm2vec_jax.convert", "export", src, str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ids, mask = batch("none", 2, 8)
    np.testing.assert_allclose(reload_logits(out, ids, mask), hf_logits(hf, ids, mask), atol=1e-5)
    # Refuses to overwrite a non-empty directory without --overwrite: an input error, so exit
    # 2 like every CLI's (llm2vec_jax/cli_errors.py); test_convert_bad_input checks the line.
    assert convert_main(["export", src, str(out)]) == 2
    assert convert_main(["export", src, str(out), "--overwrite"]) == 0


def convert_cli(*args):
    return subprocess.run([sys.executable, "-m", "llm2vec_jax.convert", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["missing model dir", "truncated safetensors",
                                  "non-empty output"])
def test_convert_bad_input_is_one_line_and_exit_2(hf_dir, tmp_path, case):
    src = hf_dir[1]
    if case == "missing model dir":
        args = ["export", tmp_path / "nope", tmp_path / "out"]
        expected = (f"file error: checkpoint directory '{tmp_path / 'nope'}' does not exist (nor "
                    "is it a hub id like 'meta-llama/Llama-3.1-8B')")
    elif case == "truncated safetensors":
        d = copy_checkpoint(src, tmp_path / "truncated")
        weights = os.path.join(d, "model.safetensors")
        size = os.path.getsize(weights)
        os.truncate(weights, size // 2)
        args = ["export", d, tmp_path / "out"]
        expected = (f"model error: cannot read safetensors file '{weights}' (corrupt or "
                    f"truncated?): '{weights}' is truncated: its header describes {size} bytes, "
                    f"the file has {size // 2}; download (or copy) it again")
    else:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "keep.txt").write_text("mine")
        args = ["export", src, tmp_path / "out"]
        expected = (f"file error: '{tmp_path / 'out'}' exists and is not empty; pass "
                    "overwrite=True (or --overwrite) to replace it")
    done = convert_cli(*args)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [expected]
    assert done.stdout == ""
    if case == "non-empty output":  # nothing of the refused directory is touched
        assert os.listdir(tmp_path / "out") == ["keep.txt"]
    else:
        assert not (tmp_path / "out").exists()


def test_convert_debug_keeps_the_traceback(tmp_path):
    done = convert_cli("export", tmp_path / "nope", tmp_path / "out", "--debug")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"FileNotFoundError: checkpoint directory '{tmp_path / 'nope'}' does not exist (nor is "
        "it a hub id like 'meta-llama/Llama-3.1-8B')")


def test_bfloat16_load(hf_dir):
    hf, src = hf_dir
    ours = load_hf_checkpoint(src, dtype="bfloat16")
    assert ours.layers.q[...].dtype == np.dtype("bfloat16")
    ids, mask = batch("right", 2, 8)
    got = np.asarray(ours(ids, mask).astype(np.float32))
    ref = load_hf_checkpoint(src)(ids, mask)
    real = mask.astype(bool)
    # bf16 has 8 mantissa bits: hidden states of scale ~3 agree to a few percent.
    assert np.abs(got[real] - np.asarray(ref)[real]).max() < 0.1


def test_bfloat16_checkpoint_as_hub_models_ship(tmp_path):
    """Real Llama/Mistral checkpoints are stored in BF16 (which safetensors' numpy reader
    cannot return): the weights load exactly, and the model equals HF on the same weights."""
    hf = make_hf_model("llama").to(torch.bfloat16)
    src = save_hf_model(hf, tmp_path / "bf16")
    ours = load_hf_checkpoint(src)  # float32 parameters: bf16 values are exact in float32
    assert ours.layers.q[...].dtype == np.float32
    ids, mask = batch("left", 2, 10)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(ours.logits(ours(ids, mask)))[real],
                               hf_logits(hf.to(torch.float32), ids, mask)[real], atol=1e-5, rtol=0)
    again = save_hf_checkpoint(load_hf_checkpoint(src, dtype="bfloat16"), tmp_path / "out")
    reloaded = load_file(os.path.join(again, "model.safetensors"))
    before = {k: v.float().numpy() for k, v in hf.state_dict().items()}
    for key, value in reloaded.items():
        assert value.dtype == np.dtype("bfloat16"), key
        np.testing.assert_array_equal(value.astype(np.float32), before[key])


# -- bad input: one clear message each, nothing half-written ---------------------------------

def copy_checkpoint(src, dst):
    os.makedirs(dst)
    for name in os.listdir(src):
        with open(os.path.join(src, name), "rb") as f, open(os.path.join(dst, name), "wb") as g:
            g.write(f.read())
    return str(dst)


def test_unknown_model_type(hf_dir, tmp_path):
    d = copy_checkpoint(hf_dir[1], tmp_path / "c")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["model_type"] = "gpt2"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ConfigError, match=r"model_type='gpt2' is not supported; supported: llama, mistral"):
        load_hf_checkpoint(d)


@pytest.mark.parametrize("model_type,field,value,match", [
    ("qwen2", "use_sliding_window", True,
     r"use_sliding_window=true .* not supported for qwen2; supported: false"),
    ("qwen3", "hidden_act", "gelu", r"hidden_act='gelu' is not supported; qwen3 uses 'silu'"),
    ("gemma", "hidden_act", "silu",
     r"hidden_act='silu' is not supported; gemma uses 'gelu_pytorch_tanh'"),
    ("gemma3_text", "use_bidirectional_attention", True,
     r"use_bidirectional_attention=true .* not supported; supported: false"),
    ("llama", "attn_logit_softcapping", 50.0,
     r"attn_logit_softcapping=50.0 is not supported for llama: .*supported: absent or null"),
    ("mistral", "num_local_experts", 8, r"num_local_experts=8 is not supported for mistral"),
    ("llama", "rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
     r"rope_type='yarn' is not supported; supported: default, linear, llama3"),
])
def test_unsupported_family_features_are_named(hf_dir, tmp_path, model_type, field, value, match):
    d = copy_checkpoint(hf_dir[1], tmp_path / "c")
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg.update({"model_type": model_type, field: value})
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(ConfigError, match=match):
        load_hf_checkpoint(d)


def test_missing_config(hf_dir, tmp_path):
    d = copy_checkpoint(hf_dir[1], tmp_path / "c")
    os.remove(os.path.join(d, "config.json"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_checkpoint(d)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_hf_checkpoint(str(tmp_path / "nope" / "deeper" / "x"))


def test_truncated_safetensors(hf_dir, tmp_path):
    d = copy_checkpoint(hf_dir[1], tmp_path / "c")
    path = os.path.join(d, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_hf_checkpoint(d)


def test_missing_and_misshaped_tensors(hf_dir, tmp_path):
    d = copy_checkpoint(hf_dir[1], tmp_path / "c")
    path = os.path.join(d, "model.safetensors")
    tensors = load_file(path)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((3, 64), np.float32)
    save_file(tensors, path)
    with pytest.raises(CheckpointError) as err:
        load_hf_checkpoint(d)
    message = str(err.value)
    assert "missing tensors: model.layers.1.mlp.up_proj.weight" in message
    assert "model.layers.0.self_attn.k_proj.weight has shape [3, 64], expected [64, 64]" in message


def test_unexpected_tensor(hf_dir, tmp_path):
    d = copy_checkpoint(hf_dir[1], tmp_path / "c")
    path = os.path.join(d, "model.safetensors")
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.extra.weight"] = np.zeros((2,), np.float32)
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match="unexpected tensors: model.layers.0.self_attn.extra.weight"):
        load_hf_checkpoint(d)


def test_failed_export_leaves_nothing(hf_dir, tmp_path, monkeypatch):
    ours = load_hf_checkpoint(hf_dir[1])
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_file(*args, **kwargs)

    monkeypatch.setattr(hf_ckpt, "save_file", failing_save)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        save_hf_checkpoint(ours, out, max_shard_bytes=60_000)
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no temporary directory left behind either


def test_old_import_path_still_works_with_a_warning():
    """The model package knows nothing of files, but the README's old spelling still loads."""
    import llm2vec_jax
    import llm2vec_jax.models as models
    with pytest.warns(DeprecationWarning, match="import load_hf_checkpoint from llm2vec_jax"):
        assert models.load_hf_checkpoint is llm2vec_jax.load_hf_checkpoint
