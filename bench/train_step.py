"""Training-step speed and memory, llm2vec-jax vs the PyTorch reference, in one run.

Stages (SmolLM2-135M, fp32 or ``--dtype bfloat16``, LoRA r16 alpha 32 dropout 0.05 on q,k,v,o,gate,up,down, AdamW
lr 5e-5), each with and without gradient checkpointing:
* ``mntp``:   batch 8 x 128, texts concatenated into full 128-token blocks, 20 % masked
              with ``_`` (run_mntp's default grouping and full-masking collator).
* ``simcse``: batch 16 x 64 (rows filled to 64 tokens), two dropout views (attention
              dropout 0.3), mean pooling, HardNegativeNLLLoss scale 20.
Both sides consume the *same* token batch (written once as .npz by
``reference_side.py make_batch``), and each side/config runs in its own subprocess so peak
RSS is per side. Reported: median step time over ``--steps`` after ``--warmup`` steps, real
(non-pad) tokens/s, sequences/s, peak RSS.

bfloat16 is mixed precision on both sides: the frozen base weights stored and multiplied in
bf16 (f32 accumulation), the LoRA weights, their gradients and AdamW state in f32 (ours:
``attach_lora``'s default; the reference: peft's ``autocast_adapter_dtype``), softmax, loss
and pooling in f32.

    python bench/train_step.py                                  # full run
    python bench/train_step.py --steps 2 --warmup 1 --stages mntp --grad-ckpt off   # smoke
    python bench/train_step.py --sides ref                      # reference only
    python bench/train_step.py --dtype bfloat16 --grad-ckpt off  # bf16 vs bf16
    python bench/train_step.py --dtype bfloat16 --matmul-operands native,float32  # both kernels
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

STAGE_SHAPES = {"mntp": (8, 128), "simcse": (16, 64)}


# ---------------------------------------------------------------------------- our side (worker)


def build_ours_step(stage: str, model_dir: str, batch: dict, *, grad_ckpt: bool,
                    dtype: str = "float32", lr: float = 5e-5, lora_r: int = 16,
                    lora_alpha: int = 32, lora_dropout: float = 0.05,
                    simcse_dropout: float = 0.3, loss_scale: float = 20.0, seed: int = 42,
                    total_steps: int = 1, matmul_operands: str | None = None):
    """Our jitted train step for ``stage`` on ``batch`` (numpy ``input_ids``/``attention_mask``
    [B, L] and, for MNTP, HF-style ``labels``: -100 = not predicted; the target at position i
    is predicted from the hidden state at i-1, as the reference's shifted CausalLM loss does).
    ``matmul_operands``: the ``Kernels`` choice (default: the resolver's, by the processor).
    Returns ``(step_fn, state, device_batch, root_key, trainable_params)``."""
    import jax

    import numpy as np

    from llm2vec_jax.checkpoints.hf import load_hf_checkpoint
    from llm2vec_jax.data.batches import ContrastiveBatch, Features, MNTPBatch
    from llm2vec_jax.data.mntp import predict_slots
    from llm2vec_jax.lora import LoRAConfig, attach_lora, lora_parameter_count
    from llm2vec_jax.models import Kernels
    from llm2vec_jax.sharding import batch_sharding, make_mesh, weight_sharding_fn
    from llm2vec_jax.train import steps as S
    from llm2vec_jax.train.optim import OptimizerConfig

    mesh = make_mesh()
    model = load_hf_checkpoint(
        model_dir, dtype=dtype, sharding_fn=weight_sharding_fn(mesh), causal=False,
        remat="full" if grad_ckpt else "none",
        attention_dropout=simcse_dropout if stage == "simcse" else 0.0,
        kernels=Kernels(matmul_operands=matmul_operands))
    attach_lora(model, LoRAConfig(r=lora_r, alpha=lora_alpha, dropout=lora_dropout), seed=seed,
                sharding_fn=weight_sharding_fn(mesh))
    trainable = lora_parameter_count(model)
    # The reference's HF Trainer defaults: AdamW, no weight decay, grad-norm clip 1.0; a
    # constant lr keeps both sides' update cost identical over a few steps.
    tx = OptimizerConfig(learning_rate=lr, schedule="constant", weight_decay=0.0,
                         max_grad_norm=1.0).build(total_steps)
    graphdef, state = S.init_state(model, tx, mesh)
    kernels = model.config.kernels
    del model

    ids = batch["input_ids"].astype(np.int32)
    am = batch["attention_mask"].astype(np.int32)
    B, L = ids.shape
    if stage == "mntp":
        # HF's shifted CausalLM loss on the reference's labels: the token at i from i-1.
        host = MNTPBatch.from_labels(ids, am, batch["labels"], predict_slots(L, 0.2))
        objective = S.mntp_objective
    elif stage == "simcse":
        # Same rows for both views; full rows, so pooling over attention_mask equals the
        # reference's pool-everything SimCSE quirk.
        view = Features(ids, am, am)
        host = ContrastiveBatch(q=view, d=view)

        def objective(model, b, rng):
            return S.contrastive_objective(model, b, rng, scale=loss_scale, pooling="mean")
    else:
        raise ValueError(f"unknown stage {stage!r}")

    shardings = jax.tree.map(lambda v: batch_sharding(mesh, v.ndim), host)
    dev_batch = jax.device_put(host, shardings)
    step_fn = S.jit_train_step(S.make_train_step(graphdef, tx, objective), state, mesh, shardings)
    return step_fn, state, dev_batch, jax.random.key(seed), trainable, kernels


def ours_side(stage: str, model_dir: str, batch: dict, *, grad_ckpt: bool, warmup: int, steps: int,
              dtype: str = "float32", lr: float = 5e-5, seed: int = 42,
              matmul_operands: str | None = None) -> dict:
    """HOOK: one jitted llm2vec-jax train step per call, timed like the reference side.

    Must return a dict with at least ``median_s``, ``times_s``, ``losses`` and
    ``trainable_params``; the caller adds tokens/s and peak RSS.

    Raises NotImplementedError("pending llm2vec_jax.train.steps") where that module is
    absent; the driver then reports our side as pending and still measures the reference.
    """
    if importlib.util.find_spec("llm2vec_jax.train.steps") is None:
        raise NotImplementedError("pending llm2vec_jax.train.steps")
    import jax

    from llm2vec_jax.host_memory import compile_now

    step_fn, state, dev_batch, root, trainable, kernels = build_ours_step(
        stage, model_dir, batch, grad_ckpt=grad_ckpt, dtype=dtype, lr=lr, seed=seed,
        total_steps=warmup + steps, matmul_operands=matmul_operands)
    compile_t = time.perf_counter()
    compile_now(step_fn, state, dev_batch, root)  # as the training loop does
    compile_s = round(time.perf_counter() - compile_t, 3)

    times, losses, first_s = [], [], None
    for n in range(warmup + steps):
        t = time.perf_counter()
        state, metrics = step_fn(state, dev_batch, jax.random.fold_in(root, n))
        loss = float(jax.block_until_ready(metrics["loss"]))
        dt = time.perf_counter() - t
        losses.append(round(loss, 5))
        if n == 0:
            first_s = round(dt, 3)
        if n >= warmup:
            times.append(dt)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "times_s": [round(t, 4) for t in times], "compile_s": compile_s, "first_step_s": first_s,
            "losses": losses, "trainable_params": int(trainable), "warmup": warmup, "steps": steps,
            "kernels": dataclasses.asdict(kernels),
            "versions": {"jax": jax.__version__, "backend": jax.default_backend(),
                         "devices": [str(d) for d in jax.devices()]}}


def _worker(a) -> None:
    import resource

    import numpy as np

    with np.load(a.batch) as z:
        batch = {k: z[k] for k in z.files}
    try:
        r = ours_side(a.stage, a.model_dir, batch, grad_ckpt=a.grad_ckpt == "on", warmup=a.warmup,
                      steps=a.steps, dtype=a.dtype, lr=a.lr, seed=a.seed,
                      matmul_operands=a.matmul_operands or None)
    except NotImplementedError as e:
        print(json.dumps({"side": "ours", "pending": True, "error": f"NotImplementedError: {e}"}), flush=True)
        return
    real = int(batch["attention_mask"].sum()) * (2 if a.stage == "simcse" else 1)
    r.update({
        "side": "ours", "bench": f"{a.stage}_step", "grad_ckpt": a.grad_ckpt == "on",
        "dtype": a.dtype,
        "batch_shape": list(batch["input_ids"].shape), "real_tokens_per_step": real,
        "tokens_per_s": real / r["median_s"], "sentences_per_s": batch["input_ids"].shape[0] / r["median_s"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    })
    print(json.dumps(r), flush=True)


# ---------------------------------------------------------------------------- driver


def _batch_path(a, stage: str, model_dir: Path) -> Path:
    """The shared input batch, built once per stage by the reference's tokenizer/collator logic."""
    bs, L = STAGE_SHAPES[stage]
    out = Path(a.cache_dir) / "bench-batches" / f"{stage}-{bs}x{L}-seed{a.seed}.npz"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        py = common.ref_python(a.ref_venv)
    except FileNotFoundError:
        py = sys.executable  # make_batch needs only torch + transformers, which we also have
    cmd = [py, str(common.BENCH_DIR / "reference_side.py"), "make_batch", "--stage", stage,
           "--model-dir", str(model_dir), "--sentences", a.sentences, "--out", str(out),
           "--batch-size", str(bs), "--seq-len", str(L), "--seed", str(a.seed)]
    common.run_json(cmd, timeout=600)
    return out


def _cmd(a, side, stage, ckpt, dtype, batch, hf_dir, ref_dir, operands=""):
    if side == "ours":
        return [sys.executable, __file__, "--worker", "--stage", stage, "--model-dir", str(hf_dir),
                "--batch", str(batch), "--grad-ckpt", ckpt, "--warmup", str(a.warmup),
                "--steps", str(a.steps), "--lr", str(a.lr), "--seed", str(a.seed),
                "--dtype", dtype, "--matmul-operands", operands]
    cmd = [common.ref_python(a.ref_venv), str(common.BENCH_DIR / "reference_side.py"), f"{stage}_step",
           "--model-dir", str(ref_dir), "--batch", str(batch), "--warmup", str(a.warmup),
           "--steps", str(a.steps), "--lr", str(a.lr), "--seed", str(a.seed), "--dtype", dtype]
    return cmd + (["--grad-ckpt"] if ckpt == "on" else [])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", default="mntp,simcse")
    p.add_argument("--grad-ckpt", default="off,on", help="comma list of off/on")
    p.add_argument("--dtype", default="float32", help="comma list of float32/bfloat16")
    p.add_argument("--sides", default="ours,ref")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--sentences", default=str(common.SENTENCES_512))
    p.add_argument("--ref-venv", default=None)
    p.add_argument("--hugepages", default="ours", choices=["ours", "both", "none"],
                   help="which sides run with glibc's transparent-huge-page tunable (ours: as "
                        "python -m llm2vec_jax.train does; the reference's default is without)")
    p.add_argument("--matmul-operands", default="",
                   help="our side's kernels.matmul_operands, a comma list of native/float32 run "
                        "as separate rows against the same reference runs (default: the "
                        "resolver's choice for this processor)")
    p.add_argument("--cache-dir", default=str(common.CACHE_DIR))
    p.add_argument("--timeout", type=float, default=7200, help="per subprocess, seconds")
    p.add_argument("--name", default="train_step")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.worker:
        _worker(a)
        return

    state, hf_dir, sides, ref_dir = common.prepare_run(a)
    stages = common.split_list(a.stages)
    ckpts = common.split_list(a.grad_ckpt)
    dtypes = common.split_list(a.dtype)
    batches = {s: _batch_path(a, s, ref_dir or hf_dir) for s in stages}

    # Our side once per matmul_operands choice ("": the resolver's), the reference once.
    operand_choices = common.split_list(a.matmul_operands) or [""]
    runs: dict[tuple, list[dict]] = {}
    k = 0
    for rnd in range(a.rounds):
        for config in itertools.product(stages, ckpts, dtypes):
            stage, ckpt, dtype = config
            order = sides if k % 2 == 0 else sides[::-1]
            k += 1
            for side, operands in [(s, op) for s in order
                                   for op in (operand_choices if s == "ours" else [""])]:
                print(f"[round {rnd + 1}/{a.rounds}] {side} {stage} grad_ckpt={ckpt} {dtype}"
                      f"{' operands=' + operands if operands else ''} ...",
                      file=sys.stderr, flush=True)
                huge = a.hugepages == "both" or a.hugepages == side
                r = common.run_side(_cmd(a, side, stage, ckpt, dtype, batches[stage], hf_dir,
                                         ref_dir, operands), a.timeout,
                                    common.hugepage_env(huge))
                if "error" in r:
                    print(f"   {side}: {r['error'][-300:]}", file=sys.stderr)
                else:
                    print(f"   {r['median_s']:.3f} s/step, {r['tokens_per_s']:.1f} tok/s, "
                          f"peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)
                runs.setdefault((*config, side, operands), []).append(r)

    rows = []
    for stage, ckpt, dtype, operands in itertools.product(stages, ckpts, dtypes,
                                                          operand_choices):
        row = {"config": f"{stage} {'x'.join(map(str, STAGE_SHAPES[stage]))} ckpt={ckpt}"
                         + ("" if dtype == "float32" else f" {dtype}")
                         + (f" operands={operands}" if operands else "")}
        for side in sides:
            row["ours" if side == "ours" else "ref"] = common.combine_runs(
                runs.get((stage, ckpt, dtype, side, operands if side == "ours" else ""), []),
                lambda r: r["real_tokens_per_step"], lambda r: r["batch_shape"][0])
        rows.append(row)

    state_after = common.machine_state()
    payload = {
        "bench": "train_step", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized, fp32 checkpoint)",
        "model_dir": str(hf_dir), "reference_model_dir": str(ref_dir) if ref_dir else None,
        "batches": {s: str(b) for s, b in batches.items()}, "args": vars(a),
        "machine_before": state, "machine_after": state_after,
        "timings_valid": bool(state["idle"] and state_after["idle"]),
        "rows": rows,
    }
    path = common.write_results(a.name, payload)
    print(common.markdown_table(rows))
    if not payload["timings_valid"]:
        print("\n**machine was busy during this run: numbers are smoke-test only**")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
