"""The three stages as data and objective: MNTP (masked next-token prediction on text), SimCSE
(two dropout views of each sentence) and supervised (instructed query, positive, hard
negative). ``iterators`` gives a stage's (train, held-out) batch iterators over this process's
data shards, ``objective`` its loss; the loop (``train/loop.py``) is the same for all three.

Relative paths (data, instruction tables) are taken from the working directory; run the
shipped configs from the repository root.
"""

from __future__ import annotations

import functools
import logging

import jax

from ..data.builtin import DESCRIPTION as BUILTIN_DESCRIPTION, builtin_texts
from ..data.contrastive import (SimCSEBatchIterator, SupervisedBatchIterator, load_instructions,
                                read_hub_triples, read_triples, split_held_out)
from ..data.mntp import MNTPBatchIterator, MNTPCollator, group_texts, tokenize_lines
from ..data.samples import is_sample, sample_path
from ..data.sharded import ShardedBatches, shards_of_process
from ..data.sources import HF_PREFIX, is_hub_ref, resolve_source, text_source
from ..typed_config import TrainConfigError
from .config import TrainConfig
from .grad_cache import grad_cache_objective
from .steps import contrastive_objective, mntp_objective

log = logging.getLogger("llm2vec_jax.train")


def iterators(config: TrainConfig, tokenizer, model_type: str):
    """(train, eval) ``ShardedBatches`` of this process's share of the global batch."""
    if config.run.stage == "mntp":
        return mntp_iterators(config, tokenizer)
    if config.run.stage == "simcse":
        return simcse_iterators(config, tokenizer)
    return supervised_iterators(config, tokenizer, model_type)


def objective(config: TrainConfig):
    """The stage's ``(model, batch, rng) -> (loss, metrics)``."""
    causal = config.model.attention == "causal"
    if config.run.stage == "mntp":
        return functools.partial(mntp_objective, causal=causal)
    section = config.contrastive
    if section.grad_cache_chunk:
        return functools.partial(grad_cache_objective, scale=section.scale,
                                 pooling=section.pooling, chunk=section.grad_cache_chunk,
                                 causal=causal, mask_duplicates=section.mask_duplicates,
                                 matryoshka_dims=section.matryoshka_dims)
    return functools.partial(contrastive_objective, scale=section.scale, pooling=section.pooling,
                             causal=causal, mask_duplicates=section.mask_duplicates,
                             matryoshka_dims=section.matryoshka_dims)


# -- text (MNTP, SimCSE) ----------------------------------------------------------------------

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
        raise TrainConfigError(f"global_batch_size {config.run.global_batch_size} does not "
                               f"divide into data.num_shards={num_shards} shards")
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


def several_shards(config: TrainConfig) -> bool:
    return (config.data.num_shards or jax.process_count()) > 1


def packs(config: TrainConfig) -> bool:
    """Whether contrastive batches are packed several texts to a row (``contrastive.packing``:
    one data shard on one process, no GradCache, no reference pooling quirk)."""
    section = config.contrastive
    return (section.packing and not several_shards(config)
            and not section.compat_pool_all_positions and not section.grad_cache_chunk)


def simcse_iterators(config: TrainConfig, tokenizer):
    run, section = config.run, config.contrastive
    padding = None  # the iterator's default: bucket widths (compat: the longest row)
    pack = packs(config)
    if several_shards(config):
        # Shards (and processes) must agree on the global batch's width, which none of them
        # sees alone.
        if section.compat_pool_all_positions:
            log.warning("compat_pool_all_positions with several data shards pads to "
                        "max_length, not to each batch's longest row: pooled values differ "
                        "from the reference")
        padding = "max_length"
    common = dict(max_length=section.max_length, pooling=section.pooling,
                  compat_pool_all_positions=section.compat_pool_all_positions,
                  padding=padding, packed_rows_multiple=jax.device_count() if pack else None)

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


# -- supervised records -----------------------------------------------------------------------

def supervised_records(config: TrainConfig, path: str, split: str, max_records=None):
    """Records of a local JSONL file/dir, a bundled sample or a hub dataset (``hf:<id>``)."""
    data, section = config.data, config.contrastive
    if is_hub_ref(path):
        return read_hub_triples(path[len(HF_PREFIX):], data.config, split=split,
                                columns=data.columns, dataset_field=section.dataset_field,
                                dataset_name=data.dataset_name, max_records=max_records)
    local = sample_path(path) if is_sample(path) else path
    return read_triples(local, dataset_field=section.dataset_field,
                        dataset_name=data.dataset_name, max_records=max_records)


def supervised_iterators(config: TrainConfig, tokenizer, model_type: str):
    data, run, section = config.data, config.run, config.contrastive
    if not data.path:
        raise ValueError("supervised training needs data.path: a JSONL / TSV / CSV file or a "
                         "directory of them with query/positive[/negative] records (or "
                         "premise/entailment/contradiction, sent0/sent1/hard_neg), a hub "
                         "dataset (hf:<id>) or sample:nli")
    if data.kind not in ("builtin", "auto", "file", "dir", "hf"):
        raise ValueError(f"supervised data is read from JSONL / TSV / CSV or a hub dataset; "
                         f"data.kind={data.kind!r} is not supported for it")
    if not section.instructions:
        raise ValueError("supervised training needs contrastive.instructions: a YAML table "
                         "dataset -> instruction (e.g. configs/supervised/e5_instructions.yaml)")
    instructions = load_instructions(section.instructions)
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
                  padding="max_length" if jax.process_count() > 1 else "bucket",
                  packed_rows_multiple=jax.device_count() if packs(config) else None)
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


def describe_data(config: TrainConfig) -> str:
    data = config.data
    if data.kind == "builtin" and data.path is None:
        return f"data: built-in default corpus, {BUILTIN_DESCRIPTION}"
    kind = "" if data.kind in ("builtin", "auto") else f"{data.kind} "
    details = [d for d in (data.config, f"split {data.split}" if data.kind == "hf" or
                           str(data.path).startswith("hf:") else None, data.data_files) if d]
    return f"data: {kind}{data.path}" + (f" ({', '.join(details)})" if details else "")
