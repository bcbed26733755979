"""Tokenization, pooling and bucketing against the PyTorch llm2vec 0.2.3 fixtures (no model)."""

import json

import numpy as np
import pytest
from conftest import REFERENCE

from llm2vec_jax.models import pooling
from llm2vec_jax.text import packing, reference
from llm2vec_jax.text import tokenize as tk


def features(tokenizer, texts, *, padding_side="right", pad_to=None, **kw):
    """The padded features ``LLM2Vec.tokenize`` builds: rows, then one batch."""
    return tk.collate(tk.tokenize_rows(tokenizer, texts, **kw), pad_id=tk.pad_token_id(tokenizer),
                      padding_side=padding_side, pad_to=pad_to)

POOLED_MODES_IN_FIXTURES = ("mean", "weighted_mean", "eos_token", "last_token")


@pytest.fixture(scope="module")
def fx():
    return np.load(REFERENCE / "reference_fixtures.npz")


@pytest.fixture(scope="module")
def meta():
    return json.loads((REFERENCE / "reference_fixtures.json").read_text())


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def bos_tok(tokenizer_dir):
    """The SmolLM2 tokenizer, changed to prepend <|im_start|> as BOS (like Llama's <s>)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    t.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", unk_token="<|endoftext|>")


def _inputs(meta, kind):
    if kind == "plain":
        return list(meta["texts"])
    return [[meta["instruction"], t] for t in meta["texts"]]


def _left_to_right(x, attention_mask):
    """Move each left-padded row's real tokens to the front (works for [B,S] and [B,S,D])."""
    out = np.zeros_like(x)
    for i, m in enumerate(attention_mask):
        n = int(m.sum())
        out[i, :n] = x[i, x.shape[1] - n:]
        if x.ndim == 3:
            out[i, n:] = x[i, :x.shape[1] - n][::-1]  # keep pads non-zero: must not matter
    return out


