"""Tests for bgmat.metrics: DIM conventions on hand-made and naive cases."""

import collections
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat import metrics
from bgmat import trimap as trimap_lib


def _u8(rows):
  return np.array(rows, np.uint8)


# ----------------------------------------------------- naive MATLAB references


def _naive_gaussgradient(image, sigma=1.4):
  """gaussgradient.m written out with loops: 2-D kernel, replicate, 'conv'."""
  epsilon = 1e-2
  half = int(np.ceil(sigma * np.sqrt(-2 * np.log(np.sqrt(2 * np.pi) * sigma *
                                                 epsilon))))
  size = 2 * half + 1
  gauss = lambda x: np.exp(-x**2 / (2 * sigma**2)) / (
      sigma * np.sqrt(2 * np.pi))
  dgauss = lambda x: -x * gauss(x) / sigma**2
  hx = np.zeros((size, size))
  for i in range(size):
    for j in range(size):
      hx[i, j] = gauss(i - half) * dgauss(j - half)
  hx /= np.sqrt(np.sum(np.abs(hx) * np.abs(hx)))
  hy = hx.T
  height, width = image.shape
  out = []
  for kernel in (hx, hy):
    result = np.zeros_like(image)
    for y in range(height):
      for x in range(width):
        total = 0.0
        for i in range(size):
          for j in range(size):
            # Convolution: image at (y - (i - half), x - (j - half)), clamped.
            yy = min(max(y - (i - half), 0), height - 1)
            xx = min(max(x - (j - half), 0), width - 1)
            total += image[yy, xx] * kernel[i, j]
        result[y, x] = total
    out.append(result)
  return out


def _naive_gradient_error(pred, gt, region):
  amps = []
  for matte in (pred, gt):
    matte = matte.astype(np.float64)
    low, high = matte.min(), matte.max()
    gray = (np.clip(matte, 0, 1) if high == low else
            (matte - low) / (high - low))
    gx, gy = _naive_gaussgradient(gray)
    amps.append(np.sqrt(gx**2 + gy**2).astype(np.float32))
  return float(np.sum(((amps[0] - amps[1])**2)[region])) / 1000


def _naive_components(mask):
  """4-connected components by BFS in column-major order (bwconncomp order)."""
  height, width = mask.shape
  seen = np.zeros_like(mask)
  components = []
  for x in range(width):
    for y in range(height):
      if mask[y, x] and not seen[y, x]:
        queue, pixels = collections.deque([(y, x)]), []
        seen[y, x] = True
        while queue:
          cy, cx = queue.popleft()
          pixels.append((cy, cx))
          for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1),
                         (cy, cx + 1)):
            if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not (
                seen[ny, nx]):
              seen[ny, nx] = True
              queue.append((ny, nx))
        components.append(pixels)
  return components


def _naive_connectivity(pred, gt, region):
  """compute_connectivity_error.m with the exact integer threshold rule."""
  steps = [j / 10 for j in range(11)]
  l_map = -np.ones(pred.shape)
  for j in range(1, 11):
    # single(k)/255 >= t_j  <=>  2k >= 51j (checked in a separate test).
    mask = (2 * pred.astype(int) >= 51 * j) & (2 * gt.astype(int) >= 51 * j)
    components = _naive_components(mask)
    omega = np.zeros(pred.shape, bool)
    if components:
      largest = max(components, key=len)  # max() keeps the first on ties.
      for y, x in largest:
        omega[y, x] = True
    l_map[(l_map == -1) & ~omega] = steps[j - 1]
  l_map[l_map == -1] = 1
  total = 0.0
  for y, x in zip(*np.nonzero(region)):
    phis = []
    for matte in (pred, gt):
      d = matte[y, x] / 255 - l_map[y, x]
      phis.append(1 - d * (d >= 0.15))
    total += abs(phis[0] - phis[1])
  return total / 1000


def _random_pair(rng, shape=(12, 14)):
  gt = np.zeros(shape, np.uint8)
  gt[3:9, 4:11] = 255
  gt[2:10, 3] = rng.integers(0, 256, 8)
  gt[5, 12] = 200
  noise = rng.integers(-60, 61, shape)
  pred = np.clip(gt.astype(int) + noise * (rng.random(shape) < 0.5), 0,
                 255).astype(np.uint8)
  return pred, gt


# ------------------------------------------------------------------- SAD / MSE


