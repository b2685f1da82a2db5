"""Quality filter: statistics, perceptual hash, drop reasons, folder scan and CLI."""
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
from PIL import ImageFilter
import pytest
import scipy.fftpack

from data_prep import quality
from data_prep import synthetic

_REPO = pathlib.Path(__file__).resolve().parents[2]
_SMALL = quality.Thresholds(min_side=64)  # Synthetic test photos are 128 px.


def _example(index, size=128):
  return synthetic.generate_example(index, 'train', image_size=size)


def _blur(image, radius=2):
  return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def _jpeg(image, quality_level=50):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', quality=quality_level)
  return np.asarray(Image.open(buffer).convert('RGB'))


def test_measure_values():
  example = _example(0)
  stats = quality.measure(example['image'], example['alpha'])
  assert set(stats) == {'height', 'width', 'sharpness', 'coverage', 'mean_luma',
                        'clipped_dark', 'clipped_bright', 'phash'}
  assert (stats['height'], stats['width']) == (128, 128)
  assert stats['coverage'] == pytest.approx(example['alpha'].mean() / 255)
  assert quality.measure(example['image'])['coverage'] is None
  black = np.zeros((40, 60, 3), np.uint8)
  black[:, :15] = 255
  stats = quality.measure(black)
  assert stats['clipped_dark'] == pytest.approx(0.75)
  assert stats['clipped_bright'] == pytest.approx(0.25)
  assert stats['mean_luma'] == pytest.approx(0.25, abs=1e-3)
  assert 0 <= stats['phash'] < 2**64
  json.dumps(stats)  # Reports are JSON.
  with pytest.raises(ValueError, match='alpha shape'):
    quality.measure(example['image'], example['alpha'][:10])


def test_sharpness_does_not_depend_on_resolution_but_on_blur():
  large = _example(1, size=640)['image'][64:576]  # 512 x 640: not square.
  half = np.asarray(Image.fromarray(large).reduce(2))
  sharpness = quality.measure(large)['sharpness']
  assert quality.measure(half)['sharpness'] == pytest.approx(sharpness, rel=0.05)
  blurred = quality.measure(_blur(half, 2))['sharpness']
  assert blurred < quality.Thresholds().min_sharpness < sharpness


def test_phash_matches_imagehash_formula_and_finds_copies():
  image = _example(2)['image']
  # imagehash.phash: 32x32 greyscale, fftpack DCT on both axes, 8x8 low band > median.
  luma = quality._resize(quality._luma(image), 32, 32).astype(np.float64)  # pylint: disable=protected-access
  dct = scipy.fftpack.dct(scipy.fftpack.dct(luma, axis=0), axis=1)[:8, :8]
  bits = (dct > np.median(dct)).ravel()
  assert quality.phash(quality._luma(image)) == sum(  # pylint: disable=protected-access
      int(b) << (63 - i) for i, b in enumerate(bits))
  h = quality.measure(image)['phash']
  half = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR))
  assert quality.hamming(h, quality.measure(_jpeg(image))['phash']) <= 2
  assert quality.hamming(h, quality.measure(half)['phash']) <= 2
  others = [quality.measure(_example(i)['image'])['phash'] for i in range(3, 8)]
  assert min(quality.hamming(h, o) for o in others) > quality.Thresholds().max_phash_distance


def _stats(**overrides):
  stats = {'height': 600, 'width': 800, 'sharpness': 100.0, 'coverage': 0.4,
           'mean_luma': 0.5, 'clipped_dark': 0.0, 'clipped_bright': 0.0, 'phash': 0}
  stats.update(overrides)
  return stats


@pytest.mark.parametrize('overrides, expected', [
    ({'height': 300}, 'resolution: short side 300 px < min_side 512'),
    ({'sharpness': 3.25}, 'sharpness: 3.2 < min_sharpness 20'),
    ({'coverage': 0.01}, 'coverage: 0.010 < min_coverage 0.05'),
    ({'coverage': 0.99}, 'coverage: 0.990 > max_coverage 0.95'),
    ({'mean_luma': 0.05}, 'exposure: mean luma 0.050 < min_mean_luma 0.1'),
    ({'mean_luma': 0.95}, 'exposure: mean luma 0.950 > max_mean_luma 0.9'),
    ({'clipped_bright': 0.3}, 'exposure: clipped_bright 0.300 > max_clipped 0.2'),
    ({'confidence': 0.2}, 'confidence: 0.200 < min_confidence 0.75'),
    ({'coverage': None, 'confidence': None}, None),
    ({'confidence': 0.9}, None),
])
def test_decide_reasons(overrides, expected):
  assert quality.QualityFilter(quality.Thresholds()).decide('a.jpg', _stats(**overrides)) == expected


