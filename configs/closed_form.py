r"""Trimap-based baseline: closed-form matting (Levin et al. 2008, pymatting).

  python -m bgmat.baselines --config configs/closed_form.py:demo \
      --workdir runs/demo/closed_form --config.data_dir=./data \
      --config.preseg_workdir=runs/demo/preseg

Arguments (comma separated, checked strictly): size `tiny` | `demo` | `study` | `full` (the data set and
working size of the matching preseg/matting configs); `gt_trimap` takes the
trimap from the ground truth alpha (the upper bound: the trimap every
trimap-based method is evaluated with), otherwise it is made from the
pre-segmentation of `preseg_workdir`:
  sure foreground = pixels farther than `band_radius` from any pixel with
  probability < `fg_threshold`; sure background = pixels farther than
  `band_radius` from any pixel with probability > `bg_threshold`; the rest is
  unknown (square neighbourhood, as `bgmat.trimap`).
The ground-truth trimap is `bgmat.trimap.trimap_from_alpha(gt, trimap_radius)`,
the same one that defines the "unknown band" of the evaluation.
"""

from bgmat import config_defaults

SIZES = ('tiny', 'demo', 'study', 'full')
OPTIONS = ('gt_trimap',)


def get_config(arg: str = 'demo'):
  size, options = config_defaults.parse_arg(arg, SIZES, OPTIONS)
  config = config_defaults.base('closed_form')
  config.trimap_source = 'gt' if 'gt_trimap' in options else 'preseg'
  config.preseg_workdir = 'preseg'
  config.fg_threshold = 0.9
  config.bg_threshold = 0.1
  config.band_radius = 5
  # pymatting's conjugate-gradient defaults (rtol 1e-7) with a cap on iterations.
  config.cg_maxiter = 2000
  config.batch_size = 8
  if size == 'study':
    config.dataset = 'matting_sets/portraits_study'
    config.preseg_workdir = 'preseg_improved_s0'
    config.image_size = 256
    config.trimap_radius = 6
    config.band_radius = 6
  elif size == 'full':
    config.dataset = 'matting_sets/portraits_full'
    config.image_size = 512
    config.trimap_radius = 10
    config.band_radius = 10
  elif size == 'tiny':
    config = config_defaults.tiny(config)
    config.band_radius = 3
  return config