def _assert_rows_close(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() >= 0.99999, cos
    assert np.abs(got - want).max(axis=1).max() <= 1e-3


# --------------------------------------------------------------------------- tokenization


@pytest.mark.parametrize("kind", ["plain", "instr"])
def test_strings_match_reference(tok, meta, kind):
    got = reference.build_strings(tok, _inputs(meta, kind), max_length=512, doc_max_length=400)
    assert got == meta[f"converted_strings_{kind}"]


@pytest.mark.parametrize("kind", ["plain", "instr"])
def test_tokenize_left_matches_reference_bit_for_bit(tok, fx, meta, kind):
    f = features(tok, _inputs(meta, kind), max_length=512, doc_max_length=400,
                     skip_instruction=True, padding_side="left")
    for key in ("input_ids", "attention_mask", "embed_mask"):
        assert f[key].dtype == np.int32
        np.testing.assert_array_equal(f[key], fx[f"feat/{kind}/{key}"], err_msg=key)


@pytest.mark.parametrize("kind", ["plain", "instr"])
def test_right_padding_same_row_content(tok, meta, kind):
    kw = dict(max_length=512, doc_max_length=400, skip_instruction=True)
    left = features(tok, _inputs(meta, kind), padding_side="left", **kw)
    right = features(tok, _inputs(meta, kind), padding_side="right", **kw)
    for i in range(len(meta["texts"])):
        lm, rm = left["attention_mask"][i] > 0, right["attention_mask"][i] > 0
        assert lm.sum() == rm.sum()
        for key in ("input_ids", "embed_mask"):
            np.testing.assert_array_equal(left[key][i][lm], right[key][i][rm])
        assert (right["input_ids"][i][~rm] == tok.eos_token_id).all()
        assert rm[: rm.sum()].all()  # real tokens first


def test_fixture_hidden_inputs_are_the_plain_features(fx):
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(fx[f"hidden/{key}"], fx[f"feat/plain/{key}"])


def test_instruction_tokens_attended_not_pooled(tok, fx, meta):
    f = features(tok, _inputs(meta, "instr"), max_length=512, doc_max_length=400,
                     padding_side="right")
    n_instr = len(tok(meta["instruction"], add_special_tokens=False)["input_ids"])
    for i in range(len(meta["texts"])):
        assert f["attention_mask"][i, :n_instr].all()
        assert not f["embed_mask"][i, :n_instr].any()
    # skip_instruction=False pools everything attended
    g = features(tok, _inputs(meta, "instr"), max_length=512, doc_max_length=400,
                     skip_instruction=False)
    np.testing.assert_array_equal(g["embed_mask"], g["attention_mask"])


def test_eos_token_mode_appends_literal_eos_text(tok, meta):
    # Reference quirk: Llama-config models get " </s>" as *text*; SmolLM2 tokenizes it as 3
    # ordinary tokens, which are part of the pooled text.
    suffix = tok(" </s>", add_special_tokens=False)["input_ids"]
    assert len(suffix) == 3
    plain = features(tok, meta["texts"], max_length=512, doc_max_length=400,
                         padding_side="left")
    eos = features(tok, meta["texts"], max_length=512, doc_max_length=400,
                       padding_side="left", pooling_mode="eos_token", model_type="llama")
    np.testing.assert_array_equal(eos["input_ids"][:, -3:], np.tile(suffix, (4, 1)))
    np.testing.assert_array_equal(eos["input_ids"][:, :-3], plain["input_ids"])
    np.testing.assert_array_equal(eos["embed_mask"].sum(1), plain["embed_mask"].sum(1) + 3)
    # Without a model type (or for other pooling modes) nothing is appended.
    same = features(tok, meta["texts"], max_length=512, doc_max_length=400,
                        padding_side="left", pooling_mode="eos_token")
    np.testing.assert_array_equal(same["input_ids"], plain["input_ids"])


def test_prepare_for_tokenization_wrappers():
    p = reference.prepare_for_tokenization
    assert p(" x ", pooling_mode="eos_token", model_type="mistral") == "x </s>"
    assert p("x", pooling_mode="eos_token", model_type="qwen2") == "x<|endoftext|>"
    assert p("x", pooling_mode="mean", model_type="llama") == "x"
    assert p(" x", name_or_path="meta-llama/Llama-2-7b-chat-hf") == "[INST] x [/INST]"
    assert (p("x", pooling_mode="eos_token", model_type="llama",
              name_or_path="meta-llama/Meta-Llama-3-8B-Instruct")
            == "<|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>")
    assert (p("x ", pooling_mode="eos_token", model_type="llama",
              name_or_path="meta-llama/Meta-Llama-3-8B") == "x<|end_of_text|>")


def test_join_instruction_quirks():
    assert reference.join_instruction("", "t") == reference.SEPARATOR + "t"
    assert reference.join_instruction("  Do it:  ", "t") == "Do it: " + reference.SEPARATOR + "t"
    # whitespace-only instruction is truthy in the reference -> leading space survives
    assert reference.join_instruction("   ", "t") == " " + reference.SEPARATOR + "t"


def test_normalize_inputs():
    assert reference.normalize_inputs("a") == [("", "a")]
    assert reference.normalize_inputs(["a", ("i", "b"), ["i", "c", 7]]) == [
        ("", "a"), ("i", "b"), ("i", "c")]
    with pytest.raises(TypeError, match="#1"):
        reference.normalize_inputs(["a", ["only-one"]])


class WordTokenizer:
    """One token per whitespace word; mimics the HF call signature used by encode.py."""

    eos_token_id = 0
    bos_token_id = None

    def __call__(self, texts, add_special_tokens=True, truncation=False, max_length=None):
        single = isinstance(texts, str)
        out = []
        for t in [texts] if single else texts:
            ids = [len(w) + 1 for w in t.split()]
            if truncation and max_length is not None:
                ids = ids[:max_length]
            out.append(ids)
        return {"input_ids": out[0] if single else out}


def test_doc_max_length_by_whole_words_with_capped_measure():
    text = " ".join(f"w{i}" for i in range(30))
    calls = []
    tok = WordTokenizer()
    orig = tok.__call__

    class Spy(WordTokenizer):
        def __call__(self, texts, **kw):
            calls.append(texts)
            return orig(texts, **kw)

    out = reference.truncate_document(Spy(), text, max_length=20, doc_max_length=10)
    # measured min(30, 20)=20 -> keep int(30*10/20)=15 words -> 15 > 10 -> keep int(15*10/15)=10
    assert out == " ".join(f"w{i}" for i in range(10))
    assert len(calls) == 3
    # doc_max_length >= max_length: the capped measure never exceeds it, nothing is cut
    assert reference.truncate_document(tok, text, max_length=20, doc_max_length=20) == text
    # whitespace is only normalized when a cut happens
    messy = "a  b\n c"
    assert reference.truncate_document(tok, messy, max_length=10, doc_max_length=5) == messy
    assert reference.truncate_document(tok, messy, max_length=10, doc_max_length=2) == "a b"


def test_doc_max_length_real_tokenizer_only_touches_text(tok):
    text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod. " * 6
    s = reference.build_strings(tok, [["Represent this:", text]], max_length=512, doc_max_length=20)[0]
    instr, doc = s.split(reference.SEPARATOR)
    assert instr == "Represent this: "
    assert len(tok(doc, add_special_tokens=False)["input_ids"]) <= 20
    assert text.split()[: len(doc.split())] == doc.split()


def test_max_length_truncation_slides_mask_onto_instruction(tok, meta):
    instr = meta["instruction"]
    n_instr = len(tok(instr, add_special_tokens=False)["input_ids"])  # 8
    long_text = meta["texts"][1]  # 21 tokens alone
    f = features(tok, [[instr, long_text]], max_length=12, doc_max_length=400)
    assert f["input_ids"].shape == (1, 12)
    # reference: n = min(21, 12) = 12 trailing positions pooled -> instruction included
    assert f["embed_mask"].sum() == 12 and n_instr < 12


def test_empty_text_and_pad_to(tok):
    f = features(tok, ["", "Short one."], max_length=32, doc_max_length=400, pad_to=16)
    assert f["input_ids"].shape == (2, 16)
    assert f["attention_mask"][0].sum() == 0 and f["embed_mask"][0].sum() == 0
    assert (f["input_ids"][0] == tok.eos_token_id).all()
    with pytest.raises(ValueError, match="pad_to"):
        features(tok, ["Short one."], max_length=32, doc_max_length=400, pad_to=2)


def test_separator_inside_text_is_removed(tok):
    # the reference removes every separator from the row but pools only parts[1]
    rows = tk.tokenize_strings(tok, [reference.SEPARATOR + "one" + reference.SEPARATOR + " two three"],
                                max_length=32)
    assert rows[0].input_ids == tuple(tok("one two three")["input_ids"])
    assert rows[0].n_pooled == len(tok("one", add_special_tokens=False)["input_ids"])


# --------------------------------------------------------------------------- pooling modes


def test_pooling_matches_reference_fixtures(fx):
    hidden = fx["hidden/bidirectional"]
    am, em = fx["feat/plain/attention_mask"], fx["feat/plain/embed_mask"]
    _assert_rows_close(pooling.pool(hidden, am, em, "mean"), fx["feat/plain/mean_pooled_in_input_order"])
    for mode in ("mean", "weighted_mean", "last_token"):
        _assert_rows_close(pooling.pool(hidden, am, em, mode), fx[f"enc/{mode}/plain"])


def test_eos_token_pooling_is_last_position(fx):
    # enc/eos_token/plain came from the " </s>"-suffixed input (different hidden states: see
    # test_eos_token_mode_appends_literal_eos_text); with the same hidden states eos_token
    # pools exactly what last_token pools.
    hidden = fx["hidden/bidirectional"]
    am, em = fx["feat/plain/attention_mask"], fx["feat/plain/embed_mask"]
    np.testing.assert_array_equal(np.asarray(pooling.pool(hidden, am, em, "eos_token")),
                                  fx["enc/last_token/plain"])
    assert not np.allclose(fx["enc/eos_token/plain"], fx["enc/last_token/plain"], atol=1e-2)


@pytest.mark.parametrize("mode", POOLED_MODES_IN_FIXTURES)
def test_pooling_left_equals_right_on_fixtures(fx, mode):
    hidden = fx["hidden/bidirectional"]
    am, em = fx["feat/plain/attention_mask"], fx["feat/plain/embed_mask"]
    left = np.asarray(pooling.pool(hidden, am, em, mode))
    right = np.asarray(pooling.pool(_left_to_right(hidden, am), _left_to_right(am, am),
                                _left_to_right(em, am), mode))
    np.testing.assert_allclose(right, left, rtol=0, atol=1e-6)


def test_simcse_path_quirk_pools_padding(fx):
    # The reference's training collators have no separator: mean over every column.
    hidden = fx["hidden/bidirectional"]
    ones = np.ones(hidden.shape[:2], np.int32)
    _assert_rows_close(pooling.pool(hidden, ones, ones, "mean"), fx["simcse_path/pooled_no_separator"])


def _tiny_case():
    """Two rows, S=5, D=2; row 0: 3 real tokens (first one is instruction), row 1: 5 real."""
    rng = np.random.default_rng(0)
    real = [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)]
    n_pooled = [2, 4]
    return real, n_pooled


