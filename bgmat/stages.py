"""The two trainable stages as units behind one interface, and the train state.

  stage = stages.get(config)            # config.stage: 'preseg' | 'matting'
  state = stage.init(rng)               # a TrainState
  frozen = stage.load_frozen(workdir)   # what the step needs besides the state
  state, metrics = stage.step(state, batch, rng, frozen)
  outputs = stage.predict(stage.eval_variables(state), frozen, batch)

Stages:
  'preseg':  DeepLabV3+ -> foreground logits, sigmoid BCE (+ Dice) loss.
             `frozen` is None.
  'matting': generator(image, prior) -> alpha with L1 / composition / Laplacian /
             gradient losses, plus, when config.adv.weight > 0, multi-scale
             PatchGAN discriminators (adversarial + feature-matching losses).
             The prior is the frozen stage-1 model's probability
             (config.prior == 'model') or a perturbed ground truth
             (config.prior == 'perturbed_gt'); evaluation always uses the real
             stage-1 model from config.preseg_workdir. `frozen` is that stage-1
             run's variables (its module is held by the stage).

The GAN step computes G's and D's losses in one function of both parameter sets
and takes both gradients from the same forward pass (D sees G's output before
this step's update; G's loss uses D before its update), as in magvit.

Everything here is a pure function of its arguments (jit-able); the loop, the
checkpoints and the data live in `train.py`.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from bgmat import losses
from bgmat import runs
from bgmat import trimap as trimap_lib


# ---------------------------------------------------------------------------
# The train state.
# ---------------------------------------------------------------------------


@flax.struct.dataclass
class DiscState:
  """The discriminator's part of an adversarial matting run's state."""
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainState:
  """What one training step reads and writes (a pytree; every leaf an array).

  Attributes:
    step: int32 scalar, updates done (including skipped ones).
    params, batch_stats: the network's live variables.
    opt_state: its optax state.
    skipped_steps: int32 scalar, steps whose update was dropped
      (config.nonfinite == 'skip').
    ema_params, ema_batch_stats: matting, and pre-segmentation with
      `config.ema_decay` > 0 (else None): bias-corrected
      moving averages of the parameters and of the BatchNorm statistics
      (`ema_update`); the averaged weights are evaluated with statistics
      averaged alike.
    disc: adversarial matting only (else None).

  Checkpoints hold `to_dict()` (a plain dict of the fields that are not None),
  so the on-disk layout is the same as before this class existed.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  skipped_steps: jax.Array
  ema_params: Any = None
  ema_batch_stats: Any = None
  disc: DiscState | None = None

  def to_dict(self) -> dict[str, Any]:
    out = {}
    for name in self.__dataclass_fields__:  # pylint: disable=no-member
      value = getattr(self, name)
      if value is None:
        continue
      out[name] = (dict(params=value.params, batch_stats=value.batch_stats,
                        opt_state=value.opt_state) if name == 'disc' else value)
    return out

  @classmethod
  def from_dict(cls, tree: dict[str, Any]) -> 'TrainState':
    """Inverse of `to_dict`.

    Raises:
      TypeError: a field is missing or unknown (not a bgmat train state).
    """
    fields = dict(tree)
    if fields.get('disc') is not None:
      fields['disc'] = DiscState(**fields['disc'])
    return cls(**fields)


# ---------------------------------------------------------------------------
# Shared pieces.
# ---------------------------------------------------------------------------


def make_optimizer(opt_config, total_steps: int) -> optax.GradientTransformation:
  """AdamW with global-norm clipping and a warmup-cosine learning rate."""
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_config.lr,
      warmup_steps=min(opt_config.warmup_steps, max(total_steps - 1, 1)),
      decay_steps=max(total_steps, 2), end_value=opt_config.lr * opt_config.final_lr_ratio)
  return optax.chain(
      optax.clip_by_global_norm(opt_config.grad_clip),
      optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                  eps=opt_config.get('eps', 1e-8), weight_decay=opt_config.weight_decay))


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


def _new_state(variables, tx) -> TrainState:
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=variables['params'],
      batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(variables['params']),
      skipped_steps=jnp.zeros((), jnp.int32))


class Stage:
  """One trainable stage (module doc). Subclasses set `name` and implement
  `init`, `step` and `predict`; `load_frozen` defaults to nothing."""

  name = ''

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = runs.build_model(config.model, dtype=config.dtype)
    self.tx = make_optimizer(config.opt, config.num_train_steps)

  def _dummy_inputs(self):
    size = self.config.image_size
    return (jnp.zeros((1, size, size, 3), jnp.float32),
            jnp.zeros((1, size, size, 1), jnp.float32))

  def init(self, rng) -> TrainState:
    raise NotImplementedError

  def load_frozen(self, workdir: str) -> Any:
    """What `step` and `predict` need besides the state (host arrays), for a
    run in `workdir`; None when nothing."""
    del workdir
    return None

  def step(self, state: TrainState, batch, rng, frozen) -> tuple[TrainState, dict]:
    raise NotImplementedError

  def eval_variables(self, state: TrainState) -> dict[str, Any]:
    """The variables the run is evaluated with (`runs.eval_variables`)."""
    return runs.eval_variables(state.to_dict(), self.config)

  def predict(self, variables, frozen, batch) -> dict[str, jax.Array]:
    """{'alpha': (N, H, W, 1) in [0, 1], ...} of an evaluation batch (jit-able)."""
    raise NotImplementedError


