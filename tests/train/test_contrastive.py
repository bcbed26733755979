"""SimCSE / supervised contrastive training: data (against the reference fixtures), GradCache
(against the plain step) and contrastive training end to end (tiny model, then real SmolLM2)."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
import yaml
from flax import nnx

from conftest import NLI, REFERENCE, REPO, WIKI1M, tiny_lora_model
from llm2vec_jax.data.batches import ContrastiveBatch, Features, real_tokens
from llm2vec_jax.data.contrastive import (SEPARATOR, SimCSEBatchIterator,
                                          SupervisedBatchIterator, load_instructions,
                                          read_triples, simcse_features, split_held_out)
from llm2vec_jax.models.pooling import pool
from llm2vec_jax import load_hf_checkpoint
from llm2vec_jax.models import ModelConfig, init_model
from llm2vec_jax.train.config import load_config
from llm2vec_jax.train.grad_cache import grad_cache_objective
from llm2vec_jax.train.losses import same_text_as_positive
from llm2vec_jax.train.steps import contrastive_objective

CONFIGS = REPO / "configs"
E5_INSTRUCTIONS = CONFIGS / "supervised" / "e5_instructions.yaml"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.fixture(scope="module")
def fx():
    return dict(np.load(REFERENCE / "reference_fixtures.npz"))


@pytest.fixture(scope="module")
def texts():
    return json.loads((REFERENCE / "reference_fixtures.json").read_text())["texts"]


def _close(a, b, tol=2e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b))), np.max(np.abs(a - b))


# ---------------------------------------------------------------------------- SimCSE data


def test_simcse_features_reproduce_reference_collator(tokenizer, fx, texts):
    """compat mode: the reference's left-padded batch, and mean pooling over every column."""
    feats = simcse_features(tokenizer, texts, max_length=128, compat_pool_all_positions=True)
    np.testing.assert_array_equal(feats.q.input_ids, fx["hidden/input_ids"])
    np.testing.assert_array_equal(feats.q.attention_mask, fx["simcse_path/attention_mask"])
    for k in ("input_ids", "attention_mask", "embed_mask"):
        np.testing.assert_array_equal(getattr(feats.q, k), getattr(feats.d, k))
    pooled = pool(fx["hidden/bidirectional"], feats.q.attention_mask, feats.q.embed_mask,
                  "mean")
    _close(pooled, fx["simcse_path/pooled_no_separator"])


def test_simcse_features_default_pools_real_tokens_like_encode(tokenizer, fx, texts):
    """Default: pool what encode() pools (real tokens), whatever the padding."""
    feats = simcse_features(tokenizer, texts, max_length=128)
    np.testing.assert_array_equal(feats.q.embed_mask, fx["feat/plain/embed_mask"])
    pooled = pool(fx["hidden/bidirectional"], feats.q.attention_mask, feats.q.embed_mask,
                  "mean")
    _close(pooled, fx["enc/mean/plain"])
    assert not np.allclose(pooled, fx["simcse_path/pooled_no_separator"], atol=1e-3)
    # Padded to max_length (one compiled shape), the pooled rows do not move.
    wide = simcse_features(tokenizer, texts, max_length=128, pad_to=40)
    assert wide.q.input_ids.shape == (4, 40)
    np.testing.assert_array_equal(wide.q.embed_mask[:, -29:], feats.q.embed_mask)
    assert wide.q.embed_mask[:, :11].sum() == 0


def test_simcse_compat_rejects_weighted_mean(tokenizer):
    with pytest.raises(ValueError, match="weighted_mean"):
        SimCSEBatchIterator(["a", "b"], tokenizer, 2, max_length=8, pooling="weighted_mean",
                            compat_pool_all_positions=True)


