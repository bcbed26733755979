"""The paper's models as ``config.json`` dicts (the fields ``ModelConfig.from_hf`` reads, as
published on the HF hub), so their shapes are known offline: the planner compiles them
without a download. Look one up by short name or hub id with :func:`preset`."""

from __future__ import annotations

_LLAMA2_7B = dict(
    model_type="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, hidden_act="silu",
    rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02)
_MISTRAL_7B_V02 = dict(
    model_type="mistral", vocab_size=32000, hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_act="silu",
    rms_norm_eps=1e-5, rope_theta=1000000.0, max_position_embeddings=32768,
    sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    initializer_range=0.02)
_LLAMA3_8B = dict(
    model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, hidden_act="silu",
    rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192,
    tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128009,
    initializer_range=0.02)
_LLAMA31_8B = dict(
    _LLAMA3_8B, max_position_embeddings=131072, eos_token_id=[128001, 128008, 128009],
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                      high_freq_factor=4.0, original_max_position_embeddings=8192))
_SHEARED_1_3B = dict(
    model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5504,
    num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16, hidden_act="silu",
    rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02)
_SMOLLM2_135M = dict(
    model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_act="silu",
    rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    initializer_range=0.02)
_QWEN25_7B = dict(
    model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
    num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, hidden_act="silu",
    rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=131072,
    use_sliding_window=False, tie_word_embeddings=False, bos_token_id=151643,
    eos_token_id=151643, initializer_range=0.02)
_QWEN3_8B = dict(
    model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
    num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
    hidden_act="silu", rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
    attention_bias=False, use_sliding_window=False, tie_word_embeddings=False,
    bos_token_id=151643, eos_token_id=151645, initializer_range=0.02)
_GEMMA2_9B = dict(
    model_type="gemma2", vocab_size=256000, hidden_size=3584, intermediate_size=14336,
    num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
    hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0,
    max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256,
    attn_logit_softcapping=50.0, final_logit_softcapping=30.0, tie_word_embeddings=True,
    bos_token_id=2, eos_token_id=1, pad_token_id=0, initializer_range=0.02)

PRESETS: dict[str, dict] = {
    "llama-2-7b": _LLAMA2_7B,
    "mistral-7b": _MISTRAL_7B_V02,
    "llama-3-8b": _LLAMA3_8B,
    "llama-3.1-8b": _LLAMA31_8B,
    "sheared-llama-1.3b": _SHEARED_1_3B,
    "smollm2-135m": _SMOLLM2_135M,
    "qwen2.5-7b": _QWEN25_7B,
    "qwen3-8b": _QWEN3_8B,
    "gemma-2-9b": _GEMMA2_9B,
}
# hub ids (and short names) -> preset key; matched case-insensitively on the id's last part.
_ALIASES = {
    "llama-2-7b-chat-hf": "llama-2-7b", "llama-2-7b-hf": "llama-2-7b", "llama2-7b": "llama-2-7b",
    "mistral-7b-instruct-v0.2": "mistral-7b",
    "meta-llama-3-8b-instruct": "llama-3-8b", "meta-llama-3-8b": "llama-3-8b",
    "llama3-8b": "llama-3-8b",
    "llama-3.1-8b-instruct": "llama-3.1-8b", "meta-llama-3.1-8b-instruct": "llama-3.1-8b",
    "llama-3.1-8b": "llama-3.1-8b", "llama3.1-8b": "llama-3.1-8b",
    "sheared-llama-1.3b": "sheared-llama-1.3b",
    "smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m",
    "qwen2.5-7b-instruct": "qwen2.5-7b", "qwen3-8b-base": "qwen3-8b",
    "gemma-2-9b-it": "gemma-2-9b",
}


def preset(name: str) -> dict | None:
    """A copy of the ``config.json`` dict for a preset's short name or hub id, else None."""
    key = name.rstrip("/").split("/")[-1].lower()
    found = PRESETS.get(_ALIASES.get(key, key))
    return dict(found) if found is not None else None
