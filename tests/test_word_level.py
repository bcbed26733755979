"""Token and word representations: ``encode(output_value="token_embeddings")`` against HF
PyTorch hidden states, and the word aggregation / alignment rules on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import transformers
from hf_oracle import hf_hidden, tiny_model_with_tokenizer

from llm2vec_jax.encoder import LLM2Vec
from llm2vec_jax.text.words import (TokenEmbeddings, align_groups, join_words,
                                    word_embeddings, word_token_groups)

TEXTS = ["EU rejects German call to boycott British lamb.",
         "Peter Blackburn",
         "The European Commission said on Thursday it disagreed with German advice.",
         "x"]
INSTRUCTION = "Represent the sentence:"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer_dir):
    directory = tiny_model_with_tokenizer(tmp_path_factory.mktemp("tiny") / "hf", tokenizer_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
    return directory, hf, transformers.AutoTokenizer.from_pretrained(directory)


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("instruction", ["", INSTRUCTION])
def test_token_embeddings_are_hf_hidden_states(tiny, packing, bidirectional, instruction):
    directory, hf, tokenizer = tiny
    enc = LLM2Vec.from_pretrained(directory, bidirectional=bidirectional, packing=packing)
    inputs = [[instruction, t] for t in TEXTS] if instruction else TEXTS
    got = enc.encode(inputs, batch_size=2, show_progress_bar=False,
                     output_value="token_embeddings")
    assert len(got) == len(TEXTS)
    for text, tokens in zip(TEXTS, got):
        full = f"{instruction} {text}" if instruction else text
        ids = tokenizer(full)["input_ids"]
        n_text = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        want = hf_hidden(hf, np.array([ids]), np.ones((1, len(ids)), np.int32),
                         causal=not bidirectional)[0, len(ids) - n_text:]
        assert tokens.embeddings.shape == want.shape and tokens.embeddings.dtype == np.float32
        np.testing.assert_allclose(tokens.embeddings, want, atol=2e-4, rtol=2e-4)
        assert list(tokens.token_ids) == ids[len(ids) - n_text:]
        # The offsets tile the text (SmolLM2's byte-level tokens keep their leading space).
        assert "".join(text[a:b] for a, b in tokens.offsets) == text


def test_bfloat16_token_embeddings_follow_float32(tiny):
    f32, bf16 = (LLM2Vec.from_pretrained(tiny[0], dtype=d).encode(
        TEXTS, show_progress_bar=False, output_value="token_embeddings")
        for d in ("float32", "bfloat16"))
    for a, b in zip(f32, bf16):
        assert b.embeddings.dtype == np.float32 and a.embeddings.shape == b.embeddings.shape
        cos = (a.embeddings * b.embeddings).sum(1) / (np.linalg.norm(a.embeddings, axis=1)
                                                      * np.linalg.norm(b.embeddings, axis=1))
        assert cos.min() > 0.99, cos


def test_empty_text_has_no_tokens(tiny):
    enc = LLM2Vec.from_pretrained(tiny[0])
    got = enc.encode(["", "EU"], show_progress_bar=False, output_value="token_embeddings")
    assert got[0].embeddings.shape == (0, enc.hidden_size) and len(got[0]) == 0
    assert len(got[1]) == 1


def test_unknown_output_value(tiny):
    with pytest.raises(ValueError, match="output_value"):
        LLM2Vec.from_pretrained(tiny[0]).encode(["a"], output_value="tokens")


def test_encode_words_single_token_words(tiny):
    """Words of one token each: a word's vector is its token's HF state (same_token) or the
    previous token's (next_token; the first word has none, SmolLM2 adds no BOS)."""
    directory, hf, tokenizer = tiny
    words = ["The", "cat", "sat"]  # SmolLM2: "The", "Ġcat", "Ġsat" once joined
    ids = tokenizer(" ".join(words))["input_ids"]
    assert len(ids) == 3
    want = hf_hidden(hf, np.array([ids]), np.ones((1, 3), np.int32), causal=False)[0]
    enc = LLM2Vec.from_pretrained(directory, bidirectional=True)
    same, nxt = (enc.encode_words([words], alignment=a, show_progress_bar=False)[0]
                 for a in ("same_token", "next_token"))
    np.testing.assert_allclose(same.embeddings, want, atol=2e-4, rtol=2e-4)
    assert same.valid.all()
    assert list(nxt.valid) == [False, True, True]
    np.testing.assert_allclose(nxt.embeddings[1:], want[:2], atol=2e-4, rtol=2e-4)
    assert not nxt.embeddings[0].any()


# ------------------------------------------------------------------ hand-computed rules


def _tokens(offsets):
    n = len(offsets)
    emb = np.stack([np.arange(n), 10 * np.arange(n)], 1).astype(np.float32)  # token i: (i, 10i)
    return TokenEmbeddings(emb, np.asarray(offsets, np.int64), np.arange(n))