def test_simcse_iterator_shuffles_per_epoch_and_resumes(tokenizer):
    sentences = [line.strip() for line in WIKI1M.read_text().splitlines()[:22]]
    make = functools.partial(SimCSEBatchIterator, sentences, tokenizer, 4, max_length=24, seed=3)
    it = make()
    assert it.batches_per_epoch == 5
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    rest = [next(it) for _ in range(5)]  # crosses into epoch 1
    assert it.get_state()["epoch"] == 1
    resumed = make()
    resumed.set_state(json.loads(json.dumps(state)))
    for a, b in zip(rest, [next(resumed) for _ in range(5)]):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)
    assert all(b.q.input_ids.shape[0] == 4 and b.q.input_ids.shape[1] in (16, 24)
               for b in first + rest)
    epoch1 = make()
    epoch1.epoch = 1
    assert list(make()._epoch_order()) != list(epoch1._epoch_order())
    with pytest.raises(ValueError, match="batch_size"):
        SimCSEBatchIterator(sentences, tokenizer, 2, max_length=24).set_state(state)


def test_batch_widths_bucket_padding_and_embeddings_do_not_depend_on_it(tokenizer):
    """Default: each batch is padded to the smallest bucket holding its longest row;
    "max_length" and compat ("longest") as documented. Padding is only padding: a batch
    embeds the same at its bucket width and at max_length (tiny random model)."""
    from llm2vec_jax.text.packing import default_buckets
    sentences = [line.strip() for line in WIKI1M.read_text().splitlines()[:64]]
    buckets = default_buckets(128)
    bucketed = SimCSEBatchIterator(sentences, tokenizer, 8, max_length=128, shuffle=False)
    full = SimCSEBatchIterator(sentences, tokenizer, 8, max_length=128, shuffle=False,
                               padding="max_length")
    compat = SimCSEBatchIterator(sentences, tokenizer, 8, max_length=128, shuffle=False,
                                 compat_pool_all_positions=True)
    widths = []
    for _ in range(8):
        b, f, c = next(bucketed), next(full), next(compat)
        longest = int(c.q.attention_mask.sum(1).max())
        width = b.q.input_ids.shape[1]
        assert c.q.input_ids.shape[1] == longest and f.q.input_ids.shape[1] == 128
        assert width in buckets and width >= longest
        assert width == min(x for x in buckets if x >= longest)
        widths.append(width)
        # The same rows, only more left padding.
        np.testing.assert_array_equal(f.q.attention_mask[:, -width:], b.q.attention_mask)
        np.testing.assert_array_equal(f.q.input_ids[:, -width:], b.q.input_ids)
    assert max(widths) < 128  # wiki sentences are short: max_length padding would be waste
    with pytest.raises(ValueError, match="padding"):
        SimCSEBatchIterator(sentences, tokenizer, 8, max_length=128, padding="auto")

    config = ModelConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    model = init_model(config, seed=0)
    from llm2vec_jax.train.steps import embed
    emb_b = embed(model, b.q, None, "mean")
    emb_f = embed(model, f.q, None, "mean")
    np.testing.assert_allclose(np.asarray(emb_b), np.asarray(emb_f), atol=2e-5, rtol=0)


def _wiki_with_copies(n: int) -> list[str]:
    """n Wiki1M sentences, the 3rd and 6th repeated further on (SimCSE's false negatives)."""
    sentences = [line.strip() for line in WIKI1M.read_text().splitlines()[:n]]
    sentences[n - 1], sentences[n - 3] = sentences[2], sentences[5]
    return sentences


