"""Tests for bgmat.models.guided_filter and the generator's guided-filter layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat.models import generator
from bgmat.models import guided_filter as gf_lib


def _box_mean_reference(x: np.ndarray, radius: int) -> np.ndarray:
  """Mean over each clipped (2r+1)^2 window, by loops, float64."""
  n, height, width, c = x.shape
  out = np.zeros(x.shape, np.float64)
  for i in range(height):
    for j in range(width):
      window = x[:, max(i - radius, 0):i + radius + 1, max(j - radius, 0):j + radius + 1]
      out[:, i, j] = window.reshape(n, -1, c).mean(axis=1)
  return out


def _guided_filter_reference(guide: np.ndarray, src: np.ndarray, radius: int,
                             eps: float) -> np.ndarray:
  """He et al. 2013, Eqs. 19-21, per pixel with np.linalg.solve, float64."""
  guide = guide.astype(np.float64)
  src = src.astype(np.float64)
  mean_i = _box_mean_reference(guide, radius)
  mean_p = _box_mean_reference(src, radius)
  cov_ip = _box_mean_reference(guide * src, radius) - mean_i * mean_p
  outer = guide[..., :, None] * guide[..., None, :]
  n, height, width = guide.shape[:3]
  second = _box_mean_reference(outer.reshape(n, height, width, 9), radius).reshape(
      n, height, width, 3, 3)
  sigma = second - mean_i[..., :, None] * mean_i[..., None, :] + eps * np.eye(3)
  a = np.linalg.solve(sigma, cov_ip[..., None])[..., 0]
  b = mean_p[..., 0] - np.sum(a * mean_i, axis=-1)
  return (np.sum(_box_mean_reference(a, radius) * guide, axis=-1)
          + _box_mean_reference(b[..., None], radius)[..., 0])[..., None]


@pytest.mark.parametrize('radius', [0, 1, 2, 5])
def test_box_mean_equals_loops(radius):
  x = np.random.default_rng(0).random((2, 7, 9, 3), np.float32)
  # Sums of at most 121 values in [0, 1] in float32: relative error ~ 121 * 2^-24.
  np.testing.assert_allclose(gf_lib.box_mean(jnp.asarray(x), radius),
                             _box_mean_reference(x, radius), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('radius,eps', [(1, 1e-2), (2, 1e-2), (3, 1e-1)])
def test_guided_filter_equals_reference(radius, eps):
  rng = np.random.default_rng(1)
  guide = rng.random((2, 9, 11, 3), np.float32)
  src = rng.random((2, 9, 11, 1), np.float32)
  got = np.asarray(gf_lib.guided_filter(jnp.asarray(guide), jnp.asarray(src), radius, eps))
  want = _guided_filter_reference(guide, src, radius, eps)
  # float32 covariances (differences of means of values in [0, 1]: absolute
  # error ~1e-7) divided through Sigma + eps (its smallest eigenvalue >= eps):
  # a's error is at most ~1e-7 / eps^2 * |cov| <= 1e-3 * 0.25 at eps 1e-2.
  np.testing.assert_allclose(got, want, atol=5e-4)


def test_guided_filter_keeps_a_constant_and_follows_an_affine_colour_model():
  rng = np.random.default_rng(2)
  guide = rng.random((1, 12, 12, 3), np.float32)
  constant = np.full((1, 12, 12, 1), 0.7, np.float32)
  np.testing.assert_allclose(gf_lib.guided_filter(guide, constant, 2, 1e-3), constant,
                             atol=1e-5)
  # src = w . I + c is reproduced when eps is small next to the colour variance
  # (uniform colours: variance 1/12 per channel; a = (Sigma + eps)^-1 Sigma w).
  w = np.array([0.3, -0.2, 0.5], np.float32)
  affine = (guide @ w + 0.1)[..., None]
  np.testing.assert_allclose(gf_lib.guided_filter(guide, affine, 2, 1e-6), affine, atol=1e-3)


def test_guided_filter_sharpens_a_blurred_edge_along_the_colour_edge():
  # A photo with a vertical colour edge at column 8 and a matte blurred across
  # it: the filtered matte's step is steeper (closer to the colour edge).
  guide = np.zeros((1, 16, 16, 3), np.float32)
  guide[:, :, 8:] = (0.9, 0.8, 0.7)
  ramp = np.clip((np.arange(16) - 4.0) / 8.0, 0.0, 1.0).astype(np.float32)
  src = np.broadcast_to(ramp[None, None, :, None], (1, 16, 16, 1)).copy()
  out = np.asarray(gf_lib.guided_filter(guide, src, 2, 1e-4))
  assert out[0, 8, 8, 0] - out[0, 8, 7, 0] > 2.0 * (src[0, 8, 8, 0] - src[0, 8, 7, 0])


def test_guided_filter_gradients_are_finite():
  rng = np.random.default_rng(3)
  guide = jnp.asarray(rng.random((1, 8, 8, 3), np.float32))
  src = jnp.asarray(rng.random((1, 8, 8, 1), np.float32))
  grads = jax.grad(lambda g, s: jnp.sum(gf_lib.guided_filter(g, s, 2, 1e-3)**2),
                   argnums=(0, 1))(guide, src)
  for grad in grads:
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize('kwargs,match', [
    (dict(radius=0, eps=1e-3), 'radius'), (dict(radius=2, eps=0.0), 'eps')])
def test_guided_filter_rejects_bad_settings(kwargs, match):
  guide = np.zeros((1, 4, 4, 3), np.float32)
  with pytest.raises(ValueError, match=match):
    gf_lib.guided_filter(guide, guide[..., :1], **kwargs)
  with pytest.raises(ValueError, match='guide'):
    gf_lib.guided_filter(guide[..., :1], guide[..., :1], 2, 1e-3)


def test_generator_guided_filter_layer_has_no_parameters_and_filters_the_alpha():
  rng = np.random.default_rng(4)
  image = rng.random((1, 32, 32, 3), np.float32)
  preseg = rng.random((1, 32, 32, 1), np.float32)
  plain = generator.generator_tiny()
  filtered = generator.generator_tiny(guided_filter_radius=2, guided_filter_eps=1e-2)
  variables = plain.init(jax.random.key(0), image, preseg, train=False)
  assert jax.tree.structure(variables) == jax.tree.structure(
      filtered.init(jax.random.key(0), image, preseg, train=False))
  alpha = plain.apply(variables, image, preseg, train=False)
  want = np.clip(gf_lib.guided_filter(image, alpha, 2, 1e-2), 0.0, 1.0)
  got = filtered.apply(variables, image, preseg, train=False)
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert got.min() >= 0.0 and got.max() <= 1.0
  with pytest.raises(ValueError, match='return_logits'):
    filtered.apply(variables, image, preseg, train=False, return_logits=True)


def test_guided_filter_exports_with_symbolic_sides():
  # `bgmat export` serialises the generator with symbolic batch, height and width.
  from jax import export  # pylint: disable=g-import-not-at-top
  batch, height, width = export.symbolic_shape('b, h, w')
  exported = export.export(jax.jit(lambda g, s: gf_lib.guided_filter(g, s, 2, 1e-2)))(
      jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32),
      jax.ShapeDtypeStruct((batch, height, width, 1), jnp.float32))
  rng = np.random.default_rng(5)
  guide = rng.random((2, 9, 13, 3), np.float32)
  src = rng.random((2, 9, 13, 1), np.float32)
  np.testing.assert_allclose(exported.call(guide, src), gf_lib.guided_filter(guide, src, 2, 1e-2),
                             atol=1e-6)
