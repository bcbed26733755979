"""Text preparation exactly as the PyTorch reference ``llm2vec`` 0.2.3 (``LLM2Vec`` in
``llm2vec/llm2vec.py``) does it, verified against its real outputs (``tests/fixtures/smollm2``).

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

Unrelated to encode(): the SimCSE/supervised training collators in the reference insert no
separator, so their ``embed_mask`` is None and mean pooling there covers every column of the
left-padded row, padding included (fixtures ``simcse_path/*``).
"""

from __future__ import annotations

from ..models.pooling import PoolingModeError, check_pooling_mode

SEPARATOR = "!@#$%^&*()"
# The reference's default (``LLM2Vec(doc_max_length=400)``, written to llm2vec_config.json).
DOC_MAX_LENGTH = 400

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


def tokenizer_adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_special) > len(without) and with_special[0] == bos


def validate_pooling(mode: str, tokenizer=None) -> str:
    """``check_pooling_mode``, and ``bos_token`` refused for a tokenizer that adds no BOS."""
    check_pooling_mode(mode)
    if mode == "bos_token" and tokenizer is not None and not tokenizer_adds_bos(tokenizer):
        # The reference would silently return an empty [0, D] array here.
        raise PoolingModeError(
            "pooling_mode='bos_token' needs a tokenizer that prepends a BOS token, but "
            f"{type(tokenizer).__name__} (bos_token={getattr(tokenizer, 'bos_token', None)!r}) "
            "adds none; use 'mean', 'weighted_mean', 'last_token' or 'eos_token'")
    return mode


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


def count_text_tokens(tokenizer, texts: list[str], max_length: int) -> list[int]:
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)
    return [len(ids) for ids in enc["input_ids"]]


def truncate_document(tokenizer, text: str, *, max_length: int, doc_max_length: int) -> str:
    """Whole-word shortening of ``text`` to at most ``doc_max_length`` tokens, as the reference."""
    return _shorten_document(tokenizer, text, max_length=max_length,
                             doc_max_length=doc_max_length)[0]


def _shorten_document(tokenizer, text: str, *, max_length: int,
                      doc_max_length: int) -> tuple[str, bool]:
    """``(truncate_document(...), whether it cut anything)``."""
    n = count_text_tokens(tokenizer, [text], max_length)[0]
    cut = False
    while n > doc_max_length:
        words = text.split()
        keep = int(len(words) * (doc_max_length / n))
        text = " ".join(words[:keep])
        n = count_text_tokens(tokenizer, [text], max_length)[0]
        cut = True
    return text, cut


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
    return build_strings_and_cuts(tokenizer, texts, max_length=max_length,
                                  doc_max_length=doc_max_length, pooling_mode=pooling_mode,
                                  model_type=model_type, name_or_path=name_or_path)[0]


def build_strings_and_cuts(tokenizer, texts, *, max_length: int, doc_max_length: int,
                           pooling_mode: str = "mean", model_type: str | None = None,
                           name_or_path: str | None = None) -> tuple[list[str], list[bool]]:
    """``build_strings``, and for each text whether ``doc_max_length`` shortened it."""
    strings, cuts = [], []
    for instruction, text in normalize_inputs(texts):
        text, cut = _shorten_document(tokenizer, text, max_length=max_length,
                                      doc_max_length=doc_max_length)
        strings.append(prepare_for_tokenization(
            join_instruction(instruction, text), pooling_mode=pooling_mode,
            model_type=model_type, name_or_path=name_or_path))
        cuts.append(cut)
    return strings, cuts
