"""Exact chunked top-k retrieval against numpy brute force, and the ``evaluate retrieve`` CLI
on a corpus written by ``encode_corpus``."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hf_oracle import tiny_model_with_tokenizer
from llm2vec_jax import corpus
from llm2vec_jax.retrieval import top_k


def brute_force(queries, passages, k):
    scores = queries.astype(np.float64) @ passages.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("k,chunk", [(1, 4), (7, 5), (10, 64), (60, 16)])
def test_top_k_matches_brute_force(k, chunk):
    rng = np.random.default_rng(k)
    passages = rng.normal(size=(53, 24)).astype(np.float32)
    queries = rng.normal(size=(9, 24)).astype(np.float32)
    sizes = [20, 1, 17, 15]  # uneven shards; chunks cross no shard boundary
    bounds = np.cumsum([0] + sizes)
    shards = [([f"p{i}" for i in range(a, b)], passages[a:b]) for a, b in zip(bounds, bounds[1:])]
    scores, ids = top_k(queries, iter(shards), k, chunk_size=chunk)
    want_scores, want_order = brute_force(queries, passages, k)
    assert scores.shape == (9, min(k, 53))
    assert ids == [[f"p{i}" for i in row] for row in want_order]
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6, atol=1e-5)


def run(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM2VEC_JAX_", "XLA_FLAGS"))}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def read_run(path):
    rows = [line.split() for line in open(path, encoding="utf-8")]
    assert all(r[1] == "Q0" and r[5] == "llm2vec_jax" for r in rows)
    return rows


def test_retrieve_cli_matches_brute_force(tmp_path, tokenizer_dir):
    tiny = tiny_model_with_tokenizer(tmp_path / "tiny", tokenizer_dir)
    docs = [f"Document {i} talks about {w} in some detail" + " really" * (i % 3)
            for i, w in enumerate(["rivers", "mountains", "cities", "music", "food"] * 6)]
    src = tmp_path / "docs.tsv"
    src.write_text("id\ttext\n" + "".join(f"doc-{i}\t{d}\n" for i, d in enumerate(docs)))
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "text": t}) + "\n" for i, t in
                               enumerate(["rivers and lakes", "songs", "a big city"])))
    for what, path in (("corpus", src), ("qemb", queries)):
        done = run("llm2vec_jax.encode_corpus", "--model", tiny, "--input", str(path),
                   "--output", str(tmp_path / what), "--shard-size", "7", "--quiet")
        assert done.returncode == 0, done.stderr[-3000:]
    passages = np.concatenate([e for _, e in corpus.iter_shards(tmp_path / "corpus")])
    qemb = np.concatenate([e for _, e in corpus.iter_shards(tmp_path / "qemb")])
    want_scores, want_order = brute_force(qemb, passages, 5)

    # Query embeddings given as a directory, and queries encoded by the command itself with
    # the corpus's model: both rank as numpy does.
    for queries_arg, name in ((tmp_path / "qemb", "dir.trec"), (queries, "text.trec")):
        out = tmp_path / name
        result = run("llm2vec_jax.evaluate", "retrieve", "--corpus-embeddings",
                     str(tmp_path / "corpus"), "--queries", str(queries_arg), "--top-k", "5",
                     "--output", str(out), "--chunk-size", "4", "--quiet")
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout) == {"task": "retrieve", "queries": 3, "corpus": 30,
                                             "top_k": 5, "output": str(out)}
        rows = read_run(out)
        assert [r[0] for r in rows] == [f"q{i}" for i in range(3) for _ in range(5)]
        assert [int(r[3]) for r in rows] == [1, 2, 3, 4, 5] * 3
        assert [r[2] for r in rows] == [f"doc-{i}" for i in want_order.ravel()]
        np.testing.assert_allclose([float(r[4]) for r in rows], want_scores.ravel(), atol=2e-5)

    missing = run("llm2vec_jax.evaluate", "retrieve", "--corpus-embeddings", str(tmp_path),
                  "--queries", str(queries), "--output", str(tmp_path / "x.trec"))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"data error: {str(tmp_path)!r} has no manifest.json: not a finished output of python "
        "-m llm2vec_jax.encode_corpus (rerun it to finish)"]
