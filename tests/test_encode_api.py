"""The sentence-transformers-shaped encode API: Matryoshka truncation, normalisation,
quantisation (closed forms and sentence-transformers itself as oracle), similarity functions,
prompts (an instruction in the reference's sense) saved with the encoder, and truncation
reporting. A tiny random model with SmolLM2's tokenizer keeps it fast."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from hf_oracle import tiny_model_with_tokenizer
from llm2vec_jax import embeddings as E
from llm2vec_jax.encoder import LLM2Vec, TruncationWarning

TEXTS = ["The cat sat on the mat.", "A dog barked at the mailman loudly.", "Quantum physics",
         "Paris is the capital of France.", "Bananas are yellow when ripe."]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer_dir):
    return tiny_model_with_tokenizer(tmp_path_factory.mktemp("tiny-enc") / "model", tokenizer_dir)


@pytest.fixture(scope="module")
def encoder(tiny_dir):
    return LLM2Vec.from_pretrained(tiny_dir, max_length=64,
                                   prompts={"query": "Given a question, find the answer:",
                                            "document": "Represent the passage:"})


def _encode(enc, texts, **kw):
    return enc.encode(texts, show_progress_bar=False, **kw)


# ------------------------------------------------------------------ quantisation, closed forms


def test_int8_uint8_closed_form():
    x = np.array([[0.0, -128.0, 5.0], [255.0, 127.0, 5.0], [100.5, 0.0, 5.0]], np.float32)
    # Column 0: range [0, 255], step 1; column 1: [-128, 127], step 1; column 2: an empty
    # range, step 1, every value in bucket 0. A bucket is floor((x - min) / step).
    buckets = np.array([[0, 0, 0], [255, 255, 0], [100, 128, 0]])
    np.testing.assert_array_equal(E.quantize(x, "uint8"), buckets.astype(np.uint8))
    np.testing.assert_array_equal(E.quantize(x, "int8"), (buckets - 128).astype(np.int8))
    # Fixed ranges: values outside them clip to the end buckets.
    ranges = np.array([[0.0, 0.0, 0.0], [2.55, 2.55, 2.55]], np.float32)
    np.testing.assert_array_equal(E.quantize(x, "uint8", ranges=ranges)[1], [255, 255, 255])
    np.testing.assert_array_equal(E.quantize(x, "uint8", ranges=ranges)[0], [0, 0, 255])
    np.testing.assert_array_equal(E.quantize(x[:1], "uint8", calibration=x),
                                  buckets[:1].astype(np.uint8))
    with pytest.raises(ValueError, match="at least 2 calibration embeddings"):
        E.quantize(x[:1], "int8")


def test_binary_closed_form():
    x = np.array([[1, -1, 0.5, 0, 2, -3, 1, 1, 0.1, -0.1]], np.float32)
    # Bits (x > 0): 1 0 1 0 1 0 1 1 | 1 0 (zero-padded) -> 0b10101011 = 171, 0b10000000 = 128.
    np.testing.assert_array_equal(E.quantize(x, "ubinary"), [[171, 128]])
    np.testing.assert_array_equal(E.quantize(x, "binary"), [[171 - 128, 0]])
    assert E.quantize(x, "binary").dtype == np.int8 and E.quantize(x, "ubinary").dtype == np.uint8


@pytest.mark.parametrize("precision", E.PRECISIONS)
def test_quantize_matches_sentence_transformers(precision):
    st = pytest.importorskip("sentence_transformers.util.quantization")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 37)).astype(np.float32)
    ours, theirs = E.quantize(x, precision), st.quantize_embeddings(x, precision=precision)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_bad_precision_and_truncate_dim(encoder):
    with pytest.raises(ValueError, match="precision='int4' is not supported"):
        _encode(encoder, TEXTS, precision="int4")
    for bad in (0, encoder.hidden_size + 1, 2.5):
        with pytest.raises(ValueError, match=r"truncate_dim=.* must be an int in \[1, "):
            _encode(encoder, TEXTS, truncate_dim=bad)


# ------------------------------------------------------------------ similarity


def test_similarity_functions_closed_form():
    a = np.array([[3.0, 4.0], [0.0, 0.0]])
    b = np.array([[6.0, 8.0], [1.0, 0.0]])
    np.testing.assert_allclose(E.similarity(a, b, "cosine"), [[1.0, 0.6], [0.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(E.similarity(a, b, "dot"), [[50.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(E.similarity(a, b, "euclidean"),
                               [[-5.0, -np.sqrt(20.0)], [-10.0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(E.similarity(a, b, "manhattan"), [[-7.0, -6.0], [-14.0, -1.0]])
    for fn in E.SIMILARITY_FNS:
        np.testing.assert_allclose(E.similarity_pairwise(a, b, fn),
                                   np.diag(E.similarity(a, b, fn)), atol=1e-6)
    with pytest.raises(ValueError, match="similarity_fn_name='l2'"):
        E.similarity(a, b, "l2")


@pytest.mark.parametrize("fn", E.SIMILARITY_FNS)
def test_similarity_matches_sentence_transformers(fn):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.util.similarity import SimilarityFunction

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 16)).astype(np.float32), rng.normal(size=(3, 16)).astype(np.float32)
    theirs = SimilarityFunction.to_similarity_fn(fn)(a, b).numpy()
    np.testing.assert_allclose(E.similarity(a, b, fn), theirs, rtol=1e-5, atol=1e-5)
    theirs = SimilarityFunction.to_similarity_pairwise_fn(fn)(a[:3], b).numpy()
    np.testing.assert_allclose(E.similarity_pairwise(a[:3], b, fn), theirs, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ encode options


def test_truncate_normalize_quantize_in_sentence_transformers_order(encoder):
    full = _encode(encoder, TEXTS)
    prefix = full[:, :16]
    got = _encode(encoder, TEXTS, truncate_dim=16, normalize_embeddings=True)
    np.testing.assert_allclose(got, prefix / np.linalg.norm(prefix, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    q = _encode(encoder, TEXTS, truncate_dim=16, normalize_embeddings=True, precision="int8")
    np.testing.assert_array_equal(q, E.quantize(got, "int8"))
    b = _encode(encoder, TEXTS, truncate_dim=16, precision="ubinary")
    assert b.shape == (len(TEXTS), 2)
    np.testing.assert_array_equal(np.unpackbits(b, axis=1), (prefix > 0).astype(np.uint8))


def test_convert_to_jax_and_empty_input(encoder):
    import jax

    out = _encode(encoder, TEXTS[:2], convert_to="jax")
    assert isinstance(out, jax.Array) and out.shape == (2, encoder.hidden_size)
    assert _encode(encoder, [], precision="int8", truncate_dim=8).shape == (0, 8)
    assert _encode(encoder, [], precision="binary").shape == (0, -(-encoder.hidden_size // 8))
    with pytest.raises(ValueError, match="convert_to='torch'"):
        _encode(encoder, TEXTS, convert_to="torch")


def test_prompts_are_instructions(encoder):
    instr = encoder.prompts["query"]
    as_pairs = _encode(encoder, [[instr, t] for t in TEXTS])
    np.testing.assert_array_equal(_encode(encoder, TEXTS, prompt=instr), as_pairs)
    np.testing.assert_array_equal(_encode(encoder, TEXTS, prompt_name="query"), as_pairs)
    np.testing.assert_array_equal(encoder.encode_query(TEXTS, show_progress_bar=False), as_pairs)
    doc = _encode(encoder, [[encoder.prompts["document"], t] for t in TEXTS])
    np.testing.assert_array_equal(encoder.encode_document(TEXTS, show_progress_bar=False), doc)
    # Attended but not pooled: the prompt changes the embedding, and pooling covers only the
    # text's tokens (the same count as without the prompt).
    assert not np.allclose(as_pairs, _encode(encoder, TEXTS))
    plain_rows, prompted_rows = encoder.tokenize_rows(TEXTS), encoder.tokenize_rows(
        [[instr, t] for t in TEXTS])
    assert [r.n_pooled for r in prompted_rows] == [r.n_pooled for r in plain_rows]
    # An explicit prompt wins over the named one.
    np.testing.assert_array_equal(encoder.encode_query(TEXTS, prompt="Other:",
                                                       show_progress_bar=False),
                                  _encode(encoder, [["Other:", t] for t in TEXTS]))
    with pytest.raises(ValueError, match=r"prompt_name='passage' is not one of .*'document'"):
        _encode(encoder, TEXTS, prompt_name="passage")
    with pytest.raises(ValueError, match="text #0 .* not both"):
        _encode(encoder, [["instr", "text"]], prompt="x")


def test_prompts_and_similarity_saved_beside_the_reference_config(encoder, tmp_path):
    enc = LLM2Vec(encoder.model, encoder.tokenizer, max_length=64, prompts=encoder.prompts,
                  similarity_fn_name="dot")
    out = Path(enc.save(tmp_path / "saved"))
    # llm2vec_config.json keeps the reference's four keys (its constructor rejects others).
    assert sorted(json.loads((out / "llm2vec_config.json").read_text())) == sorted(
        ["pooling_mode", "max_length", "doc_max_length", "skip_instruction"])
    again = LLM2Vec.from_pretrained(out)
    assert again.prompts == encoder.prompts and again.similarity_fn_name == "dot"
    a = _encode(again, TEXTS[:2])
    np.testing.assert_allclose(again.similarity(a, a), a @ a.T, rtol=1e-5)
    assert LLM2Vec.from_pretrained(out, similarity_fn_name="cosine").similarity_fn_name == "cosine"
    (out / "llm2vec_jax_config.json").write_text(json.dumps({"prompts": {"query": 3}}))
    with pytest.raises(ValueError, match="prompts must map names to instruction strings"):
        LLM2Vec.from_pretrained(out)


# ------------------------------------------------------------------ truncation reporting


def test_truncation_is_reported_at_the_exact_boundary(encoder):
    long_text = " ".join(f"word{i}" for i in range(40))
    whole = len(encoder.tokenizer(long_text)["input_ids"])  # the row untruncated
    texts = ["short", long_text]
    for max_length, cut in ((whole, False), (whole - 1, True)):
        enc = LLM2Vec(encoder.model, encoder.tokenizer, max_length=max_length,
                      doc_max_length=max_length)
        emb, truncated = _encode(enc, texts, return_truncated=True)
        np.testing.assert_array_equal(truncated, [False, cut])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            np.testing.assert_array_equal(_encode(enc, texts), emb)
        messages = [str(w.message) for w in caught if w.category is TruncationWarning]
        assert messages == ([f"1 of 2 texts were longer than max_length={max_length} (or "
                             f"doc_max_length={max_length}) tokens and were truncated; pass "
                             "return_truncated=True to see which"] if cut else [])


def test_doc_max_length_shortening_counts_as_truncation(encoder):
    long_text = " ".join(f"word{i}" for i in range(40))
    enc = LLM2Vec(encoder.model, encoder.tokenizer, max_length=512, doc_max_length=20)
    _, truncated = _encode(enc, ["short", long_text], return_truncated=True)
    np.testing.assert_array_equal(truncated, [False, True])
    assert len(enc.tokenize_rows([long_text])[0]) < 30  # shortened by words, not by max_length
