"""The training CLI and loop: config errors, an MNTP run, exact resume after SIGKILL (also
during a checkpoint write), and resume's rules: unreadable checkpoints set aside, checkpoints
of another stage / model / LoRA layout refused, changed data warned about; bad inputs as one
line and exit 2."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.numpy

from conftest import REPO
from hf_oracle import tiny_model_with_tokenizer
from tiny_runs import (cli, make_tiny_run, run_in_one_process, run_straight, signal_at_step,
                       train_losses)
from llm2vec_jax.train.config import TrainConfigError, load_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer_dir):
    return make_tiny_run(tmp_path_factory.mktemp("train"), tokenizer_dir)


@pytest.fixture(scope="module")
def straight(tiny_run):
    """The reference run; tests that write to a run work on a copy of it."""
    return run_straight(tiny_run)


def copy_run(straight, name):
    copy = straight.parent / name
    shutil.copytree(straight, copy)
    return copy


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(TrainConfigError, match=r"unknown config key 'run.max_step'; did you mean 'max_steps'\?"):
        load_config(None, ["run.max_step=5"])
    with pytest.raises(TrainConfigError, match=r"run.global_batch_size: expected int, got 'eight'"):
        load_config(None, ["run.global_batch_size=eight"])
    with pytest.raises(TrainConfigError, match="run.stage='pretrain'; choose one of"):
        load_config(None, ["run.stage=pretrain"])
    with pytest.raises(TrainConfigError, match="config file 'nope.yaml' does not exist"):
        load_config("nope.yaml")


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


def test_mntp_run_exports_adapter_and_resumes_exactly(tiny_run, straight):
    root, model, corpus = tiny_run
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
    signal_at_step(proc, killed, 5, signal.SIGKILL)
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
    longer = subprocess.run(cli(root, model, corpus, copy_run(straight, "longer"),
                                "--set", "run.max_steps=11",
                                "--set", "optimizer.learning_rate=2e-3"),
                            capture_output=True, text=True, timeout=600)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "differ from the run" in longer.stderr
    assert "optimizer.learning_rate: 0.001 -> 0.002" in longer.stderr
    assert "run.max_steps: 10 -> 11" in longer.stderr


def files_of(directory) -> dict:
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def truncate_largest_file(checkpoint) -> None:
    """What a copy cut short or a full disk leaves: the biggest array file of a checkpoint
    cut to 100 bytes."""
    largest = max((p for p in checkpoint.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    os.truncate(largest, 100)


def assert_repeats_reference(run, straight) -> None:
    """Every logged loss of ``run`` (steps redone after a resume included) equals the
    uninterrupted run's at that step, bit for bit, up to its last step."""
    reference, losses = train_losses(straight), train_losses(run)
    for step, values in losses.items():
        assert values == reference[step] * len(values), step
    assert max(losses) == max(reference)


def test_resume_sets_unreadable_checkpoints_aside(tiny_run, straight):
    """The newest checkpoint half-written (no commit marker, an item missing) and the one
    before it truncated: each gets one warning and is moved aside intact; training resumes
    from the newest readable one and repeats the uninterrupted run exactly."""
    root, model, corpus = tiny_run
    run = copy_run(straight, "unreadable")
    checkpoints = run / "checkpoints"
    for name in ("commit_success.txt", "_CHECKPOINT_METADATA"):
        (checkpoints / "10" / name).unlink()
    shutil.rmtree(checkpoints / "10" / "data")
    truncate_largest_file(checkpoints / "8")
    written = {step: files_of(checkpoints / str(step)) for step in (8, 10)}
    done = subprocess.run(cli(root, model, corpus, run), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if "cannot be read" in line]
    assert len(warnings) == 2, done.stderr[-3000:]
    for step, warning in zip((10, 8), warnings):
        assert warning.startswith(f"WARNING llm2vec_jax.train: checkpoint {step} cannot be read (")
        assert warning.endswith(f"moved aside to {checkpoints / f'unreadable-{step}'}, trying "
                                "the next older one")
    assert "is not valid for value of size 100" in warnings[1]  # the truncation, named
    assert "resumed from step 6" in done.stderr
    for step, files in written.items():
        assert files_of(checkpoints / f"unreadable-{step}") == files
    assert_repeats_reference(run, straight)
    assert len(train_losses(run)[7]) == 2  # steps 7 to 10 ran again


