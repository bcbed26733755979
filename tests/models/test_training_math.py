"""The kernels that replace stock JAX ops for speed (``models/kernels.py``): the 16-bit dropout
mask, the LoRA einsum with a hand-written VJP, 16-bit weights indexed as raw bits; and the
one-pass multi-view contrastive encoder. Oracles: binomial statistics, JAX's own autodiff of
the plain ops, the per-view path, and the model run with the plain kernels."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import tiny_lora_model
from hf_oracle import random_normal
from llm2vec_jax.data.batches import ContrastiveBatch, Features
from llm2vec_jax.models import Kernels, ModelConfig, init_model
from llm2vec_jax.models import kernels as K
from llm2vec_jax.models.einsum import Einsum
from llm2vec_jax.models.dropout import dropout, keep_mask, keep_threshold, threefry_bits
from llm2vec_jax.models.specs import PROJECTIONS, projection_einsum
from llm2vec_jax.train.steps import contrastive_objective, embed, embed_views

BITS = dataclasses.replace(K.PLAIN, weight_indexing="bits")
# The CPU backend's kernels with each matmul_operands choice (the resolver picks one by the
# processor; the tests pin it so they check the same thing on every machine).
CPU = {operands: dataclasses.replace(K.BACKEND_KERNELS["cpu"], matmul_operands=operands)
       for operands in K.CHOICES["matmul_operands"]}


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.5])
def test_keep_mask_rate_and_independence(rate):
    assert abs(keep_threshold(rate) / 65536 - (1 - rate)) <= 0.5 / 65536
    n = 1_000_001  # odd: the last word contributes one half only
    keep = np.asarray(keep_mask(jax.random.key(0), rate, (n,)))
    p = keep_threshold(rate) / 65536
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(keep.mean() - p) < 5 * sigma
    # The low and high halves of a word are independent draws: neighbouring-half agreement
    # and the two halves' correlation look like independent Bernoullis.
    lo, hi = keep[: n // 2], keep[n // 2: 2 * (n // 2)]
    assert abs(np.corrcoef(lo, hi)[0, 1]) < 5 / np.sqrt(n // 2)
    other = np.asarray(keep_mask(jax.random.key(1), rate, (n,)))
    assert (keep != other).mean() > 2 * p * (1 - p) - 10 * sigma
    # The plain implementation keeps 1 - rate exactly in expectation; bits16 is within 2⁻¹⁶.
    plain = np.asarray(keep_mask(jax.random.key(0), rate, (n,), "bernoulli"))
    sigma = np.sqrt(rate * (1 - rate) / n)
    assert abs(plain.mean() - (1 - rate)) < 5 * sigma
    assert abs(plain.mean() - keep.mean()) < 10 * sigma


def test_unrolled_threefry_gives_jax_random_bits_word_for_word():
    for seed, n in ((0, 1), (1, 7), (42, 1000), (7, 1 << 20)):
        key = jax.random.fold_in(jax.random.key(seed), 3)
        got = jax.jit(threefry_bits, static_argnums=1)(key, n)
        np.testing.assert_array_equal(got, jax.random.bits(key, (n,), jnp.uint32))
    keys = jax.random.split(jax.random.key(5), 4)  # per-row keys, as keep_mask vmaps them
    np.testing.assert_array_equal(jax.vmap(lambda k: threefry_bits(k, 33))(keys),
                                  jax.vmap(lambda k: jax.random.bits(k, (33,), jnp.uint32))(keys))
    rbg = jax.random.key(0, impl="rbg")  # another PRNG: JAX's own bits
    np.testing.assert_array_equal(threefry_bits(rbg, 10), jax.random.bits(rbg, (10,), jnp.uint32))


def test_dropout_scales_kept_values_and_is_identity_without_key():
    x = jnp.arange(1, 4001, dtype=jnp.float32).reshape(40, 100)
    assert dropout(x, 0.3, None) is x and dropout(x, 0.0, jax.random.key(0)) is x
    y = np.asarray(dropout(x, 0.25, jax.random.key(3)))
    kept = y != 0
    # x / (1 - rate) to float32 rounding (XLA may multiply by the reciprocal: ≤ 1 ulp).
    exact = np.asarray(x, np.float64)[kept] / 0.75
    assert np.abs(y[kept] / exact - 1).max() <= np.finfo(np.float32).eps
    assert 0.7 < kept.mean() < 0.8


@pytest.mark.parametrize("name", list(PROJECTIONS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_trainable_einsum_matches_autodiff(name, dtype):
    """Value and both gradients of the two LoRA einsums equal JAX's autodiff of jnp.einsum."""
    shapes = {"b": 2, "s": 5, "d": 12, "n": 3, "k": 1, "h": 4, "f": 20, "r": 6}
    for equation in projection_einsum(name).lora():
        (x_sub, w_sub), out = [t.split(",") for t in equation.split("->")[0:1]][0], equation.split("->")[1]
        kx, kw, kg = jax.random.split(jax.random.key(len(equation)), 3)
        x = random_normal(kx, [shapes[c] for c in x_sub]).astype(dtype)
        w = random_normal(kw, [shapes[c] for c in w_sub]).astype(dtype)
        g = random_normal(kg, [shapes[c] for c in out], jnp.float32)

        def plain(x, w):
            return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32)

        want, want_vjp = jax.vjp(plain, x, w)
        got, got_vjp = jax.vjp(lambda x, w: K.narrow_first_einsum(equation, x, w), x, w)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        tol = 1e-6 if dtype == jnp.float32 else 1e-2
        for a, b in zip(got_vjp(g), want_vjp(g)):
            assert a.dtype == b.dtype and a.shape == b.shape
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            assert np.abs(a - b).max() <= tol * np.abs(b).max(), (equation, np.abs(a - b).max())