def test_packed_simcse_batch_holds_each_sentence_once_in_its_slot(tokenizer):
    """Packing puts every sentence, whole and positioned from 0, in exactly one segment of a
    row, and ``slots`` points at it; the row count divides by ``rows_multiple``; far fewer
    positions are padding than one sentence a row; ``duplicates`` equals the on-device
    false-negative mask of the same batch padded."""
    from llm2vec_jax.data.contrastive import packed_simcse_features, simcse_features
    from llm2vec_jax.text.packing import segments_per_row
    from llm2vec_jax.text.tokenize import tokenize_strings
    from llm2vec_jax.train.losses import same_text_as_positive

    sentences = _wiki_with_copies(32)
    packed = packed_simcse_features(tokenizer, sentences, max_length=64, rows_multiple=8)
    padded = simcse_features(tokenizer, sentences, max_length=64, padding="bucket")
    view = packed.q
    rows, width = view.input_ids.shape
    assert width == 64 and rows % 8 == 0 and rows < len(sentences)
    per_row = segments_per_row(width)
    expected = tokenize_strings(tokenizer, [SEPARATOR + s for s in sentences], max_length=64)
    assert len(set(view.slots.tolist())) == len(sentences)  # one slot per sentence
    for text, slot in zip(expected, view.slots):
        row, segment = divmod(int(slot), per_row)
        where = view.attention_mask[row] == segment + 1
        np.testing.assert_array_equal(view.input_ids[row][where], text.input_ids)
        np.testing.assert_array_equal(view.positions[row][where], np.arange(len(text)))
        assert view.embed_mask[row][where].sum() == text.n_pooled
    real = sum(len(text) for text in expected)
    assert view.real_tokens() == padded.q.real_tokens() == real
    assert real / view.attention_mask.size > 1.5 * real / padded.q.attention_mask.size
    on_device = same_text_as_positive(padded.d.input_ids, padded.d.attention_mask,
                                      [padded.d.input_ids], [padded.d.attention_mask])
    np.testing.assert_array_equal(packed.duplicates, np.asarray(on_device))
    assert packed.duplicates.sum() == 4  # two copies, each marked from both sides


@pytest.mark.parametrize("causal", [False, True])
def test_packed_simcse_loss_and_gradients_equal_padded(tokenizer, causal):
    """The SimCSE objective without dropout (equal inputs must give equal outputs) on packed
    rows equals it on one sentence a row: loss and LoRA gradients, false negatives masked."""
    from llm2vec_jax.data.contrastive import packed_simcse_features, simcse_features

    graphdef, lora, frozen = tiny_lora_model(vocab_size=len(tokenizer), hidden_size=64,
                                             intermediate_size=96, head_dim=16)
    sentences = _wiki_with_copies(16)
    batches = {"padded": simcse_features(tokenizer, sentences, max_length=64, padding="bucket"),
               "packed": packed_simcse_features(tokenizer, sentences, max_length=64,
                                                rows_multiple=4)}
    results = {}
    for name, batch in batches.items():
        def loss(lora):
            return contrastive_objective(nnx.merge(graphdef, lora, frozen), batch, None,
                                         scale=20.0, causal=causal)[0]
        results[name] = jax.value_and_grad(loss)(lora)
    (loss_padded, padded), (loss_packed, packed) = results["padded"], results["packed"]
    np.testing.assert_allclose(loss_packed, loss_padded, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(padded), jax.tree.leaves(packed)):
        rel = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
        assert rel <= 1e-5, (jax.tree_util.keystr(path), rel)


# ---------------------------------------------------------------------------- supervised data


def _nli_jsonl(path, n_per_dataset=24):
    """Short NLI triplets of the bundled sample (no text truncated at 64 tokens), alternately
    labelled as two datasets."""
    records = [json.loads(line) for line in NLI.read_text(encoding="utf-8").splitlines()]
    short = [r for r in records
             if max(len(r[k].split()) for k in ("query", "positive", "negative")) <= 20]
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(short[:2 * n_per_dataset]):
            f.write(json.dumps({"query": r["query"], "positive": r["positive"],
                                "negative": r["negative"],
                                "dataset": ["allnli", "squad"][i % 2]}) + "\n")
    return path


