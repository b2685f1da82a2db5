"""Preemption (SIGTERM), kill -9, damaged checkpoints and non-finite losses.

Each interrupted run is compared with the shared uninterrupted reference run
of `test_multihost.py` (same config, same 4-device layout: bitwise equal).
"""

import os
import shutil
import signal

from absl import logging
import jax
import numpy as np
import pytest

from bgmat import checkpointing
from bgmat import sharding
from bgmat import stages
from bgmat import train
from bgmat import writers
from tests import test_multihost as runs

# Every test here trains (tests/conftest.py: slow).
pytestmark = pytest.mark.slow


def _checkpoint_steps(workdir):
  directory = os.path.join(workdir, 'checkpoints')
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _interrupt(tiny_data, tmp_path, how):
  """Runs bgmat.main (4 devices) until it blocks after step 3, then `how`s it."""
  workdir = str(tmp_path / 'run')
  command = runs.main_command(tiny_data, workdir, '--config.debug.hang_at_step=3')
  with runs.started([command], runs.subprocess_env(4), str(tmp_path)) as procs:
    (proc, log), = procs
    runs.wait_for_text(proc, log, 'debug.hang_at_step=3: blocking', timeout=300)
    proc.send_signal(how)
    code = proc.wait(timeout=120)
  return workdir, code, log


def test_sigterm_saves_at_the_step_reached_and_resumes(tiny_data, tmp_path):
  reference = runs.reference_run(tiny_data, str(tmp_path.parent))
  workdir, code, log = _interrupt(tiny_data, tmp_path, signal.SIGTERM)
  assert code == 0, runs.tail(log)
  assert 'Preempted (SIGTERM): saved a checkpoint at step 3' in runs.tail(log, 10**6)
  assert _checkpoint_steps(workdir) == [2, 3]
  results = train.train_and_evaluate(runs.tiny_config(tiny_data), workdir)
  runs.assert_same_run(reference, workdir, results)


def test_kill9_resumes_from_the_last_finished_checkpoint(tiny_data, tmp_path):
  reference = runs.reference_run(tiny_data, str(tmp_path.parent))
  workdir, code, log = _interrupt(tiny_data, tmp_path, signal.SIGKILL)
  assert code == -signal.SIGKILL, runs.tail(log)
  assert _checkpoint_steps(workdir) == [2]
  # A save of step 4 that never finished: Orbax's temporary directory.
  unfinished = os.path.join(workdir, 'checkpoints', '4.orbax-checkpoint-tmp-1700000000')
  os.makedirs(os.path.join(unfinished, 'state'))
  with open(os.path.join(unfinished, 'state', 'partial'), 'wb') as f:
    f.write(b'\0' * 100)
  results = train.train_and_evaluate(runs.tiny_config(tiny_data), workdir)
  runs.assert_same_run(reference, workdir, results)
  assert _checkpoint_steps(workdir) == [2, 4, 6]


def _abstract_state(config):
  mesh = sharding.create_mesh(config.mesh)
  key = jax.random.key(0, impl=config.rng_impl)
  _, abstract, shardings = train.sharded_init(mesh, stages.get(config), key)
  return checkpointing.abstract_with_shardings(abstract.to_dict(), shardings.to_dict())


def test_damaged_latest_checkpoint_is_skipped(tiny_data, tmp_path, caplog):
  reference = runs.reference_run(tiny_data, str(tmp_path.parent))
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference['workdir'], workdir)
  # Step 6 truncated (every file of its state emptied), step 4 intact.
  damaged = 0
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints', '6', 'state')):
    for name in files:
      with open(os.path.join(root, name), 'wb'):
        damaged += 1
  assert damaged
  manager = checkpointing.create_manager(workdir, async_save=False)
  with caplog.at_level(logging.WARNING):
    state, step = checkpointing.restore_latest(
        manager, _abstract_state(runs.tiny_config(tiny_data)))
  manager.close()
  assert step == 4
  assert 'Checkpoint at step 6' in caplog.text and 'trying the previous one' in caplog.text
  expected = checkpointing.restore_state_only(reference['workdir'], step=4)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(sharding.to_host(state))):
    np.testing.assert_array_equal(a, b)
  # Deleted files: the reader of another run's state falls back the same way.
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '6', 'state'))
  for a, b in zip(jax.tree.leaves(expected),
                  jax.tree.leaves(checkpointing.restore_state_only(workdir))):
    np.testing.assert_array_equal(a, b)


def test_checkpoint_of_another_layout_is_an_error_not_damage(tiny_data, tmp_path):
  reference = runs.reference_run(tiny_data, str(tmp_path.parent))
  config = runs.tiny_config(tiny_data)
  abstract = _abstract_state(config)
  manager = checkpointing.create_manager(reference['workdir'], async_save=False)
  # An older state layout (no skipped_steps) and another model's parameters.
  older = {k: v for k, v in abstract.items() if k != 'skipped_steps'}
  with pytest.raises(ValueError, match=r'step 6 .*does not fit this run.*state keys'):
    checkpointing.restore_latest(manager, older)
  other = dict(abstract, params=dict(abstract['params'], extra={'kernel': abstract['step']}))
  with pytest.raises(ValueError, match=r'params differ at 1 entries'):
    checkpointing.restore_latest(manager, other)
  manager.close()


def test_nan_stops_before_saving(tiny_data, tmp_path):
  reference = runs.reference_run(tiny_data, str(tmp_path.parent))
  workdir = str(tmp_path / 'run')
  with pytest.raises(train.NonFiniteLossError, match='at step 3 .*last good checkpoint'):
    train.train_and_evaluate(runs.tiny_config(tiny_data, nan_at_step=3), workdir)
  assert _checkpoint_steps(workdir) == [2]
  expected = checkpointing.restore_state_only(reference['workdir'], step=2)
  for a, b in zip(jax.tree.leaves(expected),
                  jax.tree.leaves(checkpointing.restore_state_only(workdir))):
    np.testing.assert_array_equal(a, b)


def _adam_count(state):
  counts = [int(v) for path, v in jax.tree_util.tree_leaves_with_path(state['opt_state'])
            if 'count' in jax.tree_util.keystr(path)]
  return max(counts)


def test_nan_step_is_skipped(tiny_data, tmp_path):
  reference = runs.reference_run(tiny_data, str(tmp_path.parent))
  workdir = str(tmp_path / 'run')
  config = runs.tiny_config(tiny_data, nan_at_step=3)
  config.nonfinite = 'skip'
  results = train.train_and_evaluate(config, workdir)
  assert results['test'] and all(np.isfinite(v) for v in results['test'].values())
  records = writers.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  skipped = {r['step']: r['train/skipped_steps'] for r in records if 'train/skipped_steps' in r}
  assert skipped == {1: 0, 2: 0, 3: 1, 4: 1, 5: 1, 6: 1}
  losses = runs.losses_by_step(workdir)
  assert 3 not in losses  # The only step of its log window was skipped.
  np.testing.assert_allclose([losses[1], losses[2]],
                             [reference['losses'][1], reference['losses'][2]], rtol=1e-6)
  state = checkpointing.restore_state_only(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
  assert int(state['skipped_steps']) == 1 and int(state['step']) == 6
  # One of the six updates was dropped: the optimizer took five steps.
  assert _adam_count(state) == _adam_count(reference['state']) - 1 == 5
