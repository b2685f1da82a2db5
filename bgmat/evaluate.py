"""Evaluation on a split: IoU and the matting metrics, whole image and unknown band.

Predictions come from jitted model calls over global batches; the metrics
(DIM conventions, `bgmat/metrics.py`) are computed on the host on uint8-quantised
mattes, exactly as if the predictions had been saved as PNG files.
"""

import os
from typing import Callable, Iterable

import jax
import numpy as np
from PIL import Image

from bgmat import atomic
from bgmat import input_pipeline
from bgmat import metrics as metrics_lib
from bgmat import sharding


def evaluate(predict_fn: Callable[[dict], dict], batches: Iterable[dict], mesh=None,
             which=('sad', 'mse', 'grad', 'conn')) -> tuple[dict, dict]:
  """Runs `predict_fn` over `batches`; averages per-example metrics. The one
  evaluation loop: training (sharded global batches), `bgmat.report` and the
  closed-form baseline (host batches).

  Each example is scored on its photo region (`batch['region']`, the letterboxed
  photo without padding) with `metrics.region_eval_metrics`: IoU and boundary F
  of alpha >= 0.5, and the DIM metrics in `which` over the whole photo and its
  unknown band (`batch['trimap']`).

  Args:
    predict_fn: batch -> dict of named (N, H, W, 1) mattes in [0, 1] ('alpha'
      and, for the matting stage, the 'preseg' baseline). With a mesh it gets
      the global batch (padding examples included, `valid` marks the real
      ones); without, the host batch of the valid examples only.
    batches: per-process eval batches from `input_pipeline.eval_batches`.
    mesh: the device mesh of a sharded run, or None (one host process).
    which: the DIM metrics to compute (`metrics.ALL_METRICS` names).
  Returns:
    (metrics, samples): metrics 'name/metric' -> mean over valid examples
    ('alpha/sad', 'alpha/sad_unknown', 'preseg/iou', ...) and 'n', the number
    of examples; samples: the first batch's host arrays (image, alpha_gt and
    the predictions) for pictures.
  Raises:
    ValueError: no valid example in `batches`.
  """
  totals = None  # Running means: clu Averages (metrics.merge_means).
  count = 0
  samples = None
  for batch in batches:
    batch = {k: v for k, v in batch.items() if k != 'name'}
    if mesh is not None:
      global_batch = sharding.to_global(batch, mesh)
      predictions = sharding.to_host(predict_fn(global_batch))
      host = sharding.to_host(global_batch)
      valid = host['valid'] > 0
      host = {k: v[valid] for k, v in host.items()}
      predictions = {k: v[valid] for k, v in predictions.items()}
      if not valid.any():
        continue
    else:
      valid = batch['valid'] > 0
      if not valid.any():
        continue
      host = {k: v[valid] for k, v in batch.items()}
      predictions = predict_fn(host)
    per_example = {}
    for key, pred in predictions.items():
      for metric, values in metrics_lib.region_eval_metrics(
          pred, host['alpha'], host['trimap'], host.get('region'), which=which).items():
        per_example[f'{key}__{metric}'] = values  # clu field names: no '/'.
    totals = metrics_lib.merge_means(totals, per_example)
    count += int(valid.sum())
    if samples is None:
      samples = {'image': host['image'], 'alpha_gt': host['alpha'], **predictions}
  if not count:
    raise ValueError('Evaluation saw no examples')
  results = {k.replace('__', '/'): v for k, v in metrics_lib.compute_means(totals).items()}
  return dict(results, n=count), samples


def evaluate_split(config, split: str, predict_fn: Callable[[dict], dict],
                   which=('sad', 'mse', 'grad', 'conn')) -> tuple[dict, dict]:
  """`evaluate` over `split` of `config.dataset` in this one process (host
  batches of config.batch_size, at most config.max_eval_examples): the report
  and the closed-form baseline.

  Raises:
    ValueError: no examples in the split (naming the data set and folder).
  """
  batches = input_pipeline.eval_batches(
      config, split, process_index=0, process_count=1, per_process_batch=config.batch_size,
      max_examples=config.get('max_eval_examples'))
  try:
    return evaluate(predict_fn, batches, which=which)
  except ValueError as e:
    raise ValueError(f'No {split} examples in {config.dataset} ({config.data_dir})') from e


def checkerboard(height: int, width: int, cell: int = 8) -> np.ndarray:
  yy, xx = np.mgrid[:height, :width]
  board = ((yy // cell + xx // cell) % 2).astype(np.float32)
  return (0.6 + 0.3 * board)[..., None].repeat(3, axis=-1)


def side_by_side(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """input | predicted alpha | cut-out on a checkerboard, (H, 3W, 3) uint8."""
  height, width = image.shape[:2]
  alpha = alpha.reshape(height, width, 1)
  cutout = alpha * image + (1 - alpha) * checkerboard(height, width)
  row = np.concatenate([image, np.repeat(alpha, 3, axis=-1), cutout], axis=1)
  return np.clip(np.round(row * 255), 0, 255).astype(np.uint8)


def sample_grid(samples: dict, key: str = 'alpha', count: int = 4) -> np.ndarray:
  rows = [side_by_side(samples['image'][i], samples[key][i])
          for i in range(min(count, len(samples['image'])))]
  return np.concatenate(rows, axis=0)


def write_results(workdir: str, split: str, step: int, results: dict,
                  samples: dict | None, keys: Iterable[str]) -> str:
  """Writes eval/<split>_metrics.json and side-by-side PNGs atomically."""
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'{split}_metrics.json')
  atomic.write_json(path, {'step': int(step), **results}, indent=1, sort_keys=True)
  if samples is not None:
    for key in keys:
      picture = os.path.join(out_dir, f'{split}_{key}_side_by_side.png')
      atomic.write_with(picture, Image.fromarray(sample_grid(samples, key)).save, suffix='.png')
  return path


def jit_predict(fn, mesh):
  """jit with the batch sharded and outputs sharded the same way."""
  return jax.jit(fn, out_shardings=sharding.batch_sharding(mesh))
