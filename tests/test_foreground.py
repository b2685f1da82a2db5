"""Foreground colour estimation: box blur, accuracy on composites with a known F."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from bgmat import foreground
from data_prep import synthetic


def _band_errors(method, index):
  example = synthetic.generate_example(index, 'test', image_size=96)
  image = example['image'] / 255.0
  alpha = example['alpha'] / 255.0
  true_fg = example['fg'] / 255.0
  band = (example['alpha'] > 0) & (example['alpha'] < 255)
  assert band.sum() > 50  # Enough soft pixels to measure.
  err = lambda fg: float(np.abs(fg - true_fg)[band].mean())
  estimated = foreground.estimate_foreground(image, alpha, method=method)
  assert estimated.shape == image.shape and estimated.dtype == np.float32
  assert 0.0 <= estimated.min() and estimated.max() <= 1.0
  return err(estimated), err(image), err(image * alpha[..., None])


@pytest.mark.parametrize('method', ['blur_fusion', 'multilevel'])
@pytest.mark.parametrize('index', [0, 1])
def test_estimate_beats_naive_cutouts_on_soft_band(method, index):
  estimated, naive, premultiplied = _band_errors(method, index)
  print(f'{method} #{index}: band MAE estimated {estimated:.4f}, image {naive:.4f}, '
        f'image*alpha {premultiplied:.4f}')
  assert estimated < 0.75 * naive
  assert estimated < 0.75 * premultiplied


def test_box_blur_matches_scipy_in_interior():
  rng = np.random.default_rng(0)
  x = rng.random((40, 50, 3)).astype(np.float32)
  for size in (1, 4, 7):
    ours = np.asarray(foreground.box_blur(jnp.asarray(x), size))
    # Both anchor a window of `size` at size // 2 (as cv2.blur), even sizes included.
    ref = ndimage.uniform_filter(x, size=(size, size, 1))
    margin = size
    np.testing.assert_allclose(ours[margin:-margin, margin:-margin],
                               ref[margin:-margin, margin:-margin], atol=1e-5)
    assert ours.shape == x.shape


def test_box_blur_of_constant_is_constant_up_to_borders():
  x = jnp.full((13, 9, 1), 0.3, jnp.float32)
  np.testing.assert_allclose(np.asarray(foreground.box_blur(x, 25)), 0.3, atol=1e-6)


def test_blur_fusion_is_jittable_keeps_opaque_and_removes_the_old_background():
  # Constant F over a contrasting constant B, with a soft ramp in between.
  height, width = 24, 32
  ramp = np.clip((np.arange(width) - 8) / 16, 0, 1).astype(np.float32)
  alpha = np.broadcast_to(ramp, (height, width))
  fg = np.array([0.9, 0.2, 0.1], np.float32)
  bg = np.array([0.1, 0.8, 0.9], np.float32)
  image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
  fn = jax.jit(lambda i, a: foreground.blur_fusion(i, a, radii=(41, 3)))
  out = np.asarray(fn(jnp.asarray(image), jnp.asarray(alpha)))
  opaque, soft = alpha == 1, (alpha > 0) & (alpha < 1)
  np.testing.assert_allclose(out[opaque], image[opaque], atol=1e-6)
  estimated_err = np.abs(out - fg).mean(-1)[soft]
  naive_err = np.abs(image - fg).mean(-1)[soft]
  assert np.all(estimated_err <= 0.5 * naive_err + 1e-3), (estimated_err, naive_err)


def test_scaled_radii_and_bad_inputs():
  assert foreground.scaled_radii(1024, 700) == (90, 6)
  assert foreground.scaled_radii(2048, 100) == (180, 12)
  assert foreground.scaled_radii(32, 32) == (3, 1)
  with pytest.raises(ValueError, match='Unknown foreground method'):
    foreground.estimate_foreground(np.zeros((4, 4, 3)), np.zeros((4, 4)), method='magic')
  with pytest.raises(ValueError, match='Expected image'):
    foreground.estimate_foreground(np.zeros((4, 4, 3)), np.zeros((4, 5)))
  image = np.random.default_rng(0).random((5, 6, 3)).astype(np.float32)
  np.testing.assert_array_equal(
      foreground.estimate_foreground(image, np.ones((5, 6)), method='none'), image)


def test_padding_leaves_the_result_unchanged_and_bounds_compiles():
  rng = np.random.default_rng(3)
  image = rng.random((37, 53, 3)).astype(np.float32)
  alpha = rng.random((37, 53)).astype(np.float32)
  radii = (9, 3)
  direct = np.asarray(foreground.blur_fusion(image, alpha, radii=radii))
  pad = ((0, 64 - 37), (0, 64 - 53))
  row_valid = (np.arange(64) < 37).astype(np.float32)
  col_valid = (np.arange(64) < 53).astype(np.float32)
  # Garbage in the padding must not leak into the image.
  padded_image = np.pad(image, pad + ((0, 0),), constant_values=0.7)
  padded = np.asarray(foreground.blur_fusion(
      padded_image, np.pad(alpha, pad, constant_values=0.3), radii=radii,
      row_valid=row_valid, col_valid=col_valid))
  np.testing.assert_allclose(padded[:37, :53], direct, atol=2e-5)
  # Sizes in one padded shape share one compiled function.
  assert [foreground.padded_side(s) for s in (1, 32, 33, 100, 129, 1000, 1025, 3000)] == [
      32, 32, 64, 128, 160, 1024, 1280, 3072]
  foreground.blur_fusion.clear_cache()
  for height, width in ((200, 150), (205, 160), (210, 159)):
    out = foreground.estimate_foreground(rng.random((height, width, 3)),
                                         rng.random((height, width)))
    assert out.shape == (height, width, 3)
  assert foreground.blur_fusion._cache_size() == 1
