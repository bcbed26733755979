"""``model.attention: causal`` (the paper's "Uni" rows) through every stage: the objectives
run the causal forward, the exported adapter records the mode, and the encoder built from it
encodes causally unless told otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx

from conftest import WIKI1M, tiny_lora_model
from reference_oracle import needs_reference, reference_embeddings
from llm2vec_jax import LLM2Vec, load_hf_checkpoint
from llm2vec_jax.data.batches import ContrastiveBatch, Features, MNTPBatch
from llm2vec_jax.models import ModelConfig, init_model
from llm2vec_jax.train import stages
from llm2vec_jax.train.config import TrainConfigError, load_config
from llm2vec_jax.train.losses import lm_head_weight, mntp_loss


def _views(rng, rows=4, width=10, vocab=128):
    views = []
    for _ in "qd":
        mask = np.ones((rows, width), np.int32)
        for row in range(rows):
            mask[row, width - 1 - row:] = 0  # right padding of 0..rows-1 tokens
        views.append(Features(rng.integers(3, vocab, (rows, width)).astype(np.int32), mask,
                              mask.copy()))
    return ContrastiveBatch(*views)


def _info_nce(q, d, scale):
    """Closed form: mean over rows of -log softmax_j(scale * cos(q_i, d_j))[i]."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    logits = scale * q @ d.T
    logits -= logits.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits)))


def test_causal_simcse_objective_is_the_causal_forward_mean_pooled():
    graphdef, lora, frozen = tiny_lora_model(vocab_size=128, hidden_size=64,
                                             intermediate_size=96, head_dim=16)
    model = nnx.merge(graphdef, lora, frozen)
    batch = _views(np.random.default_rng(0))
    config = load_config(None, ["run.stage=simcse", "model.attention=causal"])
    loss = float(stages.objective(config)(model, batch, None)[0])

    pooled = []
    for view in batch.views:
        hidden = np.asarray(model(view.input_ids, view.attention_mask, causal=True))
        # Causal: no position sees a later one, so a changed last real token leaves every
        # earlier position's hidden state as it was.
        ids = view.input_ids.copy()
        last = view.attention_mask.sum(1) - 1
        ids[np.arange(len(ids)), last] = (ids[np.arange(len(ids)), last] + 1) % 128
        changed = np.asarray(model(ids, view.attention_mask, causal=True))
        for row, n in enumerate(last):
            np.testing.assert_array_equal(changed[row, :n], hidden[row, :n])
        m = view.attention_mask[..., None]
        pooled.append((hidden * m).sum(1) / m.sum(1))
    np.testing.assert_allclose(loss, _info_nce(*pooled, scale=20.0), rtol=1e-5)
    bidirectional = load_config(None, ["run.stage=simcse"])
    assert abs(float(stages.objective(bidirectional)(model, batch, None)[0]) - loss) > 1e-4


def test_causal_mntp_objective_scores_the_causal_forward():
    graphdef, lora, frozen = tiny_lora_model(vocab_size=128, hidden_size=64,
                                             intermediate_size=96, head_dim=16)
    model = nnx.merge(graphdef, lora, frozen)
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 128, (2, 12)).astype(np.int32)
    labels = np.full_like(ids, -100)
    labels[:, [3, 7]] = ids[:, [3, 7]]
    batch = MNTPBatch.from_labels(ids, np.ones_like(ids), labels, slots=4)
    loss = stages.objective(load_config(None, ["model.attention=causal"]))(model, batch, None)
    expected = mntp_loss(model(ids, np.ones_like(ids), causal=True), lm_head_weight(model),
                         batch.predict_positions, batch.predict_labels)
    np.testing.assert_allclose(np.asarray(loss[0]), np.asarray(expected[0]), rtol=1e-6)
    bidirectional = stages.objective(load_config(None, []))(model, batch, None)
    assert abs(float(bidirectional[0]) - float(loss[0])) > 1e-4


def test_unknown_attention_mode_is_refused():
    with pytest.raises(TrainConfigError, match="model.attention='sideways'.*causal"):
        load_config(None, ["model.attention=sideways"])