class PresegStage(Stage):
  """Stage 1: DeepLabV3+ trained on binary masks (module doc)."""

  name = 'preseg'

  def init(self, rng) -> TrainState:
    image, _ = self._dummy_inputs()
    model_rng, _ = jax.random.split(rng)
    variables = self.model.init({'params': model_rng, 'dropout': model_rng}, image, train=False)
    state = _new_state(variables, self.tx)
    if self.config.get('ema_decay', 0.0):
      state = state.replace(ema_params=variables['params'],
                            ema_batch_stats=variables.get('batch_stats', {}))
    return state

  def step(self, state, batch, rng, frozen):
    """One update. batch: image (N,H,W,3), alpha (N,H,W,1); `frozen` unused."""
    del frozen
    model, tx, config = self.model, self.tx, self.config
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['image'],
          train=True, mutable=['batch_stats'], rngs={'dropout': rng})
      logits = logits.astype(jnp.float32)  # Losses in float32 whatever config.dtype.
      loss = losses.seg_loss(logits, batch['alpha'], bce_weight=config.loss.bce,
                             dice_weight=config.loss.dice,
                             lovasz_weight=config.loss.get('lovasz', 0.0))
      return loss, (updates['batch_stats'], logits)

    (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    pred = logits > 0
    target = batch['alpha'] >= 0.5
    iou = jnp.sum(pred & target) / jnp.maximum(jnp.sum(pred | target), 1)
    number = state.step + 1
    new_state = state.replace(step=number, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    if state.ema_params is not None:
      new_state = new_state.replace(
          ema_params=ema_update(state.ema_params, params, number, config.ema_decay),
          ema_batch_stats=ema_update(state.ema_batch_stats, batch_stats, number,
                                     config.ema_decay))
    return new_state, {'loss': loss, 'train_iou': iou, 'grad_norm': optax.tree.norm(grads)}

  def predict(self, variables, frozen, batch):
    del frozen
    return {'alpha': runs.preseg_probability(self.model, variables, batch['image'])}


class MattingStage(Stage):
  """Stage 2: the residual matting generator, adversarial when
  config.adv.weight > 0 (module doc)."""

  name = 'matting'

  def __init__(self, config):
    super().__init__(config)
    self.disc = self.disc_tx = None
    if config.adv.weight > 0:
      self.disc = runs.build_model(config.disc, dtype=config.dtype)
      self.disc_tx = make_optimizer(config.disc_opt, config.num_train_steps)
    self.preseg_model = None  # set by load_frozen
    # The generator as evaluated (runs.inference_model_config: the
    # evaluation-time guided filter, if any); same parameters as self.model.
    self.eval_model = runs.build_model(runs.inference_model_config(config), dtype=config.dtype)

  def init(self, rng) -> TrainState:
    image, alpha = self._dummy_inputs()
    model_rng, disc_rng = jax.random.split(rng)
    variables = self.model.init(model_rng, image, alpha, train=False)
    state = _new_state(variables, self.tx).replace(
        ema_params=variables['params'], ema_batch_stats=variables.get('batch_stats', {}))
    if self.disc is not None:
      disc_vars = self.disc.init(disc_rng, image, alpha, train=False)
      state = state.replace(disc=DiscState(
          params=disc_vars['params'], batch_stats=disc_vars.get('batch_stats', {}),
          opt_state=self.disc_tx.init(disc_vars['params'])))
    return state

  def load_frozen(self, workdir: str):
    """The stage-1 run's variables (config.preseg_workdir, relative to the
    parent of `workdir`); its module becomes `self.preseg_model`.

    Raises:
      FileNotFoundError / ValueError: no such run, or not a pre-segmentation run.
    """
    preseg = runs.load_preseg(runs.resolve_preseg_workdir(self.config, workdir))
    self.preseg_model = preseg.module
    return preseg.variables

  def prior(self, batch, preseg_vars, rng):
    """The prior for a training batch, (N, H, W, 1) in [0, 1].

    'perturbed_gt': the batch's perturbed ground truth. 'model': the frozen
    stage-1 probability, computed at 1 / s of the batch's resolution and
    upsampled back, s drawn per step from `config.prior_scales`. `bgmat remove`
    runs stage 1 at the working size and upsamples its output to the photo's
    size (2-8x for camera photos), so the generator must learn to refine priors
    that are coarser than its input, with the errors stage 1 makes at that scale
    (as mask-guided matting trains on degraded guidance masks; Yu et al.,
    MGMatting, AAAI 2021).
    """
    config = self.config
    if config.prior == 'perturbed_gt':
      return batch['prior']
    image = batch['image']
    n, height, width, _ = image.shape
    preseg_model = self.preseg_model

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

  def step(self, state, batch, rng, frozen):
    """One update of G (and D when adversarial) from one loss function.
    batch: image, alpha, fg, bg (N,H,W,3|1), trimap; `frozen`: stage-1 variables."""
    model, tx, disc, disc_tx, config = self.model, self.tx, self.disc, self.disc_tx, self.config
    rng = jax.random.fold_in(rng, state.step)
    prior = self.prior(batch, frozen, rng)
    weights = config.loss
    unknown = trimap_lib.unknown_mask(batch['trimap']).astype(jnp.float32)
    adversarial = disc is not None

    def loss_fn(params):
      alpha, g_updates = model.apply(
          {'params': params['g'], 'batch_stats': state.batch_stats},
          batch['image'], prior, train=True, mutable=['batch_stats'])
      alpha = alpha.astype(jnp.float32)  # Losses in float32 whatever config.dtype.
      reconstruction = {
          'l1': lambda: losses.alpha_l1(alpha, batch['alpha']),
          'l1_unknown': lambda: losses.alpha_l1(alpha, batch['alpha'], unknown),
          'comp': lambda: losses.composition_l1(alpha, batch['alpha'], batch['fg'],
                                                batch['bg'], batch['image']),
          'lap': lambda: losses.laplacian_pyramid_loss(alpha, batch['alpha']),
          'grad': lambda: losses.alpha_gradient_loss(alpha, batch['alpha']),
          'grad_unknown': lambda: losses.alpha_gradient_loss(alpha, batch['alpha'], unknown),
      }
      # A term weighted 0 is neither computed nor logged.
      terms = {k: term() for k, term in reconstruction.items() if weights[k]}
      g_loss = sum(weights[k] * v for k, v in terms.items())
      d_loss = jnp.zeros(())
      d_stats = {}
      if adversarial:
        d_vars = {'params': params['d'], 'batch_stats': state.disc.batch_stats}
        (real, fake, fake_for_d), d_updates = _three_disc_calls(
            disc, d_vars, batch['image'], batch['alpha'], alpha)
        terms['adv_g'] = losses.adversarial_g_loss([f[0] for f in fake], config.adv.kind)
        terms['feat_match'] = losses.feature_matching_loss(
            [r[1] for r in real], [f[1] for f in fake])
        g_loss = (g_loss + config.adv.weight * terms['adv_g']
                  + config.adv.fm_weight * terms['feat_match'])
        d_loss = losses.adversarial_d_loss([r[0] for r in real], [f[0] for f in fake_for_d],
                                           config.adv.kind)
        d_stats = d_updates
      return (g_loss, d_loss), (terms, g_updates['batch_stats'], d_stats)

    params = {'g': state.params}
    if adversarial:
      params['d'] = state.disc.params
    (g_loss, d_loss), vjp_fn, (terms, batch_stats, d_stats) = jax.vjp(
        loss_fn, params, has_aux=True)
    g_grads = vjp_fn((jnp.ones(()), jnp.zeros(())))[0]['g']
    updates, opt_state = tx.update(g_grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    number = state.step + 1
    new_state = state.replace(
        step=number, params=new_params, batch_stats=batch_stats, opt_state=opt_state,
        ema_params=ema_update(state.ema_params, new_params, number, config.ema_decay),
        ema_batch_stats=ema_update(state.ema_batch_stats, batch_stats, number,
                                   config.ema_decay))
    step_metrics = {'loss': g_loss, **terms, 'grad_norm': optax.tree.norm(g_grads)}
    if adversarial:
      d_grads = vjp_fn((jnp.zeros(()), jnp.ones(())))[0]['d']
      d_updates, d_opt_state = disc_tx.update(d_grads, state.disc.opt_state, state.disc.params)
      new_state = new_state.replace(disc=DiscState(
          params=optax.apply_updates(state.disc.params, d_updates),
          batch_stats=d_stats.get('batch_stats', state.disc.batch_stats),
          opt_state=d_opt_state))
      step_metrics['d_loss'] = d_loss
    return new_state, step_metrics

  def predict(self, variables, frozen, batch):
    prior = runs.preseg_probability(self.preseg_model, frozen, batch['image'])
    alpha = self.eval_model.apply(variables, batch['image'], prior, train=False)
    # The pre-segmentation used directly as alpha: the automatic baseline.
    return {'alpha': alpha, 'preseg': prior}


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


STAGES: dict[str, type[Stage]] = {'preseg': PresegStage, 'matting': MattingStage}


def get(config: ml_collections.ConfigDict) -> Stage:
  """The stage `config.stage` names, built from `config`.

  Raises:
    ValueError: config.stage is not one of STAGES.
  """
  if config.stage not in STAGES:
    raise ValueError(f'config.stage {config.stage!r} is not one of {sorted(STAGES)}')
  return STAGES[config.stage](config)