def _pad(real, n_pooled, side, s=5):
    b, d = len(real), real[0].shape[1]
    hidden = np.full((b, s, d), np.nan, np.float32)  # pad states must never leak in
    am = np.zeros((b, s), np.int32)
    em = np.zeros((b, s), np.int32)
    for i, (h, k) in enumerate(zip(real, n_pooled)):
        n = len(h)
        st = s - n if side == "left" else 0
        hidden[i, st:st + n] = h
        am[i, st:st + n] = 1
        em[i, st + n - k:st + n] = 1
    return hidden, am, em


def _expected(real, n_pooled, mode):
    out = []
    for h, k in zip(real, n_pooled):
        pooled = h[len(h) - k:]
        if mode == "mean":
            out.append(pooled.mean(0))
        elif mode == "weighted_mean":
            w = np.arange(1, k + 1, dtype=np.float64)
            out.append((pooled * (w / w.sum())[:, None]).sum(0))
        elif mode in ("eos_token", "last_token"):
            out.append(h[-1])
        elif mode == "bos_token":
            out.append(h[0])
    return np.stack(out)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", pooling.POOLING_MODES)
def test_pooling_tiny_hand_case(mode, side):
    real, k = _tiny_case()
    hidden, am, em = _pad(real, k, side)
    got = np.asarray(pooling.pool(hidden, am, em, mode))
    assert got.dtype == np.float32 and got.shape == (2, 2)
    np.testing.assert_allclose(got, _expected(real, k, mode), rtol=1e-6, atol=1e-6)