def test_join_words():
    text, spans = join_words(["EU", "rejects", "U.S."])
    assert text == "EU rejects U.S."
    assert spans.tolist() == [[0, 2], [3, 10], [11, 15]]
    with pytest.raises(TypeError, match="list of str"):
        join_words("EU rejects")


# "EU rejects U.S." as tokens EU | " rej" | "ects" | " U" | "." | "S" | "."
PLAIN = [(0, 2), (2, 6), (6, 10), (10, 12), (12, 13), (13, 14), (14, 15)]
# the same with a BOS first and a whitespace-only token before "U.S." (" " then "U")
WITH_BOS = [(0, 0), (0, 2), (2, 6), (6, 10), (10, 11), (11, 12), (12, 13), (13, 14), (14, 15)]


@pytest.mark.parametrize("offsets, alignment, aggregation, want, valid", [
    # groups: EU [0], rejects [1, 2], U.S. [3, 4, 5, 6]
    (PLAIN, "same_token", "first", [0, 1, 3], [1, 1, 1]),
    (PLAIN, "same_token", "mean", [0, 1.5, 4.5], [1, 1, 1]),
    (PLAIN, "same_token", "last", [0, 2, 6], [1, 1, 1]),
    # shifted left: EU has no token before it; rejects [0, 1]; U.S. [2, 3, 4, 5]
    (PLAIN, "next_token", "first", [0, 0, 2], [0, 1, 1]),
    (PLAIN, "next_token", "mean", [0, 0.5, 3.5], [0, 1, 1]),
    (PLAIN, "next_token", "last", [0, 1, 5], [0, 1, 1]),
    # previous word: rejects <- EU [0]; U.S. <- rejects [1, 2]
    (PLAIN, "next_word", "mean", [0, 0, 1.5], [0, 1, 1]),
    (PLAIN, "next_word", "last", [0, 0, 2], [0, 1, 1]),
    # BOS (token 0) and the lone space (token 4) belong to no word: EU [1], rejects [2, 3],
    # U.S. [5, 6, 7, 8]
    (WITH_BOS, "same_token", "mean", [1, 2.5, 6.5], [1, 1, 1]),
    # next_token: EU <- BOS [0]; rejects [1, 2]; U.S. [4, 5, 6, 7] (the space state first)
    (WITH_BOS, "next_token", "first", [0, 1, 4], [1, 1, 1]),
    (WITH_BOS, "next_token", "mean", [0, 1.5, 5.5], [1, 1, 1]),
    (WITH_BOS, "next_word", "first", [0, 1, 2], [0, 1, 1]),
])
def test_aggregation_and_alignment(offsets, alignment, aggregation, want, valid):
    _, spans = join_words(["EU", "rejects", "U.S."])
    got = word_embeddings(_tokens(offsets), spans, aggregation=aggregation, alignment=alignment)
    assert got.valid.tolist() == [bool(v) for v in valid]
    want = np.where(np.asarray(valid, bool), np.asarray(want, np.float32), 0.0)
    np.testing.assert_array_equal(got.embeddings, np.stack([want, 10 * want], 1))


def test_a_word_without_tokens_and_a_token_over_two_words():
    # "ab c" tokenized as one token over "ab c" (0, 4): it belongs to the first word, "c" has
    # none; truncation (no token for the last word) reads the same.
    _, spans = join_words(["ab", "c", "d"])
    groups = word_token_groups(spans, np.array([[0, 4]]))
    assert [g.tolist() for g in groups] == [[0], [], []]
    assert [g.tolist() for g in align_groups(groups, "next_word")] == [[], [0], []]
    with pytest.raises(ValueError, match="alignment"):
        align_groups(groups, "previous_token")


_FOUR_DEVICES = """
import json, sys
import jax
from llm2vec_jax.encoder import LLM2Vec
enc = LLM2Vec.from_pretrained(sys.argv[1], bidirectional=True)
got = enc.encode(json.loads(sys.argv[2]), batch_size=2, show_progress_bar=False,
                 output_value="token_embeddings")
print(json.dumps({"devices": len(enc.devices), "rows": sorted({k[0] for k in enc._compiled}),
                  "states": [t.embeddings.tolist() for t in got]}))
"""


def test_token_embeddings_on_four_devices(tiny):
    """Rows sharded over 4 host devices (batches padded to a multiple of 4) give the
    one-device token states."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES, tiny[0], json.dumps(TEXTS)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["rows"] == [4]
    want = LLM2Vec.from_pretrained(tiny[0], bidirectional=True).encode(
        TEXTS, batch_size=2, show_progress_bar=False, output_value="token_embeddings")
    for states, w in zip(result["states"], want):
        np.testing.assert_allclose(np.asarray(states, np.float32), w.embeddings, atol=1e-4)
