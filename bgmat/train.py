"""Training and evaluation of one stage, as one linear function.

The stages (pre-segmentation, matting) are units in `stages.py`: this module
holds the loop around them (mesh, data, checkpoints, hooks, evaluation), with
no branch on which stage it trains.
"""

import os

from absl import logging
import jax
import ml_collections

from bgmat import atomic
from bgmat import checkpointing
from bgmat import evaluate as eval_lib
from bgmat import faults
from bgmat import input_pipeline
from bgmat import metrics as metrics_lib
from bgmat import sharding
from bgmat import stages
from bgmat import writers


NonFiniteLossError = faults.NonFiniteLossError


def sharded_init(mesh, stage: stages.Stage, rng):
  """(init_fn, abstract_state, shardings): jit `init_fn` with out_shardings,
  so parameters are never materialised unsharded."""
  abstract_state = jax.eval_shape(stage.init, rng)
  return stage.init, abstract_state, sharding.state_shardings(mesh, abstract_state)


# ---------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains config.stage in workdir (resuming if possible); returns test metrics.

  Returns {} when the run stops early (config.stop_at_step, or SIGTERM: a
  checkpoint is saved at the step reached). Raises NonFiniteLossError on a
  non-finite loss with config.nonfinite == 'stop' (nothing saved after it).
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    atomic.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=1))
  writer = writers.create_writer(workdir, is_main=is_main)

  # Mesh.
  mesh = sharding.create_mesh(config.mesh)
  per_process_batch = sharding.global_batch_size_ok(config.batch_size, mesh)
  # The block of rows of each global batch that this process's devices hold.
  batch_block = sharding.process_batch_block(mesh, config.batch_size)
  logging.info('Mesh %s, global batch %d, %d per process (block %d), compute dtype %s',
               dict(mesh.shape), config.batch_size, per_process_batch, batch_block,
               config.dtype)

  # Input: the same global batches whatever the number of processes.
  train_ds = input_pipeline.create_train_dataset(
      config, process_index=batch_block, process_count=jax.process_count(),
      per_process_batch=per_process_batch)
  train_iter = iter(train_ds)

  # The stage (models, optimizers, step, predict) and what it keeps frozen
  # (matting: the stage-1 run's variables), replicated.
  total_steps = config.num_train_steps
  stage = stages.get(config)
  frozen = stage.load_frozen(workdir)
  if frozen is not None:
    frozen = jax.device_put(frozen, sharding.replicated(mesh))

  # Sharding: parameters replicated, never materialised unsharded.
  rng = jax.random.key(config.seed, impl=config.get('rng_impl', 'threefry2x32'))
  init_rng, train_rng = jax.random.split(rng)
  init_fn, abstract_state, state_shardings = sharded_init(mesh, stage, init_rng)
  data_sharding = sharding.batch_sharding(mesh)

  # Checkpoint (a plain dict, TrainState.to_dict): resume from the workdir,
  # else init.
  manager = checkpointing.create_manager(
      workdir, max_to_keep=config.keep_checkpoints, async_save=config.async_checkpoints)
  restored = checkpointing.restore_latest(
      manager, checkpointing.abstract_with_shardings(abstract_state.to_dict(),
                                                     state_shardings.to_dict()),
      train_iter)
  if restored is not None:
    state, start_step = stages.TrainState.from_dict(restored[0]), restored[1]
    logging.info('Resumed from step %d in %s', start_step, workdir)
  else:
    state = jax.jit(init_fn, out_shardings=state_shardings)(init_rng)
    start_step = 0
    if config.get('init_from'):
      state = _init_encoder_from(state, config.init_from, state_shardings)

  # Steps (metrics['finite'] added; with config.nonfinite == 'skip' a
  # non-finite step's update is dropped inside the step).
  train_step = jax.jit(faults.guard_nonfinite(stage.step, config.nonfinite),
                       in_shardings=(state_shardings, data_sharding, None, None),
                       out_shardings=(state_shardings, None), donate_argnums=0)
  compiled_step = None
  predict = jax.jit(stage.predict, out_shardings=sharding.batch_sharding(mesh))

  def run_eval(split: str, step: int, variables) -> dict[str, float]:
    batches = input_pipeline.eval_batches(
        config, split, process_index=batch_block, process_count=jax.process_count(),
        per_process_batch=per_process_batch, max_examples=config.get('max_eval_examples'))
    which = tuple(config.eval_metrics)
    results, samples = eval_lib.evaluate(
        lambda b: predict(variables, frozen, b), batches, mesh, which=which)
    writer.write_scalars(step, {f'{split}/{k}': v for k, v in results.items()})
    if is_main and samples is not None:
      keys = ['alpha'] + (['preseg'] if 'preseg' in samples else [])
      writer.write_images(step, {f'{split}/{k}': eval_lib.sample_grid(samples, k)[None]
                                 for k in keys})
      eval_lib.write_results(workdir, split, step, results, samples, keys)
    return results

  # Loop. Hooks on process 0: steps/s, images/s and ETA every log step; an
  # optional profile trace into the workdir.
  train_metrics = None
  step = start_step
  stop_at = min(total_steps, config.get('stop_at_step') or total_steps)
  hooks = []
  if is_main:
    hooks.append(writers.ReportProgress(
        num_train_steps=total_steps, batch_size=config.batch_size, writer=writer,
        every_steps=config.log_every))
    if config.profile_steps:
      # From step 10 after the start (past compilation), earlier in short runs.
      first = start_step + max(1, min(10, stop_at - start_step - config.profile_steps))
      hooks.append(writers.periodic_actions.Profile(
          logdir=workdir, num_profile_steps=config.profile_steps, profile_duration_ms=None,
          first_profile=first, every_secs=None))
  nonfinite = faults.NonFiniteWatch(config.nonfinite, manager.directory)
  preempted = False
  try:
    with writers.metric_writers.ensure_flushes(writer), faults.Preemption(manager) as preemption:
      while step < stop_at:
        with jax.profiler.StepTraceAnnotation('train', step_num=step):
          batch = sharding.to_global(faults.poison_if_asked(config, step + 1, next(train_iter)),
                                     mesh)
          if compiled_step is None:
            # Compile first; multi-host, every process then waits for the
            # others (whose compile may take longer than gloo's 30 s).
            compiled_step = train_step.lower(state, batch, train_rng, frozen).compile()
            sharding.barrier(f'bgmat_step_compiled_{step}')
          state, step_metrics = compiled_step(state, batch, train_rng, frozen)
        step += 1
        finite = step_metrics.pop('finite')
        nonfinite.add(step, finite)
        # 'skip': skipped steps do not count in the averages ('stop' raises).
        # (clu masks need a leading axis.)
        metric = metrics_lib.average_collection(step_metrics).single_from_model_output(
            **{k: v[None] for k, v in step_metrics.items()},
            mask=finite[None] if config.nonfinite == 'skip' else None)
        train_metrics = metric if train_metrics is None else train_metrics.merge(metric)
        for hook in hooks:
          hook(step)
        faults.hang_if_asked(config, step, manager, preemption)
        # Every process reaches the same answer at the same step (multi-host:
        # JAX's preemption sync point), so all of them save below.
        preempted = preemption.reached(step)
        if step % config.log_every == 0 or step == total_steps or preempted:
          nonfinite.check()
          values = faults.finite_values(
              {k: float(v) for k, v in train_metrics.compute().items()})
          values['skipped_steps'] = int(state.skipped_steps.addressable_data(0))
          writer.write_scalars(step, {f'train/{k}': v for k, v in values.items()})
          writer.write_scalars(step, faults.memory_scalars())
          train_metrics = None
        if (step % config.checkpoint_every == 0 or step == total_steps or step == stop_at
            or preempted):
          nonfinite.check()  # Never let a diverged state overwrite a good checkpoint.
          checkpointing.save(manager, step, state.to_dict(), train_iter, force=True)
        if preempted:
          logging.warning('Preempted (SIGTERM): saved a checkpoint at step %d in %s; '
                          'stopping. Run again to resume.', step, manager.directory)
          break
        if config.eval_every and (step % config.eval_every == 0) and step != total_steps:
          run_eval('validation', step, stage.eval_variables(state))
      manager.wait_until_finished()
      results = {}
      if step == total_steps and not preempted:
        variables = stage.eval_variables(state)
        results = {'validation': run_eval('validation', step, variables)}
        if config.get('eval_test', True):
          results['test'] = run_eval('test', step, variables)
  finally:
    # Waits for a save in flight: on an error the last good checkpoint is whole.
    manager.close()
    if hasattr(train_iter, 'close'):
      train_iter.close()
  return results


def _init_encoder_from(state, path: str, state_shardings):
  """Grafts converted encoder weights (`python -m bgmat.convert`) into the state."""
  from bgmat import convert  # pylint: disable=g-import-not-at-top
  pretrained = convert.restore_variables(path)
  variables = convert.graft_encoder(
      {'params': sharding.to_host(state.params),
       'batch_stats': sharding.to_host(state.batch_stats)}, pretrained, drop_head=True)
  logging.info('Encoder initialised from %s', path)
  state = state.replace(params=variables['params'], batch_stats=variables['batch_stats'])
  return jax.device_put(state, state_shardings)
