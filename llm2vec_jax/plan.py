"""Will a training stage fit on a chip? Compile the real train step without any weights.

    python -m llm2vec_jax.plan --config configs/mntp/llama3-8b.yaml --mesh fsdp=8 \\
        [--device tpu-v4|tpu-v5e|tpu-v5p|h100] [--remat none|dots|full] [--set k=v ...] \\
        [--batch N --seq S] [--model NAME_OR_CONFIG_JSON] [--json]

The model, its LoRA adapter, the optimizer state and a batch of the stage's shapes are built
as ``jax.ShapeDtypeStruct``s carrying the ``NamedSharding``s the training loop would give
them (``sharding.LOGICAL_AXIS_RULES``); then the same jitted train step the loop runs
(``steps.jit_train_step`` over ``make_train_step`` and the stage's objective) is lowered and
compiled for a mesh of fake CPU devices of the target size
(``--xla_force_host_platform_device_count``). Nothing of the model's size is ever allocated:
compilation only needs shapes and shardings.

Reported per device: XLA's ``memory_analysis()`` of the compiled step (arguments, outputs,
aliased/donated, temporaries, generated code), our own per-group argument bytes from the
shardings, model FLOPs (``train.flops``) and XLA's ``cost_analysis()`` FLOPs, and the step
time an assumed MFU would give on the chosen chip.

Caveat: the executable is compiled by XLA:CPU, not by the TPU/GPU compiler. Argument and
output sizes follow from shapes and shardings and carry over exactly; temporaries depend on
the backend's fusion, layout, rematerialisation and scheduling decisions and are an
estimate of what the accelerator compile will need (see docs/fit.md).

The architecture comes from a built-in table of the paper's models (we are offline, so
their ``config.json`` fields are written out below), or from a local ``config.json`` / HF
checkpoint directory given as ``model.path`` or ``--model``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import sys
import time

# jax is imported here but its backend is not initialised until ``jax.devices()``: main() sets
# the fake device count first (and re-executes itself if something initialised it earlier).
import jax

from .train.flops import peak_flops

GiB = 1024 ** 3
# Fraction of HBM a plan may use and still be called a fit: the runtime reserves some memory,
# and the CPU-compiled temporaries are only an estimate of the accelerator's.
FIT_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class Chip:
    kind: str           # jax device_kind prefix (the key into flops.PEAK_FLOPS)
    hbm_gib: float      # memory per JAX device

    @property
    def peak_flops(self) -> float:
        """Dense bf16 FLOP/s per JAX device."""
        return peak_flops(self.kind)


CHIPS: dict[str, Chip] = {
    "tpu-v4": Chip("TPU v4", 32),      # a v4-8 host: 4 chips (megacore: 1 device each)
    "tpu-v5e": Chip("TPU v5 lite", 16),  # v5litepod-8: 8 chips
    "tpu-v5p": Chip("TPU v5p", 95),    # v5p-8: 4 chips (megacore)
    "h100": Chip("NVIDIA H100", 80),   # 80 GB SXM
}

# -- architectures ----------------------------------------------------------------------------
# config.json fields of the paper's models (as published on the HF hub); only what
# ModelConfig.from_hf reads. Offline, these stand in for the hub download.

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

ARCHITECTURES: dict[str, dict] = {
    "llama-2-7b": _LLAMA2_7B,
    "mistral-7b": _MISTRAL_7B_V02,
    "llama-3-8b": _LLAMA3_8B,
    "llama-3.1-8b": _LLAMA31_8B,
    "sheared-llama-1.3b": _SHEARED_1_3B,
    "smollm2-135m": _SMOLLM2_135M,
}
# hub ids (and short names) -> table key; matched case-insensitively on the id's last part.
_ALIASES = {
    "llama-2-7b-chat-hf": "llama-2-7b", "llama-2-7b-hf": "llama-2-7b", "llama2-7b": "llama-2-7b",
    "mistral-7b-instruct-v0.2": "mistral-7b",
    "meta-llama-3-8b-instruct": "llama-3-8b", "meta-llama-3-8b": "llama-3-8b",
    "llama3-8b": "llama-3-8b",
    "llama-3.1-8b-instruct": "llama-3.1-8b", "meta-llama-3.1-8b-instruct": "llama-3.1-8b",
    "llama-3.1-8b": "llama-3.1-8b", "llama3.1-8b": "llama-3.1-8b",
    "sheared-llama-1.3b": "sheared-llama-1.3b",
    "smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m",
}


class PlanError(ValueError):
    """A plan that cannot be built (unknown model, mesh that does not fit, ...)."""


def architecture(name_or_path: str) -> dict:
    """The HF config dict for a built-in name / hub id, a config.json or a checkpoint dir."""
    if os.path.isdir(name_or_path) or name_or_path.endswith(".json"):
        from .models.config import read_hf_config
        try:
            return read_hf_config(name_or_path)
        except FileNotFoundError as e:
            raise PlanError(str(e)) from None
    key = name_or_path.rstrip("/").split("/")[-1].lower()
    key = _ALIASES.get(key, key)
    if key not in ARCHITECTURES:
        raise PlanError(f"unknown model {name_or_path!r}: not a local config.json or checkpoint "
                        f"directory, and not one of the built-in architectures "
                        f"{sorted(ARCHITECTURES)} (or their hub ids); pass --model PATH")
    return dict(ARCHITECTURES[key])


# -- mesh --------------------------------------------------------------------------------------

def parse_mesh(text: str) -> dict[str, int]:
    """``"fsdp=8"`` / ``"data=2,fsdp=4"`` -> {axis: size}; missing axes are 1."""
    from .sharding import MESH_AXES
    sizes = {axis: 1 for axis in MESH_AXES}
    for part in filter(None, re.split(r"[,\s]+", text.strip())):
        axis, _, value = part.partition("=")
        if axis not in sizes or not value.isdigit() or int(value) < 1:
            raise PlanError(f"--mesh {text!r}: expected AXIS=N[,AXIS=N] with AXIS in "
                            f"{MESH_AXES} and N >= 1, got {part!r}")
        sizes[axis] = int(value)
    return sizes


def mesh_devices(args) -> int:
    return math.prod(parse_mesh(args.mesh).values())


# -- the abstract state, batch and step ---------------------------------------------------------

def _variable_sds(mesh, where: str):
    """Variable -> the same Variable holding a ShapeDtypeStruct sharded by its logical axes."""
    from flax import nnx

    from .sharding import named_sharding

    def convert(path, var):
        if not isinstance(var, nnx.Variable):
            return var
        value = var.get_value()
        axes = var.get_metadata().get("logical_axes")
        name = where + "/" + "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        sharding = named_sharding(mesh, value.shape, axes, f"{name} {tuple(value.shape)}")
        return var.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))
    return convert


def abstract_state(model_config, lora_config, tx, mesh):
    """(graphdef, TrainState of ShapeDtypeStructs with the loop's shardings, LoRA size)."""
    from flax import nnx

    from .lora import FROZEN_FILTER, LORA_FILTER, attach_lora
    from .models.transformer import Transformer
    from .sharding import replicated
    from .train.steps import TrainState

    def build():
        model = Transformer(model_config, rngs=nnx.Rngs(0))
        attach_lora(model, lora_config)
        return model

    model = nnx.eval_shape(build)  # traced: no weight is materialised
    graphdef, lora, frozen = nnx.split(model, LORA_FILTER, FROZEN_FILTER)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    frozen = jax.tree_util.tree_map_with_path(_variable_sds(mesh, "frozen"), frozen, is_leaf=is_var)
    lora = jax.tree_util.tree_map_with_path(_variable_sds(mesh, "lora"), lora, is_leaf=is_var)
    n_lora = sum(math.prod(x.shape) for x in jax.tree.leaves(lora))
    # The loop builds the optimizer state with a plain jax.jit(tx.init)(lora): take the
    # shardings that compile chooses, not ones we would like it to have.
    init = jax.jit(tx.init).lower(lora).compile()
    opt_shapes = jax.eval_shape(tx.init, lora)
    opt_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=_on_mesh(sh, mesh)),
        opt_shapes, init.output_shardings)
    step = jax.ShapeDtypeStruct((), jax.numpy.int32, sharding=replicated(mesh))
    return graphdef, TrainState(step=step, lora=lora, opt_state=opt_state, frozen=frozen), n_lora


