"""Training and evaluation of one stage, as one linear function.

Stages (config.stage):
  'preseg':  DeepLabV3+ -> foreground logits, sigmoid BCE (+ Dice) loss.
  'matting': generator(image, prior) -> alpha with L1 / composition / Laplacian /
             gradient losses, plus, when config.adv.weight > 0, multi-scale
             PatchGAN discriminators (adversarial + feature-matching losses).
             The prior is the frozen stage-1 model's probability
             (config.prior == 'model') or a perturbed ground truth
             (config.prior == 'perturbed_gt'); evaluation always uses the real
             stage-1 model from config.preseg_workdir.

The GAN step computes G's and D's losses in one function of both parameter sets
and takes both gradients from the same forward pass (D sees G's output before
this step's update; G's loss uses D before its update), as in magvit.
"""

import functools
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bgmat import checkpointing
from bgmat import evaluate as eval_lib
from bgmat import faults
from bgmat import input_pipeline
from bgmat import losses
from bgmat import metrics as metrics_lib
from bgmat import runs
from bgmat import sharding
from bgmat import writers


NonFiniteLossError = faults.NonFiniteLossError


# ---------------------------------------------------------------------------
# Models and optimizers from the config.
# ---------------------------------------------------------------------------


build_model = runs.build_model


def make_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_config.lr,
      warmup_steps=min(opt_config.warmup_steps, max(total_steps - 1, 1)),
      decay_steps=max(total_steps, 2), end_value=opt_config.lr * opt_config.final_lr_ratio)
  return optax.chain(
      optax.clip_by_global_norm(opt_config.grad_clip),
      optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                  eps=opt_config.get('eps', 1e-8), weight_decay=opt_config.weight_decay))


def build_networks(config):
  """(model, tx, disc, disc_tx) of a stage; disc and disc_tx are None unless
  the matting stage is adversarial."""
  model = build_model(config.model, dtype=config.dtype)
  tx = make_optimizer(config.opt, config.num_train_steps)
  disc = disc_tx = None
  if config.stage == 'matting' and config.adv.weight > 0:
    disc = build_model(config.disc, dtype=config.dtype)
    disc_tx = make_optimizer(config.disc_opt, config.num_train_steps)
  return model, tx, disc, disc_tx


def sharded_init(config, mesh, networks, rng):
  """(init_fn, abstract_state, shardings): jit `init_fn` with out_shardings,
  so parameters are never materialised unsharded."""
  model, tx, disc, disc_tx = networks
  init_fn = functools.partial(init_state, config=config, model=model, tx=tx,
                              disc=disc, disc_tx=disc_tx)
  abstract_state = jax.eval_shape(init_fn, rng)
  return init_fn, abstract_state, sharding.state_shardings(mesh, abstract_state)


def load_frozen_preseg(preseg_workdir: str):
  """(module, variables) of a trained stage-1 run, from its workdir."""
  stage = runs.load_preseg(preseg_workdir)
  return stage.module, stage.variables


resolve_preseg_workdir = runs.resolve_preseg_workdir


def ema_update(ema, new, step, decay: float):
  """Bias-corrected exponential moving average after update number `step`
  (1-based): ema_t = ema_{t-1} + (1 - d) / (1 - d^t) * (new_t - ema_{t-1}).

  This is exactly Adam's bias-corrected average m_t / (1 - d^t) of the
  zero-started EMA m_t = d m_{t-1} + (1 - d) new_t (Kingma & Ba 2015, sec. 3),
  written as a recurrence on the corrected value: the first update weighs 1,
  so the initial weights leave no trace.
  """
  step = jnp.asarray(step, jnp.float32)
  rate = (1.0 - decay) / (1.0 - jnp.power(jnp.float32(decay), step))
  return jax.tree.map(lambda e, p: e + rate.astype(e.dtype) * (p - e), ema, new)


# ---------------------------------------------------------------------------
# Train state and steps (pure functions).
# ---------------------------------------------------------------------------


