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
