"""MNTP and contrastive losses (llm2vec_jax.train.losses) against numpy and the reference."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REFERENCE

from llm2vec_jax.data import IGNORE_INDEX, MNTPCollator
from llm2vec_jax.train.losses import (contrastive_loss, lm_head_weight, mntp_loss,
                                     same_text_as_positive)

@pytest.fixture(scope="module")
def fixtures():
    return dict(np.load(REFERENCE / "reference_fixtures.npz"))


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference_mntp(logits, labels):
    """The reference: CrossEntropyLoss()(logits[:, :-1], labels[:, 1:]), mean over valid."""
    lg = logits[:, :-1].reshape(-1, logits.shape[-1]).astype(np.float64)
    lb = labels[:, 1:].reshape(-1)
    valid = lb != IGNORE_INDEX
    lp = _log_softmax(lg[valid])
    return -lp[np.arange(valid.sum()), lb[valid]].mean()


def _predict_arrays(labels, spare=3):
    """Per-row predicting positions / labels for given labels, written out by hand: each
    scored token i of a row is predicted from i - 1; ``spare`` unused slots hold 0 / -100."""
    B, S = labels.shape
    slots = int((labels[:, 1:] != IGNORE_INDEX).sum(axis=1).max()) + spare
    idx = np.zeros((B, slots), np.int32)
    lab = np.full((B, slots), IGNORE_INDEX, np.int32)
    for b in range(B):
        k = 0
        for i in range(1, S):
            if labels[b, i] != IGNORE_INDEX:
                idx[b, k], lab[b, k] = i - 1, labels[b, i]
                k += 1
    return idx, lab


# ---------------------------------------------------------------------------- MNTP


def test_mntp_loss_equals_full_cross_entropy():
    rng = np.random.default_rng(0)
    B, S, D, V = 3, 17, 8, 50
    hidden = rng.standard_normal((B, S, D)).astype(np.float32)
    head = rng.standard_normal((V, D)).astype(np.float32)
    ids = rng.integers(0, V, (B, S)).astype(np.int32)
    collator = MNTPCollator(mask_token_id=1, vocab_size=V, mlm_probability=0.4)
    inputs = (ids, np.ones_like(ids), np.zeros((B, S), bool))
    batch = collator(*inputs, np.random.default_rng(1))
    _, labels = collator.mask(*inputs, np.random.default_rng(1))
    expected = _reference_mntp(hidden.astype(np.float64) @ head.T.astype(np.float64), labels)
    loss, metrics = jax.jit(mntp_loss)(hidden, head, batch.predict_positions, batch.predict_labels)
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    n_valid = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert int(metrics["count"]) == n_valid
    logits = hidden @ head.T
    preds = logits[:, :-1].argmax(-1)
    valid = labels[:, 1:] != IGNORE_INDEX
    acc = (preds[valid] == labels[:, 1:][valid]).mean()
    assert math.isclose(float(metrics["accuracy"]), acc, rel_tol=1e-6)


def test_mntp_loss_hand_computed():
    # B=1, S=2, D=2, V=2; the token at position 1 (label 1) is predicted from position 0.
    hidden = np.array([[[1.0, 0.0], [5.0, 5.0]]], np.float32)
    head = np.array([[2.0, 0.0], [0.0, 1.0]], np.float32)  # logits at pos 0: [2, 0]
    idx = np.array([[0, 0]], np.int32)
    lab = np.array([[1, IGNORE_INDEX]], np.int32)
    loss, metrics = mntp_loss(hidden, head, idx, lab)
    assert math.isclose(float(loss), math.log(1 + math.exp(2.0)), rel_tol=1e-6)  # -log softmax[1]
    assert float(metrics["accuracy"]) == 0.0 and int(metrics["count"]) == 1
    loss, metrics = mntp_loss(hidden, head, idx, np.array([[0, IGNORE_INDEX]], np.int32))
    assert math.isclose(float(loss), math.log(1 + math.exp(-2.0)), rel_tol=1e-6)
    assert float(metrics["accuracy"]) == 1.0
    # Nothing scored: 0, not NaN.
    loss, metrics = mntp_loss(hidden, head, idx, np.full((1, 2), IGNORE_INDEX, np.int32))
    assert float(loss) == 0.0 and int(metrics["count"]) == 0


def test_mntp_loss_gradient_matches_full_form():
    rng = np.random.default_rng(2)
    B, S, D, V = 2, 9, 4, 11
    hidden = jnp.asarray(rng.standard_normal((B, S, D)), jnp.float32)
    head = jnp.asarray(rng.standard_normal((V, D)), jnp.float32)
    labels = np.full((B, S), IGNORE_INDEX, np.int32)
    labels[0, 3], labels[1, 1], labels[1, 8], labels[0, 0] = 4, 7, 2, 9
    idx, lab = _predict_arrays(labels)

    def full(h, w):
        logits = jnp.einsum("bsd,vd->bsv", h, w)[:, :-1].reshape(-1, V)
        lb = jnp.asarray(labels[:, 1:].reshape(-1))
        valid = lb != IGNORE_INDEX
        nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, jnp.where(valid, lb, 0)[:, None], -1)[:, 0]
        return jnp.sum(jnp.where(valid, nll, 0)) / valid.sum()

    g_fast = jax.jit(jax.grad(lambda h, w: mntp_loss(h, w, idx, lab)[0], argnums=(0, 1)))(
        hidden, head)
    g_full = jax.jit(jax.grad(full, argnums=(0, 1)))(hidden, head)
    for a, b in zip(g_fast, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mntp_accuracy_counts_a_tied_top_logit():
    hidden = np.array([[[1.0, 1.0]]], np.float32)
    head = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # logits [1, 1]
    for label in (0, 1):  # argmax would say 0 for both
        _, metrics = mntp_loss(hidden, head, np.zeros((1, 1), np.int32),
                               np.array([[label]], np.int32))
        assert float(metrics["accuracy"]) == 1.0


def _bf16(x):
    return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)


def _head_case():
    rng = np.random.default_rng(3)
    B, S, D, V, P = 2, 12, 16, 128, 4
    hidden = jnp.asarray(rng.standard_normal((B, S, D)), jnp.bfloat16)
    head = jnp.asarray(rng.standard_normal((V, D)) / 4, jnp.bfloat16)
    idx = np.stack([rng.permutation(S)[:P] for _ in range(B)]).astype(np.int32)  # distinct
    lab = rng.integers(0, V, (B, P)).astype(np.int32)
    lab[1, 3] = IGNORE_INDEX
    return hidden, head, idx, lab


def _hidden_gradient_in_float64(hidden, head, idx, lab, *, round_cotangent: bool):
    """The hidden states' gradient written out in float64 from the float32 logits'
    cotangent (rounded to bf16 first if ``round_cotangent``), rounded to bf16 at the end."""
    rows = np.take_along_axis(np.asarray(hidden, np.float32), idx[..., None], axis=1)
    logits_cotangent = np.asarray(jax.grad(lambda z: _nll_of_logits(z, lab))(
        jnp.einsum("bpd,vd->bpv", rows, np.asarray(head, np.float32))), np.float64)
    if round_cotangent:
        logits_cotangent = _bf16(logits_cotangent)
    expected = np.zeros(hidden.shape)
    d_rows = logits_cotangent @ np.asarray(head, np.float64)
    for b in range(idx.shape[0]):
        for p in range(idx.shape[1]):
            expected[b, idx[b, p]] += d_rows[b, p]
    return _bf16(expected)


def _within_one_bf16_ulp(got, expected):
    got = np.asarray(got, np.float64)
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(expected), 1e-30))) - 7)
    assert np.all(np.abs(got - expected) <= ulp), np.max(np.abs(got - expected) / ulp)


def _head_value_and_grad(hidden, head, idx, lab, backward, operands="native"):
    def loss(h):
        return mntp_loss(h, head, idx, lab, matmul_backward=backward,
                         matmul_operands=operands)[0]
    return jax.jit(jax.value_and_grad(loss))(hidden)


def test_mntp_head_backward_on_the_bf16_rounded_cotangent():
    """matmul_backward="operands": the same loss, and the hidden states' gradient is the
    float32 logits' cotangent rounded to bf16, times the head, rounded to bf16, written out
    here in float64. Products of two bf16 values are exact in float32 and the float32 sum's
    error (V * 2^-24 relative, here 2^-17) is far under bf16's half ulp (2^-9), so the two
    agree to within the final rounding: one bf16 ulp."""
    hidden, head, idx, lab = _head_case()
    autodiff = _head_value_and_grad(hidden, head, idx, lab, "autodiff")
    operands = _head_value_and_grad(hidden, head, idx, lab, "operands")
    assert float(operands[0]) == float(autodiff[0])
    assert operands[1].dtype == jnp.bfloat16
    _within_one_bf16_ulp(operands[1], _hidden_gradient_in_float64(hidden, head, idx, lab,
                                                                  round_cotangent=True))
    # autodiff's float32 cotangent gives a (slightly) different gradient: the test can tell.
    assert not np.array_equal(np.asarray(autodiff[1]), np.asarray(operands[1]))


def test_mntp_head_with_float32_operands_keeps_the_float32_cotangent():
    """matmul_operands="float32" (bf16 rows and head multiplied as float32): nothing is
    rounded before the head's backward matmul, whatever matmul_backward says; the gradient
    is the float64 product of the unrounded cotangent to within the final bf16 rounding (one
    ulp), and differs from the rounded-cotangent path's (so the test can tell)."""
    hidden, head, idx, lab = _head_case()
    rounded = _head_value_and_grad(hidden, head, idx, lab, "operands")
    expected = _hidden_gradient_in_float64(hidden, head, idx, lab, round_cotangent=False)
    for backward in ("operands", "autodiff"):
        loss, grad = _head_value_and_grad(hidden, head, idx, lab, backward, "float32")
        assert grad.dtype == jnp.bfloat16
        assert math.isclose(float(loss), float(rounded[0]), rel_tol=1e-6)
        _within_one_bf16_ulp(grad, expected)
        assert not np.array_equal(np.asarray(grad), np.asarray(rounded[1]))