def test_weighted_mean_hand_numbers():
    # 3 pooled tokens with values 1, 2, 3 -> weights 1/6, 2/6, 3/6 -> 14/6
    hidden = np.array([[[9.0], [1.0], [2.0], [3.0]]], np.float32)
    am = np.array([[1, 1, 1, 1]])
    em = np.array([[0, 1, 1, 1]])
    np.testing.assert_allclose(np.asarray(pooling.pool(hidden, am, em, "weighted_mean")),
                               [[14 / 6]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(pooling.pool(hidden, am, em, "mean")), [[2.0]], rtol=1e-6)


@pytest.mark.parametrize("mode", pooling.POOLING_MODES)
def test_pooling_empty_row_gives_zeros(mode):
    hidden = np.ones((1, 3, 2), np.float32)
    zeros = np.zeros((1, 3), np.int32)
    np.testing.assert_array_equal(np.asarray(pooling.pool(hidden, zeros, zeros, mode)), 0.0)


def test_unknown_pooling_mode_lists_valid_ones():
    with pytest.raises(ValueError, match="weighted_mean") as e:
        pooling.pool(np.zeros((1, 1, 1)), np.ones((1, 1)), np.ones((1, 1)), "max")
    assert all(m in str(e.value) for m in pooling.POOLING_MODES)


def test_bos_token_needs_a_bos_adding_tokenizer(tok, bos_tok):
    assert not reference.tokenizer_adds_bos(tok)
    with pytest.raises(ValueError, match="BOS"):
        features(tok, ["x"], max_length=8, doc_max_length=8, pooling_mode="bos_token")
    with pytest.raises(ValueError, match="BOS"):
        reference.validate_pooling("bos_token", tok)
    assert reference.tokenizer_adds_bos(bos_tok)


@pytest.mark.parametrize("side", ["left", "right"])
def test_bos_tokenizer_rows_and_bos_pooling(bos_tok, meta, side):
    f = features(bos_tok, meta["texts"][:3], max_length=64, doc_max_length=400,
                     padding_side=side, pooling_mode="bos_token")
    for i in range(3):
        m = f["attention_mask"][i] > 0
        ids = f["input_ids"][i][m]
        assert ids[0] == bos_tok.bos_token_id
        # BOS attended, not pooled (embed count = text tokens without specials)
        assert f["embed_mask"][i][m][0] == 0 and f["embed_mask"][i][m][1:].all()
    # hidden = input ids as a 1-d feature: bos_token pooling must pick the BOS id
    hidden = f["input_ids"][..., None].astype(np.float32)
    got = np.asarray(pooling.pool(hidden, f["attention_mask"], f["embed_mask"], "bos_token"))
    np.testing.assert_array_equal(got[:, 0], bos_tok.bos_token_id)


# --------------------------------------------------------------------------- bucketing


def test_default_buckets():
    assert packing.default_buckets(512) == (16, 32, 48, 64, 80, 104, 136, 176, 224, 280, 352,
                                        440, 512)
    assert packing.default_buckets(100) == (16, 32, 48, 64, 80, 100)
    assert packing.default_buckets(8) == (8,)
    fine = packing.default_buckets(512, min_step=8)  # the encoder's: 8 apart below 64
    assert fine == (16, 24, 32, 40, 48, 56, 64, 80, 104, 136, 176, 224, 280, 352, 440, 512)
    assert all(b - a <= max(8, a / 4 + 8) for a, b in zip(fine, fine[1:]))
    with pytest.raises(ValueError, match="multiple of 8"):
        packing.default_buckets(64, min_step=12)


def _check_plan(plan, lengths, rows_per_batch, buckets):
    placed = [i for b in plan for row in b.rows for i in row]
    assert sorted(placed + list(plan.empty)) == list(range(len(lengths)))  # each text once
    assert all(lengths[i] == 0 for i in plan.empty)
    for k, b in enumerate(plan):
        assert b.width in buckets and 1 <= len(b.rows) <= rows_per_batch
        if k < len(plan) - 1:
            assert len(b.rows) == rows_per_batch  # only the last batch is partial
        for row in b.rows:
            assert 1 <= len(row) <= b.segments and sum(lengths[i] for i in row) <= b.width


def test_plan_packed_places_every_text_once_within_bounds():
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 129, size=203)
    buckets = packing.default_buckets(128, min_step=8)
    for packed in (True, False):
        plan = packing.plan_packed(lengths, rows_per_batch=16, max_length=128, buckets=buckets,
                                   packing=packed)
        _check_plan(plan, lengths, 16, buckets)
        assert len({b.width for b in plan}) <= len(buckets)