def test_supervised_records_from_a_hub_dataset(tmp_path):
    """hf: triplets through `datasets` (a local dataset folder, offline): columns renamed to
    query/positive/negative, dataset from its column or the configured name."""
    from llm2vec_jax.data.contrastive import read_hub_triples
    folder = tmp_path / "all-nli"
    folder.mkdir()
    rows = [{"anchor": f"premise {i}", "positive": f"entailed {i}", "negative": f"contra {i}"}
            for i in range(5)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = read_hub_triples(str(folder), columns=("anchor", "positive", "negative"),
                               dataset_name="allnli", max_records=4)
    assert records == [{"query": f"premise {i}", "positive": f"entailed {i}",
                        "negative": f"contra {i}", "dataset": "allnli"} for i in range(4)]
    pairs = read_hub_triples(str(folder), columns=("anchor", "positive"))
    assert pairs[0] == {"query": "premise 0", "positive": "entailed 0", "dataset": "all-nli"}
    with pytest.raises(ValueError, match=r"no column\(s\) \['query'\].*set data.columns"):
        read_hub_triples(str(folder))
    # The bundled sample: what the E5 table's allnli instructions are for.
    nli = read_triples(NLI)
    assert len(nli) == 1000 and {r["dataset"] for r in nli} == {"allnli"}
    assert all(r["negative"] for r in nli)


def test_supervised_tables_and_nli_jsonl_read_as_records(tmp_path):
    """The layouts users have: our NLI TSV (premise, entailment, contradiction), SimCSE's
    CSV (sent0,sent1,hard_neg; quoted commas) and SNLI's labelled JSONL pairs."""
    (tmp_path / "triplets.tsv").write_text(
        "source\tpremise\tentailment\tcontradiction\n"
        'snli\tA "quoted" man.\tA man.\tA woman.\n\nmnli\tP2\tE2\tC2\n', encoding="utf-8")
    tsv = read_triples(tmp_path / "triplets.tsv", dataset_name="allnli")
    assert tsv == [{"query": 'A "quoted" man.', "positive": "A man.", "negative": "A woman.",
                    "dataset": "allnli"},
                   {"query": "P2", "positive": "E2", "negative": "C2", "dataset": "allnli"}]
    (tmp_path / "nli_for_simcse.csv").write_text(
        'sent0,sent1,hard_neg\n"One, two.",Two.,Three.\n', encoding="utf-8")
    assert read_triples(tmp_path / "nli_for_simcse.csv") == [
        {"query": "One, two.", "positive": "Two.", "negative": "Three.",
         "dataset": "nli_for_simcse"}]
    snli = [("P", "E1", "entailment"), ("P", "N", "neutral"), ("P", "C", "contradiction"),
            ("P", "E2", "entailment"), ("Q", "C", "contradiction"), ("R", "E", "entailment")]
    (tmp_path / "snli.jsonl").write_text("".join(
        json.dumps({"sentence1": a, "sentence2": b, "gold_label": label}) + "\n"
        for a, b, label in snli), encoding="utf-8")
    assert read_triples(tmp_path / "snli.jsonl") == [  # Q has no entailment: no record
        {"query": "P", "positive": "E1", "negative": "C", "dataset": "snli"},
        {"query": "R", "positive": "E", "dataset": "snli"}]
    # A directory holds any mix; a table without query/positive columns is named.
    assert len(read_triples(tmp_path)) == 2 + 1 + 2
    (tmp_path / "bad.tsv").write_text("a\tb\nx\ty\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv: no query/positive fields.*premise"):
        read_triples(tmp_path / "bad.tsv")


def test_e5_instruction_table():
    table = load_instructions(E5_INSTRUCTIONS)
    assert len(table) == 14
    assert table["squad"] == "Retrieve Wikipedia passages that answer the question"
    assert table["allnli"][1] == "Retrieve semantically similar text"


def test_supervised_batches_are_task_homogeneous_with_reference_strings(tokenizer, tmp_path):
    records = read_triples(_nli_jsonl(tmp_path / "pairs.jsonl"))
    table = load_instructions(E5_INSTRUCTIONS)
    train, held = split_held_out(records, 0.25)
    assert len(train) == 36 and len(held) == 12
    assert {r["dataset"] for r in held} == {"allnli", "squad"}
    # Two processes pad to max_length (what the training loop asks for): one global width.
    make = functools.partial(SupervisedBatchIterator, train, tokenizer, 8, instructions=table,
                             max_length=64, seed=1, process_count=2, padding="max_length")
    single = next(SupervisedBatchIterator(train, tokenizer, 8, instructions=table, max_length=64,
                                          seed=1))
    widths = {v.input_ids.shape[1] for v in single.views}
    longest = max(int(v.attention_mask.sum(1).max()) for v in single.views)
    from llm2vec_jax.text.packing import default_buckets
    assert len(widths) == 1 and widths.pop() == min(b for b in default_buckets(64) if b >= longest)
    p0, p1 = make(process_index=0), make(process_index=1)
    assert p0.batches_per_epoch == 4  # 18 records per dataset -> 2 full batches of 8 each
    plan = p0.epoch_plan()
    assert sorted(name for name, _ in plan) == ["allnli", "allnli", "squad", "squad"]
    by_query = {r["query"]: r for r in train}
    for step in range(4):
        b0, b1 = next(p0), next(p1)
        name = plan[step][0]
        assert b0.q.input_ids.shape == (4, 64) and b0.n is not None
        for b in (b0, b1):
            for row in range(4):
                ids = b.q.input_ids[row][b.q.attention_mask[row] == 1]
                pooled = b.q.input_ids[row][b.q.embed_mask[row] == 1]
                text, query = tokenizer.decode(ids), tokenizer.decode(pooled)
                # The pooled count is the query's own token count; in context its first
                # token usually carries the space after "; " (the reference's count-based
                # mask), unless the query starts with a digit (SmolLM2 splits digits off).
                record = by_query[query.strip()]
                assert record["dataset"] == name  # the whole global batch is one dataset
                prefix = text[:len(text) - len(query)]
                options = [table[name]] if isinstance(table[name], str) else table[name]
                assert text.endswith(query) and prefix.rstrip(" ") in [o + ";" for o in options]
                assert prefix.endswith(";") != query.strip()[0].isdigit()
                # Positives and negatives: no instruction, every real token pooled.
                np.testing.assert_array_equal(b.d.embed_mask[row], b.d.attention_mask[row])
                assert tokenizer.decode(b.d.input_ids[row][b.d.embed_mask[row] == 1]) \
                    == record["positive"]
        assert not set(map(tuple, b0.q.input_ids)) & set(map(tuple, b1.q.input_ids))
    # Reference alternation for list instructions: record i of a dataset gets instr[i % 2].
    assert p0.datasets["allnli"][0][0].startswith(table["allnli"][0] + "; " + SEPARATOR)
    assert p0.datasets["allnli"][1][0].startswith(table["allnli"][1] + "; " + SEPARATOR)
    # Resume mid-epoch.
    fresh = make(process_index=0)
    fresh.set_state({"epoch": 0, "position": 2})
    again = make(process_index=0)
    for _ in range(2):
        next(again)
    np.testing.assert_array_equal(next(fresh).q.input_ids, next(again).q.input_ids)
    with pytest.raises(ValueError, match="no instruction"):
        SupervisedBatchIterator(train, tokenizer, 8, instructions={"squad": "x"}, max_length=64)


@pytest.mark.parametrize("causal", [False, True])
def test_packed_supervised_batch_equals_padded(tokenizer, tmp_path, causal):
    """A supervised batch packed (query, positive and negative texts together, encoded once)
    gives the padded batch's loss and LoRA gradients (no dropout: equal inputs, equal
    outputs), masks the same false negatives (a positive repeated as another row's
    positive and hard negative), counts each real token once, and is far denser."""
    records = [r for r in read_triples(_nli_jsonl(tmp_path / "pairs.jsonl"))
               if r["dataset"] == "allnli"][:8]
    records[5]["positive"] = records[6]["negative"] = records[2]["positive"]
    make = functools.partial(SupervisedBatchIterator, records, tokenizer, 8,
                             instructions=load_instructions(E5_INSTRUCTIONS), max_length=64,
                             shuffle=False)
    padded, packed = next(make()), next(make(packed_rows_multiple=4))
    assert packed.shared_rows and packed.q.input_ids.shape[0] % 4 == 0
    expected = np.asarray(same_text_as_positive(
        padded.d.input_ids, padded.d.attention_mask, [padded.d.input_ids, padded.n.input_ids],
        [padded.d.attention_mask, padded.n.attention_mask]))
    assert expected.sum() == 4  # rows 2 and 5 see each other's positive, and row 6's negative
    np.testing.assert_array_equal(packed.duplicates, expected)
    assert real_tokens(packed) == real_tokens(padded)
    assert len(packed.token_ids()) == 1
    assert packed.q.input_ids.size < 0.6 * sum(ids.size for ids in padded.token_ids())

    graphdef, lora, frozen = tiny_lora_model(vocab_size=len(tokenizer), hidden_size=64,
                                             intermediate_size=96, head_dim=16)
    results = []
    for batch in (padded, packed):
        def loss(lora):
            return contrastive_objective(nnx.merge(graphdef, lora, frozen), batch, None,
                                         scale=50.0, causal=causal)[0]
        results.append(jax.value_and_grad(loss)(lora))
    (loss_padded, grads_padded), (loss_packed, grads_packed) = results
    np.testing.assert_allclose(loss_packed, loss_padded, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_padded),
                            jax.tree.leaves(grads_packed)):
        rel = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
        assert rel <= 1e-5, (jax.tree_util.keystr(path), rel)
    with pytest.raises(ValueError, match="GradCache chunks one text a row"):
        grad_cache_objective(nnx.merge(graphdef, lora, frozen), packed, None, scale=50.0,
                             chunk=4)


