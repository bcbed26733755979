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
"""

from __future__ import annotations

import json
import os

import numpy as np

from ...models.config import ModelConfig, RopeScaling
from ..hf import hf_shapes
from ..io import staged_directory
from ..safetensors_io import write_safetensors
from .metadata import GGUFError, read_metadata, require
from .tokenizer import check_tokenizer_supported, write_tokenizer

_SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")


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


# ---------------------------------------------------------------------------- config


def model_config(meta: dict, tensor_names: set[str], dtype: str) -> ModelConfig:
    """The ``ModelConfig`` a llama-architecture GGUF describes (``dtype``: the weights')."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(
            f"unsupported GGUF architecture {arch!r}: only 'llama' (Llama/Mistral family) is supported"
        )
    p = "llama."
    hidden = int(require(meta, p + "embedding_length"))
    n_head = int(require(meta, p + "attention.head_count"))
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

    rope_scaling = RopeScaling()
    scaling_type = meta.get(p + "rope.scaling.type")
    if scaling_type not in (None, "none"):
        if scaling_type != "linear":
            raise GGUFError(f"unsupported rope.scaling.type {scaling_type!r}")
        rope_scaling = RopeScaling("linear", float(require(meta, p + "rope.scaling.factor")))
    elif meta.get(p + "rope.scaling.factor") not in (None, 1.0):
        # Older converters wrote only the factor; llama.cpp reads that as linear.
        rope_scaling = RopeScaling("linear", float(meta[p + "rope.scaling.factor"]))

    return ModelConfig(
        vocab_size=vocab_size, hidden_size=hidden,
        intermediate_size=int(require(meta, p + "feed_forward_length")),
        num_layers=int(require(meta, p + "block_count")), num_heads=n_head, num_kv_heads=n_kv,
        head_dim=head_dim,
        rms_norm_eps=float(require(meta, p + "attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get(p + "rope.freq_base", 10000.0)), rope_scaling=rope_scaling,
        max_position_embeddings=int(require(meta, p + "context_length")),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        o_bias="blk.0.attn_output.bias" in tensor_names,
        bos_token_id=_token_id(meta, "bos_token_id"), eos_token_id=_token_id(meta, "eos_token_id"),
        pad_token_id=_token_id(meta, "padding_token_id"), dtype=dtype, param_dtype=dtype)


def _token_id(meta: dict, key: str) -> int | None:
    value = meta.get("tokenizer.ggml." + key)
    return None if value is None else int(value)


def hf_config(config: ModelConfig, meta: dict) -> dict:
    """config.json: the model's HF config plus the GGUF's unknown-token id."""
    return {**config.to_hf(), "unk_token_id": _token_id(meta, "unknown_token_id")}


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


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return a
    if dtype == "float16":
        return a.astype(np.float16)
    import ml_dtypes  # ships with jax; numpy has no native bfloat16

    return a.astype(ml_dtypes.bfloat16)


def _write_weights(path: str, tensors: list, config: ModelConfig) -> None:
    """Every tensor dequantized, un-permuted and cast in turn, straight into the file: peak
    memory is one tensor, not the whole model."""
    import gguf

    dtype = config.param_dtype
    expected = hf_shapes(config)
    plan = {}  # hf name -> (reader tensor, GGUF block sub-name)
    for t in tensors:
        hf, sub = _hf_name(t.name)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        # 1-D norms are sometimes stored as (n,) and sometimes padded with unit dims.
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        if hf not in expected:
            raise GGUFError(f"tensor {t.name!r} ({hf}) has no place in the model its "
                            "metadata describes")
        if shape != expected[hf]:
            raise GGUFError(f"tensor {t.name!r} has shape {shape}, config implies {expected[hf]}")
        plan[hf] = (t, sub)
    missing = sorted(set(expected) - set(plan))
    if missing:
        raise GGUFError(f"GGUF lacks tensors the model needs: {', '.join(missing[:6])}")

    def produce(hf: str) -> np.ndarray:
        t, sub = plan[hf]
        a = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        a = a.reshape(expected[hf])
        if sub == "attn_q":
            a = unpermute_qk(a, config.num_heads)
        elif sub == "attn_k":
            a = unpermute_qk(a, config.num_kv_heads)
        return _cast(a, dtype)

    np_dtype = _cast(np.zeros(0, np.float32), dtype).dtype
    write_safetensors(path, [(hf, np_dtype, expected[hf]) for hf in sorted(plan)], produce)


# ---------------------------------------------------------------------------- public entry


def convert_gguf(gguf_path, out_dir, *, dtype: str = "float32", overwrite: bool = False) -> str:
    """Convert a llama-architecture GGUF file into a Hugging Face checkpoint directory.

    Every tensor is dequantized to float32 (then cast to ``dtype``: float32, float16 or
    bfloat16). The checkpoint is assembled in a temporary sibling directory that replaces
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
    meta = read_metadata(reader)
    tensor_names = {t.name for t in reader.tensors}

    # All validation happens before the first byte is written.
    config = model_config(meta, tensor_names, dtype)
    check_tokenizer_supported(meta)
    for t in reader.tensors:
        _hf_name(t.name)

    cfg = hf_config(config, meta)
    with staged_directory(out) as tmp:
        _write_weights(os.path.join(tmp, "model.safetensors"), reader.tensors, config)
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(cfg, fh, indent=2, sort_keys=True)
        gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg[k] is not None}
        with open(os.path.join(tmp, "generation_config.json"), "w") as fh:
            json.dump(gen, fh, indent=2)
        write_tokenizer(tmp, meta, cfg)
    return out
