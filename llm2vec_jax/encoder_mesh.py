"""Where a sharded encoder's parameters and batches live: the training mesh and its one
logical-axis rules table (``sharding.LOGICAL_AXIS_RULES``), applied to inference.

``LLM2Vec.from_pretrained(..., mesh=MeshConfig(fsdp=8))`` loads each weight straight into its
shards (``checkpoints.hf`` reads, per shard, only the slice that device holds), the batch is
split over the rest of the mesh (data × fsdp), and before anything is read
``check_fits`` compares the parameter bytes one device would hold with what it has.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
from flax import nnx
from jax.sharding import Mesh

from .models.config import ModelConfig
from .models.specs import weight_specs
from .sharding import MESH_AXES, MeshConfig, ShardingError, make_mesh, named_sharding, replicated

GiB = 1024 ** 3


def resolve_mesh(mesh: Mesh | MeshConfig | str, devices: Sequence | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over ``devices`` (default: this process's devices):
    ``mesh`` is one already, a ``MeshConfig``, or text such as ``"fsdp=8"`` / ``"tensor=2,data=4"``
    (missing axes are 1 unless ``data`` is missing too: then it takes the remaining devices)."""
    if isinstance(mesh, Mesh):
        if tuple(mesh.axis_names) != MESH_AXES:
            raise ShardingError(f"the encoder's mesh needs the axes {MESH_AXES}, got "
                                f"{tuple(mesh.axis_names)}; build it with sharding.make_mesh")
        return mesh
    if isinstance(mesh, str):
        mesh = parse_mesh_text(mesh)
    devices = list(jax.local_devices() if devices is None else devices)
    return make_mesh(mesh, devices)


def parse_mesh_text(text: str) -> MeshConfig:
    """``"fsdp=8"`` -> MeshConfig(data=-1, fsdp=8, tensor=1)."""
    sizes: dict[str, int] = {}
    for part in filter(None, text.replace(" ", ",").split(",")):
        axis, _, value = part.partition("=")
        if axis not in MESH_AXES or not value.lstrip("-").isdigit():
            raise ShardingError(f"mesh {text!r}: expected AXIS=N[,AXIS=N] with AXIS in "
                                f"{MESH_AXES}, got {part!r}")
        sizes[axis] = int(value)
    return MeshConfig(**sizes)


def describe(mesh: Mesh) -> str:
    return ",".join(f"{a}={mesh.shape[a]}" for a in MESH_AXES)


def state_shardings(state, mesh: Mesh):
    """The sharding of each leaf of an ``nnx.State``: a weight (a Variable with logical axes)
    by the rules table, anything else replicated."""

    def place(path, var):
        axes = var.get_metadata().get("logical_axes") if isinstance(var, nnx.Variable) else None
        value = var.get_value() if isinstance(var, nnx.Variable) else var
        if axes is None:
            sharding = replicated(mesh)
        else:
            name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
            sharding = named_sharding(mesh, value.shape, axes, f"{name} {tuple(value.shape)}")
        return var.replace(sharding) if isinstance(var, nnx.Variable) else sharding

    return jax.tree_util.tree_map_with_path(place, state,
                                            is_leaf=lambda x: isinstance(x, nnx.Variable))


def param_bytes_per_device(config: ModelConfig, mesh: Mesh) -> tuple[int, int]:
    """(bytes of the base weights one device holds on ``mesh``, bytes of all of them)."""
    itemsize = jax.numpy.dtype(config.param_dtype).itemsize
    per_device = total = 0
    for group in weight_specs(config).values():
        for name, spec in group.items():
            sharding = named_sharding(mesh, spec.shape, spec.axes, f"weight {name!r}")
            per_device += math.prod(sharding.shard_shape(spec.shape)) * itemsize
            total += math.prod(spec.shape) * itemsize
    return per_device, total


def device_memory(mesh: Mesh) -> int | None:
    """The memory each device of ``mesh`` can hold (the smallest), or None when the backend
    does not say (XLA:CPU devices report no limit)."""
    limits = []
    for device in mesh.devices.flat:
        stats = device.memory_stats() if device.process_index == jax.process_index() else None
        if stats and stats.get("bytes_limit"):
            limits.append(int(stats["bytes_limit"]))
    return min(limits) if limits else None


def check_fits(config: ModelConfig, mesh: Mesh, memory_per_device: int | None = None) -> int:
    """The parameter bytes one device holds on ``mesh``; a ``ShardingError`` naming bytes needed
    and available per device when they exceed ``memory_per_device`` (default: what the devices
    report; no check where they report nothing). Activations come on top of this."""
    needed, total = param_bytes_per_device(config, mesh)
    available = memory_per_device if memory_per_device is not None else device_memory(mesh)
    if available is not None and needed > available:
        ways = math.ceil(total / available)
        raise ShardingError(
            f"the model does not fit the mesh {describe(mesh)}: its {config.param_dtype} "
            f"parameters alone need {needed} bytes ({needed / GiB:.2f} GiB) per device, but a "
            f"device has {available} bytes ({available / GiB:.2f} GiB); shard them over at "
            f"least {ways} devices (e.g. mesh='fsdp={ways}' or 'tensor=..,fsdp=..'), or load "
            f"them in a 16-bit dtype")
    return needed
