r"""Stage 2: residual matting generator (+ multi-scale PatchGAN).

  python -m bgmat.main --config configs/matting.py:demo --workdir runs/demo/matting \
      --config.preseg_workdir=runs/demo/preseg

Arguments (comma separated, checked strictly): one size, `tiny` | `demo` |
`study` (real auto-labelled portraits at 256 px, see `make study`) | `full`;
`noadv` turns the adversarial loss off (same everything else, for the
comparison); `perturbed_gt` trains on a perturbed ground truth prior instead
of the frozen stage-1 model (evaluation always uses the stage-1 model). A
relative preseg_workdir is resolved against this workdir's parent directory.
"""

from bgmat import config_defaults

SIZES = ('tiny', 'demo', 'study', 'full')
OPTIONS = ('noadv', 'perturbed_gt')


def get_config(arg: str = 'demo'):
  size, options = config_defaults.parse_arg(arg, SIZES, OPTIONS)
  config = config_defaults.base('matting')
  config.preseg_workdir = 'preseg'
  config.prior = 'perturbed_gt' if 'perturbed_gt' in options else 'model'
  # 'model' prior: stage 1 runs at 1/s of the training resolution, s drawn
  # from these per step, and its output is upsampled (see train._prior).
  config.prior_scales = (1,)
  # The generator refines the prior (residual on its logits, see generator.py).
  config.model = dict(name='generator_tiny', kwargs=dict(residual_prior=True))
  config.disc = dict(name='patchgan_tiny', kwargs={})
  # Weights of the reconstruction terms (stages.MattingStage.step); `_unknown`
  # terms average over the trimap's unknown region only.
  config.loss = dict(l1=1.0, l1_unknown=1.0, comp=1.0, lap=1.0, grad=0.5, grad_unknown=0.0)
  config.adv = dict(weight=0.0 if 'noadv' in options else 0.05, fm_weight=1.0, kind='lsgan')
  config.disc_opt = dict(config.opt.to_dict())
  config.disc_opt.b1 = 0.5
  # Bias-corrected moving average of parameters and BatchNorm statistics.
  config.ema_decay = 0.99
  config.eval_ema = True

  if size == 'demo':
    config.num_train_steps = 300
    config.batch_size = 8
    config.opt.lr = 3e-3
    config.disc_opt.lr = 1e-3
  elif size == 'study':
    # `matting_sets/portraits_study`: the real portraits auto-labelled
    # (closed-form alpha from their masks), each on its own background and on
    # real backgrounds (README "The study"). preseg_workdir: the study's stage 1.
    config.dataset = 'matting_sets/portraits_study'
    config.preseg_workdir = 'preseg_improved_s0'
    config.model = dict(name='generator_small', kwargs=dict(residual_prior=True))
    # No instance norm: it divides out the edge contrast that tells a sharp
    # matte from a blurred one (see models/discriminator.py).
    config.disc = dict(name='patchgan_tiny', kwargs=dict(norm='none'))
    config.image_size = 256
    config.batch_size = 8
    config.num_train_steps = 400
    config.opt.lr = 1e-3
    config.opt.warmup_steps = 50
    config.disc_opt.lr = 2e-4
    config.prior_scales = (1, 2, 3)
    config.aug.use_photo_prob = 0.5
    config.aug.recomposite_prob = 0.3
    config.aug.letterbox_prob = 0.2
    config.log_every = 50
    config.checkpoint_every = 200
    config.eval_every = 0
    config.trimap_radius = 6
    config.ema_decay = 0.99
  elif size == 'full':
    # Real photos at 512 px (built with --max_side 1024 or more; see README).
    config.model = dict(name='generator_r34', kwargs=dict(residual_prior=True))
    config.disc = dict(name='patchgan_ms', kwargs={})
    config.dataset = 'matting_sets/portraits_full'
    config.image_size = 512
    config.batch_size = 16
    config.num_train_steps = 50_000
    config.opt.lr = 2e-4
    config.disc_opt.lr = 2e-4
    config.opt.warmup_steps = 1000
    config.prior_scales = (1, 2, 3, 4)
    config.aug.use_photo_prob = 0.5
    config.checkpoint_every = 1000
    config.eval_every = 5000
    config.trimap_radius = 10
    config.ema_decay = 0.999
    config.input.worker_count = 8
  elif size == 'tiny':
    config = config_defaults.tiny(config)
    config.ema_decay = 0.5
  # The colour guided filter as the generator's last layer (generator.py;
  # no parameters): radius 0 is off.
  config.model.kwargs.guided_filter_radius = 0
  config.model.kwargs.guided_filter_eps = 1e-3
  # The same filter applied at evaluation and inference only (runs.
  # inference_model_config), to a generator trained with or without it; radius
  # 0 is off. `python -m bench.matting_guided_filter` measures settings on a
  # trained run's validation split and records one (--record).
  config.eval_guided_filter = dict(radius=0, eps=1e-4)
  if size == 'study':
    # Chosen on the validation split of 300- and 1200-step study runs
    # (bench/results/matting_guided_filter_cpu.md): DIM Grad -26..28%, SAD +-0.5%.
    config.eval_guided_filter.radius = 8
  return config