def test_sad_mse_by_hand():
  pred = _u8([[0, 255], [51, 100]])
  gt = _u8([[0, 0], [102, 100]])
  # |p - g| / 255 = [[0, 1], [0.2, 0]].
  result = metrics.matting_metrics(pred, gt, which=('sad', 'mse'))
  assert result['sad'] == pytest.approx(1.2 / 1000, rel=1e-12)
  assert result['mse'] == pytest.approx((1 + 0.04) / 4, rel=1e-12)
  trimap = _u8([[128, 0], [128, 255]])  # U = {(0, 0), (1, 0)}.
  result = metrics.matting_metrics(pred, gt, trimap, which=('sad', 'mse'))
  assert result['sad'] == pytest.approx(0.2 / 1000, rel=1e-12)
  assert result['mse'] == pytest.approx(0.04 / 2, rel=1e-12)


def test_channel_dim_and_float_trimap_accepted():
  pred = _u8([[0, 255], [51, 100]])
  gt = _u8([[0, 0], [102, 100]])
  trimap = np.array([[0.5, 0.0], [0.5, 1.0]], np.float32)[..., None]
  result = metrics.matting_metrics(pred[..., None], gt[..., None], trimap)
  assert result['sad'] == pytest.approx(0.2 / 1000, rel=1e-12)


def test_float_matte_rejected():
  with pytest.raises(ValueError, match='uint8'):
    metrics.matting_metrics(np.zeros((4, 4)), np.zeros((4, 4)))


# -------------------------------------------------------------------- gradient


def test_gaussgradient_kernel_size_and_norm():
  gauss, dgauss = metrics.gauss_gradient_factors(1.4)
  assert gauss.shape == (9,)  # half size ceil(3.62...) = 4.
  kernel = np.outer(gauss, dgauss)
  assert np.sum(kernel**2) == pytest.approx(1.0, rel=1e-12)


def test_gauss_gradient_matches_naive_loops():
  rng = np.random.default_rng(1)
  image = rng.random((7, 11))
  gx, gy = metrics.gauss_gradient(image)
  naive_gx, naive_gy = _naive_gaussgradient(image)
  np.testing.assert_allclose(gx, naive_gx, atol=1e-12)
  np.testing.assert_allclose(gy, naive_gy, atol=1e-12)


def test_gradient_matches_naive_with_mat2gray():
  rng = np.random.default_rng(2)
  pred, gt = _random_pair(rng)
  pred = np.clip(pred, 10, 200)  # Range not 0..255: mat2gray matters.
  trimap = trimap_lib.trimap_from_alpha(gt, 1)
  for tri in (None, trimap):
    region = np.ones(gt.shape, bool) if tri is None else tri == 128
    expected = _naive_gradient_error(pred, gt, region)
    result = metrics.matting_metrics(pred, gt, tri, which=('grad',))['grad']
    assert expected > 0
    assert result == pytest.approx(expected, rel=1e-6)


def test_mat2gray_matlab_conventions():
  np.testing.assert_allclose(metrics.mat2gray(_u8([[10, 20], [30, 10]])),
                             [[0, 0.5], [1, 0]])
  # Constant images: double(A) clipped to [0, 1], as MATLAB's mat2gray.
  constant = np.full((2, 2), 100, np.uint8)
  np.testing.assert_array_equal(metrics.mat2gray(constant), np.ones((2, 2)))
  np.testing.assert_array_equal(metrics.mat2gray(np.zeros((2, 2), np.uint8)),
                                np.zeros((2, 2)))


# ---------------------------------------------------------------- connectivity


def test_matlab_colon_and_threshold_rule():
  np.testing.assert_array_equal(metrics.matlab_colon(0, 0.1, 1)[[0, 5, 10]],
                                [0.0, 0.5, 1.0])
  thresholds, k_min = metrics.connectivity_thresholds()
  assert len(thresholds) == 11
  # single(k)/255 >= j/10 exactly when 2k >= 51j; 153 passes t = 0.6 (the
  # float64 np.arange ports drop it).
  np.testing.assert_array_equal(k_min, [int(np.ceil(25.5 * j))
                                        for j in range(11)])
  assert k_min[6] == 153


def test_connectivity_by_hand():
  # Components of (pred >= t) & (gt >= t): A = the 2x2 block of 255 at the
  # left, B = the right column (pred 204, gt 230; also 4 pixels, present up to
  # t = 0.8), C = the isolated 102. A and B tie; MATLAB's max() keeps the first
  # in bwconncomp's column-major order, A (row-major order would pick B). So at
  # t = 0.1 every pixel outside A gets l = 0, and A keeps l = 1. Then
  #   phi_p: A 1, B 1 - 204/255 = 51/255, C 1 - 102/255 = 0.6, zeros 1;
  #   phi_g: A 1, B 1 - 230/255 = 25/255, elsewhere 1 - 1 = 0.
  # |phi_p - phi_g| sums to 4 * 26/255 + 0.6 + 11 zeros * 1.
  pred = _u8([[0, 0, 102, 0, 204],
              [255, 255, 0, 0, 204],
              [255, 255, 0, 0, 204],
              [0, 0, 0, 0, 204]])
  gt = np.full((4, 5), 255, np.uint8)
  gt[:, 4] = 230
  result = metrics.matting_metrics(pred, gt, which=('conn',))
  assert result['conn'] == pytest.approx((104 / 255 + 11.6) / 1000, rel=1e-6)
  trimap = np.zeros((4, 5), np.uint8)
  trimap[:, 4] = 128  # Only B.
  result = metrics.matting_metrics(pred, gt, trimap, which=('conn',))
  assert result['conn'] == pytest.approx(104 / 255 / 1000, rel=1e-6)


