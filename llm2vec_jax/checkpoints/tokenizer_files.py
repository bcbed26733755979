"""Tokenizer files that both transformers generations read identically.

Every directory we write for users (the merged encoder, LoRA adapter dirs, ``convert``
outputs) must load unchanged in transformers 5.x and in the PyTorch llm2vec reference's own
stack (transformers 4.44 + tokenizers 0.19). transformers 5's ``save_pretrained`` output does
not: it names the class ``TokenizersBackend`` (unknown to 4.x), writes BPE merges as
``[left, right]`` pairs (tokenizers 0.19 fails with "data did not match any variant of untagged
enum ModelWrapper"), keeps the chat template only in ``chat_template.jinja``, names the extra
special tokens ``extra_special_tokens`` and writes no ``model_input_names`` (so 4.x returns
``token_type_ids``, which ``LlamaModel.forward`` rejects). :func:`make_portable` rewrites a
written directory's tokenizer files in place into the subset both read.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

# PreTrainedTokenizerFast resolves in 4.x and 5.x and uses tokenizer.json verbatim in both
# (a concrete class such as GPT2Tokenizer is rebuilt by 5.x with its own pre-tokenizer, and
# LlamaTokenizerFast rewrites the post-processor from add_bos_token in 4.x), so the ids come
# from the one tokenizer.json whichever generation loads it.
PORTABLE_CLASS = "PreTrainedTokenizerFast"
# The decoder forward signature takes no token_type_ids; 4.x returns them unless told.
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
_NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


def _legacy_merges(tokenizer_json: dict) -> None:
    """``[left, right]`` merges -> ``"left right"`` strings (tokenizers 0.19 parses only these;
    0.20+ reads both). Byte-level BPE symbols never contain a plain space, so this is lossless
    there; a vocabulary whose merges do contain one keeps the pair form (only 5.x reads it)."""
    model = tokenizer_json.get("model") or {}
    merges = model.get("merges")
    if not merges or not isinstance(merges[0], list):
        return
    if any(" " in a or " " in b for a, b in merges):
        log.warning("a BPE merge contains a space: tokenizer.json keeps [left, right] merges, "
                    "which tokenizers < 0.20 (transformers 4.44) cannot read")
        return
    model["merges"] = [f"{a} {b}" for a, b in merges]


def _write_json(path: str, obj: dict) -> None:
    """Atomically (a reader of a cached model directory never sees half a file)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def make_portable(directory: str | os.PathLike, overrides: dict | None = None) -> None:
    """Rewrite the tokenizer files in ``directory`` so that transformers 5 and transformers
    4.44 + tokenizers 0.19 load the same tokenizer from them (``overrides``: fields the
    writer knows better, set in ``tokenizer_config.json``). A directory without a
    ``tokenizer_config.json`` is left alone (nothing was written there)."""
    directory = os.fspath(directory)
    config_path = os.path.join(directory, "tokenizer_config.json")
    if not os.path.isfile(config_path):
        return
    tok_path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(tok_path):
        with open(tok_path, encoding="utf-8") as fh:
            tok = json.load(fh)
        _legacy_merges(tok)
        _write_json(tok_path, tok)

    with open(config_path, encoding="utf-8") as fh:
        tc = json.load(fh)
    tc.update(overrides or {})
    if os.path.isfile(tok_path):
        tc["tokenizer_class"] = PORTABLE_CLASS
    tc["model_input_names"] = list(MODEL_INPUT_NAMES)
    # 4.x reads the chat template only from tokenizer_config.json; 5.x prefers the .jinja
    # file, which stays (same text).
    jinja = os.path.join(directory, "chat_template.jinja")
    if "chat_template" not in tc and os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as fh:
            tc["chat_template"] = fh.read()
    # 5.x writes extra_special_tokens, 4.44 reads additional_special_tokens: write both.
    extra = tc.get("extra_special_tokens")
    if isinstance(extra, list) and "additional_special_tokens" not in tc:
        tc["additional_special_tokens"] = list(extra)
    _write_json(config_path, tc)

    # 4.x takes the special tokens from special_tokens_map.json (5.x no longer writes it).
    smap = {k: tc[k] for k in _NAMED_SPECIAL if tc.get(k) is not None}
    if tc.get("additional_special_tokens"):
        smap["additional_special_tokens"] = tc["additional_special_tokens"]
    _write_json(os.path.join(directory, "special_tokens_map.json"), smap)
