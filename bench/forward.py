"""SmolLM2-135M forward at batch 32 x seq 128 on this machine: compile time and steady state.

    python bench/forward.py [--dtype float32|bfloat16] [--passes 5] [--causal]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm2vec_jax.checkpoints.default_model import resolve_model
from llm2vec_jax import load_hf_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--causal", action="store_true")
    args = parser.parse_args()

    model = load_hf_checkpoint(resolve_model("smollm2"), dtype=args.dtype)
    graphdef, state = nnx.split(model)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, model.config.vocab_size,
                                                        (args.batch, args.seq)), jnp.int32)
    mask = jnp.ones_like(ids)

    def forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask, causal=args.causal)

    start = time.perf_counter()
    compiled = jax.jit(forward).lower(state, ids, mask).compile()
    compile_s = time.perf_counter() - start
    compiled(state, ids, mask).block_until_ready()  # first run: allocation, caches
    times = []
    for _ in range(args.passes):
        start = time.perf_counter()
        compiled(state, ids, mask).block_until_ready()
        times.append(time.perf_counter() - start)
    steady = statistics.median(times)
    result = {"what": "SmolLM2-135M forward", "dtype": args.dtype, "batch": args.batch,
              "seq": args.seq, "causal": args.causal, "compile_s": round(compile_s, 2),
              "steady_s_median": round(steady, 3), "tokens_per_s": round(args.batch * args.seq / steady),
              "passes_s": [round(t, 3) for t in times], "load_avg": os.getloadavg(),
              "device": jax.devices()[0].device_kind, "jax": jax.__version__,
              "date": dt.datetime.now().isoformat(timespec="seconds")}
    print(json.dumps(result))
    out = os.path.join(os.path.dirname(__file__), "results",
                       f"forward-{args.dtype}-{dt.date.today().isoformat()}.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