EQUATIONS = [projection_einsum(name).equation for name in PROJECTIONS] + ["bkgst,bkth->bkgsh"]


def _exact_bf16(key, shape, scale):
    """Small multiples of ``scale`` (a power of two): every product and partial sum of these
    is exact in float32, so any summation order gives the same result."""
    return (jax.random.randint(key, shape, -8, 9) * scale).astype(jnp.bfloat16)


@pytest.mark.parametrize("equation", EQUATIONS)
def test_operands_dtype_einsum_matches_autodiff_on_a_16bit_cotangent(equation):
    """With the cotangent exact in bfloat16 (as it is when the einsum's float32 output is cast
    to bfloat16 right after), the backward on 16-bit operands gives exactly autodiff's
    gradients, and a frozen operand (not differentiated) gets none and saves nothing."""
    shapes = {"b": 2, "s": 5, "t": 5, "d": 12, "n": 3, "k": 2, "g": 2, "h": 4, "f": 20}
    e = Einsum.parse(equation)
    kx, kw, kg = jax.random.split(jax.random.key(len(equation)), 3)
    x = _exact_bf16(kx, [shapes[c] for c in e.x], 2.0 ** -3)
    w = _exact_bf16(kw, [shapes[c] for c in e.w], 2.0 ** -4)
    g = _exact_bf16(kg, [shapes[c] for c in e.out], 2.0 ** -2).astype(jnp.float32)

    def plain(x, w):
        return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32)

    want, want_vjp = jax.vjp(plain, x, w)
    got, got_vjp = jax.vjp(lambda x, w: K.rounding_einsum(equation, x, w, "operands"), x, w)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for a, b in zip(got_vjp(g), want_vjp(g)):
        assert a.dtype == b.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    # Frozen w: x's gradient alone, and x is not kept for it.
    frozen = jax.vjp(lambda x: K.rounding_einsum(equation, x, w, "operands"), x)[1]
    np.testing.assert_array_equal(np.asarray(frozen(g)[0], np.float32),
                                  np.asarray(want_vjp(g)[0], np.float32))
    assert [leaf.shape for leaf in jax.tree.leaves(frozen) if leaf.ndim] == [w.shape]
    # float32 operands take the plain einsum.
    x32, w32 = x.astype(jnp.float32), w.astype(jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x: K.rounding_einsum(equation, x, w32, "operands"))(x32)
    assert [eqn.primitive.name for eqn in jaxpr.eqns] == ["dot_general"]


