"""Word-level tasks (the paper's POS tagging, chunking, NER): tagged sentences from CoNLL-U
files or CoNLL-2003, and their metrics (accuracy; span F1 over BIO chunks).

The span F1 is CoNLL's ``conlleval`` (and ``seqeval``'s default mode): a chunk starts at
``B-X``, or at ``I-X`` after a tag that is not of type X, and runs over the ``I-X`` tags that
follow; a predicted chunk counts only if its type and both ends match a gold chunk.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Sequence

import numpy as np

TASKS = ("pos", "chunk", "ner")
CONLLU_POS_COLUMNS = {"upos": 3, "xpos": 4}
# CoNLL-2003 with its tag columns as ClassLabels; the original loading script no longer runs
# under datasets >= 4, so its automatic parquet conversion is read.
CONLL2003 = ("eriktks/conll2003", "refs/convert/parquet")
CONLL2003_COLUMNS = {"pos": "pos_tags", "chunk": "chunk_tags", "ner": "ner_tags"}


class WordTaskError(ValueError):
    """Bad word-task data or options (one line in the CLI, see llm2vec_jax/cli_errors.py)."""


@dataclasses.dataclass(frozen=True)
class TaggedSentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]

    def __post_init__(self):
        if len(self.words) != len(self.tags):
            raise WordTaskError(f"{len(self.words)} words but {len(self.tags)} tags")


def read_conllu(path: str | os.PathLike, column: str = "upos") -> list[TaggedSentence]:
    """The sentences of a CoNLL-U file with their ``upos`` or ``xpos`` (Penn) tags.

    Syntactic words only: multi-word token lines (ID ``1-2``, whose parts follow as words of
    their own) and empty nodes (ID ``8.1``) are skipped; comments too.
    """
    if column not in CONLLU_POS_COLUMNS:
        raise WordTaskError(f"unknown CoNLL-U tag column {column!r}; valid: "
                            f"{', '.join(CONLLU_POS_COLUMNS)}")
    col = CONLLU_POS_COLUMNS[column]
    path = os.fspath(path)
    sentences, words, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                if words:
                    sentences.append(TaggedSentence(tuple(words), tuple(tags)))
                words, tags = [], []
                continue
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 10:
                raise WordTaskError(f"{path}:{n}: {len(fields)} tab-separated fields, CoNLL-U "
                                    "has 10 (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC)")
            if "-" in fields[0] or "." in fields[0]:
                continue
            if not fields[0].isdigit():
                raise WordTaskError(f"{path}:{n}: word ID {fields[0]!r} is not a number")
            if fields[col] == "_":
                raise WordTaskError(f"{path}:{n}: no {column.upper()} tag ('_'); use the other "
                                    "tag column (--pos-column)")
            words.append(fields[1])
            tags.append(fields[col])
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    if not sentences:
        raise WordTaskError(f"{path}: no sentences (is it a CoNLL-U file?)")
    return sentences


def load_conll2003(task: str, dataset: str = CONLL2003[0],
                   revision: str | None = CONLL2003[1]) -> dict[str, list[TaggedSentence]]:
    """CoNLL-2003 train/validation/test from the Hugging Face hub (needs ``datasets`` and
    network): ``task`` picks the POS, chunk or NER column, decoded to tag strings."""
    check_task(task)
    try:
        import datasets
    except ImportError:
        raise WordTaskError("CoNLL-2003 loads through the 'datasets' package: pip install "
                            "datasets (or pass a CoNLL-U file as --data)") from None
    data = datasets.load_dataset(dataset, revision=revision)
    column = CONLL2003_COLUMNS[task]
    out = {}
    for split in ("train", "validation", "test"):
        if split not in data:
            raise WordTaskError(f"{dataset} has no {split!r} split (it has {', '.join(data)})")
        names = data[split].features[column].feature.names
        out[split] = [TaggedSentence(tuple(row["tokens"]), tuple(names[t] for t in row[column]))
                      for row in data[split] if row["tokens"]]
    return out


def check_task(task: str) -> str:
    if task not in TASKS:
        raise WordTaskError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    return task


def split_sentences(sentences: Sequence[TaggedSentence], fraction: float,
                    seed: int = 0) -> tuple[list[TaggedSentence], list[TaggedSentence]]:
    """(rest, held out): a seeded random ``fraction`` of the sentences held out."""
    if not 0 < fraction < 1:
        raise WordTaskError(f"a split fraction must be in (0, 1), got {fraction}")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    k = int(round(len(order) * fraction))
    if k == 0 or k == len(order):
        raise WordTaskError(f"cannot hold out {fraction} of {len(order)} sentences")
    held = set(order[:k])
    return ([s for i, s in enumerate(sentences) if i not in held],
            [s for i, s in enumerate(sentences) if i in held])


def bio_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """The chunks (type, first, last word) of one sentence's BIO tags (conlleval rules)."""
    spans, kind, start = set(), None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        if prefix not in ("B", "I", "O") or (prefix != "O" and not label):
            raise WordTaskError(f"tag {tag!r} is not BIO (O, B-TYPE or I-TYPE)")
        continues = prefix == "I" and label == kind
        if kind is not None and not continues:
            spans.add((kind, start, i - 1))
            kind = None
        if prefix != "O" and not continues:
            kind, start = label, i
    return spans


