"""Bad inputs never stop a matting-set build: each is skipped or converted with
a report line, and a failed build leaves no data set where readers look."""
import os

import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest
import tensorflow_datasets as tfds

from data_prep import compose
from data_prep import matting_sets
from data_prep import report as report_lib
from tests.data_prep import fixtures


def _report(directory):
  return report_lib.read_report(os.path.join(directory, matting_sets.REPORT_NAME))


def _relative(path, root):
  """'image/x.png' -> 'x.png', 'alpha/x.png' stays (the fixture's naming)."""
  rel = os.path.relpath(path, root)
  return rel[len('image/'):] if rel.startswith('image/') else rel


@pytest.fixture(scope='module')
def bad_build(tmp_path_factory):
  root = tmp_path_factory.mktemp('bad')
  expected = fixtures.write_bad_inputs(str(root))
  name, directory = matting_sets.build_matting_set(
      str(root / 'data'), 'natural', image_dir=expected['image_dir'],
      alpha_dir=expected['alpha_dir'], image_format='png', fg_method='none', progress=False)
  source = tfds.data_source(name, data_dir=str(root / 'data'))
  records = {source['train'][i]['name'].decode(): source['train'][i]
             for i in range(len(source['train']))}
  return root, expected, records, directory


def test_every_bad_file_is_reported_with_its_reason(bad_build):
  root, expected, _, directory = bad_build
  entries, summary = _report(directory)
  skipped = {_relative(e['file'], root): e['reason'] for e in entries if e['action'] == 'skipped'}
  converted = {_relative(e['file'], root): e['reason'] for e in entries
               if e['action'] == 'converted'}
  assert skipped == expected['skipped']
  assert converted == expected['converted']
  assert summary['skipped'] == len(expected['skipped'])
  for entry in entries:
    assert entry['detail'] and os.path.isabs(entry['file'])


def test_good_and_converted_files_are_all_present(bad_build):
  _, expected, records, directory = bad_build
  assert sorted(records) == expected['good']
  assert _report(directory)[1]['examples'] == {'train': len(expected['good'])}
  for name, record in records.items():
    assert record['image'].shape[:2] == record['alpha'].shape[:2], name
    assert record['image'].dtype == record['alpha'].dtype == np.uint8


def test_conversions_give_the_expected_pixels(bad_build):
  _, expected, records, _ = bad_build
  image_dir = expected['image_dir']
  gray = np.asarray(Image.open(os.path.join(image_dir, 'gray.png')))
  np.testing.assert_array_equal(records['gray']['image'], np.dstack([gray] * 3))
  palette = Image.open(os.path.join(image_dir, 'palette.png'))
  assert palette.mode == 'P'
  np.testing.assert_array_equal(records['palette']['image'], np.asarray(palette.convert('RGB')))
  deep = np.asarray(Image.open(os.path.join(image_dir, 'deep16.png')), np.float64)
  np.testing.assert_array_equal(records['deep16']['image'][..., 0], np.rint(deep / 257))
  np.testing.assert_array_equal(records['alpha16']['alpha'][..., 0],
                                fixtures.portrait(3)['alpha'])
  np.testing.assert_array_equal(records['rgba']['image'], fixtures.portrait(2)['image'])
  # EXIF: stored sideways, read upright (the alpha's shape).
  upright = ImageOps.exif_transpose(Image.open(os.path.join(image_dir, 'rotated.jpg')))
  np.testing.assert_array_equal(records['rotated']['image'], np.asarray(upright))
  np.testing.assert_array_equal(records['rotated']['alpha'][..., 0],
                                fixtures.portrait(1)['alpha'])
  # A half-resolution alpha with the image's aspect is resized onto it.
  assert records['halfalpha']['alpha'].shape == (48, 64, 1)


def test_alpha_matching_the_stored_orientation_keeps_it(tmp_path):
  example = fixtures.portrait(0)
  sideways = np.ascontiguousarray(np.rot90(example['image'], 1))
  os.makedirs(tmp_path / 'image')
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(sideways).save(tmp_path / 'image' / 'x.png', exif=exif.tobytes())
  fixtures.save(str(tmp_path / 'alpha' / 'x.png'), np.rot90(example['alpha'], 1))
  source = compose.Source('x', 'natural', str(tmp_path / 'image' / 'x.png'),
                          str(tmp_path / 'alpha' / 'x.png'))
  rgb, alpha, notes = compose.load_pair(source, compose.Settings())
  np.testing.assert_array_equal(rgb, sideways)
  assert alpha.shape == rgb.shape[:2]
  assert [n['reason'] for n in notes] == ['exif_ignored']


