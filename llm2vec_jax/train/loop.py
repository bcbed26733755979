"""The training loop, the same for every stage: data -> jitted step -> metrics / progress ->
eval -> checkpoint -> exported adapter.

All side effects of training live in the loop and the modules it calls (``checkpointing``,
``metrics``, ``export``); steps are pure (``steps.py``); what differs between MNTP, SimCSE
and supervised training is ``stages.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time

import jax

from .. import sharding as shd
from ..checkpoints.default_model import resolve_model
from ..checkpoints.hf import resolve_checkpoint_dir
from ..data.batches import real_tokens
from ..data.sharded import ShardedBatches
from ..distributed import maybe_initialize_distributed
from ..host_memory import compile_now
from ..lora import lora_parameter_count
from ..models import ModelConfig
from ..text.reference import validate_pooling
from ..text.tokenize import load_tokenizer
from . import stages
from .checkpointing import (checkpoint_manager, data_fingerprint, finish, record_settings,
                            restore, resume_candidates, run_identity, save, start_over)
from .config import TrainConfig, TrainConfigError
from .export import export_adapter
from .flops import mfu, train_flops_per_step
from .metrics import MetricsWriter, StepProfiler, progress_bar
from .preemption import Preempted, PreemptionWatch
from .prepare import prepare_model
from .steps import init_state, jit_eval_step, jit_train_step, make_eval_step, make_train_step

log = logging.getLogger("llm2vec_jax.train")


def train(config: TrainConfig) -> dict:
    """Run (or resume) one training stage; returns the final metrics."""
    maybe_initialize_distributed()
    run = config.run
    if os.path.isfile(run.output_dir):
        raise TrainConfigError(f"run.output_dir={run.output_dir!r} is an existing file; name a "
                               "directory (it is created if missing)")
    mesh = shd.make_mesh(config.mesh)
    shd.check_batch(mesh, run.global_batch_size)
    if run.global_batch_size % jax.process_count():
        raise TrainConfigError(f"run.global_batch_size={run.global_batch_size} does not divide "
                               f"over {jax.process_count()} processes")
    chunk = config.contrastive.grad_cache_chunk if run.stage != "mntp" else None
    if chunk is not None:
        if chunk < 1 or run.global_batch_size % chunk:
            raise TrainConfigError(f"contrastive.grad_cache_chunk={chunk} must divide "
                                   f"run.global_batch_size={run.global_batch_size}")
        shd.check_batch(mesh, chunk)  # each chunk is spread over the data-parallel shards
    # Whatever can refuse the run comes before the weights are read: a typo in a data path or
    # the checkpoints of another run should not wait for a model load.
    path = resolve_checkpoint_dir(resolve_model(config.model.path))
    base = ModelConfig.from_hf(path)
    check_lengths(config, base, path)
    dims = config.contrastive.matryoshka_dims
    if run.stage != "mntp" and dims and dims[-1] > base.hidden_size:
        raise TrainConfigError(f"contrastive.matryoshka_dims={list(dims)} goes past the model's "
                               f"embedding width {base.hidden_size}")
    tokenizer = load_tokenizer(path)
    if run.stage != "mntp":
        validate_pooling(config.contrastive.pooling, tokenizer)
    train_iter, eval_iter = stages.iterators(config, tokenizer, base.model_type)
    if run.resume == "none":
        start_over(config)
    record = {"identity": run_identity(config, path),
              "data fingerprint": data_fingerprint(config, path)}
    manager = checkpoint_manager(config)
    resume = Resume(manager, resume_candidates(manager, run.resume, record), record)
    model = prepare_model(config, path, mesh)
    return run_loop(config, mesh, model, path, tokenizer, train_iter, eval_iter,
                    stages.objective(config), resume)


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where the checkpoints go and which ones a resume tries (``resume_candidates``), and
    this run's record (``run_identity``, ``data_fingerprint``) saved with each."""
    manager: object
    candidates: list[int]
    record: dict


def check_lengths(config: TrainConfig, base: ModelConfig, model_path: str) -> None:
    """Sequence lengths the model has positions for (else it fails later on a token count)."""
    length, name = ((config.data.max_seq_length, "data.max_seq_length") if config.run.stage == "mntp"
                    else (config.contrastive.max_length, "contrastive.max_length"))
    limit = base.max_position_embeddings
    if length > limit:
        raise TrainConfigError(f"{name}={length} exceeds the model's max_position_embeddings="
                               f"{limit} ({model_path}/config.json); use at most {limit}")