def span_f1(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Micro precision, recall and F1 over the chunks of all sentences."""
    if len(gold) != len(predicted):
        raise WordTaskError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    correct = n_gold = n_pred = 0
    for g, p in zip(gold, predicted):
        if len(g) != len(p):
            raise WordTaskError(f"a sentence has {len(g)} gold tags but {len(p)} predicted")
        gs, ps = bio_spans(g), bio_spans(p)
        correct, n_gold, n_pred = correct + len(gs & ps), n_gold + len(gs), n_pred + len(ps)
    precision = correct / n_pred if n_pred else 0.0
    recall = correct / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def accuracy(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    flat_g = [t for s in gold for t in s]
    flat_p = [t for s in predicted for t in s]
    if len(flat_g) != len(flat_p) or not flat_g:
        raise WordTaskError(f"{len(flat_g)} gold tags but {len(flat_p)} predicted")
    return float(np.mean([g == p for g, p in zip(flat_g, flat_p)]))


def load_word_task(task: str, data: str, *, test_data: str | None = None,
                   pos_column: str = "upos", test_fraction: float = 0.2,
                   dev_fraction: float = 0.1, seed: int = 0) -> dict[str, list[TaggedSentence]]:
    """The task's train / dev (early stopping) / test sentences.

    ``data``: ``conll2003`` (its train and test splits; ``hf:ID`` for another hub copy with
    the same columns) or a CoNLL-U file (POS only), whose sentences are split into train and
    test by ``test_fraction`` unless ``test_data`` names a test file. The dev part (early
    stopping) is always a seeded ``dev_fraction`` of the training sentences."""
    check_task(task)
    if data == "conll2003" or data.startswith("hf:"):
        if test_data is not None:
            raise WordTaskError("--test-data is for CoNLL-U files; CoNLL-2003 has its test split")
        splits = (load_conll2003(task) if data == "conll2003"
                  else load_conll2003(task, data[3:], revision=None))
        train, test = splits["train"], splits["test"]
    else:
        if task != "pos":
            raise WordTaskError(f"task {task!r} needs BIO tags, which CoNLL-U files do not "
                                "have: use --data conll2003, or --task pos")
        if not os.path.isfile(data):
            raise FileNotFoundError(f"--data {data}: no such file (a CoNLL-U file, conll2003 "
                                    "or hf:ID)")
        sentences = read_conllu(data, pos_column)
        if test_data is not None:
            train, test = sentences, read_conllu(test_data, pos_column)
        else:
            train, test = split_sentences(sentences, test_fraction, seed)
    train, dev = split_sentences(train, dev_fraction, seed)
    return {"train": train, "dev": dev, "test": test}
