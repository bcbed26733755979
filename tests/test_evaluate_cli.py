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
    assert err.startswith("error: hub dataset hf:mteb/stsbenchmark-sts is not in the datasets "
                          "cache") and "\n" not in err


def test_missing_file(tmp_path, capsys):
    assert cli.main(["sts", "--model", "unused", "--data", str(tmp_path / "nope.tsv")]) == 2
    assert "No such file" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["sts", "--data", "x"], ["sts", "--model", "m", "--data", "x",
                                                            "--limit", "0"], ["nope"]])
def test_bad_arguments(argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2


def test_unknown_pooling_mode(smollm2_dir, sts_slice, capsys):
    argv = ["sts", "--model", str(smollm2_dir), "--data", str(sts_slice), "--pooling-mode",
            "max", "--quiet"]
    assert cli.main(argv) == 2
    assert "valid modes" in capsys.readouterr().err
