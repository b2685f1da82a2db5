"""Mesh, shardings and host<->global array helpers.

Data parallel with `jax.jit` + shardings: the batch is sharded over the
'data' mesh axis, parameters and optimizer state are replicated. Under jit with
a sharded batch, means and gradients are already global: no pmap, no pmean.
"""

from typing import Any, Sequence

import jax
import jax.experimental.multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp


def create_mesh(mesh_axes: Sequence[tuple[str, int]] = (('data', -1),),
                devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds a device mesh from config data such as `[('data', -1)]`.

  One axis size may be -1: it takes all remaining devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  names = [name for name, _ in mesh_axes]
  sizes = [int(size) for _, size in mesh_axes]
  known = int(np.prod([s for s in sizes if s != -1]))
  if sizes.count(-1) > 1:
    raise ValueError(f'At most one mesh axis may be -1, got {list(mesh_axes)}')
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'{len(devices)} devices do not divide into mesh {list(mesh_axes)}')
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f'Mesh {dict(zip(names, sizes))} needs {int(np.prod(sizes))} '
                     f'devices, have {len(devices)}')
  return Mesh(np.asarray(devices).reshape(sizes), names)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every mesh axis."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """Shardings for a train state: every leaf replicated (pure data parallel)."""
  return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def global_batch_size_ok(global_batch_size: int, mesh: Mesh) -> int:
  """Per-process batch size; checks that the global batch divides evenly."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(f'batch_size {global_batch_size} is not divisible by the '
                     f'{num_devices} devices of the mesh')
  if global_batch_size % jax.process_count():
    raise ValueError(f'batch_size {global_batch_size} is not divisible by the '
                     f'{jax.process_count()} processes')
  return global_batch_size // jax.process_count()


def process_batch_block(mesh: Mesh, global_batch_size: int) -> int:
  """Which block of P = global / process_count rows of a global batch this
  process's devices hold under `batch_sharding(mesh)`.

  `jax.make_array_from_process_local_data` places a process's rows on its own
  devices, at the rows those devices own in the mesh: the input pipeline must
  read exactly that block of the global stream for the global batch to be the
  same whatever the number of processes. On the usual meshes (devices ordered
  by process) the block is the process index. Raises if the process's rows are
  not one contiguous block (a mesh interleaving processes along 'data').
  """
  per_process = global_batch_size // jax.process_count()
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
  rows = sorted({i for index in index_map.values()
                 for i in range(*index[0].indices(global_batch_size))})
  start = rows[0] if rows else 0
  if rows != list(range(start, start + per_process)) or start % per_process:
    raise ValueError(
        f'Process {jax.process_index()} holds rows {rows[:8]}... of the global batch '
        f'of {global_batch_size}: not one aligned block of {per_process}. Order the '
        'mesh devices by process along the data axis.')
  return start // per_process


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this process's rows of the batch into global `jax.Array`s.

  The rows go to the global block this process's devices own
  (`process_batch_block`), in order.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def barrier(name: str, timeout_s: int = 1800) -> None:
  """Waits until every process gets here (no-op with one process).

  Uses the coordination service, not a device collective: a process may wait
  here for minutes (e.g. for another one's compilation), whereas the first CPU
  (gloo) collective gives the processes only 30 s to meet.
  """
  if jax.process_count() > 1:
    ocp.multihost.get_barrier_sync_fn()(key=name, timeout_ms=timeout_s * 1000)


def to_host(tree: Any) -> Any:
  """Fetches (possibly non-addressable, replicated) arrays to host numpy."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = jax.experimental.multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
  return jax.tree.map(fetch, tree)
