"""Contrastive training data: unsupervised SimCSE sentences and supervised (E5-style) triples.

Both iterators follow ``MNTPBatchIterator``'s protocol (``__next__``, ``get_state`` /
``set_state``, ``batches_per_epoch``), so the training loop checkpoints and resumes them, and
yield this process's rows of the global batch as a numpy ``ContrastiveBatch`` (views
``q``, ``d``[, ``n``], each int32 [B, S] ``input_ids``, ``attention_mask`` and
``embed_mask``, the pooling mask; ``data/batches.py``).

Reference semantics (llm2vec 0.2.3 ``experiments/run_simcse.py``, ``run_supervised.py``,
``dataset/Wiki1M.py``, ``dataset/E5Data.py``):

SimCSE. Every line is one sentence (stripped), used as query and positive; the two views
differ only by dropout (the train step draws independent rngs for q and d). The reference
collator calls ``LLM2Vec.tokenize`` on the bare sentence, with no separator, so its pooling
mask is empty and mean pooling averages *every* column of the left-padded batch, padding
included (fixture ``simcse_path/pooled_no_separator``). That depends on how much padding a
row got, so by default we pool what ``encode()`` pools for the same text: its real tokens
(a BOS the tokenizer adds is excluded, as at inference). ``compat_pool_all_positions=True``
reproduces the quirk exactly: left padding to the batch's longest row and a pooling mask of
ones (mean pooling only: for weighted_mean the reference crashes on that path, eos/last
token pooling is unaffected by it).

Supervised. The reference builds ``f"{instruction}; " + SEPARATOR + query`` for the query
(note ``"; "``, not ``encode()``'s ``" "``) and ``SEPARATOR + text`` for positive and
negative; a dataset with a list of instructions uses ``instructions[i % len]`` for its i-th
record. Each text then goes through ``prepare_for_tokenization`` (chat wrappers, eos_token
suffix) and ``LLM2Vec.tokenize`` (no doc_max_length shortening in training). Batches are
task-homogeneous: each dataset is shuffled, cut into full *global* batches (the incomplete
tail is dropped), and the batch order is shuffled; process p takes rows
[p·B/P, (p+1)·B/P) of each global batch (what the reference's sequential sampler + batch
sharding gives). The reference shuffles once with Python's global ``random``; here the
order is a function of (seed, epoch), so resumption reproduces it and every epoch differs.

Widths: rows are padded (left, EOS, as the reference). By default a batch is padded to the
smallest of ``text.packing.default_buckets(max_length)`` that holds its longest row (all views of
a supervised batch share it): at most ~25 % padding, and at most a dozen compiled step shapes
(the reference pads to the longest row, one shape per batch; padding every batch to
``max_length`` would spend most of a short-sentence corpus's compute on padding). With
several processes every batch is padded to ``max_length``: a global array needs one width on
every process. Compat mode pads to the local batch's longest row, as the reference does.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..text.packing import (PackedBatch, Unplaced, bucket_for, collate_packed,
                            default_buckets, segments_per_row)
from ..text.reference import SEPARATOR, prepare_for_tokenization, validate_pooling
from ..text.tokenize import TokenizedRow, collate, pad_token_id, tokenize_strings
from .batches import ContrastiveBatch, Features
from .epochs import EpochIterator, ShuffledBatches
from .sources import SourceError, load_hf_dataset

PADDING = ("bucket", "max_length", "longest")


def check_padding(padding: str) -> None:
    if padding not in PADDING:
        raise ValueError(f"padding={padding!r}; choose one of {PADDING}")


def batch_width(longest: int, max_length: int, padding: str) -> int | None:
    """The padded width of a batch whose longest row has ``longest`` tokens (None: longest)."""
    check_padding(padding)
    if padding == "bucket":
        return bucket_for(longest, default_buckets(max_length, min_bucket=min(16, max_length)))
    return max_length if padding == "max_length" else None


def features(tokenizer, strings: Sequence[str], *, max_length: int,
             compat_pool_all_positions: bool = False, pad_to: int | None = None,
             pooling: str = "mean", padding: str | None = None) -> Features:
    """Separator-carrying strings -> left-padded ``input_ids/attention_mask/embed_mask``.

    Width: ``pad_to``, else ``batch_width(longest row, max_length, padding)``, else the longest
    row. In compat mode the pooling mask is all ones, padding included (module docstring).
    """
    rows = tokenize_strings(tokenizer, strings, max_length=max_length)
    if pad_to is None and padding is not None:
        pad_to = batch_width(max((len(r) for r in rows), default=1), max_length, padding)
    out = collate(rows, pad_id=pad_token_id(tokenizer), padding_side="left", pad_to=pad_to)
    if compat_pool_all_positions and pooling == "mean":
        out["embed_mask"] = np.ones_like(out["embed_mask"])
    return Features(**out)


def _check_compat(compat: bool, pooling: str) -> None:
    validate_pooling(pooling)
    if compat and pooling == "weighted_mean":
        raise ValueError("compat_pool_all_positions reproduces the reference SimCSE collator, "
                         "which crashes with weighted_mean pooling; use mean or turn compat off")


# -- unsupervised SimCSE ----------------------------------------------------------------------

class SimCSEBatchIterator(ShuffledBatches):
    """This process's sentences, reshuffled every epoch, as q = d = the same tokenization.

    Sentences are tokenized per batch (cheap next to a train step, and nothing is held for a
    million-line corpus). The incomplete last batch of an epoch is dropped.
    """

    def __init__(self, sentences: Sequence[str], tokenizer, per_process_batch_size: int, *,
                 max_length: int, pooling: str = "mean",
                 compat_pool_all_positions: bool = False, padding: str | None = None,
                 packed_rows_multiple: int | None = None,
                 seed: int = 0, shuffle: bool = True, num_epochs: int | None = None):
        """``packed_rows_multiple``: pack the batch's sentences several to a row
        (``packed_simcse_features``) in a row count divisible by it; None: one a row."""
        super().__init__(len(sentences), per_process_batch_size, seed=seed, shuffle=shuffle,
                         num_epochs=num_epochs, what="sentences")
        _check_compat(compat_pool_all_positions, pooling)
        if packed_rows_multiple is not None and compat_pool_all_positions:
            raise ValueError("compat_pool_all_positions pads one sentence a row, as the "
                             "reference does: turn contrastive.packing off with it")
        self.packed_rows_multiple = packed_rows_multiple
        self.sentences = list(sentences)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pooling = pooling
        self.compat = bool(compat_pool_all_positions)
        # The quirk depends on the padded width, so compat pads like the reference: to the
        # longest row (pass "max_length" to force one shape, e.g. for several processes).
        self.padding = padding or ("longest" if self.compat else "bucket")
        check_padding(self.padding)

    def batch_texts(self, rows: Sequence[int]) -> list[str]:
        return [self.sentences[i] for i in rows]

    def __next__(self) -> ContrastiveBatch:
        texts = self.batch_texts(self._next_rows())
        if self.packed_rows_multiple is not None:
            return packed_simcse_features(self.tokenizer, texts, max_length=self.max_length,
                                          rows_multiple=self.packed_rows_multiple)
        return simcse_features(self.tokenizer, texts, max_length=self.max_length,
                               pooling=self.pooling, compat_pool_all_positions=self.compat,
                               padding=self.padding)


def simcse_features(tokenizer, sentences: Sequence[str], *, max_length: int,
                    pooling: str = "mean", compat_pool_all_positions: bool = False,
                    pad_to: int | None = None, padding: str | None = None) -> ContrastiveBatch:
    """One tokenization of ``sentences`` as both the ``q`` and ``d`` views."""
    # SEPARATOR first: the whole sentence is the pooled part, as encode() pools it.
    feats = features(tokenizer, [SEPARATOR + s for s in sentences], max_length=max_length,
                     compat_pool_all_positions=compat_pool_all_positions, pad_to=pad_to,
                     pooling=pooling, padding=padding)
    return ContrastiveBatch(q=feats, d=feats)


def packed_simcse_features(tokenizer, sentences: Sequence[str], *, max_length: int,
                           rows_multiple: int = 1) -> ContrastiveBatch:
    """``simcse_features`` with the sentences packed several to a row of ``max_length``
    tokens (``text.packing``: each attends, is positioned and pooled within itself), so
    almost no compute goes to padding: a Wiki1M batch of 32 is ~40 % real tokens when padded
    one a row (docs/performance.md). The row count is rounded up to ``rows_multiple`` (the
    devices a batch is split over); rows past the packed ones repeat the first and own no
    text. ``duplicates`` marks the copies of each sentence, which the loss can then leave
    out of its negatives."""
    rows = tokenize_strings(tokenizer, [SEPARATOR + s for s in sentences], max_length=max_length)
    view = packed_view(tokenizer, rows, max_length=max_length, rows_multiple=rows_multiple)
    return ContrastiveBatch(q=view, d=view, duplicates=same_token_rows(rows))


def packed_view(tokenizer, rows: Sequence[TokenizedRow], *, max_length: int,
                rows_multiple: int = 1) -> Features:
    """``rows`` packed several to a row of ``max_length`` tokens; ``slots[i]`` locates text i."""
    lengths = [len(r) for r in rows]
    per_row = segments_per_row(max_length)
    placed = Unplaced(lengths, range(len(rows))).fill_rows(max_length, per_row, len(rows))
    num_rows = -(-len(placed) // rows_multiple) * rows_multiple
    packed = collate_packed(rows, PackedBatch(max_length, per_row, tuple(placed), num_rows),
                            pad_id=pad_token_id(tokenizer))
    slots = np.empty(len(rows), np.int32)
    slots[packed["indices"]] = packed["slots"]
    return Features(packed["input_ids"], packed["segment_ids"], packed["embed_mask"],
                    positions=packed["positions"], slots=slots)


def same_token_rows(rows: Sequence[TokenizedRow],
                    docs: Sequence[TokenizedRow] | None = None) -> np.ndarray:
    """[B, len(docs)] bool: document j (default: the rows themselves) has the same token ids
    as row i, j != i (the false negatives of the positives ``rows``, on the host;
    ``losses.same_text_as_positive`` computes the same on device from padded rows)."""
    ids = [r.input_ids for r in rows]
    doc_ids = ids if docs is None else [r.input_ids for r in docs]
    same = np.array([[a == b for b in doc_ids] for a in ids],
                    dtype=bool).reshape(len(ids), len(doc_ids))
    np.fill_diagonal(same, False)
    return same


# -- supervised -------------------------------------------------------------------------------

def load_instructions(path: str | os.PathLike) -> dict[str, str | list[str]]:
    """A YAML ``{dataset: instruction | [instructions]}`` table (``configs/supervised/``)."""
    import yaml
    with open(path, encoding="utf-8") as f:
        table = yaml.safe_load(f) or {}
    if not isinstance(table, dict):
        raise SourceError(f"{path}: expected a mapping of dataset name -> instruction(s)")
    for name, value in table.items():
        ok = isinstance(value, str) or (isinstance(value, list) and value
                                        and all(isinstance(v, str) for v in value))
        if not ok:
            raise SourceError(f"{path}: instruction for {name!r} must be a string or a "
                             f"non-empty list of strings, got {value!r}")
    return table


# The column names of the supervised layouts users have, per role: ours / the reference's E5
# JSONL, sentence-transformers' (anchor, positive, negative), SimCSE's NLI CSV
# (sent0, sent1, hard_neg) and NLI tables (premise, entailment, contradiction).
ROLE_COLUMNS = {"query": ("query", "anchor", "sent0", "premise"),
                "positive": ("positive", "sent1", "entailment"),
                "negative": ("negative", "hard_neg", "contradiction")}
TABLE_SUFFIXES = (".jsonl", ".tsv", ".csv")


def read_triples(path: str | os.PathLike, *, dataset_field: str = "dataset",
                 dataset_name: str | None = None,
                 max_records: int | None = None) -> list[dict[str, str]]:
    """Supervised records ``{"query", "positive"[, "negative"], "dataset"}``.

    ``path`` is a file or a directory of them (the reference's E5 layout: one
    ``<dataset>.jsonl`` per dataset). JSONL records, and ``.tsv`` (tab-separated, no quoting)
    or ``.csv`` tables with a header, name their fields by ``ROLE_COLUMNS`` (e.g. SimCSE's
    ``sent0,sent1,hard_neg``, or ``premise, entailment, contradiction``). SNLI / MultiNLI
    JSONL (``sentence1, sentence2, gold_label``) becomes one record per premise: its first
    entailment hypothesis the positive, its first contradiction the negative. A record
    without ``dataset_field`` belongs to ``dataset_name``, by default its file's stem. Every
    process reads everything: batches are task-homogeneous over the *global* batch, so all
    processes must agree on the plan.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in TABLE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no {', '.join('*' + s for s in TABLE_SUFFIXES)} files "
                                    f"in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"supervised data not found: {path}")
    records = []
    for file in files:
        rows = _rows(file)
        first = next(rows, None)
        if first is not None and "gold_label" in first[1]:
            rows = _nli_triples(itertools.chain([first], rows))
            first = next(rows, None)
        if first is None:
            continue
        rows = itertools.chain([first], rows)
        columns = _columns(first[1], file)
        for where, raw in rows:
            records.append(_record(raw, columns, dataset_field, dataset_name or file.stem,
                                   f"{file}:{where}"))
            if max_records and len(records) >= max_records:
                return records
    return records