def _real_share(lengths, **kw):
    plan = packing.plan_packed(lengths, rows_per_batch=16, max_length=128,
                               buckets=packing.default_buckets(128, min_step=8), **kw)
    return sum(lengths) / sum(packing.padded_row_count(len(b.rows), 16) * b.width for b in plan)


def test_packing_leaves_little_padding():
    rng = np.random.default_rng(1)
    sentences = rng.integers(9, 46, size=500)  # like the benchmark's 512 (9-45 tokens)
    assert _real_share(sentences) > 0.98 > 0.9 > _real_share(sentences, packing=False)
    # Lengths spread up to max_length are harder (texts over half a row cannot pair), but
    # packing still beats one text a row.
    spread = rng.integers(0, 129, size=203)
    assert _real_share(spread) > _real_share(spread, packing=False) + 0.05


def test_plan_packed_without_packing_is_length_sorted_batching():
    lengths = [5, 40, 17, 40, 0, 3]
    plan = packing.plan_packed(lengths, rows_per_batch=2, max_length=64, buckets=(16, 24, 48, 64),
                           packing=False)
    # Longest first, ties in input order, one text a row, each batch its longest's bucket.
    assert [(b.width, b.segments, b.rows) for b in plan] == [
        (48, 1, ((1,), (3,))), (24, 1, ((2,), (0,))), (16, 1, ((5,),))]
    assert plan.empty == (4,)