def _nll_of_logits(logits, labels):
    valid = labels != IGNORE_INDEX
    target = jnp.where(valid, labels, 0)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, target[..., None], -1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / valid.sum()


@pytest.mark.slow
def test_mntp_loss_reference_smollm2(fixtures, smollm2_dir):
    """The reference's MNTP loss on SmolLM2-135M, bidirectional, mask token "_"; the logits
    against HF PyTorch's bidirectional forward of the same checkpoint."""
    import torch
    import transformers
    from hf_oracle import hf_hidden

    from llm2vec_jax import load_hf_checkpoint
    model = load_hf_checkpoint(smollm2_dir)
    ids = fixtures["mntp/input_ids"].astype(np.int32)
    labels = fixtures["mntp/labels"].astype(np.int32)
    attn = np.ones_like(ids)  # one unpadded sequence
    hidden = model(jnp.asarray(ids), jnp.asarray(attn), causal=False)
    logits0 = np.asarray(model.logits(hidden))[0]
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        hf_logits = hf.lm_head(torch.tensor(hf_hidden(hf, ids, attn, causal=False)))[0].numpy()
    np.testing.assert_allclose(logits0, hf_logits, atol=1e-3, rtol=0)
    idx, lab = _predict_arrays(labels)
    loss, metrics = mntp_loss(hidden, lm_head_weight(model), idx, lab)
    ref = float(fixtures["mntp/loss"])
    assert math.isclose(float(loss), ref, rel_tol=1e-4), (float(loss), ref)
    assert int(metrics["count"]) == int((labels[:, 1:] != IGNORE_INDEX).sum())