def _rows(file: Path):
    """(line number, {column: value}) of a JSONL, TSV or CSV file."""
    with open(file, encoding="utf-8", newline="") as f:
        if file.suffix in (".tsv", ".csv"):
            reader = (csv.reader(f) if file.suffix == ".csv"
                      else (line.rstrip("\r\n").split("\t") for line in f))
            header = next(reader, None) or []
            for line_no, values in enumerate(reader, 2):
                if any(v.strip() for v in values):
                    yield line_no, dict(zip(header, values))
            return
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{file}:{line_no}: not a JSON record ({e})") from None
                yield line_no, record


def _columns(raw: Mapping[str, Any], file: Path) -> tuple[str, ...]:
    """The (query, positive[, negative]) field names this file uses."""
    found = [next((c for c in names if c in raw), None) for names in ROLE_COLUMNS.values()]
    if found[0] is None or found[1] is None:
        raise SourceError(f"{file}: no query/positive fields among {sorted(raw)}; name them "
                         f"one of {ROLE_COLUMNS['query']} and {ROLE_COLUMNS['positive']}")
    # A JSONL record may lack the optional negative that later records have.
    return found[0], found[1], found[2] or ROLE_COLUMNS["negative"][0]


def _nli_triples(rows):
    """SNLI / MultiNLI labelled pairs -> one (premise, entailment[, contradiction]) record per
    premise that has an entailment, in the order premises first appear."""
    by_premise: dict[str, dict] = {}
    for where, raw in rows:
        record = by_premise.setdefault(raw.get("sentence1"), {"where": where})
        label = raw.get("gold_label")
        if label in ("entailment", "contradiction"):
            record.setdefault(label, raw.get("sentence2"))
    for premise, r in by_premise.items():
        if premise and "entailment" in r:
            yield r["where"], {"premise": premise, "entailment": r["entailment"],
                               "contradiction": r.get("contradiction")}


