"""The `autolabel` layout of `matting_sets`: photos + coarse masks -> labelled,
filtered, composited records; stable splits, disjoint backgrounds, report."""
import dataclasses
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_prep import compose
from data_prep import layouts
from data_prep import matting_sets
from data_prep import quality
from data_prep import report as report_lib
from data_prep import synthetic
from tests.data_prep import fixtures

_REPO = pathlib.Path(__file__).resolve().parents[2]
_STEMS = [f's{i:02d}' for i in range(12)]  # with 0.3 / 0.3 all three splits get some
_FRACTIONS = dict(val_fraction=0.3, test_fraction=0.3)
# Everything but the label confidence passes.
_OPEN = dict(min_side=0, min_sharpness=0.0, min_coverage=0.0, max_coverage=1.0,
             min_mean_luma=0.0, max_mean_luma=1.0, max_clipped=1.0, max_phash_distance=0)



@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('autolabel_inputs')
  photos = {}
  for i, stem in enumerate(_STEMS):
    example = synthetic.generate_example(i, 'train', image_size=64)
    mask = np.where(example['alpha'] >= 128, 255, 0).astype(np.uint8)
    if stem == 's03':  # a wrong mask: the subject's mask moved a third of the width
      mask = np.roll(mask, 21, axis=1)
    fixtures.save(str(root / 'image' / f'{stem}.png'), example['image'])
    fixtures.save(str(root / 'mask' / f'{stem}.png'), mask)
    photos[stem] = example['image']
  # s99: an empty mask (no certain foreground): the labeller cannot run.
  fixtures.save(str(root / 'image' / 's99.png'), photos['s00'])
  fixtures.save(str(root / 'mask' / 's99.png'), np.zeros((64, 64), np.uint8))
  rng = np.random.default_rng(0)
  big, small = [], []
  for i in range(14):
    size = (96, 72) if i < 10 else (48, 40)  # (width, height); 4 small ones
    colours = rng.integers(0, 256, size=(2, 2, 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(colours).resize(size, Image.BILINEAR))
    path = fixtures.save(str(root / 'bg' / f'bg{i:02d}.jpg'), bg, quality=95)
    (big if i < 10 else small).append(path)
  return root, photos, big, small


def _confidences(root):
  """Label confidence of each photo as the builder's workers compute it."""
  settings = compose.Settings(image_format='png', num_bg=(('train', 1),), measure_quality=True)
  compose.init_worker(settings, {'train': [str(root / 'bg' / 'bg00.jpg')]})
  out = {}
  for stem in _STEMS:
    source = compose.Source(stem, 'autolabel', str(root / 'image' / f'{stem}.png'),
                            str(root / 'mask' / f'{stem}.png'))
    out[stem] = compose.make_records(('train', 0, source))['stats']['confidence']
  return out


def test_autolabel_layout_builds_filters_splits_and_reports(inputs, tmp_path):
  root, photos, big, small = inputs
  confidence = _confidences(root)
  # The wrong mask is the least confident label; the threshold sits at the median.
  assert confidence['s03'] == min(confidence.values())
  threshold = float(np.median(list(confidence.values())))
  eval_fraction = _FRACTIONS['val_fraction'] + _FRACTIONS['test_fraction']
  held_out = {p for p in big if layouts.background_split(p, eval_fraction) == 'eval'}
  assert held_out and held_out != set(big)  # both groups have backgrounds
  name, directory = matting_sets.build_matting_set(
      str(tmp_path / 'data'), 'autolabel', progress=False, image_dir=root / 'image',
      alpha_dir=root / 'mask', bg_dir=root / 'bg', num_bg=2, eval_num_bg=1,
      image_format='png', min_bg_side=64,
      quality_filter=quality.Thresholds(**_OPEN, min_confidence=threshold), **_FRACTIONS)
  kept = {s for s in _STEMS if confidence[s] >= threshold}
  assert 0 < len(kept) < len(_STEMS)
  data = tfds.data_source(name, data_dir=str(tmp_path / 'data'))
  seen, bg_used = set(), {'train': set(), 'eval': set()}
  for split, records in data.items():
    per_photo = 1 + (2 if split == 'train' else 1)
    names = [records[i]['name'].decode() for i in range(len(records))]
    ids = sorted({n.split('@')[0] for n in names})
    assert all(layouts.split_of(i, **_FRACTIONS) == split for i in ids)  # stable hash
    assert len(names) == per_photo * len(ids)
    seen |= set(ids)
    for i in range(len(records)):
      record = records[i]
      photo_id, _, rest = record['name'].decode().partition('@')
      if not rest:  # the photo on its own background
        np.testing.assert_array_equal(record["image"], photos[photo_id])
      else:
        bg_used['train' if split == 'train' else 'eval'].add(rest.split('_', 1)[1])
  assert seen == kept
  stems = lambda paths: {os.path.splitext(os.path.basename(p))[0] for p in paths}
  assert bg_used['train'] <= stems(set(big) - held_out)
  assert bg_used['eval'] <= stems(held_out)
  entries, summary = report_lib.read_report(os.path.join(directory, matting_sets.REPORT_NAME))
  too_small = {e['file'] for e in entries if e['reason'] == 'bg_too_small'}
  assert too_small == set(small)
  dropped = {os.path.basename(e['file']): e for e in entries if e['action'] == 'dropped'}
  for stem in set(_STEMS) - kept:
    assert dropped[f'{stem}.png']['detail'].startswith('confidence')
  assert dropped['s99.png']['reason'] == 'autolabel'
  assert summary['by_reason']['dropped'] == {
      'autolabel': 1, 'bg_too_small': len(small),
      'quality: confidence': len(_STEMS) - len(kept)}


def test_autolabel_layout_takes_separate_eval_backgrounds_and_defaults(inputs, tmp_path):
  root, _, big, _ = inputs
  config = matting_sets.make_config('autolabel', image_dir=root / 'image',
                                    alpha_dir=root / 'mask', bg_dir=root / 'bg')
  # Always filtered (the label confidence), small backgrounds dropped by default.
  assert config.quality_filter and config.min_bg_side == matting_sets.AUTOLABEL_MIN_BG_SIDE
  other = matting_sets.make_config('autolabel', image_dir=root / 'image',
                                   alpha_dir=root / 'mask', bg_dir=root / 'bg',
                                   trimap_fraction=0.08)
  assert other.name != config.name
  with pytest.raises(ValueError, match='--bg'):
    matting_sets.make_config('autolabel', image_dir=root / 'image', alpha_dir=root / 'mask')
  # Every background of the eval folder is too small: a clear error, no data set.
  with pytest.raises(ValueError, match='no background is left'):
    matting_sets.build_matting_set(
        str(tmp_path / 'data'), 'autolabel', progress=False, image_dir=root / 'image',
        alpha_dir=root / 'mask', bg_dir=root / 'bg', eval_bg_dir=root / 'bg',
        min_bg_side=1000, quality_filter=quality.Thresholds(**_OPEN, min_confidence=0.0),
        **_FRACTIONS)
  assert not os.path.exists(tmp_path / 'data' / 'matting_sets' / config.name)


def test_cli_builds_the_same_records_as_the_api(inputs, tmp_path):
  root, _, _, _ = inputs
  fields = dict(image_dir=root / 'image', alpha_dir=root / 'mask', bg_dir=root / 'bg',
                image_format='png', min_bg_side=64, **_FRACTIONS)
  thresholds = quality.Thresholds(**_OPEN, min_confidence=0.0)
  name, _ = matting_sets.build_matting_set(str(tmp_path / 'api'), 'autolabel', progress=False,
                                           quality_filter=thresholds, **fields)
  flags = [f'--{k}={v}' for k, v in dataclasses.asdict(thresholds).items()]
  result = subprocess.run(
      [sys.executable, '-m', 'data_prep.build', 'matting_sets',
       f'--data_dir={tmp_path / "cli"}', '--layout=autolabel', f'--image={root / "image"}',
       f'--mask={root / "mask"}', f'--bg={root / "bg"}', '--image_format=png',
       '--min_bg_side=64', '--val_fraction=0.3', '--test_fraction=0.3', *flags],
      cwd=_REPO, env=dict(os.environ, PYTHONPATH=str(_REPO)), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert name in result.stdout  # same settings, same name
  api = tfds.data_source(name, data_dir=str(tmp_path / 'api'))
  cli = tfds.data_source(name, data_dir=str(tmp_path / 'cli'))
  assert sorted(api) == sorted(cli)
  for split in api:
    assert len(api[split]) == len(cli[split]) > 0
    for i in range(len(api[split])):
      for key in ('image', 'alpha', 'fg', 'bg', 'name'):
        np.testing.assert_array_equal(api[split][i][key], cli[split][i][key])
