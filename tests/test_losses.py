"""Tests for bgmat.losses on small hand-computed inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat import losses


def _nhwc(rows):
  """2-D list -> (1, H, W, 1) float32."""
  return jnp.asarray(rows, jnp.float32)[None, :, :, None]


# ---------------------------------------------------------------- segmentation


def test_sigmoid_bce_by_hand():
  logits = _nhwc([[0.0, math.log(3.0)]])
  target = _nhwc([[1.0, 0.0]])
  # x = 0, t = 1: log 2. x = log 3, t = 0: -log(1 - 3/4) = log 4.
  loss = losses.sigmoid_bce_loss(logits, target)
  assert float(loss) == pytest.approx(1.5 * math.log(2.0), rel=1e-6)
  masked = losses.sigmoid_bce_loss(logits, target, _nhwc([[0.0, 1.0]]))
  assert float(masked) == pytest.approx(math.log(4.0), rel=1e-6)
  # Stable for large logits: x = 100, t = 0 costs 100, not inf.
  big = losses.sigmoid_bce_loss(_nhwc([[100.0]]), _nhwc([[0.0]]))
  assert float(big) == pytest.approx(100.0, rel=1e-6)


def test_soft_dice_by_hand():
  logits = jnp.zeros((1, 2, 2, 1))  # p = 0.5 everywhere.
  target = _nhwc([[1.0, 0.0], [0.0, 0.0]])
  # (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5.
  assert float(losses.soft_dice_loss(logits, target)) == pytest.approx(0.5)


def test_seg_loss_binarizes_alpha():
  logits = _nhwc([[0.0, math.log(3.0)]])
  alpha = _nhwc([[0.6, 0.4]])  # -> targets 1, 0 as in the BCE test.
  loss = losses.seg_loss(logits, alpha, bce_weight=2.0)
  assert float(loss) == pytest.approx(3.0 * math.log(2.0), rel=1e-6)
  with_dice = losses.seg_loss(logits, alpha, bce_weight=0.0, dice_weight=1.0)
  # p = (0.5, 0.75), t = (1, 0): 1 - (2 * 0.5 + 1) / (1.25 + 1 + 1).
  assert float(with_dice) == pytest.approx(1.0 - 2.0 / 3.25, rel=1e-6)
  # Soft targets (0.6, 0.4): log 2 (x = 0), and at x = log 3, t = 0.4:
  # 0.6 log 3 + log(4/3) = log 4 - 0.4 log 3.
  soft = losses.seg_loss(logits, alpha, binarize=False)
  assert float(soft) == pytest.approx(
      (3 * math.log(2.0) - 0.4 * math.log(3.0)) / 2, rel=1e-6)


# -------------------------------------------------------------------- matting


def test_alpha_l1_by_hand_and_masks():
  pred = _nhwc([[0.5, 1.0], [0.0, 0.25]])
  gt = _nhwc([[0.0, 1.0], [0.5, 0.25]])  # |d| = [[.5, 0], [.5, 0]].
  assert float(losses.alpha_l1(pred, gt)) == pytest.approx(0.25)
  assert float(losses.alpha_l1(pred, gt, _nhwc([[1, 0], [1, 0]]))) == (
      pytest.approx(0.5))
  assert float(losses.alpha_l1(pred, gt, _nhwc([[0, 1], [0, 1]]))) == 0.0
  # Soft weights: (0.5 * 0.5 + 0.25 * 0) / 0.75.
  assert float(losses.alpha_l1(pred, gt, _nhwc([[0.5, 0.25], [0, 0]]))) == (
      pytest.approx(1.0 / 3.0))


def test_empty_mask_gives_zero_and_finite_grads():
  pred = _nhwc([[0.5, 1.0], [0.0, 0.25]])
  gt = jnp.zeros_like(pred)
  empty = jnp.zeros_like(pred)
  assert float(losses.alpha_l1(pred, gt, empty)) == 0.0
  grad = jax.grad(lambda p: losses.alpha_l1(p, gt, empty))(pred)
  np.testing.assert_array_equal(grad, jnp.zeros_like(pred))
  assert float(losses.alpha_gradient_loss(pred, gt, empty)) == 0.0
  assert float(losses.sigmoid_bce_loss(pred, gt, empty)) == 0.0


def test_composition_l1_by_hand():
  fg = jnp.array([1.0, 0.0, 0.0]).reshape(1, 1, 1, 3)
  bg = jnp.array([0.0, 0.0, 1.0]).reshape(1, 1, 1, 3)
  pred = jnp.full((1, 1, 1, 1), 0.5)
  gt = jnp.ones((1, 1, 1, 1))
  # comp = (0.5, 0, 0.5) vs the gt composite (1, 0, 0): mean |d| = 1/3.
  assert float(losses.composition_l1(pred, gt, fg, bg)) == pytest.approx(1 / 3)
  # Against the input image (1, 1, 1): (0.5 + 1 + 0.5) / 3.
  image = jnp.ones((1, 1, 1, 3))
  assert float(losses.composition_l1(pred, gt, fg, bg, image)) == (
      pytest.approx(2 / 3))
  assert float(losses.composition_l1(gt, gt, fg, bg)) == 0.0
  # The (N, H, W, 1) mask covers all three channels.
  pred2 = jnp.concatenate([pred, gt], axis=2)
  gt2 = jnp.concatenate([gt, gt], axis=2)
  fg2, bg2 = jnp.tile(fg, (1, 1, 2, 1)), jnp.tile(bg, (1, 1, 2, 1))
  assert float(losses.composition_l1(pred2, gt2, fg2, bg2)) == (
      pytest.approx(1 / 6))
  mask = jnp.array([1.0, 0.0]).reshape(1, 1, 2, 1)
  assert float(losses.composition_l1(pred2, gt2, fg2, bg2, mask=mask)) == (
      pytest.approx(1 / 3))


def test_laplacian_one_level_by_hand():
  # Rows (0, 0, 0, 16), constant along columns, so the 2-D pyramid is the 1-D
  # one on every column. Reflect-padded (0, 0, | 0, 0, 0, 16, | 0, 0), blurred
  # with [1, 4, 6, 4, 1] / 16: (0, 1, 4, 6); keep every second: (0, 4).
  # Zero insertion (0, 0, 4, 0), reflect-padded (4, 0, | 0, 0, 4, 0, | 4, 0),
  # blurred with 2 * [1, 4, 6, 4, 1] / 16: (1, 2, 3.5, 4).
  # Band: (0, 0, 0, 16) - (1, 2, 3.5, 4) = (-1, -2, -3.5, 12).
  image = jnp.zeros((1, 4, 4, 1)).at[0, 3].set(16.0)
  band = losses.laplacian_pyramid(image, 1)[0]
  np.testing.assert_allclose(band[0, :, :, 0],
                             np.tile([[-1.0], [-2.0], [-3.5], [12.0]], (1, 4)))
  loss = losses.laplacian_pyramid_loss(image, jnp.zeros_like(image), levels=1)
  assert float(loss) == pytest.approx((1 + 2 + 3.5 + 12) / 4)


def test_laplacian_level_weights_and_constant_offset():
  rng = np.random.default_rng(0)
  pred = jnp.asarray(rng.random((2, 32, 32, 1)), jnp.float32)
  gt = jnp.asarray(rng.random((2, 32, 32, 1)), jnp.float32)
  pyramid = jax.jit(losses.laplacian_pyramid, static_argnums=1)
  loss_fn = jax.jit(losses.laplacian_pyramid_loss, static_argnums=2)
  bands = [jnp.mean(jnp.abs(p - g))
           for p, g in zip(pyramid(pred, 5), pyramid(gt, 5))]
  assert all(float(b) > 0 for b in bands)
  expected = sum(2.0**i * b for i, b in enumerate(bands))
  assert float(loss_fn(pred, gt, 5)) == pytest.approx(float(expected),
                                                      rel=1e-6)
  # No low-pass residual: a constant offset is invisible (documented).
  assert float(loss_fn(pred + 0.25, pred, 5)) == pytest.approx(0.0, abs=1e-5)
  # Odd sizes are cropped after upsampling.
  odd = jnp.ones((1, 21, 19, 1))
  assert float(loss_fn(odd, odd * 0.5, 3)) == pytest.approx(0.0, abs=1e-5)


def test_alpha_gradient_loss_by_hand():
  pred = _nhwc([[0.0, 1.0], [2.0, 4.0]])
  # Edge-padded rows (0, 0, 1, 1), (0, 0, 1, 1), (2, 2, 4, 4), (2, 2, 4, 4).
  # gx (right - left, rows weighted 1, 2, 1): [[5, 5], [7, 7]];
  # gy (down - up, columns weighted 1, 2, 1): [[9, 11], [9, 11]].
  gx, gy = losses.sobel_gradients(pred)
  np.testing.assert_allclose(gx[0, :, :, 0], [[5, 5], [7, 7]])
  np.testing.assert_allclose(gy[0, :, :, 0], [[9, 11], [9, 11]])
  gt = jnp.zeros_like(pred)
  assert float(losses.alpha_gradient_loss(pred, gt)) == pytest.approx(
      (14 + 16 + 16 + 18) / 4)
  assert float(losses.alpha_gradient_loss(
      pred, gt, _nhwc([[1, 0], [0, 0]]))) == pytest.approx(14.0)


# ---------------------------------------------------------------- adversarial


def _logits(values):
  return jnp.asarray(values, jnp.float32).reshape(1, 1, -1, 1)


def test_adversarial_losses_by_hand():
  real = [_logits([1.0, 3.0]), _logits([0.5])]
  fake = [_logits([0.0, -2.0]), _logits([0.5])]
  # LSGAN D per scale: 0.5 (mean(0, 4) + mean(0, 4)) = 2; 0.5 (0.25 + 0.25).
  assert float(losses.adversarial_d_loss(real, fake, 'lsgan')) == (
      pytest.approx((2.0 + 0.25) / 2))
  # Hinge D: relu(1 - real) = (0, 0), relu(1 + fake) = (1, 0) -> 0.5;
  # second scale 0.5 + 1.5 = 2.
  assert float(losses.adversarial_d_loss(real, fake, 'hinge')) == (
      pytest.approx((0.5 + 2.0) / 2))
  # LSGAN G: mean(1, 9) = 5 and 0.25. Hinge G: -mean(0, -2) = 1 and -0.5.
  assert float(losses.adversarial_g_loss(fake, 'lsgan')) == pytest.approx(
      (5.0 + 0.25) / 2)
  assert float(losses.adversarial_g_loss(fake, 'hinge')) == pytest.approx(
      (1.0 - 0.5) / 2)
  with pytest.raises(ValueError, match='wgan'):
    losses.adversarial_g_loss(fake, 'wgan')


def test_feature_matching_by_hand_and_stop_gradient():
  real = [[_logits([1.0, 2.0]), _logits([0.0])], [_logits([1.0])]]
  fake = [[_logits([2.0, 2.0]), _logits([3.0])], [_logits([0.0])]]
  # Scale 0: layers 0.5 and 3 -> 1.75; scale 1: 1. Mean 1.375.
  assert float(losses.feature_matching_loss(real, fake)) == pytest.approx(
      1.375)
  # skip_last drops the 3.0 layer of scale 0 (scale 1 would be empty).
  with pytest.raises(ValueError, match='layers'):
    losses.feature_matching_loss(real, fake, skip_last=True)
  grad_real, grad_fake = jax.grad(losses.feature_matching_loss,
                                  argnums=(0, 1))(real, fake)
  assert all(float(jnp.abs(g).sum()) == 0.0 for g in jax.tree.leaves(grad_real))
  assert float(jnp.abs(grad_fake[0][1]).sum()) > 0.0


# ------------------------------------------------------------------- generic


def test_all_losses_jit_and_have_finite_grads():
  rng = np.random.default_rng(1)
  arr = lambda *s: jnp.asarray(rng.random(s), jnp.float32)
  pred, gt, mask = arr(2, 16, 16, 1), arr(2, 16, 16, 1), arr(2, 16, 16, 1)
  fg, bg = arr(2, 16, 16, 3), arr(2, 16, 16, 3)
  cases = [
      (lambda p: losses.seg_loss(p, gt, 1.0, 0.5), pred),
      (lambda p: losses.alpha_l1(p, gt, mask), pred),
      (lambda p: losses.composition_l1(p, gt, fg, bg, mask=mask), pred),
      (lambda p: losses.laplacian_pyramid_loss(p, gt, levels=3), pred),
      (lambda p: losses.alpha_gradient_loss(p, gt, mask), pred),
      (lambda p: losses.adversarial_d_loss([gt], [p], 'hinge'), pred),
      (lambda p: losses.adversarial_g_loss([p], 'lsgan'), pred),
      (lambda p: losses.feature_matching_loss([[gt]], [[p]]), pred),
  ]
  for fn, arg in cases:
    value, grad = jax.jit(jax.value_and_grad(fn))(arg)
    assert value.shape == () and bool(jnp.isfinite(value))
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


def test_lovasz_hinge_is_the_jaccard_loss_at_binary_errors():
  """At hinge errors in {0, 1} the Lovasz extension equals the set function:
  logits = y (+-1, error 0) or 0 (error 1, a miss) give 1 - IoU of the
  prediction with the misses flipped, |M| / |G u M| (Berman et al. 2018)."""
  rng = np.random.default_rng(0)
  target = (rng.random((3, 6, 5, 1)) > 0.6).astype(np.float32)
  missed = rng.random((3, 6, 5, 1)) > 0.7
  signs = 2.0 * target - 1.0
  logits = np.where(missed, 0.0, signs).astype(np.float32)
  got = float(losses.lovasz_hinge_loss(jnp.asarray(logits), jnp.asarray(target)))
  g, m = target.reshape(3, -1) > 0.5, missed.reshape(3, -1)
  expected = np.mean(m.sum(1) / np.maximum((g | m).sum(1), 1))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Every pixel on its side with margin >= 1: zero loss.
  assert float(losses.lovasz_hinge_loss(jnp.asarray(3.0 * signs), jnp.asarray(target))) == 0.0


def test_lovasz_hinge_gradient_lowers_the_loss():
  rng = np.random.default_rng(1)
  target = jnp.asarray((rng.random((2, 8, 8, 1)) > 0.5).astype(np.float32))
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, 1)).astype(np.float32))
  value, grad = jax.value_and_grad(losses.lovasz_hinge_loss)(logits, target)
  assert np.all(np.isfinite(np.asarray(grad)))
  assert float(losses.lovasz_hinge_loss(logits - 0.1 * grad, target)) < float(value)
