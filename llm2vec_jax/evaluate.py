"""Evaluation CLI.

    python -m llm2vec_jax.evaluate sts --model DIR [--adapter DIR]
        --data FILE.tsv | sample:stsb-dev | hf:mteb/stsbenchmark-sts [--split validation]
        [--pooling-mode mean] [--batch-size 32] [--max-length 512]
        [--attention bidirectional|causal] [--limit N]
        [--instruction TEXT] [--dtype float32]

    python -m llm2vec_jax.evaluate retrieve --corpus-embeddings DIR --queries FILE|DIR
        --output RUN.trec [--top-k 10] [--query-instruction TEXT] [--model DIR] [--chunk-size N]

sts prints one JSON line ``{"task": "sts", "spearman": ..., "pearson": ..., "n": ...}`` on stdout,
retrieve one line ``{"task": "retrieve", "queries": ..., "corpus": ..., "top_k": ...}``;
progress and errors go to stderr: a bad argument or input file is one line ``KIND error: ...``
and exit status 2 (``--debug`` shows its traceback), see llm2vec_jax/cli_errors.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .cli_errors import add_debug_flag, run_cli
from .evaluation import evaluate_sts, load_sts


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm2vec_jax.evaluate",
                                     description="Evaluate an LLM2Vec encoder.")
    sub = parser.add_subparsers(dest="task", required=True)
    sts = sub.add_parser("sts", help="STS-B style TSV: Spearman/Pearson of cosine vs gold")
    sts.add_argument("--model", required=True, help="HF checkpoint directory or hub id")
    sts.add_argument("--adapter", default=None, help="PEFT adapter directory (merged on load)")
    sts.add_argument("--data", required=True,
                     help="TSV with header source<TAB>score<TAB>sentence1<TAB>sentence2, "
                          "sample:stsb-dev (300 bundled STS-B dev pairs) or a hub dataset "
                          "hf:ID with columns sentence1, sentence2, score "
                          "(e.g. hf:mteb/stsbenchmark-sts)")
    sts.add_argument("--split", default="validation", help="split of an hf: dataset")
    sts.add_argument("--pooling-mode", default=None,
                     help="mean, weighted_mean, eos_token, last_token, bos_token "
                          "(default: llm2vec_config.json, else mean)")
    sts.add_argument("--batch-size", type=_positive_int, default=32)
    sts.add_argument("--max-length", type=_positive_int, default=None,
                     help="default: llm2vec_config.json, else 512")
    sts.add_argument("--attention", choices=("bidirectional", "causal"), default=None,
                     help="default: the mode the encoder was trained with "
                          "(llm2vec_jax_config.json), else bidirectional")
    sts.add_argument("--causal", dest="attention", action="store_const", const="causal",
                     help="same as --attention causal")
    sts.add_argument("--limit", type=_positive_int, default=None, help="first N pairs only")
    sts.add_argument("--instruction", default="",
                     help="instruction applied to both sentences (default: none)")
    sts.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    sts.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_flag(sts)

    ret = sub.add_parser("retrieve", help="exact top-k by dot product over a corpus directory "
                                          "(python -m llm2vec_jax.encode_corpus), as a TREC run")
    ret.add_argument("--corpus-embeddings", required=True, help="encode_corpus output directory")
    ret.add_argument("--queries", required=True,
                     help="queries as JSONL (id, text), TSV (id<TAB>text) or text (one a line), "
                          "encoded with the corpus's model and settings; or a directory of "
                          "query embeddings written by encode_corpus")
    ret.add_argument("--output", required=True, help="TREC run file to write")
    ret.add_argument("--top-k", type=_positive_int, default=10)
    ret.add_argument("--query-instruction", default="", help="instruction before every query")
    ret.add_argument("--model", default=None,
                     help="encode the queries with this model (default: the corpus's)")
    ret.add_argument("--adapter", default=None, help="with --model: its PEFT adapter")
    ret.add_argument("--batch-size", type=_positive_int, default=32)
    ret.add_argument("--chunk-size", type=_positive_int, default=8192,
                     help="corpus passages scored per device step")
    ret.add_argument("--run-name", default="llm2vec_jax")
    ret.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_flag(ret)
    return parser


def run_sts(args) -> dict:
    data = load_sts(args.data, split=args.split)
    from .encoder import LLM2Vec  # after the data check: a bad file fails before loading jax

    start = time.perf_counter()
    encoder = LLM2Vec.from_pretrained(args.model, adapter=args.adapter,
                                      pooling_mode=args.pooling_mode, max_length=args.max_length,
                                      bidirectional=(None if args.attention is None
                                                     else args.attention == "bidirectional"),
                                      dtype=args.dtype)
    result = {"task": "sts", **evaluate_sts(encoder, data, limit=args.limit,
                                            batch_size=args.batch_size,
                                            instruction=args.instruction,
                                            show_progress_bar=not args.quiet)}
    print(f"encoded {2 * result['n']} sentences in {time.perf_counter() - start:.1f} s "
          f"(pooling={encoder.pooling_mode}, bidirectional={encoder.bidirectional}, "
          f"max_length={encoder.max_length})", file=sys.stderr)
    return result


def run_retrieve(args) -> dict:
    import os

    from .corpus import CorpusError, iter_shards, read_manifest, read_passages

    corpus = read_manifest(args.corpus_embeddings)
    if os.path.isdir(args.queries):
        ids, emb = zip(*iter_shards(args.queries))
        query_ids, queries = sum(ids, []), np.concatenate(emb)
    else:
        pairs = list(read_passages(args.queries))
        if not (args.model or corpus.get("model")):
            raise CorpusError(f"{args.corpus_embeddings!r} names no model to encode the "
                              f"queries with: pass --model")
        from .encoder import LLM2Vec  # after the data checks: a bad file fails before jax
        settings = ({} if args.model else
                    {k: corpus[k] for k in ("pooling_mode", "max_length", "bidirectional")})
        encoder = LLM2Vec.from_pretrained(
            args.model or corpus["model"], adapter=args.adapter if args.model else corpus["adapter"],
            dtype=corpus.get("model_dtype", "float32"), **settings)
        texts = [[args.query_instruction, t] if args.query_instruction else t for _, t in pairs]
        query_ids = [q for q, _ in pairs]
        queries = encoder.encode(texts, batch_size=args.batch_size,
                                 show_progress_bar=not args.quiet)
    from .retrieval import top_k, write_trec_run

    scores, doc_ids = top_k(queries, iter_shards(args.corpus_embeddings), args.top_k,
                            chunk_size=args.chunk_size)
    with open(args.output, "w", encoding="utf-8") as f:
        write_trec_run(f, query_ids, scores, doc_ids, args.run_name)
    return {"task": "retrieve", "queries": len(query_ids), "corpus": corpus["count"],
            "top_k": args.top_k, "output": args.output}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), args.debug)


def _run(args) -> int:
    result = run_sts(args) if args.task == "sts" else run_retrieve(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