# ---------------------------------------------------------------------------- contrastive


def test_contrastive_loss_reference_fixtures(fixtures):
    q, d, n = (fixtures[f"loss/{k}"] for k in "qdn")
    for scale in (20, 50):
        got = float(contrastive_loss(q, d, None, scale))
        ref = float(fixtures[f"loss/scale{scale}/no_neg"])
        assert math.isclose(got, ref, rel_tol=1e-5), (scale, got, ref)
        got = float(jax.jit(contrastive_loss, static_argnums=3)(q, d, n, scale))
        ref = float(fixtures[f"loss/scale{scale}/with_neg"])
        assert math.isclose(got, ref, rel_tol=1e-5), (scale, got, ref)


def test_contrastive_loss_hand_computed():
    # Unit-norm after normalisation: q0·d0 = 1, q0·d1 = 0, q1·d0 = 0, q1·d1 = 1 (scale 2).
    q = np.array([[3.0, 0.0], [0.0, 0.5]], np.float32)
    d = np.array([[1.0, 0.0], [0.0, 4.0]], np.float32)
    expected = math.log(1 + math.exp(-2.0))  # each row: -log(e^2 / (e^2 + e^0))
    assert math.isclose(float(contrastive_loss(q, d, None, 2.0)), expected, rel_tol=1e-6)
    # A hard negative equal to the other row's positive: row 0 scores [1, 0, -1, 0]·2
    # (row 1 is symmetric).
    neg = np.array([[-1.0, 0.0], [0.0, -1.0]], np.float32)
    row0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(-2) + math.exp(0)))
    assert math.isclose(float(contrastive_loss(q, d, neg, 2.0)), row0, rel_tol=1e-6)


