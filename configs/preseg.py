r"""Stage 1: DeepLabV3+ pre-segmentation on synthetic portraits.

  python -m bgmat.main --config configs/preseg.py:demo --workdir runs/demo/preseg

Arguments (comma separated): size `tiny` (tests) | `demo` (CPU, minutes) |
`full` (Xception-65 at 512 px, GPU/TPU); add `original` for the paper's
DeepLabV3+ instead of the improved one (multi-scale pooling in ASPP and the
stride-8 decoder skip). Override anything with --config.x=y, e.g.
--config.data_dir=/data --config.init_from=/ckpt/xception65 (converted timm
weights, see `python -m bgmat.convert`).
"""

from bgmat import config_defaults


def get_config(arg: str = 'demo'):
  args = set(arg.split(',')) if arg else {'demo'}
  size = ({'tiny', 'demo', 'full'} & args or {'demo'}).pop()
  config = config_defaults.base('preseg')
  improved = 'original' not in args
  config.model = dict(name='deeplabv3plus_tiny', kwargs=dict(improved=improved))
  config.loss = dict(bce=1.0, dice=0.5)
  config.init_from = ''

  if size == 'demo':
    config.num_train_steps = 300
    config.batch_size = 8
    config.opt.lr = 3e-3
  elif size == 'full':
    config.model = dict(name='deeplabv3plus_xception65', kwargs=dict(improved=improved))
    config.dataset = 'synthetic_portraits/default'
    config.image_size = 512
    config.batch_size = 32
    config.num_train_steps = 30_000
    config.opt.lr = 1e-3
    config.opt.warmup_steps = 1000
    config.checkpoint_every = 1000
    config.eval_every = 5000
    config.trimap_radius = 10
    config.input.worker_count = 8
  elif size == 'tiny':
    config = config_defaults.tiny(config)
  return config
