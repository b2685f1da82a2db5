"""Tests for bgmat.trimap: hand cases and numpy/JAX agreement."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from bgmat import trimap as trimap_lib


def test_row_by_hand():
  soft = np.array([[0, 0, 0, 128, 255, 255, 255]], np.uint8)
  # Radius 0: exactly the fractional pixels; radius 1 adds one on each side.
  np.testing.assert_array_equal(trimap_lib.trimap_from_alpha(soft, 0),
                                [[0, 0, 0, 128, 255, 255, 255]])
  np.testing.assert_array_equal(trimap_lib.trimap_from_alpha(soft, 1),
                                [[0, 0, 128, 128, 128, 255, 255]])
  # A hard edge gets a band of `radius` pixels on each side.
  hard = np.array([[0, 0, 0, 255, 255, 255, 255]], np.uint8)
  np.testing.assert_array_equal(trimap_lib.trimap_from_alpha(hard, 1),
                                [[0, 0, 128, 128, 255, 255, 255]])
  np.testing.assert_array_equal(trimap_lib.trimap_from_alpha(hard, 2),
                                [[0, 128, 128, 128, 128, 255, 255]])


def test_square_and_disk_footprints():
  alpha = np.zeros((7, 7), np.uint8)
  alpha[3, 3] = 100
  square = trimap_lib.trimap_from_alpha(alpha, 2, 'square')
  disk = trimap_lib.trimap_from_alpha(alpha, 2, 'disk')
  expected_square = np.zeros((7, 7), np.uint8)
  expected_square[1:6, 1:6] = 128
  np.testing.assert_array_equal(square, expected_square)
  # Offsets with dy^2 + dx^2 <= 4: 1 + 4 + 4 + 4 = 13 pixels.
  assert (disk == 128).sum() == 13
  np.testing.assert_array_equal(disk == 128,
                                np.pad(trimap_lib.disk_footprint(2), 1))
  assert set(np.unique(disk)) == {0, 128}


def test_constant_mattes_and_borders():
  ones = np.full((5, 6), 255, np.uint8)
  zeros = np.zeros((5, 6), np.uint8)
  np.testing.assert_array_equal(trimap_lib.trimap_from_alpha(ones, 3), ones)
  np.testing.assert_array_equal(trimap_lib.trimap_from_alpha(zeros, 3), zeros)


def test_float_input_and_channel_dim():
  alpha = np.array([[0.0, 0.5, 1.0, 1.0]], np.float32)[..., None]
  trimap = trimap_lib.trimap_from_alpha(alpha, 0)
  assert trimap.shape == (1, 4, 1) and trimap.dtype == np.uint8
  np.testing.assert_array_equal(trimap[..., 0], [[0, 128, 255, 255]])


def test_random_radius_is_in_range():
  alpha = np.zeros((1, 41), np.uint8)
  alpha[0, 20:] = 255
  rng = np.random.default_rng(0)
  widths = {int((trimap_lib.random_trimap_from_alpha(
      alpha, rng, (2, 4)) == 128).sum()) for _ in range(30)}
  assert widths == {4, 6, 8}  # 2 * radius for radius in {2, 3, 4}.


def test_bad_arguments():
  with pytest.raises(ValueError, match='shape'):
    trimap_lib.trimap_from_alpha(np.zeros((3, 3), np.uint8), 1, 'diamond')
  with pytest.raises(ValueError, match='radius'):
    trimap_lib.trimap_from_alpha(np.zeros((3, 3), np.uint8), -1)


def test_unknown_mask_numpy_and_jax():
  trimap_u8 = np.array([0, 128, 255, 127], np.uint8)
  np.testing.assert_array_equal(trimap_lib.unknown_mask(trimap_u8),
                                [False, True, False, False])
  trimap_f = np.array([0.0, 0.5, 1.0, 0.49], np.float32)
  expected = [False, True, False, True]
  np.testing.assert_array_equal(trimap_lib.unknown_mask(trimap_f), expected)
  np.testing.assert_array_equal(
      trimap_lib.unknown_mask(jnp.asarray(trimap_f)), expected)


def _random_alpha(rng, size=(32, 36)):
  blobs = ndi.gaussian_filter(rng.random(size), 3.0)
  alpha = np.clip((blobs - blobs.mean()) * 100 + 0.5, 0, 1)
  alpha[rng.random(size) < 0.004] = 0.3  # Isolated fractional pixels.
  alpha = np.round(alpha * 255).astype(np.uint8)
  alpha[:, :3] = 255  # A hard border touching the image edge.
  return alpha


@pytest.mark.parametrize('shape', ['square', 'disk'])
@pytest.mark.parametrize('radius', [0, 1, 3])
def test_jax_matches_numpy(shape, radius):
  rng = np.random.default_rng(radius)
  alphas = np.stack([_random_alpha(rng) for _ in range(2)])
  assert (alphas == 0).any() and (alphas == 255).any()
  assert ((alphas > 0) & (alphas < 255)).any()
  expected = np.stack([trimap_lib.trimap_from_alpha(a, radius, shape)
                       for a in alphas])
  for value in (0, 128, 255):  # All three classes occur at every radius.
    assert (expected == value).sum() > 20
  fn = jax.jit(functools.partial(trimap_lib.trimap_from_alpha_jax,
                                 radius=radius, shape=shape))
  result = np.asarray(fn(jnp.asarray(alphas[..., None] / 255.0, jnp.float32)))
  assert result.shape == alphas.shape + (1,)
  np.testing.assert_array_equal(
      result[..., 0], np.where(expected == 128, 0.5, expected / 255.0))


def test_trimap_from_probability_matches_its_definition():
  """Brute force over each pixel's clipped (2r+1)^2 window: sure foreground iff
  no prob < fg_threshold there, sure background iff no prob > bg_threshold."""
  rng = np.random.default_rng(3)
  prob = ndi.gaussian_filter(rng.random((23, 17)), 2.0)
  prob = (prob - prob.min()) / (prob.max() - prob.min())
  radius, fg, bg = 2, 0.7, 0.3
  got = trimap_lib.trimap_from_probability(prob[..., None], fg, bg, radius)
  assert got.shape == (23, 17, 1) and got.dtype == np.float32
  want = np.full(prob.shape, 0.5, np.float32)
  for y in range(prob.shape[0]):
    for x in range(prob.shape[1]):
      window = prob[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
      if not (window < fg).any():
        want[y, x] = 1.0
      elif not (window > bg).any():
        want[y, x] = 0.0
  np.testing.assert_array_equal(got[..., 0], want)
  assert set(np.unique(got)) == {0.0, 0.5, 1.0}
  np.testing.assert_array_equal(
      trimap_lib.trimap_from_probability(prob, fg, bg, radius), got[..., 0])
  with pytest.raises(ValueError, match='bg_threshold < fg_threshold'):
    trimap_lib.trimap_from_probability(prob, 0.3, 0.7, radius)


def test_trimap01_is_trimap_from_alpha_on_the_float_grid():
  alpha = np.zeros((9, 9), np.float32)
  alpha[2:7, 2:7] = 1.0
  alpha[4, 4] = 0.5
  got = trimap_lib.trimap01_from_alpha(alpha, 1)
  assert got.shape == (9, 9, 1) and got.dtype == np.float32
  np.testing.assert_array_equal(
      got[..., 0] * 255, np.where(trimap_lib.trimap_from_alpha(alpha, 1) == 128, 127.5,
                                  trimap_lib.trimap_from_alpha(alpha, 1)).astype(np.float32))
  assert trimap_lib.unknown_mask(got).sum() == (trimap_lib.trimap_from_alpha(alpha, 1) == 128).sum()
