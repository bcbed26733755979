"""The device mesh and the one table that maps logical axis names to mesh axes.

Layers and weights carry only logical names (``WeightSpec.axes``); everything about where an
array lives is decided here. Mesh axes:
  data    pure data parallelism (params replicated)
  fsdp    data parallelism with parameters sharded along ``embed`` (ZeRO-3 style)
  tensor  tensor parallelism over heads / kv heads / MLP / vocab
The batch is split over data × fsdp.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
LOGICAL_AXIS_RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "layers": None,
    "head_dim": None,
    "norm": None,
    "lora_rank": None,
    "seq": None,
}


class ShardingError(ValueError):
    """A mesh that does not fit the model, the batch or the devices."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; one of them may be -1 (= all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = dataclasses.astuple(self)
        if sizes.count(-1) > 1:
            raise ShardingError(f"at most one mesh axis may be -1, got {self}")
        if any(s == 0 or s < -1 for s in sizes):
            raise ShardingError(f"mesh axis sizes must be positive or -1, got {self}")

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        sizes = list(dataclasses.astuple(self))
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ShardingError(f"mesh {self} does not divide {num_devices} devices")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ShardingError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
                                f"{math.prod(sizes)} devices, but {num_devices} are available")
        return tuple(sizes)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over ``devices`` (default: all, across processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    return jax.make_mesh(shape, MESH_AXES, devices=devices,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: Sequence[str | None], rules: Mapping = LOGICAL_AXIS_RULES) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions have the given logical names."""
    used: set[str] = set()
    spec = []
    for axis in axes:
        if axis is None:
            spec.append(None)
            continue
        if axis not in rules:
            raise ShardingError(f"logical axis {axis!r} has no rule in the sharding table")
        mesh_axes = rules[axis]
        names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
        names = tuple(n for n in names if n not in used)  # a mesh axis shards one dim at most
        used.update(names)
        spec.append(names[0] if len(names) == 1 else (names or None))
    return PartitionSpec(*spec)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Pin an activation's sharding by logical axis names, inside ``jax.set_mesh(mesh)``.

    Without it, GSPMD may keep full-batch activations on every device (it propagates the
    weights' fsdp sharding instead of the batch's). Outside a mesh context (single-device
    use, the encoder) it is a no-op.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(axes)
    if any(_axis_size(mesh, entry) > 1 and dim % _axis_size(mesh, entry)
           for dim, entry in zip(x.shape, spec)):
        return x  # e.g. a batch smaller than the data-parallel ways: let the compiler choose
    return jax.lax.with_sharding_constraint(x, spec)


def _axis_size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    names = (entry,) if isinstance(entry, str) else entry
    return math.prod(mesh.shape[n] for n in names)


def named_sharding(mesh: Mesh, shape: Sequence[int], axes: Sequence[str | None],
                   what: str = "array") -> NamedSharding:
    """The sharding of an array with these logical axes; an error if a dimension does not
    divide over its mesh axes (e.g. 3 kv heads over tensor=2)."""
    spec = logical_to_spec(axes)
    for dim, name, entry in zip(shape, axes, spec):
        size = _axis_size(mesh, entry)
        if dim % size:
            raise ShardingError(
                f"{what}: dimension {name!r} of size {dim} does not divide over mesh axes "
                f"{entry} of size {size}; choose a mesh whose {entry} size divides {dim}")
    return NamedSharding(mesh, spec)


def weight_sharding_fn(mesh: Mesh):
    """``sharding_fn`` for ``load_hf_checkpoint``: WeightSpec -> NamedSharding."""
    return lambda spec: named_sharding(mesh, spec.shape, spec.axes, "weight")


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over data × fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch(mesh: Mesh, global_batch_size: int) -> None:
    ways = _axis_size(mesh, BATCH_AXES)
    if global_batch_size % ways:
        raise ShardingError(
            f"global batch size {global_batch_size} does not divide over the {ways} "
            f"data-parallel shards (data × fsdp) of the mesh; use a multiple of {ways}")


def global_batch(mesh: Mesh, local):
    """Assemble each process's numpy batch (any pytree of arrays, e.g. an ``MNTPBatch``) into
    global arrays, each split along its leading axis over data × fsdp.

    Works unchanged on one host and on many (``jax.make_array_from_process_local_data``).
    """
    return jax.tree.map(lambda v: jax.make_array_from_process_local_data(
        batch_sharding(mesh, np.ndim(v)), v), local)
