"""The tokenizer of a llama-architecture GGUF as Hugging Face tokenizer files.

``tokenizer.ggml.model == "gpt2"`` is byte-level BPE: the vocabulary is
``tokenizer.ggml.tokens`` (id = position), the merges are ``"a b"`` strings in
``tokenizer.ggml.merges``. llama.cpp does not store the pre-tokenizer regex, only a name
(``tokenizer.ggml.pre``) that selects hard-coded regexes in llama.cpp; we map the names we
know to the equivalent ``tokenizers`` pre-tokenizers (see ``_PRE_TOKENIZERS``) and refuse
anything else rather than silently tokenizing differently. Control tokens
(``token_type == 3``) become special added tokens, user-defined ones (4) plain added tokens.
BOS is prepended only if ``tokenizer.ggml.add_bos_token`` says so.
SentencePiece (``"llama"``) vocabularies are not supported yet.
"""

from __future__ import annotations

from typing import Callable

from ..tokenizer_files import make_portable
from .metadata import GGUFError

# llama.cpp token types (gguf.TokenType)
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4

# Llama-3's pre-tokenizer regex, as in Meta's tokenizer.json.
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_smollm():
    from tokenizers import pre_tokenizers as pt

    return pt.Sequence([pt.Digits(individual_digits=True),
                        pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])


def _pre_gpt2():
    from tokenizers import pre_tokenizers as pt

    return pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)


def _pre_llama_bpe():
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    return pt.Sequence([pt.Split(Regex(_LLAMA3_REGEX), behavior="isolated", invert=False),
                        pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])


# llama.cpp `tokenizer.ggml.pre` name -> equivalent HF pre-tokenizer. Only "smollm" is verified
# against a reference tokenizer; the others follow the models' published tokenizer.json.
_PRE_TOKENIZERS: dict[str, Callable] = {
    "smollm": _pre_smollm,
    "gpt-2": _pre_gpt2,
    "llama-bpe": _pre_llama_bpe,
}


def check_tokenizer_supported(meta: dict) -> None:
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFError(
            f"unsupported GGUF tokenizer model tokenizer.ggml.model={model!r}: only 'gpt2' (byte-level BPE) is supported"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise GGUFError(
            f"unsupported GGUF pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: {', '.join(sorted(_PRE_TOKENIZERS))}"
        )
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
        if not meta.get(key):
            raise GGUFError(f"GGUF metadata is missing {key!r} (needed for the tokenizer)")


def write_tokenizer(out: str, meta: dict, cfg: dict) -> None:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json from the GGUF
    vocabulary (``cfg``: the HF config dict, for the special token ids)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = _PRE_TOKENIZERS[meta.get("tokenizer.ggml.pre", "default")]()
    tk.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    byte_level = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)

    def name(key):
        i = cfg.get(key)
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos, unk, pad = (name(k) for k in ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id"))
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        single = " ".join(([f"{bos}:0"] if add_bos else []) + ["$A:0"] + ([f"{eos}:0"] if add_eos else []))
        pair = single + " " + " ".join(
            ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else []))
        special = [(t, vocab[t]) for t in {bos if add_bos else None, eos if add_eos else None} if t]
        tk.post_processor = processors.Sequence(
            [byte_level, processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)])
    else:
        tk.post_processor = byte_level

    control = [t for t, ty in zip(tokens, types) if ty == _TOKEN_CONTROL]
    user = [t for t, ty in zip(tokens, types) if ty == _TOKEN_USER_DEFINED]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    if user:
        tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    named = {bos, eos, unk, pad}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
        additional_special_tokens=[t for t in control if t not in named],
        model_max_length=cfg["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
    )
    template = meta.get("tokenizer.chat_template")
    if template:
        fast.chat_template = template
    fast.save_pretrained(out)
    # add_bos/eos_token are written explicitly (5.x drops them when False); the chat template
    # travels in tokenizer_config.json too, which make_portable adds from the .jinja file.
    make_portable(out, {"add_bos_token": add_bos, "add_eos_token": add_eos})
