"""The training loop: data -> jitted step -> metrics / progress -> eval -> checkpoint -> export.

All side effects of training live here; steps are pure (``steps.py``). Resuming: the
CheckpointManager in ``OUTPUT_DIR/checkpoints`` holds the LoRA parameters, optimizer
state, step and the data iterator's position; the step's dropout rng is derived from
(seed, step), so a resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import logging
import os
import time

import jax
import orbax.checkpoint as ocp
from etils import epath
import transformers
from flax import nnx

from .. import sharding as shd
from ..checkpoints.hf import load_hf_checkpoint
from ..checkpoints.peft import load_peft_adapter, save_peft_adapter
from ..data.batches import real_tokens
from ..data.builtin import DESCRIPTION as BUILTIN_DESCRIPTION, builtin_texts
from ..data.mntp import MNTPBatchIterator, MNTPCollator, group_texts, tokenize_lines
from ..data.sharded import ShardedBatches, shards_of_process
from ..data.sources import resolve_source, text_source
from ..distributed import is_main_process, maybe_initialize_distributed
from ..host_memory import compile_now
from ..lora import attach_lora, lora_parameter_count, merge_lora
from ..checkpoints.default_model import resolve_model
from .config import TrainConfig
from .flops import mfu, train_flops_per_step
from .steps import (TrainState, init_state, jit_eval_step, jit_train_step, make_eval_step,
                    make_train_step, mntp_objective)

log = logging.getLogger("llm2vec_jax.train")


# -- data -------------------------------------------------------------------------------------

def read_texts(config: TrainConfig, path: str | None = None, *, shard: int = 0,
               num_shards: int = 1) -> list[str]:
    """Texts of data shard ``shard`` of ``num_shards`` (``path``: ``data.eval_path``, read
    with ``data.eval_split``, instead of ``data.path``)."""
    data = config.data
    if data.kind == "builtin" and path is None and data.path is None:
        texts = builtin_texts()[shard::num_shards]
    else:
        kind, location = resolve_source("auto" if data.kind == "builtin" else data.kind,
                                        path or data.path)
        kwargs = dict(process_index=shard, process_count=num_shards)
        if kind in ("hf", "tfds"):
            split = (data.eval_split or data.split) if path else data.split
            kwargs.update(split=split, text_field=data.text_field)
        if kind == "hf":
            kwargs.update(config=data.config, data_files=data.data_files)
        source = text_source(kind, location, **kwargs)
        texts = []
        for text in source:
            texts.append(text)
            if data.max_texts and len(texts) >= data.max_texts:
                break
    if data.max_texts:
        texts = texts[:data.max_texts]
    return texts


def sharded_iterators(config: TrainConfig, make_shard):
    """(train, eval) ``ShardedBatches`` over this process's data shards.

    ``make_shard(shard, num_shards, rows)`` returns one shard's (train, eval) iterators with
    ``rows`` rows per batch. With ``data.num_shards`` fixed, the global batches do not depend
    on how many processes read them (see ``data/sharded.py``).
    """
    num_shards = config.data.num_shards or jax.process_count()
    if config.run.global_batch_size % num_shards:
        raise ValueError(f"global_batch_size {config.run.global_batch_size} does not divide "
                         f"into data.num_shards={num_shards} shards")
    rows = config.run.global_batch_size // num_shards
    pairs = [make_shard(shard, num_shards, rows) for shard in
             shards_of_process(num_shards, jax.process_index(), jax.process_count())]
    return ShardedBatches([t for t, _ in pairs]), ShardedBatches([e for _, e in pairs])


def held_out_texts(config: TrainConfig, texts: list[str], shard: int, num_shards: int):
    """(train, held-out) texts: ``data.eval_path`` when given, else the tail of the shard."""
    if config.data.eval_path:
        return texts, read_texts(config, config.data.eval_path, shard=shard, num_shards=num_shards)
    cut = max(1, int(round(len(texts) * config.data.eval_fraction)))
    return texts[:-cut], texts[-cut:]


def mntp_iterators(config: TrainConfig, tokenizer):
    """(train, eval) batch iterators of this process's share of the global batch."""
    data, run = config.data, config.run
    collator = MNTPCollator.from_tokenizer(tokenizer, data.mask_token_type,
                                           mlm_probability=data.mlm_probability,
                                           all_mask=data.all_mask)
    tokenize = tokenize_lines if data.line_by_line else group_texts

    def make_shard(shard: int, num_shards: int, rows: int):
        train_texts, eval_texts = held_out_texts(
            config, read_texts(config, shard=shard, num_shards=num_shards), shard, num_shards)
        train = tokenize(train_texts, tokenizer, data.max_seq_length)
        held_out = tokenize(eval_texts, tokenizer, data.max_seq_length)
        where = f"data shard {shard} of {num_shards}"
        if len(train) < rows:
            raise ValueError(f"the training data of {where} gives {len(train)} sequences of "
                             f"{data.max_seq_length} tokens, fewer than one batch of {rows}: use "
                             f"more text or a smaller batch / max_seq_length")
        if len(held_out) < rows:
            raise ValueError(f"the held-out data of {where} gives {len(held_out)} sequences, "
                             f"fewer than one batch of {rows}: raise data.eval_fraction or set "
                             f"data.eval_path")
        return (MNTPBatchIterator(train, collator, rows, seed=run.seed, process_index=shard),
                MNTPBatchIterator(held_out, collator, rows, seed=run.seed + 1, shuffle=False,
                                  process_index=shard))

    return sharded_iterators(config, make_shard)


