"""The Beam pipelines of data_prep (DirectRunner, 2 worker processes) against the
single-machine path: the same records, labels and reports; bad inputs reported
and nothing else lost; a failed build leaves no readable data set."""
import glob
import json
import os
import pathlib
import re
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_prep import autolabel
from data_prep import compose
from data_prep import matting_sets
from data_prep import quality
from data_prep import report as report_lib
from data_prep import synthetic
from tests.data_prep import fixtures
from tests.data_prep.test_autolabel import photo_folder  # pylint: disable=unused-import

pytest.importorskip('apache_beam', reason='apache-beam is not installed (pip install '
                    '-e .[beam]); the Beam pipelines of data_prep are not tested')

# Each test starts Beam worker processes and builds twice: tens of seconds here.
pytestmark = pytest.mark.slow

_REPO = pathlib.Path(__file__).resolve().parents[2]
# The test setting: the DirectRunner with 2 worker processes.
_TWO_PROCESSES = 'direct_num_workers=2,direct_running_mode=multi_processing'
_SHARD_RE = re.compile(r'-(\w+)\.array_record-(\d+)-of-\d+$')


@pytest.fixture(autouse=True)
def _workers_import_this_checkout(monkeypatch):
  # Beam's worker processes import data_prep by name: from this checkout.
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [str(_REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))


