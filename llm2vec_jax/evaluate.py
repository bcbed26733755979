"""Evaluation CLI.

    python -m llm2vec_jax.evaluate sts --model DIR [--adapter DIR]
        --data FILE.tsv | sample:stsb-dev | hf:mteb/stsbenchmark-sts [--split validation]
        [--pooling-mode mean] [--batch-size 32] [--max-length 512]
        [--attention bidirectional|causal] [--limit N]
        [--instruction TEXT] [--dtype float32]

    python -m llm2vec_jax.evaluate word --model DIR [--adapter DIR] --task pos|chunk|ner
        --data conll2003 | hf:ID | FILE.conllu [--test-data FILE.conllu] [--pos-column upos]
        [--alignment same_token|next_token|next_word] [--aggregation first|mean|last]
        [--cache-dir DIR | --no-cache] [--attention ...] [--dtype ...] [--limit N]

prints one JSON line (sts: ``{"task": "sts", "spearman": ..., "pearson": ..., "n": ...}``;
word: accuracy, and span precision/recall/F1 for chunk and ner) on stdout;
progress and errors go to stderr: a bad argument or input file is one line ``KIND error: ...``
and exit status 2 (``--debug`` shows its traceback), see llm2vec_jax/cli_errors.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .cli_errors import add_debug_flag, run_cli
from .evaluation import evaluate_sts, load_sts
from .text.words import AGGREGATIONS, ALIGNMENTS
from .word_tasks import CONLLU_POS_COLUMNS, TASKS, load_word_task


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
    _add_model_args(sts)
    sts.add_argument("--data", required=True,
                     help="TSV with header source<TAB>score<TAB>sentence1<TAB>sentence2, "
                          "sample:stsb-dev (300 bundled STS-B dev pairs) or a hub dataset "
                          "hf:ID with columns sentence1, sentence2, score "
                          "(e.g. hf:mteb/stsbenchmark-sts)")
    sts.add_argument("--split", default="validation", help="split of an hf: dataset")
    sts.add_argument("--pooling-mode", default=None,
                     help="mean, weighted_mean, eos_token, last_token, bos_token "
                          "(default: llm2vec_config.json, else mean)")
    _add_encoder_args(sts)
    sts.add_argument("--limit", type=_positive_int, default=None, help="first N pairs only")
    sts.add_argument("--instruction", default="",
                     help="instruction applied to both sentences (default: none)")
    add_debug_flag(sts)

    word = sub.add_parser("word", help="word-level task (POS, chunking, NER): linear probe on "
                                       "frozen word vectors")
    _add_model_args(word)
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
    _add_encoder_args(word)
    word.add_argument("--limit", type=_positive_int, default=None,
                      help="first N sentences of each split only")
    add_debug_flag(word)
    return parser


def _add_model_args(parser) -> None:
    parser.add_argument("--model", required=True, help="HF checkpoint directory or hub id")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory (merged on load)")


def _add_encoder_args(parser) -> None:
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument("--max-length", type=_positive_int, default=None,
                        help="default: llm2vec_config.json, else 512")
    parser.add_argument("--attention", choices=("bidirectional", "causal"), default=None,
                        help="default: the mode the encoder was trained with "
                             "(llm2vec_jax_config.json), else bidirectional")
    parser.add_argument("--causal", dest="attention", action="store_const", const="causal",
                        help="same as --attention causal")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _load_encoder(args, **settings):
    from .encoder import LLM2Vec  # after the data check: a bad file fails before loading jax

    return LLM2Vec.from_pretrained(args.model, adapter=args.adapter, max_length=args.max_length,
                                   bidirectional=(None if args.attention is None
                                                  else args.attention == "bidirectional"),
                                   dtype=args.dtype, **settings)


def run_sts(args) -> dict:
    data = load_sts(args.data, split=args.split)
    start = time.perf_counter()
    encoder = _load_encoder(args, pooling_mode=args.pooling_mode)
    result = {"task": "sts", **evaluate_sts(encoder, data, limit=args.limit,
                                            batch_size=args.batch_size,
                                            instruction=args.instruction,
                                            show_progress_bar=not args.quiet)}
    print(f"encoded {2 * result['n']} sentences in {time.perf_counter() - start:.1f} s "
          f"(pooling={encoder.pooling_mode}, bidirectional={encoder.bidirectional}, "
          f"max_length={encoder.max_length})", file=sys.stderr)
    return result


def run_word(args) -> dict:
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
            encoder = encoder or _load_encoder(args)
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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), args.debug)


def _run(args) -> int:
    result = run_sts(args) if args.task == "sts" else run_word(args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
