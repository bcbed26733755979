"""How fast could an encode forward be on this machine? The projection GEMMs alone, both stacks.

Times, for SmolLM2-135M's shapes, the seven projection matmuls of every layer chained as in
the model (nothing else but three adds: no attention, norms, RoPE, activations or padding) on
``T`` token rows, in XLA (our matmul path:
``jnp.dot`` with float32 accumulation, what ``models.transformer.project`` emits; scanned
over stacked weights as the model runs, and unrolled over per-layer buffers) and in torch
(the reference's). ``T / time`` is a ceiling on a forward's tokens/s; dividing it by
the reference's measured encode throughput (``--reference-tok-s``, from
``bench/results/encode-*.json``) bounds the ratio any implementation on XLA:CPU can reach.

    python bench/gemm_ceiling.py --reference-tok-s 2012
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LAYERS, D, F, Q, KV = 30, 576, 1536, 576, 192  # SmolLM2-135M: 9 heads x 64, 3 kv heads x 64
SHAPES = [(D, Q), (D, KV), (D, KV), (Q, D), (D, F), (D, F), (F, D)]  # q k v o gate up down


def _median_time(fn, passes: int) -> float:
    fn()
    times = []
    for _ in range(passes):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def xla_seconds(rows: int, dtype: str, passes: int, *, unrolled: bool = False) -> float:
    """Scanned over stacked [L, ...] weights, as the model runs; ``unrolled``: one buffer per
    layer and weight, no slicing (what an unrolled inference path would see)."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), len(SHAPES) + 1)
    weights = [jax.random.normal(k, (LAYERS, i, o)).astype(dtype) for k, (i, o) in zip(keys, SHAPES)]
    x = jax.random.normal(keys[-1], (rows, D)).astype(dtype)

    def dot(a, w):
        return jnp.dot(a, w, preferred_element_type=jnp.float32)

    def layer(x, w):  # a layer's data flow with the non-GEMM work cut to a few adds
        wq, wk, wv, wo, wg, wu, wd = w
        kv = (dot(x, wk) + dot(x, wv)).sum(-1, keepdims=True)
        o = dot(dot(x, wq).astype(x.dtype), wo)
        d = dot((dot(x, wg) + dot(x, wu)).astype(x.dtype), wd)
        return (o + d + kv).astype(x.dtype), None

    if unrolled:
        weights = [[w[i] for w in weights] for i in range(LAYERS)]

        @jax.jit
        def stack(x, weights):
            for w in weights:
                x = layer(x, w)[0]
            return x
    else:  # 16-bit weights sliced as raw bits, as the model does (models.transformer._indexed)
        dt = weights[0].dtype
        if jnp.dtype(dt).itemsize == 2:
            weights = [jax.lax.bitcast_convert_type(w, jnp.uint16) for w in weights]

        @jax.jit
        def stack(x, weights):
            def layer_from_bits(x, w):
                return layer(x, [wi if wi.dtype == dt else jax.lax.bitcast_convert_type(wi, dt) for wi in w])
            return jax.lax.scan(layer_from_bits, x, weights)[0]

    return _median_time(lambda: stack(x, weights).block_until_ready(), passes)


def torch_seconds(rows: int, dtype: str, passes: int) -> float:
    import torch
    from torch.nn.functional import linear

    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    weights = [[torch.randn(o, i, dtype=dt) for i, o in SHAPES] for _ in range(LAYERS)]
    x0 = torch.randn(rows, D, dtype=dt)

    def stack():
        x = x0
        with torch.inference_mode():
            for wq, wk, wv, wo, wg, wu, wd in weights:
                kv = (linear(x, wk) + linear(x, wv)).sum(-1, keepdim=True)
                x = linear(linear(x, wq), wo) + linear(linear(x, wg) + linear(x, wu), wd) + kv

    return _median_time(stack, passes)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=32 * 32, help="token rows per forward (32 sentences x 32)")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--reference-tok-s", type=float, default=None,
                   help="the reference's measured bf16 encode real tokens/s")
    a = p.parse_args(argv)
    state = common.machine_state()
    flops = 2 * a.rows * LAYERS * sum(i * o for i, o in SHAPES)
    rows = []
    for dtype in ("float32", "bfloat16"):
        row = {"dtype": dtype}
        for side, fn in (("xla", xla_seconds), ("xla_unrolled", functools.partial(xla_seconds, unrolled=True)),
                         ("torch", torch_seconds)):
            s = fn(a.rows, dtype, a.passes)
            row[side] = {"s": round(s, 4), "gflop_s": round(flops / s / 1e9, 1),
                         "ceiling_tok_s": round(a.rows / s)}
        if a.reference_tok_s and dtype == "bfloat16":
            for side in ("xla", "xla_unrolled"):
                row[f"{side}_ceiling_over_reference"] = round(row[side]["ceiling_tok_s"] / a.reference_tok_s, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    state_after = common.machine_state()
    path = common.write_results("gemm_ceiling", {
        "bench": "gemm_ceiling", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(a),
        "rows_per_forward": a.rows, "flops_per_forward": flops, "machine_before": state,
        "machine_after": state_after, "timings_valid": bool(state["idle"] and state_after["idle"]),
        "results": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
