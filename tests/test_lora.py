"""LoRA adapters: identity at init, merge/unmerge, filters and LoRA-only training, dropout."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from hf_oracle import TINY, TINY_CONFIGS, batch, random_normal
from llm2vec_jax.lora import (ALL_TARGETS, FROZEN_FILTER, LORA_FILTER, LoRAConfig, LoRAError,
                              LoRAWeight, attach_lora, has_lora, lora_parameter_count,
                              merge_and_reattach, merge_lora, remove_lora, unmerge_lora)
from llm2vec_jax.models import ModelConfig, init_model, weight_specs
from llm2vec_jax.models.specs import init_weight

SEQ = 8


@nnx.jit(static_argnames=("causal", "lora_dropout"))
def run(model, ids, mask, causal=True, dropout_rng=None, lora_dropout=False):
    # Jitted: the eager scanned forward is several times slower on CPU.
    return model(ids, mask, causal=causal, dropout_rng=dropout_rng, lora_dropout=lora_dropout)


@functools.cache
def _base_model(name):
    model_type, extra = TINY_CONFIGS[name]
    return init_model(ModelConfig.from_hf({**TINY, **extra, "model_type": model_type}))


def tiny_model(name="llama"):
    """A fresh copy (tests attach adapters in place; eager init is slow, so clone)."""
    return nnx.clone(_base_model(name))


def randomize_adapter(model, seed=1, std=0.05):
    """Non-zero B (and new A) so the adapter changes the output."""
    key = jax.random.key(seed)
    for i, p in enumerate(model.lora_config.targets):
        for j, suffix in enumerate("ab"):
            var = getattr(model.layers, f"{p}_lora_{suffix}")
            var.set_value(std * random_normal(jax.random.fold_in(key, 2 * i + j), var.shape))


def base_state(model):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, FROZEN_FILTER)))


# -- config -----------------------------------------------------------------------------------

def test_config_defaults_and_targets():
    c = LoRAConfig()
    assert (c.r, c.alpha, c.dropout, c.targets, c.scale) == (16, 32, 0.05, ALL_TARGETS, 2.0)
    assert LoRAConfig(targets=("v_proj", "q")).targets == ("q", "v")
    assert LoRAConfig(targets=r"[qkvo]_proj").targets == ("q", "k", "v", "o")
    assert LoRAConfig(targets="mlp\\..*").targets == ("gate", "up", "down")
    assert LoRAConfig(targets=".*").targets == ALL_TARGETS
    hash(LoRAConfig(targets="q|v"))  # static model attribute: must be hashable


@pytest.mark.parametrize("kwargs,match", [
    (dict(targets="nothing_matches"), "matches no projection"),
    (dict(targets=()), "empty"),
    (dict(targets=("q", "lm_head")), "unknown"),
    (dict(r=0), "r must"),
    (dict(r=2.5), "r must"),
    (dict(alpha=0), "alpha"),
    (dict(dropout=1.0), "dropout"),
])
def test_config_rejects(kwargs, match):
    with pytest.raises(LoRAError, match=match):
        LoRAConfig(**kwargs)


# -- attach -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "gqa_kv4_bias"])
def test_fresh_adapter_is_identity(name):
    model = tiny_model(name)
    ids, mask = batch("left", 3, SEQ)
    before = np.asarray(run(model, ids, mask, causal=False))
    attach_lora(model, LoRAConfig(r=4, alpha=8))
    np.testing.assert_array_equal(np.asarray(run(model, ids, mask, causal=False)), before)
    randomize_adapter(model)
    assert np.abs(np.asarray(run(model, ids, mask, causal=False)) - before).max() > 1e-3


def test_attach_shapes_axes_and_init():
    model = tiny_model("llama")
    attach_lora(model, LoRAConfig(r=4, alpha=8), seed=3)
    specs = weight_specs(model.config)["layers"]
    for p in ALL_TARGETS:
        a, b = getattr(model.layers, f"{p}_lora_a"), getattr(model.layers, f"{p}_lora_b")
        assert isinstance(a, LoRAWeight) and isinstance(a, nnx.LoRAParam)
        w_axes = specs[p].axes
        n_in = len(a.shape) - 1
        assert a.get_metadata()["logical_axes"] == w_axes[:n_in] + ("lora_rank",)
        assert b.get_metadata()["logical_axes"] == ("layers", "lora_rank") + w_axes[n_in:]
        # PEFT's kaiming_uniform(a=sqrt(5)) on lora_A [r, fan_in] is U(-1/sqrt(fan_in), ...).
        bound = 1 / np.sqrt(np.prod(a.shape[1:-1]))
        values = np.asarray(a[...])
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.8 * bound
        assert values.std() == pytest.approx(bound / np.sqrt(3), rel=0.15)
        assert not np.asarray(b[...]).any()
    # Layers and projections draw different values.
    q = np.asarray(model.layers.q_lora_a[...])
    assert not np.allclose(q[0], q[1])
    assert not np.allclose(q, np.asarray(model.layers.k_lora_a[...]))


def test_fresh_weights_are_jax_draws_of_their_full_shape():
    """init_weight draws flat and reshapes (faster to compile on CPU); the values must be
    exactly JAX's draw of the whole shape, so every recorded run's initialisation stands."""
    model = tiny_model("llama")
    attach_lora(model, LoRAConfig(r=4, alpha=8), seed=3)
    for p in ("q", "down"):
        a = np.asarray(getattr(model.layers, f"{p}_lora_a")[...])
        bound = 1 / np.sqrt(np.prod(a.shape[1:-1]))
        key = jax.random.fold_in(jax.random.key(3), ALL_TARGETS.index(p))
        np.testing.assert_array_equal(
            a, np.asarray(jax.random.uniform(key, a.shape, jnp.float32, -bound, bound)))
    spec = weight_specs(model.config)["layers"]["gate"]
    assert len(spec.shape) == 3 and spec.init not in ("ones", "zeros", "lora_a")
    key = jax.random.key(7)
    np.testing.assert_array_equal(
        np.asarray(init_weight(spec, key, jnp.float32, std=0.05)),
        np.asarray(0.05 * jax.random.normal(key, spec.shape, jnp.float32)))


def test_attach_twice_refused_and_remove():
    model = tiny_model("llama")
    attach_lora(model, LoRAConfig(r=2, targets=("q", "v")))
    assert has_lora(model) and not hasattr(model.layers, "k_lora_a")
    with pytest.raises(LoRAError, match="already has a LoRA adapter"):
        attach_lora(model, LoRAConfig(r=2))
    adapter = remove_lora(model)
    assert set(adapter.arrays) == {"q", "v"} and not has_lora(model)
    assert not hasattr(model.layers, "q_lora_a")
    with pytest.raises(LoRAError, match="no LoRA adapter"):
        merge_lora(model)


# -- merge ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "gqa_kv4_bias", "qwen2", "qwen3_tied", "gemma",
                                  "gemma2", "gemma3"])
def test_merge_matches_and_unmerge_restores(name):
    model = tiny_model(name)
    base = base_state(model)
    attach_lora(model, LoRAConfig(r=4, alpha=16))
    randomize_adapter(model)
    ids, mask = batch("right", 3, SEQ)
    with_lora = np.asarray(run(model, ids, mask, causal=False))
    adapter = merge_lora(model)
    assert not has_lora(model) and not nnx.state(model, LORA_FILTER)
    merged = np.asarray(run(model, ids, mask, causal=False))
    assert np.abs(merged - with_lora).max() <= 1e-5
    assert np.abs(model.layers.q[...] - base["layers"]["q"]).max() > 1e-4  # really merged
    unmerge_lora(model, adapter)
    assert has_lora(model)
    restored = base_state(model)
    for k, v in jax.tree_util.tree_leaves_with_path(base):
        got = restored
        for part in k:
            got = got[part.key]
        assert np.abs(got - v).max() <= 1e-6, k
    np.testing.assert_allclose(np.asarray(run(model, ids, mask, causal=False)), with_lora, atol=1e-5)


def test_merge_and_reattach():
    model = tiny_model("llama")
    attach_lora(model, LoRAConfig(r=4, alpha=8))
    randomize_adapter(model)
    ids, mask = batch("none", 2, SEQ)
    with_lora = np.asarray(run(model, ids, mask))
    new = LoRAConfig(r=2, alpha=4, targets=("q", "k", "v"))
    old = merge_and_reattach(model, new, seed=5)
    assert old.config.r == 4 and model.lora_config == new
    assert not hasattr(model.layers, "o_lora_a")
    assert not np.asarray(model.layers.q_lora_b[...]).any()
    np.testing.assert_allclose(np.asarray(run(model, ids, mask)), with_lora, atol=1e-5)
    # The weights hold the first adapter: removing the fresh one changes nothing.
    fresh_out = np.asarray(run(model, ids, mask))
    remove_lora(model)
    np.testing.assert_array_equal(np.asarray(run(model, ids, mask)), fresh_out)


# -- filters and training ---------------------------------------------------------------------

def test_filters_partition_params():
    model = tiny_model("llama_tied")
    n_base = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    attach_lora(model, LoRAConfig(r=4))
    lora = nnx.to_pure_dict(nnx.state(model, LORA_FILTER))
    expected = {f"{p}_lora_{s}" for p in ALL_TARGETS for s in "ab"}
    assert set(lora) == {"layers"} and set(lora["layers"]) == expected
    frozen = nnx.to_pure_dict(nnx.state(model, FROZEN_FILTER))
    assert not expected & set(frozen["layers"])
    assert sum(x.size for x in jax.tree.leaves(frozen)) == n_base
    assert lora_parameter_count(model) == sum(x.size for x in jax.tree.leaves(lora))


def test_lora_only_training():
    model = tiny_model("llama")
    attach_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.1))
    base = base_state(model)
    lora_size = lora_parameter_count(model)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=LORA_FILTER)
    ids, mask = batch("right", 2, SEQ)
    target = jax.random.normal(jax.random.key(0), (2, SEQ, model.config.hidden_size))

    @nnx.jit
    def step(model, optimizer, rng):
        def loss_fn(model):
            out = model(ids, mask, causal=False, dropout_rng=rng, lora_dropout=True)
            return jnp.mean((out - target) ** 2)
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, LORA_FILTER))(model)
        optimizer.update(model, grads)
        return loss, grads

    losses = []
    for i in range(4):
        loss, grads = step(model, optimizer, jax.random.key(i))
        losses.append(float(loss))
    grad_names = set(nnx.to_pure_dict(grads)["layers"])
    assert grad_names == {f"{p}_lora_{s}" for p in ALL_TARGETS for s in "ab"}
    assert sum(x.size for x in jax.tree.leaves(grads)) == lora_size
    mu = [s.mu for s in jax.tree.leaves(optimizer.opt_state, is_leaf=lambda s: hasattr(s, "mu"))
          if hasattr(s, "mu")]
    assert len(mu) == 1 and sum(x.size for x in jax.tree.leaves(mu[0])) == lora_size
    assert losses[-1] < losses[0]
    assert np.asarray(model.layers.q_lora_b[...]).any()
    after = base_state(model)
    jax.tree.map(np.testing.assert_array_equal, after, base)


# -- dropout ----------------------------------------------------------------------------------

def test_lora_dropout_only_when_asked():
    model = tiny_model("llama")
    attach_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.3))
    randomize_adapter(model)
    ids, mask = batch("none", 2, SEQ)
    plain = np.asarray(run(model, ids, mask))
    k1, k2 = jax.random.key(1), jax.random.key(2)
    # An rng alone does not turn LoRA dropout on (attention dropout is 0 in this config).
    np.testing.assert_array_equal(np.asarray(run(model, ids, mask, dropout_rng=k1)), plain)
    # lora_dropout without an rng is inference: no dropout.
    np.testing.assert_array_equal(np.asarray(run(model, ids, mask, lora_dropout=True)), plain)
    d1 = np.asarray(run(model, ids, mask, dropout_rng=k1, lora_dropout=True))
    d1_again = np.asarray(run(model, ids, mask, dropout_rng=k1, lora_dropout=True))
    d2 = np.asarray(run(model, ids, mask, dropout_rng=k2, lora_dropout=True))
    np.testing.assert_array_equal(d1, d1_again)
    assert np.abs(d1 - plain).max() > 1e-4 and np.abs(d1 - d2).max() > 1e-4
    # Dropout touches only the adapter's input: with B = 0 it has no effect.
    remove_lora(model)
    base_out = np.asarray(run(model, ids, mask))
    attach_lora(model, LoRAConfig(r=4, alpha=8, dropout=0.3))
    np.testing.assert_array_equal(
        np.asarray(run(model, ids, mask, dropout_rng=k1, lora_dropout=True)), base_out)


# -- sharding ---------------------------------------------------------------------------------

_SHARDED_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from flax import nnx
    from llm2vec_jax.lora import LoRAConfig, attach_lora, merge_lora, unmerge_lora
    from llm2vec_jax.models import ModelConfig, init_model
    assert jax.device_count() == 2
    mesh = Mesh(np.array(jax.devices()), ("model",))
    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8)
    model = init_model(config)
    rules = {"heads": "model", "kv_heads": "model", "mlp": "model"}
    for name, var in vars(model.layers).items():
        if isinstance(var, nnx.Variable):
            axes = var.get_metadata()["logical_axes"]
            var.set_value(jax.device_put(var[...], NamedSharding(mesh, P(*(rules.get(a) for a in axes)))))
    # Placed by logical axes, the same rules as the base weights (not copied off the arrays).
    attach_lora(model, LoRAConfig(r=2, alpha=4),
                sharding_fn=lambda spec: NamedSharding(mesh, P(*(rules.get(a) for a in spec.axes))))
    assert model.layers.q_lora_b[...].sharding.spec == P(None, None, "model", None)
    assert model.layers.down_lora_a[...].sharding.spec == P(None, "model", None)
    for p in ("q", "down"):
        var = getattr(model.layers, p + "_lora_b")
        var.set_value(jax.device_put(np.full(var.shape, 0.1, np.float32), var[...].sharding))
    ids = np.arange(12).reshape(2, 6) % 64
    with_lora = np.asarray(model(ids))
    before = {p: getattr(model.layers, p)[...] for p in ("q", "down")}
    adapter = merge_lora(model)
    for p in ("q", "down"):
        assert getattr(model.layers, p)[...].sharding == before[p].sharding, p
    assert np.abs(np.asarray(model(ids)) - with_lora).max() <= 1e-5
    unmerge_lora(model, adapter)
    assert np.abs(np.asarray(model.layers.q[...]) - np.asarray(before["q"])).max() <= 1e-6
    print("OK")
""")


def test_merge_keeps_sharding_on_two_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