def _dot_operand_types(stablehlo: str) -> set[str]:
    """The element types of every dot_general's operands in StableHLO text."""
    types = set()
    for line in stablehlo.splitlines():
        if "stablehlo.dot_general" in line:
            operands = line.rsplit(": (", 1)[1].split(") ->", 1)[0]
            types |= {t.rsplit("x", 1)[-1].rstrip(">") for t in operands.split(", ")}
    return types


LORA_EQUATIONS = [eq for name in PROJECTIONS for eq in projection_einsum(name).lora()]


@pytest.mark.parametrize("equation", EQUATIONS + LORA_EQUATIONS)
def test_float32_operands_multiply_16bit_values_as_float32(equation):
    """``matmul_operands='float32'``: 16-bit operands are converted to float32 for every
    matmul, forward and backward, of each kernel (the frozen projections' custom VJP, the
    LoRA one, the plain einsum): the lowered program multiplies no bf16, while the native
    choice does (so the check can tell). On values whose products and sums are exact in
    float32, values and gradients equal autodiff of the plain bf16 einsum exactly, and the
    custom VJPs keep the 16-bit operands for the backward, not float32 copies."""
    shapes = {"b": 2, "s": 5, "t": 5, "d": 12, "n": 3, "k": 2, "g": 2, "h": 4, "f": 20, "r": 6}
    e = Einsum.parse(equation)
    kx, kw, kg = jax.random.split(jax.random.key(len(equation) + 7), 3)
    x = _exact_bf16(kx, [shapes[c] for c in e.x], 2.0 ** -3)
    w = _exact_bf16(kw, [shapes[c] for c in e.w], 2.0 ** -4)
    g = _exact_bf16(kg, [shapes[c] for c in e.out], 2.0 ** -2).astype(jnp.float32)

    def plain(x, w):
        return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32)

    kernels = {
        "frozen": lambda operands: lambda x, w: K.rounding_einsum(equation, x, w, "operands",
                                                                  operands),
        "lora": lambda operands: lambda x, w: K.narrow_first_einsum(equation, x, w, operands),
        "plain": lambda operands: lambda x, w: K.matmul(equation, x, w, operands),
    }
    if "r" not in equation:
        del kernels["lora"]
    want, want_vjp = jax.vjp(plain, x, w)
    for name, kernel in kernels.items():
        got, got_vjp = jax.vjp(kernel("float32"), x, w)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        for a, b in zip(got_vjp(g), want_vjp(g)):
            assert a.dtype == b.dtype == jnp.bfloat16, name
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))

        def gradient(operands):
            def value_and_vjp(x, w, g):
                out, vjp = jax.vjp(kernel(operands), x, w)
                return out, vjp(g)
            return jax.jit(value_and_vjp)
        assert _dot_operand_types(gradient("float32").lower(x, w, g).as_text()) == {"f32"}, name
        assert "bf16" in _dot_operand_types(gradient("native").lower(x, w, g).as_text())
        if name != "plain":
            saved = jax.vjp(kernel("float32"), x, w)[1]
            assert sorted(str(leaf.dtype) for leaf in jax.tree.leaves(saved)
                          if leaf.ndim) == ["bfloat16", "bfloat16"], name