def test_connectivity_matches_naive_bfs():
  rng = np.random.default_rng(3)
  for _ in range(4):
    pred, gt = _random_pair(rng)
    region = np.ones(gt.shape, bool)
    expected = _naive_connectivity(pred, gt, region)
    result = metrics.matting_metrics(pred, gt, which=('conn',))['conn']
    assert expected > 0
    assert result == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------ edge cases


@pytest.mark.parametrize('value', [0, 255])
def test_constant_equal_mattes_are_zero(value):
  matte = np.full((6, 5), value, np.uint8)
  result = metrics.matting_metrics(matte, matte)
  assert result == {'sad': 0.0, 'mse': 0.0, 'grad': 0.0, 'conn': 0.0}


def test_all_zero_prediction_of_all_one_matte():
  pred = np.zeros((4, 4), np.uint8)
  gt = np.full((4, 4), 255, np.uint8)
  result = metrics.matting_metrics(pred, gt)
  # Both constant: zero gradients. No component at t = 0.1: l = 0 everywhere,
  # phi_p = 1, phi_g = 1 - 1 = 0.
  assert result['sad'] == pytest.approx(16 / 1000)
  assert result['mse'] == pytest.approx(1.0)
  assert result['grad'] == pytest.approx(0.0, abs=1e-20)
  assert result['conn'] == pytest.approx(16 / 1000)


def test_empty_unknown_region_gives_zeros_without_warnings():
  pred, gt = _random_pair(np.random.default_rng(4))
  trimap = np.zeros(gt.shape, np.uint8)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    result = metrics.matting_metrics(pred, gt, trimap)
  assert result == {'sad': 0.0, 'mse': 0.0, 'grad': 0.0, 'conn': 0.0}


def test_pred_equal_gt_is_zero():
  _, gt = _random_pair(np.random.default_rng(5))
  result = metrics.matting_metrics(gt, gt, trimap_lib.trimap_from_alpha(gt, 2))
  assert result == {'sad': 0.0, 'mse': 0.0, 'grad': 0.0, 'conn': 0.0}


def test_trimap_restricts_region():
  pred, gt = _random_pair(np.random.default_rng(6))
  trimap = trimap_lib.trimap_from_alpha(gt, 1)
  whole = metrics.matting_metrics(pred, gt)
  inside = metrics.matting_metrics(pred, gt, trimap)
  outside = metrics.matting_metrics(pred, gt, np.where(trimap == 128, 0, 128))
  for name in ('sad', 'grad', 'conn'):
    assert inside[name] + outside[name] == pytest.approx(whole[name])
    assert 0 < inside[name] < whole[name]


def test_iou():
  assert metrics.iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
  pred = np.array([1, 1, 0, 0], bool)
  gt = np.array([0, 1, 1, 0], bool)
  assert metrics.iou(pred, gt) == pytest.approx(1 / 3)


# ---------------------------------------------------------------------- batched


def test_batch_metrics_quantize_like_png():
  rng = np.random.default_rng(7)
  pairs = [_random_pair(rng) for _ in range(2)]
  pred_u8 = np.stack([p for p, _ in pairs])[..., None]
  gt_u8 = np.stack([g for _, g in pairs])[..., None]
  trimap_u8 = np.stack([trimap_lib.trimap_from_alpha(g, 1) for g in gt_u8])
  # Floats that round back to the same uint8 values.
  jitter = rng.uniform(-0.4, 0.4, pred_u8.shape)
  pred = np.clip((pred_u8 + jitter) / 255.0, 0, 1)
  gt = gt_u8 / 255.0
  batch = metrics.batch_matting_metrics(pred, gt, trimap_u8 / 255.0)
  for i in range(2):
    single = metrics.matting_metrics(pred_u8[i], gt_u8[i], trimap_u8[i])
    for name, value in single.items():
      assert batch[name][i] == pytest.approx(value, rel=1e-12, abs=1e-15)
  full = metrics.batch_eval_metrics(pred, gt, trimap_u8)
  assert set(full) == {'sad', 'mse', 'grad', 'conn', 'sad_unknown',
                       'mse_unknown', 'grad_unknown', 'conn_unknown', 'iou', 'boundary_f'}
  np.testing.assert_allclose(full['sad_unknown'], batch['sad'])
  for i in range(2):
    assert full['iou'][i] == pytest.approx(
        metrics.iou(pred_u8[i] >= 128, gt_u8[i] >= 128))