# ---------------------------------------------------------------------------- GradCache


@pytest.mark.parametrize("causal", [False, True])
def test_grad_cache_gradients_equal_plain_step(causal):
    """Batch 8 in chunks of 2, attention + LoRA dropout on, hard negatives, either attention
    mode: same loss and LoRA gradients as the one-pass objective."""
    graphdef, lora, frozen = tiny_lora_model(vocab_size=128, hidden_size=64,
                                             intermediate_size=96, head_dim=16)
    rng = np.random.default_rng(0)
    views = []
    for _ in "qdn":
        mask = np.ones((8, 12), np.int32)
        for row in range(8):
            mask[row, :row % 5] = 0
        emb = mask.copy()
        emb[:, -12:-9] = 0  # an "instruction" prefix that is attended but not pooled
        views.append(Features(rng.integers(3, 128, (8, 12)).astype(np.int32), mask, emb))
    batch = ContrastiveBatch(*views)
    key = jax.random.key(7)

    def value_and_grad(objective):
        def loss(lora, key):
            return objective(nnx.merge(graphdef, lora, frozen), batch, key)[0]
        return jax.jit(jax.value_and_grad(loss))

    plain_fn = value_and_grad(functools.partial(contrastive_objective, scale=20.0,
                                                causal=causal))
    plain_loss, plain = plain_fn(lora, key)
    cached_loss, cached = value_and_grad(
        functools.partial(grad_cache_objective, scale=20.0, chunk=2, causal=causal))(lora, key)
    np.testing.assert_allclose(cached_loss, plain_loss, rtol=1e-6)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(plain), jax.tree.leaves(cached)):
        rel = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
        assert rel <= 1e-5, (jax.tree_util.keystr(path), rel)
    # Dropout really is on: another key changes the loss.
    other = plain_fn(lora, jax.random.key(8))[0]
    assert abs(float(other) - float(plain_loss)) > 1e-4


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer_dir):
    """A random 2-layer model with SmolLM2's vocabulary and tokenizer, as an HF checkpoint."""
    from llm2vec_jax.checkpoints.hf import save_hf_checkpoint
    config = ModelConfig.from_hf(tokenizer_dir / "config.json", hidden_size=32,
                                 intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                 head_dim=8)
    out = tmp_path_factory.mktemp("tiny") / "hf"
    return save_hf_checkpoint(init_model(config, seed=0), out, tokenizer_dir=tokenizer_dir)


