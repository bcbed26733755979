"""One-shot GPU benchmark: our jitted LoRA train steps vs HF PyTorch + peft, same shapes.

Model: a random ~1.1B Llama-shaped decoder (Llama-3.2-1B's shape with a 32k vocab: hidden
2048, 16 layers, 32 heads / 8 kv heads, head_dim 64, mlp 8192), bf16 weights and compute,
LoRA r16 alpha 32 dropout 0.05 on q,k,v,o,gate,up,down (float32 adapters on both sides, as
peft's autocast_adapter_dtype), AdamW lr 5e-5, grad-norm clip 1.0. Steps:

* mntp    8 x 512, bidirectional, 20 % of tokens masked (``MNTPCollator``); ours gathers the
          scored positions before the LM head, torch runs HF's shifted CausalLM loss over
          all B·S positions (what llm2vec's run_mntp does).
* simcse  64 x 128, two views with independent dropout (attention 0.3, LoRA 0.05), mean
          pooling, InfoNCE scale 20.

Each side runs in its own subprocess (JAX preallocates most of the GPU; torch needs it after)
and prints one marked JSON line per measurement; this parent re-prints them as plain JSON,
adds FLOPs/MFU, and rewrites the results file after every record, so a run cut short still
leaves what it measured. Time guards: the JAX child must finish by ``budget - torch_reserve``,
the torch child by ``budget``; each child skips a measurement that no longer fits, and the
parent kills a child that overruns its deadline (but never in its first ``START_S`` seconds:
imports alone can take 15 s on a loaded machine, and a child killed before its own guard
runs leaves no record of why it measured nothing).

    bench/gpu.sh                       # on the GPU machine (what the lead runs)
    python bench/gpu.py --dry-run      # tiny shapes on CPU, both sides, < 2 min
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("llm2vec_jax/train/steps.py", "llm2vec_jax/train/losses.py", "llm2vec_jax/lora.py",
           "llm2vec_jax/models/transformer.py", "llm2vec_jax/models/attention.py")
MARK = "@@GPU_BENCH "  # children's record lines; anything else they print is passed to stderr

SHAPES = {
    "full": dict(vocab=32000, hidden=2048, mlp=8192, layers=16, heads=32, kv_heads=8,
                 head_dim=64, mntp=(8, 512), simcse=(64, 128), warmup=2, steps=10),
    "dry": dict(vocab=512, hidden=64, mlp=128, layers=2, heads=4, kv_heads=2, head_dim=16,
                mntp=(2, 32), simcse=(4, 16), warmup=1, steps=2),
}
LORA = dict(r=16, alpha=32, dropout=0.05)
LR, CLIP, MLM_P, SIMCSE_DROPOUT, SIMCSE_SCALE = 5e-5, 1.0, 0.2, 0.3, 20.0
HF_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Dense bf16 datasheet peaks (no sparsity); H200 has the H100's compute with more memory.
PEAKS = {"H100": 989e12, "H200": 989e12}
# Seconds a JAX measurement needs to be worth starting (compile of the scanned 16-layer
# step, then 12 steps); torch needs no compile.
MIN_LEFT = {"jax": 60.0, "torch": 20.0}


def _emit(record: dict) -> None:
    print(MARK + json.dumps(record, default=str), flush=True)


def _shape(a) -> dict:
    s = dict(SHAPES["dry" if a.dry_run else "full"])
    if a.steps is not None:
        s["steps"] = a.steps
    if a.warmup is not None:
        s["warmup"] = a.warmup
    return s


def make_batches(shape: dict, seed: int = 0) -> dict:
    """The numpy batches both sides consume: full rows (no padding), fixed seed."""
    import numpy as np

    sys.path.insert(0, str(REPO))
    from llm2vec_jax.data.batches import MNTPBatch
    from llm2vec_jax.data.mntp import MNTPCollator

    rng = np.random.default_rng(seed)
    V = shape["vocab"]
    B, S = shape["mntp"]
    ids = rng.integers(0, V - 1, size=(B, S), dtype=np.int64).astype(np.int32)
    ones = np.ones((B, S), np.int32)
    collator = MNTPCollator(mask_token_id=V - 1, vocab_size=V, mlm_probability=MLM_P)
    masked, labels = collator.mask(ids, ones, np.zeros((B, S), np.int32), rng)
    mntp = {"ours": MNTPBatch.from_labels(masked, ones, labels, collator.slots(S)),
            "input_ids": masked, "labels": labels}
    Bs, Ss = shape["simcse"]
    sim_ids = rng.integers(0, V - 1, size=(Bs, Ss), dtype=np.int64).astype(np.int32)
    return {"mntp": mntp, "simcse": {"input_ids": sim_ids,
                                     "attention_mask": np.ones((Bs, Ss), np.int32)}}


def _timing(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "times_s": [round(t, 5) for t in times]}


# ---------------------------------------------------------------------------- JAX child


def jax_child(a) -> None:
    t0 = time.time()
    import jax
    from flax import nnx

    sys.path.insert(0, str(REPO))
    from llm2vec_jax.data.batches import ContrastiveBatch, Features
    from llm2vec_jax.lora import LoRAConfig, attach_lora, lora_parameter_count
    from llm2vec_jax.models import (Kernels, ModelConfig, abstract_model, init_model,
                                    resolve_kernels)
    from llm2vec_jax.sharding import batch_sharding, make_mesh, replicated
    from llm2vec_jax.train import steps as S
    from llm2vec_jax.train.optim import OptimizerConfig

    shape = _shape(a)
    dev = jax.devices()[0]
    _emit({"record": "env", "side": "jax", "backend": jax.default_backend(),
           "devices": [str(d) for d in jax.devices()], "device_kind": dev.device_kind,
           "jax": jax.__version__, "import_and_init_s": round(time.time() - t0, 2)})
    base = ModelConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                       intermediate_size=shape["mlp"], num_layers=shape["layers"],
                       num_heads=shape["heads"], num_kv_heads=shape["kv_heads"],
                       head_dim=shape["head_dim"], max_position_embeddings=4096,
                       dtype="bfloat16", param_dtype="bfloat16", causal=False)
    mesh = make_mesh()
    batches = make_batches(shape)
    tx = OptimizerConfig(learning_rate=LR, schedule="constant", weight_decay=0.0,
                         max_grad_norm=CLIP).build(1000)
    carried = None  # (graphdef, state) of the last measurement: its arrays are still live

    for item in a.jax_variants.split(","):
        stage, impl = item.strip().split(":")
        left = a.deadline - time.time()
        if left < (0 if a.dry_run else MIN_LEFT["jax"]):
            _emit({"record": "skipped", "side": "jax", "stage": stage, "variant": impl,
                   "reason": f"time guard: {left:.0f} s left before the JAX deadline"})
            continue
        try:
            t_build = time.time()
            cfg = base.replace(kernels=resolve_kernels(Kernels(attention=impl)),
                               attention_dropout=SIMCSE_DROPOUT if stage == "simcse" else 0.0)
            if carried is None:
                # One jitted draw instead of dozens of eager ops, each its own small compile.
                weights = jax.jit(lambda: nnx.state(init_model(cfg, seed=0)))()
                model = nnx.merge(nnx.graphdef(abstract_model(cfg)), weights)
                attach_lora(model, LoRAConfig(**LORA), seed=0)
            else:
                # Reuse the weights (a fresh 1B init costs seconds of small eager compiles);
                # only the static config changes between measurements.
                graphdef, state = carried
                model = nnx.merge(graphdef, state.lora, state.frozen)
                model.config = cfg
            carried = None
            n_lora = lora_parameter_count(model)
            graphdef, state = S.init_state(model, tx, mesh)
            del model

            if stage == "mntp":
                host = batches["mntp"]["ours"]
                objective = S.mntp_objective
            else:
                sb = batches["simcse"]
                # Unsupervised SimCSE: the same sentences as query and document.
                view = Features(sb["input_ids"], sb["attention_mask"], sb["attention_mask"])
                host = ContrastiveBatch(q=view, d=view)
                objective = functools.partial(S.contrastive_objective, scale=SIMCSE_SCALE,
                                              pooling="mean")
            shardings = jax.tree.map(lambda v: batch_sharding(mesh, v.ndim), host)
            batch = jax.device_put(host, shardings)
            total = shape["warmup"] + shape["steps"]
            root = jax.random.key(1)
            keys = [jax.device_put(jax.random.fold_in(root, n), replicated(mesh))
                    for n in range(total)]
            step = S.jit_train_step(S.make_train_step(graphdef, tx, objective), state, mesh,
                                    shardings)
            build_s = time.time() - t_build
            t = time.perf_counter()
            compiled = step.lower(state, batch, keys[0]).compile()
            compile_s = time.perf_counter() - t

            times, losses, cut = [], [], False
            for n in range(total):
                if n >= shape["warmup"] + 3 and time.time() > a.deadline - 5:
                    cut = True
                    break
                t = time.perf_counter()
                state, metrics = compiled(state, batch, keys[n])
                jax.block_until_ready((state, metrics))
                dt = time.perf_counter() - t
                losses.append(float(metrics["loss"]))
                if n >= shape["warmup"]:
                    times.append(dt)
            carried = (graphdef, state)
            stats = dev.memory_stats() or {}
            B, L = host.token_ids()[0].shape
            _emit({"record": "measurement", "side": "jax", "stage": stage, "variant": impl,
                   "batch": [B, L], "views": len(host.token_ids()),
                   "tokens_per_step": B * L * len(host.token_ids()),
                   "head_positions": host.head_rows,
                   **_timing(times), "compile_s": round(compile_s, 2),
                   "build_s": round(build_s, 2), "warmup": shape["warmup"], "steps": len(times),
                   "cut_by_time_guard": cut, "losses": [round(x, 4) for x in losses],
                   "trainable_params": int(n_lora),
                   "peak_mem_gb": round(stats.get("peak_bytes_in_use", 0) / 2**30, 2) or None,
                   "notes": f"kernels.attention={impl}, bidirectional, no remat, bf16, "
                            "float32 LoRA cast to bf16 per matmul"})
        except Exception as e:
            # A failure mid-step may have consumed donated buffers: start the next one fresh.
            carried = None
            _emit({"record": "error", "side": "jax", "stage": stage, "variant": impl,
                   "error": f"{type(e).__name__}: {e}"[:1500],
                   "traceback": traceback.format_exc()[-3000:]})


# ---------------------------------------------------------------------------- torch child


def _matmul_ceiling(torch) -> dict:
    """METHOD.md's ceiling: one large bf16 product on random data, timed with events."""
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        x @ y
    end.record()
    torch.cuda.synchronize()
    s = start.elapsed_time(end) / 1e3 / 10
    return {"record": "ceiling", "side": "torch", "what": "bf16 8192^3 matmul, mean of 10",
            "seconds": s, "tflops": 2 * n ** 3 / s / 1e12}


