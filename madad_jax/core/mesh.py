"""The device mesh and the shardings of batches and training state.

The mesh has two axes: ``data`` (pure data parallelism) and ``fsdp`` (data parallelism whose
devices also split the parameters and optimizer state). A batch is split over both axes.
Parameters are either replicated or, with ``mesh.param_sharding = "fsdp"``, split along
their largest axis that the ``fsdp`` size divides.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from madad_jax.core.errors import InputError

BATCH_AXES = ("data", "fsdp")
# Leaves smaller than this stay replicated under FSDP: splitting them saves nothing.
FSDP_MIN_SIZE = 2**12


def mesh_shape(config, num_devices: int | None = None) -> tuple[int, int]:
    """`(data, fsdp)` sizes; `data = -1` takes every device the `fsdp` axis leaves."""
    n = jax.device_count() if num_devices is None else num_devices
    data, fsdp = int(config.mesh.data), int(config.mesh.fsdp)
    if fsdp == -1:
        fsdp = n // max(data, 1) if data != -1 else n
    if data == -1:
        if fsdp < 1 or n % fsdp:
            raise InputError(f"mesh.fsdp={fsdp} does not divide the {n} devices")
        data = n // fsdp
    if data * fsdp != n:
        raise InputError(f"mesh data={data} x fsdp={fsdp} != {n} devices")
    return data, fsdp


def make_mesh(config, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(config, len(devices))
    return jax.make_mesh(shape, BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def local_mesh(num_devices: int | None = None) -> Mesh:
    """A mesh of this process's first `num_devices` devices (default: all), all on `data`."""
    devices = jax.local_devices()
    devices = devices[: num_devices or len(devices)]
    return jax.make_mesh((len(devices), 1), BATCH_AXES, axis_types=(AxisType.Auto,) * 2,
                         devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = FSDP_MIN_SIZE) -> P:
    """Split the largest axis divisible by `fsdp`; replicate small or indivisible leaves."""
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(tree: Any, mesh: Mesh, param_sharding: str = "replicated") -> Any:
    """A NamedSharding for every leaf of a (possibly abstract) pytree.

    The rule depends only on each leaf's shape, so parameters, their optimizer moments and
    their EMA copies land on the same devices.
    """
    if param_sharding not in ("replicated", "fsdp"):
        raise InputError(
            f"mesh.param_sharding must be 'replicated' or 'fsdp', not {param_sharding!r}"
        )
    fsdp = mesh.shape["fsdp"] if param_sharding == "fsdp" else 1

    def one(leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, fsdp_spec(shape, fsdp))

    return jax.tree.map(one, tree)


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Assemble this process's slice of the global batch into global arrays."""
    nproc = jax.process_count()

    def one(x):
        x = np.asarray(x)
        shape = (x.shape[0] * nproc, *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return {k: one(v) for k, v in local.items()}
