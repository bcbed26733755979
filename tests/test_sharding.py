"""Sharded training math on 8 fake CPU devices equals one device; mesh errors are clear."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from hf_oracle import make_hf_model, save_hf_model
from llm2vec_jax import sharding as shd
from llm2vec_jax.models import ModelConfig
from llm2vec_jax.models.transformer import weight_specs


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    checkpoint = save_hf_model(make_hf_model("llama"), tmp_path_factory.mktemp("tiny"))
    script = os.path.join(os.path.dirname(__file__), "sharded_check.py")
    result = subprocess.run([sys.executable, script, checkpoint], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Relative to each gradient's largest entry. MNTP: the 1e-5. Contrastive: its
# 20x-scaled cosine logits amplify reduction-order rounding (sharded contractions and
# all-reduces sum in another order); measured up to 1.7e-5 on (1,4,2), while a real
# sharding bug (a wrong gather, a missing all-reduce) shows up as O(1e-1) differences.
GRAD_RTOL = {"mntp": 1e-5, "contrastive": 3e-5}


@pytest.mark.parametrize("mesh", ["8,1,1", "1,8,1", "2,2,2", "1,4,2"])
@pytest.mark.parametrize("objective", ["mntp", "contrastive"])
def test_loss_and_lora_grads_match_single_device(sharded_results, mesh, objective):
    ref, got = sharded_results["1,1,1"][objective], sharded_results[mesh][objective]
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    rtol = GRAD_RTOL[objective]
    assert set(got["grads"]) == set(ref["grads"]) and len(ref["grads"]) == 14  # 7 targets × A, B
    for key, value in ref["grads"].items():
        value, other = np.asarray(value), np.asarray(got["grads"][key])
        assert np.abs(value).max() > 0, f"{key}: zero gradient proves nothing"
        np.testing.assert_allclose(other, value, rtol=rtol, atol=rtol * np.abs(value).max())


def test_params_carry_expected_shardings(sharded_results):
    assert sharded_results["1,4,2"]["shardings"] == {
        "q": [None, "fsdp", "tensor", None], "embed": ["tensor", "fsdp"],
        "q_lora_b": [None, None, "tensor", None]}
    # q [L=2, D=64, N=4, H=16]: D over fsdp=4, heads over tensor=2; pure data parallel keeps it whole.
    assert sharded_results["1,4,2"]["q_shard_shape"] == [2, 16, 2, 16]
    assert sharded_results["8,1,1"]["q_shard_shape"] == [2, 64, 4, 16]


def test_rules_table_maps_logical_axes():
    assert shd.logical_to_spec(("batch", "seq")) == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    assert shd.logical_to_spec(("layers", "embed", "heads", "head_dim")) == \
        jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    with pytest.raises(shd.ShardingError, match="logical axis 'nope' has no rule"):
        shd.logical_to_spec(("nope",))


def test_mesh_errors_are_clear():
    with pytest.raises(shd.ShardingError, match="needs 6 devices, but 1 are available"):
        shd.make_mesh(shd.MeshConfig(data=2, fsdp=3, tensor=1))
    with pytest.raises(shd.ShardingError, match="at most one mesh axis may be -1"):
        shd.MeshConfig(data=-1, fsdp=-1)
    mesh = shd.make_mesh(shd.MeshConfig())
    shd.check_batch(mesh, 3)  # one device divides everything


def test_indivisible_heads_and_batch_are_refused():
    """Against a fake 8-device mesh description (no devices needed for the arithmetic)."""
    config = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=16)

    class FakeMesh:
        shape = {"data": 2, "fsdp": 1, "tensor": 4}

    spec = weight_specs(config)["layers"]["k"]
    with pytest.raises(shd.ShardingError, match=r"dimension 'kv_heads' of size 2 does not divide "
                                                 r"over mesh axes tensor of size 4"):
        shd.named_sharding(FakeMesh(), spec.shape, spec.axes, "weight")
    with pytest.raises(shd.ShardingError, match="global batch size 6 does not divide over the 8"):
        FakeMesh.shape = {"data": 2, "fsdp": 4, "tensor": 1}
        shd.check_batch(FakeMesh(), 6)