def _config(tmp_path, checkpoint, name, overrides=()):
    base = [f"model.path={checkpoint}", "run.stage=simcse", "data.kind=file",
            f"data.path={WIKI1M}", "data.max_texts=80", "contrastive.max_length=16",
            "run.global_batch_size=4", "run.max_steps=4", "run.log_every=1",
            "run.eval_every=4", "run.eval_batches=1", "run.save_every=2",
            "run.async_checkpointing=false", "run.progress_bar=false",
            "optimizer.schedule=constant", "optimizer.learning_rate=1e-3",
            f"run.output_dir={tmp_path / name}"]
    return load_config(None, base + list(overrides))


def _adapter_arrays(directory):
    from safetensors.numpy import load_file
    return load_file(os.path.join(directory, "adapter_model.safetensors"))


def test_train_simcse_end_to_end_resumes_and_exports(tiny_checkpoint, tmp_path):
    from llm2vec_jax.checkpoints.peft import load_peft_adapter
    from llm2vec_jax.lora import get_adapter
    from llm2vec_jax.train.loop import train

    straight = train(_config(tmp_path, tiny_checkpoint, "straight"))
    assert np.isfinite(straight["loss"]) and np.isfinite(straight["eval_loss"])
    # Interrupted after 2 steps, then resumed from the checkpoint to step 4.
    train(_config(tmp_path, tiny_checkpoint, "resumed", ["run.max_steps=2"]))
    resumed = train(_config(tmp_path, tiny_checkpoint, "resumed"))
    np.testing.assert_allclose(resumed["loss"], straight["loss"], rtol=1e-5)
    a = _adapter_arrays(tmp_path / "straight" / "adapter")
    b = _adapter_arrays(tmp_path / "resumed" / "adapter")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)
    adapter_dir = tmp_path / "straight" / "adapter"
    model = load_hf_checkpoint(tiny_checkpoint)
    load_peft_adapter(model, adapter_dir)
    assert any(float(jnp.abs(b_).max()) > 0 for _, b_ in get_adapter(model).arrays.values())
    saved = json.loads((adapter_dir / "llm2vec_config.json").read_text())
    assert saved["max_length"] == 16 and saved["pooling_mode"] == "mean"
    steps = [json.loads(line) for line in open(tmp_path / "straight" / "metrics.jsonl")]
    assert [s["step"] for s in steps if s["split"] == "train"] == [1, 2, 3, 4]


