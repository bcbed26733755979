"""Word-level representations from token ones, for pre-split words (tagging tasks).

The words of a sentence are joined by single spaces into one text; a token belongs to the
first word its character span overlaps (a token that is only whitespace belongs to none), so
the words are tokenized as the model saw text in training (the reference's
``is_split_into_words`` instead tokenizes each word alone, without the space before it, for
tokenizers that do not add a prefix space). A word's vector is then the first, mean or last
of a group of token states (mean: the reference's ``merge_subwords``), the group chosen by
the reference's ``retroactive_labels`` alignment:

- ``same_token``: the word's own tokens (t_s .. t_e).
- ``next_token``: each of those tokens shifted one to the left (t_s - 1 .. t_e - 1): the
  states that predict the word's tokens as next tokens, which MNTP trains (it predicts a
  masked token from the state before it). The reference's default.
- ``next_word``: the tokens of the previous word (named in the reference's help text but not
  implemented there; this is our reading of it).

A word with no group (no token of its own; with ``next_token`` the first word when no token
precedes it, e.g. no BOS; with ``next_word`` the first word) is marked not ``valid`` and its
vector is zeros; the reference drops its label the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

AGGREGATIONS = ("first", "mean", "last")
ALIGNMENTS = ("same_token", "next_token", "next_word")


@dataclasses.dataclass(frozen=True)
class TokenEmbeddings:
    """The final hidden states of one text's tokens (instruction tokens excluded).

    ``embeddings``: float32 [T, D]; ``offsets``: int64 [T, 2], each token's (start, end)
    characters in the text (special tokens (0, 0)); ``token_ids``: int64 [T]."""

    embeddings: np.ndarray
    offsets: np.ndarray
    token_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclasses.dataclass(frozen=True)
class WordEmbeddings:
    """One sentence's word vectors: float32 [W, D] ``embeddings`` (zeros where not
    ``valid``) and bool [W] ``valid`` (the word had a token group; see the module docstring)."""

    embeddings: np.ndarray
    valid: np.ndarray

    def __len__(self) -> int:
        return len(self.valid)


def check_choice(value: str, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")
    return value


def join_words(words: Sequence[str]) -> tuple[str, np.ndarray]:
    """The text of ``words`` joined by single spaces, and each word's int64 [W, 2] span."""
    if isinstance(words, str) or not all(isinstance(w, str) for w in words):
        raise TypeError(f"words must be a list of str (one sentence, pre-split), got {words!r}")
    spans, start = [], 0
    for w in words:
        spans.append((start, start + len(w)))
        start += len(w) + 1
    return " ".join(words), np.asarray(spans, np.int64).reshape(-1, 2)


def word_token_groups(spans: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Token indices of each word: token i goes to the first word whose span overlaps its
    character span (empty tokens, special or whitespace-only, go nowhere)."""
    spans, offsets = np.asarray(spans).reshape(-1, 2), np.asarray(offsets).reshape(-1, 2)
    # overlap[i, w]: token i shares a character with word w; [T, W]
    overlap = ((offsets[:, None, 0] < spans[None, :, 1]) & (offsets[:, None, 1] > spans[None, :, 0])
               & (spans[None, :, 1] > spans[None, :, 0]))
    owner = np.where(overlap.any(1), overlap.argmax(1), -1)
    return [np.flatnonzero(owner == w) for w in range(len(spans))]


def align_groups(groups: Sequence[np.ndarray], alignment: str) -> list[np.ndarray]:
    """Each word's token group under ``alignment`` (empty: the word has none)."""
    check_choice(alignment, ALIGNMENTS, "alignment")
    if alignment == "same_token":
        return list(groups)
    if alignment == "next_token":
        return [g - 1 if len(g) and g[0] > 0 else g[:0] for g in groups]
    return [groups[w - 1] if w > 0 else groups[0][:0] for w in range(len(groups))]


def aggregate(embeddings: np.ndarray, groups: Sequence[np.ndarray],
              aggregation: str) -> WordEmbeddings:
    """[T, D] token states -> one vector per group (first, mean or last of its tokens)."""
    check_choice(aggregation, AGGREGATIONS, "aggregation")
    out = np.zeros((len(groups), embeddings.shape[-1]), np.float32)
    valid = np.array([len(g) > 0 for g in groups], bool)
    for w, g in enumerate(groups):
        if len(g):
            picked = embeddings[g]
            out[w] = (picked[0] if aggregation == "first" else picked[-1]
                      if aggregation == "last" else picked.mean(0))
    return WordEmbeddings(out, valid)


def word_embeddings(tokens: TokenEmbeddings, spans: np.ndarray, *, aggregation: str = "mean",
                    alignment: str = "same_token") -> WordEmbeddings:
    """The word vectors of one sentence from its token embeddings and word spans."""
    groups = align_groups(word_token_groups(spans, tokens.offsets), alignment)
    return aggregate(tokens.embeddings, groups, aggregation)
