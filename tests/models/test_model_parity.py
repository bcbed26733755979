"""Our Flax model vs Hugging Face PyTorch on tiny random checkpoints (fp32, ≤ 1e-4 abs)."""

import numpy as np
import pytest

from hf_oracle import TINY_CONFIGS, batch, hf_hidden, hf_logits, make_hf_model, save_hf_model
from llm2vec_jax import load_hf_checkpoint

TOL = 1e-4
SEQ = 10  # > mistral's sliding window of 4, so the window matters


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def pair(request, tmp_path_factory):
    hf = make_hf_model(request.param)
    path = save_hf_model(hf, tmp_path_factory.mktemp(request.param))
    return request.param, hf, load_hf_checkpoint(path)


def max_err_on_tokens(ours, ref, mask):
    # Pad query rows carry no meaning (and differ by design in causal left padding).
    real = mask.astype(bool)
    return float(np.abs(np.asarray(ours)[real] - ref[real]).max())


# (padding, batch size): every padding at batch 3, and a padded single row (the PyTorch
# reference once went silently causal at batch size 1).
SHAPES = [("none", 3), ("left", 3), ("right", 3), ("left", 1), ("right", 1)]


@pytest.mark.parametrize("padding,batch_size", SHAPES, ids=[f"{p}-b{b}" for p, b in SHAPES])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_hidden_states_match_hf(pair, padding, causal, batch_size):
    name, hf, ours = pair
    ids, mask = batch(padding, 3, SEQ, seed=batch_size)
    ids, mask = ids[-batch_size:], mask[-batch_size:]
    if padding != "none":
        assert mask.min() == 0  # the rows kept really are padded
    ref = hf_hidden(hf, ids, mask, causal=causal)
    got = ours(ids, mask, causal=causal)
    assert not np.isnan(np.asarray(got)).any(), "pad rows must not produce NaN"
    assert max_err_on_tokens(got, ref, mask) <= TOL


def test_bidirectional_differs_from_causal(pair):
    name, hf, ours = pair
    ids, mask = batch("right", 2, SEQ)
    causal = np.asarray(ours(ids, mask, causal=True))
    bi = np.asarray(ours(ids, mask, causal=False))
    # The last real token sees everything either way; earlier tokens must change.
    assert np.abs(causal[:, 0] - bi[:, 0]).max() > 1e-3


def test_logits_match_hf(pair):
    name, hf, ours = pair
    ids, mask = batch("right", 2, SEQ)
    ref = hf_logits(hf, ids, mask)
    got = np.asarray(ours.logits(ours(ids, mask, causal=True)))
    real = mask.astype(bool)
    assert np.abs(got[real] - ref[real]).max() <= TOL


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_packed_row_matches_hf_on_each_text_alone(pair, causal):
    """Texts one after another in a row (attention_mask = segment ids 1, 2, ..., 0 for
    padding; positions restarting at 0 per text), as the encoder packs them: each text's
    hidden states are HF's for that text alone. The first text outruns Mistral's sliding
    window."""
    name, hf, ours = pair
    lengths = [SEQ, 3, SEQ - 2]
    ids, _ = batch("none", len(lengths), SEQ, seed=7)
    texts = [ids[i, :n] for i, n in enumerate(lengths)]
    width = sum(lengths) + 3  # then padding
    row = np.full((1, width), 2, np.int32)
    segments = np.zeros((1, width), np.int32)
    positions = np.zeros((1, width), np.int32)
    starts = np.cumsum([0] + lengths)
    for j, text in enumerate(texts):
        row[0, starts[j]:starts[j + 1]] = text
        segments[0, starts[j]:starts[j + 1]] = j + 1
        positions[0, starts[j]:starts[j + 1]] = np.arange(len(text))
    got = np.asarray(ours(row, segments, causal=causal, positions=positions))
    for j, text in enumerate(texts):
        ref = hf_hidden(hf, text[None], np.ones((1, len(text)), np.int32), causal=causal)[0]
        assert np.abs(got[0, starts[j]:starts[j + 1]] - ref).max() <= TOL, (name, j)
    # Attention really is confined: the same row read as one text differs.
    whole = np.asarray(ours(row, (segments > 0).astype(np.int32), causal=causal,
                            positions=positions))
    assert np.abs(whole[0, starts[1]:starts[2]] - got[0, starts[1]:starts[2]]).max() > 1e-3
