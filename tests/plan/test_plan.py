"""``python -m llm2vec_jax.plan``: the real train step compiled for a fake mesh, no weights.

A tiny Llama-shaped config keeps each compile to seconds; the CLI runs in a subprocess
because the fake device count must be set before jax's backend starts.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from llm2vec_jax import plan
from llm2vec_jax.models.config import ModelConfig
from llm2vec_jax.models.transformer import weight_specs

# vocab and MLP divide by 3 and 8, heads by 8 but kv heads (4) not by 3: tensor=3 must fail
# on a heads axis, not earlier on the vocabulary.
TINY = dict(model_type="llama", vocab_size=2304, hidden_size=512, intermediate_size=1536,
            num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
            hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def run_plan(*args, check=True):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, "-m", "llm2vec_jax.plan", *args],
                          capture_output=True, text=True, env=env, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


COMMON = ["--set", "lora.r=4", "--batch", "8", "--seq", "64"]


@pytest.fixture(scope="module")
def reports(tiny_config):
    return {n: json.loads(run_plan("--model", tiny_config, "--mesh", f"fsdp={n}", "--json",
                                   *COMMON).stdout)
            for n in (1, 8)}


def test_human_table(tiny_config):
    out = run_plan("--model", tiny_config, "--mesh", "fsdp=8", "--device", "tpu-v5e",
                   *COMMON).stdout
    assert "XLA memory per device:" in out
    for field in ("argument", "output", "temp", "generated_code", "total"):
        assert f"  {field}" in out
    assert "(8 devices)" in out and "tpu-v5e" in out and "h100" not in out
    assert "estimate" in out  # the CPU-compile caveat is part of the output


def test_frozen_weights_shard_over_fsdp(reports):
    one, eight = reports[1], reports[8]
    assert eight["config"]["devices"] == 8 and one["config"]["devices"] == 1
    # Every frozen matrix has an "embed" axis (-> fsdp); only the tiny norms are replicated.
    frozen_ratio = one["arguments_per_device"]["frozen"] / eight["arguments_per_device"]["frozen"]
    assert 7.5 < frozen_ratio <= 8.0
    # XLA's own accounting of the compiled step agrees: its per-device arguments shrink
    # almost 8x (the replicated optimizer state and the rng/step keep it a little under).
    xla_ratio = one["memory_per_device"]["argument"] / eight["memory_per_device"]["argument"]
    assert 6.0 < xla_ratio <= 8.0
    # ... and matches the shard sizes computed from the shardings (jit adds the rng key and
    # step counter: a few bytes).
    for report in (one, eight):
        ours = sum(report["arguments_per_device"].values())
        assert abs(report["memory_per_device"]["argument"] - ours) < 1e-3 * ours
    frozen = sum(math.prod(s.shape) for group in weight_specs(ModelConfig.from_hf(TINY)).values()
                 for s in group.values())
    assert one["params"]["frozen"] == frozen
    assert one["arguments_per_device"]["frozen"] == 4 * frozen  # float32, unsharded
    # The state is donated: outputs reuse the argument buffers.
    assert eight["memory_per_device"]["alias"] > 0.9 * eight["memory_per_device"]["output"]
    assert eight["flops_per_step"] == one["flops_per_step"] > 0
    assert eight["chips"]["tpu-v5e"]["step_time_s"] < one["chips"]["tpu-v5e"]["step_time_s"]


def test_impossible_mesh_is_a_clear_error(tiny_config):
    proc = run_plan("--model", tiny_config, "--mesh", "tensor=3", *COMMON, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "heads" in proc.stderr and "does not divide" in proc.stderr


@pytest.mark.parametrize("debug", [False, True])
def test_bad_mesh_is_one_line_and_exit_2(debug):
    """A malformed --mesh fails before anything compiles: one line and exit 2, or with --debug
    the traceback (exit 1)."""
    proc = run_plan("--mesh", "fsdp=x", *(["--debug"] if debug else []), check=False)
    message = ("--mesh 'fsdp=x': expected AXIS=N[,AXIS=N] with AXIS in ('data', 'fsdp', "
               "'tensor') and N >= 1, got 'fsdp=x'")
    if debug:
        assert proc.returncode == 1
        assert "Traceback (most recent call last)" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == ("llm2vec_jax.plan.compile.PlanError: "
                                                        + message)
    else:
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert proc.stderr.strip().splitlines() == ["plan error: " + message]


def test_missing_model_dir_is_one_line_and_exit_2(tmp_path):
    proc = run_plan("--model", tmp_path / "nope", "--mesh", "fsdp=1", *COMMON, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    # The list of built-in architectures in between grows with each preset.
    assert line.startswith(f"plan error: unknown model '{tmp_path / 'nope'}': not a local "
                           "config.json or checkpoint directory, and not one of the built-in "
                           "architectures ['gemma-2-9b', ")
    assert line.endswith("] (or their hub ids); pass --model PATH")


def test_builtin_architectures():
    sizes = {"meta-llama/Llama-2-7b-chat-hf": 6_738_415_616,
             "mistralai/Mistral-7B-Instruct-v0.2": 7_241_732_096,
             "meta-llama/Meta-Llama-3-8B-Instruct": 8_030_261_248,
             "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
             "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512,
             "Qwen/Qwen3-8B": 8_190_735_360,
             "google/gemma-2-9b-it": 9_241_705_984}
    for name, expected in sizes.items():
        config = ModelConfig.from_hf(plan.architecture(name))
        n = sum(math.prod(s.shape) for group in weight_specs(config).values()
                for s in group.values())
        assert n == expected, name
    assert ModelConfig.from_hf(plan.architecture("llama3.1-8b")).rope_scaling.rope_type == "llama3"
    assert ModelConfig.from_hf(plan.architecture("princeton-nlp/Sheared-LLaMA-1.3B")).num_layers == 24
    with pytest.raises(plan.PlanError, match="unknown model"):
        plan.architecture("gpt2")


def test_parse_mesh():
    assert plan.parse_mesh("fsdp=8") == {"data": 1, "fsdp": 8, "tensor": 1}
    assert plan.parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(plan.PlanError):
        plan.parse_mesh("fsdp=0")
    with pytest.raises(plan.PlanError):
        plan.parse_mesh("model=2")


def test_encode_memory_next_to_training(reports, tiny_config):
    one, eight = reports[1]["encode_memory_per_device"], reports[8]["encode_memory_per_device"]
    total = 4 * sum(math.prod(s.shape) for group in weight_specs(
        ModelConfig.from_hf(TINY)).values() for s in group.values())
    assert one["params_global"] == eight["params_global"] == total
    norms = 4 * 512 * (2 * 2 + 1)  # 2 per layer + the final one, replicated (axis "norm")
    assert one["params"] == total and eight["params"] == (total - norms) // 8 + norms
    assert (one["rows"], one["width"]) == (8, 64)
    # XLA's arguments hold the weights the forward uses (the LM head is not): well under
    # one device's full copy on fsdp=8.
    assert eight["argument"] < one["argument"] / 4
    for chip in reports[8]["chips"].values():
        assert chip["encode_used_fraction"] == pytest.approx(eight["total"] / chip["hbm_bytes"])
    out = run_plan("--model", tiny_config, "--mesh", "fsdp=8", "--device", "tpu-v5e",
                   *COMMON).stdout
    assert "encode memory per device (LLM2Vec(mesh=...), 8 rows x 64 tokens" in out
    assert "encode used" in out
