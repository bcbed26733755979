"""STS-B *train* pairs as supervised contrastive records (for the README's supervised row).

Pairs scored ≥ 4.0 become (query, positive); each gets as hard negative the first sentence
of a pair scored ≤ 1.0, drawn with a fixed seed. Never built from STS dev/test data.

    python bench/stsb_pairs.py hf:mteb/stsbenchmark-sts outputs/stsb-train-pairs.jsonl
    python bench/stsb_pairs.py ../shared/data/stsb/train.tsv outputs/stsb-train-pairs.jsonl

SOURCE is what ``llm2vec_jax.evaluation.load_sts`` reads (a hub dataset's train split, or a
local STS TSV such as the developers' copy beside the checkout).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from llm2vec_jax.evaluation import load_sts


def main(src: str, dst: str, seed: int = 0) -> None:
    data = load_sts(src, split="train")
    scores = np.asarray(data.scores)
    positives = np.flatnonzero(scores >= 4.0)
    negatives = np.flatnonzero(scores <= 1.0)
    picks = np.random.default_rng(seed).choice(negatives, size=len(positives))
    with open(dst, "w", encoding="utf-8") as f:
        for i, j in zip(positives, picks):
            f.write(json.dumps({"dataset": "stsb_train", "query": data.sentences1[i],
                                "positive": data.sentences2[i],
                                "negative": data.sentences1[j]}) + "\n")
    print(f"{len(positives)} records -> {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
