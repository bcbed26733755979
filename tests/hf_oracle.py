"""Hugging Face PyTorch as the oracle: tiny random checkpoints and reference forwards.

torch and transformers' PyTorch models are test-only dependencies.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import torch
import transformers

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2,
            pad_token_id=2)


def random_normal(key, shape, dtype=np.float32):
    """``jax.random.normal(key, shape, dtype)``, drawn flat and reshaped: the same values, but
    an eager multi-dimensional draw compiles several times slower on CPU (as in
    ``models.specs.init_weight``), and tests perturb adapters of many shapes."""
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


# name -> (model_type, overrides of TINY)
TINY_CONFIGS = {
    "llama": ("llama", {}),
    "llama_tied": ("llama", dict(tie_word_embeddings=True)),
    "llama3_rope": ("llama", dict(rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                    low_freq_factor=1.0, high_freq_factor=4.0,
                                                    original_max_position_embeddings=16),
                                  rope_theta=500000.0)),
    "linear_rope": ("llama", dict(rope_scaling=dict(rope_type="linear", factor=4.0))),
    "odd_head_dim": ("llama", dict(head_dim=24, num_attention_heads=4, num_key_value_heads=4)),
    "mqa_kv1": ("llama", dict(num_key_value_heads=1)),
    "gqa_kv4_bias": ("llama", dict(num_key_value_heads=4, attention_bias=True, mlp_bias=True)),
    "mistral_window": ("mistral", dict(sliding_window=4)),
    "qwen2": ("qwen2", {}),  # q/k/v biases, no o bias
    "qwen3_tied": ("qwen3", dict(head_dim=24, tie_word_embeddings=True)),  # q/k norms
    # embeddings × √D, (1 + w) norms, tanh GELU, head_dim ≠ D/N, tied
    "gemma": ("gemma", dict(head_dim=24, hidden_act="gelu")),
    # + norms after attention and MLP, logit soft-capping (caps low enough to bite on random
    # weights), query_pre_attn_scalar, sliding window on layer 0 only
    "gemma2": ("gemma2", dict(head_dim=24, sliding_window=4, attn_logit_softcapping=0.5,
                              final_logit_softcapping=2.0, query_pre_attn_scalar=20)),
    # + q/k norms, a RoPE base per layer type (global one linearly scaled), window on layer 0
    "gemma3": ("gemma3_text", dict(head_dim=24, sliding_window=4, query_pre_attn_scalar=20,
                                   layer_types=["sliding_attention", "full_attention"],
                                   rope_parameters={
                                       "full_attention": {"rope_type": "linear", "factor": 4.0,
                                                          "rope_theta": 1e6},
                                       "sliding_attention": {"rope_type": "default",
                                                             "rope_theta": 1e4}})),
}


def make_hf_model(name: str, seed: int = 0, **extra):
    """A tiny random HF model; ``extra`` overrides config fields (e.g. a real vocab size)."""
    model_type, overrides = TINY_CONFIGS[name]
    config = transformers.AutoConfig.for_model(model_type, **{**TINY, **overrides, **extra})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # HF initialises norms at exactly 1: randomise them so a swapped norm cannot hide.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight") or n.endswith("bias"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if n.endswith("weight") else 0.1 * torch.randn_like(p))
    return model.eval()


def save_hf_model(model, directory) -> str:
    model.save_pretrained(directory, safe_serialization=True)
    return str(directory)


def batch(kind: str, batch_size: int, seq: int, vocab: int = 128, seed: int = 0):
    """input_ids and attention_mask with no, left or right padding (ragged lengths)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(batch_size, seq)).astype(np.int32)
    mask = np.ones((batch_size, seq), np.int32)
    if kind != "none":
        for row in range(batch_size):
            pad = (row * 3 + 2) % (seq - 1)  # row lengths differ; at least one real token
            if pad:
                if kind == "left":
                    mask[row, :pad] = 0
                else:
                    mask[row, seq - pad:] = 0
        ids = np.where(mask == 1, ids, 2)
    return ids, mask


def hf_hidden(model, ids, mask, *, causal: bool) -> np.ndarray:
    """HF last hidden states; bidirectional through an explicit 4-D additive mask."""
    ids_t = torch.tensor(ids, dtype=torch.long)
    mask_t = torch.tensor(mask, dtype=torch.long)
    with torch.no_grad():
        if causal:
            out = model.model(input_ids=ids_t, attention_mask=mask_t)
        else:
            bsz, seq = ids.shape
            additive = torch.zeros(bsz, 1, seq, seq, dtype=torch.float32)
            additive.masked_fill_(mask_t[:, None, None, :] == 0, torch.finfo(torch.float32).min)
            out = model.model(input_ids=ids_t, attention_mask=additive)
    return out.last_hidden_state.float().numpy()


def hf_logits(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long))
    return out.logits.float().numpy()


def tiny_model_with_tokenizer(directory, tokenizer_dir, name: str = "llama") -> str:
    """A tiny random model with a real tokenizer's vocabulary, saved with that tokenizer."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    model = make_hf_model(name, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    save_hf_model(model, directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
