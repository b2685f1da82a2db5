"""Matting at full resolution: buckets, compile counts, batching, tiles, max_side.

Tiny models with deterministic random weights at a sane scale (LeCun-normal
kernels, BatchNorm at identity), no training; tiny bucket sets so that every
compile is of a 32-160 px shape.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat import cli
from bgmat.inference.remover import Remover
from bgmat.inference import resolution
from bgmat import models
from bgmat.models import generator

SIZE = 32
# Shapes 32x64, 64x32, 64x64, 64x128, 128x64, 128x128.
SMALL = resolution.Buckets(long_sides=(64, 128), aspects=(0.5, 1.0))


def random_variables(module, seed, *inputs, **kwargs):
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'var' in name or 'scale' in name:
      return np.ones(leaf.shape, np.float32)
    if 'kernel' in name:  # LeCun normal: activations keep their scale with depth.
      return (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
    return (rng.normal(size=leaf.shape) * 0.1).astype(np.float32)

  shapes = jax.eval_shape(
      lambda key: module.init({'params': key, 'dropout': key}, *inputs, **kwargs),
      jax.random.key(0))
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def networks():
  preseg = models.get_model('deeplabv3plus_tiny')
  matting = models.get_model('generator_tiny')
  image, prior = jnp.zeros((1, SIZE, SIZE, 3)), jnp.zeros((1, SIZE, SIZE, 1))
  return (matting, random_variables(matting, 1, image, prior, train=False),
          preseg, random_variables(preseg, 2, image, train=False))


def make_remover(networks, buckets=SMALL, **kwargs):
  return Remover(*networks, SIZE, buckets=buckets, **kwargs)


def photo(height, width, seed=0):
  """Smooth colour ramps plus noise: structure for the networks to respond to."""
  yy, xx = np.mgrid[:height, :width]
  base = np.stack([yy * 3, xx * 3, (yy + xx) * 2], axis=-1) % 256
  noise = np.random.default_rng(seed).integers(0, 40, size=(height, width, 3))
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def test_bucket_set_and_plan():
  default = resolution.Buckets()
  shapes = default.shapes()
  assert len(shapes) == len(set(shapes)) == 30
  assert all(h % generator.SIZE_MULTIPLE == 0 and w % generator.SIZE_MULTIPLE == 0
             for h, w in shapes)
  assert resolution.STRIDE == generator.SIZE_MULTIPLE
  assert default.max_side == 2048
  assert default.fit(600, 400) == (768, 448)  # 3:4 would be 768x576: more area.
  assert default.fit(3000, 100) is None
  assert resolution.plan(300, 200, default) == resolution.Plan((300, 200), (512, 288))
  phone = resolution.plan(3024, 4032, default)
  assert phone.bucket is None and phone.tile == (2048, 2048) and phone.size == (3024, 4032)
  capped = resolution.plan(3024, 4032, default, max_side=1024)
  assert capped.size == (768, 1024) and capped.bucket == (768, 1024)
  assert resolution.plan(3000, 1000, default).tile == (2048, 1152)
  with pytest.raises(ValueError, match='aspects'):
    resolution.Buckets(aspects=(0.0,))


def test_tiles_cover_and_blend_exactly():
  height, width = 100, 90
  field = np.random.default_rng(0).random((height, width)).astype(np.float32)
  total = np.zeros((height, width), np.float32)
  weight = np.zeros((height, width), np.float32)
  pieces = resolution.tiles(height, width, (64, 64), overlap=16)
  assert len(pieces) == 4
  for rows, cols, weights in pieces:
    assert weights.shape == (64, 64) and weights.min() > 0
    total[rows, cols] += weights * field[rows, cols]
    weight[rows, cols] += weights
  assert weight.min() > 0  # Every pixel is covered.
  np.testing.assert_allclose(total / weight, field, rtol=1e-5)
  assert resolution.tile_origins(100, 64, 16) == [0, 36]
  assert resolution.tile_origins(40, 64, 16) == [0]
  assert resolution.tile_origins(200, 64, 16) == [0, 48, 96, 136]


def test_one_compile_per_bucket_and_output_size(networks):
  remover = make_remover(networks)
  # 40x60 and 50x64 share the 64x64 bucket; 100x45 needs 128x64.
  for height, width in ((40, 60), (50, 64), (100, 45)):
    alpha = remover.alpha(photo(height, width))
    assert alpha.shape == (height, width) and alpha.dtype == np.float32
    assert 0 <= alpha.min() and alpha.max() <= 1
  matting = {shape: n for (name, shape), n in remover.compiles.items() if name == 'matting'}
  assert matting == {(1, 64, 64, 3): 1, (1, 128, 64, 3): 1}
  assert remover.compiles[('preseg', (1, SIZE, SIZE, 3))] == 1
  remover.alpha(photo(61, 33, seed=5))  # Same bucket again: no new compile.
  assert sum(n for (name, _), n in remover.compiles.items() if name == 'matting') == 2


def test_batching_equals_one_by_one(networks):
  remover = make_remover(networks)
  images = [photo(40, 60, 1), photo(100, 45, 2), photo(50, 64, 3), photo(60, 60, 4),
            photo(64, 41, 5)]
  batched = remover.predict_batch(images, batch_size=2)
  assert [r['alpha'].shape for r in batched] == [i.shape[:2] for i in images]
  for image, result in zip(images, batched):
    single = remover.predict(image)
    np.testing.assert_allclose(result['alpha'], single['alpha'], atol=1e-5)
    np.testing.assert_allclose(result['preseg'], single['preseg'], atol=1e-5)
  # Different photos give different mattes (the comparison above is not vacuous).
  assert np.abs(batched[0]['alpha'] - batched[2]['alpha'][:40, :60]).mean() > 1e-3
  batch_shapes = {s for (name, s), _ in remover.compiles.items() if name == 'matting'}
  assert {s for s in batch_shapes if s[0] == 2} == {(2, 64, 64, 3), (2, 128, 64, 3)}


def test_tiles_agree_with_direct_run(networks):
  image = photo(150, 130)
  direct = make_remover(networks, resolution.Buckets((64, 160), (0.5, 1.0))).alpha(image)
  tiled_remover = make_remover(networks, resolution.Buckets((64, 96), (0.5, 1.0)),
                               tile_overlap=24)
  tiled = tiled_remover.alpha(image)
  assert tiled.shape == direct.shape == (150, 130)
  assert ('matting', (1, 96, 96, 3)) in tiled_remover.compiles  # It did tile.
  assert direct.std() > 0.05  # Random weights give a structured, non-constant alpha.
  # Tiles lack context beyond their borders, so they agree closely on average,
  # not exactly; a misplaced tile would be off by about the alpha's spread.
  error = np.abs(tiled - direct)
  assert error.mean() < 0.01 and np.percentile(error, 95) < 0.03
  assert np.abs(np.roll(tiled, 6, axis=0) - direct).mean() > 3 * error.mean()


def test_max_side_caps_the_matting_size(networks):
  remover = make_remover(networks, max_side=50)
  image = photo(100, 90)
  alpha = remover.alpha(image)
  assert alpha.shape == (100, 90)
  # Matted at 50x45 (the 64x64 bucket), not at 100x90 (128x128).
  assert {s for (name, s) in remover.compiles if name == 'matting'} == {(1, 64, 64, 3)}
  full = make_remover(networks).alpha(image)
  assert np.abs(alpha - full).mean() < 0.1  # The same matte, at a lower resolution.
  with pytest.raises(ValueError, match='max_side'):
    make_remover(networks, max_side=0)


@pytest.mark.slow  # Compiles tiny DeepLabV3+ steps: tens of seconds.
def test_preseg_test_time_augmentation_reaches_the_prior(networks):
  """Remover(preseg_flip, preseg_scales): its pre-segmentation is
  `runs.preseg_probability` with that augmentation on the letterboxed photo."""
  from bgmat import runs  # pylint: disable=g-import-not-at-top
  image = photo(48, 64)
  plain = make_remover(networks).presegment([image])[0]
  tta = make_remover(networks, preseg_flip=True, preseg_scales=(1.0, 1.5))
  got = tta.presegment([image])[0]
  boxed, (h, w) = resolution.letterbox(image, SIZE)
  _, _, preseg, preseg_vars = networks
  want = np.asarray(runs.preseg_probability(
      preseg, preseg_vars, boxed[None].astype(np.float32) / 255.0, flip=True,
      scales=(1.0, 1.5)))[0, :h, :w, 0]
  # The same computation compiled in another program: float32 rounding.
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert got.shape == plain.shape == (h, w)
  assert np.abs(got - plain).max() > 1e-3
  with pytest.raises(ValueError, match='preseg_scales'):
    make_remover(networks, preseg_scales=(0.0,))


def test_check_scales_is_the_one_check_of_cli_and_api(capsys):
  """resolution.check_scales serves Remover, runs and `--preseg-scales`."""
  assert resolution.check_scales(['1', 1.5]) == (1.0, 1.5)
  for bad in ((), (1.0, 0.0), ('a',), None):
    with pytest.raises(ValueError, match='test-time scales'):
      resolution.check_scales(bad)
  for text in ('1,-2', '1,x', ','):
    with pytest.raises(SystemExit) as e:
      cli.main(['remove', 'in.png', '--workdir', 'random', '--preseg-scales', text])
    assert e.value.code == 2
    assert 'expected scales > 0' in capsys.readouterr().err


@pytest.mark.parametrize('command', ['remove', 'serve'])
def test_test_time_augmentation_needs_a_workdir(command, tmp_path, capsys):
  """An export keeps the pre-segmentation it was exported with: asking for
  test-time augmentation with --model is refused before anything loads."""
  args = [command] + (['in.png', '-o', str(tmp_path / 'out')] if command == 'remove' else [])
  for tta in (['--preseg-flip'], ['--preseg-scales', '1,1.5']):
    assert cli.main(args + ['--model', str(tmp_path / 'absent.bgmat')] + tta) == 2
    assert '--preseg-flip / --preseg-scales need --workdir' in capsys.readouterr().err
