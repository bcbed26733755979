"""Real weights: SmolLM2-135M converted from its GGUF by our converter, against what the
PyTorch reference produced (tests/fixtures/smollm2) and the known greedy continuation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from llm2vec_jax import load_hf_checkpoint
from reference_oracle import needs_reference, reference_embeddings


@pytest.fixture(scope="module")
def model(smollm2_dir):
    return load_hf_checkpoint(smollm2_dir)


def exact_hidden(smollm2_dir, ids, mask, *, causal):
    """HF PyTorch in float64: the exact answer the float32 implementations approximate."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_dir, dtype=torch.float64, attn_implementation="eager").eval()
    bsz, seq = ids.shape
    mask_t = torch.tensor(mask)
    if causal:
        attention = mask_t
    else:
        attention = torch.zeros(bsz, 1, seq, seq, dtype=torch.float64)
        attention.masked_fill_(mask_t[:, None, None, :] == 0, torch.finfo(torch.float64).min)
    with torch.no_grad():
        return model.model(input_ids=torch.tensor(ids).long(),
                           attention_mask=attention).last_hidden_state.numpy()


def test_causal_hidden_states_match_reference(model, reference_fixtures):
    ids = reference_fixtures["hidden/input_ids"]
    mask = reference_fixtures["hidden/attention_mask"]
    assert (mask[:, 0] == 0).any(), "the fixture batch is left-padded"
    got = np.asarray(model(ids, mask, causal=True))
    # A left-pad query row sees no key at all in causal mode; such rows carry no meaning
    # (the reference un-masks them, we give them a uniform distribution): real tokens only.
    real = mask.astype(bool)
    err = np.abs(got[real] - reference_fixtures["hidden/causal"][real]).max()
    assert err <= 1e-3, f"max abs diff {err}"


def test_bidirectional_hidden_states_match_reference(model, reference_fixtures, smollm2_dir):
    """≤ 1e-3 against the reference wherever float32 determines the answer to that precision.

    SmolLM2 was never trained bidirectionally and a few tokens of this batch are
    ill-conditioned: PyTorch's own float32 result (the fixture) is 1.6e-3 away from the exact
    float64 answer there, so no float32 implementation can promise 1e-3 agreement with it.
    We compare every real token whose fixture value is within 1e-4 of exact (53 of 60 here)
    and bound the rest against the exact answer (docs/numerics.md has the analysis).
    """
    ids = reference_fixtures["hidden/input_ids"]
    mask = reference_fixtures["hidden/attention_mask"]
    ref = reference_fixtures["hidden/bidirectional"]
    got = np.asarray(model(ids, mask, causal=False))
    exact = exact_hidden(smollm2_dir, ids, mask, causal=False)
    fixture_error = np.abs(ref - exact).max(-1)
    determined = mask.astype(bool) & (fixture_error <= 1e-4)
    assert determined.sum() >= 50
    err = np.abs(got - ref).max(-1)
    assert err[determined].max() <= 1e-3, f"max abs diff {err[determined].max()}"
    # Pad rows attend to every real token in bidirectional mode: they are compared too.
    pad = ~mask.astype(bool)
    assert np.abs(got[pad] - exact[pad]).max() <= 1e-2
    assert np.abs(got[~pad] - exact[~pad]).max() <= 1e-2


def greedy_continuation(model, tokenizer, prompt: str, new_tokens: int, width: int = 32) -> str:
    """Greedy decoding without a KV cache: one jitted causal forward on a fixed width."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def next_token(state, ids, mask, last):
        m = nnx.merge(graphdef, state)
        hidden = m(ids, mask, causal=True)
        return jnp.argmax(m.logits(hidden[0, last]))

    tokens = tokenizer(prompt)["input_ids"]
    for _ in range(new_tokens):
        ids = np.full((1, width), tokenizer.pad_token_id, np.int32)
        mask = np.zeros((1, width), np.int32)
        ids[0, :len(tokens)], mask[0, :len(tokens)] = tokens, 1
        tokens.append(int(next_token(state, ids, mask, len(tokens) - 1)))
    return tokenizer.decode(tokens[len(tokenizer(prompt)["input_ids"]):])


def test_greedy_generation(model, smollm2_dir):
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    text = greedy_continuation(model, tokenizer, "The capital of France is", 20)
    assert text == " Paris.\n\nThe answer is: 2018-01-22 "


@needs_reference
@pytest.mark.parametrize("bidirectional", [True, False])
def test_reference_embeds_our_converted_smollm2_as_we_do(smollm2_dir, bidirectional):
    """Real weights, the reference's own environment: llm2vec 0.2.3 loads the directory our
    converter wrote, unchanged, and embeds 16 STS-B sentences. Its float64 run is the exact
    answer. Our float32 embeddings must be as close to it as the reference's own float32
    ones, up to the 2x of XLA:CPU's YNNPACK GEMM, whose max rounding error on the same
    product is up to 2x that of the reference's sgemm (docs/numerics.md; measured here,
    causal: ours 3.2e-5 vs the reference's 2.1e-5, and 1.7e-5 with XLA's GEMM fusion
    off). The 1e-5 of the tiny-model tests is below what
    float32 can hold for these weights (docs/numerics.md, *Interop floor*: the reference's
    float32 is 3.8e-3 / 3.4e-5 from exact, bidirectional / causal). Causal embeddings are
    also held within 1e-4 of the reference's float32 (3.4e-5 measured on 64 sentences)."""
    from llm2vec_jax import LLM2Vec
    from llm2vec_jax.evaluation import load_sts

    sts = load_sts("sample:stsb-dev")
    texts = list(sts.sentences1[:8]) + list(sts.sentences2[:8])
    ours = LLM2Vec.from_pretrained(smollm2_dir, bidirectional=bidirectional,
                                   pooling_mode="mean", max_length=512).encode(
        texts, batch_size=2, show_progress_bar=False)
    theirs = reference_embeddings(smollm2_dir, texts, bidirectional=bidirectional)
    exact = reference_embeddings(smollm2_dir, texts, bidirectional=bidirectional,
                                 dtype="float64")
    ours_error = np.max(np.abs(ours - exact))
    reference_error = np.max(np.abs(theirs - exact))
    assert ours_error <= 2 * reference_error, (ours_error, reference_error)
    if not bidirectional:
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