def test_no_readable_checkpoint_is_one_line_and_keeps_them_all(tiny_run, straight):
    root, model, corpus = tiny_run
    run = copy_run(straight, "all-unreadable")
    checkpoints = run / "checkpoints"
    steps = sorted(int(p.name) for p in checkpoints.iterdir())
    assert steps == [2, 4, 6, 8, 10]
    for step in steps:
        truncate_largest_file(checkpoints / str(step))
    written = {step: files_of(checkpoints / str(step)) for step in steps}
    adapter = files_of(run / "adapter")
    done = subprocess.run(cli(root, model, corpus, run), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"resume error: no readable checkpoint in {checkpoints} (each was moved aside as "
        "unreadable-<step>); start over with run.resume: none or a new run.output_dir")
    assert sum("cannot be read" in line for line in done.stderr.splitlines()) == len(steps)
    for step, files in written.items():
        assert files_of(checkpoints / f"unreadable-{step}") == files
    assert files_of(run / "adapter") == adapter


def _other_runs(root, model, tokenizer_dir):
    """change -> (extra CLI arguments, what the refusal names) for a resume of ``straight``'s
    checkpoints by a run of another stage, base model or LoRA layout; makes the other model."""
    other = root / "other-model"
    if not other.exists():
        tiny_model_with_tokenizer(other, tokenizer_dir, "llama_tied")
    return {
        "stage": (["--stage", "simcse"], "another stage (stage: 'mntp' -> 'simcse')"),
        "model": (["--set", f"model.path={other}"],
                  f"another base model (base model.path: '{model}' -> '{other}'; base "
                  "model.weights.model.safetensors.sha256: "),
        "lora": (["--set", "lora.r=4"], "another lora layout (lora layout.r: 16 -> 4)"),
        # A chosen step is checked too, before the later checkpoints are moved aside.
        "stage, a chosen step": (["--stage", "simcse", "--set", "run.resume=4"],
                                 "another stage (stage: 'mntp' -> 'simcse')"),
        # Refused before the weights are read: this model's file is truncated.
        "stage, a truncated model": (["--stage", "simcse", "--set",
                                      f"model.path={root / 'bad-inputs' / 'truncated-model'}"],
                                     "another stage (stage: 'mntp' -> 'simcse')"),
    }


