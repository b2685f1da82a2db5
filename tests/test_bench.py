"""Smoke tests of the benchmarks: they run at tiny size and print full tables."""

import jax
import numpy as np
import pytest
from PIL import Image

from bench import input_pipeline as pipeline_bench
from bench import train_step as step_bench


def test_peer_twin_has_the_peers_parameters():
  """The JAX twin (smp head) and the PyTorch peer are the same architecture."""
  peer_torch = pytest.importorskip('bench.peer_torch')
  pytest.importorskip('segmentation_models_pytorch')
  from bgmat.models.deeplab import DeepLabV3Plus  # pylint: disable=g-import-not-at-top
  ours = DeepLabV3Plus(backbone='xception_tiny', head='smp', aspp_channels=32,
                       decoder_channels=32)
  shapes = jax.eval_shape(lambda: ours.init(jax.random.key(0), np.zeros((1, 32, 32, 3),
                                                                        np.float32)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))
  assert count == peer_torch.param_count(peer_torch.build_peer('xception_tiny', 32))


def test_xla_flops_reads_both_cost_analysis_forms():
  compiled = jax.jit(lambda a, b: a @ b).lower(
      np.ones((8, 16), np.float32), np.ones((16, 4), np.float32)).compile()
  assert step_bench.xla_flops(compiled) == pytest.approx(2 * 8 * 16 * 4, rel=0.01)

  class Listed:
    def cost_analysis(self):
      return [{'flops': 12.0}]
  assert step_bench.xla_flops(Listed()) == 12.0


@pytest.mark.slow
def test_train_step_bench_tiny_with_peer(tmp_path, capsys):
  pytest.importorskip('segmentation_models_pytorch')
  out = tmp_path / 'table.md'
  step_bench.main(['--preset', 'tiny', '--steps', '1', '--batch', '2',
                   '--peer_modes', 'eager', '--out', str(out)])
  printed = capsys.readouterr().out
  rows = [line for line in printed.splitlines() if line.startswith('| preseg') or
          line.startswith('| matting')]
  assert len(rows) == 4, printed  # config model, JAX twin, peer eager, matting
  twin, peer = rows[1], rows[2]
  assert 'bgmat JAX' in twin and 'PyTorch smp, eager' in peer and 'failed' not in peer
  ratio = float(peer.rstrip(' |').rsplit('|', 1)[1])
  assert np.isfinite(ratio) and ratio > 0
  for row in rows:
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert float(cells[6]) > 0 and cells[8].endswith('%'), row  # images/s, MFU
  assert out.read_text().startswith('`python -m bench.train_step --preset tiny')


@pytest.mark.slow
def test_input_pipeline_bench_tiny(tmp_path, capsys):
  pipeline_bench.main(['--size', '32', '--num_train', '8', '--batch', '4', '--batches', '2',
                       '--workers', '0', '--config_size', 'tiny', '--no_step',
                       '--data_dir', str(tmp_path / 'data'), '--out', str(tmp_path / 'p.md')])
  printed = capsys.readouterr().out
  worker_rows = [line for line in printed.splitlines() if line.startswith('| 0 |')]
  assert len(worker_rows) == 1 and float(worker_rows[0].split('|')[2]) > 0
  consumers = [line for line in printed.splitlines() if 'ESTIMATE' in line]
  assert len(consumers) == 2  # preseg and matting steps on the reference GPU
  assert (tmp_path / 'p.md').exists()


@pytest.mark.slow
def test_preseg_infer_bench_tiny_with_peer(tmp_path, capsys):
  pytest.importorskip('segmentation_models_pytorch')
  from bench import preseg_infer  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'infer.md'
  preseg_infer.main(['--preset', 'tiny', '--size', '64', '--batches', '1,2', '--warmup', '1',
                     '--repeats', '1', '--peer_modes', 'eager', '--out', str(out)])
  printed = capsys.readouterr().out
  rows = [line for line in printed.splitlines() if line.startswith('| 1 |') or
          line.startswith('| 2 |')]
  assert len(rows) == 6, printed  # per batch: config model, JAX twin, peer eager
  for row in rows:
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert 'failed' not in cells[2] and float(cells[3]) > 0 and float(cells[4]) > 0, row
    assert float(cells[6].split()[0]) > 0, row  # ours / peer time
  assert out.read_text().startswith('`python -m bench.preseg_infer --preset tiny')


