"""Exact top-k retrieval by dot product over a corpus directory (``llm2vec_jax.corpus``).

The corpus is streamed shard by shard in fixed-size chunks; for each chunk one jitted step
scores all queries against it on the device and merges the scores into the running top k
(``lax.top_k`` over [best k | chunk]), so memory is queries × (k + chunk), never the full
similarity matrix. Ties go to the passage earlier in the corpus. Only the passage ids are
kept on the host for the whole corpus.
"""

from __future__ import annotations

import functools
from typing import Iterable, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from .corpus import CorpusError


@functools.partial(jax.jit, static_argnames=("k",), donate_argnums=(0, 1))
def _merge_chunk(best_scores, best_index, queries, chunk, valid, offset, k: int):
    """best [Q, k] + queries [Q, D] · chunk [C, D] (first ``valid`` rows real) -> new best."""
    scores = jnp.einsum("qd,cd->qc", queries, chunk, precision=jax.lax.Precision.HIGHEST)
    column = jnp.arange(chunk.shape[0])
    scores = jnp.where(column[None, :] < valid, scores, -jnp.inf)
    index = jnp.broadcast_to(offset + column, scores.shape)
    top, where = jax.lax.top_k(jnp.concatenate([best_scores, scores], axis=1), k)
    return top, jnp.take_along_axis(jnp.concatenate([best_index, index], axis=1), where, axis=1)


def top_k(queries: np.ndarray, shards: Iterable[tuple[list[str], np.ndarray]], k: int,
          chunk_size: int = 8192) -> tuple[np.ndarray, list[list[str]]]:
    """(scores [Q, k'] float32, ids [Q][k']) of the ``k`` highest dot products of each query
    with the corpus passages (k' = min(k, corpus size)), best first."""
    if k < 1 or chunk_size < 1:
        raise CorpusError(f"top-k and chunk size must be positive, got {k} and {chunk_size}")
    queries = jnp.asarray(queries, jnp.float32)
    n_q, dim = queries.shape
    best = jnp.full((n_q, k), -jnp.inf, jnp.float32)
    best_index = jnp.full((n_q, k), -1, jnp.int32)
    ids: list[str] = []
    for shard_ids, emb in shards:
        if emb.shape[1] != dim:
            raise CorpusError(f"corpus embeddings have dimension {emb.shape[1]}, the queries "
                              f"{dim}: encode both with the same model")
        for start in range(0, len(shard_ids), chunk_size):
            part = emb[start:start + chunk_size]
            padded = np.zeros((chunk_size, dim), np.float32)  # one compiled shape for all
            padded[:len(part)] = part
            best, best_index = _merge_chunk(best, best_index, queries, padded, len(part),
                                            len(ids) + start, k=k)
        ids.extend(shard_ids)
    found = min(k, len(ids))
    scores, index = np.asarray(best)[:, :found], np.asarray(best_index)[:, :found]
    return scores, [[ids[i] for i in row] for row in index]


def write_trec_run(out: TextIO, query_ids: list[str], scores: np.ndarray,
                   doc_ids: list[list[str]], run_name: str = "llm2vec_jax") -> None:
    """TREC run lines: ``qid Q0 docid rank score run_name``, rank from 1."""
    for qid, row_scores, row_ids in zip(query_ids, scores, doc_ids):
        bad = next((i for i in (qid, *row_ids) if not i or any(c.isspace() for c in i)), None)
        if bad is not None:
            raise CorpusError(f"id {bad!r} is empty or holds whitespace, which a TREC run "
                              f"file cannot hold; give the passages and queries plain ids")
        for rank, (score, doc) in enumerate(zip(row_scores, row_ids), 1):
            out.write(f"{qid} Q0 {doc} {rank} {float(score):.6f} {run_name}\n")