def test_cpu_multiplies_bf16_reads_the_processor_flags():
    """x86 ``flags`` and Arm ``Features`` lines; a processor without bf16 dot instructions
    (AVX2 only), one with them, and text that tells neither."""
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
    avx512 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"
    arm_old = "processor\t: 0\nFeatures\t: fp asimd evtstrm\n"
    assert K.cpu_multiplies_bf16(avx2) is False and K.cpu_multiplies_bf16(arm_old) is False
    assert K.cpu_multiplies_bf16(avx512) is True and K.cpu_multiplies_bf16(arm) is True
    assert K.cpu_multiplies_bf16("processor\t: 0\n") is None
    # A flag only contains the name ("avx512_bf16_x" is no flag of ours): whole words only.
    assert K.cpu_multiplies_bf16("flags : avx2 notbf16\n") is False


def _model_and_batch(lengths):
    graphdef, lora, frozen = tiny_lora_model(vocab_size=96, hidden_size=32,
                                             intermediate_size=48, head_dim=8)
    rng = np.random.default_rng(0)
    views = []
    for length in lengths:
        mask = np.ones((4, length), np.int32)
        mask[1, :2] = 0
        views.append(Features(rng.integers(3, 96, (4, length)).astype(np.int32), mask, mask))
    return graphdef, lora, frozen, ContrastiveBatch(*views)


def compiled(graphdef, fn):
    """``fn(model, *args)`` as one jitted function of (LoRA state, frozen state, *args), as
    the train step runs it. Run eagerly, dropout's bit generation dispatches op by op, which
    took these tests about a minute each."""
    return jax.jit(lambda lora, frozen, *args: fn(nnx.merge(graphdef, lora, frozen), *args))


@pytest.mark.parametrize("rng", [jax.random.key(5), None], ids=["train", "eval"])
def test_embed_views_equals_one_pass_per_view(rng):
    graphdef, lora, frozen, batch = _model_and_batch((7, 7, 7))
    keys = [None] * 3 if rng is None else list(jax.random.split(rng, 3))
    together = compiled(graphdef, lambda m, views, keys: embed_views(m, views, keys, "mean"))
    one_view = compiled(graphdef, lambda m, view, key: embed(m, view, key, "mean"))
    for view, key, emb in zip(batch.views, keys, together(lora, frozen, batch.views, keys)):
        np.testing.assert_allclose(np.asarray(emb), np.asarray(one_view(lora, frozen, view, key)),
                                   rtol=2e-6, atol=2e-6)


def test_contrastive_loss_and_grads_same_with_unequal_view_lengths():
    """Views of different lengths take the per-view path; the loss is the same function of
    the embeddings (checked against recomputing it from per-view embeddings)."""
    from llm2vec_jax.train.losses import contrastive_loss
    graphdef, lora, frozen, batch = _model_and_batch((7, 9, 5))
    key = jax.random.key(2)
    loss = compiled(graphdef, lambda m, b, k: contrastive_objective(m, b, k, scale=20.0)[0])(
        lora, frozen, batch, key)
    keys = jax.random.split(key, 3)
    one_view = compiled(graphdef, lambda m, view, key: embed(m, view, key, "mean"))
    q, d, n = (one_view(lora, frozen, v, k) for v, k in zip(batch.views, keys))
    np.testing.assert_allclose(float(loss), float(contrastive_loss(q, d, n, scale=20.0)), rtol=1e-6)


