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
from bgmat import metrics as metrics_lib
from bgmat import sharding


def evaluate(predict_fn: Callable[[dict], dict], batches: Iterable[dict], mesh,
             which=('sad', 'mse', 'grad', 'conn')) -> tuple[dict, dict]:
  """Runs `predict_fn` over `batches`; averages per-example metrics.

  Args:
    predict_fn: global batch -> dict of named (N, H, W, 1) mattes in [0, 1]
      ('alpha' and, for the matting stage, the 'preseg' baseline).
    batches: per-process eval batches from `input_pipeline.eval_batches`.
  Returns:
    (metrics, samples): metrics 'name/metric' -> mean over valid examples
    ('alpha/sad', 'alpha/sad_unknown', 'preseg/iou', ...); samples: the first
    batch's host arrays (image, alpha, and the predictions) for pictures.
  """
  totals = None  # A clu Collection of Averages, merged over batches.
  count = 0
  samples = None
  for batch in batches:
    names = batch.pop('name')
    del names
    global_batch = sharding.to_global(batch, mesh)
    predictions = sharding.to_host(predict_fn(global_batch))
    host = sharding.to_host(global_batch)
    valid = host['valid'] > 0
    if not valid.any():
      continue
    per_example = {}
    region = host['region'][valid] if 'region' in host else None
    for key, pred in predictions.items():
      for metric, values in metrics_lib.region_eval_metrics(
          pred[valid], host['alpha'][valid], host['trimap'][valid], region,
          which=which).items():
        per_example[f'{key}__{metric}'] = values  # Field names: no '/'.
    batch_metrics = metrics_lib.average_collection(per_example).single_from_model_output(
        **per_example)
    totals = batch_metrics if totals is None else totals.merge(batch_metrics)
    count += int(valid.sum())
    if samples is None:
      samples = {'image': host['image'][valid], 'alpha_gt': host['alpha'][valid],
                 **{k: v[valid] for k, v in predictions.items()}}
  if not count:
    raise ValueError('Evaluation saw no examples')
  return {k.replace('__', '/'): float(v) for k, v in totals.compute().items()}, samples


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