@pytest.fixture(scope="module")
def causal_simcse_run(tmp_path_factory, tokenizer_dir):
    """Two causal SimCSE steps on a tiny random model: (base checkpoint, adapter dir)."""
    from llm2vec_jax.checkpoints.hf import save_hf_checkpoint
    from llm2vec_jax.train.loop import train
    root = tmp_path_factory.mktemp("causal")
    config = ModelConfig.from_hf(tokenizer_dir / "config.json", hidden_size=32,
                                 intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                 head_dim=8)
    base = save_hf_checkpoint(init_model(config, seed=0), root / "base",
                              tokenizer_dir=tokenizer_dir)
    train(load_config(None, [
        f"model.path={base}", "model.attention=causal", "run.stage=simcse", "data.kind=file",
        f"data.path={WIKI1M}", "data.max_texts=40", "data.eval_fraction=0.1",
        "contrastive.max_length=16",
        "run.global_batch_size=4", "run.max_steps=2", "run.eval_every=2", "run.eval_batches=1",
        "run.save_every=2", "run.async_checkpointing=false", "run.progress_bar=false",
        "optimizer.learning_rate=1e-2", f"run.output_dir={root / 'simcse'}"]))
    return base, root / "simcse" / "adapter"


TEXTS = ["A man is playing a guitar.", "Two dogs run on the beach, chasing a ball."]


def test_causal_stage_exports_its_mode_and_encodes_causally(causal_simcse_run, tmp_path):
    base, adapter = causal_simcse_run
    assert json.loads((adapter / "llm2vec_jax_config.json").read_text()) == {"attention": "causal"}
    # The reference's own settings file keeps exactly its four keys (its loader rejects more).
    assert set(json.loads((adapter / "llm2vec_config.json").read_text())) == {
        "pooling_mode", "max_length", "doc_max_length", "skip_instruction"}

    saved_mode = LLM2Vec.from_pretrained(base, adapter=str(adapter))
    assert not saved_mode.bidirectional and saved_mode.model.config.causal
    causal = LLM2Vec.from_pretrained(base, adapter=str(adapter), bidirectional=False)
    bidirectional = LLM2Vec.from_pretrained(base, adapter=str(adapter), bidirectional=True)
    emb = saved_mode.encode(TEXTS)
    np.testing.assert_array_equal(emb, causal.encode(TEXTS))
    assert np.abs(emb - bidirectional.encode(TEXTS)).max() > 1e-4

    # Independent oracle: the merged model's causal forward, mean-pooled by hand.
    model = saved_mode.model
    for text, row in zip(TEXTS, emb):
        ids = np.asarray([saved_mode.tokenizer(text)["input_ids"]], np.int32)
        hidden = np.asarray(model(ids, np.ones_like(ids), causal=True))[0]
        np.testing.assert_allclose(row, hidden.mean(0), rtol=2e-5, atol=2e-6)

    # save() keeps the mode; an explicit argument still wins on load.
    out = saved_mode.save(tmp_path / "encoder")
    assert not LLM2Vec.from_pretrained(out).bidirectional
    assert LLM2Vec.from_pretrained(out, bidirectional=True).bidirectional
    # A plain base model (no mode saved anywhere) stays LLM2Vec's default.
    assert LLM2Vec.from_pretrained(base).bidirectional
    assert load_hf_checkpoint(base).config.causal  # the decoder itself is untouched


@needs_reference
def test_causal_encoder_embeds_like_the_reference_loaded_causally(causal_simcse_run, tmp_path):
    """The reference takes the attention mode at load time: ``enable_bidirectional=False``
    on the encoder we saved gives our causal embeddings."""
    base, adapter = causal_simcse_run
    encoder = LLM2Vec.from_pretrained(base, adapter=str(adapter), max_length=512)
    out = encoder.save(tmp_path / "encoder")
    texts = [["", t] for t in TEXTS]
    theirs = reference_embeddings(out, texts, bidirectional=False)
    np.testing.assert_allclose(encoder.encode(texts), theirs, atol=1e-5, rtol=0)