def test_per_row_keys_give_each_row_the_masks_it_gets_alone():
    """dropout_rng [B]: row i of a batch forward equals row i run alone with key i (the
    property GradCache chunks rely on), and differs from a shared-key forward."""
    graphdef, lora, frozen, batch = _model_and_batch((7, 7, 7))
    forward = compiled(graphdef, lambda m, ids, mask, keys: m(
        ids, mask, causal=False, dropout_rng=keys, lora_dropout=True))
    ids, mask = batch.q.input_ids, batch.q.attention_mask
    keys = jax.random.split(jax.random.key(9), ids.shape[0])
    together = np.asarray(forward(lora, frozen, ids, mask, keys))
    for i in range(ids.shape[0]):
        alone = forward(lora, frozen, ids[i:i + 1], mask[i:i + 1], keys[i])
        np.testing.assert_allclose(together[i], np.asarray(alone)[0], rtol=1e-5, atol=1e-5)
    shared = np.asarray(forward(lora, frozen, ids, mask, keys[0]))
    assert np.abs(shared[1:] - together[1:]).max() > 1e-3
    rows = np.asarray(keep_mask(keys, 0.3, (4, 5, 6)))
    for i in range(4):
        np.testing.assert_array_equal(rows[i], np.asarray(keep_mask(keys[i], 0.3, (5, 6))))
    with pytest.raises(ValueError, match="per-row keys"):
        keep_mask(keys, 0.3, (5, 4))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_indexing_as_bits_is_exact_and_differentiable(dtype):
    stacked = random_normal(jax.random.key(0), (5, 6, 7)).astype(dtype)
    table = random_normal(jax.random.key(1), (11, 6)).astype(dtype)
    ids = jnp.array([[3, 0, 10], [3, 3, 1]])
    layer_slice = jax.jit(lambda w, i: K.layer_slice(w, i, BITS))
    embed_tokens = functools.partial(K.embed_tokens, kernels=BITS)
    np.testing.assert_array_equal(np.asarray(layer_slice(stacked, 2)), np.asarray(stacked[2]))
    np.testing.assert_array_equal(np.asarray(jax.jit(embed_tokens)(table, ids)), np.asarray(table[ids]))
    # Gradients equal autodiff of the plain indexing (repeated ids accumulate).
    c = random_normal(jax.random.key(2), (2, 3, 6)).astype(dtype)
    got = jax.grad(lambda t: (embed_tokens(t, ids) * c).astype(jnp.float32).sum())(table)
    want = jax.grad(lambda t: (t[ids] * c).astype(jnp.float32).sum())(table)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    got = jax.grad(lambda w: K.layer_slice(w, 4, BITS).astype(jnp.float32).sum())(stacked)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.zeros_like(stacked).at[4].set(1)))


def test_one_resolver_picks_the_kernels_per_backend():
    cpu = K.resolve_kernels(None, "cpu", cpu_bf16=True)
    assert cpu == CPU["native"] and cpu.weight_indexing == "bits"
    # A processor without bf16 dot instructions multiplies 16-bit operands as float32; one
    # that cannot be told keeps them native.
    assert K.resolve_kernels(None, "cpu", cpu_bf16=False) == CPU["float32"]
    assert K.resolve_kernels(None, "cpu", cpu_bf16=None).matmul_operands in K.CHOICES[
        "matmul_operands"]
    assert K.resolve_kernels(None, "gpu") == K.PLAIN == K.resolve_kernels(None, "tpu")
    assert K.resolve_kernels(None, "gpu", cpu_bf16=False) == K.PLAIN
    # An explicit choice wins; the rest is the backend's.
    chosen = K.resolve_kernels(Kernels(attention="cudnn", lora_grad="autodiff"), "cpu",
                               cpu_bf16=True)
    assert chosen == dataclasses.replace(cpu, attention="cudnn", lora_grad="autodiff")
    assert K.resolve_kernels(Kernels(matmul_operands="native"), "cpu",
                             cpu_bf16=False) == CPU["native"]
    half = jnp.zeros((2, 3), jnp.bfloat16)
    assert K.indexed_as_bits(half, cpu) and not K.indexed_as_bits(half.astype(jnp.float32), cpu)
    assert not K.indexed_as_bits(half, K.PLAIN)
    # The model records what it runs with.
    config = ModelConfig(vocab_size=16, hidden_size=8, intermediate_size=8, num_layers=1,
                         num_heads=2, num_kv_heads=1, head_dim=4)
    assert config.kernels == Kernels()
    assert init_model(config).config.kernels == K.resolve_kernels()
    with pytest.raises(ValueError, match="kernels.weight_indexing='fast'"):
        Kernels(weight_indexing="fast")