def test_contrastive_loss_leaves_out_excluded_documents():
    # Rows 0 and 2 share a positive text: each scores the other's copy as neither positive
    # nor negative. Unit vectors, scale 2: q_i · d_j = 1 on the diagonal, else 0.
    q = np.eye(3, dtype=np.float32)
    d = np.eye(3, dtype=np.float32)
    exclude = np.zeros((3, 3), bool)
    exclude[0, 2] = exclude[2, 0] = True
    two = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))        # rows 0, 2: 1 negative
    three = -math.log(math.exp(2) / (math.exp(2) + 2 * math.exp(0)))  # row 1: 2 negatives
    got = float(contrastive_loss(q, d, None, 2.0, exclude=exclude))
    assert math.isclose(got, (2 * two + three) / 3, rel_tol=1e-6)
    assert math.isclose(float(contrastive_loss(q, d, None, 2.0)), three, rel_tol=1e-6)


def test_same_text_as_positive_finds_false_negatives_across_views():
    # Left-padded positives (width 5; pad ids differ on purpose: only real tokens count) and
    # hard negatives of another width (4).
    d_ids = np.array([[2, 2, 5, 6, 7], [0, 0, 0, 8, 9], [0, 0, 5, 6, 7]], np.int32)
    d_mask = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1]], np.int32)
    n_ids = np.array([[2, 2, 8, 9], [2, 2, 2, 4], [2, 5, 6, 7]], np.int32)
    n_mask = np.array([[0, 0, 1, 1], [0, 0, 0, 1], [0, 1, 1, 1]], np.int32)
    got = np.asarray(same_text_as_positive(d_ids, d_mask, [d_ids, n_ids], [d_mask, n_mask]))
    #        positives d0 d1 d2 | negatives n0 n1 n2
    expected = np.array([[0, 0, 1, 0, 0, 1],   # "5 6 7": d2 and n2 are copies
                         [0, 0, 0, 1, 0, 0],   # "8 9": n0 is a copy
                         [1, 0, 0, 0, 0, 1]],  # n2 is row 2's own negative, still a copy
                        bool)
    np.testing.assert_array_equal(got, expected)
    # The same tokens at other positions (a longer text ending alike) are not the same text.
    longer = np.array([[0, 4, 5, 6, 7]], np.int32)
    assert not np.asarray(same_text_as_positive(
        d_ids[:1], d_mask[:1], [longer], [np.array([[0, 1, 1, 1, 1]], np.int32)])).any()


def test_simcse_step_masks_a_repeated_sentence_unless_told_not_to():
    from flax import nnx

    from conftest import tiny_lora_model
    from llm2vec_jax.data.batches import ContrastiveBatch, Features
    from llm2vec_jax.train.steps import contrastive_objective, embed
    graphdef, lora, frozen = tiny_lora_model(vocab_size=64, hidden_size=32,
                                             intermediate_size=48, head_dim=8)
    model = nnx.merge(graphdef, lora, frozen)
    ids = np.random.default_rng(0).integers(3, 64, (4, 6)).astype(np.int32)
    ids[3] = ids[1]  # the same sentence twice in one SimCSE batch
    view = Features(ids, np.ones_like(ids), np.ones_like(ids))
    batch = ContrastiveBatch(view, view)
    masked = float(contrastive_objective(model, batch, None, scale=20.0)[0])
    plain = float(contrastive_objective(model, batch, None, scale=20.0, mask_duplicates=False)[0])
    e = np.asarray(embed(model, view, None, "mean"))
    exclude = np.zeros((4, 4), bool)
    exclude[1, 3] = exclude[3, 1] = True
    np.testing.assert_allclose(masked, float(contrastive_loss(e, e, None, 20.0, exclude)),
                               rtol=1e-6)
    np.testing.assert_allclose(plain, float(contrastive_loss(e, e, None, 20.0)), rtol=1e-6)
    assert plain > masked + 1e-3  # the copy scored as a negative costs loss


# ---------------------------------------------------------------------------- Matryoshka


