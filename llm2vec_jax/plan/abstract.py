"""The training state and batch as sharded ``jax.ShapeDtypeStruct``s: what the loop would hold
on the mesh, with no array of the model's size ever allocated."""

from __future__ import annotations

import functools
import math

import jax
from flax import nnx
from jax.sharding import NamedSharding

from ..data.batches import ContrastiveBatch, MNTPBatch
from ..data.mntp import predict_slots
from ..lora import FROZEN_FILTER, LORA_FILTER, attach_lora
from ..models.transformer import Transformer
from ..sharding import batch_sharding, check_batch, named_sharding, replicated
from ..train.steps import TrainState


def _variable_sds(mesh, where: str):
    """Variable -> the same Variable holding a ShapeDtypeStruct sharded by its logical axes."""

    def convert(path, var):
        if not isinstance(var, nnx.Variable):
            return var
        value = var.get_value()
        axes = var.get_metadata().get("logical_axes")
        name = where + "/" + "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        sharding = named_sharding(mesh, value.shape, axes, f"{name} {tuple(value.shape)}")
        return var.replace(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding))
    return convert


def abstract_state(model_config, lora_config, tx, mesh):
    """(graphdef, TrainState of ShapeDtypeStructs with the loop's shardings, LoRA size)."""

    def build():
        model = Transformer(model_config, rngs=nnx.Rngs(0))
        attach_lora(model, lora_config)
        return model

    model = nnx.eval_shape(build)  # traced: no weight is materialised
    graphdef, lora, frozen = nnx.split(model, LORA_FILTER, FROZEN_FILTER)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    frozen = jax.tree_util.tree_map_with_path(_variable_sds(mesh, "frozen"), frozen, is_leaf=is_var)
    lora = jax.tree_util.tree_map_with_path(_variable_sds(mesh, "lora"), lora, is_leaf=is_var)
    n_lora = sum(math.prod(x.shape) for x in jax.tree.leaves(lora))
    # The loop builds the optimizer state with a plain jax.jit(tx.init)(lora): take the
    # shardings that compile chooses, not ones we would like it to have.
    init = jax.jit(tx.init).lower(lora).compile()
    opt_shapes = jax.eval_shape(tx.init, lora)
    opt_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=_on_mesh(sh, mesh)),
        opt_shapes, init.output_shardings)
    step = jax.ShapeDtypeStruct((), jax.numpy.int32, sharding=replicated(mesh))
    return graphdef, TrainState(step=step, lora=lora, opt_state=opt_state, frozen=frozen), n_lora


def _on_mesh(sharding, mesh):
    # init_state replicates whatever is not already a NamedSharding on the mesh.
    if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
        return sharding
    return replicated(mesh)


def abstract_batch(stage: str, mesh, batch: int, seq: int, mlm_probability: float):
    """The global batch the loop feeds the step, as sharded ShapeDtypeStructs."""
    check_batch(mesh, batch)
    sharding_fn = functools.partial(batch_sharding, mesh)
    if stage == "mntp":
        return MNTPBatch.abstract(batch, seq, predict_slots(seq, mlm_probability), sharding_fn)
    return ContrastiveBatch.abstract(batch, seq, negatives=stage == "supervised",
                                     sharding_fn=sharding_fn)


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * x.dtype.itemsize
    return total


def global_bytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