def init_state(rng, *, config, model, tx, disc=None, disc_tx=None) -> dict[str, Any]:
  size = config.image_size
  image = jnp.zeros((1, size, size, 3), jnp.float32)
  alpha = jnp.zeros((1, size, size, 1), jnp.float32)
  model_rng, disc_rng = jax.random.split(rng)
  if config.stage == 'preseg':
    variables = model.init({'params': model_rng, 'dropout': model_rng}, image, train=False)
  else:
    variables = model.init(model_rng, image, alpha, train=False)
  state = {
      'step': jnp.zeros((), jnp.int32),
      'params': variables['params'],
      'batch_stats': variables.get('batch_stats', {}),
      'opt_state': tx.init(variables['params']),
      # Steps whose update was dropped (config.nonfinite == 'skip').
      'skipped_steps': jnp.zeros((), jnp.int32),
  }
  if config.stage == 'matting':
    # Moving averages of the parameters and of the BatchNorm statistics (the
    # averaged weights are evaluated with statistics averaged alike).
    state['ema_params'] = variables['params']
    state['ema_batch_stats'] = variables.get('batch_stats', {})
  if disc is not None:
    disc_vars = disc.init(disc_rng, image, alpha, train=False)
    state['disc'] = {'params': disc_vars['params'],
                     'batch_stats': disc_vars.get('batch_stats', {}),
                     'opt_state': disc_tx.init(disc_vars['params'])}
  return state