def test_plan_packed_fills_rows_longest_first():
    # width 64: [40, then the longest <= 24: 20, then <= 4: 3], [30, then 10, then 5].
    plan = packing.plan_packed([40, 30, 20, 10, 5, 3], rows_per_batch=2, max_length=64,
                           buckets=(16, 32, 48, 64))
    assert [(b.width, b.rows) for b in plan] == [(64, ((0, 2, 5), (1, 3, 4)))]
    # The final, partial batch is repacked into the narrowest bucket that holds its texts in
    # its (power-of-two) row count: 20 + 20 + 10 fit one row of 56, not of 32.
    plan = packing.plan_packed([20, 20, 10], rows_per_batch=4, max_length=64,
                           buckets=(16, 32, 56, 64))
    assert [(b.width, b.rows) for b in plan] == [(56, ((0, 1, 2),))]
    # At most segments_per_row(width) texts a row: 1-token texts, width 16 -> 4 a row.
    plan = packing.plan_packed([1] * 9, rows_per_batch=8, max_length=16, buckets=(16,))
    assert packing.segments_per_row(16) == 4
    assert [len(row) for b in plan for row in b.rows] == [4, 4, 1]


def test_plan_packed_fixed_rows_keeps_widths_of_full_batches():
    # Normally the last batch [10, 10, 10] (one row) is repacked into a 32-wide row; with
    # fixed_rows it will be computed with all 4 rows, so it keeps the packed minimum of 64.
    lengths = [10, 10, 10]
    kw = dict(rows_per_batch=4, max_length=64, buckets=(16, 32, 64))
    assert [(b.width, b.rows) for b in packing.plan_packed(lengths, **kw)] == [(32, ((0, 1, 2),))]
    assert [(b.width, b.rows) for b in packing.plan_packed(lengths, fixed_rows=True, **kw)] == [
        (64, ((0, 1, 2),))]
    rng = np.random.default_rng(2)
    buckets = packing.default_buckets(128, min_step=8)
    for n in (1, 7, 50, 203):
        lengths = rng.integers(0, 129, size=n)
        plan = packing.plan_packed(lengths, rows_per_batch=16, max_length=128, buckets=buckets,
                                   fixed_rows=True)
        _check_plan(plan, lengths, 16, buckets)
        assert all(b.width >= 64 for b in plan)


@pytest.mark.parametrize("packing_on", [True, False])
def test_fixed_row_shapes_are_the_shapes_fixed_row_plans_reach(packing_on):
    # The shapes a corpus job compiles up front: every batch of any plan has one of them,
    # and random plans together reach them all (none compiled in vain).
    rng = np.random.default_rng(5)
    buckets = packing.default_buckets(128, min_step=8)
    kw = dict(rows_per_batch=8, max_length=128, buckets=buckets, packing=packing_on)
    shapes = packing.fixed_row_shapes(**kw)
    assert [w for _, w, _ in shapes] == (
        [64, 80, 104, 128] if packing_on else list(buckets))
    seen = set()
    for n in (1, 5, 30, 200, 1000):
        for high in (8, 40, 129):
            lengths = rng.integers(0, high, size=n)
            seen |= {(b.computed_rows, b.width, b.segments)
                     for b in packing.plan_packed(lengths, fixed_rows=True, **kw)}
    assert seen == set(shapes)
    # A maximum under the packed minimum width: its one bucket.
    assert packing.fixed_row_shapes(rows_per_batch=4, max_length=40) == ((4, 40, 10),)


def test_plan_packed_errors():
    with pytest.raises(ValueError, match="fits no bucket"):
        packing.plan_packed([5, 70], rows_per_batch=4, max_length=64)
    with pytest.raises(ValueError, match="batch_size"):
        packing.plan_packed([5], rows_per_batch=0, max_length=64)
    assert len(packing.plan_packed([], rows_per_batch=4, max_length=8)) == 0


