"""Training telemetry: TensorBoard event files read back with TensorBoard's own reader, a
jax.profiler trace of chosen steps, Weights & Biases calls, and a checkpoint saved on
SIGTERM (the preemption notice) from which a real training process resumes exactly."""

import json
import signal
import subprocess
import sys
import types

import pytest

from tiny_runs import cli, make_tiny_run, run_straight, signal_at_step, train_losses


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer_dir):
    return make_tiny_run(tmp_path_factory.mktemp("telemetry"), tokenizer_dir)


def test_tensorboard_events_and_profile_trace(tiny_run):
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    root, model, corpus = tiny_run
    out = root / "telemetry"
    done = subprocess.run(cli(root, model, corpus, out, "--set", "run.max_steps=4",
                              "--set", "run.tensorboard=true", "--set", "run.profile_steps=[2, 3]"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    events = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/grad_norm", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    logged = {(r["step"], r["loss"]) for r in map(json.loads, open(out / "metrics.jsonl"))
              if r["split"] == "train"}
    read = {(e.step, e.value) for e in events.Scalars("train/loss")}
    assert sorted(read) == pytest.approx(sorted(logged), rel=1e-6)  # float32 in the events
    assert [s for s, _ in sorted(read)] == [1, 2, 3, 4]
    traces = list((out / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_wandb_gets_the_metrics_when_enabled(tmp_path, monkeypatch):
    from llm2vec_jax.train.metrics import MetricsWriter

    calls = []

    class Run:
        def log(self, data, step):
            calls.append(("log", data, step))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    writer = MetricsWriter(str(tmp_path), False, wandb=True, config={"run": {"max_steps": 3}})
    writer.write(2, "train", {"loss": 1.5})
    writer.close()
    assert calls == [("init", {"project": "llm2vec-jax", "dir": str(tmp_path),
                               "config": {"run": {"max_steps": 3}}}),
                     ("log", {"train/loss": 1.5}, 2), ("finish",)]
    # Not installed: a warning, and the JSONL still written.
    monkeypatch.setitem(sys.modules, "wandb", None)
    writer = MetricsWriter(str(tmp_path / "b"), False, wandb=True)
    writer.write(1, "train", {"loss": 2.0})
    writer.close()
    assert json.loads((tmp_path / "b" / "metrics.jsonl").read_text())["loss"] == 2.0


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_exactly(tiny_run):
    root, model, corpus = tiny_run
    reference = train_losses(run_straight(tiny_run))
    out = root / "preempted"
    # No scheduled checkpoint before the end, so only the SIGTERM save can be resumed from;
    # an eval every step slows the run so the signal lands mid-run.
    args = cli(root, model, corpus, out, "--set", "run.save_every=100",
               "--set", "run.eval_every=1")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    signal_at_step(proc, out, 2, signal.SIGTERM)
    stderr = proc.communicate(timeout=600)[1]
    assert proc.returncode == 143, stderr[-3000:]
    stopped = max(train_losses(out))
    assert stopped < 10, "the run finished before the signal arrived"
    assert f"preempted: stopped by SIGTERM after step {stopped}, saved as a checkpoint" in stderr
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()
                  if p.name.isdigit()) == [stopped]
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {stopped}" in resumed.stderr
    losses = train_losses(out)
    assert all(len(v) == 1 for v in losses.values())  # no step ran twice
    assert losses == reference


def test_profile_steps_config():
    from llm2vec_jax.train.config import TrainConfigError, load_config

    assert load_config(None, ["run.profile_steps=[5, 8]"]).run.profile_steps == (5, 8)
    for bad in ("[3, 2]", "[0, 2]", "[1, 2, 3]", "[a, 2]"):
        with pytest.raises(TrainConfigError, match="must be \\[start, stop\\]"):
            load_config(None, [f"run.profile_steps={bad}"])