def test_simcse_trajectory_bench_merges_each_checkpoint_and_their_mean(tiny_checkpoint, tmp_path):
    """bench/simcse_trajectory.py: the last checkpoint merged is the exported adapter merged
    (read back from its PEFT files), and two checkpoints give base + the mean of the deltas
    each gives alone."""
    import sys
    sys.path.insert(0, str(REPO / "bench"))
    import simcse_trajectory
    from llm2vec_jax.checkpoints.merged import load_merged
    from llm2vec_jax.train.loop import train

    train(_config(tmp_path, tiny_checkpoint, "run"))
    stage = simcse_trajectory.read_stage(tmp_path / "run")
    assert stage["steps"] == [2, 4]
    loras = [simcse_trajectory.checkpoint_lora(tmp_path / "run" / "checkpoints" / str(s))
             for s in stage["steps"]]

    def weights(model):
        return {p: np.asarray(getattr(model.layers, p)[...]) for p in stage["lora_config"].targets}

    base = weights(load_hf_checkpoint(tiny_checkpoint))
    second, last = (weights(simcse_trajectory.merged_model(stage, [lora])[1]) for lora in loras)
    exported = weights(load_merged(tiny_checkpoint, [tmp_path / "run" / "adapter"])[1])
    mean = weights(simcse_trajectory.merged_model(stage, loras)[1])
    for p in base:
        np.testing.assert_array_equal(last[p], exported[p])  # the same arrays, merged alike
        # float32: two rounded adds to weights under 0.1 in size err by ~1e-8; the two
        # checkpoints' deltas differ by far more (asserted), so a wrong average fails.
        want = base[p] + ((second[p] - base[p]) + (last[p] - base[p])) / 2
        np.testing.assert_allclose(mean[p], want, rtol=0, atol=1e-7)
        assert np.abs(second[p] - last[p]).max() > 1e-4, p


