"""Bare ``*Model`` checkpoints (no ``model.`` prefix, no LM head): what transformers'
``LlamaModel.save_pretrained`` and PyTorch llm2vec's ``LLM2Vec.save()`` write."""

import json
import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from hf_oracle import (batch, hf_hidden, hf_logits, make_hf_model, save_hf_model,
                       tiny_model_with_tokenizer)
from llm2vec_jax import LLM2Vec
from reference_oracle import needs_reference, run_reference
from llm2vec_jax.checkpoints.hf import CheckpointError, load_hf_checkpoint, save_hf_checkpoint
from llm2vec_jax.convert import main as convert_main
from llm2vec_jax.sharding import make_mesh
from llm2vec_jax.train.config import load_config
from llm2vec_jax.train.prepare import prepare_model

TOL = 1e-4


def save_bare(hf_causal_lm, directory) -> str:
    """The checkpoint ``transformers.LlamaModel`` (or ``MistralModel``) writes."""
    hf_causal_lm.model.save_pretrained(directory, safe_serialization=True)
    return str(directory)


@pytest.mark.parametrize("name", ["llama", "llama_tied", "mistral_window", "qwen2", "gemma"])
def test_bare_checkpoint_matches_hf_and_round_trips(name, tmp_path):
    hf = make_hf_model(name)
    src = save_bare(hf, tmp_path / "bare")
    assert json.load(open(os.path.join(src, "config.json")))["architectures"][0].endswith("Model")
    ours = load_hf_checkpoint(src)
    assert not ours.config.lm_head
    ids, mask = batch("left", 3, 10)
    real = mask.astype(bool)
    for causal in (True, False):
        got = np.asarray(ours(ids, mask, causal=causal))
        assert np.abs(got[real] - hf_hidden(hf, ids, mask, causal=causal)[real]).max() <= TOL

    if hf.config.tie_word_embeddings:  # tied embeddings still give logits
        got = np.asarray(ours.logits(ours(ids, mask, causal=True)))
        assert np.abs(got[real] - hf_logits(hf, ids, mask)[real]).max() <= TOL
    else:
        with pytest.raises(ValueError, match="no LM head"):
            ours.logits(ours(ids, mask))
        with pytest.raises(CheckpointError, match="cannot export as \\*ForCausalLM"):
            save_hf_checkpoint(ours, tmp_path / "causal", bare=False)

    # Export keeps the bare layout by default: the same tensors, bit-identical.
    out = save_hf_checkpoint(ours, tmp_path / "out")
    before, after = (load_file(os.path.join(d, "model.safetensors")) for d in (src, out))
    assert set(after) == set(before)
    for key, value in after.items():
        np.testing.assert_array_equal(value, before[key])
    reloaded = transformers.AutoModel.from_pretrained(out, dtype=torch.float32).eval()
    assert type(reloaded).__name__ == type(hf.model).__name__


def test_causal_lm_exports_bare_on_request(tmp_path):
    hf = make_hf_model("llama")
    src = save_hf_model(hf, tmp_path / "src")
    out = str(tmp_path / "bare")
    assert convert_main(["export", src, out, "--bare"]) == 0
    assert json.load(open(os.path.join(out, "config.json")))["architectures"] == ["LlamaModel"]
    written = load_file(os.path.join(out, "model.safetensors"))
    expected = {k.removeprefix("model."): v.numpy() for k, v in hf.state_dict().items()
                if k != "lm_head.weight"}
    assert set(written) == set(expected)
    for key, value in written.items():
        np.testing.assert_array_equal(value, expected[key])


def test_neither_layout_gets_the_mismatch_error(tmp_path):
    src = save_bare(make_hf_model("llama"), tmp_path / "bare")
    path = os.path.join(src, "model.safetensors")
    save_file({f"encoder.{k}": v for k, v in load_file(path).items()}, path)
    with pytest.raises(CheckpointError, match="checkpoint does not match config.json: missing "
                                              "tensors: lm_head.weight, model.embed_tokens"):
        load_hf_checkpoint(src)


def test_mntp_is_refused_on_a_headless_checkpoint(tmp_path):
    src = save_bare(make_hf_model("llama"), tmp_path / "bare")
    config = load_config(None, [f"model.path={src}", "run.stage=mntp"])
    with pytest.raises(ValueError, match="MNTP needs an LM head.*bare \\*Model checkpoint"):
        prepare_model(config, src, make_mesh())


@pytest.fixture(scope="module")
def causal_and_bare_dirs(tmp_path_factory, tokenizer_dir):
    """A tiny random Llama with SmolLM2's tokenizer, as *ForCausalLM and as bare LlamaModel."""
    root = tmp_path_factory.mktemp("encoders")
    causal = tiny_model_with_tokenizer(root / "causal", tokenizer_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(causal, dtype=torch.float32)
    bare = save_bare(hf, root / "bare")
    transformers.AutoTokenizer.from_pretrained(causal).save_pretrained(bare)
    return root, causal, bare


TEXTS = [["", "A man is playing a guitar."], ["Retrieve similar text:", "A dog runs."],
         ["", "Three people sit on a bench near the river."]]


def test_encoder_loads_a_bare_model_checkpoint(causal_and_bare_dirs):
    _, causal, bare = causal_and_bare_dirs
    want = LLM2Vec.from_pretrained(causal).encode(TEXTS, show_progress_bar=False)
    got = LLM2Vec.from_pretrained(bare).encode(TEXTS, show_progress_bar=False)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


_REFERENCE_SAVE = """
import json, sys
import torch
from llm2vec import LLM2Vec
src, out, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
l2v = LLM2Vec.from_pretrained(src, pooling_mode="mean", torch_dtype=torch.float32)
l2v.save(out)
print(json.dumps(l2v.encode(texts, batch_size=2, show_progress_bar=False).float().numpy().tolist()))
"""


@needs_reference
def test_encoder_loads_what_the_reference_save_writes(causal_and_bare_dirs):
    """PyTorch llm2vec 0.2.3's ``LLM2Vec.save()`` writes its bare ``LlamaBiModel``: we load
    that directory (weights, tokenizer, llm2vec_config.json) and embed as before and as it
    does. The reference starts from a checkpoint we wrote (``save_hf_checkpoint``), as is."""
    root, causal, _ = causal_and_bare_dirs
    ours = save_hf_checkpoint(load_hf_checkpoint(causal), root / "ours", tokenizer_dir=causal)
    saved = root / "reference-save"
    out = run_reference(_REFERENCE_SAVE, ours, str(saved), json.dumps(TEXTS))
    theirs = np.array(json.loads(out.strip().splitlines()[-1]), np.float32)
    assert "model.embed_tokens.weight" not in load_file(str(saved / "model.safetensors"))
    got = LLM2Vec.from_pretrained(saved).encode(TEXTS, show_progress_bar=False)
    want = LLM2Vec.from_pretrained(causal).encode(TEXTS, show_progress_bar=False)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, theirs, atol=1e-5, rtol=0)