def test_bad_backgrounds_are_reported_and_replaced(tmp_path):
  fixtures.write_foregrounds(str(tmp_path / 'fg'), str(tmp_path / 'alpha'), ['a', 'b'])
  fixtures.write_backgrounds(str(tmp_path / 'bg'), 2)
  (tmp_path / 'bg' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  (tmp_path / 'bg' / 'readme.txt').write_text('credits')
  name, directory = matting_sets.build_matting_set(
      str(tmp_path / 'data'), 'compose', fg_dir=tmp_path / 'fg', alpha_dir=tmp_path / 'alpha',
      bg_dir=tmp_path / 'bg', num_bg=3, image_format='png', fg_method='none', progress=False)
  records = tfds.data_source(name, data_dir=str(tmp_path / 'data'))['train']
  assert len(records) == 2 * 3
  used = {records[i]['name'].decode().split('_', 1)[1] for i in range(len(records))}
  assert used <= {'bg00', 'bg01'}
  entries, _ = _report(directory)
  reasons = {os.path.basename(e['file']): e['reason'] for e in entries}
  assert reasons == {'broken.jpg': 'unreadable', 'readme.txt': 'not_an_image'}


def test_interrupted_build_leaves_no_data_set(tmp_path, monkeypatch):
  fixtures.write_natural(str(tmp_path / 'image'), str(tmp_path / 'alpha'), ['a', 'b', 'c'])
  calls = []
  original = compose.make_records

  def failing(task):
    calls.append(task)
    if len(calls) > 1:
      raise RuntimeError('interrupted')
    return original(task)

  monkeypatch.setattr(compose, 'make_records', failing)
  fields = dict(image_dir=tmp_path / 'image', alpha_dir=tmp_path / 'alpha', fg_method='none')
  with pytest.raises(RuntimeError, match='interrupted'):
    matting_sets.build_matting_set(str(tmp_path / 'data'), 'natural', progress=False, **fields)
  config = matting_sets.make_config('natural', **fields)
  config_dir = tmp_path / 'data' / 'matting_sets' / config.name
  # No version directory (only the failed build's report) and nothing to read.
  assert sorted(os.listdir(config_dir)) == ['build_report.failed.jsonl']
  builder = matting_sets.MattingSets(data_dir=str(tmp_path / 'data'), config=config)
  assert not builder.is_prepared()
  with pytest.raises(Exception):
    tfds.data_source(f'matting_sets/{config.name}', data_dir=str(tmp_path / 'data'))
  monkeypatch.undo()
  name, _ = matting_sets.build_matting_set(str(tmp_path / 'data'), 'natural', progress=False,
                                           **fields)
  assert len(tfds.data_source(name, data_dir=str(tmp_path / 'data'))['train']) == 3


def test_a_split_with_no_usable_file_fails_clearly(tmp_path):
  os.makedirs(tmp_path / 'image')
  os.makedirs(tmp_path / 'alpha')
  fixtures.bomb_png(str(tmp_path / 'image' / 'x.png'))
  fixtures.save(str(tmp_path / 'alpha' / 'x.png'), np.zeros((8, 8), np.uint8))
  with pytest.raises(ValueError, match="Split 'train': none of its 1 sources"):
    matting_sets.build_matting_set(str(tmp_path / 'data'), 'natural', progress=False,
                                   image_dir=tmp_path / 'image', alpha_dir=tmp_path / 'alpha')
  failed = next((tmp_path / 'data' / 'matting_sets').glob('*/build_report.failed.jsonl'))
  entries, _ = report_lib.read_report(str(failed))
  assert [e['reason'] for e in entries] == ['decompression_bomb']


def test_max_pixels_limit_is_a_setting(tmp_path):
  fixtures.write_natural(str(tmp_path / 'image'), str(tmp_path / 'alpha'), ['a', 'b'])
  source = compose.Source('a', 'natural', str(tmp_path / 'image' / 'a.png'),
                          str(tmp_path / 'alpha' / 'a.png'))
  with pytest.raises(compose.BadInput) as error:
    compose.load_pair(source, compose.Settings(max_pixels=1000))
  assert error.value.reason == 'decompression_bomb'
