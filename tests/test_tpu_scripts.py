"""tpu_scripts/*.sh: dry runs print the gcloud commands a newcomer would otherwise type, for a
single-host v4-8 and a 4-host v5e-16; bad arguments fail with a usage message."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"
LOC = ["--name", "l2v-test", "--zone", "us-central2-b", "--project", "my-proj"]
WHERE = "--zone=us-central2-b --project=my-proj"


@pytest.fixture(scope="module", autouse=True)
def fake_gcloud(tmp_path_factory):
    # A dry run must never call gcloud: this one fails loudly if it is reached.
    bin_dir = tmp_path_factory.mktemp("bin")
    fake = bin_dir / "gcloud"
    fake.write_text("#!/bin/sh\necho 'gcloud was called' >&2\nexit 99\n")
    fake.chmod(0o755)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    yield
    os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True,
                          text=True, timeout=60)


def commands(result: subprocess.CompletedProcess) -> list[str]:
    """The '+ command' lines (a multi-line --command stays attached to its line)."""
    assert result.returncode == 0, result.stderr
    return ["+" + c for c in re.split(r"(?m)^\+", result.stdout)[1:]]


def gcloud(result, prefix: str) -> list[str]:
    return [c for c in commands(result) if c.startswith("+ gcloud " + prefix)]


@pytest.mark.parametrize("accelerator,hosts,runtime", [
    ("v4-8", 1, "tpu-ubuntu2204-base"),
    ("v5litepod-16", 4, "v2-alpha-tpuv5-lite"),
])
def test_create_setup_launch(accelerator, hosts, runtime):
    created = run("create.sh", *LOC, "--accelerator-type", accelerator, "--dry-run")
    assert f"{accelerator}: {hosts} host(s)" in created.stdout
    assert gcloud(created, "") == [
        f"+ gcloud compute tpus tpu-vm create l2v-test {WHERE} "
        f"--accelerator-type={accelerator} --version={runtime}\n"]

    setup = run("setup.sh", *LOC, "--dry-run")
    scp, = gcloud(setup, "compute tpus tpu-vm scp")
    assert scp.startswith("+ gcloud compute tpus tpu-vm scp ")
    assert f"l2v-test:llm2vec-jax-src.tgz {WHERE} --worker=all" in scp
    ssh, = gcloud(setup, "compute tpus tpu-vm ssh")
    assert ssh.startswith(f"+ gcloud compute tpus tpu-vm ssh l2v-test {WHERE} --worker=all '--command=")
    assert "tar -xzf llm2vec-jax-src.tgz -C llm2vec-jax" in ssh
    assert "venv/bin/python -m pip install -r requirements.txt '\\''jax[tpu]'\\''" in ssh
    assert "venv/bin/python -m pip install --no-deps -e ." in ssh

    launch = run("launch.sh", *LOC, "--config", "configs/mntp/llama3-8b.yaml", "--set",
                 "run.max_steps=50", "--output-dir", "gs://my-bucket/llama3-mntp", "--dry-run")
    ssh, = gcloud(launch, "")
    assert ssh.startswith(f"+ gcloud compute tpus tpu-vm ssh l2v-test {WHERE} --worker=all ")
    assert "gcsfuse --implicit-dirs --rename-dir-limit=1000000 my-bucket $HOME/gcs/my-bucket" in ssh
    assert ("setsid nohup $HOME/l2v-venv/bin/python -m llm2vec_jax.train "
            "--config configs/mntp/llama3-8b.yaml --set run.max_steps=50 "
            '--set "run.output_dir=$HOME/gcs/my-bucket/llama3-mntp" '
            "> logs/worker-$W.log 2>&1 < /dev/null &") in ssh
    assert "echo $! > logs/train.pid" in ssh


def test_setup_from_git_repo():
    setup = run("setup.sh", *LOC, "--repo", "https://github.com/me/llm2vec-jax.git",
                "--branch", "main", "--dry-run")
    assert not gcloud(setup, "compute tpus tpu-vm scp")
    ssh, = gcloud(setup, "compute tpus tpu-vm ssh")
    assert "git clone --branch main https://github.com/me/llm2vec-jax.git llm2vec-jax" in ssh
    assert "git -C llm2vec-jax fetch origin main && git -C llm2vec-jax reset --hard FETCH_HEAD" in ssh


def test_queued_spot_and_resume():
    created = run("create.sh", *LOC, "--accelerator-type", "v5litepod-16", "--queued", "--spot",
                  "--dry-run")
    assert gcloud(created, "") == [
        f"+ gcloud compute tpus queued-resources create l2v-test --node-id=l2v-test {WHERE} "
        "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot\n"]

    resumed = run("resume.sh", *LOC, "--accelerator-type", "v5litepod-16", "--queued", "--spot",
                  "--stage", "simcse", "--config", "configs/simcse/llama3-8b.yaml",
                  "--output-dir", "gs://my-bucket/simcse", "--dry-run")
    steps = [" ".join(c.split()[4:6]) for c in gcloud(resumed, "")]
    assert steps == ["queued-resources delete", "queued-resources create",
                     "queued-resources describe",     # --wait: resume needs the TPU up
                     "tpu-vm scp", "tpu-vm ssh",      # setup.sh
                     "tpu-vm ssh"]                    # launch.sh
    assert "--force --quiet" in gcloud(resumed, "")[0]
    assert "--stage simcse" in gcloud(resumed, "")[-1]


def test_stop_and_logs():
    stop, = gcloud(run("stop.sh", *LOC, "--dry-run"), "")
    assert stop.startswith(f"+ gcloud compute tpus tpu-vm ssh l2v-test {WHERE} --worker=all ")
    assert "kill -TERM -- -$pid" in stop
    assert "kill -KILL -- -$pid" in run("stop.sh", *LOC, "--force", "--dry-run").stdout
    logs, = gcloud(run("logs.sh", *LOC, "--worker", "2", "--follow", "--dry-run"), "")
    assert logs == (f"+ gcloud compute tpus tpu-vm ssh l2v-test {WHERE} --worker=2 "
                    "'--command=tail -n 100 -F llm2vec-jax/logs/worker-*.log'\n")


@pytest.mark.parametrize("script,args,message", [
    ("create.sh", ["--zone", "z", "--accelerator-type", "v4-8"], "missing --name"),
    ("create.sh", ["--name", "t", "--accelerator-type", "v4-8"], "missing --zone"),
    ("create.sh", ["--name", "t", "--zone", "z"], "missing --accelerator-type"),
    ("create.sh", ["--name", "t", "--zone", "z", "--accelerator-type", "v9-8"], "expected e.g. v4-8"),
    ("create.sh", ["--name", "t", "--zone"], "--zone needs a value"),
    ("create.sh", ["--name", "Bad_Name", "--zone", "z", "--accelerator-type", "v4-8"], "lowercase"),
    ("create.sh", ["--name", "t", "--zone", "z", "--config", "x.yaml"], "not an option of create.sh"),
    ("setup.sh", ["--name", "t", "--zone", "z", "--bogus"], "unknown argument '--bogus'"),
    ("setup.sh", ["--name", "t", "--zone", "z", "--branch", "main"], "--branch needs --repo"),
    ("launch.sh", ["--name", "t", "--zone", "z"], "missing --output-dir"),
    ("launch.sh", ["--name", "t", "--zone", "z", "--output-dir", "gs://b/x", "--set", "oops"],
     "--set expects key=value"),
    ("launch.sh", ["--name", "t", "--zone", "z", "--output-dir", "gs://bkt/x", "--stage", "dpo"],
     "choose mntp, simcse or supervised"),
    ("logs.sh", ["--name", "t", "--zone", "z", "--worker", "x"], "a worker number or 'all'"),
    ("resume.sh", ["--name", "t", "--zone", "z", "--accelerator-type", "v4-8",
                   "--output-dir", "/tmp/run"], "must be gs://"),
])
def test_bad_arguments(script, args, message):
    result = run(script, *args, "--dry-run")
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "usage: tpu_scripts/" in result.stderr
    assert "+ gcloud" not in result.stdout


def test_help():
    result = run("launch.sh", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: tpu_scripts/launch.sh")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
    result = subprocess.run(["shellcheck", "-x", *sorted(p.name for p in SCRIPTS.glob("*.sh"))],
                            cwd=SCRIPTS, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
