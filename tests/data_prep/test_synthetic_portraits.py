"""Tests for procedural portraits and the `synthetic_portraits` TFDS builder."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import build
from data_prep import synthetic
from data_prep import synthetic_portraits

_REPO = pathlib.Path(__file__).resolve().parents[2]
_COUNTS = {'train': 16, 'validation': 4, 'test': 4}  # the `tiny` config


def _read_all(source):
  """All records of all splits, names as str: {split: [record, ...]}."""
  out = {}
  for split, records in source.items():
    out[split] = []
    for i in range(len(records)):
      record = dict(records[i])
      if isinstance(record['name'], bytes):
        record['name'] = record['name'].decode()
      out[split].append(record)
  return out


@pytest.fixture(scope='module')
def png_build(tmp_path_factory):
  """The tiny config, png-encoded (exact pixels), built in two data dirs."""
  dirs, names = [], []
  for tag in ('a', 'b'):
    data_dir = tmp_path_factory.mktemp(f'png_{tag}')
    names.append(build.build_synthetic(data_dir, 'tiny', image_format='png'))
    dirs.append(data_dir)
  assert names[0] == names[1]
  return names[0], dirs


@pytest.fixture(scope='module')
def png_records(png_build):
  name, dirs = png_build
  return _read_all(tfds.data_source(name, data_dir=dirs[0]))


def test_builder_is_registered_with_array_record():
  builder = tfds.builder('synthetic_portraits/demo', data_dir='/nonexistent')
  assert isinstance(builder, synthetic_portraits.SyntheticPortraits)
  assert builder.info.file_format.value == 'array_record'
  assert builder.builder_config.image_size == 128


def test_make_config_names_never_collide():
  assert synthetic_portraits.make_config('demo').name == 'demo'
  # Overrides equal to the base (or None, as from unset flags) keep the name.
  assert synthetic_portraits.make_config(
      'demo', image_size=128, seed=None).name == 'demo'
  # A named config reached through overrides reuses its directory.
  assert synthetic_portraits.make_config(
      'demo', image_size=64, num_train=16, num_validation=4,
      num_test=4).name == 'tiny'
  variants = [{}, {'seed': 1}, {'image_size': 96}, {'num_test': 7},
              {'image_format': 'png'}, {'jpeg_quality': 80},
              {'num_train': 4, 'num_validation': 0}]
  names = {synthetic_portraits.make_config('demo', **v).name for v in variants}
  assert len(names) == len(variants)
  with pytest.raises(ValueError, match='tiny'):
    synthetic_portraits.make_config('nope')
  with pytest.raises(ValueError, match='image_size'):
    synthetic_portraits.make_config('demo', size=3)
  with pytest.raises(ValueError, match='synthetic_portraits'):
    build.get_builder('nope')


def test_split_counts_shapes_and_dtypes(png_records):
  assert {s: len(r) for s, r in png_records.items()} == _COUNTS
  for split, records in png_records.items():
    for index, record in enumerate(records):
      assert record['name'] == f'synthetic_{split}_{index:06d}'
      for key in ('image', 'fg', 'bg'):
        assert record[key].shape == (64, 64, 3)
        assert record[key].dtype == np.uint8
      assert record['alpha'].shape == (64, 64, 1)
      assert record['alpha'].dtype == np.uint8


def test_build_is_deterministic(png_build, png_records):
  name, dirs = png_build
  other = _read_all(tfds.data_source(name, data_dir=dirs[1]))
  for split, records in png_records.items():
    for mine, theirs in zip(records, other[split]):
      for key in ('image', 'alpha', 'fg', 'bg', 'name'):
        np.testing.assert_array_equal(mine[key], theirs[key])


def test_examples_do_not_depend_on_generation_order(png_records):
  for split, index in (('train', 3), ('test', 2)):
    alone = synthetic.generate_example(index, split, seed=0, image_size=64)
    record = png_records[split][index]
    assert alone['name'] == record['name']
    np.testing.assert_array_equal(alone['alpha'], record['alpha'][..., 0])
    for key in ('image', 'fg', 'bg'):
      np.testing.assert_array_equal(alone[key], record[key])


def test_different_seed_or_split_differs():
  base = synthetic.generate_example(0, 'train', seed=0, image_size=64)
  for other in (synthetic.generate_example(0, 'train', seed=1, image_size=64),
                synthetic.generate_example(0, 'test', seed=0, image_size=64),
                synthetic.generate_example(1, 'train', seed=0, image_size=64)):
    assert not np.array_equal(base['alpha'], other['alpha'])
    assert not np.array_equal(base['image'], other['image'])


def test_alpha_is_a_soft_matte(png_records):
  alphas = np.stack([r['alpha'] for r in png_records['train']])
  fractional = (alphas > 0) & (alphas < 255)
  for alpha, soft in zip(alphas, fractional):
    assert (alpha == 0).mean() > 0.05 and (alpha == 255).mean() > 0.05
    assert soft.mean() > 0.01
  assert fractional.mean() > 0.02
  # Many distinct levels: real coverage and opacity, not a blurred mask edge.
  assert len(np.unique(alphas[fractional])) > 100


def test_image_is_the_composite_png_exact(png_records):
  for records in png_records.values():
    for record in records:
      alpha = record['alpha'].astype(np.float64) / 255
      expected = np.rint(alpha * record['fg'] + (1 - alpha) * record['bg'])
      np.testing.assert_array_equal(record['image'], expected)


def test_jpeg_named_config_composite_within_tolerance(tmp_path):
  name = build.build_synthetic(tmp_path, 'tiny', num_train=3, num_validation=1,
                               num_test=1)
  assert name == 'synthetic_portraits/custom_64px_3-1-1_seed0_jpeg95'
  records = _read_all(tfds.data_source(name, data_dir=tmp_path))
  for record in records['train']:
    alpha = record['alpha'].astype(np.float64) / 255
    expected = alpha * record['fg'] + (1 - alpha) * record['bg']
    error = np.abs(record['image'] - expected)
    assert error.mean() < 3 and np.percentile(error, 99) < 20
  exact = synthetic.generate_example(0, 'train', image_size=64)
  for key in ('image', 'fg', 'bg'):
    error = np.abs(records['train'][0][key] - exact[key].astype(np.float64))
    assert error.mean() < 3


def test_background_photos_exclude_people(monkeypatch):
  for held_out in ('astronaut', 'camera'):
    assert held_out in synthetic.HELD_OUT_PHOTOS
    with pytest.raises(ValueError):
      synthetic.load_photo(held_out)
  splits = synthetic.BACKGROUND_PHOTOS
  assert set(splits) == set(synthetic.SPLIT_IDS)
  used = [name for names in splits.values() for name in names]
  assert len(used) == len(set(used))  # disjoint between splits
  assert not set(used) & set(synthetic.HELD_OUT_PHOTOS)
  for name in used:  # all bundled, loadable offline
    assert synthetic.load_photo(name).mode == 'RGB'
  # Generation only ever asks for its own split's photos.
  requested = []
  original = synthetic.load_photo
  monkeypatch.setattr(synthetic, 'load_photo',
                      lambda name: requested.append(name) or original(name))
  for split, names in splits.items():
    requested.clear()
    for index in range(24):
      synthetic.generate_example(index, split, image_size=32)
    assert requested and set(requested) <= set(names)


def test_interrupted_build_leaves_no_data_set(tmp_path, monkeypatch):
  calls = []

  def failing_record(index, split, config):
    calls.append(index)
    if len(calls) > 2:
      raise RuntimeError('interrupted')
    return original(index, split, config)

  original = synthetic_portraits.make_record
  monkeypatch.setattr(synthetic_portraits, 'make_record', failing_record)
  with pytest.raises(RuntimeError, match='interrupted'):
    build.build_synthetic(tmp_path, 'tiny', num_train=4, seed=5)
  config_dir = (tmp_path / 'synthetic_portraits' /
                'custom_64px_4-4-4_seed5_jpeg95')
  assert not config_dir.exists() or not list(config_dir.iterdir())
  monkeypatch.undo()
  builder = synthetic_portraits.SyntheticPortraits(
      data_dir=tmp_path,
      config=synthetic_portraits.make_config('tiny', num_train=4, seed=5))
  assert not builder.is_prepared()


def _run(*args):
  env = dict(os.environ, PYTHONPATH=str(_REPO))
  result = subprocess.run([sys.executable, *args], cwd=_REPO, env=env,
                          capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def test_read_without_our_code(png_build, png_records):
  name, dirs = png_build
  path = dirs[0] / name / '1.0.0'
  script = (
      'import json, sys\n'
      'import tensorflow_datasets as tfds\n'
      f'source = tfds.builder_from_directory({str(path)!r}).as_data_source()\n'
      'record = source["validation"][1]\n'
      'assert not [m for m in sys.modules if m.startswith("data_prep")]\n'
      'print(json.dumps({k: [int(v.sum()), list(v.shape)] for k, v in\n'
      '                  record.items() if k != "name"}))\n')
  got = json.loads(_run('-c', script).strip().splitlines()[-1])
  record = png_records['validation'][1]
  for key in ('image', 'alpha', 'fg', 'bg'):
    assert got[key] == [int(record[key].sum()), list(record[key].shape)]


def test_cli_builds_once(tmp_path):
  args = ['-m', 'data_prep.build', 'synthetic_portraits',
          f'--data_dir={tmp_path}', '--config=tiny', '--num_train=2',
          '--num_validation=1', '--num_test=1', '--image_format=png']
  out = _run(*args)
  expected = tmp_path / 'synthetic_portraits' / 'custom_64px_2-1-1_seed0_png'
  assert str(expected / '1.0.0') in out
  source = tfds.data_source('synthetic_portraits/custom_64px_2-1-1_seed0_png',
                            data_dir=tmp_path)
  assert [len(source[s]) for s in ('train', 'validation', 'test')] == [2, 1, 1]
  assert 'nothing to do' in _run(*args)