def read_hub_triples(name: str, config: str | None = None, *, split: str = "train",
                     columns: Sequence[str] | None = None, dataset_field: str = "dataset",
                     dataset_name: str | None = None,
                     max_records: int | None = None) -> list[dict[str, str]]:
    """``read_triples`` for a hub dataset (``sentence-transformers/all-nli``, config
    ``triplet``: ``columns=("anchor", "positive", "negative")``). ``columns`` name the
    query, positive and optional negative columns; by default ``query, positive`` and
    ``negative`` where the dataset has one. Records belong to the ``dataset_field`` column's
    dataset, else to ``dataset_name`` (default: the id's last part)."""
    ds = load_hf_dataset(name, config, split=split)
    if columns is None:
        columns = ("query", "positive") + (("negative",) if "negative" in ds.column_names else ())
    if not 2 <= len(columns) <= 3:
        raise ValueError(f"hf:{name}: columns must name query, positive[, negative], got "
                         f"{list(columns)}")
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"hf:{name} split {split}: no column(s) {missing} (has "
                         f"{ds.column_names}); set data.columns to its query, positive[, "
                         "negative] columns")
    if max_records:
        ds = ds.select(range(min(max_records, len(ds))))
    default = dataset_name or name.rstrip("/").split("/")[-1]
    wanted = list(columns) + ([dataset_field] if dataset_field in ds.column_names else [])
    return [_record(raw, columns, dataset_field, default, f"hf:{name} row {i}")
            for i, raw in enumerate(ds.select_columns(wanted))]


