"""Text sources and the MNTP data pipeline (llm2vec_jax.data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import WIKI1M, WIKITEXT

from llm2vec_jax.data import (
    ContrastiveBatch,
    Features,
    MNTPBatch,
    IGNORE_INDEX,
    MNTPBatchIterator,
    MNTPCollator,
    SourceError,
    group_texts,
    hf_source,
    predict_slots,
    set_mask_token,
    text_dir_source,
    text_file_source,
    text_source,
    tfds_source,
    tokenize_lines,
)


@pytest.fixture
def tokenizer(tokenizer_dir):
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))


# ---------------------------------------------------------------------------- sources


def test_text_file_lines_and_sharding(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text(" = Heading = \nfirst\n\n  \nsecond\nthird\n", encoding="utf-8")
    assert list(text_file_source(f)) == [" = Heading = ", "first", "second", "third"]
    # Records (blank ones included) 0..5; process p of 2 gets the indices ≡ p (mod 2).
    assert list(text_file_source(f, process_index=0, process_count=2)) == [" = Heading = ", "second"]
    assert list(text_file_source(f, process_index=1, process_count=2)) == ["first", "third"]
    assert list(text_file_source(f, skip_blank=False))[2:4] == ["", "  "]


def test_shards_partition_the_real_file():
    path = WIKITEXT
    full = list(text_file_source(path))
    shards = [list(text_file_source(path, process_index=p, process_count=3)) for p in range(3)]
    assert sorted(sum(shards, [])) == sorted(full)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1  # no blank lines in this file
    assert full[0] == " = Robert Boulter = "


def test_text_dir_sorted_stream(tmp_path):
    (tmp_path / "b.txt").write_text("b1\nb2\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("a1\n", encoding="utf-8")
    (tmp_path / "skip.json").write_text("{}", encoding="utf-8")
    assert list(text_dir_source(tmp_path)) == ["a1", "b1", "b2"]
    # Sharding numbers records across files, not within each file.
    assert list(text_dir_source(tmp_path, process_index=1, process_count=2)) == ["b1"]
    assert list(text_source("auto", tmp_path)) == ["a1", "b1", "b2"]
    assert list(text_source("auto", tmp_path / "a.txt")) == ["a1"]


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        text_file_source(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError):
        text_dir_source(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        text_source("auto", tmp_path / "missing")
    with pytest.raises(SourceError, match="no text found"):
        text_dir_source(tmp_path)  # no *.txt
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n\n", encoding="utf-8")
    with pytest.raises(SourceError, match="no text found in .*blank.txt"):
        list(text_file_source(blank))
    one = tmp_path / "one.txt"
    one.write_text("only\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"no text found .*shard 1 of 2"):
        list(text_file_source(one, process_index=1, process_count=2))
    with pytest.raises(SourceError, match="unknown text source kind 'csv'"):
        text_source("csv", one)
    with pytest.raises(SourceError, match="bad shard"):
        text_file_source(one, process_index=2, process_count=2)


def test_bundled_wiki1m_sample():
    sents = list(text_file_source(WIKI1M))
    assert len(sents) == 3000 and all(s.strip() for s in sents)
    assert list(text_file_source(WIKI1M, process_index=1, process_count=4))[:2] == [sents[1], sents[5]]


def _tiny_tfds(data_dir: Path, texts: list[str]) -> None:
    """Write a tiny array_record TFDS dataset ("tiny_text") without TensorFlow."""
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")

    class TinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            # DatasetInfo directly: dataset_info_from_configs wants a package dir of metadata.
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(
                    {"content": tfds.features.Text(), "id": tfds.features.Scalar(np.int64)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(texts)}

        def _generate_examples(self, items):
            for i, t in enumerate(items):
                yield i, {"content": t, "id": i}

    TinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_tfds_array_record_source(tmp_path):
    texts = [f"sentence {i} – ünïcödé" for i in range(10)] + ["   "]
    _tiny_tfds(tmp_path, texts)
    got = list(tfds_source("tiny_text", split="train", data_dir=tmp_path, text_field="content"))
    # TFDS shuffles examples on write; the content must survive, decoded from UTF-8 bytes.
    assert sorted(got) == sorted(texts[:10])
    shards = [list(tfds_source("tiny_text", split="train", data_dir=tmp_path,
                               text_field="content", process_index=p, process_count=3))
              for p in range(3)]
    assert sorted(sum(shards, [])) == sorted(got)
    assert list(text_source("tfds", "tiny_text", split="train[:3]", data_dir=tmp_path,
                            text_field="content")) == got[:3]
    with pytest.raises(SourceError, match="no text field 'text'"):
        list(tfds_source("tiny_text", split="train", data_dir=tmp_path))


def test_hf_datasets_source(tmp_path):
    pytest.importorskip("datasets")
    f = tmp_path / "t.txt"
    f.write_text("a\n\nb\nc\nd\n", encoding="utf-8")
    kw = dict(data_files={"train": str(f)}, cache_dir=str(tmp_path / "cache"))
    assert list(hf_source("text", split="train", **kw)) == ["a", "b", "c", "d"]
    # Same strided rule as files: records 0..4 = a, "", b, c, d.
    assert list(hf_source("text", split="train", process_index=0, process_count=2, **kw)) == ["a", "b", "d"]
    assert list(hf_source("text", split="train", streaming=True,
                          process_index=1, process_count=2, **kw)) == ["c"]
    with pytest.raises(SourceError, match="no text field 'body'"):
        list(hf_source("text", split="train", text_field="body", **kw))


def test_dataset_references(tmp_path):
    """hf:<id> is a hub dataset, sample:<name> a bundled file, anything else a local path."""
    from llm2vec_jax.data.samples import SAMPLES
    from llm2vec_jax.data.sources import DatasetUnavailableError, resolve_source

    assert resolve_source("auto", "hf:Salesforce/wikitext") == ("hf", "Salesforce/wikitext")
    assert resolve_source("hf", "hf:Salesforce/wikitext") == ("hf", "Salesforce/wikitext")
    kind, path = resolve_source("auto", "sample:wikitext")
    assert kind == "file" and path == str(WIKITEXT) and WIKITEXT.is_file()
    for name, (file, _, _) in SAMPLES.items():  # every sample ships inside the package
        assert resolve_source("file", f"sample:{name}")[1].endswith(file)
    assert resolve_source("auto", tmp_path) == ("dir", str(tmp_path))
    with pytest.raises(SourceError, match="names a hub dataset but kind is 'file'"):
        resolve_source("file", "hf:Salesforce/wikitext")
    with pytest.raises(SourceError, match="bundled sample file but kind is 'hf'"):
        resolve_source("hf", "sample:wikitext")
    with pytest.raises(ValueError, match="unknown sample 'sample:wiki'.*sample:wiki1m"):
        resolve_source("auto", "sample:wiki")
    with pytest.raises(FileNotFoundError, match="hf:<dataset id>"):
        resolve_source("auto", tmp_path / "missing.txt")
    # The bundled WikiText sample reads as the file it is.
    assert list(text_source("auto", "sample:wikitext"))[0] == " = Robert Boulter = "
    # Offline (conftest) with nothing cached: one line naming the download and the cache.
    with pytest.raises(DatasetUnavailableError,
                       match=r"hf:Salesforce/wikitext is not in the datasets cache.*"
                             r"load_dataset\('Salesforce/wikitext', 'wikitext-103-raw-v1', "
                             r"split='train'\)"):
        list(text_source("auto", "hf:Salesforce/wikitext", config="wikitext-103-raw-v1"))


def test_hub_text_dataset_through_datasets(tmp_path):
    """hf:<local dataset folder> runs the real `datasets` loader offline: data_files and the
    text column as a hub repository of plain files would (princeton-nlp/datasets-for-simcse)."""
    folder = tmp_path / "simcse-data"
    folder.mkdir()
    (folder / "wiki1m_for_simcse.txt").write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    (folder / "other.txt").write_text("not this\n", encoding="utf-8")
    texts = text_source("auto", f"hf:{folder}", data_files="wiki1m_for_simcse.txt",
                        cache_dir=str(tmp_path / "cache"))
    assert list(texts) == ["one", "two", "three"]


# ---------------------------------------------------------------------------- tokenization


def test_group_texts_matches_reference_chunking(tokenizer):
    texts = list(text_file_source(WIKITEXT))[:50]
    ex = group_texts(texts, tokenizer, 64)
    flat = [t for seq in tokenizer(texts)["input_ids"] for t in seq]
    n = len(flat) // 64
    assert ex.input_ids.shape == (n, 64) and ex.input_ids.dtype == np.int32
    np.testing.assert_array_equal(ex.input_ids.ravel(), flat[:n * 64])
    assert ex.attention_mask.all() and not ex.special_tokens_mask.any()  # SmolLM2 adds none
    # Reference quirk: a tail dropped every 1,000 (here 7) texts loses some chunks.
    assert len(group_texts(texts, tokenizer, 64, group_size=7)) < n


def test_group_texts_marks_added_special_tokens(tokenizer):
    tokenizer.add_bos_token = True  # a Llama-style tokenizer adding BOS to every text
    enc = tokenizer(["hello world", "foo"], return_special_tokens_mask=True)
    if enc["input_ids"][0][0] != tokenizer.bos_token_id:
        pytest.skip("this transformers version ignores add_bos_token on GPT2Tokenizer")
    ex = group_texts(["hello world", "foo", "bar baz"], tokenizer, 4)
    flat_ids, flat_sp = ex.input_ids.ravel(), ex.special_tokens_mask.ravel()
    np.testing.assert_array_equal(flat_sp, flat_ids == tokenizer.bos_token_id)


def test_tokenize_lines_pads_and_truncates(tokenizer):
    ex = tokenize_lines(["Hello world, it's 2024!", "", "  ", "a " * 100], tokenizer, 16)
    assert ex.input_ids.shape == (2, 16)
    np.testing.assert_array_equal(ex.input_ids[0, :11],
                                  [19556, 905, 28, 357, 506, 216, 34, 32, 34, 36, 17])
    assert (ex.input_ids[0, 11:] == tokenizer.pad_token_id).all()
    np.testing.assert_array_equal(ex.attention_mask[0], [1] * 11 + [0] * 5)
    np.testing.assert_array_equal(ex.special_tokens_mask[0], [0] * 11 + [1] * 5)
    assert ex.attention_mask[1].all()  # truncated to 16
    left = tokenize_lines(["Hello world"], tokenizer, 4, padding_side="left")
    np.testing.assert_array_equal(left.attention_mask[0], [0, 0, 1, 1])


def test_mask_token_types(tokenizer, tokenizer_dir):
    assert set_mask_token(tokenizer, "blank") == 79
    import transformers
    t = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert set_mask_token(t, "eos") == t.eos_token_id == 2
    # "mask" (the reference's added <mask> token) is refused: its id would be past the end of
    # the embedding the model was loaded with.
    t = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    n = len(t)
    for bad in ("mask", "star"):
        with pytest.raises(ValueError, match="mask_token_type"):
            set_mask_token(t, bad)
    assert len(t) == n and t.mask_token is None


def test_config_refuses_mask_token_type_mask():
    from llm2vec_jax.train.config import TrainConfigError, load_config
    with pytest.raises(TrainConfigError, match="embedding grown.*'blank'"):
        load_config(None, ["data.mask_token_type=mask"])


# ---------------------------------------------------------------------------- masking


def _batch(B=8, S=64, seed=0, special_cols=(), pad_from=None):
    rng = np.random.default_rng(seed)
    ids = rng.integers(100, 1000, size=(B, S)).astype(np.int32)
    attn = np.ones((B, S), np.int32)
    special = np.zeros((B, S), bool)
    for c in special_cols:
        special[:, c] = True
    if pad_from is not None:
        attn[:, pad_from:] = 0
        special[:, pad_from:] = True
    return ids, attn, special


def test_collator_invariants():
    ids, attn, special = _batch(B=8, S=64, special_cols=(0, 10), pad_from=50)
    col = MNTPCollator(mask_token_id=79, vocab_size=1000, mlm_probability=0.3)
    out = col(ids, attn, special, np.random.default_rng(1))
    masked_ids, labels = col.mask(ids, attn, special, np.random.default_rng(1))
    masked = labels != IGNORE_INDEX
    assert not masked[special].any()  # added special tokens and padding never masked
    np.testing.assert_array_equal(labels[masked], ids[masked])
    np.testing.assert_array_equal(out.input_ids, masked_ids)
    np.testing.assert_array_equal(out.input_ids[~masked], ids[~masked])
    np.testing.assert_array_equal(out.attention_mask, attn)
    # predict_* list, row by row, exactly the masked i >= 1, each predicted from i - 1.
    P = predict_slots(64, 0.3)
    assert out.predict_positions.shape == out.predict_labels.shape == (8, P)
    assert all(v.dtype == np.int32 for v in jax.tree.leaves(out))
    for b in range(8):
        i = np.flatnonzero(masked[b, 1:]) + 1
        k = i.size
        np.testing.assert_array_equal(out.predict_positions[b, :k], i - 1)
        np.testing.assert_array_equal(out.predict_labels[b, :k], ids[b, i])
        assert (out.predict_labels[b, k:] == IGNORE_INDEX).all()
        assert (out.predict_positions[b, k:] == 0).all()
    # Same rng seed, same batch.
    again = col(ids, attn, special, np.random.default_rng(1))
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(again)):
        np.testing.assert_array_equal(x, y)


def test_collator_statistics():
    B, S, p = 64, 256, 0.2
    ids, attn, special = _batch(B, S)
    ids[:] = 5  # so "unchanged" and "random" are distinguishable from the mask id
    col = MNTPCollator(mask_token_id=79, vocab_size=1000, mlm_probability=p)
    out_ids, labels = col.mask(ids, attn, special, np.random.default_rng(0))
    masked = labels != IGNORE_INDEX
    n = masked.sum()
    assert abs(n / (B * S) - p) < 4 * math.sqrt(p * (1 - p) / (B * S))
    to_mask = (out_ids == 79) & masked
    kept = (out_ids == 5) & masked
    rand = masked & ~to_mask & ~kept
    assert abs(to_mask.sum() / n - 0.8) < 0.03
    assert abs(kept.sum() / n - 0.1) < 0.02  # (random ids can also hit 5 or 79: 2/1000)
    assert abs(rand.sum() / n - 0.1) < 0.02
    full_ids, full_labels = MNTPCollator(79, 1000, mlm_probability=p, all_mask=True).mask(
        ids, attn, special, np.random.default_rng(0))
    fm = full_labels != IGNORE_INDEX
    assert (full_ids[fm] == 79).all() and (full_ids[~fm] == 5).all()


def test_predict_slots_and_overflow_bucket():
    assert predict_slots(512, 0.2) % 8 == 0
    assert predict_slots(512, 0.2) >= 512 * 0.2 + 6 * math.sqrt(512 * 0.2 * 0.8)
    assert predict_slots(4, 0.5) == 4  # capped at S
    # A row scoring more tokens than the slots (a collator told p=0.01, masking at p=1)
    # widens the slots by doubling, up to S: no masked token is dropped.
    ids, attn, special = _batch(B=4, S=128)
    col = MNTPCollator(79, 1000, mlm_probability=1.0)
    col.slots = lambda S: predict_slots(S, 0.01)
    out = col(ids, attn, special, np.random.default_rng(0))
    assert (out.predict_labels != IGNORE_INDEX).sum() == 4 * 127  # all but position 0
    assert out.predict_positions.shape == (4, 128)


def test_shard_batches_concatenate_by_rows():
    """Row-local predict positions need no offset when shards' batches are joined; slots
    are padded to the widest shard."""
    a = MNTPBatch(np.ones((2, 5), np.int32), np.ones((2, 5), np.int32),
                  np.array([[0, 3], [1, 0]], np.int32),
                  np.array([[7, 8], [9, IGNORE_INDEX]], np.int32))
    b = MNTPBatch(np.zeros((1, 5), np.int32), np.ones((1, 5), np.int32),
                  np.array([[2, 0, 4]], np.int32), np.array([[5, IGNORE_INDEX, 6]], np.int32))
    both = MNTPBatch.concat([a, b])
    np.testing.assert_array_equal(both.predict_positions, [[0, 3, 0], [1, 0, 0], [2, 0, 4]])
    np.testing.assert_array_equal(both.predict_labels,
                                  [[7, 8, -100], [9, -100, -100], [5, -100, 6]])
    np.testing.assert_array_equal(both.input_ids[:, 0], [1, 1, 0])
    view = Features(np.ones((2, 4), np.int32), np.ones((2, 4), np.int32), np.ones((2, 4), np.int32))
    wide = Features(*(np.ones((2, 6), np.int32) for _ in range(3)))
    joined = ContrastiveBatch.concat([ContrastiveBatch(view, view), ContrastiveBatch(view, view)])
    assert joined.q.input_ids.shape == (4, 4) and joined.n is None
    with pytest.raises(ValueError, match="pad to max_length"):
        ContrastiveBatch.concat([ContrastiveBatch(view, view), ContrastiveBatch(wide, wide)])


# ---------------------------------------------------------------------------- iterator


def _examples(tokenizer, S=32):
    return group_texts(list(text_file_source(WIKITEXT))[:40], tokenizer, S)


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_iterator_resume_is_exact(tokenizer):
    ex = _examples(tokenizer)
    col = MNTPCollator.from_tokenizer(tokenizer, "blank")
    make = lambda: MNTPBatchIterator(ex, col, 8, seed=3)
    per_epoch = len(ex) // 8
    assert per_epoch >= 3
    ref = [next(it) for it in [make()] for _ in range(2 * per_epoch + 3)]
    # Interrupt at several points (mid-epoch and at an epoch boundary), save as JSON, resume.
    for stop in (1, per_epoch, per_epoch + 2):
        it = make()
        for _ in range(stop):
            next(it)
        state = json.loads(json.dumps(it.get_state()))
        fresh = make()
        fresh.set_state(state)
        for k in range(stop, len(ref)):
            _same(next(fresh), ref[k])
    # Epochs reshuffle; every sequence appears at most once per epoch.
    first = np.concatenate([b.input_ids for b in ref[:per_epoch]])
    assert first.shape == (per_epoch * 8, 32)
    it = make()
    with pytest.raises(ValueError, match="num_examples"):
        it.set_state({**state, "num_examples": len(ex) + 1})


def test_iterator_epochs_and_order(tokenizer):
    ex = _examples(tokenizer)
    col = MNTPCollator(79, len(tokenizer), mlm_probability=0.0)  # no masking: see raw rows
    it = MNTPBatchIterator(ex, col, 4, shuffle=False, num_epochs=2)
    batches = list(it)
    per_epoch = len(ex) // 4
    assert len(batches) == 2 * per_epoch
    np.testing.assert_array_equal(batches[0].input_ids, ex.input_ids[:4])
    np.testing.assert_array_equal(batches[per_epoch].input_ids, ex.input_ids[:4])
    shuffled = MNTPBatchIterator(ex, col, 4, seed=0)
    rows = np.concatenate([next(shuffled).input_ids for _ in range(per_epoch)])
    seen = {r.tobytes() for r in rows}
    assert len(seen) == per_epoch * 4  # a permutation: no repeats within an epoch
    assert not np.array_equal(rows, ex.input_ids[:per_epoch * 4])
    with pytest.raises(ValueError, match="only"):
        MNTPBatchIterator(ex, col, len(ex) + 1)


def test_mntp_batches_end_to_end(tokenizer):
    texts = text_file_source(WIKITEXT, process_index=1, process_count=4)
    col = MNTPCollator.from_tokenizer(tokenizer, "blank")
    it = MNTPBatchIterator(group_texts(texts, tokenizer, 128), col, 4, process_index=1)
    b = next(it)
    assert b.input_ids.shape == (4, 128)
    assert b.predict_positions.shape == (4, predict_slots(128, 0.2))
    assert (b.input_ids == 79).any()
    lines = tokenize_lines(["one line", "another line here"], tokenizer, 8)
    b = next(MNTPBatchIterator(lines, MNTPCollator.from_tokenizer(tokenizer, "blank",
                                                                 all_mask=True), 2))
    assert b.attention_mask.sum() == len(tokenizer("one line")["input_ids"]) + \
        len(tokenizer("another line here")["input_ids"])
