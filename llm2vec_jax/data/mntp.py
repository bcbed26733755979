"""MNTP data: tokenize, chunk, mask, batch — the reference ``run_mntp.py`` pipeline in numpy.

What the reference does (llm2vec ``experiments/run_mntp.py``, itself HF ``run_mlm.py``) and
what this module matches:

- Tokenization adds the tokenizer's own special tokens (BOS/EOS where the tokenizer adds
  them; SmolLM2 adds none) and records which positions they are
  (``return_special_tokens_mask=True``). Only those positions, and padding, are excluded
  from masking: a special token that appears *in the text* (say a literal ``<|im_end|>``)
  can be masked, exactly as in the reference, because its collator receives that
  tokenize-time mask and never falls back to ``get_special_tokens_mask``.
- Grouped mode (default): all token ids concatenated and cut into ``max_seq_length``
  chunks, the incomplete tail dropped. Reference quirk: ``datasets.map(batched=True)``
  runs ``group_texts`` on 1,000 rows at a time, so it drops one tail per 1,000 rows;
  ``group_size=1000`` reproduces that, the default (``None``) drops only the final tail.
- Line-by-line mode: each non-blank line its own sequence, truncated to ``max_seq_length``.
  The reference pads dynamically to the batch's longest line; here every sequence is padded
  to ``max_seq_length`` so shapes stay static under ``jit`` (padding is never masked and
  never in the loss, so only compute changes). Padding side follows the tokenizer.
- Mask token (``mask_token_type``, only when the tokenizer has no mask token, as in the
  reference): ``blank`` = the existing ``"_"`` token (SmolLM2 id 79), ``eos`` = the EOS
  token. (The reference's third choice, a new ``"<mask>"`` token, needs the embedding
  grown and saved with the adapter; it is not offered.)
- Masking (HF ``DataCollatorForLanguageModeling``): every eligible position i.i.d. with
  ``mlm_probability``; of those 80% become the mask token, 10% a uniformly random id in
  ``[0, len(tokenizer))`` (special and added tokens included, as HF's ``randint``), 10% stay.
  ``all_mask=True`` is the reference's ``DataCollatorForLanguageModelingWithFullMasking``:
  100% mask token. ``labels`` hold the original id at masked positions, -100 elsewhere.
- The loss is ``CE(logits[:, :-1], labels[:, 1:])``: the token masked at position i is
  predicted from the output at position i-1. Consequently a token masked at position 0 has
  no predictor: the reference still replaces it in the input but never scores it; so do we
  (it is in ``labels`` but not in ``predict_*``). With left padding, the first real token's
  predictor is a padding position; the reference scores that too, and so do we.

For the fast loss (``llm2vec_jax.train.losses.mntp_loss``) a batch (``data.batches.MNTPBatch``)
carries the scored pairs per row as static-shape arrays instead of labels:
``predict_positions`` [B, P] = the predicting position i - 1 of each scored token i of the
row, and ``predict_labels`` [B, P] its id, padded with position 0 / label -100. P is
``predict_slots(S, p)`` (mean + 6σ of Binomial(S, p), rounded up to a multiple of 8); a batch
with a row scoring more tokens than that (probability < 1e-9 per row) gets the next bucket
(doubling), so no masked token is ever dropped — at the cost of one extra compilation.

Determinism and resuming: shuffling uses ``default_rng([seed, epoch])`` and the masking of
batch ``position`` of ``epoch`` uses ``default_rng([seed, process_index, epoch, position])``,
so the iterator state is three integers (``get_state()``), and an iterator restored with
``set_state()`` yields the very batches (masks included) an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from .batches import IGNORE_INDEX, MNTPBatch
from .epochs import ShuffledBatches

MASK_TOKEN_TYPES = ("blank", "eos")


# ---------------------------------------------------------------------------- mask token


def set_mask_token(tokenizer, mask_token_type: str = "blank") -> int:
    """Give ``tokenizer`` a mask token as the reference does; return its id.

    Like the reference, a tokenizer that already has a mask token keeps it whatever the type.
    """
    if mask_token_type not in MASK_TOKEN_TYPES:
        raise ValueError(f"mask_token_type {mask_token_type!r} is not one of {MASK_TOKEN_TYPES}")
    if tokenizer.mask_token is None:
        tokenizer.mask_token = "_" if mask_token_type == "blank" else tokenizer.eos_token
    if tokenizer.pad_token is None:  # the reference pads with EOS when there is no pad token
        tokenizer.pad_token = tokenizer.eos_token
    mask_id = tokenizer.convert_tokens_to_ids(tokenizer.mask_token)
    if mask_id is None or (mask_id == tokenizer.unk_token_id
                           and tokenizer.mask_token != tokenizer.unk_token):
        raise ValueError(f"mask token {tokenizer.mask_token!r} is not in the vocabulary")
    return int(mask_id)


# ---------------------------------------------------------------------------- tokenization


@dataclass
class TokenizedExamples:
    """Fixed-length sequences ready for masking: all arrays [N, S]."""

    input_ids: np.ndarray           # int32
    attention_mask: np.ndarray      # int32, 0 at padding
    special_tokens_mask: np.ndarray  # bool, True where masking is not allowed

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch = []
    for t in texts:
        batch.append(t)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode(tokenizer, batch: list[str], **kwargs) -> tuple[list, list]:
    enc = tokenizer(batch, return_special_tokens_mask=True, return_attention_mask=False,
                    **kwargs)
    return enc["input_ids"], enc["special_tokens_mask"]


def group_texts(texts: Iterable[str], tokenizer, max_seq_length: int, *,
                tokenize_batch_size: int = 1000, group_size: int | None = None
                ) -> TokenizedExamples:
    """Tokenize (with special tokens), concatenate, cut into ``max_seq_length`` chunks.

    The incomplete tail is dropped (HF ``group_texts``); ``group_size=1000`` also drops a
    tail after every 1,000 texts, as the reference's batched ``map`` does.
    """
    if max_seq_length < 1:
        raise ValueError(f"max_seq_length must be positive, got {max_seq_length}")
    S = int(max_seq_length)
    chunks_ids: list[np.ndarray] = []
    chunks_special: list[np.ndarray] = []
    carry_ids = np.zeros((0,), np.int32)
    carry_special = np.zeros((0,), bool)
    # One tokenizer call per group makes "a tail dropped every group_size texts" exact.
    batch_size = tokenize_batch_size if group_size is None else int(group_size)
    seen = 0
    for batch in _batches(texts, batch_size):
        ids, special = _encode(tokenizer, batch)
        flat_ids = np.fromiter((t for seq in ids for t in seq), np.int32)
        flat_special = np.fromiter((t for seq in special for t in seq), bool)
        carry_ids = np.concatenate([carry_ids, flat_ids])
        carry_special = np.concatenate([carry_special, flat_special])
        n = (carry_ids.size // S) * S
        if n:
            chunks_ids.append(carry_ids[:n].reshape(-1, S))
            chunks_special.append(carry_special[:n].reshape(-1, S))
            carry_ids, carry_special = carry_ids[n:], carry_special[n:]
        seen += len(batch)
        if group_size is not None and seen % group_size == 0:
            carry_ids, carry_special = carry_ids[:0], carry_special[:0]
    if not chunks_ids:
        raise ValueError(f"not enough tokens for one sequence of {S} "
                         f"(only {carry_ids.size} left after grouping)")
    input_ids = np.concatenate(chunks_ids)
    return TokenizedExamples(input_ids=input_ids,
                             attention_mask=np.ones_like(input_ids),
                             special_tokens_mask=np.concatenate(chunks_special))


def tokenize_lines(texts: Iterable[str], tokenizer, max_seq_length: int, *,
                   tokenize_batch_size: int = 1000, padding_side: str | None = None
                   ) -> TokenizedExamples:
    """One sequence per non-blank line, truncated and padded to ``max_seq_length``.

    Padding uses the tokenizer's pad id (EOS when it has none, like the reference) on
    ``padding_side`` (default: the tokenizer's), and counts as special (never masked).
    """
    S = int(max_seq_length)
    side = padding_side or getattr(tokenizer, "padding_side", "right")
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("tokenizer has neither a pad nor an EOS token to pad with")
    rows_ids, rows_special, rows_attn = [], [], []
    lines = (t for t in texts if t and not t.isspace())
    for batch in _batches(lines, tokenize_batch_size):
        ids, special = _encode(tokenizer, batch, truncation=True, max_length=S)
        out_ids = np.full((len(ids), S), pad_id, np.int32)
        out_special = np.ones((len(ids), S), bool)
        out_attn = np.zeros((len(ids), S), np.int32)
        for r, (seq, sp) in enumerate(zip(ids, special)):
            n = len(seq)
            cols = slice(0, n) if side == "right" else slice(S - n, S)
            out_ids[r, cols] = seq
            out_special[r, cols] = np.asarray(sp, bool)
            out_attn[r, cols] = 1
        rows_ids.append(out_ids)
        rows_special.append(out_special)
        rows_attn.append(out_attn)
    if not rows_ids:
        raise ValueError("no text found: every line was blank")
    return TokenizedExamples(input_ids=np.concatenate(rows_ids),
                             attention_mask=np.concatenate(rows_attn),
                             special_tokens_mask=np.concatenate(rows_special))


# ---------------------------------------------------------------------------- masking


def predict_slots(seq_len: int, mlm_probability: float, *, sigmas: float = 6.0,
                  multiple: int = 8) -> int:
    """Static width P of a row's prediction slots: mean + ``sigmas``·σ of Binomial(S, p),
    rounded up to a multiple of ``multiple``, capped at S."""
    p = float(mlm_probability)
    raw = seq_len * p + sigmas * math.sqrt(seq_len * p * (1.0 - p))
    return min(seq_len, max(multiple, int(math.ceil(raw / multiple)) * multiple))


class MNTPCollator:
    """Masks a batch of fixed-length sequences (numpy in, an ``MNTPBatch`` out).

    Call with ``input_ids``, ``attention_mask``, ``special_tokens_mask`` (all [B, S]) and a
    ``np.random.Generator`` (see the module docstring); ``mask`` is the masking step alone,
    returning the masked ids and the reference's ``labels``.
    """

    def __init__(self, mask_token_id: int, vocab_size: int, *, mlm_probability: float = 0.2,
                 all_mask: bool = False, mask_replace_prob: float = 0.8,
                 random_replace_prob: float = 0.1):
        if not 0.0 <= mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
        if all_mask:
            mask_replace_prob, random_replace_prob = 1.0, 0.0
        if mask_replace_prob < 0 or random_replace_prob < 0 or \
                mask_replace_prob + random_replace_prob > 1.0 + 1e-12:
            raise ValueError("mask_replace_prob + random_replace_prob must be within [0, 1]")
        self.mask_token_id = int(mask_token_id)
        self.vocab_size = int(vocab_size)
        self.mlm_probability = float(mlm_probability)
        self.all_mask = bool(all_mask)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)

    @classmethod
    def from_tokenizer(cls, tokenizer, mask_token_type: str = "blank", **kwargs) -> "MNTPCollator":
        """Sets the tokenizer's mask token (see ``set_mask_token``) and builds the collator;
        random replacement ids cover ``len(tokenizer)`` as in HF."""
        mask_id = set_mask_token(tokenizer, mask_token_type)
        return cls(mask_id, len(tokenizer), **kwargs)

    def slots(self, seq_len: int) -> int:
        return predict_slots(seq_len, self.mlm_probability)

    def mask(self, input_ids: np.ndarray, attention_mask: np.ndarray,
             special_tokens_mask: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
        """(masked input_ids, labels): ``labels`` hold the original id at masked positions,
        -100 elsewhere (HF ``DataCollatorForLanguageModeling``)."""
        ids = np.array(input_ids, dtype=np.int32, copy=True)
        attn = np.asarray(attention_mask, dtype=np.int32)
        B, S = ids.shape
        eligible = ~np.asarray(special_tokens_mask, bool) & (attn != 0)
        masked = (rng.random((B, S)) < self.mlm_probability) & eligible
        labels = np.where(masked, ids, IGNORE_INDEX).astype(np.int32)

        how = rng.random((B, S))
        to_mask = masked & (how < self.mask_replace_prob)
        to_random = masked & ~to_mask & (how < self.mask_replace_prob + self.random_replace_prob)
        ids[to_mask] = self.mask_token_id
        if to_random.any():
            ids[to_random] = rng.integers(0, self.vocab_size, size=int(to_random.sum()),
                                          dtype=np.int64).astype(np.int32)
        return ids, labels

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 special_tokens_mask: np.ndarray, rng: np.random.Generator) -> MNTPBatch:
        ids, labels = self.mask(input_ids, attention_mask, special_tokens_mask, rng)
        return MNTPBatch.from_labels(ids, np.array(attention_mask, np.int32), labels,
                                     self.slots(ids.shape[1]))


# ---------------------------------------------------------------------------- batches


class MNTPBatchIterator(ShuffledBatches):
    """Endless (or ``num_epochs``-long) deterministic, resumable iterator of masked batches.

    Each epoch is a permutation of this process's examples (or their order when
    ``shuffle=False``) cut into batches of ``per_process_batch_size``; the incomplete last
    batch is dropped, so every batch has the same shape. Masks are drawn from
    (seed, process_index, epoch, position), so a resumed run sees the same masks.
    """

    def __init__(self, examples: TokenizedExamples, collator: MNTPCollator,
                 per_process_batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, process_index: int = 0):
        super().__init__(len(examples), per_process_batch_size, seed=seed, shuffle=shuffle,
                         num_epochs=num_epochs, what="sequences")
        self.examples = examples
        self.collator = collator
        self.process_index = int(process_index)

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self._next_rows()
        rng = np.random.default_rng([self.seed, self.process_index, self.epoch, self.position - 1])
        ex = self.examples
        return self.collator(ex.input_ids[rows], ex.attention_mask[rows],
                             ex.special_tokens_mask[rows], rng)