def _record(raw: Mapping[str, Any], columns: Sequence[str], dataset_field: str,
            default_dataset: str, where: str) -> dict[str, str]:
    query, positive, *negative = columns
    for key in (query, positive):
        if not isinstance(raw.get(key), str):
            raise SourceError(f"{where}: record needs a string {key!r}")
    record = {"query": raw[query], "positive": raw[positive],
              "dataset": str(raw.get(dataset_field) or default_dataset)}
    if negative and raw.get(negative[0]) is not None:
        record["negative"] = raw[negative[0]]
    return record


def split_held_out(records: Sequence[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    """(train, held-out): the last ``fraction`` of every dataset's records is held out."""
    by_dataset: dict[str, list[dict]] = {}
    for r in records:
        by_dataset.setdefault(r["dataset"], []).append(r)
    train, held = [], []
    for items in by_dataset.values():
        cut = int(round(len(items) * fraction))
        train += items[:len(items) - cut]
        held += items[len(items) - cut:]
    return train, held


def query_string(query: str, instruction: str) -> str:
    # The reference's E5 format: "; " after the instruction, then the separator.
    return f"{instruction}; {SEPARATOR}{query}" if instruction else SEPARATOR + query


class SupervisedBatchIterator(EpochIterator):
    """Task-homogeneous global batches of (instructed query, positive[, hard negative]).

    ``records`` are *all* records (every process holds the same list); this process yields
    its ``global_batch_size // process_count`` rows of each global batch.
    """

    def __init__(self, records: Sequence[dict], tokenizer, global_batch_size: int, *,
                 instructions: Mapping[str, str | list[str]], max_length: int,
                 pooling: str = "mean", model_type: str | None = None,
                 name_or_path: str | None = None, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, process_index: int = 0, process_count: int = 1,
                 padding: str = "bucket", packed_rows_multiple: int | None = None):
        """``packed_rows_multiple``: pack every text of a batch, all views together, several
        to a row (``packed_supervised_features``) in a row count divisible by it; None: one
        text a row, the views padded to one width."""
        super().__init__(seed=seed, shuffle=shuffle, num_epochs=num_epochs)
        self.packed_rows_multiple = packed_rows_multiple
        validate_pooling(pooling)
        check_padding(padding)
        self.padding = padding
        if global_batch_size < 1 or global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} must be a positive "
                             f"multiple of the {process_count} processes")
        has_negative = {"negative" in r for r in records}
        if len(has_negative) > 1:
            # One batch structure for every step: one compiled step, no silent mixing.
            raise ValueError("some records have a 'negative' and some do not: give every "
                             "record a hard negative or none")
        self.with_negative = has_negative == {True}
        self.tokenizer = tokenizer
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // process_count
        self.process_index = int(process_index)
        self.max_length = int(max_length)
        self.pooling = pooling
        self.model_type = model_type
        self.name_or_path = name_or_path

        self.datasets: dict[str, list[tuple[str, str, str | None]]] = {}
        counters: dict[str, int] = {}
        missing = set()
        for r in records:
            name = r["dataset"]
            if name not in instructions:
                missing.add(name)
                continue
            i = counters.get(name, 0)
            counters[name] = i + 1
            instr = instructions[name]
            instr = instr if isinstance(instr, str) else instr[i % len(instr)]
            self.datasets.setdefault(name, []).append(
                (query_string(r["query"], instr), SEPARATOR + r["positive"],
                 SEPARATOR + r["negative"] if self.with_negative else None))
        if missing:
            raise SourceError(f"no instruction for dataset(s) {sorted(missing)}; known: "
                              f"{sorted(instructions)} (add them to the instruction table)")
        self.names = sorted(self.datasets)
        if self.batches_per_epoch == 0:
            raise SourceError(f"no dataset has a full global batch of {self.global_batch_size} "
                              f"records ({ {n: len(v) for n, v in self.datasets.items()} })")
        self._plan_epoch: int | None = None
        self._plan: list[tuple[str, np.ndarray]] = []

    @property
    def batches_per_epoch(self) -> int:
        return sum(len(v) // self.global_batch_size for v in self.datasets.values())

    def _identity(self) -> dict[str, int]:
        return {"num_examples": sum(len(v) for v in self.datasets.values()),
                "batch_size": self.global_batch_size}

    def set_state(self, state: Mapping[str, Any]) -> None:
        super().set_state(state)
        self._plan_epoch = None

    def epoch_plan(self) -> list[tuple[str, np.ndarray]]:
        """[(dataset, record indices of one global batch)] for the current epoch."""
        if self._plan_epoch != self.epoch:
            plan = []
            for d, name in enumerate(self.names):
                n = len(self.datasets[name])
                order = (np.random.default_rng([self.seed, self.epoch, d]).permutation(n)
                         if self.shuffle else np.arange(n))
                for start in range(0, n - self.global_batch_size + 1, self.global_batch_size):
                    plan.append((name, order[start:start + self.global_batch_size]))
            if self.shuffle:
                perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(plan))
                plan = [plan[i] for i in perm]
            self._plan, self._plan_epoch = plan, self.epoch
        return self._plan

    def __next__(self) -> ContrastiveBatch:
        self._advance()
        name, rows = self.epoch_plan()[self.position]
        self.position += 1
        lo = self.process_index * self.local_batch_size
        triples = [self.datasets[name][i] for i in rows[lo:lo + self.local_batch_size]]
        views = []
        for v in range(3 if self.with_negative else 2):  # query, positive, negative
            strings = [prepare_for_tokenization(t[v], pooling_mode=self.pooling,
                                                model_type=self.model_type,
                                                name_or_path=self.name_or_path)
                       for t in triples]
            views.append(tokenize_strings(self.tokenizer, strings, max_length=self.max_length))
        if self.packed_rows_multiple is not None:
            return packed_supervised_features(self.tokenizer, views, max_length=self.max_length,
                                              rows_multiple=self.packed_rows_multiple)
        # One width for every view, so the step encodes them in one pass.
        longest = max(len(r) for rows in views for r in rows)
        width = batch_width(longest, self.max_length, self.padding) or longest
        return ContrastiveBatch(*(Features(**collate(rows, pad_id=pad_token_id(self.tokenizer),
                                                     padding_side="left", pad_to=width))
                                  for rows in views))


def packed_supervised_features(tokenizer, views: Sequence[Sequence[TokenizedRow]], *,
                               max_length: int, rows_multiple: int = 1) -> ContrastiveBatch:
    """The query, positive[, negative] views' tokenized texts packed *together* into one set
    of rows (``packed_view``), encoded once (``ContrastiveBatch.shared_rows``); each view is
    those rows with its own ``slots``. Queries carry an instruction and are longer than
    documents, so packing the views apart would leave the document views' rows half empty.
    ``duplicates`` marks documents whose text is another row's positive (false negatives)."""
    everything = [row for rows in views for row in rows]
    shared = packed_view(tokenizer, everything, max_length=max_length,
                         rows_multiple=rows_multiple)
    starts = np.cumsum([0] + [len(rows) for rows in views])
    per_view = [shared.replace(slots=shared.slots[a:b]) for a, b in zip(starts, starts[1:])]
    documents = [row for rows in views[1:] for row in rows]
    return ContrastiveBatch(*per_view, duplicates=same_token_rows(views[1], documents),
                            shared_rows=True)
