"""GGUF -> Hugging Face conversion (llm2vec_jax.checkpoints.gguf).

The SmolLM2 tests check the converted checkpoint against the oracle in tests/fixtures
(config + tokenizer of the correct conversion, as the PyTorch reference used them) and
against HF PyTorch (torch is test-only).
The tiny hand-written GGUFs check the tensor plumbing and the error paths in milliseconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REFERENCE, STSB_DEV, WIKI1M, WIKITEXT

import gguf

from llm2vec_jax.checkpoints.default_model import find_smollm2_gguf  # noqa: E402
from llm2vec_jax.checkpoints.gguf import (  # noqa: E402
    GGUFError,
    convert_gguf,
    permute_qk,
    unpermute_qk,
)



@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "smollm2"
    return Path(convert_gguf(find_smollm2_gguf(), out))


# ---------------------------------------------------------------------------- SmolLM2


def test_output_files(smol_dir):
    names = set(os.listdir(smol_dir))
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "generation_config.json"):
        assert f in names
    # No leftover temporary directories next to the output.
    assert [p.name for p in smol_dir.parent.iterdir()] == ["smollm2"]


def test_config_matches_oracle(smol_dir, tokenizer_dir):
    oracle = json.loads((tokenizer_dir / "config.json").read_text())
    ours = json.loads((smol_dir / "config.json").read_text())
    for key in ("model_type", "architectures", "hidden_size", "intermediate_size",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "rms_norm_eps", "rope_theta", "rope_scaling", "max_position_embeddings",
                "vocab_size", "tie_word_embeddings", "bos_token_id", "eos_token_id",
                "pad_token_id", "unk_token_id", "hidden_act", "attention_bias", "mlp_bias",
                "torch_dtype"):
        assert ours[key] == oracle[key], key


def test_tokenizer_json_matches_oracle(smol_dir, tokenizer_dir):
    oracle = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    ours = json.loads((smol_dir / "tokenizer.json").read_text())
    for key in ("normalizer", "pre_tokenizer", "decoder", "added_tokens"):
        assert ours[key] == oracle[key], key
    assert ours["model"]["vocab"] == oracle["model"]["vocab"]
    # tokenizers writes merges as pairs now, older versions as "a b" strings.
    as_str = lambda ms: [m if isinstance(m, str) else " ".join(m) for m in ms]  # noqa: E731
    assert as_str(ours["model"]["merges"]) == as_str(oracle["model"]["merges"])


def test_tokenizer_ids_match_oracle(smol_dir, tokenizer_dir):
    from transformers import AutoTokenizer

    oracle_dir = tokenizer_dir
    ours = AutoTokenizer.from_pretrained(smol_dir)
    ref = AutoTokenizer.from_pretrained(oracle_dir)

    assert ours("Hello world, it's 2024!").input_ids == [19556, 905, 28, 357, 506, 216, 34, 32, 34, 36, 17]
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id, ours.unk_token_id) == (1, 2, 2, 0)
    # No BOS is added, as in the oracle.
    assert ours("Paris").input_ids == ref("Paris").input_ids
    assert ours("Paris").input_ids[0] != ours.bos_token_id

    # Every text in the repository: STS-B, Wikipedia, WikiText, the 512 encode sentences.
    lines = STSB_DEV.read_text(encoding="utf-8").splitlines()[1:]
    sentences = [s for line in lines if line for s in line.split("\t")[2:4]]
    for path in (WIKI1M, WIKITEXT, REFERENCE / "encode_sentences_512.txt"):
        sentences += path.read_text(encoding="utf-8").splitlines()
    assert len(sentences) > 4000
    ours_ids = ours(sentences).input_ids
    ref_ids = ref(sentences).input_ids
    mismatches = [s for s, a, b in zip(sentences, ours_ids, ref_ids) if a != b]
    assert not mismatches, mismatches[:5]

    tricky = "digits 12345,  two  spaces\n\n<|im_start|>user\nhé llo 😀<|im_end|>"
    assert ours(tricky).input_ids == ref(tricky).input_ids
    assert ours.decode(ours(tricky).input_ids) == tricky


def test_chat_template(smol_dir, tokenizer_dir):
    from transformers import AutoTokenizer

    oracle_cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    ours = AutoTokenizer.from_pretrained(smol_dir)
    assert ours.chat_template == oracle_cfg["chat_template"]


def test_weights_match_transformers_gguf_loader(smol_dir):
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("accelerate") is None:
        pytest.skip("transformers' GGUF loader needs `accelerate`, which is not installed "
                    "(the permutation and greedy-generation tests cover the weights instead)")
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    path = Path(find_smollm2_gguf())
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    sd = hf.state_dict()
    ours = load_file(smol_dir / "model.safetensors")
    last = hf.config.num_hidden_layers - 1
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.weight",
                 "model.layers.0.self_attn.o_proj.weight", "model.layers.0.input_layernorm.weight",
                 "model.norm.weight", f"model.layers.{last}.mlp.down_proj.weight"):
        np.testing.assert_allclose(ours[name], sd[name].numpy(), rtol=0, atol=1e-6, err_msg=name)


def test_greedy_generation(smol_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(smol_dir)
    assert model.config.tie_word_embeddings
    enc = tok("The capital of France is", return_tensors="pt")
    assert enc.input_ids.tolist() == [[504, 3575, 282, 4649, 314]]
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, enc.input_ids.shape[1]:])
    # 16 new tokens reach "... 2018-01"; the README's full text takes 20.
    assert text.startswith(" Paris.\n\nThe answer is: 2018-01-22"), repr(text)
    assert text == " Paris.\n\nThe answer is: 2018-01-22 ", repr(text)


# ---------------------------------------------------------------------------- permutation


def test_unpermute_inverts_llama_cpp_permutation():
    rng = np.random.default_rng(0)
    for n_head, head_dim, cols in ((9, 64, 576), (3, 64, 576), (2, 4, 3)):
        w = rng.standard_normal((n_head * head_dim, cols)).astype(np.float32)
        # Written out independently of permute_qk: convert_hf_to_gguf.py's formula.
        rows = w.shape[0]
        llama_cpp = w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
        np.testing.assert_array_equal(permute_qk(w, n_head), llama_cpp)
        np.testing.assert_array_equal(unpermute_qk(llama_cpp, n_head), w)
        assert not np.array_equal(llama_cpp, w)
    # Head h of the un-permuted matrix: first half = even rows of llama.cpp's head h.
    w = np.arange(8, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(unpermute_qk(w, 1)[:, 0], [0, 2, 4, 6, 1, 3, 5, 7])


# ---------------------------------------------------------------------------- tiny GGUFs

TINY = dict(hidden=8, n_head=2, n_kv=1, head_dim=4, ffn=12, layers=2)
TINY_TOKENS = ["<unk>", "<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa", "1", "2"]
TINY_TYPES = [3, 3, 3, 1, 1, 1, 1, 1, 1, 1]
TINY_MERGES = ["a b", "Ġ a"]


def _tiny_tensors(rng, tied=True) -> dict[str, np.ndarray]:
    h, f, v = TINY["hidden"], TINY["ffn"], len(TINY_TOKENS)
    q, kv = TINY["n_head"] * TINY["head_dim"], TINY["n_kv"] * TINY["head_dim"]
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    hf = {"model.embed_tokens.weight": r(v, h), "model.norm.weight": r(h)}
    if not tied:
        hf["lm_head.weight"] = r(v, h)
    for i in range(TINY["layers"]):
        p = f"model.layers.{i}."
        hf.update({p + "input_layernorm.weight": r(h), p + "post_attention_layernorm.weight": r(h),
                   p + "self_attn.q_proj.weight": r(q, h), p + "self_attn.k_proj.weight": r(kv, h),
                   p + "self_attn.v_proj.weight": r(kv, h), p + "self_attn.o_proj.weight": r(h, q),
                   p + "mlp.gate_proj.weight": r(f, h), p + "mlp.up_proj.weight": r(f, h),
                   p + "mlp.down_proj.weight": r(h, f)})
    return hf


def _write_tiny_gguf(path: Path, hf: dict, *, arch="llama", tok_model="gpt2", pre="smollm",
                     add_bos=False) -> Path:
    """A tiny GGUF written the way llama.cpp's converter writes one (q/k rows permuted)."""
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(TINY["layers"])
    w.add_context_length(64)
    w.add_embedding_length(TINY["hidden"])
    w.add_feed_forward_length(TINY["ffn"])
    w.add_head_count(TINY["n_head"])
    w.add_head_count_kv(TINY["n_kv"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(TINY["head_dim"])
    w.add_vocab_size(len(TINY_TOKENS))
    w.add_tokenizer_model(tok_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(TINY_TOKENS)
    w.add_token_types(TINY_TYPES)
    w.add_token_merges(TINY_MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(add_bos)
    for name, a in hf.items():
        if name in top:
            w.add_tensor(top[name], a)
            continue
        _, _, i, *rest = name.split(".")
        sub = names[".".join(rest[:-1])]
        if sub == "attn_q":
            a = permute_qk(a, TINY["n_head"])
        elif sub == "attn_k":
            a = permute_qk(a, TINY["n_kv"])
        w.add_tensor(f"blk.{i}.{sub}.weight", a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_roundtrip(tmp_path, tied):
    from safetensors.numpy import load_file

    hf = _tiny_tensors(np.random.default_rng(1), tied=tied)
    src = _write_tiny_gguf(tmp_path / "tiny.gguf", hf)
    out = Path(convert_gguf(src, tmp_path / "out"))
    got = load_file(out / "model.safetensors")
    assert set(got) == set(hf)
    for k, v in hf.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is tied
    assert (cfg["num_key_value_heads"], cfg["head_dim"], cfg["vocab_size"]) == (1, 4, len(TINY_TOKENS))


def test_tiny_bfloat16_and_llama_bpe_with_bos(tmp_path):
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    ml_dtypes = pytest.importorskip("ml_dtypes")
    hf = _tiny_tensors(np.random.default_rng(2))
    src = _write_tiny_gguf(tmp_path / "tiny.gguf", hf, pre="llama-bpe", add_bos=True)
    out = convert_gguf(src, tmp_path / "out", dtype="bfloat16")
    got = load_file(Path(out) / "model.safetensors")
    w = "model.layers.1.self_attn.k_proj.weight"
    assert got[w].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got[w], hf[w].astype(ml_dtypes.bfloat16))
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("ab a").input_ids == [1, 5, 7]


def test_overwrite(tmp_path):
    hf = _tiny_tensors(np.random.default_rng(3))
    src = _write_tiny_gguf(tmp_path / "tiny.gguf", hf)
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is fine
    convert_gguf(src, out)
    (out / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="not empty"):
        convert_gguf(src, out)
    convert_gguf(src, out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.gguf"]


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    import llm2vec_jax.checkpoints.gguf.convert as mod

    src = _write_tiny_gguf(tmp_path / "tiny.gguf", _tiny_tensors(np.random.default_rng(4)))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mod, "write_tokenizer", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_gguf(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


# ---------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        convert_gguf(missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"tok_model": "llama"}, r"unsupported GGUF tokenizer model .*'llama'"),
    ({"pre": "something-unknown"}, r"unsupported GGUF pre-tokenizer .*'something-unknown'"),
    ({"arch": "gpt2"}, r"unsupported GGUF architecture 'gpt2'"),
])
def test_unsupported_input(tmp_path, kwargs, message):
    hf = _tiny_tensors(np.random.default_rng(5))
    src = _write_tiny_gguf(tmp_path / "bad.gguf", hf, **kwargs)
    with pytest.raises(GGUFError, match=message):
        convert_gguf(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]
    assert issubclass(GGUFError, ValueError)


def test_not_a_gguf(tmp_path):
    src = tmp_path / "junk.gguf"
    src.write_bytes(b"definitely not gguf" * 10)
    with pytest.raises(GGUFError, match="cannot read"):
        convert_gguf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
