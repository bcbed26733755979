"""STS evaluation: read an STS-B style TSV, score embeddings by cosine vs. gold similarity.

The metric is the one MTEB/SentEval report for STS: Spearman (and Pearson) correlation between
the cosine similarity of the two sentence embeddings and the gold score. Spearman uses average
ranks for ties (as ``scipy.stats.spearmanr``), implemented in numpy so scipy is not a runtime
dependency.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import numpy as np

STS_HEADER = ("source", "score", "sentence1", "sentence2")
STS_SCORE_RANGE = (0.0, 5.0)


class STSFormatError(ValueError):
    """The STS file does not have the expected layout; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class STSData:
    sources: tuple[str, ...]
    scores: np.ndarray  # float64 [N]
    sentences1: tuple[str, ...]
    sentences2: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.scores)


def read_sts_tsv(path: str | os.PathLike) -> STSData:
    """Read ``source<TAB>score<TAB>sentence1<TAB>sentence2`` with that header line.

    No quoting: quote characters are part of the sentences. Scores must be finite floats in
    [0, 5]. Trailing newline and a final empty line are fine; any other empty line is an error.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")  # bytes first, so \r stays as with newline=""
    except UnicodeDecodeError as e:  # the bare error names neither the file nor the line
        line = raw.count(b"\n", 0, e.start) + 1
        raise STSFormatError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); convert it, "
                             f"e.g. iconv -f latin1 -t utf-8 {path} > {path}.utf8") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    if not lines:
        raise STSFormatError(f"{path}: empty file (expected a header line: {', '.join(STS_HEADER)})")
    header = tuple(lines[0].split("\t"))
    if header != STS_HEADER:
        raise STSFormatError(
            f"{path}:1: bad header {lines[0]!r}; expected the tab-separated columns "
            f"{', '.join(STS_HEADER)}")
    sources, scores, s1, s2 = [], [], [], []
    lo, hi = STS_SCORE_RANGE
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(STS_HEADER):
            raise STSFormatError(
                f"{path}:{lineno}: expected {len(STS_HEADER)} tab-separated fields, "
                f"got {len(fields)}: {line[:120]!r}")
        try:
            score = float(fields[1])
        except ValueError:
            raise STSFormatError(
                f"{path}:{lineno}: score {fields[1]!r} is not a number") from None
        if not (math.isfinite(score) and lo <= score <= hi):
            raise STSFormatError(
                f"{path}:{lineno}: score {score} is outside [{lo:g}, {hi:g}]")
        sources.append(fields[0])
        scores.append(score)
        s1.append(fields[2])
        s2.append(fields[3])
    if not scores:
        raise STSFormatError(f"{path}: header only, no sentence pairs")
    return STSData(tuple(sources), np.asarray(scores, dtype=np.float64), tuple(s1), tuple(s2))


STS_COLUMNS = ("sentence1", "sentence2", "score")


def load_sts(ref: str | os.PathLike, *, split: str = "validation", config: str | None = None,
             columns: Sequence[str] = STS_COLUMNS) -> STSData:
    """STS pairs from a local TSV (``read_sts_tsv``), a bundled sample (``sample:stsb-dev``)
    or a hub dataset (``hf:mteb/stsbenchmark-sts``: ``split``, ``config`` and the
    ``columns`` holding sentence 1, sentence 2 and the gold score)."""
    from .data.samples import is_sample, sample_path
    from .data.sources import HF_PREFIX, is_hub_ref, load_hf_dataset

    ref = os.fspath(ref)
    if is_sample(ref):
        return read_sts_tsv(sample_path(ref))
    if not is_hub_ref(ref):
        return read_sts_tsv(ref)
    name = ref[len(HF_PREFIX):]
    if len(columns) != 3:
        raise STSFormatError(f"{ref}: columns must name sentence 1, sentence 2 and the score, "
                             f"got {list(columns)}")
    ds = load_hf_dataset(name, config, split=split)
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise STSFormatError(f"{ref} split {split}: no column(s) {missing} (has "
                             f"{ds.column_names}); set the STS columns")
    s1, s2, score = (ds[c] for c in columns)
    scores = np.asarray(score, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise STSFormatError(f"{ref} split {split}: row {bad[0]} has score {scores[bad[0]]}")
    if len(scores) == 0:
        raise STSFormatError(f"{ref} split {split}: no sentence pairs")
    return STSData(tuple(f"{name}/{split}/{i}" for i in range(len(scores))), scores,
                   tuple(s1), tuple(s2))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [N, D] arrays (float64; zero vectors give 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two [N, D] arrays of equal shape, got {a.shape} and {b.shape}")
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.einsum("nd,nd->n", a, b) / np.where(denom > 0, denom, 1.0)


def rankdata_average(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # Start index of each run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    avg = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    y = np.asarray(y, dtype=np.float64) - np.mean(y)
    denom = math.sqrt(float(x @ x) * float(y @ y))
    # Constant input has no defined correlation; scipy also returns nan.
    return float(x @ y) / denom if denom > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata_average(x), rankdata_average(y))


def sts_scores(emb1: np.ndarray, emb2: np.ndarray, gold: Sequence[float]) -> dict:
    """``{"spearman", "pearson", "n"}`` of cosine(emb1, emb2) against the gold scores."""
    gold = np.asarray(gold, dtype=np.float64)
    sims = cosine_similarity(emb1, emb2)
    if gold.shape != sims.shape:
        raise ValueError(f"{len(sims)} embedding pairs but {gold.shape} gold scores")
    if len(gold) < 2:
        raise ValueError("need at least 2 pairs to correlate")
    return {"spearman": spearman(sims, gold), "pearson": pearson(sims, gold), "n": int(len(gold))}


def evaluate_sts(encoder, data: "STSData", *, limit: int | None = None, batch_size: int = 32,
                 instruction: str | None = None, show_progress_bar: bool = True) -> dict:
    """Encode the first ``limit`` pairs with ``encoder.encode`` and score them.

    Both sides go through one ``encode`` call: shared length buckets, one progress bar,
    fewer partial batches.
    """
    n = len(data) if limit is None else min(limit, len(data))
    if n < 2:  # checked before encoding: a correlation needs two pairs
        raise STSFormatError(f"{n} sentence pair(s) to score; a correlation needs at least 2")
    texts = list(data.sentences1[:n]) + list(data.sentences2[:n])
    if instruction:
        texts = [[instruction, t] for t in texts]
    emb = encoder.encode(texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
    return sts_scores(emb[:n], emb[n:], data.scores[:n])
