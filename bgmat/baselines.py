r"""Baselines for the method's comparisons: closed-form matting with a trimap.

  python -m bgmat.baselines --config configs/closed_form.py:demo \
      --workdir runs/demo/closed_form --config.data_dir=./data \
      --config.preseg_workdir=runs/demo/preseg

Closed-form matting (Levin, Lischinski, Weiss 2008; pymatting's
`estimate_alpha_cf`) needs a trimap. It comes from the pre-segmentation
(`trimap.trimap_from_probability`: thresholds + a band, see configs/closed_form.py) or, as an
upper bound, from the ground truth. The automatic baseline (pre-segmentation
used directly as alpha) needs no code of its own: it is `sigmoid(logits)`.

Writes WORKDIR/config.json and WORKDIR/eval/<split>_metrics.json (the same
keys as a trained run's, under 'alpha/').
"""

import json
import os

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from bgmat import atomic
from bgmat import evaluate as eval_lib
from bgmat import runs
from bgmat import trimap as trimap_lib


def closed_form_alpha(image: np.ndarray, trimap: np.ndarray, cg_maxiter: int = 2000) -> np.ndarray:
  """Closed-form matting. image (H, W, 3), trimap (H, W[, 1]) in [0, 1] -> alpha (H, W, 1).

  A trimap without unknown pixels is returned as the alpha (nothing to solve);
  one without any known pixel has no constraint: all zeros. With known
  foreground but no known background (a subject filling the frame) the
  minimiser of the matting Laplacian's energy is alpha = 1 everywhere
  (constants are in its null space; Levin et al. 2008), and alpha = 0 in the
  opposite case; pymatting refuses such trimaps, so they are answered here.
  """
  import pymatting  # pylint: disable=g-import-not-at-top
  trimap2d = np.asarray(trimap, np.float64).reshape(image.shape[:2])
  unknown = trimap_lib.unknown_mask(trimap2d)
  if not unknown.any():
    return trimap2d.astype(np.float32)[..., None]
  if unknown.all():
    return np.zeros(image.shape[:2] + (1,), np.float32)
  has_fg, has_bg = (trimap2d >= 0.9).any(), (trimap2d <= 0.1).any()
  if has_fg != has_bg:
    return np.full(image.shape[:2] + (1,), 1.0 if has_fg else 0.0, np.float32)
  alpha = pymatting.estimate_alpha_cf(
      np.asarray(image, np.float64), trimap2d, cg_kwargs=dict(maxiter=cg_maxiter))
  return np.clip(alpha, 0.0, 1.0).astype(np.float32)[..., None]


def closed_form_batch(images: np.ndarray, trimaps: np.ndarray, cg_maxiter: int = 2000) -> np.ndarray:
  """closed_form_alpha over a batch: (N, H, W, 3), (N, H, W, 1) -> (N, H, W, 1)."""
  return np.stack([closed_form_alpha(i, t, cg_maxiter) for i, t in zip(images, trimaps)])


def preseg_trimaps(prob: np.ndarray, config) -> np.ndarray:
  """Trimaps from stage-1 probabilities with `config`'s fg_threshold,
  bg_threshold and band_radius (configs/closed_form.py;
  `trimap.trimap_from_probability`): (N, H, W, 1) float in [0, 1] -> (N, H, W, 1)
  float32 {0, 0.5, 1}."""
  return np.stack([trimap_lib.trimap_from_probability(p, config.fg_threshold,
                                                      config.bg_threshold, config.band_radius)
                   for p in prob])


def evaluate_closed_form(config, split: str, preseg_prob=None) -> tuple[dict, dict]:
  """Metrics of closed-form matting on `split` under `config` (configs/closed_form.py),
  through the one evaluation loop (`evaluate.evaluate`).

  Args:
    preseg_prob: images (N, H, W, 3) -> (N, H, W, 1) stage-1 probability
      (`runs.preseg_prob_fn`), needed when config.trimap_source == 'preseg'.
  Returns:
    (metrics 'alpha/<name>' -> mean and 'n', samples of the first batch).
  Raises:
    ValueError: an unknown trimap_source, a missing preseg_prob, or no
      examples in the split.
  """
  if config.trimap_source not in ('gt', 'preseg'):
    raise ValueError(f"trimap_source must be 'gt' or 'preseg', got {config.trimap_source!r}")
  if config.trimap_source == 'preseg' and preseg_prob is None:
    raise ValueError('trimap_source=preseg needs the pre-segmentation (preseg_workdir)')

  def predict(batch):
    images = batch['image']
    if config.trimap_source == 'gt':
      trimaps = np.stack([trimap_lib.trimap01_from_alpha(a, config.trimap_radius)
                          for a in batch['alpha']])
    else:
      trimaps = preseg_trimaps(preseg_prob(images), config)
    return {'alpha': closed_form_batch(images, trimaps, config.cg_maxiter)}

  return eval_lib.evaluate_split(config, split, predict, which=tuple(config.eval_metrics))


_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/closed_form.py:<arg>.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
_SPLIT = flags.DEFINE_string('split', 'test', 'Split to evaluate.')


def run(config: ml_collections.ConfigDict, workdir: str, split: str = 'test') -> dict:
  """Evaluates the baseline and writes config.json + eval/<split>_metrics.json."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  preseg_prob = None
  if config.trimap_source == 'preseg':
    path = config.preseg_workdir
    if not os.path.isabs(path):
      path = os.path.join(os.path.dirname(workdir), path)
    preseg_prob = runs.preseg_prob_fn(path)
  results, samples = evaluate_closed_form(config, split, preseg_prob)
  atomic.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=1))
  eval_lib.write_results(workdir, split, 0, results, samples, ['alpha'])
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _WORKDIR.value is None:
    raise app.UsageError('--workdir is required')
  print(json.dumps(run(_CONFIG.value, _WORKDIR.value, _SPLIT.value), indent=1, sort_keys=True))


if __name__ == '__main__':
  app.run(main)