def torch_child(a) -> None:
    t0 = time.time()
    import torch
    import torch.nn.functional as F
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = _shape(a)
    dev = "cuda" if torch.cuda.is_available() and not a.dry_run else "cpu"
    env = {"record": "env", "side": "torch", "torch": torch.__version__,
           "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "peft": metadata.version("peft"), "device": dev,
           "import_s": round(time.time() - t0, 2)}
    if dev == "cuda":
        env.update(device_name=torch.cuda.get_device_name(),
                   allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                   flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                   cudnn_sdp=torch.backends.cuda.cudnn_sdp_enabled(),
                   mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())
    _emit(env)
    if dev == "cuda":
        try:
            _emit(_matmul_ceiling(torch))
        except Exception as e:
            _emit({"record": "error", "side": "torch", "stage": "ceiling",
                   "error": f"{type(e).__name__}: {e}"[:1500]})

    t_build = time.time()
    config = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                         intermediate_size=shape["mlp"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                         max_position_embeddings=4096, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, attention_dropout=0.0,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(dev):
        model = LlamaForCausalLM(config)
    model.to(torch.bfloat16)
    # llm2vec's bidirectional Llama: with no padding mask HF passes attn_mask=None to sdpa
    # and takes is_causal from the module, so this keeps the flash kernel. Verified below.
    for layer in model.model.layers:
        layer.self_attn.is_causal = False
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"],
                                             lora_dropout=LORA["dropout"],
                                             target_modules=HF_TARGETS, bias="none"))
    inner = model.get_base_model().model  # LlamaModel with the LoRA layers injected
    params = [p for p in model.parameters() if p.requires_grad]
    n_lora = sum(p.numel() for p in params)
    lora_dtype = str(params[0].dtype)

    model.eval()
    with torch.no_grad():
        probe = torch.randint(0, shape["vocab"] - 1, (1, 8), device=dev)
        changed = probe.clone()
        changed[0, -1] += 1
        h1 = inner(input_ids=probe).last_hidden_state[0, 0].float()
        h2 = inner(input_ids=changed).last_hidden_state[0, 0].float()
    bidirectional = not torch.allclose(h1, h2)
    model.train()
    build_s = time.time() - t_build

    batches = make_batches(shape)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    autocast = functools.partial(torch.autocast, device_type=dev, dtype=torch.bfloat16)

    for stage in ("mntp", "simcse"):
        left = a.deadline - time.time()
        if left < (0 if a.dry_run else MIN_LEFT["torch"]):
            _emit({"record": "skipped", "side": "torch", "stage": stage, "variant": "sdpa",
                   "reason": f"time guard: {left:.0f} s left before the deadline"})
            continue
        try:
            for layer in inner.layers:
                layer.self_attn.attention_dropout = SIMCSE_DROPOUT if stage == "simcse" else 0.0
            # The HF Trainer's default (adamw_torch; fused on CUDA), fresh per stage as ours.
            opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8,
                                    weight_decay=0.0, fused=dev == "cuda")
            if stage == "mntp":
                ids = torch.from_numpy(batches["mntp"]["input_ids"]).long().to(dev)
                labels = torch.from_numpy(batches["mntp"]["labels"]).long().to(dev)

                def loss_fn():
                    # attention_mask=None: rows are full, and a mask would force HF's
                    # explicit-mask sdpa path (no flash).
                    return model(input_ids=ids, labels=labels).loss
            else:
                ids = torch.from_numpy(batches["simcse"]["input_ids"]).long().to(dev)
                target = torch.arange(ids.shape[0], device=dev)

                def loss_fn():
                    q = inner(input_ids=ids).last_hidden_state.float().mean(1)
                    d = inner(input_ids=ids).last_hidden_state.float().mean(1)
                    scores = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T * SIMCSE_SCALE
                    return F.cross_entropy(scores, target)

            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            total = shape["warmup"] + shape["steps"]
            times, losses, first_s, cut = [], [], None, False
            for n in range(total):
                if n >= shape["warmup"] + 3 and time.time() > a.deadline - 5:
                    cut = True
                    break
                sync()
                t = time.perf_counter()
                with autocast():  # the HF Trainer's bf16=True
                    loss = loss_fn()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, CLIP)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync()
                dt = time.perf_counter() - t
                losses.append(float(loss.detach()))
                if n == 0:
                    first_s = round(dt, 3)
                if n >= shape["warmup"]:
                    times.append(dt)
            B, L = ids.shape
            views = 1 if stage == "mntp" else 2
            peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
            _emit({"record": "measurement", "side": "torch", "stage": stage, "variant": "sdpa",
                   "batch": [B, L], "views": views, "tokens_per_step": B * L * views,
                   "head_positions": B * L if stage == "mntp" else 0,
                   **_timing(times), "first_step_s": first_s, "build_s": round(build_s, 2),
                   "warmup": shape["warmup"], "steps": len(times), "cut_by_time_guard": cut,
                   "losses": [round(x, 4) for x in losses], "trainable_params": int(n_lora),
                   "peak_mem_gb": round(peak, 2) if peak else None,
                   "bidirectional": bidirectional, "lora_dtype": lora_dtype,
                   "notes": "HF LlamaForCausalLM sdpa + peft LoRA, bf16 weights, autocast bf16, "
                            "no torch.compile, default matmul flags; "
                            + ("bidirectional (is_causal=False, no mask)" if bidirectional else
                               "CAUSAL: is_causal=False did not take effect in this transformers")
                            + ("; MNTP loss over all B*S positions (HF shifted CE)"
                               if stage == "mntp" else "; two LlamaModel passes, mean pool")})
        except Exception as e:
            _emit({"record": "error", "side": "torch", "stage": stage, "variant": "sdpa",
                   "error": f"{type(e).__name__}: {e}"[:1500],
                   "traceback": traceback.format_exc()[-3000:]})
        finally:
            opt = loss_fn = None
            if dev == "cuda":
                torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- parent