def test_preseg_infer_interleaves_and_summarises_round_ratios():
  from bench import preseg_infer  # pylint: disable=g-import-not-at-top
  order = []
  entries = [{'call': lambda name=name: order.append(name), 'sync': lambda out: out}
             for name in 'abc']
  times = preseg_infer.time_interleaved(entries, repeats=3)
  assert [len(t) for t in times] == [3, 3, 3]
  # Every round calls each entry once, starting one further on each round.
  assert order == list('abc') + list('bca') + list('cab')
  assert preseg_infer.ratio_summary([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == '1 (0.5-1.5)'
  assert preseg_infer.ratio_summary([1.0], [4.0]) == '0.25'


def test_grad_breakdown_adds_up_to_the_dim_grad():
  from bench import matting_grad_breakdown
  from bgmat import metrics
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[:40, :48]
  gt = np.clip((xx - 20) * 40 + 128, 0, 255).astype(np.uint8)  # A soft vertical edge.
  pred = np.clip(gt.astype(int) + rng.integers(-30, 30, gt.shape), 0, 255).astype(np.uint8)
  trimap = np.where(np.abs(xx - 20) <= 6, 128, np.where(xx > 20, 255, 0)).astype(np.uint8)
  band = trimap == 128
  parts = matting_grad_breakdown.breakdown(pred, gt, band)
  # The same float32 amplitudes (metrics.gradient_amplitude) and float64 sums as bgmat.metrics.
  np.testing.assert_allclose(parts['grad'], metrics.matting_metrics(pred, gt, which=('grad',))['grad'],
                             rtol=1e-4)
  np.testing.assert_allclose(parts['grad_band'],
                             metrics.matting_metrics(pred, gt, trimap, which=('grad',))['grad'],
                             rtol=1e-4)
  np.testing.assert_allclose(parts['band_softer'] + parts['band_sharper'], parts['grad_band'],
                             rtol=1e-12)
  np.testing.assert_allclose(parts['grad_band'] + parts['outside'], parts['grad'], rtol=1e-12)
  assert parts['band_softer'] > 0 and parts['band_sharper'] > 0 and parts['outside'] > 0


def _portrait(height=80, width=60):
  """A record whose red channel is its alpha: a predictor reading red is exact."""
  yy, xx = np.mgrid[:height, :width]
  alpha = (((yy - 30) ** 2 / 400 + (xx - 30) ** 2 / 200) < 1).astype(np.uint8) * 255
  image = np.zeros((height, width, 3), np.uint8)
  image[..., 0] = alpha
  return {'image': image, 'alpha': alpha[..., None]}


def test_preseg_scale_scores_the_photo_box_at_each_scale():
  from bench import preseg_scale  # pylint: disable=g-import-not-at-top
  source = [_portrait(), _portrait(60, 80)]
  # Reading red recovers the shrunk mask exactly only where the box is placed right.
  exact = lambda x: x[..., :1]
  rows = preseg_scale.score(exact, source, size=64, scales=[1.0, 0.5])
  assert [r['scale'] for r in rows] == [1.0, 0.5]
  for row in rows:
    assert row['iou'] == 1.0 and row['boundary_f'] == 1.0 and row['n'] == 2
  # The same probability 8 px to the left scores lower.
  shifted = lambda x: np.roll(x[..., :1], -8, axis=2)
  assert preseg_scale.score(shifted, source, size=64, scales=[0.5])[0]['iou'] < 0.9
  assert preseg_scale.score(lambda x: 0 * x[..., :1], source, 64, [0.5])[0]['iou'] == 0.0


def test_preseg_scale_places_the_photo_at_the_bottom_centre():
  from bench import preseg_scale  # pylint: disable=g-import-not-at-top
  record = _portrait()
  canvas, (top, left, height, width), mask = preseg_scale.shrink(
      record['image'], record['alpha'], 64, 0.5)
  assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8
  assert (height, width) == (32, 24) == mask.shape
  assert (top, left) == (32, 20)
  with pytest.raises(ValueError, match='scale 1.5'):
    preseg_scale.shrink(record['image'], record['alpha'], 64, 1.5)
  with pytest.raises(ValueError, match='no examples'):
    preseg_scale.score(lambda x: x, [], 64, [1.0])


def test_preseg_scale_held_out_needs_workdirs(tmp_path, capsys):
  """--held_out without runs to render is refused, not silently skipped."""
  from bench import preseg_scale  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit):
    preseg_scale.main(['--data_dir', str(tmp_path), '--held_out', str(tmp_path / 'grid.png'),
                       '--mediapipe_dir', str(tmp_path)])
  assert '--held_out' in capsys.readouterr().err
  assert not (tmp_path / 'grid.png').exists()


def test_preseg_scale_scores_a_peers_saved_masks(tmp_path):
  """The dump writes what peer_mediapipe's segment step reads; masks saved in
  its layout score like the model that produced them."""
  import json  # pylint: disable=g-import-not-at-top
  from bench import preseg_scale  # pylint: disable=g-import-not-at-top
  source = [_portrait(), _portrait(60, 80)]
  preseg_scale.dump(source, 64, [1.0, 0.5], 'validation', str(tmp_path))
  for scale in (1.0, 0.5):
    split = preseg_scale.scale_split('validation', scale)
    index = json.loads((tmp_path / 'images' / split / 'index.json').read_text())
    assert [e['file'] for e in index] == ['00000.png', '00001.png']
    masks = tmp_path / 'masks_model0' / split
    masks.mkdir(parents=True)
    for entry in index:  # A "peer" that reads red, as the segment step would save it.
      with Image.open(tmp_path / 'images' / split / entry['file']) as canvas:
        np.save(masks / (entry['file'][:-4] + '.npy'),
                np.asarray(canvas, np.float32)[..., 0] / 255.0)
  peer = preseg_scale.mediapipe_probability(str(tmp_path), 'validation', 0, 64)
  rows = preseg_scale.score_probabilities(peer, source, 64, [1.0, 0.5])
  assert [(r['iou'], r['boundary_f']) for r in rows] == [(1.0, 1.0), (1.0, 1.0)]
  np.save(masks / '00000.npy', np.zeros((32, 32), np.float32))
  with pytest.raises(ValueError, match='00000.npy: shape'):
    preseg_scale.score_probabilities(peer, source, 64, [0.5])


def test_preseg_scale_held_out_grid_shows_each_photo_box_with_its_probability():
  from bench import preseg_scale  # pylint: disable=g-import-not-at-top
  white = np.full((40, 30, 3), 255, np.uint8)
  photos = {'a': white, 'b': white[:30, :40]}
  # A model that keeps everything and one that keeps nothing: the kept photo is
  # white wherever it lies, the dropped one shows the checkerboard's grey.
  keep = lambda x: np.ones_like(x[..., :1])
  drop = lambda x: np.zeros_like(x[..., :1])
  grid = preseg_scale.held_out_grid([keep, drop], 64, [1.0, 0.5], photos, height=20)
  # Two rows of four panels (two photos x two scales) 20 px tall, 2 px white gaps.
  assert grid.dtype == np.uint8 and grid.shape[0] == 2 * 20 + 2
  assert (grid[:20] == 255).all()
  assert (grid[22:] < 255).any() and (grid[20:22] == 255).all()
  with pytest.raises(ValueError, match='scale 0'):
    preseg_scale.held_out_grid([keep], 64, [0.0], photos)
