"""Contrastive stages: unsupervised SimCSE and supervised (E5-style) training, with GradCache.

``train_contrastive(config)`` builds the data iterators (``llm2vec_jax.data.contrastive``) and
the objective, then hands over to the stage-independent ``run_loop`` (checkpoints, resume,
eval, PEFT export). ``prepare_model`` has already merged ``model.adapter`` (the MNTP adapter)
into the base weights and attached a fresh LoRA, as the reference's second stage does.

GradCache (Gao et al. 2021), ``contrastive.grad_cache_chunk``: the in-batch-negative loss
needs every embedding of the global batch, but activation memory should scale with a chunk.
Inside one jitted step: embed all chunks without keeping activations, take the loss and its
gradient w.r.t. the embeddings, then re-run each chunk under ``jax.vjp`` and pull that
chunk's embedding gradient back to the LoRA parameters, summing over chunks. It is written
as a ``custom_vjp`` on the embedding function, so the ordinary train step (``value_and_grad``
of the objective) gets GradCache gradients unchanged. Every row draws its dropout from its
own key (``steps.encode_rows``), so both passes, and the plain step, see the same masks.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import transformers
from flax import nnx

from .. import sharding as shd
from ..data.batches import ContrastiveBatch, Features
from ..data.contrastive import (SimCSEBatchIterator, SupervisedBatchIterator,
                                load_instructions, read_hub_triples, read_triples,
                                split_held_out)
from ..data.samples import is_sample, sample_path
from ..data.sources import HF_PREFIX, is_hub_ref
from ..data.sharded import ShardedBatches
from ..distributed import maybe_initialize_distributed
from ..models.pooling import pool
from ..text.reference import validate_pooling
from ..lora import FROZEN_FILTER, LORA_FILTER
from .config import TrainConfig
from .loop import held_out_texts, prepare_model, read_texts, run_loop, sharded_iterators
from .losses import contrastive_loss
from .steps import contrastive_objective, encode_rows, row_keys, view_keys

log = logging.getLogger("llm2vec_jax.train")
REPO_ROOT = Path(__file__).resolve().parents[2]


# -- GradCache --------------------------------------------------------------------------------

def _to_chunks(x, n_chunks: int):
    # Chunk c holds rows c, c + C, c + 2C, ...: with the batch sharded in contiguous blocks
    # over devices, every chunk then spans all devices instead of living on one.
    return x.reshape(x.shape[0] // n_chunks, n_chunks, *x.shape[1:]).swapaxes(0, 1)


def _from_chunks(x):
    return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])


def _embed_chunk(graphdef, pooling, lora, frozen, view: Features, keys):
    model = nnx.merge(graphdef, lora, frozen)
    hidden = encode_rows(model, view.input_ids, view.attention_mask, keys)
    return pool(hidden, view.attention_mask, view.embed_mask, pooling)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def chunked_embed(graphdef, pooling: str, n_chunks: int, lora, frozen, feats, keys):
    """[B, E] embeddings of ``feats`` computed ``n_chunks`` chunks at a time (GradCache)."""
    chunks = jax.tree.map(lambda x: _to_chunks(x, n_chunks), (feats, keys))
    out = jax.lax.map(lambda xs: _embed_chunk(graphdef, pooling, lora, frozen, *xs), chunks)
    return _from_chunks(out)


def _chunked_embed_fwd(graphdef, pooling, n_chunks, lora, frozen, feats, keys):
    # Residuals are the inputs only: no activation outlives its chunk.
    return (chunked_embed(graphdef, pooling, n_chunks, lora, frozen, feats, keys),
            (lora, frozen, feats, keys))


def _chunked_embed_bwd(graphdef, pooling, n_chunks, residuals, grad):
    lora, frozen, feats, keys = residuals

    def body(acc, xs):
        feats_c, keys_c, grad_c = xs
        _, vjp = jax.vjp(lambda l: _embed_chunk(graphdef, pooling, l, frozen, feats_c, keys_c),
                         lora)
        (d_lora,) = vjp(grad_c)
        return jax.tree.map(lambda a, d: a + d.astype(jnp.float32), acc, d_lora), None

    # Accumulate in float32 whatever the parameter dtype: chunks add up many small terms.
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), lora)
    xs = jax.tree.map(lambda x: _to_chunks(x, n_chunks), (feats, keys, grad))
    total, _ = jax.lax.scan(body, zeros, xs)
    total = jax.tree.map(lambda t, x: t.astype(x.dtype), total, lora)
    return total, None, None, None  # frozen weights, tokens and keys get no gradient


chunked_embed.defvjp(_chunked_embed_fwd, _chunked_embed_bwd)


def grad_cache_objective(model, batch: ContrastiveBatch, rng, *, scale: float,
                         pooling: str = "mean", chunk: int):
    """``contrastive_objective`` with the same value and gradients, ``chunk`` rows at a time."""
    graphdef, lora, frozen = nnx.split(model, LORA_FILTER, FROZEN_FILTER)
    embeddings = []
    for view, key in zip(batch.views, view_keys(rng, len(batch.views))):
        rows = view.input_ids.shape[0]
        if rows % chunk:
            raise ValueError(f"contrastive.grad_cache_chunk={chunk} does not divide the global "
                             f"batch of {rows}")
        # The same per-row keys as steps.embed, so chunking changes no dropout mask.
        embeddings.append(chunked_embed(graphdef, pooling, rows // chunk, lora, frozen, view,
                                        row_keys(key, rows)))
    loss = contrastive_loss(*embeddings, scale=scale)
    return loss, {"loss": loss}


def make_objective(config: TrainConfig):
    section = config.contrastive
    if section.grad_cache_chunk:
        return functools.partial(grad_cache_objective, scale=section.scale,
                                 pooling=section.pooling, chunk=section.grad_cache_chunk)
    return functools.partial(contrastive_objective, scale=section.scale, pooling=section.pooling)


# -- data -------------------------------------------------------------------------------------

def _resolve(path: str) -> str:
    # Relative paths are tried from the working directory, then from the repository root
    # (so "configs/supervised/e5_instructions.yaml" works from anywhere in a checkout).
    if os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


def simcse_iterators(config: TrainConfig, tokenizer):
    run, section = config.run, config.contrastive
    padding = None  # the iterator's default: bucket widths (compat: the longest row)
    if (config.data.num_shards or jax.process_count()) > 1:
        # Shards (and processes) must agree on the global batch's width, which none of them
        # sees alone.
        if section.compat_pool_all_positions:
            log.warning("compat_pool_all_positions with several data shards pads to "
                        "max_length, not to each batch's longest row: pooled values differ "
                        "from the reference")
        padding = "max_length"
    common = dict(max_length=section.max_length, pooling=section.pooling,
                  compat_pool_all_positions=section.compat_pool_all_positions,
                  padding=padding)

    def make_shard(shard: int, num_shards: int, rows: int):
        texts = [t.strip() for t in read_texts(config, shard=shard, num_shards=num_shards)]
        train, held = held_out_texts(config, [t for t in texts if t], shard, num_shards)
        held = [t for t in (s.strip() for s in held) if t]
        if len(held) < rows:
            raise ValueError(f"the held-out data of data shard {shard} has {len(held)} sentences, "
                             f"fewer than one batch of {rows}: raise data.eval_fraction or set "
                             "data.eval_path")
        return (SimCSEBatchIterator(train, tokenizer, rows, seed=run.seed, **common),
                SimCSEBatchIterator(held, tokenizer, rows, seed=run.seed + 1, shuffle=False,
                                    **common))

    return sharded_iterators(config, make_shard)


def supervised_records(config: TrainConfig, path: str, split: str, max_records=None):
    """Records of a local JSONL file/dir, a bundled sample or a hub dataset (``hf:<id>``)."""
    data, section = config.data, config.contrastive
    if is_hub_ref(path):
        return read_hub_triples(path[len(HF_PREFIX):], data.config, split=split,
                                columns=data.columns, dataset_field=section.dataset_field,
                                dataset_name=data.dataset_name, max_records=max_records)
    local = sample_path(path) if is_sample(path) else _resolve(path)
    return read_triples(local, dataset_field=section.dataset_field,
                        dataset_name=data.dataset_name, max_records=max_records)


def supervised_iterators(config: TrainConfig, tokenizer, model_type: str):
    data, run, section = config.data, config.run, config.contrastive
    if not data.path:
        raise ValueError("supervised training needs data.path: a JSONL file or a directory of "
                         "<dataset>.jsonl files with query/positive[/negative] records, a hub "
                         "dataset (hf:<id>) or sample:nli")
    if data.kind not in ("builtin", "auto", "file", "dir", "hf"):
        raise ValueError(f"supervised data is read from JSONL or a hub dataset; "
                         f"data.kind={data.kind!r} is not supported for it")
    if not section.instructions:
        raise ValueError("supervised training needs contrastive.instructions: a YAML table "
                         "dataset -> instruction (e.g. configs/supervised/e5_instructions.yaml)")
    instructions = load_instructions(_resolve(section.instructions))
    records = supervised_records(config, data.path, data.split, data.max_texts)
    if data.eval_path:
        held = supervised_records(config, data.eval_path, data.eval_split or data.split)
        train = records
    else:
        train, held = split_held_out(records, data.eval_fraction)
    common = dict(instructions=instructions, max_length=section.max_length,
                  pooling=section.pooling, model_type=model_type,
                  name_or_path=config.model.path, process_index=jax.process_index(),
                  process_count=jax.process_count(),
                  padding="max_length" if jax.process_count() > 1 else "bucket")
    train_iter = SupervisedBatchIterator(train, tokenizer, run.global_batch_size,
                                         seed=run.seed, **common)
    try:
        eval_iter = SupervisedBatchIterator(held, tokenizer, run.global_batch_size,
                                            seed=run.seed + 1, shuffle=False, **common)
    except ValueError as e:
        raise ValueError(f"held-out supervised data: {e}; raise data.eval_fraction or set "
                         "data.eval_path") from e
    # Each process already takes its slice of every global batch: one "shard" per process.
    return ShardedBatches([train_iter]), ShardedBatches([eval_iter])


# -- the stage --------------------------------------------------------------------------------

def train_contrastive(config: TrainConfig) -> dict:
    """Run (or resume) a SimCSE or supervised stage; returns the final metrics."""
    maybe_initialize_distributed()
    run, section = config.run, config.contrastive
    mesh = shd.make_mesh(config.mesh)
    shd.check_batch(mesh, run.global_batch_size)
    if run.global_batch_size % jax.process_count():
        raise ValueError(f"global_batch_size {run.global_batch_size} does not divide over "
                         f"{jax.process_count()} processes")
    if section.grad_cache_chunk is not None:
        chunk = section.grad_cache_chunk
        if chunk < 1 or run.global_batch_size % chunk:
            raise ValueError(f"contrastive.grad_cache_chunk={chunk} must divide "
                             f"global_batch_size={run.global_batch_size}")
        shd.check_batch(mesh, chunk)  # each chunk is spread over the data-parallel shards
    path, model = prepare_model(config, mesh)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    validate_pooling(section.pooling, tokenizer)
    if run.stage == "simcse":
        train_iter, eval_iter = simcse_iterators(config, tokenizer)
    else:
        train_iter, eval_iter = supervised_iterators(config, tokenizer, model.config.model_type)
    return run_loop(config, mesh, model, path, tokenizer, train_iter, eval_iter,
                    make_objective(config))