def _sh(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        return (r.stdout + r.stderr).strip() or None
    except Exception as e:
        return f"unavailable ({type(e).__name__}: {e})"


def machine_record() -> dict:
    versions = {}
    for pkg in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
                "numpy", "torch", "transformers", "peft", "nvidia-cudnn-cu13"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"record": "machine", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpus": os.cpu_count(), "versions": versions,
            "git_commit": _sh(["git", "rev-parse", "HEAD"]),
            "git_status": _sh(["git", "status", "--short", "--untracked-files=no"]),
            # The tree that travels may carry uncommitted edits (and maybe no .git): name the
            # exact code that was timed.
            "source_sha1": {f: hashlib.sha1((REPO / f).read_bytes()).hexdigest()[:12]
                            for f in SOURCES if (REPO / f).is_file()},
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(("XLA_", "JAX_", "TF_", "CUDA_VISIBLE", "NVIDIA_TF32",
                                     "PYTORCH_"))},
            "nvidia_smi": _sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                               "clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,"
                               "power.limit,utilization.gpu", "--format=csv"]),
            "nvidia_smi_L": _sh(["nvidia-smi", "-L"])}


class Results:
    """Every record in order; the file is rewritten after each so a cut run keeps them."""

    def __init__(self, path: Path, shape: dict, args: dict):
        self.path = path
        self.lock = threading.Lock()
        self.data = {"bench": "gpu", "shape": shape, "args": args, "records": []}
        self.flops = _flops_fn(shape)
        self.peak = None

    def add(self, rec: dict) -> None:
        with self.lock:
            if rec.get("record") == "env" and rec.get("side") == "jax":
                kind = rec.get("device_kind", "")
                self.peak = next((p for k, p in PEAKS.items() if k in kind), None)
            if rec.get("record") == "measurement":
                f = self.flops(rec["stage"])
                rec["flops_per_step"] = f
                rec["tokens_per_s"] = rec["tokens_per_step"] / rec["median_s"]
                rec["achieved_tflops"] = f / rec["median_s"] / 1e12
                rec["peak_flops"] = self.peak
                rec["mfu"] = f / rec["median_s"] / self.peak if self.peak else None
            self.data["records"].append(rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "traceback"}, default=str),
                  flush=True)
            self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def _flops_fn(shape: dict):
    """Model FLOPs per step from ``train_flops_per_step``, identical for both sides.

    The same useful-work count for both: torch's MNTP also runs the LM head on the unscored
    positions, which is extra work it does, not work we skip.
    """
    import numpy as np

    sys.path.insert(0, str(REPO))
    from llm2vec_jax.data.batches import ContrastiveBatch, Features
    from llm2vec_jax.lora import LoRAConfig  # imports jax; no backend is started
    from llm2vec_jax.models import ModelConfig, lora_weight_specs
    from llm2vec_jax.train.flops import train_flops_per_step

    cfg = ModelConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                      intermediate_size=shape["mlp"], num_layers=shape["layers"],
                      num_heads=shape["heads"], num_kv_heads=shape["kv_heads"],
                      head_dim=shape["head_dim"])
    n_lora = sum(int(np.prod(s.shape)) for s in lora_weight_specs(cfg, LoRAConfig(**LORA)).values())
    batches = make_batches(shape)

    def flops(stage: str) -> float:
        if stage == "mntp":
            return train_flops_per_step(cfg, n_lora, batches["mntp"]["ours"])
        ids = batches["simcse"]["input_ids"]
        view = Features(ids, ids, ids)
        return train_flops_per_step(cfg, n_lora, ContrastiveBatch(q=view, d=view))
    return flops


