"""FLOPs of a LoRA train step and model FLOPs utilisation (MFU) against the device peak.

Per token, with N_f frozen matmul parameters and N_l LoRA parameters: the forward costs
2·N_f + 2·N_l, the backward needs activation gradients through every weight (2·N_f + 2·N_l)
but weight gradients only for LoRA (2·N_l): ≈ 4·N_f + 6·N_l. Attention adds
12·L·S·N·H per token (QKᵀ and PV, forward and backward); MNTP's LM head runs only on the
gathered prediction slots (4·B·P·V·D).
"""

from __future__ import annotations

import math

import jax

from ..models.specs import PROJECTIONS, weight_specs

# Dense bf16 peak FLOP/s per device, by jax's device_kind.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
}


def peak_flops(device_kind: str) -> float | None:
    for name, peak in PEAK_FLOPS.items():
        if device_kind.startswith(name):
            return peak
    return None


def device_peak_flops(device=None) -> float | None:
    return peak_flops((device or jax.devices()[0]).device_kind)


def train_flops_per_step(config, n_lora: int, batch) -> float:
    """Model FLOPs of one step on ``batch`` (an ``MNTPBatch`` or ``ContrastiveBatch`` of
    global arrays, numpy or ShapeDtypeStructs)."""
    layer = weight_specs(config)["layers"]
    n_frozen = sum(math.prod(layer[p].shape) for p in PROJECTIONS)
    attention = 12 * config.num_layers * config.num_heads * config.head_dim
    flops = 0.0
    for ids in batch.token_ids():
        tokens = ids.shape[0] * ids.shape[1]
        flops += tokens * (4 * n_frozen + 6 * n_lora + attention * ids.shape[1])
    return flops + 4 * batch.head_rows * config.vocab_size * config.hidden_size


def mfu(flops_per_second: float) -> float | None:
    peak = device_peak_flops()
    if peak is None:
        return None
    return flops_per_second / (peak * jax.device_count())