@pytest.fixture(scope="module")
def refusals(tiny_run, straight, tokenizer_dir):
    """Every command that must stop before training (the bad inputs, writing to bad-run, and
    the resumes of another run's checkpoints, naming ``straight``), run in one interpreter
    (tests/cli_cases.py): (name -> {returncode, stderr}, the files of ``straight`` before)."""
    root, model, corpus = tiny_run
    commands = {case: cli(root, model, corpus, root / "bad-run", *extra)
                for case, (extra, _) in _bad_inputs(root, model).items()}
    commands.update({f"resume, {change}": cli(root, model, corpus, straight, *extra)
                     for change, (extra, _) in _other_runs(root, model, tokenizer_dir).items()})
    # Root reads any file; without the DAC-override capabilities it obeys permissions
    # ("unreadable data").
    prefix = (["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
              if os.geteuid() == 0 else [])
    before = files_of(straight)
    return run_in_one_process(commands, root, prefix), before


@pytest.mark.parametrize("change", ["stage", "model", "lora", "stage, a chosen step",
                                    "stage, a truncated model"])
def test_resume_of_another_run_is_refused(tiny_run, straight, tokenizer_dir, refusals, change):
    """Checkpoints of another stage, base model or LoRA layout: one line naming the
    difference and the fix, exit 2, nothing written; before the weights are read."""
    root, model, _ = tiny_run
    results, before = refusals
    done = results[f"resume, {change}"]
    expected = _other_runs(root, model, tokenizer_dir)[change][1]
    assert done["returncode"] == 2, done["stderr"][-3000:]
    assert "Traceback" not in done["stderr"]
    last = done["stderr"].strip().splitlines()[-1]
    assert last.startswith(f"resume error: the checkpoints in {straight / 'checkpoints'} were "
                           f"written with {expected}"), last
    assert last.endswith("Use a new run.output_dir, or run.resume: none to start over here "
                         "(the old checkpoints are kept aside)")
    assert files_of(straight) == before


def test_resume_on_changed_data_warns_naming_the_file(tiny_run, straight):
    root, model, corpus = tiny_run
    run = copy_run(straight, "changed-data")
    original = corpus.read_bytes()
    try:
        corpus.write_bytes(original + b"one more line\n")
        done = subprocess.run(cli(root, model, corpus, run), capture_output=True, text=True,
                              timeout=600)
    finally:
        corpus.write_bytes(original)
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "changed since" in line]
    prefix = "WARNING llm2vec_jax.train: data changed since the checkpoint was written ("
    suffix = "): the saved data position no longer points at the same examples"
    assert [w.startswith(prefix) and w.endswith(suffix) for w in warnings] == [True, True]
    assert f"({corpus}.sha256: " in warnings[0]
    assert f"({corpus}.size: {len(original)} -> {len(original) + 14})" in warnings[1]


