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
  manager = ocp.CheckpointManager(
      os.path.abspath(checkpoint_dir),
      item_handlers={'state': ocp.StandardCheckpointHandler()})
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  if not steps:
    raise FileNotFoundError(f'No finished checkpoint in {checkpoint_dir}')
  last_error = None
  for candidate in steps:
    try:
      args = (ocp.args.StandardRestore(abstract_state) if abstract_state is not None
              else ocp.args.StandardRestore())
      restored = manager.restore(candidate, args=ocp.args.Composite(state=args))
      manager.close()
      return restored['state']
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Checkpoint step %d in %s cannot be restored: %s',
                      candidate, checkpoint_dir, e)
      last_error = e
  manager.close()
  raise ValueError(f'No readable checkpoint in {checkpoint_dir}: {last_error}')