# -- checkpoints ------------------------------------------------------------------------------

def checkpoint_manager(config: TrainConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=config.run.keep_checkpoints,
        enable_async_checkpointing=config.run.async_checkpointing)
    directory = _join(config.run.output_dir, "checkpoints")
    if not is_remote(directory):
        directory = os.path.abspath(directory)
    return ocp.CheckpointManager(directory, options=options, item_names=("train", "data"))


def _trainable(state: TrainState) -> dict:
    # The frozen base weights are not checkpointed: they come from the base model.
    return {"step": state.step, "lora": state.lora, "opt_state": state.opt_state}


def restore(manager: ocp.CheckpointManager, state: TrainState, iterator) -> TrainState:
    step = manager.latest_step()
    if step is None:
        return state
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            _trainable(state))
    restored = manager.restore(step, args=ocp.args.Composite(
        train=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    iterator.set_state(restored["data"])
    train = restored["train"]
    log.info("resumed from step %d", step)
    return state.replace(step=train["step"], lora=train["lora"], opt_state=train["opt_state"])


# -- the run ----------------------------------------------------------------------------------

class MetricsWriter:
    """JSONL always; TensorBoard when asked for and installed. Main process only."""

    def __init__(self, output_dir: str, tensorboard: bool):
        self.enabled = is_main_process()
        self.file = None
        self.tb = None
        if not self.enabled:
            return
        epath.Path(output_dir).mkdir(parents=True, exist_ok=True)
        self.file = epath.Path(_join(output_dir, "metrics.jsonl")).open("a")
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(_join(output_dir, "tensorboard"))
            except ImportError:
                log.warning("tensorboard logging asked for but tensorboardX is not installed "
                            "(pip install tensorboardX); writing metrics.jsonl only")

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(f"{split}/{key}", float(value), step)

    def close(self):
        if self.file:
            self.file.close()


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


def prepare_model(config: TrainConfig, mesh):
    """Base model on the mesh, earlier adapters merged (in order), fresh LoRA attached."""
    path = resolve_model(config.model.path)
    sharding_fn = shd.weight_sharding_fn(mesh)
    model = load_hf_checkpoint(path, dtype=config.model.dtype,
                               compute_dtype=config.model.compute_dtype,
                               sharding_fn=sharding_fn, remat=config.model.remat)
    adapters = config.model.adapter or ()
    for adapter in (adapters,) if isinstance(adapters, str) else adapters:
        load_peft_adapter(model, adapter, sharding_fn=sharding_fn)
        merge_lora(model)
    if config.run.stage != "mntp":
        model.config = model.config.replace(attention_dropout=config.contrastive.dropout)
    attach_lora(model, config.lora, seed=config.run.seed, sharding_fn=sharding_fn)
    return path, model


def train(config: TrainConfig) -> dict:
    """Run (or resume) one training stage; returns the final metrics."""
    if config.run.stage != "mntp":
        from .contrastive import train_contrastive
        return train_contrastive(config)
    maybe_initialize_distributed()
    mesh = shd.make_mesh(config.mesh)
    shd.check_batch(mesh, config.run.global_batch_size)
    if config.run.global_batch_size % jax.process_count():
        raise ValueError(f"global_batch_size {config.run.global_batch_size} does not divide over "
                         f"{jax.process_count()} processes")
    path, model = prepare_model(config, mesh)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    train_iter, eval_iter = mntp_iterators(config, tokenizer)
    return run_loop(config, mesh, model, path, tokenizer, train_iter, eval_iter, mntp_objective)


def run_loop(config: TrainConfig, mesh, model, model_path: str, tokenizer, train_iter, eval_iter,
             objective) -> dict:
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
    with jax.set_mesh(mesh):
        compile_now(step_fn, state, sample, jax.random.key(0))

    manager = checkpoint_manager(config)
    state = restore(manager, state, train_iter)
    start = int(jax.device_get(state.step))
    writer = MetricsWriter(run.output_dir, run.tensorboard)
    if is_main_process():
        config_file = epath.Path(_join(run.output_dir, "train_config.json"))
        settings = json.dumps(config.to_dict(), indent=2)
        if start and config_file.exists():
            # Compared as JSON, the form the earlier run wrote (tuples read back as lists).
            changed = changed_settings(json.loads(config_file.read_text()), json.loads(settings))
            if changed:
                log.warning("resuming %s at step %d with settings that differ from the run "
                            "that wrote its checkpoints: %s", run.output_dir, start,
                            "; ".join(changed))
        config_file.write_text(settings)
    base_key = jax.random.key(run.seed)
    progress = _progress(run, start)
    last: dict = {}
    window_start, window_tokens, window_flops = time.perf_counter(), 0, 0.0
    try:
        with jax.set_mesh(mesh):  # activations are pinned to the mesh by logical axis names
            for step in range(start, run.max_steps):
                local = next(train_iter)
                batch = shd.global_batch(mesh, local)
                state, metrics = step_fn(state, batch, jax.random.fold_in(base_key, step))
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
                if done % run.save_every == 0 or done == run.max_steps:
                    manager.save(done, args=ocp.args.Composite(
                        train=ocp.args.StandardSave(_trainable(state)),
                        data=ocp.args.JsonSave(train_iter.get_state())), force=True)
                progress.update(1)
    finally:
        progress.close()
        manager.wait_until_finished()
        manager.close()
        writer.close()
    export(config, graphdef, state, model_path, tokenizer)
    return last


def changed_settings(before: dict, after: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two config dicts."""
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _progress(run, start: int):
    from tqdm.auto import tqdm
    return tqdm(total=run.max_steps, initial=start, desc=f"{run.stage}", unit="step",
                disable=not (run.progress_bar and is_main_process()), dynamic_ncols=True)


def is_remote(path: str) -> bool:
    """gs://, s3:// …: written through etils.epath (GCS needs ``pip install gcsfs``)."""
    return "://" in path


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if is_remote(directory) else os.path.join(directory, name)


def export(config: TrainConfig, graphdef, state: TrainState, model_path: str, tokenizer) -> None:
    """OUTPUT_DIR/adapter: the LoRA adapter in PEFT format + llm2vec_config.json + tokenizer."""
    if not is_main_process():
        return
    model = nnx.merge(graphdef, state.lora, state.frozen)
    out = _join(config.run.output_dir, "adapter")
    # PEFT/tokenizer writers need a local directory: stage there, then copy to e.g. gs://.
    local = tempfile.mkdtemp(prefix="adapter-") if is_remote(out) else out
    save_peft_adapter(model, local, base_model_name_or_path=model_path)
    tokenizer.save_pretrained(local)
    max_length = (config.data.max_seq_length if config.run.stage == "mntp"
                  else config.contrastive.max_length)
    with open(os.path.join(local, "llm2vec_config.json"), "w", encoding="utf-8") as f:
        json.dump({"pooling_mode": config.contrastive.pooling, "max_length": max_length,
                   "doc_max_length": 400, "skip_instruction": True}, f, indent=2)
    if local != out:
        epath.Path(out).mkdir(parents=True, exist_ok=True)
        for name in os.listdir(local):
            epath.Path(os.path.join(local, name)).copy(epath.Path(_join(out, name)), overwrite=True)
        shutil.rmtree(local)
    log.info("adapter written to %s", out)


def describe_data(config: TrainConfig) -> str:
    data = config.data
    if data.kind == "builtin" and data.path is None:
        return f"data: built-in default corpus, {BUILTIN_DESCRIPTION}"
    kind = "" if data.kind in ("builtin", "auto") else f"{data.kind} "
    details = [d for d in (data.config, f"split {data.split}" if data.kind == "hf" or
                           str(data.path).startswith("hf:") else None, data.data_files) if d]
    return f"data: {kind}{data.path}" + (f" ({', '.join(details)})" if details else "")