def test_matryoshka_loss_hand_computed():
    from llm2vec_jax.train.losses import matryoshka_loss

    q = np.array([[2.0, 5.0], [-3.0, 1.0]], np.float32)
    d = np.array([[1.0, 7.0], [-4.0, 0.0]], np.float32)
    # Width 1: each prefix normalises to its sign, q = d = [1, -1]; scores (scale 1) are
    # [[1, -1], [-1, 1]], so each row costs log(e + e^-1) - 1 = log(1 + e^-2).
    width1 = math.log(1 + math.exp(-2.0))
    assert math.isclose(float(matryoshka_loss(q, d, None, 1.0, dims=(1,))), width1, rel_tol=1e-6)
    # Width 2: the whole vectors, cosines written out.
    cos = lambda a, b: (a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))  # noqa: E731
    s = np.array([[cos(q[i], d[j]) for j in range(2)] for i in range(2)], np.float64)
    width2 = np.mean([math.log(math.exp(s[i, 0]) + math.exp(s[i, 1])) - s[i, i]
                      for i in range(2)])
    got = float(matryoshka_loss(q, d, None, 1.0, dims=(1, 2)))
    assert math.isclose(got, width1 + width2, rel_tol=1e-6)
    # Hard negatives and excluded documents are cut to each prefix too.
    neg = np.array([[1.0, -9.0], [3.0, 3.0]], np.float32)
    exclude = np.array([[False, True, False, False], [False, False, True, False]])
    expected = sum(float(contrastive_loss(q[:, :m], d[:, :m], neg[:, :m], 3.0, exclude))
                   for m in (1, 2))
    got = float(matryoshka_loss(q, d, neg, 3.0, exclude, dims=(1, 2)))
    assert math.isclose(got, expected, rel_tol=1e-6)
    assert float(matryoshka_loss(q, d, neg, 3.0, exclude)) == float(
        contrastive_loss(q, d, neg, 3.0, exclude))


def test_matryoshka_objective_and_grad_cache_agree():
    import functools

    from flax import nnx

    from conftest import tiny_lora_model
    from llm2vec_jax.data.batches import ContrastiveBatch, Features
    from llm2vec_jax.train.grad_cache import grad_cache_objective
    from llm2vec_jax.train.losses import matryoshka_loss
    from llm2vec_jax.train.steps import contrastive_objective, embed
    graphdef, lora, frozen = tiny_lora_model(vocab_size=64, hidden_size=32,
                                             intermediate_size=48, head_dim=8)
    model = nnx.merge(graphdef, lora, frozen)
    rng = np.random.default_rng(0)
    q, d = (Features(ids, np.ones_like(ids), np.ones_like(ids))
            for ids in rng.integers(3, 64, (2, 4, 6)).astype(np.int32))
    batch = ContrastiveBatch(q, d)
    dims = (8, 16, 32)
    got = float(contrastive_objective(model, batch, None, scale=20.0, matryoshka_dims=dims)[0])
    eq, ed = (np.asarray(embed(model, v, None, "mean")) for v in (q, d))
    expected = sum(float(contrastive_loss(eq[:, :m], ed[:, :m], None, 20.0)) for m in dims)
    assert math.isclose(got, expected, rel_tol=1e-5)
    assert math.isclose(float(matryoshka_loss(eq, ed, None, 20.0, dims=dims)), expected,
                        rel_tol=1e-6)

    def loss_and_grad(objective):
        return jax.value_and_grad(lambda lo: objective(nnx.merge(graphdef, lo, frozen), batch,
                                                       jax.random.key(3))[0])(lora)

    plain = loss_and_grad(functools.partial(contrastive_objective, scale=20.0,
                                            matryoshka_dims=dims))
    cached = loss_and_grad(functools.partial(grad_cache_objective, scale=20.0, chunk=2,
                                             matryoshka_dims=dims))
    np.testing.assert_allclose(cached[0], plain[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(cached[1])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(a))))


def test_matryoshka_dims_config():
    from llm2vec_jax.train.config import TrainConfigError, load_config

    cfg = load_config(None, ["contrastive.matryoshka_dims=[64, 128]"])
    assert cfg.contrastive.matryoshka_dims == (64, 128)
    for bad in ("[128, 64]", "[0, 8]", "[8, 8]", "[]"):
        with pytest.raises(TrainConfigError, match="must be distinct positive widths"):
            load_config(None, [f"contrastive.matryoshka_dims={bad}"])


def test_matryoshka_dims_past_the_embedding_width_is_a_config_error(tmp_path, tokenizer_dir):
    import subprocess

    from tiny_runs import cli, make_tiny_run
    root, model, corpus = make_tiny_run(tmp_path, tokenizer_dir)  # hidden size 64
    done = subprocess.run(cli(root, model, corpus, tmp_path / "out", "--set", "run.stage=simcse",
                              "--set", "contrastive.matryoshka_dims=[32, 128]"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "config error: contrastive.matryoshka_dims=[32, 128] goes past the model's embedding "
        "width 64")
