"""Pure, jitted train steps: ``step(state, batch, rng) -> (state, metrics)``.

The model is split once into a static graph, the trainable LoRA state and the frozen base
weights. ``TrainState`` carries all three array groups (frozen weights pass through
unchanged; donating them costs nothing), so a step is a pure function of its arguments and
can be jitted with explicit shardings and donation.

Stages:
  mntp        bidirectional forward, masked next-token loss (``losses.mntp_loss``)
  contrastive two encodings (query, document [+ hard negative]) with independent dropout,
              pooled, InfoNCE over the *global* batch (``losses.contrastive_loss``); unsupervised
              SimCSE passes the same sentence as query and document.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax.sharding import NamedSharding

from ..data.batches import ContrastiveBatch, Features, MNTPBatch
from ..lora import FROZEN_FILTER, LORA_FILTER
from ..models.pooling import pool, pool_segments
from ..text.packing import segments_per_row
from ..sharding import replicated
from .losses import lm_head_weight, matryoshka_loss, mntp_loss, same_text_as_positive


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    lora: Any       # nnx.State of LoRA parameters (trained)
    opt_state: Any  # optimizer state, for the LoRA parameters only
    frozen: Any     # nnx.State of the base weights (never updated)


def split_model(model: nnx.Module):
    """(graphdef, lora_state, frozen_state); the model must have a LoRA adapter attached."""
    graphdef, lora, frozen = nnx.split(model, LORA_FILTER, FROZEN_FILTER)
    if not jax.tree.leaves(lora):
        raise ValueError("the model has no LoRA parameters: attach_lora() before training")
    return graphdef, lora, frozen


def init_state(model: nnx.Module, tx: optax.GradientTransformation, mesh) -> tuple[Any, TrainState]:
    """(graphdef, state): the optimizer state exists for the LoRA parameters only.

    Parameters keep the shardings the loader / ``attach_lora`` gave them; anything not yet
    on the mesh (scalars, optimizer counters) is replicated over it.
    """
    graphdef, lora, frozen = split_model(model)
    opt_state = jax.jit(tx.init)(lora)
    state = TrainState(step=jnp.zeros((), jnp.int32), lora=lora, opt_state=opt_state,
                       frozen=frozen)

    def on_mesh(x):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return x
        return jax.device_put(x, replicated(mesh))
    return graphdef, jax.tree.map(on_mesh, state)


# -- losses per stage: (model, batch, rng) -> (loss, metrics) ----------------------------------

def mntp_objective(model, batch: MNTPBatch, rng, *, causal: bool = False):
    hidden = model(batch.input_ids, batch.attention_mask, causal=causal,
                   dropout_rng=rng, lora_dropout=True)
    return mntp_loss(hidden, lm_head_weight(model), batch.predict_positions,
                     batch.predict_labels, softcap=model.config.final_logit_softcapping,
                     matmul_backward=model.config.kernels.matmul_backward,
                     matmul_operands=model.config.kernels.matmul_operands)


def encode_rows(model, input_ids, attention_mask, row_keys=None, *,
                causal: bool = False, positions=None) -> jax.Array:
    """Hidden states [B, S, D] (bidirectional unless ``causal``); with ``row_keys`` [B], row
    i's dropout (attention and LoRA) is drawn from ``row_keys[i]`` alone, so any subset of
    rows (a GradCache chunk) gets exactly the masks it gets in the full batch."""
    if row_keys is None:
        return model(input_ids, attention_mask, causal=causal, positions=positions)
    return model(input_ids, attention_mask, causal=causal, positions=positions,
                 dropout_rng=row_keys, lora_dropout=True)


def pool_view(hidden: jax.Array, view: Features, pooling: str) -> jax.Array:
    """[B, D] float32 text embeddings of one view's hidden states (packed: each row's texts
    pooled within themselves, then put in text order by ``view.slots``)."""
    if not view.packed:
        return pool(hidden, view.attention_mask, view.embed_mask, pooling)
    per_row = segments_per_row(view.input_ids.shape[1])
    pooled = pool_segments(hidden, view.attention_mask, view.embed_mask, pooling, per_row)
    return pooled.reshape(-1, pooled.shape[-1])[view.slots]


def row_keys(rng, rows: int):
    """One dropout key per row of a view (None: no dropout, as in evaluation)."""
    return None if rng is None else jax.random.split(rng, rows)


def encode_view(model, view: Features, rng, *, causal: bool = False) -> jax.Array:
    """Hidden states [R, S, D] of one view's rows in training mode (a dropout key per row)."""
    return encode_rows(model, view.input_ids, view.attention_mask,
                       row_keys(rng, view.input_ids.shape[0]), causal=causal,
                       positions=view.positions)


def embed(model, view: Features, rng, pooling: str, *, causal: bool = False) -> jax.Array:
    """Pooled [B, D] float32 embeddings of one view in training mode."""
    return pool_view(encode_view(model, view, rng, causal=causal), view, pooling)