def _on_mesh(sharding, mesh):
    # init_state replicates whatever is not already a NamedSharding on the mesh.
    from jax.sharding import NamedSharding

    from .sharding import replicated
    if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
        return sharding
    return replicated(mesh)


def abstract_batch(stage: str, mesh, batch: int, seq: int, mlm_probability: float):
    """The global batch the loop feeds the step, as sharded ShapeDtypeStructs."""
    from .data.batches import ContrastiveBatch, MNTPBatch
    from .data.mntp import predict_slots
    from .sharding import batch_sharding, check_batch

    check_batch(mesh, batch)
    sharding_fn = functools.partial(batch_sharding, mesh)
    if stage == "mntp":
        return MNTPBatch.abstract(batch, seq, predict_slots(seq, mlm_probability), sharding_fn)
    return ContrastiveBatch.abstract(batch, seq, negatives=stage == "supervised",
                                     sharding_fn=sharding_fn)


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def global_bytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _cost_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def plan(config, mesh_sizes: dict[str, int], *, model: str | None = None, remat: str | None = None,
         batch: int | None = None, seq: int | None = None, chips: list[str] | None = None,
         assumed_mfu: float = 0.5, devices=None) -> dict:
    """Compile ``config``'s train step for ``mesh_sizes`` and return the report (a dict)."""
    from .models.config import ModelConfig
    from .sharding import MESH_AXES, make_mesh, replicated, MeshConfig
    from .train import stages
    from .train.flops import train_flops_per_step
    from .train.steps import jit_train_step, make_train_step

    stage = config.run.stage
    remat = remat or config.model.remat
    n = math.prod(mesh_sizes.values())
    if devices is None:
        devices = jax.devices("cpu")
    if len(devices) < n:
        raise PlanError(f"the mesh needs {n} devices but only {len(devices)} CPU devices exist: "
                        f"run as `python -m llm2vec_jax.plan` (it sets "
                        f"--xla_force_host_platform_device_count) or set it before jax starts")
    mesh = make_mesh(MeshConfig(**mesh_sizes), devices=devices[:n])

    arch_source = model or config.model.path
    hf = architecture(arch_source)
    dtype = config.model.dtype
    overrides = dict(param_dtype=dtype, dtype=config.model.compute_dtype or dtype, remat=remat)
    if stage != "mntp":  # prepare_model: the contrastive stages train with attention dropout
        overrides["attention_dropout"] = config.contrastive.dropout
    model_config = ModelConfig.from_hf(hf, **overrides)

    if stage == "mntp":
        batch = batch or config.run.global_batch_size
        seq = seq or config.data.max_seq_length
    else:
        batch = batch or config.run.global_batch_size
        seq = seq or config.contrastive.max_length
    tx = config.optimizer.build(config.run.max_steps)
    graphdef, state, n_lora = abstract_state(model_config, config.lora, tx, mesh)
    batch_sds = abstract_batch(stage, mesh, batch, seq, config.data.mlm_probability)
    rng = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                               sharding=replicated(mesh))

    objective = stages.objective(config)
    batch_shardings = jax.tree.map(lambda x: x.sharding, batch_sds)
    step_fn = jit_train_step(make_train_step(graphdef, tx, objective), state, mesh,
                             batch_shardings)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):  # as in the training loop: activations pinned by logical axes
        lowered = step_fn.lower(state, batch_sds, rng)
    t1 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except Exception as e:  # XlaRuntimeError; GPU/TPU compilers refuse programs over HBM
        if "RESOURCE_EXHAUSTED" not in str(e) and "memory" not in str(e).lower():
            raise
        raise PlanError(f"the compiler ran out of device memory: the step does not fit "
                        f"({str(e).splitlines()[0][:300]})") from e
    t2 = time.perf_counter()

    ma = compiled.memory_analysis()
    memory = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in
              ("argument", "output", "alias", "temp", "generated_code")}
    # Donated state buffers are reused for the outputs: count them once.
    memory["total"] = (memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
                       + memory["generated_code"])
    peak = int(getattr(ma, "peak_memory_in_bytes", 0) or 0)
    if peak:
        memory["peak"] = peak
    groups = {"frozen": state.frozen, "lora": state.lora, "opt_state": state.opt_state,
              "batch": batch_sds}
    flops = train_flops_per_step(model_config, n_lora, batch_sds)
    xla_flops = _cost_flops(compiled)

    fits = {}
    for name in chips or list(CHIPS):
        chip = CHIPS[name]
        hbm = chip.hbm_gib * GiB
        used = memory["total"] / hbm
        fits[name] = {
            "hbm_bytes": int(hbm),
            "used_fraction": used,
            "verdict": "fits" if used <= FIT_FRACTION else ("tight" if used <= 1.0 else "no"),
            "step_time_s": flops / (chip.peak_flops * n * assumed_mfu),
        }
    return {
        "config": {"stage": stage, "model": arch_source, "param_dtype": model_config.param_dtype,
                   "compute_dtype": model_config.dtype, "remat": remat,
                   "mesh": {a: mesh.shape[a] for a in MESH_AXES}, "devices": n,
                   "global_batch": batch, "seq": seq,
                   "views": len(batch_sds.token_ids()),
                   "lora_r": config.lora.r,
                   "grad_cache_chunk": (config.contrastive.grad_cache_chunk
                                        if stage != "mntp" else None)},
        "params": {"frozen": sum(math.prod(x.shape) for x in jax.tree.leaves(state.frozen)),
                   "lora": n_lora},
        "memory_per_device": memory,
        "arguments_per_device": {k: shard_bytes(v) for k, v in groups.items()},
        "arguments_global": {k: global_bytes(v) for k, v in groups.items()},
        "flops_per_step": flops,
        "xla_flops_per_device": xla_flops,
        "assumed_mfu": assumed_mfu,
        "chips": fits,
        "compile_backend": devices[0].platform,
        "lower_s": t1 - t0,
        "compile_s": t2 - t1,
        "note": ("memory from XLA's memory_analysis() of a compile for "
                 f"{devices[0].platform.upper()} devices: arguments/outputs are exact, "
                 "temporaries estimate the TPU/GPU compile (fusion, layouts and scheduling "
                 "differ); xla_flops counts a scanned layer body once"
                 if devices[0].platform == "cpu" else
                 f"memory from XLA's memory_analysis() of a native {devices[0].platform} compile"),
    }