def test_sad_mse_jax_matches_host():
  rng = np.random.default_rng(8)
  pred = rng.random((3, 9, 10, 1)).astype(np.float32)
  gt = rng.random((3, 9, 10, 1)).astype(np.float32)
  mask = rng.random((3, 9, 10, 1)) < 0.4
  mask[2] = False
  sad, mse = jax.jit(metrics.sad_mse_jax)(jnp.asarray(pred), jnp.asarray(gt),
                                          jnp.asarray(mask))
  trimap = np.where(mask, 128, 0).astype(np.uint8)
  host = metrics.batch_matting_metrics(pred, gt, trimap, which=('sad', 'mse'))
  np.testing.assert_allclose(sad, host['sad'], rtol=1e-5)
  np.testing.assert_allclose(mse, host['mse'], rtol=1e-5)
  assert mse[2] == 0.0
  sad_all, _ = metrics.sad_mse_jax(jnp.asarray(pred), jnp.asarray(gt))
  np.testing.assert_allclose(
      sad_all, metrics.batch_matting_metrics(pred, gt, which=('sad',))['sad'],
      rtol=1e-5)


def test_running_means_over_batches_of_different_sizes():
  rng = np.random.default_rng(9)
  batches = [metrics.batch_eval_metrics(rng.random((n, 8, 8)),
                                        rng.random((n, 8, 8)),
                                        np.full((n, 8, 8), 0.5))
             for n in (2, 3)]
  totals = None
  for batch in batches:
    totals = metrics.merge_means(totals, batch)
  means = metrics.compute_means(totals)
  assert set(means) == set(batches[0])
  for name in batches[0]:
    # Per-example mean over all 5 examples, not the mean of the 2 batch means.
    expected = np.mean(np.concatenate([b[name] for b in batches]))
    # clu sums in float32: 5 values of order 1-100 keep ~7 digits.
    assert means[name] == pytest.approx(expected, rel=1e-5)


def test_512_speed():
  rng = np.random.default_rng(10)
  gt = np.zeros((512, 512), np.uint8)
  gt[100:400, 150:350] = 255
  gt[90:110, 140:360] = rng.integers(0, 256, (20, 220))
  pred = np.clip(gt + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
  trimap = trimap_lib.trimap_from_alpha(gt, 10)
  metrics.matting_metrics(pred, gt, trimap)
  start = time.perf_counter()
  metrics.matting_metrics(pred, gt, trimap)
  assert time.perf_counter() - start < 1.0


def test_boundary_f_tolerance_and_extremes():
  gt = np.zeros((100, 100), bool)
  gt[20:80, 20:80] = True
  # diag 141.4 -> tolerance ceil(0.008 * 141.4) = 2 pixels.
  assert metrics.boundary_f(gt, gt) == 1.0
  shifted1 = np.roll(gt, 1, axis=1)
  assert metrics.boundary_f(shifted1, gt) == 1.0  # within the tolerance
  shifted5 = np.roll(gt, 5, axis=1)
  f5 = metrics.boundary_f(shifted5, gt)
  # Only the top/bottom edges (and nothing of the left/right ones) match.
  assert 0.3 < f5 < 0.8
  assert metrics.boundary_f(np.zeros_like(gt), gt) == 0.0
  assert metrics.boundary_f(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_region_metrics_crop_each_example():
  rng = np.random.default_rng(0)
  pred = rng.random((2, 16, 16, 1)).astype(np.float32)
  gt = (rng.random((2, 16, 16, 1)) > 0.5).astype(np.float32)
  trimap = np.full((2, 16, 16, 1), 0.5, np.float32)
  region = np.array([[16, 12], [10, 16]])
  out = metrics.region_eval_metrics(pred, gt, trimap, region, which=('sad', 'mse'))
  for i, (h, w) in enumerate(region):
    ref = metrics.batch_eval_metrics(pred[i:i + 1, :h, :w], gt[i:i + 1, :h, :w],
                                     trimap[i:i + 1, :h, :w], which=('sad', 'mse'))
    for key, value in ref.items():
      assert out[key][i] == value[0]
  whole = metrics.batch_eval_metrics(pred, gt, trimap, which=('sad',))
  assert out['sad'][0] < whole['sad'][0]  # the padding columns are not counted