def test_tokenizing_in_chunks_gives_the_rows_of_one_call(tok, meta):
    """tokenize_rows tokenizes TOKENIZE_CHUNK texts per tokenizer call (bounded transient
    memory); any chunking gives the rows of one call, instructions, cuts and all."""
    long_doc = "word " * 600  # shortened by doc_max_length=400: truncated
    texts = (meta["texts"] + [[meta["instruction"], t] for t in meta["texts"]]
             + [long_doc, [meta["instruction"], long_doc], ""])
    kw = dict(max_length=64, doc_max_length=400)
    whole = tk.tokenize_rows(tok, texts, chunk=len(texts), **kw)
    assert sum(r.truncated for r in whole) >= 2 and len(whole[-1]) == 0
    for chunk in (1, 2, 7):
        assert tk.tokenize_rows(tok, texts, chunk=chunk, **kw) == whole
    assert tk.tokenize_rows(tok, iter(texts), chunk=2, **kw) == whole


def test_padded_row_count():
    assert [packing.padded_row_count(n, 32) for n in (32, 1, 3, 16, 17, 31)] == [32, 1, 4, 16, 32, 32]
    assert packing.padded_row_count(5, 6) == 6


def test_packed_batches_hold_each_rows_own_features(tok, meta):
    texts = meta["texts"] + [[meta["instruction"], t] for t in meta["texts"]]
    rows = tk.tokenize_rows(tok, texts, max_length=64, doc_max_length=400)
    full = tk.collate(rows, pad_id=tok.eos_token_id, padding_side="right")
    plan = packing.plan_packed([len(r) for r in rows], rows_per_batch=3, max_length=64)
    seen = []
    for b in plan:
        f = packing.collate_packed(rows, b, pad_id=tok.eos_token_id, num_rows=4)
        assert f["input_ids"].shape == (4, b.width)
        np.testing.assert_array_equal(f["input_ids"][len(b.rows):], np.repeat(
            f["input_ids"][:1], 4 - len(b.rows), 0))  # filler rows copy row 0, own no slot
        for index, slot in zip(f["indices"], f["slots"]):
            r, j = divmod(int(slot), b.segments)
            at = f["segment_ids"][r] == j + 1
            n = int(full["attention_mask"][index].sum())
            np.testing.assert_array_equal(f["input_ids"][r][at], full["input_ids"][index, :n])
            np.testing.assert_array_equal(f["embed_mask"][r][at], full["embed_mask"][index, :n])
            np.testing.assert_array_equal(f["positions"][r][at], np.arange(n))
            seen.append(int(index))
    assert sorted(seen) == list(range(len(texts)))


def test_pool_segments_pools_each_text_as_alone():
    real, k = _tiny_case()
    widths = [len(h) for h in real]
    s = sum(widths) + 2
    hidden = np.full((1, s, real[0].shape[1]), np.nan, np.float32)  # padding must not leak
    segments = np.zeros((1, s), np.int32)
    embed_mask = np.zeros((1, s), np.int32)
    start = 0
    for j, (h, n_pooled) in enumerate(zip(real, k)):
        hidden[0, start:start + len(h)] = h
        segments[0, start:start + len(h)] = j + 1
        embed_mask[0, start + len(h) - n_pooled:start + len(h)] = 1
        start += len(h)
    for mode in pooling.POOLING_MODES:
        got = np.asarray(pooling.pool_segments(hidden, segments, embed_mask, mode, 3))
        assert got.shape == (1, 3, 2)
        np.testing.assert_allclose(got[0, :2], _expected(real, k, mode), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(got[0, 2], 0.0)  # no third text


def test_pool_is_jittable_with_static_mode():
    import jax

    real, k = _tiny_case()
    hidden, am, em = _pad(real, k, "left")
    jitted = jax.jit(pooling.pool, static_argnames="mode")
    for mode in pooling.POOLING_MODES:
        np.testing.assert_allclose(np.asarray(jitted(hidden, am, em, mode=mode)),
                                   _expected(real, k, mode), rtol=1e-6, atol=1e-6)
