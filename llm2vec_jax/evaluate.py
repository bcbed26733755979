"""Evaluation CLI.

    python -m llm2vec_jax.evaluate sts --model DIR [--adapter DIR]
        --data FILE.tsv | sample:stsb-dev | hf:mteb/stsbenchmark-sts [--split validation]
        [--pooling-mode mean] [--batch-size 32] [--max-length 512]
        [--attention bidirectional|causal] [--limit N]
        [--instruction TEXT] [--dtype float32]

prints one JSON line ``{"task": "sts", "spearman": ..., "pearson": ..., "n": ...}`` on stdout.

    python -m llm2vec_jax.evaluate word --model DIR [--adapter DIR] --task pos|chunk|ner
        --data conll2003 | hf:ID | FILE.conllu [--test-data FILE.conllu] [--pos-column upos]
        [--alignment same_token|next_token|next_word] [--aggregation first|mean|last]
        [--cache-dir DIR | --no-cache] [--attention ...] [--dtype ...] [--limit N]

prints one JSON line: accuracy, and span precision/recall/F1 for chunk and ner.

    python -m llm2vec_jax.evaluate mteb --model DIR [--adapter DIR] --tasks STSBenchmark,SciFact
        --output-dir DIR [--instructions FILE.json | none] [--batch-size 32] [...]

runs mteb's own tasks through ``mteb_wrapper.LLM2VecMTEB`` and writes mteb's result files
under DIR/results/; one JSON line per task ``{"task": ..., "main_score": ...}`` on stdout.

    python -m llm2vec_jax.evaluate retrieve --corpus-embeddings DIR --queries FILE|DIR
        --output RUN.trec [--top-k 10] [--query-instruction TEXT] [--model DIR] [--chunk-size N]

writes a TREC run file and prints one line ``{"task": "retrieve", "queries": ..., "corpus":
..., "top_k": ...}``.

Progress and errors go to stderr: a bad argument or input file is one line ``KIND error: ...``
and exit status 2 (``--debug`` shows its traceback), see llm2vec_jax/cli_errors.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from .cli_errors import add_debug_flag, positive_int, run_cli
from .evaluation import evaluate_sts, load_sts
from .text.words import AGGREGATIONS, ALIGNMENTS
from .word_tasks import CONLLU_POS_COLUMNS, TASKS, load_word_task


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llm2vec_jax.evaluate",
                                     description="Evaluate an LLM2Vec encoder.")
    sub = parser.add_subparsers(dest="command", required=True)
    sts = sub.add_parser("sts", help="STS-B style TSV: Spearman/Pearson of cosine vs gold")
    _add_model_arguments(sts)
    sts.add_argument("--data", required=True,
                     help="TSV with header source<TAB>score<TAB>sentence1<TAB>sentence2, "
                          "sample:stsb-dev (300 bundled STS-B dev pairs) or a hub dataset "
                          "hf:ID with columns sentence1, sentence2, score "
                          "(e.g. hf:mteb/stsbenchmark-sts)")
    sts.add_argument("--split", default="validation", help="split of an hf: dataset")
    _add_encoder_arguments(sts)
    sts.add_argument("--limit", type=positive_int, default=None, help="first N pairs only")
    sts.add_argument("--instruction", default="",
                     help="instruction applied to both sentences (default: none)")
    add_debug_flag(sts)

    mteb = sub.add_parser("mteb", help="mteb's own tasks; writes mteb's result files")
    _add_model_arguments(mteb)
    mteb.add_argument("--tasks", required=True,
                      help="comma-separated MTEB task names, e.g. STSBenchmark,SciFact")
    mteb.add_argument("--output-dir", required=True,
                      help="where mteb writes results/<model>/<revision>/<task>.json")
    mteb.add_argument("--instructions", default=None,
                      help="JSON table task -> query instruction (default: the reference's, "
                           "configs/mteb/task_to_instructions.json; 'none': only the tasks' "
                           "own MTEB prompts)")
    mteb.add_argument("--model-name", default=None,
                      help="name in the result files (default: llm2vec-jax/<directory name>)")
    _add_encoder_arguments(mteb)
    add_debug_flag(mteb)

    word = sub.add_parser("word", help="word-level task (POS, chunking, NER): linear probe on "
                                       "frozen word vectors")
    _add_model_arguments(word)
    word.add_argument("--task", required=True, choices=TASKS)
    word.add_argument("--data", required=True,
                      help="conll2003 (from the Hugging Face hub; needs datasets and network), "
                           "hf:ID (another copy with tokens/pos_tags/chunk_tags/ner_tags) or a "
                           "CoNLL-U file (pos only; split into train/test unless --test-data)")
    word.add_argument("--test-data", default=None, help="CoNLL-U test file")
    word.add_argument("--pos-column", default="upos", choices=tuple(CONLLU_POS_COLUMNS),
                      help="CoNLL-U tags: upos (universal) or xpos (Penn Treebank)")
    word.add_argument("--alignment", default="same_token", choices=ALIGNMENTS,
                      help="which tokens stand for a word: its own, each shifted one left "
                           "(next_token: the states that predict them, what MNTP trains), or "
                           "the previous word's")
    word.add_argument("--aggregation", default="mean", choices=AGGREGATIONS,
                      help="how a word's subword states combine (mean: the reference's)")
    word.add_argument("--test-fraction", type=float, default=0.2,
                      help="share of a lone CoNLL-U file's sentences held out for testing")
    word.add_argument("--dev-fraction", type=float, default=0.1,
                      help="share of the training sentences held out for early stopping")
    word.add_argument("--seed", type=int, default=0, help="splits and probe training")
    word.add_argument("--cache-dir", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "llm2vec_jax",
        "word_features"), help="where extracted word vectors are kept (default: %(default)s)")
    word.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    _add_encoder_arguments(word)
    word.add_argument("--limit", type=positive_int, default=None,
                      help="first N sentences of each split only")
    add_debug_flag(word)

    ret = sub.add_parser("retrieve", help="exact top-k by dot product over a corpus directory "
                                          "(python -m llm2vec_jax.encode_corpus), as a TREC run")
    ret.add_argument("--corpus-embeddings", required=True, help="encode_corpus output directory")
    ret.add_argument("--queries", required=True,
                     help="queries as JSONL (id, text), TSV (id<TAB>text) or text (one a line), "
                          "encoded with the corpus's model and settings; or a directory of "
                          "query embeddings written by encode_corpus")
    ret.add_argument("--output", required=True, help="TREC run file to write")
    ret.add_argument("--top-k", type=positive_int, default=10)
    ret.add_argument("--query-instruction", default="", help="instruction before every query")
    ret.add_argument("--model", default=None,
                     help="encode the queries with this model (default: the corpus's)")
    ret.add_argument("--adapter", default=None, help="with --model: its PEFT adapter")
    ret.add_argument("--batch-size", type=positive_int, default=32)
    ret.add_argument("--chunk-size", type=positive_int, default=8192,
                     help="corpus passages scored per device step")
    ret.add_argument("--run-name", default="llm2vec_jax")
    ret.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug_flag(ret)
    return parser


def _add_model_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="HF checkpoint directory or hub id")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory (merged on load)")


def _add_encoder_arguments(parser) -> None:
    parser.add_argument("--pooling-mode", default=None,
                        help="mean, weighted_mean, eos_token, last_token, bos_token "
                             "(default: llm2vec_config.json, else mean)")
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="default: llm2vec_config.json, else 512")
    parser.add_argument("--attention", choices=("bidirectional", "causal"), default=None,
                        help="default: the mode the encoder was trained with "
                             "(llm2vec_jax_config.json), else bidirectional")
    parser.add_argument("--causal", dest="attention", action="store_const", const="causal",
                        help="same as --attention causal")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _encoder_kwargs(args) -> dict:
    return dict(adapter=args.adapter, pooling_mode=args.pooling_mode, max_length=args.max_length,
                bidirectional=(None if args.attention is None
                               else args.attention == "bidirectional"),
                dtype=args.dtype)


def run_sts(args) -> dict:
    data = load_sts(args.data, split=args.split)
    from .encoder import LLM2Vec  # after the data check: a bad file fails before loading jax

    start = time.perf_counter()
    encoder = LLM2Vec.from_pretrained(args.model, **_encoder_kwargs(args))
    result = {"task": "sts", **evaluate_sts(encoder, data, limit=args.limit,
                                            batch_size=args.batch_size,
                                            instruction=args.instruction,
                                            show_progress_bar=not args.quiet)}
    print(f"encoded {2 * result['n']} sentences in {time.perf_counter() - start:.1f} s "
          f"(pooling={encoder.pooling_mode}, bidirectional={encoder.bidirectional}, "
          f"max_length={encoder.max_length})", file=sys.stderr)
    return result


def run_word(args) -> dict:
    from .encoder import LLM2Vec  # after the data check: a bad file fails before loading jax
    from .word_probe import cached, extract_word_features, features_key, probe_word_task

    splits = load_word_task(args.task, args.data, test_data=args.test_data,
                            pos_column=args.pos_column, test_fraction=args.test_fraction,
                            dev_fraction=args.dev_fraction, seed=args.seed)
    if args.limit is not None:
        splits = {k: v[:args.limit] for k, v in splits.items()}
    encoder = None
    settings = {k: getattr(args, k) for k in ("model", "adapter", "attention", "dtype",
                                              "max_length", "alignment", "aggregation")}
    # Local checkpoints by path and the time of their newest file: rewritten weights miss.
    for key in ("model", "adapter"):
        if settings[key] is not None and os.path.isdir(settings[key]):
            directory = os.path.abspath(settings[key])
            settings[key] = [directory, max((e.stat().st_mtime for e in os.scandir(directory)
                                             if e.is_file()), default=0.0)]
    features, seconds, words = {}, 0.0, 0
    for name, sentences in splits.items():
        def compute():
            nonlocal encoder
            encoder = encoder or LLM2Vec.from_pretrained(args.model, **_encoder_kwargs(args))
            return extract_word_features(encoder, sentences, aggregation=args.aggregation,
                                         alignment=args.alignment, batch_size=args.batch_size,
                                         show_progress_bar=not args.quiet)

        features[name], hit = cached(None if args.no_cache else args.cache_dir,
                                     features_key(settings, sentences), compute)
        if not hit:
            seconds += float(features[name]["seconds"])
            words += len(features[name]["valid"])
    result = probe_word_task(features["train"], features["dev"], features["test"],
                             splits["train"], splits["dev"], splits["test"],
                             spans=args.task != "pos")
    result.pop("predicted")
    return {"task": args.task, "data": args.data, "alignment": args.alignment,
            "aggregation": args.aggregation, **result,
            "words": {k: int(len(f["valid"])) for k, f in features.items()},
            "extraction_words_per_s": words / seconds if seconds else None}


def run_mteb_tasks(args) -> list[dict]:
    from . import mteb_wrapper as mw

    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    if not names:
        raise mw.MTEBError(f"--tasks {args.tasks!r} names no task")
    instructions = args.instructions
    if instructions is None:
        instructions = mw.INSTRUCTIONS_FILE if mw.INSTRUCTIONS_FILE.is_file() else None
    table = mw.load_instructions(None if instructions == "none" else instructions)
    tasks = mw.resolve_tasks(names)  # before loading the model: a missing task fails fast
    wrapper = mw.LLM2VecMTEB(args.model, task_to_instructions=table,
                             model_name=args.model_name, **_encoder_kwargs(args))
    result = mw.run_mteb(wrapper, tasks, args.output_dir, batch_size=args.batch_size,
                         show_progress_bar=not args.quiet)
    return [{"task": r.task_name, "main_score": float(r.get_score()),
             "results": os.path.join(args.output_dir, "results")} for r in result.task_results]


def run_retrieve(args) -> dict:
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
    if args.command == "mteb":
        for line in run_mteb_tasks(args):
            print(json.dumps(line), flush=True)
        return 0
    run = {"sts": run_sts, "word": run_word, "retrieve": run_retrieve}[args.command]
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
