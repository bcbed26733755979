"""The training CLI and loop: config errors, an MNTP run, exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, WIKITEXT
from hf_oracle import tiny_model_with_tokenizer
from llm2vec_jax.train.config import TrainConfigError, load_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("train")
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


def train_losses(out) -> dict[int, float]:
    losses = {}
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["split"] == "train":
                losses.setdefault(record["step"], []).append(record["loss"])
    return losses


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(TrainConfigError, match=r"unknown config key 'run.max_step'; did you mean 'max_steps'\?"):
        load_config(None, ["run.max_step=5"])
    with pytest.raises(TrainConfigError, match=r"run.global_batch_size: expected int, got 'eight'"):
        load_config(None, ["run.global_batch_size=eight"])
    with pytest.raises(TrainConfigError, match="run.stage='pretrain'; choose one of"):
        load_config(None, ["run.stage=pretrain"])
    with pytest.raises(TrainConfigError, match="config file 'nope.yaml' does not exist"):
        load_config("nope.yaml")


def test_unreachable_hub_dataset_is_one_line(tiny_run):
    """Offline with no cache (conftest), a named dataset stops the CLI with one line, exit 2."""
    root, model, corpus = tiny_run
    done = subprocess.run(cli(root, model, corpus, root / "offline", "--set", "data.kind=auto",
                              "--set", "data.path=hf:Salesforce/wikitext",
                              "--set", "data.config=wikitext-103-raw-v1"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("data error: hub dataset hf:Salesforce/wikitext is not in the "
                           "datasets cache"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_changed_settings_lists_every_differing_leaf():
    from llm2vec_jax.train.checkpointing import changed_settings
    before = {"run": {"max_steps": 10, "seed": 0}, "model": {"path": "a"}, "gone": 1}
    after = {"run": {"max_steps": 20, "seed": 0}, "model": {"path": "a"}, "new": {"x": 2}}
    assert changed_settings(before, after) == ["gone: 1 -> None", "new: None -> {'x': 2}",
                                               "run.max_steps: 10 -> 20"]
    assert changed_settings(after, after) == []


def test_paper_configs_parse():
    configs = os.path.join(REPO, "configs", "mntp")
    for name in sorted(os.listdir(configs)):
        config = load_config(os.path.join(configs, name))
        assert config.run.stage == "mntp"
    mistral = load_config(os.path.join(configs, "mistral-7b.yaml"))
    assert mistral.data.all_mask and mistral.data.mlm_probability == 0.8


def test_mntp_run_exports_adapter_and_resumes_exactly(tiny_run):
    root, model, corpus = tiny_run
    straight = root / "straight"
    done = subprocess.run(cli(root, model, corpus, straight), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference = train_losses(straight)
    assert sorted(reference) == list(range(1, 11))
    assert all(len(v) == 1 for v in reference.values())
    assert (straight / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((straight / "adapter" / "llm2vec_config.json").read_text())["pooling_mode"] == "mean"
    assert any('"split": "eval"' in line for line in open(straight / "metrics.jsonl"))

    # Kill -9 in the middle of the run, then run the same command again.
    killed = root / "killed"
    proc = subprocess.Popen(cli(root, model, corpus, killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:
        if (killed / "metrics.jsonl").exists() and max(train_losses(killed), default=0) >= 5:
            break
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = max(train_losses(killed))
    assert before < 10
    resumed = subprocess.run(cli(root, model, corpus, killed), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stderr
    losses = train_losses(killed)
    # Steps after the last complete checkpoint ran twice; every run of every step must
    # equal the uninterrupted run bit for bit.
    for step, values in losses.items():
        assert values == reference[step] * len(values), step
    assert max(losses) == 10
    assert "differ from the run" not in resumed.stderr

    # Continuing a finished run with changed settings says what changed.
    longer = subprocess.run(cli(root, model, corpus, straight, "--set", "run.max_steps=11",
                                "--set", "optimizer.learning_rate=2e-3"),
                            capture_output=True, text=True, timeout=600)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "differ from the run" in longer.stderr
    assert "optimizer.learning_rate: 0.001 -> 0.002" in longer.stderr
    assert "run.max_steps: 10 -> 11" in longer.stderr