# -- output ------------------------------------------------------------------------------------

def _gib(b: float) -> str:
    return f"{b / GiB:8.2f} GiB"


def format_report(r: dict) -> str:
    c = r["config"]
    mesh = ",".join(f"{a}={s}" for a, s in c["mesh"].items())
    lines = [
        f"{c['stage']} | {c['model']} | {c['param_dtype']} params, {c['compute_dtype']} compute"
        f" | remat={c['remat']} | mesh {mesh} ({c['devices']} devices)",
        f"global batch {c['global_batch']} x seq {c['seq']} x {c['views']} view(s)"
        + (f" | grad_cache_chunk {c['grad_cache_chunk']}" if c["grad_cache_chunk"] else "")
        + f" | params: {r['params']['frozen'] / 1e9:.2f}B frozen, "
        f"{r['params']['lora'] / 1e6:.1f}M LoRA (r={c['lora_r']})",
        f"compiled on {r['compile_backend']}: lower {r['lower_s']:.1f}s, compile {r['compile_s']:.1f}s",
        "",
        "XLA memory per device:",
    ]
    m = r["memory_per_device"]
    for k in ("argument", "output", "alias", "temp", "generated_code"):
        lines.append(f"  {k:<15}{_gib(m[k])}")
    lines.append(f"  {'total':<15}{_gib(m['total'])}   (argument + output - alias + temp + code)")
    if "peak" in m:
        lines.append(f"  {'peak':<15}{_gib(m['peak'])}")
    lines.append("arguments per device (from the shardings):")
    for k, v in r["arguments_per_device"].items():
        lines.append(f"  {k:<15}{_gib(v)}   (global {r['arguments_global'][k] / GiB:.2f} GiB)")
    xla = r["xla_flops_per_device"]
    lines += [
        "",
        f"FLOPs per step: {r['flops_per_step']:.3e} (model, train.flops)"
        + (f"; XLA cost_analysis {xla:.3e} per device" if xla is not None else ""),
        "",
        f"{'chip':<9}{'HBM':>10}{'used':>8}  {'verdict':<7}"
        f"{'step @ MFU ' + format(r['assumed_mfu'], '.0%'):>16}",
    ]
    for name, f in r["chips"].items():
        lines.append(f"{name:<9}{f['hbm_bytes'] / GiB:>6.0f} GiB{f['used_fraction']:>8.0%}  "
                     f"{f['verdict']:<7}{f['step_time_s']:>14.3f} s")
    lines += ["", "note: " + r["note"],
              f"      'fits' = total <= {FIT_FRACTION:.0%} of HBM; 'tight' = up to 100%."]
    return "\n".join(lines)


