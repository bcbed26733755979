"""Compile a stage's train step for a mesh of fake devices and measure it: memory per device,
FLOPs, and the verdict per chip (see the package docstring)."""

from __future__ import annotations

import math
import os
import re
import time

import jax

from ..models.config import ModelConfig, read_hf_config
from ..models.presets import PRESETS, preset
from ..sharding import MESH_AXES, MeshConfig, make_mesh, replicated
from ..train import stages
from ..train.flops import train_flops_per_step
from ..train.steps import jit_train_step, make_train_step
from .abstract import abstract_batch, abstract_state, global_bytes, shard_bytes
from .encode import encode_memory
from .report import chip_fits


class PlanError(ValueError):
    """A plan that cannot be built (unknown model, mesh that does not fit, ...)."""


def architecture(name_or_path: str) -> dict:
    """The HF config dict for a preset name / hub id, a config.json or a checkpoint dir."""
    if os.path.isdir(name_or_path) or name_or_path.endswith(".json"):
        try:
            return read_hf_config(name_or_path)
        except FileNotFoundError as e:
            raise PlanError(str(e)) from None
    found = preset(name_or_path)
    if found is None:
        raise PlanError(f"unknown model {name_or_path!r}: not a local config.json or checkpoint "
                        f"directory, and not one of the built-in architectures "
                        f"{sorted(PRESETS)} (or their hub ids); pass --model PATH")
    return found


# -- mesh --------------------------------------------------------------------------------------

def parse_mesh(text: str) -> dict[str, int]:
    """``"fsdp=8"`` / ``"data=2,fsdp=4"`` -> {axis: size}; missing axes are 1."""
    sizes = {axis: 1 for axis in MESH_AXES}
    for part in filter(None, re.split(r"[,\s]+", text.strip())):
        axis, _, value = part.partition("=")
        if axis not in sizes or not value.isdigit() or int(value) < 1:
            raise PlanError(f"--mesh {text!r}: expected AXIS=N[,AXIS=N] with AXIS in "
                            f"{MESH_AXES} and N >= 1, got {part!r}")
        sizes[axis] = int(value)
    return sizes


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

    # Encoding with the same weights on the same mesh (LLM2Vec(mesh=...)): batch rows x seq.
    encode = encode_memory(model_config.replace(remat="none", attention_dropout=0.0), mesh,
                           batch, seq)
    fits = chip_fits(memory["total"], flops, n, chips, assumed_mfu, encode["total"])
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
        "encode_memory_per_device": encode,
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
