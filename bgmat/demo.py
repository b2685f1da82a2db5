"""`make demo`: the whole path on CPU in minutes.

Builds the synthetic portraits (demo config) if absent, trains the
pre-segmentation and the matting stage (configs/preseg.py:demo and
configs/matting.py:demo), evaluates both on the test split, writes side-by-side
pictures, cuts out a real photo that scikit-image ships (the astronaut, held
out from all training data) and prints where everything is.
"""

import importlib.util
import os
import time

from absl import logging
import numpy as np
from PIL import Image

from bgmat import cli
from bgmat import train


def _load_config(name: str, arg: str):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(root, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'bgmat_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def run(out_dir: str, data_dir: str | None = None) -> dict:
  from data_prep import synthetic_portraits  # pylint: disable=g-import-not-at-top
  out_dir = os.path.abspath(out_dir)
  data_dir = os.path.abspath(data_dir or os.path.join(out_dir, 'data'))
  logging.set_verbosity(logging.WARNING)
  start = time.time()

  print(f'[1/4] Synthetic portraits in {data_dir} ...', flush=True)
  dataset = synthetic_portraits.build_synthetic(data_dir, 'demo')

  results = {}
  for stage, arg in (('preseg', 'demo'), ('matting', 'demo')):
    config = _load_config(stage, arg)
    config.dataset = dataset
    config.data_dir = data_dir
    if stage == 'matting':
      config.preseg_workdir = os.path.join(out_dir, 'preseg')
    workdir = os.path.join(out_dir, stage)
    step = 2 if stage == 'preseg' else 3
    print(f'[{step}/4] Training {stage} for {config.num_train_steps} steps in {workdir} '
          f'({time.time() - start:.0f} s so far) ...', flush=True)
    results[stage] = train.train_and_evaluate(config, workdir)

  print(f'[4/4] bgmat remove on a real photo ({time.time() - start:.0f} s so far) ...',
        flush=True)
  import skimage.data  # pylint: disable=g-import-not-at-top
  photo_dir = os.path.join(out_dir, 'photos')
  os.makedirs(photo_dir, exist_ok=True)
  photo = os.path.join(photo_dir, 'astronaut.png')
  Image.fromarray(skimage.data.astronaut()).save(photo)
  cutout_dir = os.path.join(out_dir, 'cutouts')
  cli.main(['remove', photo, '-o', cutout_dir, '--workdir', os.path.join(out_dir, 'matting'),
            '--save-alpha'])

  test = results['matting'].get('test', {})
  print('\n== bgmat demo: test split of synthetic_portraits/demo ==')
  print(f'{"":28s}{"SAD":>9s}{"MSE":>9s}{"Grad":>9s}{"Conn":>9s}   (whole image)')
  for key, label in (('preseg', 'pre-segmentation as alpha'), ('alpha', 'matting stage')):
    row = [test.get(f'{key}/{m}', np.nan) for m in ('sad', 'mse', 'grad', 'conn')]
    print(f'{label:28s}' + ''.join(f'{v:9.4f}' for v in row))
  for key, label in (('preseg', 'pre-segmentation as alpha'), ('alpha', 'matting stage')):
    row = [test.get(f'{key}/{m}_unknown', np.nan) for m in ('sad', 'mse', 'grad', 'conn')]
    print(f'{label:28s}' + ''.join(f'{v:9.4f}' for v in row) + '   (unknown band)')
  print(f'pre-segmentation IoU: {results["preseg"]["test"]["alpha/iou"]:.4f}')
  better = test.get('alpha/sad', np.inf) < test.get('preseg/sad', -np.inf)
  print(f'matting SAD {"<" if better else ">="} pre-segmentation SAD: '
        f'{"the matting stage improves the matte" if better else "NO improvement"}')
  print('\nWhere everything is:')
  for path, what in (
      (data_dir, 'the synthetic data set (TFDS array_record)'),
      (os.path.join(out_dir, 'preseg'), 'stage 1 run: config.json, checkpoints/, metrics.jsonl, eval/'),
      (os.path.join(out_dir, 'matting'), 'stage 2 run: the same'),
      (os.path.join(out_dir, 'matting', 'eval', 'test_alpha_side_by_side.png'),
       'input | predicted alpha | cut-out on a checkerboard (test split)'),
      (os.path.join(out_dir, 'matting', 'eval', 'test_metrics.json'), 'test metrics'),
      (os.path.join(cutout_dir, 'astronaut.png'), 'RGBA cut-out of a real photo'),
  ):
    print(f'  {path}\n      {what}')
  print(f'Done in {time.time() - start:.0f} s.')
  return results
