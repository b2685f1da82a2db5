"""bgmat.report from tiny runs: every row of the table, finite numbers, PNGs."""

import json
import os
import shutil
import types

import numpy as np
from PIL import Image
import pytest

from bgmat import baselines
from bgmat import report
from bgmat import report_extras
from bgmat import report_stats
from bgmat import trimap as trimap_lib


def test_trimap_from_prob_bands():
  prob = np.zeros((20, 20), np.float32)
  prob[5:15, 5:15] = 1.0
  trimap = trimap_lib.trimap_from_probability(prob, 0.9, 0.1, radius=2)
  assert trimap[10, 10] == 1.0 and trimap[0, 0] == 0.0
  assert trimap[5, 10] == 0.5 and trimap[3, 10] == 0.5 and trimap[2, 10] == 0.0
  assert trimap[7, 10] == 1.0 and trimap[6, 10] == 0.5


def test_closed_form_recovers_a_clean_matte_from_the_gt_trimap():
  rng = np.random.default_rng(0)
  alpha = np.zeros((24, 24, 1), np.float32)
  alpha[:, 12:] = 1.0
  alpha[:, 11] = 0.5
  fg, bg = np.array([0.9, 0.2, 0.1]), np.array([0.1, 0.3, 0.8])
  image = alpha * fg + (1 - alpha) * bg + rng.normal(0, 0.005, (24, 24, 3))
  pred = baselines.closed_form_alpha(np.clip(image, 0, 1), trimap_lib.trimap01_from_alpha(alpha, 2))
  assert np.abs(pred - alpha).max() < 0.1


def _alphamatting_dir(root):
  """2 photos, 32x32, alphamatting.com layout, soft alpha and two trimaps."""
  rng = np.random.default_rng(0)
  for sub in ('image', 'alpha', 'trimap1', 'trimap2'):
    os.makedirs(root / sub)
  yy, xx = np.mgrid[:32, :32]
  for i, name in enumerate(('GT01.png', 'GT02.png')):
    alpha = np.clip((xx - 12 - 4 * i) / 6.0, 0, 1)
    fg, bg = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(root / 'image' / name)
    Image.fromarray(np.round(alpha * 255).astype(np.uint8)).save(root / 'alpha' / name)
    for sub, band in (('trimap1', 2), ('trimap2', 4)):
      trimap = np.where(alpha >= 1, 255, np.where(alpha <= 0, 0, 128)).astype(np.uint8)
      unknown = (xx >= 12 + 4 * i - band) & (xx <= 18 + 4 * i + band)
      trimap[unknown] = 128
      Image.fromarray(trimap).save(root / sub / name)
  return root


