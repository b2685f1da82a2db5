"""Tests for the `matting_sets` builder: layouts, exact read-back, determinism
across worker counts, foreground estimation, names, filter, input pipeline."""
import glob
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from bgmat import input_pipeline
import configs.preseg as preseg_configs
from data_prep import layouts
from data_prep import matting_sets
from data_prep import report as report_lib
from data_prep import synthetic
from tests.data_prep import fixtures

_REPO = pathlib.Path(__file__).resolve().parents[2]


def read_all(name, data_dir):
  """{split: [record, ...]} with str names."""
  out = {}
  for split, records in tfds.data_source(name, data_dir=data_dir).items():
    out[split] = []
    for i in range(len(records)):
      record = dict(records[i])
      record['name'] = record['name'].decode()
      out[split].append(record)
  return out


def _build(data_dir, layout, **kwargs):
  kwargs.setdefault('image_format', 'png')
  return matting_sets.build_matting_set(str(data_dir), layout, progress=False, **kwargs)


@pytest.mark.parametrize('layout', sorted(layouts.LAYOUTS))
def test_released_layouts_build_and_read_back_exactly(tmp_path, layout):
  root = tmp_path / layout
  expected = fixtures.write_layout(str(root), layout)
  composes = layout in ('comp1k', 'd646')
  extra = {}
  if composes:
    fixtures.write_backgrounds(str(tmp_path / 'bg'), 3)
    fixtures.write_backgrounds(str(tmp_path / 'eval_bg'), 2, seed=1)
    extra = dict(bg_dir=tmp_path / 'bg', eval_bg_dir=tmp_path / 'eval_bg', num_bg=2)
  name, directory = _build(tmp_path / 'data', layout, root=root, **extra)
  records = read_all(name, tmp_path / 'data')
  assert sorted(records) == sorted(expected)
  for split, paths in expected.items():
    copies = (2 if split == 'train' else 1) if composes else 1
    assert len(records[split]) == len(paths) * copies
    assert sorted({r['name'].split('@')[0] for r in records[split]}) == sorted(paths)
    for record in records[split]:
      image_path, alpha_path = paths[record['name'].split('@')[0]]
      alpha = np.asarray(Image.open(alpha_path))
      np.testing.assert_array_equal(record['alpha'][..., 0], alpha)
      if composes:
        # The stored image is exactly the composite of the stored fg and bg.
        np.testing.assert_array_equal(
            record['image'], synthetic.composite(record['fg'], alpha, record['bg']))
      else:
        np.testing.assert_array_equal(record['image'], np.asarray(Image.open(image_path)))
  _, summary = report_lib.read_report(os.path.join(directory, matting_sets.REPORT_NAME))
  assert summary['skipped'] == 0
  assert summary['examples'] == {s: len(r) for s, r in records.items()}


@pytest.fixture(scope='module')
def compose_inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('compose_inputs')
  truth = fixtures.write_foregrounds(str(root / 'fg'), str(root / 'alpha'),
                                     ['p0', 'p1', 'p2', 'p3'])
  fixtures.write_backgrounds(str(root / 'bg'), 5)
  return root, truth