def _canonical_splits(directory: str) -> dict[str, list[bytes]]:
  """{split: records of all its shards in order, as deterministically serialized
  Examples} (protobuf may order a map's entries per process; shard counts may
  differ between TFDS's two writers)."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  shards = {}
  for path in glob.glob(os.path.join(directory, '*.array_record-*')):
    split, index = _SHARD_RE.search(path).groups()
    shards.setdefault(split, []).append((int(index), path))
  out = {}
  for split, paths in shards.items():
    out[split] = []
    for _, path in sorted(paths):
      reader = array_record_module.ArrayRecordReader(path)
      out[split] += [tf_example_pb2.Example.FromString(raw).SerializeToString(deterministic=True)
                     for raw in reader.read_all()]
      reader.close()
  return out


def _build_both(tmp_path, layout, **fields):
  """(single-machine directory, Beam builder) of the same config."""
  _, single = matting_sets.build_matting_set(str(tmp_path / 'single'), layout, progress=False,
                                             **fields)
  config = matting_sets.make_config(layout, **fields)
  builder = matting_sets.MattingSets(data_dir=str(tmp_path / 'beam'), config=config,
                                     progress=False)
  from data_prep import beam_pipeline  # pylint: disable=g-import-not-at-top
  builder.download_and_prepare(download_config=beam_pipeline.download_config(_TWO_PROCESSES))
  return single, builder


def _assert_same_build(single: str, builder) -> dict:
  """Equal records per split and byte-identical reports; returns the summary."""
  beam_dir = os.fspath(builder.data_dir)
  expected, got = _canonical_splits(single), _canonical_splits(beam_dir)
  assert sorted(got) == sorted(expected)
  for split in expected:
    assert len(got[split]) == len(expected[split]), split
    assert got[split] == expected[split], split
  with open(os.path.join(single, matting_sets.REPORT_NAME), encoding='utf-8') as f:
    single_report = f.read()
  with open(os.path.join(beam_dir, matting_sets.REPORT_NAME), encoding='utf-8') as f:
    assert f.read() == single_report
  assert not os.path.exists(os.path.join(beam_dir, '.beam'))  # work files removed
  _, summary = report_lib.read_report(os.path.join(beam_dir, matting_sets.REPORT_NAME))
  assert builder.beam_metrics['examples_written'] == sum(summary['examples'].values())
  for split, count in summary['examples'].items():
    assert builder.beam_metrics[f'examples_written_{split}'] == count
  return summary


def test_compose_layout_same_records_and_report(tmp_path):
  root = tmp_path / 'in'
  fixtures.write_foregrounds(str(root / 'fg'), str(root / 'alpha'), ['p0', 'p1', 'p2', 'p3'])
  fixtures.write_backgrounds(str(root / 'bg'), 5)
  # A corrupt background: a report line for every composite that picked it.
  (root / 'bg' / 'bg99.jpg').write_bytes(b'\xff\xd8 not a jpeg')
  single, builder = _build_both(
      tmp_path, 'compose', fg_dir=root / 'fg', alpha_dir=root / 'alpha', bg_dir=root / 'bg',
      num_bg=3, image_format='jpeg', jpeg_quality=90, seed=3, test_fraction=0.3)
  _assert_same_build(single, builder)
  assert builder.beam_metrics['sources'] == 4


def test_natural_layout_with_bad_inputs_same_records_and_report(tmp_path):
  bad = fixtures.write_bad_inputs(str(tmp_path / 'in'))
  single, builder = _build_both(tmp_path, 'natural', image_dir=bad['image_dir'],
                                alpha_dir=bad['alpha_dir'], image_format='png',
                                val_fraction=0.25)
  summary = _assert_same_build(single, builder)
  # Every corrupt input is a report line and every good one is a record.
  entries, _ = report_lib.read_report(os.path.join(os.fspath(builder.data_dir),
                                                   matting_sets.REPORT_NAME))
  skipped = {_relative(e['file'], tmp_path / 'in'): e['reason'] for e in entries
             if e['action'] == 'skipped'}
  assert skipped == bad['skipped']
  names = sorted(record['name'].decode()
                 for records in tfds.data_source(
                     f'matting_sets/{builder.builder_config.name}',
                     data_dir=str(tmp_path / 'beam')).values()
                 for record in records)
  assert names == bad['good']
  assert sum(summary['examples'].values()) == len(bad['good'])
  # Files the workers refused are counted by reason (the listing's own are not).
  for reason in ('unreadable', 'decompression_bomb', 'alpha_size_mismatch'):
    assert builder.beam_metrics[f'skipped: {reason}'] >= 1


def _relative(path, root):
  """'x.png' for root/image/x.png, 'alpha/x.png' for root/alpha/x.png."""
  rel = os.path.relpath(path, root)
  return rel[len('image/'):] if rel.startswith('image/') else rel


def _autolabel_inputs(root):
  """8 photos with masks: one a duplicate of another (phash), one with an empty
  mask, one corrupt; 6 backgrounds."""
  for i in range(6):
    example = synthetic.generate_example(i, 'train', image_size=64)
    mask = np.where(example['alpha'] >= 128, 255, 0).astype(np.uint8)
    fixtures.save(str(root / 'image' / f's{i}.png'), example['image'])
    fixtures.save(str(root / 'mask' / f's{i}.png'), mask)
    if i == 0:  # the same photo again, later in name order: dropped as a duplicate
      fixtures.save(str(root / 'image' / 'z_copy.png'), example['image'])
      fixtures.save(str(root / 'mask' / 'z_copy.png'), mask)
      fixtures.save(str(root / 'image' / 'empty.png'), example['image'])
      fixtures.save(str(root / 'mask' / 'empty.png'), np.zeros_like(mask))
  (root / 'image' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
  fixtures.save(str(root / 'mask' / 'corrupt.png'), np.zeros((64, 64), np.uint8))
  fixtures.write_backgrounds(str(root / 'bg'), 6)


def test_autolabel_layout_same_records_and_report(tmp_path):
  root = tmp_path / 'in'
  _autolabel_inputs(root)
  thresholds = quality.Thresholds(min_side=0, min_sharpness=0.0, min_coverage=0.0,
                                  max_coverage=1.0, min_mean_luma=0.0, max_mean_luma=1.0,
                                  max_clipped=1.0, max_phash_distance=8, min_confidence=0.3)
  single, builder = _build_both(
      tmp_path, 'autolabel', image_dir=root / 'image', alpha_dir=root / 'mask',
      bg_dir=root / 'bg', num_bg=2, eval_num_bg=1, image_format='png', min_bg_side=0,
      quality_filter=thresholds, val_fraction=0.3)
  summary = _assert_same_build(single, builder)
  by_reason = summary['by_reason']
  assert by_reason['dropped'] == {'autolabel': 1, 'quality: duplicate': 1}
  assert by_reason['skipped'] == {'unreadable': 1}
  assert builder.beam_metrics['dropped: quality: duplicate'] == 1
  # The labeller ran on the 8 readable photos (the empty mask fails inside it).
  assert builder.beam_metrics['label_ms_count'] == 8


def test_autolabel_folder_same_alphas_and_report(photo_folder, tmp_path):
  images, masks = photo_folder
  single, beam_out = tmp_path / 'single', tmp_path / 'beam'
  autolabel.run(images, autolabel.FolderMasks(masks), str(single), progress=False)
  summary = autolabel.run_beam(images, autolabel.FolderMasks(masks), str(beam_out),
                               beam_options=_TWO_PROCESSES)
  assert (summary['total'], summary['labelled'], summary['skipped']) == (8, 3, 5)
  assert summary['beam_metrics']['labelled'] == 3
  assert summary['beam_metrics']['skipped'] == 5

  def lines(out):
    with open(out / 'report.jsonl', encoding='utf-8') as f:
      items = [json.loads(line) for line in f]
    # 'seconds' is a timing; everything else must agree.
    return [{k: v for k, v in item.items() if k != 'seconds'} for item in items[:-1]], items[-1]

  single_lines, _ = lines(single)
  beam_lines, _ = lines(beam_out)
  assert beam_lines == single_lines
  labelled = [line for line in single_lines if line['status'] == 'labelled']
  assert len(labelled) == 3
  for line in labelled:
    # Same code, same inputs, same libraries: the closed-form solve (float64
    # conjugate gradients) is deterministic, so the 8-bit alphas agree exactly;
    # one 8-bit level is allowed for a solve whose BLAS sums in another order
    # in another process (a value at a rounding boundary).
    alpha_single = np.asarray(Image.open(single / line['alpha']), np.int16)
    alpha_beam = np.asarray(Image.open(beam_out / line['alpha']), np.int16)
    assert np.abs(alpha_single - alpha_beam).max() <= 1, line['file']
    fg_single = np.asarray(Image.open(single / line['fg']), np.int16)
    fg_beam = np.asarray(Image.open(beam_out / line['fg']), np.int16)
    assert np.abs(fg_single - fg_beam).max() <= 1, line['file']
  assert not os.path.exists(beam_out / '.beam_tasks.jsonl')

  # Restart: finished labels are not redone; a label without its meta file is.
  os.remove(beam_out / 'meta' / 'p1.json')
  summary = autolabel.run_beam(images, autolabel.FolderMasks(masks), str(beam_out),
                               beam_options=_TWO_PROCESSES)
  assert (summary['resumed'], summary['labelled'], summary['skipped']) == (2, 1, 5)


def test_interrupted_build_leaves_no_readable_data_set(tmp_path, monkeypatch):
  root = tmp_path / 'in'
  fixtures.write_foregrounds(str(root / 'fg'), str(root / 'alpha'), ['p0', 'p1', 'p2', 'p3'])
  fixtures.write_backgrounds(str(root / 'bg'), 3)
  fields = dict(fg_dir=root / 'fg', alpha_dir=root / 'alpha', bg_dir=root / 'bg', num_bg=2,
                image_format='png')
  from data_prep import beam_pipeline  # pylint: disable=g-import-not-at-top
  real = compose.records_of

  def failing(task, settings, backgrounds):
    if task[1] == 2:  # the third source: other workers have written records by now
      raise RuntimeError('injected failure in the middle of the build')
    return real(task, settings, backgrounds)

  # Threads, not processes, so that the patched function is the one the workers run.
  monkeypatch.setattr(compose, 'records_of', failing)
  config = matting_sets.make_config('compose', **fields)
  data_dir = tmp_path / 'data'
  builder = matting_sets.MattingSets(data_dir=str(data_dir), config=config, progress=False)
  with pytest.raises(Exception, match='injected failure'):
    builder.download_and_prepare(download_config=beam_pipeline.download_config(
        'direct_num_workers=2,direct_running_mode=multi_threading'))
  name = f'matting_sets/{config.name}'
  config_dir = data_dir / 'matting_sets' / config.name
  assert not builder.is_prepared()
  assert sorted(os.listdir(config_dir)) == ['build_report.failed.jsonl']  # no incomplete.*
  with pytest.raises(Exception):
    tfds.data_source(name, data_dir=str(data_dir))

  # Restart: the same build, without the failure, completes.
  monkeypatch.setattr(compose, 'records_of', real)
  shutil.rmtree(config_dir)
  builder = matting_sets.MattingSets(data_dir=str(data_dir), config=config, progress=False)
  builder.download_and_prepare(download_config=beam_pipeline.download_config(_TWO_PROCESSES))
  assert len(tfds.data_source(name, data_dir=str(data_dir))['train']) == 4 * 2
