"""Word tasks: the linear probe, span F1, the CoNLL-U reader and ``evaluate word``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm2vec_jax import evaluate as cli
from llm2vec_jax.word_probe import ProbeConfig, train_probe
from llm2vec_jax.word_tasks import (TaggedSentence, WordTaskError, bio_spans, load_word_task,
                                    read_conllu, span_f1)


def _clusters(n, k=5, dim=16, seed=0, spread=8.0):
    rng = np.random.default_rng(seed)
    centers = spread * rng.standard_normal((k, dim))
    y = rng.integers(0, k, n)
    return (centers[y] + rng.standard_normal((n, dim))).astype(np.float32), y


def test_probe_separates_separable_features():
    x, y = _clusters(3000)
    probe = train_probe(x[:2000], y[:2000], x[2000:2500], y[2000:2500], 5)
    assert (probe.predict(x[2500:]) == y[2500:]).mean() >= 0.99
    assert probe.epochs >= 2


def test_probe_is_at_chance_on_shuffled_labels():
    x, y = _clusters(6000)
    shuffled = np.random.default_rng(1).permutation(y)
    probe = train_probe(x[:4000], shuffled[:4000], x[4000:5000], shuffled[4000:5000], 5)
    acc = (probe.predict(x[5000:]) == shuffled[5000:]).mean()
    chance = np.bincount(shuffled[5000:]).max() / 1000  # at most this by always guessing one
    assert abs(acc - 0.2) < 0.05 and acc <= chance + 0.03, acc
    # Early stopping: the held-out loss cannot improve for long on noise.
    assert probe.epochs < ProbeConfig().max_epochs


def test_probe_config_is_validated():
    with pytest.raises(WordTaskError, match="patience"):
        ProbeConfig(patience=0)


# ------------------------------------------------------------------ span F1

GOLD = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "I-ORG", "I-ORG", "O"]]
PRED = [["B-PER", "I-PER", "O", "B-ORG", "O"], ["B-ORG", "I-ORG", "O", "I-MISC"]]


def test_bio_spans_by_hand():
    # I- after O starts a chunk; I- of another type starts one; B- always starts one
    assert bio_spans(["I-PER", "I-PER", "O", "B-LOC", "I-ORG", "B-ORG", "B-ORG"]) == {
        ("PER", 0, 1), ("LOC", 3, 3), ("ORG", 4, 4), ("ORG", 5, 5), ("ORG", 6, 6)}
    with pytest.raises(WordTaskError, match="not BIO"):
        bio_spans(["NN"])


def test_span_f1_by_hand():
    # gold chunks: PER 0-1, LOC 3, ORG 0-2 (3); predicted: PER 0-1, ORG 3, ORG 0-1, MISC 3 (4);
    # correct: PER 0-1 only -> P = 1/4, R = 1/3, F1 = 2PR/(P+R) = 2/7
    got = span_f1(GOLD, PRED)
    assert got["precision"] == pytest.approx(1 / 4)
    assert got["recall"] == pytest.approx(1 / 3)
    assert got["f1"] == pytest.approx(2 / 7)


def test_span_f1_matches_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [list(rng.choice(tags, size=rng.integers(1, 12))) for _ in range(60)]
    pred = [[t if rng.random() < 0.7 else str(rng.choice(tags)) for t in s] for s in gold]
    got = span_f1(gold, pred)
    assert got["f1"] == pytest.approx(seqeval.f1_score(gold, pred))
    assert got["precision"] == pytest.approx(seqeval.precision_score(gold, pred))
    assert got["recall"] == pytest.approx(seqeval.recall_score(gold, pred))


# ------------------------------------------------------------------ CoNLL-U

CONLLU = """# sent_id = 1
# text = Don't stop.
1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_
3\tstop\tstop\tVERB\tVB\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