def preseg_step(state, batch, rng, *, model, tx, config):
  """One pre-segmentation update. batch: image (N,H,W,3), alpha (N,H,W,1)."""
  rng = jax.random.fold_in(rng, state['step'])

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state['batch_stats']}, batch['image'],
        train=True, mutable=['batch_stats'], rngs={'dropout': rng})
    logits = logits.astype(jnp.float32)  # Losses in float32 whatever config.dtype.
    loss = losses.seg_loss(logits, batch['alpha'], bce_weight=config.loss.bce,
                           dice_weight=config.loss.dice)
    loss = faults.inject_nan(loss, state['step'], config)
    return loss, (updates['batch_stats'], logits)

  (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  pred = logits > 0
  target = batch['alpha'] >= 0.5
  iou = jnp.sum(pred & target) / jnp.maximum(jnp.sum(pred | target), 1)
  new_state = dict(state, step=state['step'] + 1, params=params,
                   batch_stats=batch_stats, opt_state=opt_state)
  return new_state, {'loss': loss, 'train_iou': iou,
                     'grad_norm': optax.tree.norm(grads)}


def _prior(batch, preseg_vars, rng, *, preseg_model, config):
  """The matting stage's prior for a training batch, (N, H, W, 1) in [0, 1].

  'perturbed_gt': the batch's perturbed ground truth. 'model': the frozen
  stage-1 probability, computed at 1 / s of the batch's resolution and
  upsampled back, s drawn per step from `config.prior_scales`. `bgmat remove`
  runs stage 1 at the working size and upsamples its output to the photo's
  size (2-8x for camera photos), so the generator must learn to refine priors
  that are coarser than its input, with the errors stage 1 makes at that scale
  (as mask-guided matting trains on degraded guidance masks; Yu et al., MGMatting, AAAI 2021).
  """
  if config.prior == 'perturbed_gt':
    return batch['prior']
  image = batch['image']
  n, height, width, _ = image.shape

  def at_scale(scale):
    def prior(image):
      if scale == 1:
        return runs.preseg_probability(preseg_model, preseg_vars, image)
      small = (max(32, round(height / scale)), max(32, round(width / scale)))
      image = jax.image.resize(image, (n, *small, 3), 'linear', antialias=True)
      prob = runs.preseg_probability(preseg_model, preseg_vars, image)
      return jnp.clip(jax.image.resize(prob, (n, height, width, 1), 'linear'), 0.0, 1.0)
    return prior

  scales = tuple(config.get('prior_scales', (1,)))
  if len(scales) == 1:
    return at_scale(scales[0])(image)
  index = jax.random.randint(rng, (), 0, len(scales))
  return jax.lax.switch(index, [at_scale(s) for s in scales], image)


def matting_step(state, batch, rng, preseg_vars, *, model, tx, disc, disc_tx,
                 preseg_model, config):
  """One matting update (G, and D when adversarial) from one loss function."""
  rng = jax.random.fold_in(rng, state['step'])
  prior = _prior(batch, preseg_vars, rng, preseg_model=preseg_model, config=config)
  weights = config.loss
  unknown = (batch['trimap'] == 0.5).astype(jnp.float32)
  adversarial = disc is not None

  def loss_fn(params):
    alpha, g_updates = model.apply(
        {'params': params['g'], 'batch_stats': state['batch_stats']},
        batch['image'], prior, train=True, mutable=['batch_stats'])
    alpha = alpha.astype(jnp.float32)  # Losses in float32 whatever config.dtype.
    terms = {
        'l1': losses.alpha_l1(alpha, batch['alpha']),
        'l1_unknown': losses.alpha_l1(alpha, batch['alpha'], unknown),
        'comp': losses.composition_l1(alpha, batch['alpha'], batch['fg'], batch['bg'],
                                      batch['image']),
        'lap': losses.laplacian_pyramid_loss(alpha, batch['alpha']),
        'grad': losses.alpha_gradient_loss(alpha, batch['alpha']),
    }
    g_loss = faults.inject_nan(sum(weights[k] * v for k, v in terms.items()),
                               state['step'], config)
    d_loss = jnp.zeros(())
    d_stats = {}
    if adversarial:
      d_vars = {'params': params['d'], 'batch_stats': state['disc']['batch_stats']}
      (real, fake, fake_for_d), d_updates = _three_disc_calls(
          disc, d_vars, batch['image'], batch['alpha'], alpha)
      terms['adv_g'] = losses.adversarial_g_loss([f[0] for f in fake], config.adv.kind)
      terms['feat_match'] = losses.feature_matching_loss(
          [r[1] for r in real], [f[1] for f in fake])
      g_loss = g_loss + config.adv.weight * terms['adv_g'] + config.adv.fm_weight * terms['feat_match']
      d_loss = losses.adversarial_d_loss([r[0] for r in real], [f[0] for f in fake_for_d],
                                         config.adv.kind)
      d_stats = d_updates
    return (g_loss, d_loss), (terms, g_updates['batch_stats'], d_stats)

  params = {'g': state['params']}
  if adversarial:
    params['d'] = state['disc']['params']
  (g_loss, d_loss), vjp_fn, (terms, batch_stats, d_stats) = jax.vjp(
      loss_fn, params, has_aux=True)
  g_grads = vjp_fn((jnp.ones(()), jnp.zeros(())))[0]['g']
  updates, opt_state = tx.update(g_grads, state['opt_state'], state['params'])
  new_params = optax.apply_updates(state['params'], updates)
  number = state['step'] + 1
  new_state = dict(
      state, step=number, params=new_params, batch_stats=batch_stats, opt_state=opt_state,
      ema_params=ema_update(state['ema_params'], new_params, number, config.ema_decay),
      ema_batch_stats=ema_update(state['ema_batch_stats'], batch_stats, number,
                                 config.ema_decay))
  step_metrics = {'loss': g_loss, **terms, 'grad_norm': optax.tree.norm(g_grads)}
  if adversarial:
    d_grads = vjp_fn((jnp.zeros(()), jnp.ones(())))[0]['d']
    d_updates, d_opt_state = disc_tx.update(d_grads, state['disc']['opt_state'],
                                            state['disc']['params'])
    new_state['disc'] = {
        'params': optax.apply_updates(state['disc']['params'], d_updates),
        'batch_stats': d_stats.get('batch_stats', state['disc']['batch_stats']),
        'opt_state': d_opt_state}
    step_metrics['d_loss'] = d_loss
  return new_state, step_metrics


def _three_disc_calls(disc, d_vars, image, alpha_gt, alpha_pred):
  """D on the real matte, on the fake (for G) and on a detached fake (for D)."""
  real, updates = disc.apply(d_vars, image, alpha_gt, train=True, mutable=['batch_stats'])
  d_vars = dict(d_vars, batch_stats=updates.get('batch_stats', d_vars['batch_stats']))
  fake, updates = disc.apply(d_vars, image, alpha_pred, train=True, mutable=['batch_stats'])
  fake_for_d, updates = disc.apply(
      dict(d_vars, batch_stats=updates.get('batch_stats', d_vars['batch_stats'])),
      image, jax.lax.stop_gradient(alpha_pred), train=True, mutable=['batch_stats'])
  as_f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
  return (as_f32(real), as_f32(fake), as_f32(fake_for_d)), updates


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
    with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=1))
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

  # Models.
  total_steps = config.num_train_steps
  model, tx, disc, disc_tx = build_networks(config)
  preseg_model = preseg_vars = None
  if config.stage == 'matting':
    preseg_model, preseg_vars = load_frozen_preseg(resolve_preseg_workdir(config, workdir))
    preseg_vars = jax.device_put(preseg_vars, sharding.replicated(mesh))

  # Sharding: parameters replicated, never materialised unsharded.
  rng = jax.random.key(config.seed, impl=config.get('rng_impl', 'threefry2x32'))
  init_rng, train_rng = jax.random.split(rng)
  init_fn, abstract_state, state_shardings = sharded_init(
      config, mesh, (model, tx, disc, disc_tx), init_rng)
  data_sharding = sharding.batch_sharding(mesh)

  # Checkpoint: resume from the workdir, else init.
  manager = checkpointing.create_manager(
      workdir, max_to_keep=config.keep_checkpoints, async_save=config.async_checkpoints)
  restored = checkpointing.restore_latest(
      manager, checkpointing.abstract_with_shardings(abstract_state, state_shardings),
      train_iter)
  if restored is not None:
    state, start_step = restored
    logging.info('Resumed from step %d in %s', start_step, workdir)
  else:
    state = jax.jit(init_fn, out_shardings=state_shardings)(init_rng)
    start_step = 0
    if config.get('init_from'):
      state = _init_encoder_from(state, config.init_from, state_shardings)

  # Steps (metrics['finite'] added; with config.nonfinite == 'skip' a
  # non-finite step's update is dropped inside the step).
  if config.stage == 'preseg':
    step_fn = functools.partial(preseg_step, model=model, tx=tx, config=config)
    extra_args = ()
  else:
    step_fn = functools.partial(matting_step, model=model, tx=tx, disc=disc, disc_tx=disc_tx,
                                preseg_model=preseg_model, config=config)
    extra_args = (preseg_vars,)
  train_step = jax.jit(faults.guard_nonfinite(step_fn, config.nonfinite),
                       in_shardings=(state_shardings, data_sharding) + (None,) * (1 + len(extra_args)),
                       out_shardings=(state_shardings, None), donate_argnums=0)
  compiled_step = None
  predict = _make_predict(config, model, preseg_model, mesh)

  def run_eval(split: str, step: int, variables) -> dict[str, float]:
    batches = input_pipeline.eval_batches(
        config, split, process_index=batch_block, process_count=jax.process_count(),
        per_process_batch=per_process_batch, max_examples=config.get('max_eval_examples'))
    which = tuple(config.eval_metrics)
    results, samples = eval_lib.evaluate(
        lambda b: predict(variables, preseg_vars, b), batches, mesh, which=which)
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
          batch = sharding.to_global(next(train_iter), mesh)
          if compiled_step is None:
            # Compile first; multi-host, every process then waits for the
            # others (whose compile may take longer than gloo's 30 s).
            compiled_step = train_step.lower(state, batch, train_rng, *extra_args).compile()
            sharding.barrier(f'bgmat_step_compiled_{step}')
          state, step_metrics = compiled_step(state, batch, train_rng, *extra_args)
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
          values['skipped_steps'] = int(state['skipped_steps'].addressable_data(0))
          writer.write_scalars(step, {f'train/{k}': v for k, v in values.items()})
          writer.write_scalars(step, faults.memory_scalars())
          train_metrics = None
        if (step % config.checkpoint_every == 0 or step == total_steps or step == stop_at
            or preempted):
          nonfinite.check()  # Never let a diverged state overwrite a good checkpoint.
          checkpointing.save(manager, step, state, train_iter, force=True)
        if preempted:
          logging.warning('Preempted (SIGTERM): saved a checkpoint at step %d in %s; '
                          'stopping. Run again to resume.', step, manager.directory)
          break
        if config.eval_every and (step % config.eval_every == 0) and step != total_steps:
          run_eval('validation', step, runs.eval_variables(state, config))
      manager.wait_until_finished()
      results = {}
      if step == total_steps and not preempted:
        variables = runs.eval_variables(state, config)
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
      {'params': sharding.to_host(state['params']),
       'batch_stats': sharding.to_host(state['batch_stats'])}, pretrained, drop_head=True)
  logging.info('Encoder initialised from %s', path)
  state = dict(state, params=variables['params'], batch_stats=variables['batch_stats'])
  return jax.device_put(state, state_shardings)


def _make_predict(config, model, preseg_model, mesh):
  """jitted (variables, preseg_vars, batch) -> {'alpha': ..., ['preseg': ...]}."""
  if config.stage == 'preseg':
    def predict(variables, preseg_vars, batch):
      del preseg_vars
      return {'alpha': jax.nn.sigmoid(model.apply(variables, batch['image'], train=False))}
  else:
    def predict(variables, preseg_vars, batch):
      prior = runs.preseg_probability(preseg_model, preseg_vars, batch['image'])
      alpha = model.apply(variables, batch['image'], prior, train=False)
      # The pre-segmentation used directly as alpha: the automatic baseline.
      return {'alpha': alpha, 'preseg': prior}
  return jax.jit(predict, out_shardings=sharding.batch_sharding(mesh))