def test_duplicates_name_the_kept_image_and_only_kept_images_count():
  quality_filter = quality.QualityFilter(quality.Thresholds())
  assert quality_filter.decide('blurry.jpg', _stats(phash=0b1111, sharpness=1.0)).startswith(
      'sharpness')
  assert quality_filter.decide('first.jpg', _stats(phash=0b1111)) is None  # blurry one not kept
  assert quality_filter.decide('far.jpg', _stats(phash=2**64 - 1)) is None
  assert quality_filter.decide('copy.jpg', _stats(phash=0b111)) == (
      'duplicate: phash distance 1 <= max_phash_distance 8 to first.jpg')
  no_dedup = quality.QualityFilter(quality.Thresholds(max_phash_distance=0))
  assert no_dedup.decide('a', _stats()) is None and no_dedup.decide('b', _stats()) is None


def _save(array, path):
  Image.fromarray(array).save(path)
  return path


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """Photos (+ mattes) with one example of each drop reason; (images, alphas, expected)."""
  root = tmp_path_factory.mktemp('quality')
  images, alphas = root / 'images', root / 'alphas'
  images.mkdir()
  alphas.mkdir()
  good = [_example(i) for i in range(3)]
  for i, example in enumerate(good):
    _save(example['image'], images / f'good{i}.png')
    _save(example['alpha'], alphas / f'good{i}.png')
  _save(_jpeg(good[0]['image'], 90), images / 'good0_copy.jpg')
  _save(good[0]['alpha'], alphas / 'good0_copy.png')
  _save(_blur(good[1]['image'], 3), images / 'blurry.png')
  _save(good[1]['alpha'], alphas / 'blurry.png')
  _save((good[2]['image'] * 0.15).astype(np.uint8), images / 'dark.png')
  _save(good[2]['alpha'], alphas / 'dark.png')
  _save(good[2]['image'][:40, :60], images / 'small.png')
  _save(good[2]['alpha'][:40, :60], alphas / 'small.png')
  _save(good[1]['image'], images / 'nomatte.png')
  _save(good[1]['image'], images / 'wrongsize.png')
  _save(good[1]['alpha'][:64], alphas / 'wrongsize.png')
  (images / 'notes.png').write_text('not an image')
  (images / 'truncated.jpg').write_bytes((images / 'good0_copy.jpg').read_bytes()[:80])
  expected = {'good0_copy.jpg': 'duplicate', 'blurry.png': 'sharpness', 'dark.png': 'exposure',
              'small.png': 'resolution', 'nomatte.png': 'unreadable',
              'wrongsize.png': 'unreadable', 'notes.png': 'unreadable',
              'truncated.jpg': 'unreadable'}
  return str(images), str(alphas), expected


def test_scan_reports_every_dropped_file_with_its_reason(folder):
  images, alphas, expected = folder
  dropped, summary = quality.scan(images, alphas, _SMALL)
  reasons = {record['file']: record['reason'] for record in dropped}
  assert {name: quality.reason_category(r) for name, r in reasons.items()} == expected
  assert 'to good0.png' in reasons['good0_copy.jpg']
  assert 'wrongsize.png' in reasons['wrongsize.png'] and '128x64' in reasons['wrongsize.png']
  assert 'no matte' in reasons['nomatte.png']
  assert summary['total'] == 11 and summary['kept'] == 3
  assert summary['by_reason'] == {'duplicate': 1, 'exposure': 1, 'resolution': 1,
                                  'sharpness': 1, 'unreadable': 4}


def test_cli_writes_jsonl_report_with_two_workers(folder, tmp_path):
  images, _, _ = folder
  report = tmp_path / 'sub' / 'report.jsonl'
  subprocess.run([sys.executable, '-m', 'data_prep.quality', '--images', images,
                  '--report', str(report), '--min_side', '64', '--workers', '2'],
                 cwd=_REPO, check=True, capture_output=True, timeout=300)
  lines = [json.loads(line) for line in report.read_text().splitlines()]
  summary = lines[-1]['summary']
  # Without mattes nomatte.png and wrongsize.png are readable: copies of good1.png.
  assert summary == {'total': 11, 'kept': 3, 'dropped': 8,
                     'by_reason': {'duplicate': 3, 'exposure': 1, 'resolution': 1,
                                   'sharpness': 1, 'unreadable': 2}}
  assert [line['file'] for line in lines[:-1]] == sorted(line['file'] for line in lines[:-1])
  assert not [f for f in os.listdir(report.parent) if '.tmp' in f]