# sent_id = 2
1\tSue\tSue\tPROPN\tNNP\t_\t2\tnsubj\t_\t_
2\tlikes\tlike\tVERB\tVBZ\t_\t0\troot\t_\t_
3\tcoffee\tcoffee\tNOUN\tNN\t_\t2\tobj\t_\t_
3.1\tlikes\tlike\tVERB\tVBZ\t_\t_\t_\t2:conj\t_
4\tand\tand\tCCONJ\tCC\t_\t5\tcc\t_\t_
5\tBill\tBill\tPROPN\tNNP\t_\t2\tconj\t_\t_
"""


def test_conllu_skips_multiword_ranges_and_empty_nodes(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_text(CONLLU, encoding="utf-8")  # no blank line at the end: still 2 sentences
    assert read_conllu(path) == [
        TaggedSentence(("Do", "n't", "stop", "."), ("AUX", "PART", "VERB", "PUNCT")),
        TaggedSentence(("Sue", "likes", "coffee", "and", "Bill"),
                       ("PROPN", "VERB", "NOUN", "CCONJ", "PROPN"))]
    assert read_conllu(path, "xpos")[0].tags == ("VBP", "RB", "VB", ".")


@pytest.mark.parametrize("content, message", [
    ("1\tDo\tdo\tAUX\n", ":1: 4 tab-separated fields"),
    ("x\tDo\tdo\tAUX\tVBP\t_\t0\troot\t_\t_\n", ":1: word ID 'x'"),
    ("# only a comment\n", "no sentences"),
])
def test_bad_conllu(tmp_path, content, message):
    path = tmp_path / "bad.conllu"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(WordTaskError, match=message):
        read_conllu(path)


def test_splits_are_disjoint_and_seeded(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_text("".join(f"1\tw{i}\t_\tNOUN\tNN\t_\t0\troot\t_\t_\n\n" for i in range(50)),
                    encoding="utf-8")
    a = load_word_task("pos", str(path), test_fraction=0.2, dev_fraction=0.25, seed=3)
    assert [len(a[k]) for k in ("train", "dev", "test")] == [30, 10, 10]
    words = [s.words for k in a for s in a[k]]
    assert len(set(words)) == 50
    assert load_word_task("pos", str(path), seed=3)["test"] == a["test"]
    with pytest.raises(WordTaskError, match="BIO"):
        load_word_task("ner", str(path))


# ------------------------------------------------------------------ CLI


def _ud_like(path, n=60, seed=0):
    """Sentences where a word's tag is a function of the word: a probe on any encoder's
    same_token vectors can learn it."""
    rng = np.random.default_rng(seed)
    vocab = {"the": "DET", "a": "DET", "cat": "NOUN", "dog": "NOUN", "house": "NOUN",
             "runs": "VERB", "sleeps": "VERB", "sees": "VERB", "big": "ADJ", "red": "ADJ"}
    words = list(vocab)
    lines = []
    for _ in range(n):
        sentence = rng.choice(words, size=rng.integers(3, 9))
        lines += [f"{i}\t{w}\t_\t{vocab[w]}\t_\t_\t0\t_\t_\t_" for i, w in enumerate(sentence, 1)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_word_cli_learns_and_caches(tmp_path, capsys, tokenizer_dir):
    from hf_oracle import tiny_model_with_tokenizer

    model = tiny_model_with_tokenizer(tmp_path / "tiny", tokenizer_dir)
    data = _ud_like(tmp_path / "toy.conllu")
    argv = ["word", "--model", model, "--task", "pos", "--data", str(data), "--quiet",
            "--cache-dir", str(tmp_path / "cache"), "--attention", "causal"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["task"] == "pos" and first["accuracy"] > 0.9, first
    assert first["extraction_words_per_s"] > 0 and first["missing"] == 0
    assert sum(first["words"].values()) == sum(
        1 for line in data.read_text().splitlines() if line)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3  # train, dev, test
    assert cli.main(argv) == 0  # from the cache: no extraction, the same result
    second = json.loads(capsys.readouterr().out)
    assert second["extraction_words_per_s"] is None
    assert second["accuracy"] == first["accuracy"]


@pytest.mark.parametrize("extra, message", [
    (["--task", "ner", "--data", "{conllu}"], "data error: task 'ner' needs BIO tags"),
    (["--task", "pos", "--data", "{missing}"], "file error: --data"),
    (["--task", "pos", "--data", "{conllu}", "--test-fraction", "1.5"],
     "data error: a split fraction must be in (0, 1)"),
])
def test_word_cli_bad_input_is_one_line(tmp_path, capsys, extra, message):
    conllu = _ud_like(tmp_path / "toy.conllu", n=5)
    extra = [e.format(conllu=conllu, missing=tmp_path / "missing.conllu") for e in extra]
    assert cli.main(["word", "--model", "unused", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_conll2003_columns_are_decoded(monkeypatch):
    """CoNLL-2003's hub layout (ClassLabel tag columns), offline: a stand-in load_dataset."""
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    features = datasets.Features({
        "tokens": datasets.Sequence(datasets.Value("string")),
        **{c: datasets.Sequence(datasets.ClassLabel(names=names))
           for c in ("pos_tags", "chunk_tags", "ner_tags")}})
    rows = {"tokens": [["Peter", "Blackburn", "in", "Paris"], [], ["Rome"], ["Sue"]],
            "ner_tags": [[1, 2, 0, 3], [], [3], [1]]}
    rows["pos_tags"] = rows["chunk_tags"] = [[0] * len(t) for t in rows["tokens"]]
    split = datasets.Dataset.from_dict(rows, features=features)
    calls = []

    def fake_load(name, revision=None):
        calls.append((name, revision))
        return datasets.DatasetDict(train=split, validation=split, test=split)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    got = load_word_task("ner", "conll2003", dev_fraction=0.34)
    assert calls == [("eriktks/conll2003", "refs/convert/parquet")]
    want = [TaggedSentence(("Peter", "Blackburn", "in", "Paris"), ("B-PER", "I-PER", "O", "B-LOC")),
            TaggedSentence(("Rome",), ("B-LOC",)), TaggedSentence(("Sue",), ("B-PER",))]
    assert got["test"] == want  # the empty sentence dropped
    assert len(got["dev"]) == 1 and sorted(got["train"] + got["dev"], key=want.index) == want
