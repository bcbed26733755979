"""Tiny MNTP training runs through the real CLI (a random 2-layer model with SmolLM2's
tokenizer, 300 WikiText lines), shared by the training-loop and telemetry tests."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, WIKITEXT
from hf_oracle import tiny_model_with_tokenizer

CLI_CASES = REPO / "tests" / "cli_cases.py"


def make_tiny_run(root, tokenizer_dir):
    """(root, model dir, corpus file) under ``root``."""
    model = tiny_model_with_tokenizer(root / "model", tokenizer_dir)
    corpus = root / "corpus.txt"
    lines = WIKITEXT.read_text(encoding="utf-8").splitlines()
    corpus.write_text("\n".join(lines[:300]) + "\n", encoding="utf-8")
    return root, model, corpus


def cli(root, model, corpus, out, *extra):
    return [sys.executable, "-m", "llm2vec_jax.train",
            "--set", f"model.path={model}", "--set", "data.kind=file",
            "--set", f"data.path={corpus}", "--set", "data.max_seq_length=32",
            "--set", "run.global_batch_size=4", "--set", "run.max_steps=10",
            "--set", "run.log_every=1", "--set", "run.eval_every=5", "--set", "run.save_every=2",
            "--set", "run.keep_checkpoints=10", "--set", "run.progress_bar=false",
            "--set", "optimizer.learning_rate=1e-3", "--set", f"run.output_dir={out}", *extra]


def run_in_one_process(commands: dict, workdir, prefix=()) -> dict:
    """name -> {"returncode", "stderr"} of each ``cli(...)`` command, all run by one
    interpreter (tests/cli_cases.py) started with ``prefix`` (e.g. setpriv and its options)."""
    [(flag, module)] = {tuple(c[1:3]) for c in commands.values()}  # ("-m", the one CLI)
    assert flag == "-m", flag
    spec, results = workdir / "cases.json", workdir / "results.json"
    spec.write_text(json.dumps({"module": module,
                                "cases": {k: c[3:] for k, c in commands.items()}}))
    done = subprocess.run([*prefix, sys.executable, str(CLI_CASES), str(spec), str(results)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(results.read_text())


def run_straight(tiny_run, name="straight"):
    """One uninterrupted 10-step run (checkpoints every 2 steps): the reference resume tests
    compare with."""
    root, model, corpus = tiny_run
    out = root / name
    done = subprocess.run(cli(root, model, corpus, out), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def train_losses(out) -> dict[int, list[float]]:
    losses = {}
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["split"] == "train":
                losses.setdefault(record["step"], []).append(record["loss"])
    return losses


def signal_at_step(proc: subprocess.Popen, out, step: int, sig) -> None:
    """Send ``sig`` to a training run (``proc``, writing to ``out``) once it has logged the
    train loss of ``step``; fails the test if the run ends first."""
    deadline = time.time() + 600
    while time.time() < deadline:
        if (out / "metrics.jsonl").exists() and max(train_losses(out), default=0) >= step:
            break
        if proc.poll() is not None:
            pytest.fail(f"the run finished before step {step}, where it was to be signalled")
        time.sleep(0.02)
    proc.send_signal(sig)
