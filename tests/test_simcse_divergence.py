"""``bench/simcse_divergence.py`` without training: the masked-pair count it reports for a
step is the hand count (a batch of 32 copies of one sentence drops 32 × 31 pairs, a batch of
distinct sentences none), and its curve comparison finds the first differing step."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import simcse_divergence  # noqa: E402

from llm2vec_jax.text.tokenize import load_tokenizer  # noqa: E402


@pytest.mark.parametrize("copies, expected", [(True, {1: 32 * 31, 2: 32 * 31}), (False, {})])
def test_masked_pairs_per_step_are_the_hand_count(tmp_path, tokenizer_dir, copies, expected):
    lines = [f"sentence number {0 if copies else i} about a topic." for i in range(2000)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    overrides = simcse_divergence.row_overrides(str(corpus)) + ["data.max_texts=null"]
    dropped = simcse_divergence.masked_steps(overrides, 2, load_tokenizer(tokenizer_dir))
    assert dropped == expected


def test_compare_finds_the_first_differing_step():
    diff = simcse_divergence.compare([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.5, 3.0])
    assert diff["first_different_step"] == 3
    assert diff["abs_diff"] == [0.0, 0.0, 0.5, 1.0]
    assert diff["max_abs_diff"] == 1.0
    assert simcse_divergence.compare([1.0], [1.0])["first_different_step"] is None