# -- entry point -------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm2vec_jax.plan",
        description="Compile a training stage's real train step for a fake mesh of N devices "
                    "(no weights allocated) and report per-device memory vs HBM, FLOPs and "
                    "the step time at an assumed MFU.")
    p.add_argument("--config", help="training YAML (configs/mntp/*.yaml, configs/simcse/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as for python -m llm2vec_jax.train (repeatable)")
    p.add_argument("--mesh", required=True,
                   help="mesh axis sizes, e.g. fsdp=8 or data=2,fsdp=4 (missing axes are 1); "
                        "their product is the device count")
    p.add_argument("--device", choices=sorted(CHIPS), action="append",
                   help="chip to compare against (repeatable; default: all)")
    p.add_argument("--remat", choices=("none", "dots", "dots_no_batch", "full"),
                   help="override model.remat")
    p.add_argument("--model", help="built-in architecture name / hub id, a config.json or an "
                                    "HF checkpoint directory (default: model.path)")
    p.add_argument("--batch", type=int, help="global batch (default: run.global_batch_size)")
    p.add_argument("--seq", type=int, help="sequence length (default: the stage's max length)")
    p.add_argument("--mfu", type=float, default=0.5, help="assumed MFU for the step time")
    p.add_argument("--backend", choices=("cpu", "native"), default="cpu",
                   help="cpu: fake host devices (default); native: compile for the real "
                        "devices of this machine (e.g. to check the estimate on a GPU)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _prepare_devices(args, argv) -> None:
    """Make ``n`` CPU devices exist before jax's backend starts, or re-exec so they do."""
    n = mesh_devices(args)
    if args.backend == "native":
        return
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                   os.environ.get("XLA_FLAGS", "")).strip()
    wanted = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
        os.environ["XLA_FLAGS"] = wanted
        # A GPU/TPU backend would only take memory and start-up time: the plan is a CPU compile.
        os.environ["JAX_PLATFORMS"] = "cpu"
        jax.config.update("jax_platforms", "cpu")
        return
    if len(jax.devices("cpu")) >= n:
        return
    if os.environ.get("_LLM2VEC_PLAN_REEXEC"):
        raise PlanError(f"could not create {n} CPU devices (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})")
    env = dict(os.environ, XLA_FLAGS=wanted, JAX_PLATFORMS="cpu", _LLM2VEC_PLAN_REEXEC="1")
    os.execve(sys.executable, [sys.executable, "-m", "llm2vec_jax.plan", *argv], env)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        mesh_sizes = parse_mesh(args.mesh)
        _prepare_devices(args, argv)
        from .train.config import load_config
        config = load_config(args.config, args.set)
        devices = jax.devices() if args.backend == "native" else jax.devices("cpu")
        report = plan(config, mesh_sizes, model=args.model, remat=args.remat, batch=args.batch,
                      seq=args.seq, chips=args.device, assumed_mfu=args.mfu, devices=devices)
    except (ValueError, FileNotFoundError) as e:  # PlanError, ShardingError, ConfigError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