def embed_views(model, views: list[Features], rngs: list, pooling: str, *,
                causal: bool = False) -> list[jax.Array]:
    """``[embed(model, v, rng) for v, rng in zip(views, rngs)]`` in one forward pass when the
    views share a shape: the rows are concatenated (only token ids move between devices), so
    the layer scan runs once with V× larger matmuls, and every row keeps the dropout key
    ``embed`` would give it."""
    if len({(v.input_ids.shape, v.packed) for v in views}) > 1:
        return [embed(model, v, rng, pooling, causal=causal) for v, rng in zip(views, rngs)]
    ids, mask, positions = (None if getattr(views[0], k) is None else
                            jnp.concatenate([getattr(v, k) for v in views])
                            for k in ("input_ids", "attention_mask", "positions"))
    rows = views[0].input_ids.shape[0]
    keys = None
    if rngs[0] is not None:
        keys = jnp.concatenate([row_keys(rng, rows) for rng in rngs])
    hidden = encode_rows(model, ids, mask, keys, causal=causal, positions=positions)
    return [pool_view(h, v, pooling) for h, v in zip(jnp.split(hidden, len(views)), views)]


def view_keys(rng, views: int) -> list:
    """The dropout keys of the query, document and negative views (independent masks)."""
    return [None] * views if rng is None else list(jax.random.split(rng, 3))[:views]


def false_negatives(batch: ContrastiveBatch, mask_duplicates: bool):
    """The documents left out of each row's softmax: copies of its own positive's text
    (``contrastive.mask_duplicates``), else none."""
    if not mask_duplicates:
        return None
    if batch.duplicates is not None:
        return batch.duplicates
    docs = batch.views[1:]
    return same_text_as_positive(batch.d.input_ids, batch.d.attention_mask,
                                 [v.input_ids for v in docs], [v.attention_mask for v in docs])


def contrastive_objective(model, batch: ContrastiveBatch, rng, *, scale: float,
                          pooling: str = "mean", causal: bool = False,
                          mask_duplicates: bool = True,
                          matryoshka_dims: tuple[int, ...] | None = None):
    """Query/document(/negative) views with independent dropout; in-batch negatives over the
    global batch (the compiler gathers the sharded embeddings for the score matrix), less
    the false negatives of ``mask_duplicates``; summed over the ``matryoshka_dims`` prefixes
    when given (``losses.matryoshka_loss``)."""
    views = batch.views
    if batch.shared_rows:
        # One forward pass over the packed rows; the views differ only in which texts they
        # pool (each text still gets its own dropout masks: its positions are its own).
        hidden = encode_view(model, batch.q, rng, causal=causal)
        q, d, *n = [pool_view(hidden, view, pooling) for view in views]
    else:
        q, d, *n = embed_views(model, views, view_keys(rng, len(views)), pooling,
                               causal=causal)
    loss = matryoshka_loss(q, d, n[0] if n else None, scale=scale,
                           exclude=false_negatives(batch, mask_duplicates), dims=matryoshka_dims)
    return loss, {"loss": loss}


Objective = Callable[[nnx.Module, dict, jax.Array], tuple[jax.Array, dict]]


def make_train_step(graphdef, tx: optax.GradientTransformation, objective: Objective):
    """The pure step ``(state, batch, rng) -> (state, metrics)`` (not yet jitted)."""

    def step(state: TrainState, batch: dict, rng: jax.Array):
        def loss_fn(lora):
            model = nnx.merge(graphdef, lora, state.frozen)
            return objective(model, batch, rng)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.lora)
        updates, opt_state = tx.update(grads, state.opt_state, state.lora)
        lora = optax.apply_updates(state.lora, updates)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads)}
        new_state = state.replace(step=state.step + 1, lora=lora, opt_state=opt_state)
        return new_state, metrics

    return step


def make_eval_step(graphdef, objective: Objective):
    """``(state, batch) -> metrics`` without dropout."""

    def evaluate(state: TrainState, batch: dict):
        model = nnx.merge(graphdef, state.lora, state.frozen)
        return objective(model, batch, None)[1]

    return evaluate


def state_shardings(state: TrainState):
    """The shardings the state's arrays already have (params placed by the loader/LoRA)."""
    return jax.tree.map(lambda x: x.sharding, state)


def jit_train_step(step, state: TrainState, mesh, batch_shardings):
    """jit with explicit in/out shardings; the state is donated (updated in place)."""
    shardings = state_shardings(state)
    return jax.jit(step, in_shardings=(shardings, batch_shardings, replicated(mesh)),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=(0,))


def jit_eval_step(evaluate, state: TrainState, mesh, batch_shardings):
    return jax.jit(evaluate, in_shardings=(state_shardings(state), batch_shardings),
                   out_shardings=replicated(mesh))