def test_report_from_tiny_runs(tiny_runs, tiny_data, tmp_path):
  out = tmp_path / 'report'
  # A second seed of the matting variant (a copy: same numbers, spread 0),
  # outside the shared runs (never written into), naming the same stage 1.
  seed1 = tmp_path / 'matting_s1'
  shutil.copytree(tiny_runs / 'matting', seed1)
  config = json.loads((seed1 / 'config.json').read_text())
  config['preseg_workdir'] = str(tiny_runs / 'preseg')
  (seed1 / 'config.json').write_text(json.dumps(config))
  peer = tmp_path / 'peer.json'
  peer.write_text(json.dumps({'method': 'MediaPipe selfie', 'split': 'validation', 'n': 4,
                              'iou': 0.5, 'boundary_f': 0.25}))
  alphamatting = _alphamatting_dir(tmp_path / 'alphamatting')
  path = report.main(['--workdirs', *(str(tiny_runs / n) for n in
                                      ('preseg', 'preseg_original', 'matting')),
                      str(seed1),
                      '--data_dir', tiny_data[1], '--max_examples', '4', '--cf_config', 'tiny',
                      '--peer_table', str(peer), '--alphamatting', str(alphamatting),
                      '--alphamatting_trimaps', 'trimap1', 'trimap2', '--alphamatting_prior', 'ramp',
                      '--alphamatting_paste_known', '--tta_flip',
                      '--tta_scales', '1', '1.5', '--cutouts',
                      '--out', str(out)])
  text = open(path, encoding='utf-8').read()
  rows = json.loads((out / 'results.json').read_text())
  summary = json.loads((out / 'summary.json').read_text())
  methods = [r['method'] for r in rows]
  assert methods[:4] == ['DeepLabV3+ original', 'DeepLabV3+ improved',
                         'matting, adversarial (weight 0.05)',
                         'matting, adversarial (weight 0.05)']
  assert [r['run'] for r in rows[2:4]] == ['matting', 'matting_s1']
  assert methods[4] == 'pre-segmentation as alpha (automatic)'
  assert [r['trimap'].split(' ')[0] for r in rows[5:]] == ['pre-segmentation', 'ground']
  for row in rows:
    for key in report.COLUMNS:
      assert np.isfinite(row[key]), (row['method'], key)
    assert f"| {row['method']} |" in text
    assert row['n'] == 4
  # Seeds: one group of two runs, its mean is the mean of the rows.
  group = next(g for g in summary['matting_groups'] if g['method'].startswith('matting'))
  assert group['n'] == 2 and group['runs'] == ['matting', 'matting_s1']
  assert group['sad'] == pytest.approx(np.mean([rows[2]['sad'], rows[3]['sad']]))
  assert group['sad_spread'] == pytest.approx(abs(rows[2]['sad'] - rows[3]['sad']) / 2)
  assert 'mean ± spread, 2 seeds' in text
  # Segmentation table: every run, IoU and boundary F in [0, 1], the peer row.
  seg = summary['segmentation']
  assert [r['run'] for r in seg] == ['preseg_original', 'preseg', 'matting', 'matting_s1',
                                      'preseg_original', 'preseg', 'matting', 'matting_s1']
  assert [r['method'] for r in seg[4:]] == [
      'DeepLabV3+ original, test-time flip, scales 1/1.5',
      'DeepLabV3+ improved, test-time flip, scales 1/1.5',
      'matting, adversarial (weight 0.05), stage 1 with test-time flip, scales 1/1.5',
      'matting, adversarial (weight 0.05), stage 1 with test-time flip, scales 1/1.5']
  for row in seg:
    assert 0 <= row['iou'] <= 1 and 0 <= row['boundary_f'] <= 1 and row['split'] == 'validation'
  assert '| MediaPipe selfie (peer, peer.json) | - | validation | 4 | 0.5 | 0.25 |' in text
  # alphamatting: both trimaps, the matting runs and closed-form, 2 photos each.
  am = summary['alphamatting']
  assert sorted({(r['trimap'], r['run']) for r in am}) == [
      (t, r) for t in ('trimap1', 'trimap2') for r in ('-', 'matting', 'matting_s1')]
  for row in am:
    assert row['n'] == 2 and all(np.isfinite(row[k]) for k in report.COLUMNS[1:])
  assert 'alphamatting.com (trimap2)' in text
  assert 'unknown d_bg / (d_bg + d_fg)' in text
  assert "known regions pasted in" in text
  assert 'not tested (a run is missing)' in text  # no noadv run given
  assert 'CPU' in text or 'cores (os.cpu_count)' in text
  # Cut-outs: input | each seed of the method (256 px tall, 2 px gaps).
  # ... and again on the test-time-augmented prior.
  assert ('input, `matting`, `matting_s1`, `matting, stage 1 with test-time flip, scales '
          '1/1.5`, `matting_s1, stage 1 with test-time flip, scales 1/1.5`') in text
  assert Image.open(out / 'cutout_astronaut.png').size == (5 * 256 + 4 * 2, 256)
  for name in ('curves_preseg.png', 'curves_matting.png', 'samples.png'):
    assert os.path.getsize(out / name) > 1000


def test_cutouts_of_the_held_out_photos(matting_workdir, tmp_path):
  written = report_extras.render_cutouts(
      [('tiny', matting_workdir), ('again', matting_workdir)],
      str(tmp_path), height=64, log=lambda _: None)
  assert [photo for photo, _ in written] == ['astronaut', 'grace_hopper']
  for _, path in written:
    picture = np.asarray(Image.open(path))
    assert picture.shape[0] == 64 and picture.shape[2] == 3
    # input + two cut-outs, 2 px gaps: three panels of the photo's width at 64 px.
    assert picture.shape[1] > 3 * 40


def test_no_pictures_of_real_data():
  assert report.data_pictures_allowed('synthetic_portraits/tiny')
  assert not report.data_pictures_allowed('synthetic_portraits/tiny', no_data_pictures=True)
  for name in ('matting_sets/portraits_study', 'matting_sets/portraits_seg', 'anything/else'):
    assert not report.data_pictures_allowed(name)