def _compiled_lora_gradient(config: ModelConfig, ids: jax.Array):
    """(compiled value_and_grad, its arguments: LoRA weights, frozen weights) of a
    hidden-state loss of ``config``'s model with a rank-4 adapter whose B is nonzero, so A
    gets a gradient too. The frozen weights are an argument, as in a train step (closed
    over, XLA would fold them into the program as constants)."""
    from llm2vec_jax.lora import LoRAConfig, attach_lora
    from llm2vec_jax.train.steps import split_model
    model = init_model(config, seed=0)
    attach_lora(model, LoRAConfig(r=4, alpha=8), seed=0)
    graphdef, lora, frozen = split_model(model)
    lora = jax.tree.map(lambda x: x + 0.05, lora)

    def loss(lora, frozen):
        hidden = nnx.merge(graphdef, lora, frozen)(ids, causal=False)
        return jnp.mean(hidden.astype(jnp.float32) ** 2)
    return jax.jit(jax.value_and_grad(loss)).lower(lora, frozen).compile(), (lora, frozen)


@pytest.mark.parametrize("operands", K.CHOICES["matmul_operands"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_kernels_give_the_plain_kernels_loss_and_gradients(dtype, operands):
    """The whole LoRA model (no dropout: the random streams differ by design) with the CPU
    backend's kernels against the plain ones."""
    config = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, dtype=dtype, param_dtype=dtype)
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 9)), jnp.int32)
    results = []
    for kernels in (CPU[operands], K.PLAIN):
        compiled, args = _compiled_lora_gradient(config.replace(kernels=kernels), ids)
        results.append(compiled(*args))
    (fast, fast_grads), (plain, plain_grads) = results
    # The two weight gradients contract the same terms in different orders: float32 rounding
    # of sums over B·S·D ≈ 600 terms (≤ 600 eps ≈ 7e-5 relative in the worst case).
    tol = 1e-5 if dtype == "float32" else 2e-2
    assert abs(float(fast) - float(plain)) <= tol * abs(float(plain))
    for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(plain_grads)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1e-6)


def test_bf16_forward_has_no_float32_copy_of_the_weights():
    """XLA:CPU normalises 16-bit dynamic-slices/gathers to float32 by converting the whole
    operand: the compiled bf16 forward must not hold any weight-shaped float32 array, and
    must give exactly what the plain-indexing forward gives."""
    config = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=3,
                         num_heads=4, num_kv_heads=2, head_dim=8, dtype="bfloat16",
                         param_dtype="bfloat16", kernels=BITS)
    graphdef, state = nnx.split(init_model(config, seed=0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 9)), jnp.int32)
    mask = jnp.ones_like(ids).at[1, 6:].set(0)

    def forward(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask, causal=False)

    compiled = jax.jit(forward).lower(state, ids, mask).compile()
    hlo = compiled.as_text()
    shapes = {x.shape for x in jax.tree.leaves(state) if x.ndim >= 2}
    assert len(shapes) >= 4
    for shape in shapes:
        assert f"f32[{','.join(map(str, shape))}]" not in hlo, shape
    fast = np.asarray(compiled(state, ids, mask), np.float32)
    graphdef = nnx.graphdef(init_model(config.replace(kernels=K.PLAIN), seed=0))
    plain_compiled = jax.jit(lambda *a: forward(*a)).lower(state, ids, mask).compile()  # retrace
    plain_hlo = plain_compiled.as_text()  # the check above can fail: plain indexing trips it
    assert any(f"f32[{','.join(map(str, shape))}]" in plain_hlo for shape in shapes)
    np.testing.assert_array_equal(fast, np.asarray(plain_compiled(state, ids, mask), np.float32))


