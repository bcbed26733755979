"""Model-independent half of the encoder: text preparation, tokenization, pooling, bucketing.

Everything here reproduces what the PyTorch reference ``llm2vec`` 0.2.3 (``LLM2Vec`` in
``llm2vec/llm2vec.py``) does, verified against its real outputs (``tests/fixtures/smollm2``).

Reference semantics
-------------------
Inputs. ``encode`` takes texts that are either ``str`` (treated as ``["", text]``) or
``[instruction, text]`` (extra trailing items, as in MEDI's ``[instr, text, id]``, are ignored:
the reference only asserts items 0 and 1 are strings). The reference decides "plain vs pair"
from ``sentences[0]`` alone, so a mixed list crashes or misbehaves there; here each item is
judged on its own.

String building (``_convert_to_str``). The text (never the instruction) is first shortened by
whole words when it is longer than ``doc_max_length`` tokens, then joined as
``instruction.strip() + " " + SEPARATOR + text`` if ``instruction`` is truthy, else
``SEPARATOR + text``. A whitespace-only instruction is truthy, so it yields
``" " + SEPARATOR + text`` (a leading space that ends up in the tokenized row).

doc_max_length. The text is tokenized without special tokens *but with truncation to
max_length*, so its measured length is ``min(n_tokens, max_length)``. While that exceeds
``doc_max_length`` the text is cut to ``int(n_words * doc_max_length / measured)`` words of
``text.split()`` re-joined by single spaces (which also collapses whitespace/newlines), then
re-measured. Consequences: if ``doc_max_length >= max_length`` nothing is ever cut; because the
measure is capped at max_length, the first cut is too mild and the loop iterates; the result is
usually a little *under* doc_max_length tokens; whitespace is only normalized when a cut happens.

prepare_for_tokenization. A few hard-coded checkpoint names get chat wrappers (Llama-3-8B-
Instruct, Mistral-7B-Instruct-v0.2, Llama-2-7b-chat, gemma-2-9b-it, Qwen2-*-Instruct), applied
around the whole joined string (``.strip()`` first). With ``pooling_mode="eos_token"`` an "EOS"
is appended *as text*: ``text.strip() + " </s>"`` for every Llama/Mistral config (Meta-Llama-3-8B:
``"<|end_of_text|>"``; Gemma: ``"<eos>"``; Qwen2: ``"<|endoftext|>"``). The intent was to append
the EOS token; for Llama-2/Mistral ``"</s>"`` is that token, but for any other Llama-config
tokenizer (SmolLM2: EOS is ``<|im_end|>``) the literal characters `` </s>`` are tokenized as
ordinary text (SmolLM2: 3 tokens) and "eos_token" pools the hidden state of ``>``. We reproduce
this (the fixtures' ``enc/eos_token`` were made that way); it is why ``enc/eos_token`` differs
from ``enc/last_token`` although both pool the last position.

Tokenization (``tokenize``). Each string is split on SEPARATOR: the row is the tokenization
(special tokens on, truncation to max_length, right-side truncation) of ``"".join(parts)``, i.e.
with *every* separator removed; the pooled part is ``parts[1]`` only (text after the first
separator, up to a second one if the text itself contains the separator). ``embed_mask`` is built
by tokenizing ``parts[1]`` *alone* (no special tokens, truncated to max_length), counting its
tokens n, and marking the last n positions of the row (in the reference's left-padded batch:
the last n columns). So instruction tokens are attended but not pooled; the count, not a token
alignment, decides the split. Quirks reproduced: a tokenizer that appends special tokens (EOS)
would shift the mask onto them; when max_length truncation cuts the end of the text, the mask
still covers n positions from the end, so it slides onto instruction tokens. Divergence: if
n exceeded the row's real length the reference would mark padding columns (or crash when the
row is the longest); we clip to the real tokens (not reachable with real tokenizers: n <= row
length whenever the row is truncated, and the instruction only adds tokens otherwise).
Padding is with EOS (the reference sets ``pad_token = eos_token``), on the left in the
reference; here left or right, with identical per-row content.

Pooling (``get_pooling``, left padding asserted). With ``skip_instruction`` the pooling mask is
``embed_mask``, else ``attention_mask`` (we fold that choice into the returned ``embed_mask``);
the model itself always sees the full ``attention_mask``. With k = mask.sum():
- ``mean``: mean of the last k positions. For k = 0 (empty text) the slice ``[-0:]`` is the
  whole padded row, so the reference averages pad states too; we return zeros instead (its
  result depends on the batch's padding, so it is not reproducible and not meaningful).
- ``weighted_mean``: weights 1..k on the last k positions (later tokens weigh more, the
  position-weighted mean of SGPT), normalized by their sum; k = 0 gives zeros (as here).
- ``eos_token`` / ``last_token``: ``hidden[:, -1]``, the last real token under left padding,
  whatever the masks say (so with an instruction it is still the row's last token). Empty rows:
  the reference returns the last pad state; we return zeros.
- ``bos_token``: ``hidden[input_ids == bos_token_id]`` -- a boolean gather that returns
  [num_bos, D], silently [0, D] if the tokenizer adds no BOS (SmolLM2) and too many rows if a
  BOS appears inside a text. We take the first real position of each row (the BOS when the
  tokenizer adds one) and refuse the mode up front when the tokenizer adds no BOS
  (``check_pooling_mode(mode, tokenizer)``).
Our ``pool`` uses mask positions rather than "last k columns", which coincide for the masks
``tokenize`` builds (a suffix of the real tokens) and make left and right padding agree.

Unrelated to encode(): the SimCSE/supervised training collators in the reference insert no
separator, so their ``embed_mask`` is None and mean pooling there covers every column of the
left-padded row, padding included (fixtures ``simcse_path/*``).
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

SEPARATOR = "!@#$%^&*()"
POOLING_MODES = ("mean", "weighted_mean", "eos_token", "last_token", "bos_token")

# Reference `prepare_for_tokenization` keys on `config._name_or_path` for chat wrappers.
_CHAT_WRAPPERS = {
    "meta-llama/Meta-Llama-3-8B-Instruct": (
        "<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
    "mistralai/Mistral-7B-Instruct-v0.2": ("[INST] ", " [/INST]"),
    "meta-llama/Llama-2-7b-chat-hf": ("[INST] ", " [/INST]"),
    "google/gemma-2-9b-it": ("<bos><start_of_turn>user\n", "<end_of_turn>"),
    "Qwen/Qwen2-1.5B-Instruct": ("<|im_start|>user\n", "<|im_end|>"),
    "Qwen/Qwen2-7B-Instruct": ("<|im_start|>user\n", "<|im_end|>"),
}
# The reference dispatches on the config *class*; model_type names the same classes.
# (gemma2 is a different class from GemmaConfig there, so it gets no suffix.)
_EOS_SUFFIX_BY_MODEL_TYPE = {
    "llama": " </s>",
    "mistral": " </s>",
    "gemma": "<eos>",
    "qwen2": "<|endoftext|>",
}


# --------------------------------------------------------------------------- validation


def tokenizer_adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(without) and with_special[0] == bos


def check_pooling_mode(mode: str, tokenizer=None) -> str:
    """Raise ValueError for an unknown mode, or for ``bos_token`` with a tokenizer adding no BOS."""
    if mode not in POOLING_MODES:
        raise ValueError(
            f"unknown pooling mode {mode!r}; valid modes: {', '.join(POOLING_MODES)}")
    if mode == "bos_token" and tokenizer is not None and not tokenizer_adds_bos(tokenizer):
        # The reference would silently return an empty [0, D] array here.
        raise ValueError(
            "pooling_mode='bos_token' needs a tokenizer that prepends a BOS token, but "
            f"{type(tokenizer).__name__} (bos_token={getattr(tokenizer, 'bos_token', None)!r}) "
            "adds none; use 'mean', 'weighted_mean', 'last_token' or 'eos_token'")
    return mode


# --------------------------------------------------------------------------- text building


def normalize_inputs(texts) -> list[tuple[str, str]]:
    """Texts as ``(instruction, text)`` pairs; a bare ``str`` item means ``("", item)``."""
    if isinstance(texts, str):
        # The reference would iterate the characters; one text is the only sane reading.
        texts = [texts]
    pairs = []
    for i, item in enumerate(texts):
        if isinstance(item, str):
            pairs.append(("", item))
        elif (isinstance(item, (list, tuple)) and len(item) >= 2
              and isinstance(item[0], str) and isinstance(item[1], str)):
            pairs.append((item[0], item[1]))
        else:
            raise TypeError(
                f"text #{i} must be a str or an [instruction, text] pair of str, got {item!r}")
    return pairs


def _n_text_tokens(tokenizer, texts: list[str], max_length: int) -> list[int]:
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)
    return [len(ids) for ids in enc["input_ids"]]


def truncate_document(tokenizer, text: str, *, max_length: int, doc_max_length: int) -> str:
    """Whole-word shortening of ``text`` to at most ``doc_max_length`` tokens, as the reference."""
    n = _n_text_tokens(tokenizer, [text], max_length)[0]
    while n > doc_max_length:
        words = text.split()
        keep = int(len(words) * (doc_max_length / n))
        text = " ".join(words[:keep])
        n = _n_text_tokens(tokenizer, [text], max_length)[0]
    return text


def join_instruction(instruction: str, text: str) -> str:
    return f"{instruction.strip()} {SEPARATOR}{text}" if instruction else f"{SEPARATOR}{text}"


def prepare_for_tokenization(text: str, *, pooling_mode: str = "mean",
                             model_type: str | None = None,
                             name_or_path: str | None = None) -> str:
    """Reference chat wrappers and the eos_token-mode text suffix (see module docstring)."""
    wrap = _CHAT_WRAPPERS.get(name_or_path or "")
    if wrap is not None:
        text = wrap[0] + text.strip() + wrap[1]
        if name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct":
            return text  # the reference returns early here: no eos suffix
    if pooling_mode == "eos_token":
        if name_or_path == "meta-llama/Meta-Llama-3-8B":
            text = text.strip() + "<|end_of_text|>"
        elif model_type in _EOS_SUFFIX_BY_MODEL_TYPE:
            text = text.strip() + _EOS_SUFFIX_BY_MODEL_TYPE[model_type]
    return text


def build_strings(tokenizer, texts, *, max_length: int, doc_max_length: int,
                  pooling_mode: str = "mean", model_type: str | None = None,
                  name_or_path: str | None = None) -> list[str]:
    """The separator-carrying strings the reference feeds to ``tokenize``."""
    out = []
    for instruction, text in normalize_inputs(texts):
        text = truncate_document(tokenizer, text, max_length=max_length,
                                 doc_max_length=doc_max_length)
        out.append(prepare_for_tokenization(
            join_instruction(instruction, text), pooling_mode=pooling_mode,
            model_type=model_type, name_or_path=name_or_path))
    return out


# --------------------------------------------------------------------------- tokenization


@dataclasses.dataclass(frozen=True)
class TokenizedRow:
    """One unpadded row: its token ids and how many trailing tokens are pooled."""

    input_ids: tuple[int, ...]
    n_pooled: int

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_strings(tokenizer, strings: Sequence[str], *, max_length: int,
                     skip_instruction: bool = True) -> list[TokenizedRow]:
    """Reference ``LLM2Vec.tokenize`` without the padding: rows plus pooled-token counts."""
    if not strings:
        return []
    originals, pooled_parts = [], []
    for s in strings:
        parts = s.split(SEPARATOR)
        pooled_parts.append(parts[1] if len(parts) > 1 else "")
        originals.append("".join(parts))
    enc = tokenizer(list(originals), truncation=True, max_length=max_length)
    counts = _n_text_tokens(tokenizer, pooled_parts, max_length)
    rows = []
    for ids, n in zip(enc["input_ids"], counts):
        ids = tuple(int(t) for t in ids)
        rows.append(TokenizedRow(ids, len(ids) if not skip_instruction else min(n, len(ids))))
    return rows


def tokenize_rows(tokenizer, texts, *, max_length: int, doc_max_length: int,
                  skip_instruction: bool = True, pooling_mode: str = "mean",
                  model_type: str | None = None,
                  name_or_path: str | None = None) -> list[TokenizedRow]:
    check_pooling_mode(pooling_mode, tokenizer)
    strings = build_strings(tokenizer, texts, max_length=max_length,
                            doc_max_length=doc_max_length, pooling_mode=pooling_mode,
                            model_type=model_type, name_or_path=name_or_path)
    return tokenize_strings(tokenizer, strings, max_length=max_length,
                            skip_instruction=skip_instruction)


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


def tokenize(tokenizer, texts, *, max_length: int, doc_max_length: int,
             skip_instruction: bool = True, padding_side: str = "right",
             pad_to: int | None = None, pooling_mode: str = "mean",
             model_type: str | None = None,
             name_or_path: str | None = None) -> dict[str, np.ndarray]:
    """Texts -> int32 [B, S] ``input_ids``, ``attention_mask``, ``embed_mask`` (pooling mask).

    ``model_type``/``name_or_path`` only matter for the reference's eos_token text suffix and
    chat wrappers; pass the model config's values to reproduce ``LLM2Vec.encode`` exactly.
    """
    rows = tokenize_rows(tokenizer, texts, max_length=max_length,
                         doc_max_length=doc_max_length, skip_instruction=skip_instruction,
                         pooling_mode=pooling_mode, model_type=model_type,
                         name_or_path=name_or_path)
    return collate(rows, pad_id=pad_token_id(tokenizer), padding_side=padding_side,
                   pad_to=pad_to)


# --------------------------------------------------------------------------- pooling


def pool(hidden: jax.Array, attention_mask: jax.Array, embed_mask: jax.Array,
         mode: str) -> jax.Array:
    """[B, S, D] hidden states -> [B, D] float32 sentence embeddings (padding-side agnostic).

    ``embed_mask`` is the pooling mask (instruction excluded, or equal to ``attention_mask``
    when instructions are not skipped). Rows with nothing to pool give zeros.
    """
    embed_mask = jnp.asarray(embed_mask)
    row = jnp.asarray(attention_mask) > 0
    if mode in ("mean", "weighted_mean"):
        # The averaged positions are embed_mask's, even padding (the reference's SimCSE
        # collator pools every column: ``simcse_features(compat_pool_all_positions=True)``).
        row = row | (embed_mask > 0)
    return pool_segments(hidden, row.astype(jnp.int32), embed_mask, mode, 1)[:, 0]


def pool_segments(hidden: jax.Array, segment_ids: jax.Array, embed_mask: jax.Array,
                  mode: str, num_segments: int) -> jax.Array:
    """Packed rows: [B, S, D] hidden states -> [B, num_segments, D] float32, one embedding per
    text; text j of a row is the run of tokens with ``segment_ids == j + 1`` (0 = padding).

    Each segment is pooled exactly as ``pool`` pools a row of its own; absent segments give
    zeros.
    """
    check_pooling_mode(mode)
    hidden = jnp.asarray(hidden).astype(jnp.float32)
    segment_ids = jnp.asarray(segment_ids)
    member = segment_ids[..., None] == jnp.arange(1, num_segments + 1)  # [B, S, P]
    pooled = member & (jnp.asarray(embed_mask) > 0)[..., None]
    if mode in ("mean", "weighted_mean"):
        if mode == "mean":
            weights = pooled.astype(jnp.float32)
        else:
            # Rank within the pooled tokens, 1..k: equals the reference's arange over its last k
            # columns because the pooled tokens are a contiguous suffix of the real ones.
            weights = jnp.cumsum(pooled, axis=1).astype(jnp.float32) * pooled
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / jnp.maximum(total, 1e-9)
        # where(), not multiply: pad-position states may be non-finite and 0*nan is nan.
        masked = jnp.where(pooled.any(-1)[..., None], hidden, 0.0)
        return jnp.einsum("bsp,bsd->bpd", weights, masked,
                          precision=jax.lax.Precision.HIGHEST)
    s = hidden.shape[1]
    position = jnp.arange(s)[None, :, None]
    if mode in ("eos_token", "last_token"):
        idx = jnp.where(member, position, -1).max(axis=1)  # [B, P]
    else:  # bos_token: first real token, which is the BOS for tokenizers that add one
        idx = jnp.where(member, position, s).min(axis=1)
    picked = jnp.take_along_axis(hidden, jnp.clip(idx, 0, s - 1)[..., None], axis=1)
    return jnp.where(member.any(axis=1)[..., None], picked, 0.0)


# --------------------------------------------------------------------------- bucketing


def default_buckets(max_length: int, *, min_bucket: int = 16, min_step: int = 16) -> tuple[int, ...]:
    """Padded widths from ``min_bucket`` up to, and always including, ``max_length``:
    ``min_step`` apart below 64 tokens, then each ~1/4 wider than the last (multiples of 8),
    so a long row is padded by at most ~25% (powers of two waste up to 50%) while the number
    of compiled shapes stays small (max_length 512: 13 widths; 16 with ``min_step=8``).

    ``LLM2Vec`` takes its row widths from ``min_step=8`` buckets: a forward compiles in under
    a second, and a batch of short texts gets a closer fit (one text a row, on the 512
    benchmark sentences at batch 32, 13.8% of the computed tokens are padding instead of
    22.6%). Training keeps 16, as a train step takes far longer to compile."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if min_step < 8 or min_step % 8:
        raise ValueError(f"min_step must be a positive multiple of 8, got {min_step}")
    buckets, b = [], min_bucket
    while b < max_length:
        buckets.append(b)
        b += min_step if b < 64 else max(min_step, -(-b // 32) * 8)  # b/4 rounded up to 8s
    buckets.append(max_length)
    return tuple(buckets)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"a row of {length} tokens fits no bucket (largest {max(buckets)})")


def segments_per_row(width: int) -> int:
    """How many texts a packed row of ``width`` tokens may hold (the static P of its pooled
    output [rows, P, D]): a text of 4 tokens or more never finds a row full by count."""
    return max(1, width // 4)


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    """One forward pass: rows of ``width`` tokens, each holding the texts ``rows[r]`` (input
    indices) one after another, at most ``segments`` of them."""

    width: int
    segments: int
    rows: tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class PackPlan:
    """Every non-empty text in exactly one batch; ``empty``: the zero-token texts, which have
    nothing to pool (their embedding is the zero vector)."""

    batches: tuple[PackedBatch, ...]
    empty: tuple[int, ...]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def padded_row_count(rows: int, rows_per_batch: int) -> int:
    """Rows a batch of ``rows`` is computed with: full batches as they are, a final partial one
    padded to the next power of two (capped at ``rows_per_batch``), so row counts, like widths,
    come from a small set of compiled shapes."""
    return rows if rows >= rows_per_batch else min(rows_per_batch, 1 << max(0, rows - 1).bit_length())


class _Unplaced:
    """Texts not yet in a row, by length: the longest one that fits a room, in O(log n)."""

    def __init__(self, lengths: Sequence[int], indices: Iterable[int]):
        self.lengths = lengths
        self._by_length: dict[int, list[int]] = {}
        for i in sorted(indices, reverse=True):  # reversed: pop() yields input order
            self._by_length.setdefault(lengths[i], []).append(i)
        self._present = sorted(self._by_length)  # distinct lengths still to place

    def __bool__(self) -> bool:
        return bool(self._present)

    def longest(self) -> int:
        return self._present[-1]

    def take_at_most(self, room: int) -> int | None:
        at = bisect.bisect_right(self._present, room) - 1
        if at < 0:
            return None
        n = self._present[at]
        index = self._by_length[n].pop()
        if not self._by_length[n]:
            del self._present[at]
        return index

    def fill_rows(self, width: int, per_row: int, max_rows: int) -> list[tuple[int, ...]]:
        """Up to ``max_rows`` rows: each takes the longest text left, then, while there is
        room, the longest that still fits, up to ``per_row`` texts."""
        rows = []
        while self and len(rows) < max_rows:
            row, room = [], width
            while len(row) < per_row and (index := self.take_at_most(room)) is not None:
                row.append(index)
                room -= self.lengths[index]
            rows.append(tuple(row))
        return rows


def plan_packed(lengths: Iterable[int], *, rows_per_batch: int, max_length: int,
                buckets: Sequence[int] | None = None, packing: bool = True,
                min_width: int = 64) -> PackPlan:
    """Pack texts of the given token lengths into batches of ``rows_per_batch`` rows.

    Each batch is as wide as the bucket of its longest text (at least ``min_width`` when
    packing); a row takes the longest text left, then, while there is room, the longest
    that still fits (at most ``segments_per_row(width)`` texts). Rows come out nearly full,
    so almost no compute goes to padding; widths stay in ``buckets``, so a jitted forward
    compiles a bounded number of times. The final batch, whose rows are padded to a power of
    two anyway (``padded_row_count``), is repacked into that many rows of the narrowest
    bucket that holds its texts. ``packing=False``: one text per row, longest first (plain
    length-sorted batching).

    Why ``min_width``: attention costs grow with the row width, but up to 64 tokens they are
    a few percent of a forward (SmolLM2, bf16 on CPU: 3,240 tok/s at width 32, 3,120 at 64,
    2,650 at 128), while rows of 64 pack typical sentences (10-40 tokens) two to five a row.
    On the 512 benchmark sentences (9-45 tokens) padding is 2.6% of the computed tokens at
    ``min_width=64``, 5.2% at 48, 10.8% at 32 and 13.8% without packing.
    """
    if rows_per_batch < 1:
        raise ValueError(f"batch_size must be >= 1, got {rows_per_batch}")
    lengths = [int(n) for n in lengths]
    buckets = tuple(sorted(buckets)) if buckets is not None else default_buckets(max_length)
    empty = tuple(i for i, n in enumerate(lengths) if n == 0)
    unplaced = _Unplaced(lengths, (i for i, n in enumerate(lengths) if n > 0))
    if unplaced:
        bucket_for(unplaced.longest(), buckets)  # fail early, naming the length

    def texts_per_row(width: int) -> int:
        return segments_per_row(width) if packing else 1

    batches = []
    while unplaced:
        width = bucket_for(min(max(unplaced.longest(), min_width if packing else 0),
                               buckets[-1]), buckets)
        rows = unplaced.fill_rows(width, texts_per_row(width), rows_per_batch)
        if not unplaced and len(rows) < rows_per_batch:
            texts = [i for row in rows for i in row]
            room = padded_row_count(len(rows), rows_per_batch)
            for narrower in (b for b in buckets if b < width):
                tail = _Unplaced(lengths, texts)
                repacked = tail.fill_rows(narrower, texts_per_row(narrower), room)
                if not tail:
                    rows, width = repacked, narrower
                    break
        batches.append(PackedBatch(width, texts_per_row(width), tuple(rows)))
    return PackPlan(tuple(batches), empty)


def collate_packed(rows: Sequence[TokenizedRow], batch: PackedBatch, *, pad_id: int,
                   num_rows: int | None = None) -> dict[str, np.ndarray]:
    """A packed batch's int32 [num_rows, width] ``input_ids``, ``segment_ids`` (text j of a
    row is j + 1, padding 0), ``positions`` (0.. within each text, so RoPE sees each text as
    if alone) and ``embed_mask``; plus ``slots``, the flat index into the pooled
    [num_rows * P, D] output of each text in ``indices`` (the batch's input indices).

    Rows past the batch's own (``num_rows`` pads the row count to a compiled shape) repeat its
    first row and own no slot (rather than padding alone: a row with no visible key is left to
    each attention kernel's own conventions, cuDNN's included).
    """
    num_rows = len(batch.rows) if num_rows is None else num_rows
    if num_rows < len(batch.rows):
        raise ValueError(f"num_rows={num_rows} < the batch's {len(batch.rows)} rows")
    width, per_row = batch.width, batch.segments
    shape = (num_rows, width)
    feats = {"input_ids": np.full(shape, pad_id, np.int32),
             "segment_ids": np.zeros(shape, np.int32),
             "positions": np.zeros(shape, np.int32),
             "embed_mask": np.zeros(shape, np.int32)}
    indices, slots = [], []
    for r, row in enumerate(batch.rows):
        start = 0
        for j, index in enumerate(row):
            text = rows[index]
            end = start + len(text)
            if end > width:
                raise ValueError(f"row {r} of the batch holds {end} tokens > width {width}")
            feats["input_ids"][r, start:end] = text.input_ids
            feats["segment_ids"][r, start:end] = j + 1
            feats["positions"][r, start:end] = np.arange(len(text))
            feats["embed_mask"][r, end - text.n_pooled:end] = 1
            indices.append(index)
            slots.append(r * per_row + j)
            start = end
    for key in feats:
        feats[key][len(batch.rows):] = feats[key][0]
    feats["indices"] = np.asarray(indices, np.int64)
    feats["slots"] = np.asarray(slots, np.int64)
    return feats