def _group(method, values, deterministic=False):
  rows = [dict(method=method, run=f'{method}_s{i}', deterministic=deterministic, sad=v, iou=1 - v)
          for i, v in enumerate(values)]
  return report_stats.group_seeds(rows, ('sad', 'iou'))[0]


def test_seed_groups_mean_and_half_range():
  group = _group('a', [1.0, 2.0, 4.0])
  assert group['n'] == 3 and group['sad'] == pytest.approx(7 / 3)
  assert group['sad_spread'] == pytest.approx(1.5)
  assert _group('a', [1.0])['sad_spread'] is None
  assert _group('a', [1.0], deterministic=True)['sad_spread'] == 0.0


def test_verdict_is_a_tie_within_the_spread():
  # means 1.0 ± 0.2 vs 1.3 ± 0.2: difference 0.3 <= 0.4 -> tie on both numbers.
  better, worse = _group('new', [0.8, 1.2]), _group('old', [1.1, 1.5])
  text, outcomes = report_stats.verdict(better, worse, ('sad', 'iou'))
  assert [o for o, _ in outcomes] == ['tie', 'tie'] and text.startswith('tie')
  # 1.0 ± 0.1 vs 1.3 ± 0.1: difference 0.3 > 0.2 -> a win (SAD down, IoU up).
  better, worse = _group('new', [0.9, 1.1]), _group('old', [1.2, 1.4])
  text, outcomes = report_stats.verdict(better, worse, ('sad', 'iou'))
  assert [o for o, _ in outcomes] == ['win', 'win'] and text.startswith('holds')
  text, outcomes = report_stats.verdict(worse, better, ('sad', 'iou'))
  assert [o for o, _ in outcomes] == ['loss', 'loss'] and text.startswith('does not hold')
  # One seed: never a win, whatever the gap.
  text, _ = report_stats.verdict(_group('new', [0.1]), worse, ('sad',))
  assert text.startswith('1 seed: spread unknown')
  # A deterministic baseline has spread 0: the seeds' spread alone decides.
  text, _ = report_stats.verdict(better, _group('cf', [1.05], deterministic=True), ('sad',))
  assert text.startswith('tie')


def test_peer_tables_json_and_markdown(tmp_path):
  table = tmp_path / 'peer.md'
  table.write_text('# MediaPipe\n\nLoad 3.1.\n\n| Method | split | n | IoU | Boundary F |\n'
                   '|:---|---|--:|---|---|\n| mediapipe selfie | validation | 134 | 0.912 | '
                   '0.55 |\n| other | validation | 134 | 0.8 | 0.4 |\n\ntrailing text\n')
  rows = report_stats.read_peer_table(str(table))
  assert rows == [dict(method='mediapipe selfie', split='validation', n=134, iou=0.912,
                       boundary_f=0.55),
                  dict(method='other', split='validation', n=134, iou=0.8, boundary_f=0.4)]
  data = tmp_path / 'peer.json'
  data.write_text(json.dumps([{'method': 'm', 'split': 'test', 'n': 3, 'iou': 0.9,
                               'boundary_f': 0.5}]))
  assert report_stats.read_peer_table(str(data))[0]['split'] == 'test'
  data.write_text(json.dumps({'method': 'm', 'iou': 1.5, 'boundary_f': 0.5}))
  with pytest.raises(ValueError, match='outside'):
    report_stats.read_peer_table(str(data))
  table.write_text('| a | b |\n|---|---|\n| 1 | 2 |\n')
  with pytest.raises(ValueError, match='no markdown table'):
    report_stats.read_peer_table(str(table))