@pytest.mark.parametrize("operands", K.CHOICES["matmul_operands"])
def test_bf16_backward_keeps_its_saved_activations_16_bit(operands):
    """XLA:CPU stacks the layer scan's saved activations through a float32
    dynamic-update-slice: the compiled bf16 LoRA gradient must hold no float32 activation
    stack [L, B, S, D or F] when residuals are kept as bits (and the float32 norm and MLP
    islands are recomputed), while with native residuals it does (so the check can fail);
    both give the same loss and gradients, as storage as bits is lossless. Operands
    multiplied as float32 are converted where they are used, not saved converted."""
    layers, batch, seq, hidden, mlp = 3, 2, 9, 32, 48
    config = ModelConfig(vocab_size=96, hidden_size=hidden, intermediate_size=mlp,
                         num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=8,
                         dtype="bfloat16", param_dtype="bfloat16")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 96, (batch, seq)), jnp.int32)
    stacks = [f"f32[{layers},{batch},{seq},{width}]" for width in (hidden, mlp)]
    results = {}
    for residuals in ("bits", "native"):
        kernels = dataclasses.replace(CPU[operands], residuals=residuals)
        compiled, args = _compiled_lora_gradient(config.replace(kernels=kernels), ids)
        results[residuals] = (compiled.as_text(), compiled(*args))
    bits_hlo, (bits_loss, bits_grads) = results["bits"]
    native_hlo, (native_loss, native_grads) = results["native"]
    assert not [s for s in stacks if s in bits_hlo]
    assert f"u16[{layers},{batch},{seq},{mlp}]" in bits_hlo
    assert [s for s in stacks if s in native_hlo]
    assert float(bits_loss) == float(native_loss)
    for a, b in zip(jax.tree.leaves(bits_grads), jax.tree.leaves(native_grads)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _while_tuples(hlo: str) -> list[str]:
    return [line.split("= (", 1)[1].split(") while(", 1)[0]
            for line in hlo.splitlines() if ") while(" in line]


def test_bf16_backward_runs_16bit_matmuls_and_saves_no_weights_or_probabilities():
    """The compiled bf16 LoRA gradient with the CPU kernels (native 16-bit operands): (1)
    its backward matmuls take the bf16 weights as they are (with
    ``matmul_backward='autodiff'`` XLA converts each layer's weights to float32 for them);
    (2) the forward layer scan carries each stacked weight once, as its input, and saves no
    per-layer copy (with native residuals it does); (3) no [L, B, K, G, S, T] attention probabilities are saved (they are recomputed).
    The numbers are checked elsewhere: the 16-bit backward against autodiff exactly
    (``test_operands_dtype_einsum_matches_autodiff_on_a_16bit_cotangent``), the whole model
    against the plain kernels (``test_cpu_kernels_give_the_plain_kernels_loss_and_gradients``)."""
    layers, batch, seq, hidden, mlp = 3, 2, 9, 32, 48
    config = ModelConfig(vocab_size=96, hidden_size=hidden, intermediate_size=mlp,
                         num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=8,
                         dtype="bfloat16", param_dtype="bfloat16")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 96, (batch, seq)), jnp.int32)
    cpu = CPU["native"]
    variants = {"cpu": cpu,
                "autodiff": dataclasses.replace(cpu, matmul_backward="autodiff"),
                "native": dataclasses.replace(cpu, residuals="native")}
    results = {}
    for name, kernels in variants.items():
        results[name] = _compiled_lora_gradient(config.replace(kernels=kernels), ids)[0].as_text()
    weights_f32 = [f"f32[{hidden},{mlp}]", f"f32[{mlp},{hidden}]"]
    assert not [s for s in weights_f32 if s in results["cpu"]]
    assert [s for s in weights_f32 if s in results["autodiff"]]

    def stacked_mlp_weights(hlo):
        tuples = _while_tuples(hlo)
        return max(sum(t.count(f"{dtype}[{layers},{a},{b}]") for dtype in ("u16", "bf16")
                       for a, b in ((hidden, mlp), (mlp, hidden))) for t in tuples)
    assert stacked_mlp_weights(results["cpu"]) == 3  # gate, up, down
    assert stacked_mlp_weights(results["native"]) > 3
    probabilities = f"[{layers},{batch},2,2,{seq},{seq}]"
    for hlo in results.values():
        assert not [t for t in _while_tuples(hlo) if probabilities in t]