START_S = 60.0


def run_child(side: str, deadline: float, a, results: Results, grace: float = 15.0) -> None:
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", side,
           "--deadline", repr(deadline), "--jax-variants", a.jax_variants]
    if a.dry_run:
        cmd.append("--dry-run")
    for name in ("steps", "warmup"):
        if getattr(a, name) is not None:
            cmd += [f"--{name}", str(getattr(a, name))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    if a.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    print(f"[gpu.py] {side} child: {max(0.0, deadline - time.time()):.0f} s until its deadline",
          file=sys.stderr, flush=True)
    started = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1, env=env, cwd=REPO)

    def read():
        for line in proc.stdout:
            if line.startswith(MARK):
                try:
                    results.add(json.loads(line[len(MARK):]))
                except json.JSONDecodeError:
                    sys.stderr.write(line)
            else:
                sys.stderr.write(line)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(started + START_S, deadline + grace) - time.time())
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        results.add({"record": "error", "side": side,
                     "error": f"killed {time.time() - deadline:.0f} s past its deadline (time budget)"})
    reader.join(timeout=10)
    if rc:
        results.add({"record": "child_exit", "side": side, "returncode": rc})


def summary(results: Results) -> str:
    recs = results.data["records"]
    ceiling = next((r["tflops"] for r in recs if r.get("record") == "ceiling"), None)
    rows = ["| side | stage | variant | batch | median ms | tokens/s | TFLOP/s | MFU | "
            "compile/first s | peak GB |", "|" + "---|" * 10]
    best = {}
    for r in recs:
        if r.get("record") != "measurement":
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        first = r.get("compile_s", r.get("first_step_s"))
        rows.append(f"| {r['side']} | {r['stage']} | {r['variant']} | "
                    f"{r['views']}x{r['batch'][0]}x{r['batch'][1]} | {r['median_s'] * 1e3:.1f} | "
                    f"{r['tokens_per_s']:.0f} | {r['achieved_tflops']:.1f} | {mfu} | {first} | "
                    f"{r.get('peak_mem_gb')} |")
        key = (r["side"], r["stage"])
        best[key] = min(best.get(key, float("inf")), r["median_s"])
        if ceiling:
            r["frac_of_measured_matmul"] = r["achieved_tflops"] / ceiling
    lines = rows
    for stage in ("mntp", "simcse"):
        if ("jax", stage) in best and ("torch", stage) in best:
            lines.append(f"{stage}: torch/jax step-time ratio {best[('torch', stage)] / best[('jax', stage)]:.2f}"
                         " (>1: ours faster)")
    if ceiling:
        lines.append(f"measured bf16 matmul ceiling (torch): {ceiling:.0f} TFLOP/s")
    for r in recs:
        if r.get("record") in ("error", "skipped", "child_exit"):
            lines.append(f"{r['record']}: {r.get('side')} {r.get('stage', '')} {r.get('variant', '')} "
                         f"{r.get('error') or r.get('reason') or r.get('returncode')}"[:400])
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU, both sides")
    p.add_argument("--budget", type=float, default=420.0,
                   help="wall-clock seconds for everything (default 420)")
    p.add_argument("--torch-reserve", type=float, default=None,
                   help="seconds kept for the torch child at the end (default 110; dry run 60)")
    p.add_argument("--sides", default="jax,torch")
    p.add_argument("--jax-variants", default="mntp:xla,simcse:xla,mntp:cudnn",
                   help="stage:kernels.attention list, run in this order")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 10; dry 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2; dry 1)")
    p.add_argument("--out-dir", default=None,
                   help="default: $OUT, else bench/results (dry run: bench/results)")
    p.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.child:
        (jax_child if a.child == "jax" else torch_child)(a)
        return 0

    start = time.time()
    end = start + a.budget
    reserve = a.torch_reserve if a.torch_reserve is not None else (60.0 if a.dry_run else 110.0)
    if a.out_dir:
        out_dir = Path(a.out_dir)
    elif os.environ.get("OUT") and not a.dry_run:
        out_dir = Path(os.environ["OUT"])
    else:
        out_dir = REPO / "bench" / "results"
    # smoke-* is git-ignored: dry runs never leave a file to commit by accident.
    name = "smoke-gpu_results_dry.json" if a.dry_run else "gpu_results.json"
    shape = _shape(a)
    results = Results(out_dir / name, shape,
                      {k: v for k, v in vars(a).items() if k not in ("child", "deadline")})
    results.add(machine_record())
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    if "jax" in sides:
        run_child("jax", end - reserve if "torch" in sides else end, a, results)
    if "torch" in sides:
        run_child("torch", end, a, results)
    results.data["wall_s"] = round(time.time() - start, 1)
    table = summary(results)
    results.data["summary"] = table
    results.write()
    print(f"\n{table}\n\nwall {results.data['wall_s']} s; results: {results.path}", flush=True)
    ok = any(r.get("record") == "measurement" for r in results.data["records"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