def test_train_supervised_grad_cache_end_to_end(tiny_checkpoint, tmp_path):
    from llm2vec_jax.train.loop import train
    data = _nli_jsonl(tmp_path / "pairs.jsonl", n_per_dataset=16)
    config = _config(tmp_path, tiny_checkpoint, "supervised", [
        "run.stage=supervised", "data.kind=auto", f"data.path={data}", "data.eval_fraction=0.5",
        f"contrastive.instructions={E5_INSTRUCTIONS}", "contrastive.scale=50",
        "contrastive.dropout=0.0", "contrastive.grad_cache_chunk=2", "run.max_steps=2",
        "run.eval_every=2"])
    metrics = train(config)
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["eval_loss"])
    assert os.path.isfile(tmp_path / "supervised" / "adapter" / "adapter_model.safetensors")


def test_contrastive_configs_load():
    names = {"simcse": ["smollm2", "sheared-llama-1.3b", "llama2-7b", "mistral-7b", "llama3-8b",
                        "llama3.1-8b"], "supervised": ["smollm2", "llama3-8b"]}
    for stage, models in names.items():
        for name in models:
            config = load_config(os.path.join(CONFIGS, stage, f"{name}.yaml"))
            assert config.run.stage == stage
            if stage == "simcse":
                assert config.contrastive.scale == 20.0 and config.contrastive.dropout == 0.3
            else:
                assert config.contrastive.scale == 50.0
                assert config.optimizer.learning_rate == 2e-4
            if name != "smollm2":
                assert config.model.adapter == f"outputs/{name}-mntp/adapter"
                assert config.run.max_steps == 1000
                if stage == "simcse":
                    assert config.optimizer.learning_rate == 3e-5
                    assert config.run.global_batch_size == 128
                    assert config.contrastive.max_length == 128
                else:
                    assert config.optimizer.warmup_steps == 300
                mntp = yaml.safe_load(open(os.path.join(CONFIGS, "mntp", f"{name}.yaml")))
                assert mntp["model"]["path"] == config.model.path
                assert mntp["run"]["output_dir"] + "/adapter" == config.model.adapter


@pytest.mark.slow
def test_smollm2_simcse_short_run(smollm2_dir, tmp_path):
    from llm2vec_jax.train.loop import train
    config = load_config(None, [
        f"model.path={smollm2_dir}", "run.stage=simcse", "data.kind=file",
        f"data.path={WIKI1M}", "data.max_texts=128", "contrastive.max_length=32",
        "run.global_batch_size=4", "run.max_steps=2", "run.log_every=1", "run.eval_every=2",
        "run.eval_batches=1", "run.save_every=2", "run.async_checkpointing=false",
        "run.progress_bar=false", f"run.output_dir={tmp_path / 'smollm2'}"])
    metrics = train(config)
    # Untrained LoRA on a real model: the two dropout views already agree far more than
    # chance (log 4 = 1.39 for 4 rows), and the numbers are finite.
    assert np.isfinite(metrics["loss"]) and metrics["loss"] < 1.39
    assert np.isfinite(metrics["eval_loss"])