@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_recomputed_attention_gives_the_saved_attentions_output_and_gradients(dtype):
    """The attention core is recomputed in the backward pass, its dropout mask saved: output
    and q/k/v gradients equal those of the same formula written out without checkpointing,
    with the same keep mask (drawn from the same key)."""
    from llm2vec_jax.models.attention import attention_allowed, grouped_query_attention
    b, s, n, kv, h, rate = 2, 7, 4, 2, 8, 0.3
    kq, kk, kv_, kg, kd = jax.random.split(jax.random.key(3), 5)
    q = random_normal(kq, (b, s, n, h)).astype(dtype)
    k = random_normal(kk, (b, s, kv, h)).astype(dtype)
    v = random_normal(kv_, (b, s, kv, h)).astype(dtype)
    g = random_normal(kg, (b, s, n, h), jnp.float32).astype(dtype)
    mask = jnp.ones((b, s), jnp.int32).at[1, :2].set(0)
    allowed = attention_allowed(mask, causal=False)

    def written_out(q, k, v):
        qh = q.reshape(b, s, kv, n // kv, h).transpose(0, 2, 3, 1, 4)
        logits = jnp.einsum("bkgsh,bkth->bkgst", qh, k.transpose(0, 2, 1, 3),
                            preferred_element_type=jnp.float32) * h ** -0.5
        logits = logits + jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[:, :, None]
        probs = jax.nn.softmax(logits, axis=-1)
        keep = keep_mask(kd, rate, probs.shape)
        probs = jnp.where(keep, probs / (1 - rate), 0.0)
        out = jnp.einsum("bkgst,bkth->bkgsh", probs.astype(dtype), v.transpose(0, 2, 1, 3),
                         preferred_element_type=jnp.float32)
        return out.transpose(0, 3, 1, 2, 4).reshape(b, s, n, h).astype(dtype)

    def ours(q, k, v):
        return grouped_query_attention(q, k, v, allowed, dropout_rate=rate, dropout_rng=kd,
                                       matmul_backward="operands")

    want, want_vjp = jax.vjp(written_out, q, k, v)
    got, got_vjp = jax.vjp(ours, q, k, v)
    # float32: the same ops, fused differently by XLA (a few float32 ulps). bf16: besides,
    # the 16-bit backward matmuls sum in another order than autodiff's float32 ones (exact
    # products, float32 sums) before rounding to bf16: one bf16 ulp (2^-8 relative) of the
    # largest value.
    tol = 1e-6 if dtype == jnp.float32 else 2.0 ** -8
    for a, w in zip((got, *got_vjp(g)), (want, *want_vjp(g))):
        a, w = np.asarray(a, np.float32), np.asarray(w, np.float32)
        assert np.abs(a - w).max() <= tol * np.abs(w).max()


def test_dot_remat_policies_still_save_the_projections_with_a_16bit_backward():
    """``remat: dots`` saves the projections' outputs; with ``matmul_backward='operands'``
    those are custom-VJP calls, not dot_generals, and are saved by name instead: the same
    number of stacked [L, B, S, ·] activations as with autodiff's plain dots (and more
    than ``remat: full``, so the count can tell)."""
    layers, batch, seq = 3, 2, 9
    config = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=48,
                         num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=8,
                         dtype="bfloat16", param_dtype="bfloat16")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 96, (batch, seq)), jnp.int32)

    def saved(remat, matmul_backward):
        kernels = dataclasses.replace(CPU["native"], matmul_backward=matmul_backward)
        compiled = _compiled_lora_gradient(config.replace(kernels=kernels, remat=remat), ids)[0]
        loop = max(_while_tuples(compiled.as_text()), key=len)
        return loop.count(f"[{layers},{batch},{seq},")
    assert saved("dots", "operands") == saved("dots", "autodiff") > saved("full", "operands")
