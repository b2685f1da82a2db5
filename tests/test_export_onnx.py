"""`bgmat export --format onnx | onnx-rembg` (bgmat.export_onnx): ONNX Runtime vs JAX.

Tiny models with deterministic random weights (as test_export.py); each format
is converted once per module. Conversion is tens of seconds (jax2onnx), so the
module is `slow`. Needs the `onnx` extra plus jax2onnx (pyproject.toml).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('onnxruntime', reason='needs the onnx extra: pip install .[onnx]')
pytest.importorskip('onnx', reason='needs the onnx extra: pip install .[onnx]')
pytest.importorskip('jax2onnx', reason='needs jax2onnx: pip install --no-deps jax2onnx==0.17.1')

# pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import export_onnx
from tests.test_export import SIZE
from tests.test_export import tiny_random_remover

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def remover():
  return tiny_random_remover()


@pytest.fixture(scope='module')
def exported(remover, tmp_path_factory):
  folder = tmp_path_factory.mktemp('onnx')
  return {fmt: export_onnx.export_remover(remover, str(folder / f'{fmt}.onnx'), fmt)
          for fmt in export_onnx.FORMATS}


def _images(batch, height, width, seed):
  rng = np.random.default_rng(seed)
  return np.stack([export_onnx.synthetic(height, width, rng) for _ in range(batch)])


def test_full_graph_matches_jax_for_dynamic_batch_and_sides(remover, exported):
  done = exported['onnx']
  assert done.inputs == [('image', ['B', 'H', 'W', 3])]
  assert done.outputs == [('alpha', ['B', 'H', 'W', 1])]
  assert done.max_abs_diff < export_onnx.TOLERANCE
  sess = export_onnx.session(done.path)
  reference = jax.jit(export_onnx.pipeline_fn(remover.preseg_fn, remover.matting_fn, SIZE))
  # Batch 1 and 3; sides that are and are not multiples of 32, either orientation.
  for batch, height, width in ((1, 64, 48), (3, 40, 72), (1, 100, 37)):
    images = _images(batch, height, width, seed=height)
    alpha = sess.run(None, {'image': images})[0]
    want = np.asarray(reference(images))
    assert alpha.shape == (batch, height, width, 1) and alpha.dtype == np.float32
    # f32 on both sides, different accumulation orders: bound derived in export_onnx.
    assert np.max(np.abs(alpha - want)) < export_onnx.TOLERANCE
    assert float(np.std(want)) > 1e-3  # Random weights give a non-constant alpha.
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0
  metadata = json.loads({p.key: p.value for p in _load(done.path).metadata_props}['bgmat'])
  assert metadata['format'] == 'onnx' and metadata['working_size'] == SIZE
  assert metadata['max_abs_diff'] == done.max_abs_diff


def test_pipeline_is_the_removers_letterbox_and_prior(remover):
  """The in-graph letterbox / prior resize is Remover's (scale_and_translate vs
  Pillow: the same triangle kernel), so the alphas agree closely, not exactly."""
  from tests.test_resolution import photo  # pylint: disable=g-import-not-at-top
  image = photo(64, 96, 5)  # A multiple of 32: Remover pads nothing either.
  fn = jax.jit(export_onnx.pipeline_fn(remover.preseg_fn, remover.matting_fn, SIZE))
  got = np.asarray(fn(image[None].astype(np.float32) / 255.0))[0, ..., 0]
  want = remover.alpha(image)
  assert got.shape == want.shape
  assert np.mean(np.abs(got - want)) < 0.02


def test_rembg_convention(remover, exported):
  """rembg's u2net_custom: input 0 (1, 3, 320, 320) float32 standardised, output 0
  [:, 0] the mask (rembg sessions/base.py, sessions/u2net_custom.py)."""
  done = exported['onnx-rembg']
  sess = export_onnx.session(done.path)
  (name, shape), = done.inputs
  assert shape == ['B', 3, export_onnx.REMBG_SIZE, export_onnx.REMBG_SIZE]
  assert sess.get_inputs()[0].type == 'tensor(float)'
  assert done.outputs == [('alpha', ['B', 1, export_onnx.REMBG_SIZE, export_onnx.REMBG_SIZE])]
  reference = jax.jit(export_onnx.rembg_fn(remover.preseg_fn, remover.matting_fn, SIZE))
  size = export_onnx.REMBG_SIZE
  for batch in (1, 3):
    # rembg's BaseSession.normalize: divide by the maximum, standardise, NCHW.
    images = _images(batch, size, size, seed=batch)
    images = images / images.max(axis=(1, 2, 3), keepdims=True)
    x = ((images - np.float32(export_onnx.REMBG_MEAN)) / np.float32(export_onnx.REMBG_STD))
    x = x.transpose(0, 3, 1, 2).astype(np.float32)
    mask = sess.run(None, {name: x})[0]
    assert mask.shape == (batch, 1, size, size)
    assert np.max(np.abs(mask - np.asarray(reference(x)))) < export_onnx.TOLERANCE
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and float(np.std(mask)) > 1e-3


def _load(path):
  import onnx  # pylint: disable=g-import-not-at-top
  return onnx.load(path)


def _fake_stages(offset):
  def preseg_fn(image):  # (B, S, S, 3) -> (B, S, S, 1)
    return jax.nn.sigmoid(jnp.mean(image, axis=-1, keepdims=True) * 4 - 2)

  def matting_fn(image, prior):
    return jnp.clip(prior + offset * image[..., :1], 0.0, 1.0)
  return preseg_fn, matting_fn


def test_export_refuses_a_graph_that_drifts_and_writes_nothing(tmp_path):
  out = tmp_path / 'drift.onnx'
  with pytest.raises(ValueError, match='differs from the JAX model'):
    # Validated against a model that is not the converted one: a drift of ~0.1.
    export_onnx.export_onnx(*_fake_stages(0.0), SIZE, str(out),
                            reference=_fake_stages(0.1))
  assert not out.exists() and not list(tmp_path.iterdir())
  with pytest.raises(ValueError, match='Unknown ONNX format'):
    export_onnx.export_onnx(*_fake_stages(0.0), SIZE, str(out), format='tflite')


def test_export_writes_one_self_contained_file(tmp_path):
  out = tmp_path / 'sub' / 'fake.onnx'
  done = export_onnx.export_onnx(*_fake_stages(0.05), SIZE, str(out))
  assert [p.name for p in out.parent.iterdir()] == ['fake.onnx']  # No sidecar, no temp.
  assert done.max_abs_diff < export_onnx.TOLERANCE
  sess = export_onnx.session(str(out))
  images = _images(2, 50, 70, seed=0)
  want = np.asarray(jax.jit(export_onnx.pipeline_fn(*_fake_stages(0.05), SIZE))(images))
  np.testing.assert_allclose(sess.run(None, {'image': images})[0], want, atol=1e-5)
