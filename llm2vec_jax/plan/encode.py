"""The memory of encoding on a mesh: ``LLM2Vec``'s own jitted forward + pooling
(``encoder.jit_encode_step``), compiled for the sharded encoder's parameter and batch
shardings (``encoder_mesh``) on abstract shapes, so an 8B model is planned without a byte of
its weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ..encoder import jit_encode_step
from ..encoder_mesh import param_bytes_per_device, state_shardings
from ..models.transformer import abstract_model
from ..sharding import batch_sharding, check_batch
from .abstract import shard_bytes


def abstract_encoder_state(model_config, mesh):
    """(graphdef, the parameters as ShapeDtypeStructs carrying the sharded encoder's shardings)."""
    graphdef, state = nnx.split(abstract_model(model_config))
    state = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                         state, state_shardings(state, mesh))
    return graphdef, state


def compile_encode(model_config, mesh, rows: int, width: int, *, pooling_mode: str = "mean",
                   per_row: int = 1):
    """The encode step for [rows, width] packed batches, compiled for ``mesh``."""
    check_batch(mesh, rows)
    graphdef, state = abstract_encoder_state(model_config, mesh)
    data = batch_sharding(mesh, 2)
    fn = jit_encode_step(graphdef, jax.tree.map(lambda x: x.dtype, state), True, pooling_mode,
                         per_row, jax.tree.map(lambda x: x.sharding, state), data)
    spec = jax.ShapeDtypeStruct((rows, width), jnp.int32, sharding=data)
    with jax.set_mesh(mesh):
        compiled = fn.lower(state, spec, spec, spec, spec).compile()
    return compiled, state


def encode_memory(model_config, mesh, rows: int, width: int) -> dict:
    """Per device: XLA's memory analysis of the compiled encode step, and the parameter bytes
    from the shardings (``params``; ``params_global`` for the whole model)."""
    compiled, state = compile_encode(model_config, mesh, rows, width)
    ma = compiled.memory_analysis()
    memory = {k: int(getattr(ma, f"{k}_size_in_bytes")) for k in
              ("argument", "output", "temp", "generated_code")}
    memory["total"] = memory["argument"] + memory["output"] + memory["temp"] + memory["generated_code"]
    per_device, total = param_bytes_per_device(model_config, mesh)
    assert per_device == shard_bytes(state)  # the loader's and the planner's view agree
    return {"rows": rows, "width": width, **memory, "params": per_device, "params_global": total}
