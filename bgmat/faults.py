"""Preemption, non-finite losses and debug fault injection for the train loop.

* Preemption: SIGTERM makes the loop save a checkpoint at the step it reached
  and return. Multi-host, JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM and picks one step at which
  every process saves (`CheckpointManager.reached_preemption`); a single
  process has no such service, so a Python signal handler sets a flag.
* Non-finite losses (`config.nonfinite`): 'stop' raises before any save, naming
  the first bad step, so the last good checkpoint is never overwritten; 'skip'
  drops the step's update inside the jitted step and counts it in
  `state.skipped_steps` (`stages.TrainState`).
* Debug knobs (`config.debug`), for tests of the above: `nan_at_step` feeds that
  step a NaN image (on the host, so the compiled step is the one every run
  uses, and its loss, gradients and statistics come out NaN the way a bad
  record makes them), `hang_at_step` blocks the loop
  after that step, before its logs and checkpoint, once earlier saves are
  finished, so a test can kill the process at a known point (SIGTERM then
  saves at that step).
"""

import signal
import threading
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

NONFINITE_MODES = ('stop', 'skip')


class NonFiniteLossError(RuntimeError):
  pass


# ---------------------------------------------------------------------------
# Inside the jitted step.
# ---------------------------------------------------------------------------


def guard_nonfinite(step_fn: Callable, mode: str) -> Callable:
  """Wraps `(state, batch, ...) -> (state, metrics)` to add metrics['finite'].

  With mode 'skip' a step whose loss or gradient norm is not finite keeps the
  old state (parameters, optimizer and BN statistics), except that the step
  counter advances (data and RNG move on) and `skipped_steps` counts it.
  """
  if mode not in NONFINITE_MODES:
    raise ValueError(f'config.nonfinite must be one of {NONFINITE_MODES}, got {mode!r}')

  def guarded(state, *args):
    new_state, metrics = step_fn(state, *args)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
    if mode == 'skip':
      kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      new_state = kept.replace(step=new_state.step,
                               skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
    return new_state, dict(metrics, finite=finite)

  return guarded


# ---------------------------------------------------------------------------
# On the host.
# ---------------------------------------------------------------------------


class NonFiniteWatch:
  """Collects each step's on-device `finite` flag without a host sync per
  step; `check()` (before logging or saving) raises naming the first bad step."""

  def __init__(self, mode: str, checkpoint_dir: str):
    self._mode = mode
    self._checkpoint_dir = checkpoint_dir
    self._pending: list[tuple[int, jax.Array]] = []

  def add(self, step: int, finite: jax.Array) -> None:
    if self._mode == 'stop':
      self._pending.append((step, finite))

  def check(self) -> None:
    flags = jax.device_get([flag for _, flag in self._pending])
    bad = [step for (step, _), ok in zip(self._pending, flags) if not bool(ok)]
    self._pending = []
    if bad:
      raise NonFiniteLossError(
          f'Non-finite loss or gradient at step {bad[0]} (config.nonfinite=stop); '
          f'stopped before saving. The last good checkpoint in {self._checkpoint_dir} '
          'is kept; resume from it with a lower learning rate or '
          '--config.nonfinite=skip.')


class Preemption:
  """SIGTERM -> save at an agreed step and stop. Use as a context manager; the
  previous SIGTERM handler is restored on exit."""

  def __init__(self, manager):
    self._manager = manager
    self._requested = threading.Event()
    self._previous = None

  def __enter__(self) -> 'Preemption':
    # Multi-host, JAX's preemption notifier owns SIGTERM (replacing its handler
    # would hide the notice from the other processes). Signal handlers can only
    # be set from the main thread.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    # Only set a flag: the loop saves between steps.
    self._requested.set()

  @property
  def requested(self) -> bool:
    return self._requested.is_set()

  def reached(self, step: int) -> bool:
    """True at the step where this run (all its processes) must save and stop."""
    if jax.process_count() > 1:
      return self._manager.reached_preemption(step)
    return self.requested


def poison_if_asked(config, step: int, batch: dict[str, Any]) -> dict[str, Any]:
  """`batch` (host arrays) with a NaN `image` if `step` (1-based, the number
  the logs show) is `config.debug.nan_at_step`; `batch` itself otherwise."""
  if step != config.debug.nan_at_step:
    return batch
  logging.warning('debug.nan_at_step=%d: a NaN image in this step.', step)
  return dict(batch, image=np.full_like(batch['image'], np.nan))


def hang_if_asked(config, step: int, manager, preemption: Preemption) -> None:
  """Blocks after step `config.debug.hang_at_step` (earlier checkpoints
  finished) until SIGTERM (single process) or a kill."""
  if step != config.debug.hang_at_step:
    return
  manager.wait_until_finished()
  logging.warning('debug.hang_at_step=%d: blocking (finished checkpoints: %s) '
                  'until killed or SIGTERM.', step, sorted(manager.all_steps()))
  while not preemption.requested:
    time.sleep(0.05)


def memory_scalars() -> dict[str, float]:
  """This process's resident set size and, where the backend reports it (GPU,
  TPU; not XLA:CPU), the first local device's memory in use and peak."""
  import psutil  # pylint: disable=g-import-not-at-top
  out = {'memory/host_rss_bytes': float(psutil.Process().memory_info().rss)}
  stats = jax.local_devices()[0].memory_stats() or {}
  for key in ('bytes_in_use', 'peak_bytes_in_use'):
    if key in stats:
      out[f'memory/device_{key}'] = float(stats[key])
  return out


def finite_values(values: dict[str, Any]) -> dict[str, float]:
  return {k: v for k, v in values.items() if np.isfinite(v)}
