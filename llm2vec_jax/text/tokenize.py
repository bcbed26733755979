"""Tokenization of reference strings into rows, and padding rows into batches (the
reference's ``LLM2Vec.tokenize``, minus its left-padding-only pooling assumptions)."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
import transformers

from .reference import SEPARATOR, build_strings_and_cuts, count_text_tokens, validate_pooling


# Any one of these is a tokenizer transformers can load without a converter
# (sentencepiece/tiktoken): a fast tokenizer, a sentencepiece model, a BPE vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def load_tokenizer(directory: str | os.PathLike):
    """The tokenizer of a local checkpoint directory; a directory without tokenizer files is
    a FileNotFoundError naming them (transformers would blame a missing converter)."""
    directory = os.fspath(directory)
    if os.path.isdir(directory) and not any(os.path.isfile(os.path.join(directory, name))
                                            for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer in {directory}: none of {', '.join(TOKENIZER_FILES)} is there; copy "
            "the tokenizer files of the model it came from (or save_pretrained its tokenizer) "
            "into it")
    return transformers.AutoTokenizer.from_pretrained(directory)


@dataclasses.dataclass(frozen=True)
class TokenizedRow:
    """One unpadded row: its token ids, how many trailing tokens are pooled, whether its text
    lost tokens to ``max_length`` or ``doc_max_length``, and, with ``offsets``, each token's
    (start, end) characters in the text after the instruction (the text as tokenized: after
    any doc_max_length cut; special tokens (0, 0))."""

    input_ids: tuple[int, ...]
    n_pooled: int
    truncated: bool = False
    offsets: tuple[tuple[int, int], ...] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_strings(tokenizer, strings: Sequence[str], *, max_length: int,
                     skip_instruction: bool = True,
                     with_offsets: bool = False) -> list[TokenizedRow]:
    """Reference ``LLM2Vec.tokenize`` without the padding: rows plus pooled-token counts
    (and, ``with_offsets``, character offsets; they need a fast tokenizer)."""
    if not strings:
        return []
    originals, pooled_parts = [], []
    for s in strings:
        parts = s.split(SEPARATOR)
        pooled_parts.append(parts[1] if len(parts) > 1 else "")
        originals.append("".join(parts))
    enc = tokenizer(list(originals), truncation=True, max_length=max_length,
                    return_offsets_mapping=with_offsets)
    counts = count_text_tokens(tokenizer, pooled_parts, max_length)
    # Only a row of exactly max_length tokens can have lost some: tokenize those again whole.
    full = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) >= max_length]
    whole = tokenizer([originals[i] for i in full])["input_ids"] if full else []
    cut = {i for i, ids in zip(full, whole) if len(ids) > max_length}
    rows = []
    for i, (ids, n) in enumerate(zip(enc["input_ids"], counts)):
        ids = tuple(int(t) for t in ids)
        offsets = None
        if with_offsets:
            # The text starts where the instruction part (before the separator) ends.
            shift = len(strings[i].split(SEPARATOR)[0])
            offsets = tuple((max(0, int(a) - shift), max(0, int(b) - shift)) if b > a else (0, 0)
                            for a, b in enc["offset_mapping"][i])
        rows.append(TokenizedRow(ids, len(ids) if not skip_instruction else min(n, len(ids)),
                                 i in cut, offsets))
    return rows


# Texts tokenized per call of the fast tokenizer: its batch output (Rust encodings and
# Python lists) is several times the rows kept, so tokenizing a whole corpus shard at once
# made that transient, and the heap fragmentation it leaves, grow with the shard (measured:
# bench/encode_corpus.py, README "Corpus encoding").
TOKENIZE_CHUNK = 1024


def tokenize_rows(tokenizer, texts, *, max_length: int, doc_max_length: int,
                  skip_instruction: bool = True, pooling_mode: str = "mean",
                  model_type: str | None = None,
                  name_or_path: str | None = None,
                  with_offsets: bool = False,
                  chunk: int = TOKENIZE_CHUNK) -> list[TokenizedRow]:
    validate_pooling(pooling_mode, tokenizer)
    texts = list(texts)
    rows: list[TokenizedRow] = []
    for start in range(0, len(texts), chunk):
        strings, shortened = build_strings_and_cuts(
            tokenizer, texts[start:start + chunk], max_length=max_length,
            doc_max_length=doc_max_length, pooling_mode=pooling_mode, model_type=model_type,
            name_or_path=name_or_path)
        part = tokenize_strings(tokenizer, strings, max_length=max_length,
                                skip_instruction=skip_instruction, with_offsets=with_offsets)
        rows.extend(dataclasses.replace(r, truncated=True) if cut and not r.truncated else r
                    for r, cut in zip(part, shortened))
    return rows


def pad_token_id(tokenizer) -> int:
    # The reference sets pad_token = eos_token, whatever the tokenizer shipped with.
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("tokenizer has no eos_token_id; LLM2Vec pads with EOS")
    return int(eos)


def collate(rows: Sequence[TokenizedRow], *, pad_id: int, padding_side: str = "right",
            pad_to: int | None = None) -> dict[str, np.ndarray]:
    """Pad rows to ``pad_to`` (default: longest row) -> int32 input_ids/attention_mask/embed_mask."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    longest = max((len(r) for r in rows), default=0)
    width = longest if pad_to is None else int(pad_to)
    if width < longest:
        raise ValueError(f"pad_to={pad_to} is shorter than the longest row ({longest} tokens)")
    b = len(rows)
    input_ids = np.full((b, width), pad_id, dtype=np.int32)
    attention_mask = np.zeros((b, width), dtype=np.int32)
    embed_mask = np.zeros((b, width), dtype=np.int32)
    for i, r in enumerate(rows):
        n = len(r)
        start = width - n if padding_side == "left" else 0
        input_ids[i, start:start + n] = r.input_ids
        attention_mask[i, start:start + n] = 1
        embed_mask[i, start + n - r.n_pooled:start + n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "embed_mask": embed_mask}
