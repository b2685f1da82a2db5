"""Orbax checkpoints: the train state and the Grain iterator state together.

Layout: WORKDIR/checkpoints/<step>/{state, data}. Saves are asynchronous and
atomic (Orbax writes to a temporary directory and renames it when complete), so
a run killed mid-save leaves the previous checkpoint as the latest finished one.
Resume order (big_vision): the workdir's own latest checkpoint, then
`config.resume` (another run's checkpoint directory), then initial weights
(`config.init_from`, handled by train.py), then scratch.
"""

import os
from typing import Any

from absl import logging
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


def create_manager(workdir: str, *, max_to_keep: int = 3,
                   save_interval_steps: int = 1,
                   async_save: bool = True) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=save_interval_steps,
      enable_async_checkpointing=async_save,
      create=True,
  )
  return ocp.CheckpointManager(
      directory, options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iter: Any | None = None, *, force: bool = False) -> bool:
  items = {'state': ocp.args.StandardSave(state)}
  if data_iter is not None:
    items['data'] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   data_iter: Any | None = None) -> tuple[Any, int] | None:
  """Restores the newest readable checkpoint into `abstract_state`'s shardings.

  A latest checkpoint that fails to restore (truncated, corrupt) is skipped in
  favour of the previous one, with a warning. Returns (state, step) or None.
  """
  for step in sorted(manager.all_steps(), reverse=True):
    difference = _layout_difference(manager, step, abstract_state)
    if difference:
      # Not damage: another config or bgmat version wrote it. Starting from
      # scratch here would silently bury that run, so stop instead.
      raise ValueError(
          f'The checkpoint at step {step} in {manager.directory} does not fit this run '
          f'({difference}): it was written by another config or bgmat version. Use a '
          'new --workdir, or move the old checkpoints away to start over.')
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many error types for damaged files.
      logging.warning('Checkpoint at step %d in %s cannot be restored (%s: %s); '
                      'trying the previous one.', step, manager.directory,
                      type(e).__name__, e)
      continue
    return restored['state'], step
  return None


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _layout_difference(manager: ocp.CheckpointManager, step: int,
                       abstract_state: Any) -> str | None:
  """How the saved state's layout differs from `abstract_state`, or None.

  Compares the top-level keys and the parameter / BN-statistics trees (plain
  nested dicts in both). Unreadable metadata is left to the restore, which
  skips a damaged checkpoint.
  """
  try:
    metadata = manager.item_metadata(step)['state']
    saved = dict(metadata.tree) if hasattr(metadata, 'tree') else dict(metadata)
  except Exception:  # pylint: disable=broad-except
    return None
  if set(saved) != set(abstract_state):
    return f'state keys {sorted(saved)}, expected {sorted(abstract_state)}'
  for key in ('params', 'batch_stats', 'ema_params'):
    if key in saved and _shapes(saved[key]) != _shapes(abstract_state[key]):
      saved_shapes, wanted = _shapes(saved[key]), _shapes(abstract_state[key])
      differing = sorted(k for k in saved_shapes.keys() | wanted.keys()
                         if saved_shapes.get(k) != wanted.get(k))
      return f'{key} differ at {len(differing)} entries, e.g. {differing[0]}'
  return None


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, for restoring."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore_state_only(checkpoint_dir: str, abstract_state: Any | None = None,
                       step: int | None = None) -> Any:
  """Reads the train state of another run (for stage 2's frozen stage 1, export).

  `checkpoint_dir` is a run's `checkpoints/` directory (or its workdir).
  Without `abstract_state` the arrays come back as host numpy arrays.
  """
  if os.path.isdir(os.path.join(checkpoint_dir, 'checkpoints')):
    checkpoint_dir = os.path.join(checkpoint_dir, 'checkpoints')
  # Both items' handlers registered (only 'state' is read): with 'data' unknown,
  # Orbax warns on every restore that it "could not be restored".
  manager = ocp.CheckpointManager(
      os.path.abspath(checkpoint_dir),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'data': grain.checkpoint.CheckpointHandler()})
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise FileNotFoundError(f'No finished checkpoint in {checkpoint_dir}')
  last_error = None
  for candidate in steps:
    try:
      target = abstract_state
      if target is None:
        # Onto one local device: the checkpoint's own shardings name devices of
        # the run that wrote it (another device count, other processes).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        metadata = manager.item_metadata(candidate)['state']
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            dict(metadata.tree) if hasattr(metadata, 'tree') else dict(metadata))
      restored = manager.restore(
          candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
      manager.close()
      if abstract_state is None:
        return jax.tree.map(np.asarray, restored['state'])
      return restored['state']
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Checkpoint step %d in %s cannot be restored: %s',
                      candidate, checkpoint_dir, e)
      last_error = e
  manager.close()
  raise ValueError(f'No readable checkpoint in {checkpoint_dir}: {last_error}')