def evaluate(eval_step, state, iterator: ShardedBatches, mesh, batches: int) -> dict:
    iterator.set_state({"step": 0})  # the same held-out batches every time
    totals: dict[str, float] = {}
    count = 0.0
    for _ in range(min(batches, iterator.batches_per_epoch)):
        metrics = jax.device_get(eval_step(state, shd.global_batch(mesh, next(iterator))))
        weight = float(metrics.get("count", 1.0))
        count += weight
        for key in ("loss", "accuracy"):
            if key in metrics:
                totals[key] = totals.get(key, 0.0) + float(metrics[key]) * weight
    return {k: v / max(count, 1.0) for k, v in totals.items()}


def run_loop(config: TrainConfig, mesh, model, model_path: str, tokenizer, train_iter, eval_iter,
             objective, resume: Resume) -> dict:
    """The stage-independent loop: jitted steps, logging, eval, checkpoints, export."""
    run = config.run
    tx = config.optimizer.build(run.max_steps)
    sample = shd.global_batch(mesh, next(iter(train_iter)))
    train_iter.set_state({"step": 0})
    # Per batch: contrastive batches come in a few padded widths.
    step_flops = functools.partial(train_flops_per_step, model.config, lora_parameter_count(model))
    graphdef, state = init_state(model, tx, mesh)
    del model  # the state now owns the arrays
    batch_shardings = jax.tree.map(lambda x: x.sharding, sample)
    step_fn = jit_train_step(make_train_step(graphdef, tx, objective), state, mesh, batch_shardings)
    eval_fn = jit_eval_step(make_eval_step(graphdef, objective), state, mesh, batch_shardings)
    manager, record = resume.manager, resume.record
    state = restore(manager, resume.candidates, run.resume, record, state, train_iter)
    with jax.set_mesh(mesh):
        compile_now(step_fn, state, sample, jax.random.key(0))

    start = int(jax.device_get(state.step))
    writer = MetricsWriter(run.output_dir, run.tensorboard, wandb=run.wandb,
                           wandb_project=run.wandb_project, config=config.to_dict())
    profiler = StepProfiler(run.profile_steps, os.path.join(run.output_dir, "profile"))
    preemption = PreemptionWatch()
    record_settings(config, start)
    base_key = jax.random.key(run.seed)
    progress = progress_bar(run, start)
    last: dict = {}
    window_start, window_tokens, window_flops = time.perf_counter(), 0, 0.0
    try:
        with jax.set_mesh(mesh):  # activations are pinned to the mesh by logical axis names
            for step in range(start, run.max_steps):
                local = next(train_iter)
                batch = shd.global_batch(mesh, local)
                profiler.before(step + 1)
                state, metrics = step_fn(state, batch, jax.random.fold_in(base_key, step))
                profiler.after(step + 1, (state, metrics))
                window_flops += step_flops(batch)
                window_tokens += real_tokens(local) * jax.process_count()
                done = step + 1
                if done % run.log_every == 0 or done == run.max_steps:
                    metrics = jax.device_get(metrics)
                    elapsed = time.perf_counter() - window_start
                    metrics = {k: float(v) for k, v in metrics.items()}
                    metrics["tokens_per_s"] = window_tokens / elapsed
                    utilisation = mfu(window_flops / elapsed)
                    if utilisation is not None:
                        metrics["mfu"] = utilisation
                    writer.write(done, "train", metrics)
                    progress.set_postfix(loss=f"{metrics['loss']:.4f}",
                                         tok_s=f"{metrics['tokens_per_s']:.0f}")
                    last = metrics
                    window_start, window_tokens, window_flops = time.perf_counter(), 0, 0.0
                if done % run.eval_every == 0 or done == run.max_steps:
                    eval_metrics = evaluate(eval_fn, state, eval_iter, mesh, run.eval_batches)
                    writer.write(done, "eval", eval_metrics)
                    last = {**last, **{f"eval_{k}": v for k, v in eval_metrics.items()}}
                    progress.write(f"step {done}: " + ", ".join(f"eval {k} {v:.4f}"
                                                                 for k, v in eval_metrics.items()))
                preempted = preemption.reached(done)
                if done % run.save_every == 0 or done == run.max_steps or preempted:
                    save(manager, done, state, train_iter, record)
                progress.update(1)
                if preempted and done < run.max_steps:
                    raise Preempted(done, run.output_dir)
    finally:
        preemption.close()
        profiler.stop()
        progress.close()
        writer.close()
        finish(manager)
    export_adapter(config, graphdef, state, model_path, tokenizer)
    return last