def test_peer_table_as_the_mediapipe_script_writes_it(tmp_path):
  # The peer script's own markdown (no `method` column: `model_selection`;
  # values with their std in brackets; the split in its title) is readable.
  from bench import peer_mediapipe
  args = types.SimpleNamespace(dataset='matting_sets/portraits_seg', split='validation',
                               image_size=256, trimap_radius=6)
  info = dict(mediapipe='0.10.21', python='3.11', machine='box', loadavg='0 0 0')
  row = dict(model=0, n=141, ms=170.0, iou=0.9666, iou_std=0.036, boundary_f=0.8172,
             boundary_f_std=0.147, sad=1.2, sad_std=1.3, mse=0.016, mse_std=0.02)
  table = tmp_path / 'peer_mediapipe_validation.md'
  table.write_text(peer_mediapipe._table([row, dict(row, model=1, iou=0.5)], args, info))
  rows = report_stats.read_peer_table(str(table))
  assert rows == [
      dict(method='model_selection 0 general (256x256)', split='validation', n=141,
           iou=0.9666, boundary_f=0.8172),
      dict(method='model_selection 1 landscape (144x256)', split='validation', n=141,
           iou=0.5, boundary_f=0.8172)]
  # A `split` column wins over the title; a bracketed spread in a method name stays.
  table.write_text('# peer, split test\n\n| method | split | IoU | boundary F |\n|---|---|---|---|\n'
                   '| seg (v2) | validation | 0.9 (0.01) | 0.5 |\n')
  assert report_stats.read_peer_table(str(table)) == [
      dict(method='seg (v2)', split='validation', n=None, iou=0.9, boundary_f=0.5)]
  table.write_text('| method | IoU | boundary F |\n|---|---|---|\n| seg | 0.9 (x | 0.5 |\n')
  with pytest.raises(ValueError, match='not a number'):
    report_stats.read_peer_table(str(table))


def test_alphamatting_loader_downscales_with_a_nearest_trimap(tmp_path):
  root = _alphamatting_dir(tmp_path / 'am')
  items = list(report_extras.load_alphamatting(str(root), 'trimap1', max_side=16))
  assert [name for name, *_ in items] == ['GT01', 'GT02']
  for _, image, alpha, trimap in items:
    assert image.shape == (16, 16, 3) and alpha.shape == (16, 16)
    assert set(np.unique(trimap)) <= {0.0, 0.5, 1.0}
  prior = report_extras.prior_from_trimap(items[0][3])
  assert set(np.unique(prior)) <= {0.0, 0.5, 1.0}
  os.remove(root / 'alpha' / 'GT02.png')
  with pytest.raises(ValueError, match='GT02.png'):
    list(report_extras.load_alphamatting(str(root), 'trimap1'))


def test_ramp_prior_crosses_the_unknown_band_linearly():
  # Columns 0-3 background, 4-10 unknown, 11-15 foreground: the nearest known
  # background / foreground pixels are columns 3 and 11, 8 px apart.
  trimap = np.zeros((5, 16), np.float32)
  trimap[:, 4:11] = 0.5
  trimap[:, 11:] = 1.0
  prior = report_extras.prior_from_trimap(trimap, fill='ramp')
  np.testing.assert_allclose(prior[2, 4:11], (np.arange(4, 11) - 3) / 8.0, rtol=1e-6)
  np.testing.assert_array_equal(prior[:, :4], 0.0)
  np.testing.assert_array_equal(prior[:, 11:], 1.0)
  np.testing.assert_array_equal(report_extras.prior_from_trimap(trimap)[:, 4:11], 0.5)
  # No known background: nothing to ramp from, the flat 0.5 stays.
  np.testing.assert_array_equal(
      report_extras.prior_from_trimap(np.maximum(trimap, 0.5), fill='ramp')[:, :11], 0.5)
  with pytest.raises(ValueError, match='fill'):
    report_extras.prior_from_trimap(trimap, fill='linear')


def test_paste_known_regions_keeps_alpha_only_in_the_unknown_region():
  trimap = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]], np.float32)
  alpha = np.array([[0.3, 0.4, 0.6], [0.2, 0.9, 0.7]], np.float32)
  pasted = report_extras.paste_known_regions(alpha, trimap)
  np.testing.assert_array_equal(pasted, np.float32([[0.0, 0.4, 1.0], [1.0, 0.9, 0.0]]))
  assert pasted.dtype == np.float32
  with pytest.raises(ValueError, match='shape'):
    report_extras.paste_known_regions(alpha, trimap[:1])


def test_report_rejects_a_directory_that_is_not_a_run(tmp_path):
  with pytest.raises(FileNotFoundError, match='no config.json'):
    report.Run(str(tmp_path))


