"""The commands' persistent XLA compile cache (``llm2vec_jax.compile_cache``): where it lives,
how it is switched off, and that a resumed training run really loads its train step from it
instead of compiling it again (also the log ``bench/compile_cache.py`` reads)."""

import os
import signal
import subprocess
import sys

from conftest import REPO
from tiny_runs import cli, make_tiny_run, signal_at_step

from llm2vec_jax.compile_cache import (CACHE_CHOICE, JAX_OWN, chosen_dir, default_dir,
                                       host_cpu_fingerprint)

sys.path.insert(0, str(REPO / "bench"))
import compile_cache as bench  # noqa: E402

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
cpu MHz\t\t: 2450.000
flags\t\t: fpu sse2 avx avx2 fma
processor\t: 1
model name\t: AMD EPYC 7B13
cpu MHz\t\t: 2449.998
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_the_fingerprint_names_the_cpu_model_and_its_instruction_sets_only():
    same = host_cpu_fingerprint(ZEN3)
    assert same == host_cpu_fingerprint(ZEN3.replace("2450.000", "3500.000"))  # clock: same code
    assert same == host_cpu_fingerprint(ZEN3.replace("avx avx2", "avx2 avx"))  # order of flags
    assert same != host_cpu_fingerprint(ZEN3.replace("avx2 fma", "avx2 avx512f fma"))
    assert same != host_cpu_fingerprint(ZEN3.replace("EPYC 7B13", "EPYC 9B14"))


def test_the_directory_follows_the_users_choice(tmp_path):
    home = {"XDG_CACHE_HOME": str(tmp_path)}
    assert chosen_dir(home) == str(tmp_path / "llm2vec-jax" / "xla" / host_cpu_fingerprint())
    assert chosen_dir(home) == str(default_dir(home))
    assert chosen_dir({**home, CACHE_CHOICE: str(tmp_path / "mine")}) == str(tmp_path / "mine")
    assert chosen_dir({**home, CACHE_CHOICE: "0"}) is None
    # JAX's own variable configures JAX itself; the commands leave it alone.
    assert chosen_dir({**home, JAX_OWN: str(tmp_path / "jax"), CACHE_CHOICE: "x"}) is None


def test_a_resumed_run_loads_its_train_step_from_the_cache(tmp_path, tokenizer_dir):
    root, model, corpus = make_tiny_run(tmp_path, tokenizer_dir)
    cache, out = tmp_path / "xla", tmp_path / "out"
    environ = {k: v for k, v in os.environ.items() if k != JAX_OWN}  # the suite sets its own
    environ.update({CACHE_CHOICE: str(cache), "JAX_LOG_COMPILES": "1",
                    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})  # tiny programs too
    hit = "Persistent compilation cache hit for 'jit_step'"

    # Killed after step 5 of 10 (checkpoints every 2 steps), as a preempted run is.
    log = tmp_path / "first.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen(cli(root, model, corpus, out), env=environ,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        signal_at_step(proc, out, 5, signal.SIGKILL)
        proc.wait()
    first = log.read_text()
    assert "Finished XLA compilation of jit(step)" in first and hit not in first
    written = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit_step") for name in written), written
    # (A program compiled twice within one run may hit already: only jit_step must not.)
    first_log = bench.compile_log(first)
    assert first_log["step_programs"] >= 1, first_log
    assert first_log["cache_hits"] == first.count("Persistent compilation cache hit"), first_log

    def train(out, **extra):
        done = subprocess.run(cli(root, model, corpus, out), env={**environ, **extra},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    resumed = train(out)
    assert "resumed from step" in resumed and hit in resumed
    resumed_log = bench.compile_log(resumed)
    assert resumed_log["step_programs"] == resumed.count(hit) >= 1, resumed_log
    assert resumed_log["cache_hits"] >= resumed_log["step_programs"], resumed_log

    uncached = train(tmp_path / "uncached", **{CACHE_CHOICE: "0"})
    assert "Finished XLA compilation of jit(step)" in uncached and "cache hit" not in uncached