def test_kill_during_a_checkpoint_write_resumes_exactly(tiny_run, straight):
    """SIGKILL while orbax writes a checkpoint (its temporary directory is there): the
    resumed run repeats the uninterrupted one and exports the same adapter, bit for bit."""
    root, model, corpus = tiny_run
    run = root / "killed-while-saving"
    checkpoints = run / "checkpoints"
    proc = subprocess.Popen(cli(root, model, corpus, run), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline, writing = time.time() + 600, []
    while not writing and time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail("the run finished before a checkpoint write could be interrupted")
        names = os.listdir(checkpoints) if checkpoints.is_dir() else []
        # A write takes ~100 ms on this model; polling every millisecond lands inside one.
        writing = [n for n in names if ".orbax-checkpoint-tmp" in n and int(n.split(".")[0]) >= 4]
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (checkpoints / writing[0]).is_dir()  # killed before the write was committed
    resumed = subprocess.run(cli(root, model, corpus, run), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert_repeats_reference(run, straight)
    exported = safetensors.numpy.load_file(run / "adapter" / "adapter_model.safetensors")
    reference = safetensors.numpy.load_file(straight / "adapter" / "adapter_model.safetensors")
    assert exported.keys() == reference.keys()
    for name, value in reference.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_resume_from_a_chosen_step_or_from_scratch(tiny_run, straight):
    """run.resume: <step> resumes there (the later checkpoints moved aside intact);
    run.resume: none starts over (every earlier checkpoint moved aside intact)."""
    root, model, corpus = tiny_run
    run = copy_run(straight, "resume-4")
    checkpoints = run / "checkpoints"
    later = {step: files_of(checkpoints / str(step)) for step in (6, 8, 10)}
    done = subprocess.run(cli(root, model, corpus, run, "--set", "run.resume=4"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step 4" in done.stderr
    for step, files in later.items():
        assert files_of(checkpoints / f"superseded-{step}") == files
    assert_repeats_reference(run, straight)
    assert len(train_losses(run)[5]) == 2

    run = copy_run(straight, "resume-none")
    before = files_of(run / "checkpoints")
    done = subprocess.run(cli(root, model, corpus, run, "--set", "run.resume=none",
                              "--set", "run.max_steps=2"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" not in done.stderr
    [aside] = run.glob("checkpoints-before-*")
    assert files_of(aside) == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["2"]
    reference = train_losses(straight)
    assert train_losses(run)[1] == reference[1] * 2  # the first step, run again from scratch


def _bad_inputs(root, model):
    """name -> (extra CLI arguments, the one line expected on stderr); makes the files."""
    bad = root / "bad-inputs"
    if not bad.exists():
        bad.mkdir()
        truncated = shutil.copytree(model, bad / "truncated-model")
        os.truncate(truncated / "model.safetensors", 3_000_000)
        no_tokenizer = shutil.copytree(model, bad / "no-tokenizer")
        for name in os.listdir(no_tokenizer):
            if name.startswith("tokenizer"):
                os.remove(no_tokenizer / name)
        (bad / "latin1.txt").write_bytes("first line\ncaf\u00e9 au lait\n".encode("latin1"))
        (bad / "blank.txt").write_text("\n   \n\n", encoding="utf-8")
        (bad / "a-file").write_text("", encoding="utf-8")
        (bad / "no-text").mkdir()
        (bad / "no-text" / "notes.md").write_text("# not a .txt file\n", encoding="utf-8")
        (bad / "no-positive.jsonl").write_text(
            '{"query": "q1", "positive": "p1", "dataset": "qa"}\n{"query": "q2", "dataset": "qa"}\n',
            encoding="utf-8")
        (bad / "qa.jsonl").write_text('{"query": "q1", "positive": "p1", "dataset": "qa"}\n',
                                      encoding="utf-8")
        (bad / "instructions.yaml").write_text('nli: "Retrieve a hypothesis"\n', encoding="utf-8")
        (bad / "unreadable.txt").write_text("text\n", encoding="utf-8")
        os.chmod(bad / "unreadable.txt", 0)
    size = os.path.getsize(model + "/model.safetensors")

    def data(path):
        return ["--set", f"data.path={path}"]

    def supervised(path):
        return ["--stage", "supervised", "--set", "data.kind=auto", *data(path),
                "--set", f"contrastive.instructions={bad / 'instructions.yaml'}"]

    return {
        "truncated model": (["--set", f"model.path={bad / 'truncated-model'}"],
                            f"model error: cannot read safetensors file "
                            f"'{bad / 'truncated-model' / 'model.safetensors'}' (corrupt or "
                            f"truncated?): '{bad / 'truncated-model' / 'model.safetensors'}' is "
                            f"truncated: its header describes {size} bytes, the file has "
                            "3000000; download (or copy) it again"),
        "no tokenizer": (["--set", f"model.path={bad / 'no-tokenizer'}"],
                         f"file error: no tokenizer in {bad / 'no-tokenizer'}: none of "
                         "tokenizer.json, tokenizer.model, vocab.json is there; copy the "
                         "tokenizer files of the model it came from (or save_pretrained its "
                         "tokenizer) into it"),
        "missing data": (data(bad / "nope.txt"), f"file error: text file not found: {bad / 'nope.txt'}"),
        "blank data": (data(bad / "blank.txt"), f"data error: no text found in {bad / 'blank.txt'}"),
        "unreadable data": (data(bad / "unreadable.txt"),
                            f"file error: [Errno 13] Permission denied: '{bad / 'unreadable.txt'}'"),
        "record without positive": (supervised(bad / "no-positive.jsonl"),
                                    f"data error: {bad / 'no-positive.jsonl'}:2: record needs a "
                                    "string 'positive'"),
        "dataset without instruction": (supervised(bad / "qa.jsonl"),
                                        "data error: no instruction for dataset(s) ['qa']; known: "
                                        "['nli'] (add them to the instruction table)"),
        "not utf-8": (data(bad / "latin1.txt"),
                      f"data error: {bad / 'latin1.txt'} is not UTF-8 at line 2 (byte 0xe9 at "
                      f"column 4); convert it, e.g. iconv -f latin1 -t utf-8 "
                      f"{bad / 'latin1.txt'} > {bad / 'latin1.utf8.txt'}"),
        "no text files": (["--set", "data.kind=dir", *data(bad / "no-text")],
                          f"data error: no text found in {bad / 'no-text'}: no *.txt files"),
        "chunk not dividing the batch": (["--stage", "simcse", "--set",
                                          "contrastive.grad_cache_chunk=3"],
                                         "config error: contrastive.grad_cache_chunk=3 must divide "
                                         "run.global_batch_size=4"),
        "too many devices": (["--set", "mesh.data=64"],
                             "mesh error: mesh data=64 fsdp=1 tensor=1 needs 64 devices, but 1 "
                             "are available"),
        "output_dir a file": (["--set", f"run.output_dir={bad / 'a-file'}"],
                              f"config error: run.output_dir='{bad / 'a-file'}' is an existing "
                              "file; name a directory (it is created if missing)"),
        # The data is read before the weights: this model's file is truncated.
        "missing data, a truncated model": (["--set", f"model.path={bad / 'truncated-model'}",
                                             *data(bad / "nope.txt")],
                                            f"file error: text file not found: {bad / 'nope.txt'}"),
        "sequence too long": (["--set", "data.max_seq_length=4096"],
                              "config error: data.max_seq_length=4096 exceeds the model's "
                              f"max_position_embeddings=256 ({model}/config.json); use at most 256"),
        "unreachable hub dataset": (["--set", "data.kind=auto", "--set",
                                     "data.path=hf:Salesforce/wikitext", "--set",
                                     "data.config=wikitext-103-raw-v1"], None),
    }


BAD_INPUTS = ["truncated model", "no tokenizer", "missing data", "blank data", "unreadable data",
              "not utf-8", "no text files", "record without positive",
              "dataset without instruction", "chunk not dividing the batch", "too many devices",
              "output_dir a file", "sequence too long", "missing data, a truncated model"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2(tiny_run, refusals, case):
    root, model, _ = tiny_run
    done = refusals[0][case]
    assert done["returncode"] == 2, done["stderr"][-3000:]
    assert "Traceback" not in done["stderr"]
    assert done["stderr"].strip().splitlines()[-1] == _bad_inputs(root, model)[case][1]
    assert not (root / "bad-run" / "checkpoints").exists()


def test_unreachable_hub_dataset_is_one_line(refusals):
    """Offline with no cache (conftest), a named dataset stops the CLI with one line, exit 2."""
    done = refusals[0]["unreachable hub dataset"]
    assert done["returncode"] == 2, done["stderr"][-2000:]
    last = done["stderr"].strip().splitlines()[-1]
    assert last.startswith("data error: hub dataset hf:Salesforce/wikitext is not in the "
                           "datasets cache"), done["stderr"][-2000:]
    assert "Traceback" not in done["stderr"]


def test_debug_keeps_the_traceback(tiny_run):
    root, model, corpus = tiny_run
    extra, expected = _bad_inputs(root, model)["too many devices"]
    done = subprocess.run(cli(root, model, corpus, root / "bad-run", *extra, "--debug"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "llm2vec_jax.sharding.ShardingError: " + expected.removeprefix("mesh error: "))


def test_a_failed_checkpoint_write_exits_2_and_keeps_the_earlier_ones(tiny_run, straight):
    """A write that fails (here: files capped at 50 kB, as a full disk would cut them) stops
    the run with exit 2 and a line saying so; every earlier checkpoint stays byte for byte."""
    import resource
    root, model, corpus = tiny_run
    run = copy_run(straight, "write-fails")
    checkpoints = run / "checkpoints"
    before = {p.name: files_of(p) for p in checkpoints.iterdir()}
    adapter = files_of(run / "adapter")

    def cap_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    done = subprocess.run(cli(root, model, corpus, run, "--set", "run.max_steps=12"),
                          capture_output=True, text=True, timeout=600, preexec_fn=cap_file_size)
    assert done.returncode == 2, done.stderr[-3000:]
    # orbax's writer threads log the failure too, as one line each (their tracebacks hidden:
    # the same exception is raised again in the main thread and reported there); tensorstore's
    # late results for orbax's closed loop, and at exit asyncio's and the warnings module's
    # reports of the writer tasks abandoned, print nothing.
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "never retrieved" not in done.stderr and "never awaited" not in done.stderr
    [line] = [x for x in done.stderr.splitlines() if x.startswith("checkpoint error: ")]
    assert done.stderr.strip().splitlines()[-1] == line
    assert line.startswith(f"checkpoint error: writing a checkpoint in {checkpoints} failed (")
    assert line.endswith("); the earlier checkpoints [2, 4, 6, 8, 10] are intact: free space (or "
                         "fix the directory) and run the same command again to resume")
    assert {p.name: files_of(p) for p in checkpoints.iterdir() if p.name in before} == before
    assert files_of(run / "adapter") == adapter


def test_only_the_echoes_of_a_write_failure_are_hidden():
    """What hide_write_failure_tracebacks hides: the traceback (not the line) of log records
    about orbax's failed writes, asyncio's 'never retrieved' records once the failure has
    been reported, and tensorstore's unraisable 'Event loop is closed' reports (a
    call_soon_threadsafe that no Python frame called, on any thread); a bug's traceback,
    which starts in the program's own frames, stays."""
    import asyncio
    import logging
    import threading
    import types
    from llm2vec_jax.train.checkpointing import _late_write_callback, _WriteFailureEchoes

    def closed_loop_error(called_from_python: bool):
        loop = asyncio.new_event_loop()
        loop.close()
        try:
            loop.call_soon_threadsafe(print)
        except RuntimeError as e:
            # tensorstore's C++ side calls call_soon_threadsafe directly and hands the error
            # to sys.unraisablehook: its traceback starts there, without this Python frame.
            tb = e.__traceback__ if called_from_python else e.__traceback__.tb_next
            return types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=tb,
                                         err_msg=None, object=None)

    in_thread = []
    thread = threading.Thread(target=lambda: in_thread.append(
        _late_write_callback(closed_loop_error(called_from_python=False))))
    thread.start()
    thread.join()
    assert in_thread == [True]
    assert _late_write_callback(closed_loop_error(called_from_python=False))  # main thread too
    assert not _late_write_callback(closed_loop_error(called_from_python=True))
    other = RuntimeError("Event loop is closed")  # not from call_soon_threadsafe
    assert not _late_write_callback(types.SimpleNamespace(
        exc_type=RuntimeError, exc_value=other, exc_traceback=None, err_msg=None, object=None))

    def record(logger, pathname, raised_in, message="write failed"):
        try:
            exec(compile("raise ValueError('disk full')", raised_in, "exec"))
        except ValueError:
            return logging.LogRecord(logger, logging.ERROR, pathname, 1, message, None,
                                     sys.exc_info())

    in_orbax = os.path.join("site-packages", "orbax", "checkpoint", "serialization.py")
    in_ours = os.path.join("llm2vec_jax", "train", "loop.py")
    in_asyncio = os.path.join("lib", "asyncio", "base_events.py")
    echoes = _WriteFailureEchoes()
    orbax = record("absl", in_orbax, in_orbax)
    assert echoes.filter(orbax) and orbax.exc_info is None
    assert orbax.getMessage() == "write failed"
    task = record("asyncio", in_asyncio, in_orbax, "Task exception was never retrieved")
    assert echoes.filter(task) and task.exc_info is None  # before the report: one line
    ours = record("absl", in_ours, in_ours)
    assert echoes.filter(ours) and ours.exc_info is not None
    asyncio_ours = record("asyncio", in_asyncio, in_ours)
    assert echoes.filter(asyncio_ours) and asyncio_ours.exc_info is not None
    echoes.reported = True
    future = record("asyncio", in_asyncio, in_ours, "Future exception was never retrieved")
    assert not echoes.filter(future)
    assert echoes.filter(record("asyncio", in_asyncio, in_ours, "Executing <Task> took 2 s"))