def _canonical_records(path):
  """Records of an array_record shard as deterministically serialized Examples."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return [tf_example_pb2.Example.FromString(raw).SerializeToString(deterministic=True)
            for raw in reader.read_all()]
  finally:
    reader.close()


def test_workers_and_cli_give_byte_identical_records(tmp_path, compose_inputs):
  root, _ = compose_inputs
  fields = dict(fg_dir=root / 'fg', alpha_dir=root / 'alpha', bg_dir=root / 'bg', num_bg=3,
                image_format='jpeg', jpeg_quality=90, seed=3)
  name, one = _build(tmp_path / 'one', 'compose', num_workers=1, **fields)
  env = dict(os.environ, PYTHONPATH=str(_REPO))
  result = subprocess.run(
      [sys.executable, '-m', 'data_prep.build', 'matting_sets',
       f'--data_dir={tmp_path / "two"}', '--layout=compose', f'--fg={root / "fg"}',
       f'--alpha={root / "alpha"}', f'--bg={root / "bg"}', '--num_bg=3',
       '--image_format=jpeg', '--jpeg_quality=90', '--seed=3', '--workers=2'],
      cwd=_REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  two = tmp_path / 'two' / name / '1.0.0'
  assert str(two) in result.stdout
  shards = sorted(os.path.basename(p) for p in glob.glob(os.path.join(one, '*.array_record*')))
  assert shards and shards == sorted(
      os.path.basename(p) for p in glob.glob(str(two / '*.array_record*')))
  for shard in shards:
    # Equal records, serialized canonically: the shard files themselves may still
    # differ across processes, as protobuf writes a map's entries in a
    # per-process hash order.
    assert (_canonical_records(os.path.join(one, shard))
            == _canonical_records(str(two / shard))), shard
  records = read_all(name, tmp_path / 'one')['train']
  assert len(records) == 4 * 3
  # Backgrounds differ between the copies of one foreground, chosen by seed.
  assert len({r['name'].split('_', 1)[1] for r in records[:3]}) > 1


def test_foreground_estimation_removes_the_old_background(tmp_path, compose_inputs):
  root, truth = compose_inputs
  fields = dict(fg_dir=root / 'fg', alpha_dir=root / 'alpha', bg_dir=root / 'bg')
  errors = {}
  for method in ('multilevel', 'none'):
    name, _ = _build(tmp_path, 'compose', fg_method=method, **fields)
    records = read_all(name, tmp_path)['train']
    per_image = []
    for record in records:
      example = truth[record['name'].split('@')[0]]
      soft = (example['alpha'] > 25) & (example['alpha'] < 230)
      diff = np.abs(record['fg'].astype(float) - example['fg'])[soft]
      per_image.append(diff.mean())
    errors[method] = np.mean(per_image)
  # The released fg carries green in soft pixels; estimation takes most of it out.
  assert errors['multilevel'] < 0.6 * errors['none'], errors


def test_natural_images_get_fg_and_bg(tmp_path):
  truth = fixtures.write_natural(str(tmp_path / 'image'), str(tmp_path / 'alpha'),
                                 ['a', 'b', 'c'])
  name, _ = _build(tmp_path / 'data', 'natural', image_dir=tmp_path / 'image',
                   alpha_dir=tmp_path / 'alpha')
  for record in read_all(name, tmp_path / 'data')['train']:
    alpha = record['alpha'].astype(float) / 255
    recomposed = alpha * record['fg'] + (1 - alpha) * record['bg']
    assert np.abs(recomposed - record['image']).mean() < 2.0
    # The estimated background is not the photo: the subject is taken out of it.
    opaque = record['alpha'][..., 0] == 255
    example = truth[record['name']]
    assert (np.abs(record['bg'].astype(float) - example['image'])[opaque].mean()
            > 5 * np.abs(record['fg'].astype(float) - example['image'])[opaque].mean())


def test_config_names_change_with_every_data_setting(tmp_path):
  base = dict(fg_dir=tmp_path / 'fg', alpha_dir=tmp_path / 'alpha', bg_dir=tmp_path / 'bg')
  variants = [{}, {'seed': 1}, {'num_bg': 2}, {'image_format': 'png'}, {'jpeg_quality': 80},
              {'bg_dir': tmp_path / 'other'}, {'max_side': 512}, {'fg_method': 'none'},
              {'bg_policy': 'stretch'}, {'val_fraction': 0.1}, {'alpha_mismatch': 'skip'},
              {'quality_filter': {'min_side': 10}}]
  names = {matting_sets.make_config('compose', **dict(base, **v)).name for v in variants}
  assert len(names) == len(variants)
  assert all(n.startswith('compose_') for n in names)
  # Unset flags (None) and relative vs absolute paths give the same name.
  os.chdir(tmp_path)
  assert (matting_sets.make_config('compose', fg_dir='fg', alpha_dir='alpha', bg_dir='bg',
                                   seed=None).name
          == matting_sets.make_config('compose', **base).name)
  assert matting_sets.make_config('compose', name='mine', **base).name == 'mine'
  with pytest.raises(ValueError, match='--bg'):
    matting_sets.make_config('compose', fg_dir='fg', alpha_dir='alpha')
  with pytest.raises(ValueError, match='Invalid data set name'):
    matting_sets.make_config('compose', name='a/b', **base)
  with pytest.raises(ValueError, match='layout'):
    matting_sets.make_config('nope')


def test_val_test_fractions_split_by_stable_hash(tmp_path):
  stems = [f's{i:02d}' for i in range(12)]
  fixtures.write_natural(str(tmp_path / 'image'), str(tmp_path / 'alpha'), stems)
  listing = layouts.list_sources('natural', image_dir=str(tmp_path / 'image'),
                                 alpha_dir=str(tmp_path / 'alpha'), val_fraction=0.3,
                                 test_fraction=0.3)
  got = {split: [s.id for s in sources] for split, sources in listing.sources.items()}
  assert sorted(sum(got.values(), [])) == stems
  assert set(got) == {'train', 'validation', 'test'}
  for split, ids in got.items():
    assert all(layouts.split_of(i, 0.3, 0.3) == split for i in ids)


def test_quality_filter_drops_with_reasons(tmp_path):
  quality = pytest.importorskip('data_prep.quality')
  fixtures.write_natural(str(tmp_path / 'image'), str(tmp_path / 'alpha'),
                         ['a', 'b', 'c', 'd'])
  # 'e' is 'c' again (same pixels, another name): a near-duplicate.
  for folder in ('image', 'alpha'):
    (tmp_path / folder / 'e.png').write_bytes((tmp_path / folder / 'c.png').read_bytes())
  thresholds = quality.Thresholds(min_side=50, min_sharpness=0.0, min_coverage=0.0,
                                  max_coverage=1.0, min_mean_luma=0.0, max_mean_luma=1.0,
                                  max_clipped=1.0, max_phash_distance=4)
  name, directory = _build(tmp_path / 'data', 'natural', image_dir=tmp_path / 'image',
                           alpha_dir=tmp_path / 'alpha', quality_filter=thresholds)
  kept = [r['name'] for r in read_all(name, tmp_path / 'data')['train']]
  # Short sides: a 48, b 40, c 56, d 40 (fixtures.SIZES).
  assert kept == ['c']
  entries, summary = report_lib.read_report(os.path.join(directory, matting_sets.REPORT_NAME))
  dropped = {os.path.basename(e['file']): e['detail'] for e in entries
             if e['action'] == 'dropped'}
  assert set(dropped) == {'a.png', 'b.png', 'd.png', 'e.png'}
  assert dropped['a.png'].startswith('resolution')
  assert dropped['e.png'].startswith('duplicate') and dropped['e.png'].endswith(' c')
  assert summary['dropped'] == 4


def test_input_pipeline_reads_variable_size_records(tmp_path):
  fixtures.write_natural(str(tmp_path / 'image'), str(tmp_path / 'alpha'),
                         [f'p{i}' for i in range(8)])
  name, _ = _build(tmp_path / 'data', 'natural', image_dir=tmp_path / 'image',
                   alpha_dir=tmp_path / 'alpha', val_fraction=0.3, fg_method='none')
  sizes = {r['image'].shape for r in read_all(name, tmp_path / 'data')['train']}
  assert len(sizes) > 1
  config = preseg_configs.get_config('tiny')
  config.dataset, config.data_dir = name, str(tmp_path / 'data')
  config.input.worker_count = 0
  dataset = input_pipeline.create_train_dataset(config, process_index=0, process_count=1,
                                                per_process_batch=4)
  batch = next(iter(dataset))
  assert batch['image'].shape == (4, config.image_size, config.image_size, 3)
  batches = list(input_pipeline.eval_batches(config, 'validation', process_index=0,
                                             process_count=1, per_process_batch=2))
  assert batches and batches[0]['alpha'].shape == (2, config.image_size, config.image_size, 1)
