"""``python -m llm2vec_jax.evaluate sts``: the JSON line, its numbers, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import STSB_DEV

from llm2vec_jax import evaluate as cli
from llm2vec_jax.evaluation import read_sts_tsv, sts_scores



@pytest.fixture(scope="module")
def sts_slice(tmp_path_factory) -> Path:
    lines = STSB_DEV.read_text(encoding="utf-8").split("\n")
    path = tmp_path_factory.mktemp("sts") / "dev64.tsv"
    path.write_text("\n".join(lines[:65]) + "\n", encoding="utf-8")  # header + 64 pairs
    return path


def test_sts_cli_matches_encode(smollm2_dir, sts_slice):
    cmd = [sys.executable, "-m", "llm2vec_jax.evaluate", "sts", "--model", str(smollm2_dir),
           "--data", str(sts_slice), "--batch-size", "16", "--max-length", "128",
           "--causal", "--limit", "48"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # progress goes to stderr
    got = json.loads(lines[0])
    assert got["task"] == "sts" and got["n"] == 48
    assert "sent/s" in proc.stderr

    from llm2vec_jax.encoder import LLM2Vec

    data = read_sts_tsv(sts_slice)
    n = 48
    enc = LLM2Vec.from_pretrained(smollm2_dir, bidirectional=False, max_length=128)
    emb = enc.encode(list(data.sentences1[:n]) + list(data.sentences2[:n]), batch_size=16,
                     show_progress_bar=False)
    want = sts_scores(emb[:n], emb[n:], data.scores[:n])
    assert got["spearman"] == pytest.approx(want["spearman"], abs=1e-9)
    assert got["pearson"] == pytest.approx(want["pearson"], abs=1e-9)


@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("a\tb\tc\td\n", "bad header"),
    ("source\tscore\tsentence1\tsentence2\nx\t9\ta\tb\n", ":2: score 9.0 is outside"),
    ("source\tscore\tsentence1\tsentence2\nx\t1\ta\n", ":2: expected 4"),
])
def test_bad_file(tmp_path, capsys, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    assert cli.main(["sts", "--model", "unused", "--data", str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == "" and message in out.err and str(path) in out.err


def test_unreachable_hub_dataset(capsys):
    assert cli.main(["sts", "--model", "unused", "--data", "hf:mteb/stsbenchmark-sts"]) == 2
    err = capsys.readouterr().err.strip()
    # "data error:", the KIND prefix every CLI's input errors share (llm2vec_jax/cli_errors.py)
    assert err.startswith("data error: hub dataset hf:mteb/stsbenchmark-sts is not in the "
                          "datasets cache") and "\n" not in err


def test_missing_file(tmp_path, capsys):
    assert cli.main(["sts", "--model", "unused", "--data", str(tmp_path / "nope.tsv")]) == 2
    assert "No such file" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["sts", "--data", "x"], ["sts", "--model", "m", "--data", "x",
                                                            "--limit", "0"], ["nope"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2


def evaluate_cli(*args):
    return subprocess.run([sys.executable, "-m", "llm2vec_jax.evaluate", "sts", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def latin1_tsv(tmp_path):
    path = tmp_path / "latin1.tsv"
    path.write_bytes("source\tscore\tsentence1\tsentence2\nx\t1\tcaf\u00e9\tcoffee\n"
                     .encode("latin1"))
    return path


def test_cli_bad_sts_file_is_one_line_and_exit_2(latin1_tsv):
    """A non-UTF-8 STS file names the file, the line and the fix (not a bare codec error);
    the data is read before the model, so --model is never looked at."""
    done = evaluate_cli("--model", "unused", "--data", latin1_tsv)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"data error: {latin1_tsv}:2: not UTF-8 (byte 0xe9); convert it, e.g. iconv -f latin1 "
        f"-t utf-8 {latin1_tsv} > {latin1_tsv}.utf8"]


def test_cli_missing_model_dir_is_one_line_and_exit_2(sts_slice, tmp_path):
    done = evaluate_cli("--model", tmp_path / "nope", "--data", sts_slice)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.strip().splitlines()[-1] == (
        f"file error: checkpoint directory '{tmp_path / 'nope'}' does not exist (nor is it a "
        "hub id like 'meta-llama/Llama-3.1-8B')")


def test_cli_debug_keeps_the_traceback(latin1_tsv):
    done = evaluate_cli("--model", "unused", "--data", latin1_tsv, "--debug")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"llm2vec_jax.evaluation.STSFormatError: {latin1_tsv}:2: not UTF-8 (byte 0xe9); "
        f"convert it, e.g. iconv -f latin1 -t utf-8 {latin1_tsv} > {latin1_tsv}.utf8")


def test_too_few_pairs(sts_slice):
    from llm2vec_jax.evaluation import STSFormatError, evaluate_sts, read_sts_tsv
    with pytest.raises(STSFormatError, match="1 sentence pair\\(s\\) to score; a correlation "
                                             "needs at least 2"):
        evaluate_sts(None, read_sts_tsv(sts_slice), limit=1)  # refused before any encoding


def test_unknown_pooling_mode(smollm2_dir, sts_slice, capsys):
    argv = ["sts", "--model", str(smollm2_dir), "--data", str(sts_slice), "--pooling-mode",
            "max", "--quiet"]
    assert cli.main(argv) == 2
    assert "valid modes" in capsys.readouterr().err
