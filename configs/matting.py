r"""Stage 2: residual matting generator (+ multi-scale PatchGAN) on synthetic portraits.

  python -m bgmat.main --config configs/matting.py:demo --workdir runs/demo/matting \
      --config.preseg_workdir=runs/demo/preseg

Arguments (comma separated): size `tiny` | `demo` | `full`; `noadv` turns the
adversarial loss off (same everything else, for the comparison);
`perturbed_gt` trains on a perturbed ground truth prior instead of the frozen
stage-1 model (evaluation always uses the stage-1 model). A relative
preseg_workdir is resolved against this workdir's parent directory.
"""

from bgmat import config_defaults


def get_config(arg: str = 'demo'):
  args = set(arg.split(',')) if arg else {'demo'}
  size = ({'tiny', 'demo', 'full'} & args or {'demo'}).pop()
  config = config_defaults.base('matting')
  config.preseg_workdir = 'preseg'
  config.prior = 'perturbed_gt' if 'perturbed_gt' in args else 'model'
  # The generator refines the prior (residual on its logits, see generator.py).
  config.model = dict(name='generator_tiny', kwargs=dict(residual_prior=True))
  config.disc = dict(name='patchgan_tiny', kwargs={})
  config.loss = dict(l1=1.0, l1_unknown=1.0, comp=1.0, lap=1.0, grad=0.5)
  config.adv = dict(weight=0.0 if 'noadv' in args else 0.05, fm_weight=1.0, kind='lsgan')
  config.disc_opt = dict(config.opt.to_dict())
  config.disc_opt.b1 = 0.5
  config.ema_decay = 0.99
  config.eval_ema = True

  if size == 'demo':
    config.num_train_steps = 300
    config.batch_size = 8
    config.opt.lr = 3e-3
    config.disc_opt.lr = 1e-3
  elif size == 'full':
    config.model = dict(name='generator_r34', kwargs=dict(residual_prior=True))
    config.disc = dict(name='patchgan_ms', kwargs={})
    config.dataset = 'synthetic_portraits/default'
    config.image_size = 512
    config.batch_size = 16
    config.num_train_steps = 50_000
    config.opt.lr = 2e-4
    config.disc_opt.lr = 2e-4
    config.opt.warmup_steps = 1000
    config.checkpoint_every = 1000
    config.eval_every = 5000
    config.trimap_radius = 10
    config.ema_decay = 0.999
    config.input.worker_count = 8
  elif size == 'tiny':
    config = config_defaults.tiny(config)
    config.ema_decay = 0.5
  return config