def test_closed_form_without_known_background_is_all_foreground():
  from bgmat import baselines  # pylint: disable=g-import-not-at-top
  image = np.random.default_rng(0).random((12, 10, 3))
  trimap = np.full((12, 10, 1), 0.5, np.float32)
  trimap[:4] = 1.0  # foreground known, no background anywhere
  np.testing.assert_array_equal(baselines.closed_form_alpha(image, trimap), 1.0)
  np.testing.assert_array_equal(baselines.closed_form_alpha(image, 1.0 - trimap), 0.0)


def test_matting_segmentation_is_checked_against_its_own_stage_1():
  """The matting runs all refine one stage-1 run (the automatic baseline's); the
  'keeps IoU, raises boundary F' claim compares with that run, not with the mean
  of the improved variant's seeds (a different network the matting never saw)."""
  rows = [dict(method='pre-segmentation as alpha (automatic)', run='pre_s0', deterministic=True,
               sad=5.0),
          dict(method='matting, adversarial (weight 0.05)', run='m_s0', sad=4.0),
          dict(method='matting, adversarial (weight 0.05)', run='m_s1', sad=4.1)]
  seg_rows = [dict(method='DeepLabV3+ improved', run='pre_s0', iou=0.900, boundary_f=0.50),
              dict(method='DeepLabV3+ improved', run='pre_s1', iou=0.920, boundary_f=0.56),
              dict(method='matting, adversarial (weight 0.05)', run='m_s0', iou=0.905,
                   boundary_f=0.53),
              dict(method='matting, adversarial (weight 0.05)', run='m_s1', iou=0.907,
                   boundary_f=0.54)]
  line = next(v for v in report.verdicts(rows, seg_rows) if 'keeps the IoU' in v)
  assert 'pre_s0 (the matting runs' in line and '**holds**' in line
  # Matting runs on different stage-1 runs: the variant's seeds are the reference.
  rows[0]['deterministic'] = False
  line = next(v for v in report.verdicts(rows, seg_rows) if 'keeps the IoU' in v)
  assert "`DeepLabV3+ improved`" in line and '**holds**' not in line


def test_test_time_augmentation_averages_logits_over_flips_and_scales(preseg_workdir):
  """`runs.preseg_probability`: flip averages the logits of the image and of
  its mirror (so mirroring the input mirrors the output); scales average the
  logits of the resized inputs, resized back."""
  import jax  # pylint: disable=g-import-not-at-top
  from bgmat import runs  # pylint: disable=g-import-not-at-top
  stage = runs.load_preseg(preseg_workdir)
  images = np.random.default_rng(0).uniform(size=(2, 64, 128, 3)).astype(np.float32)
  prob = lambda x, **kw: np.asarray(runs.preseg_probability(stage.module, stage.variables, x,
                                                            **kw))
  logits = lambda x: np.asarray(stage.module.apply(stage.variables, x, train=False))
  mirror = lambda x: x[:, :, ::-1]
  # Float32 sums of the same terms in another order, through a sigmoid (slope <= 1/4).
  tol = dict(atol=1e-5, rtol=0)
  flipped = prob(images, flip=True)
  np.testing.assert_allclose(
      flipped, jax.nn.sigmoid(0.5 * (logits(images) + mirror(logits(mirror(images))))), **tol)
  np.testing.assert_allclose(prob(mirror(images), flip=True), mirror(flipped), **tol)
  plain = prob(images)
  assert np.abs(plain - flipped).max() > 1e-3  # Not symmetric: flip changes something.
  # Scale 1.5: 64x128 -> 96x192 (multiples of runs.TTA_STRIDE), logits back to 64x128.
  big = np.asarray(jax.image.resize(images, (2, 96, 192, 3), 'linear'))
  back = np.asarray(jax.image.resize(logits(big), (2, 64, 128, 1), 'linear'))
  np.testing.assert_allclose(prob(images, scales=(1.0, 1.5)),
                             jax.nn.sigmoid(0.5 * (logits(images) + back)), **tol)
  with pytest.raises(ValueError, match='scales'):
    prob(images, scales=())


def test_run_sizes_name_the_training_side_when_it_differs():
  """A run trained at another side than it is evaluated at says both."""
  import configs.preseg as preseg_configs  # pylint: disable=g-import-not-at-top
  config = preseg_configs.get_config('tiny')
  assert report._sizes(config) == f'{config.image_size} px'  # pylint: disable=protected-access
  config.train_image_size = 16
  assert report._sizes(config) == (  # pylint: disable=protected-access
      f'trained at 16 px, evaluated at {config.image_size} px')
