"""bench/gpu.py must run end to end before it spends GPU time: its CPU dry run (tiny shapes,
both sides, subprocess children), its time guard, and the cuDNN attention option's mask
handling, checked on CPU through jax's XLA implementation of the same call."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm2vec_jax.models.attention import (AttentionImplError, attention_allowed, attend,
                                          cudnn_attention, grouped_query_attention)
from llm2vec_jax.models import Kernels

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.py"


def _run(args, tmp_path, timeout):
    r = subprocess.run([sys.executable, str(SCRIPT), *args, "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=timeout, cwd=REPO)
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return r, records


@pytest.mark.slow
def test_dry_run_measures_both_sides(tmp_path):
    r, records = _run(["--dry-run"], tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    kinds = {(x["record"], x.get("side")) for x in records}
    assert {("machine", None), ("env", "jax"), ("env", "torch")} <= kinds

    meas = {(x["side"], x["stage"], x["variant"]): x for x in records
            if x["record"] == "measurement"}
    assert set(meas) == {("jax", "mntp", "xla"), ("jax", "simcse", "xla"),
                         ("torch", "mntp", "sdpa"), ("torch", "simcse", "sdpa")}
    for m in meas.values():
        assert m["median_s"] > 0 and m["tokens_per_s"] > 0 and m["flops_per_step"] > 0
        assert m["steps"] == 2 and len(m["times_s"]) == 2
        assert len(m["losses"]) == 3 and all(math.isfinite(x) for x in m["losses"])
        assert m["achieved_tflops"] > 0
        assert m["mfu"] is None  # no peak for a CPU
    for stage, views in (("mntp", 1), ("simcse", 2)):
        ours, ref = meas[("jax", stage, "xla")], meas[("torch", stage, "sdpa")]
        assert ours["views"] == ref["views"] == views
        assert ours["batch"] == ref["batch"]
        assert ours["flops_per_step"] == ref["flops_per_step"]  # one FLOP count for both
        assert ours["trainable_params"] == ref["trainable_params"]  # same LoRA on both sides
        assert "compile_s" in ours and "first_step_s" in ref
        assert ref["bidirectional"] is True
    # Same random model shape and batch: MNTP starts near ln(V) on both sides.
    v = 512
    for side, variant in (("jax", "xla"), ("torch", "sdpa")):
        assert abs(meas[(side, "mntp", variant)]["losses"][0] - math.log(v)) < 1.0

    # cuDNN cannot run on a CPU: a clear error record, and the run goes on.
    err = [x for x in records if x["record"] == "error"]
    assert len(err) == 1 and err[0]["variant"] == "cudnn"
    assert "AttentionImplError" in err[0]["error"] and "kernels.attention='xla'" in err[0]["error"]

    saved = json.loads((tmp_path / "smoke-gpu_results_dry.json").read_text())
    assert len(saved["records"]) == len(records)
    assert "torch/jax step-time ratio" in saved["summary"] and saved["wall_s"] > 0


def test_time_guard_skips_and_still_writes(tmp_path):
    r, records = _run(["--dry-run", "--sides", "jax", "--jax-variants", "mntp:xla",
                       "--budget", "0.5"], tmp_path, timeout=300)
    assert r.returncode == 1  # nothing measured
    skipped = [x for x in records if x["record"] == "skipped"]
    assert len(skipped) == 1 and "time guard" in skipped[0]["reason"]
    saved = json.loads((tmp_path / "smoke-gpu_results_dry.json").read_text())
    assert [x["record"] for x in saved["records"]] == [x["record"] for x in records]


def test_parent_never_starts_a_jax_backend():
    """The parent computes FLOPs with our code but must leave the GPU to its children: a
    backend there would preallocate XLA_PYTHON_CLIENT_MEM_FRACTION of it."""
    code = ("import sys; sys.path[:0] = ['bench', '.']; import gpu\n"
            "f = gpu._flops_fn(gpu.SHAPES['full']); assert f('mntp') > 1e13 < f('simcse')\n"
            "from jax._src import xla_bridge as xb; print(len(xb._backends))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "0"


# ---------------------------------------------------------------------- the attention kernel


def _qkv(seed, B=2, S=12, N=4, K=2, H=8, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, (B, S, N, H), dtype), jax.random.normal(kk, (B, S, K, H), dtype),
            jax.random.normal(kv, (B, S, K, H), dtype))


def test_segment_ids_confine_attention_to_each_text():
    # One row: text 1 (2 tokens), text 2 (2 tokens), one pad. Hand-written "may attend".
    mask = jnp.asarray([[1, 1, 2, 2, 0]])
    bidirectional = [[1, 1, 0, 0, 0],
                     [1, 1, 0, 0, 0],
                     [0, 0, 1, 1, 0],
                     [0, 0, 1, 1, 0],
                     [1, 1, 1, 1, 0]]  # pad query: every real key (its output is never read)
    causal = [[1, 0, 0, 0, 0],
              [1, 1, 0, 0, 0],
              [0, 0, 1, 0, 0],
              [0, 0, 1, 1, 0],
              [1, 1, 1, 1, 0]]
    np.testing.assert_array_equal(attention_allowed(mask, causal=False)[0, 0], bidirectional)
    np.testing.assert_array_equal(attention_allowed(mask, causal=True)[0, 0], causal)


@pytest.mark.parametrize("causal,padding", [(False, "left"), (False, "right"), (True, "right"),
                                            (True, "left"), (False, "none"), (False, "packed"),
                                            (True, "packed")])
def test_cudnn_mask_handling_matches_einsum_path(causal, padding):
    q, k, v = _qkv(0)
    mask = np.ones((2, 12), np.int32)
    if padding == "left":
        mask[0, :5] = 0
    elif padding == "right":
        mask[1, 7:] = 0
    elif padding == "packed":
        mask[0] = [1, 1, 1, 2, 2, 2, 2, 3, 3, 0, 0, 0]
    allowed = attention_allowed(jnp.asarray(mask), causal=causal)
    ours = grouped_query_attention(q, k, v, allowed)
    same_call = cudnn_attention(q, k, v, allowed, implementation="xla")
    real = mask.astype(bool)  # pad query rows are never read downstream
    np.testing.assert_allclose(np.asarray(same_call)[real], np.asarray(ours)[real],
                               rtol=2e-5, atol=2e-5)
    assert np.isfinite(np.asarray(same_call)).all()


def test_attention_kernel_validation_and_errors():
    with pytest.raises(ValueError, match="kernels.attention='flash'"):
        Kernels(attention="flash")
    q, k, v = _qkv(1, dtype=jnp.bfloat16)
    allowed = attention_allowed(jnp.ones((2, 12), jnp.int32), causal=False)
    with pytest.raises(AttentionImplError, match="dropout"):
        attend(q, k, v, allowed, impl="cudnn", dropout_rate=0.1, dropout_rng=jax.random.key(0))
    with pytest.raises(AttentionImplError, match="bfloat16"):
        cudnn_attention(*_qkv(1), allowed)
    # Dropout rate 0 with an rng (the MNTP step passes one) is fine; "xla" stays the default.
    out = attend(q, k, v, allowed, dropout_rate=0.0, dropout_rng=jax.random.key(0))
    assert out.shape == q.shape and out.dtype == jnp.bfloat16
    if jax.default_backend() != "gpu":
        with pytest.raises(AttentionImplError, match="kernels.attention='xla'"):
            attend(q, k, v, allowed, impl="cudnn")
