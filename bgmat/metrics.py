"""Matting metrics with the exact Deep Image Matting (DIM) conventions.

The reference is the MATLAB evaluation code of Xu et al. (DIM, 2017; files
`compute_sad_loss.m`, `compute_mse_loss.m`, `compute_gradient_loss.m`,
`compute_connectivity_error.m`, plus the driver that divides Grad and Conn by
1000, as shipped e.g. with GCA-Matting). Inputs are uint8 mattes; `U` is the
unknown region `trimap == 128`, or the whole image when no trimap is given.

  * SAD  = sum_U |p - g| / 255 / 1000.
  * MSE  = sum_U ((p - g) / 255)^2 / |U|  (no scaling; papers often print
    MSE * 1e3). MATLAB gives NaN for an empty U; we return 0.0.
  * Grad = sum_U (|grad p| - |grad g|)^2 / 1000, where each matte is first
    min-max normalised with `mat2gray` (a constant matte becomes
    clip(value, 0, 1), as in MATLAB >= R2013), and the gradient is
    `gaussgradient(., 1.4)`: a first-derivative-of-Gaussian kernel of half size
    ceil(sigma * sqrt(-2 log(sqrt(2 pi) sigma 1e-2))) = 4, normalised to unit
    L2 norm, applied with `imfilter(..., 'replicate', 'conv')` (a true
    convolution; the sign flip against correlation does not change the
    magnitude). The kernel is separable, so we filter with two 1-D passes.
  * Conn = sum_U |phi_p - phi_g| / 1000 with, in single precision,
    thresholds `0:0.1:1` (MATLAB colon values), for each threshold t > 0 the
    largest 4-connected component of (p >= t) & (g >= t); `l_map` is the last
    threshold before a pixel leaves that component (1 if it never does);
    d = alpha - l_map, phi = 1 - d * (d >= 0.15). The unused `dist_maps`
    (bwdist) of the MATLAB code is skipped. Ties between equally large
    components go to the one whose first pixel comes first in column-major
    order, as with `bwconncomp` + `max`.

Sums are accumulated in float64 (MATLAB sums single arrays in single
precision); the two agree to about 1e-6 relative.

Where common Python ports differ (so their numbers are not comparable):
  * GCA-Matting/MatteFormer-style `getLargestCC` takes the argmax of
    `bincount(labels)` including label 0, so it can pick the *background* as the
    largest component (the source of their ~5% lower Conn).
  * float64 thresholds from `np.arange(0, 1.1, 0.1)` give 0.6000000000000001 >
    153/255, excluding alpha 153 at t = 0.6; MATLAB (single alpha, colon
    thresholds) includes it. In exact terms, p >= t_j iff 2 p >= 51 j.
  * Several ports skip `mat2gray` and divide by 255 instead (different Grad when
    a matte does not span 0..255), use cv2.Sobel or
    `scipy.ndimage.gaussian_filter(order=1)` (different kernel and
    normalisation), or forget the /1000 of Grad and Conn.
  * Some divide MSE by |U| + 1, or SAD by the image count in other units.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi
from clu import metrics as clu_metrics

from bgmat import trimap as trimap_lib

ALL_METRICS = ('sad', 'mse', 'grad', 'conn')
_GRAD_SIGMA = 1.4
_GRAD_EPSILON = 1e-2
_CONN_STEP = 0.1
_CONN_THETA = 0.15
_FOUR_CONNECTED = ndi.generate_binary_structure(2, 1)


def quantize(alpha01) -> np.ndarray:
  """Float alpha in [0, 1] -> uint8 by rounding, as when saving an 8-bit PNG."""
  return np.round(np.clip(np.asarray(alpha01, np.float64), 0.0, 1.0) *
                  255.0).astype(np.uint8)


def _as_2d_uint8(array, name: str) -> np.ndarray:
  array = np.asarray(array)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 2:
    raise ValueError(f'{name} must be (H, W) or (H, W, 1), got {array.shape}.')
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f'{name} must be an integer (uint8) matte, got '
                     f'{array.dtype}; use quantize() or batch_matting_metrics.')
  return array.astype(np.uint8)


def _region(trimap, shape) -> np.ndarray:
  if trimap is None:
    return np.ones(shape, bool)
  trimap = np.asarray(trimap)
  if trimap.ndim == 3 and trimap.shape[-1] == 1:
    trimap = trimap[..., 0]
  if trimap.shape != shape:
    raise ValueError(f'trimap shape {trimap.shape} != matte shape {shape}.')
  return np.asarray(trimap_lib.unknown_mask(trimap))


def matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
  """MATLAB `start:step:stop`: the first half counts up, the second down."""
  n = int(np.floor((stop - start) / step + 1e-10))
  values = np.empty(n + 1)
  for k in range(n // 2 + 1):
    values[k] = start + k * step
    values[n - k] = stop - k * step
  if n % 2 == 0:
    values[n // 2] = (start + stop) / 2
  return values


def mat2gray(matte: np.ndarray) -> np.ndarray:
  """MATLAB `mat2gray` (R2013+): min-max scaling to [0, 1] in float64."""
  low, high = float(matte.min()), float(matte.max())
  if high == low:  # MATLAB: constant image -> double(A), then clipped.
    return np.clip(matte.astype(np.float64), 0.0, 1.0)
  delta = 1.0 / (high - low)
  # imlincomb(delta, A, -low * delta): the same operation order as MATLAB.
  return np.clip(delta * matte.astype(np.float64) + (-low * delta), 0.0, 1.0)


def gauss_gradient_factors(sigma: float = _GRAD_SIGMA,
                           epsilon: float = _GRAD_EPSILON):
  """1-D factors (gauss, dgauss) of the unit-norm `gaussgradient` kernel.

  The MATLAB kernel is hx(i, j) = gauss(i) * dgauss(j) / ||.||_2 with rows i
  and columns j in [-half, half]; it equals outer(gauss, dgauss) with each
  factor normalised to unit L2 norm.
  """
  half = int(np.ceil(sigma * np.sqrt(
      -2.0 * np.log(np.sqrt(2.0 * np.pi) * sigma * epsilon))))
  u = np.arange(-half, half + 1, dtype=np.float64)
  gauss = np.exp(-u**2 / (2.0 * sigma**2)) / (sigma * np.sqrt(2.0 * np.pi))
  dgauss = -u * gauss / sigma**2
  return gauss / np.linalg.norm(gauss), dgauss / np.linalg.norm(dgauss)


def gauss_gradient(image: np.ndarray, sigma: float = _GRAD_SIGMA):
  """MATLAB `gaussgradient`: (gx, gy) with replicate borders, convolution."""
  gauss, dgauss = gauss_gradient_factors(sigma)
  conv = lambda x, w, axis: ndi.convolve1d(x, w, axis=axis, mode='nearest')
  # hx varies as dgauss along columns (x); hy = hx' along rows (y).
  gx = conv(conv(image, gauss, 0), dgauss, 1)
  gy = conv(conv(image, dgauss, 0), gauss, 1)
  return gx, gy


def gradient_amplitude(matte: np.ndarray) -> np.ndarray:
  """The DIM Grad metric's gradient amplitude of one (H, W) matte (uint8 here):
  |`gauss_gradient`| of its `mat2gray`, (H, W) float32."""
  gx, gy = gauss_gradient(mat2gray(matte))
  return np.sqrt(gx**2 + gy**2).astype(np.float32)


def _gradient_error_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
  return (gradient_amplitude(pred) - gradient_amplitude(gt))**2


def _largest_component(mask: np.ndarray) -> np.ndarray:
  """Largest 4-connected component; ties go to the first in column order."""
  # Labelling the transpose numbers components in MATLAB's column-major order.
  labels, count = ndi.label(mask.T, structure=_FOUR_CONNECTED)
  if count == 0:
    return np.zeros_like(mask)
  sizes = np.bincount(labels.ravel())[1:]
  return (labels == np.argmax(sizes) + 1).T


def connectivity_thresholds(step: float = _CONN_STEP) -> tuple[np.ndarray,
                                                               np.ndarray]:
  """(thresholds, k_min): MATLAB thresholds and, per threshold, the smallest
  uint8 value k with single(k)/255 >= threshold."""
  thresholds = matlab_colon(0.0, step, 1.0)
  alpha = (np.arange(256, dtype=np.float32) / np.float32(255)).astype(
      np.float64)
  k_min = np.array([np.argmax(alpha >= t) for t in thresholds])
  return thresholds, k_min


def _connectivity_error_map(pred: np.ndarray, gt: np.ndarray,
                            step: float = _CONN_STEP) -> np.ndarray:
  thresholds, k_min = connectivity_thresholds(step)
  l_map = np.full(pred.shape, -1.0)
  for ii in range(1, len(thresholds)):
    # pred >= t in single precision is exactly pred_uint8 >= k_min[ii].
    omega = _largest_component((pred >= k_min[ii]) & (gt >= k_min[ii]))
    l_map[(l_map == -1) & ~omega] = thresholds[ii - 1]
  l_map[l_map == -1] = 1.0
  l_map = l_map.astype(np.float32)
  phis = []
  for matte in (pred, gt):
    d = matte.astype(np.float32) / np.float32(255) - l_map
    phis.append(np.float32(1) - d * (d >= _CONN_THETA))
  return np.abs(phis[0] - phis[1])


def _error_maps(pred: np.ndarray, gt: np.ndarray, which) -> dict:
  maps = {}
  diff = pred.astype(np.int32) - gt.astype(np.int32)
  if 'sad' in which:
    maps['sad'] = np.abs(diff) / 255.0
  if 'mse' in which:
    maps['mse'] = (diff / 255.0)**2
  if 'grad' in which:
    maps['grad'] = _gradient_error_map(pred, gt)
  if 'conn' in which:
    maps['conn'] = _connectivity_error_map(pred, gt)
  return maps


def _reduce(maps: dict, region: np.ndarray) -> dict:
  count = int(region.sum())
  out = {}
  for name, error in maps.items():
    total = float(error[region].sum(dtype=np.float64))
    if name == 'mse':
      out[name] = total / count if count else 0.0
    else:
      out[name] = total / 1000.0
  return out


def _check_which(which) -> None:
  unknown = set(which) - set(ALL_METRICS)
  if unknown:
    raise ValueError(f'Unknown metrics {sorted(unknown)}; '
                     f'known: {ALL_METRICS}.')


def matting_metrics(pred, gt, trimap=None, which=ALL_METRICS) -> dict:
  """DIM SAD, MSE, Grad, Conn of one uint8 matte (see the module docstring).

  Args:
    pred: (H, W) or (H, W, 1) uint8 predicted alpha.
    gt: same shape, uint8 ground-truth alpha.
    trimap: optional (H, W[, 1]) trimap; U = its unknown region (uint8 128, or
      float 0.5). None means the whole image.
    which: subset of ('sad', 'mse', 'grad', 'conn').

  Returns:
    dict name -> float. With an empty U all four are 0.0.
  """
  _check_which(which)
  pred = _as_2d_uint8(pred, 'pred')
  gt = _as_2d_uint8(gt, 'gt')
  if pred.shape != gt.shape:
    raise ValueError(f'pred {pred.shape} and gt {gt.shape} differ.')
  return _reduce(_error_maps(pred, gt, which), _region(trimap, pred.shape))


def iou(pred_mask, gt_mask) -> float:
  """Foreground IoU of two boolean masks; 1.0 when both are empty."""
  pred_mask = np.asarray(pred_mask, bool)
  gt_mask = np.asarray(gt_mask, bool)
  union = np.logical_or(pred_mask, gt_mask).sum()
  if union == 0:
    return 1.0
  return float(np.logical_and(pred_mask, gt_mask).sum() / union)


def _boundary(mask: np.ndarray) -> np.ndarray:
  """Pixels of `mask` with a 4-neighbour outside it (the image border counts
  as inside, so a mask touching the frame has no boundary there)."""
  eroded = ndi.binary_erosion(mask, _FOUR_CONNECTED, border_value=1)
  return mask & ~eroded


def boundary_f(pred_mask, gt_mask, bound_th: float = 0.008) -> float:
  """Boundary F-measure of two boolean (H, W) masks, in [0, 1].

  DAVIS's contour accuracy F (Perazzi et al., CVPR 2016; `f_boundary` in the
  davis-2017 toolkit): boundary pixels of each mask match when the other
  mask's boundary lies within a disk of radius ceil(bound_th * diagonal)
  pixels; precision and recall of the matches, F = 2PR / (P + R). The
  boundary here is the inner 4-neighbour boundary (the toolkit's `seg2bmap`
  thins a one-pixel boundary between pixel centres, a difference of at most
  one pixel). 1.0 when both masks are empty, 0.0 when only one is.
  """
  pred_mask = np.asarray(pred_mask, bool)
  gt_mask = np.asarray(gt_mask, bool)
  radius = int(np.ceil(bound_th * np.hypot(*pred_mask.shape)))
  pred_b, gt_b = _boundary(pred_mask), _boundary(gt_mask)
  n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
  if n_pred == 0 and n_gt == 0:
    return 1.0
  if n_pred == 0 or n_gt == 0:
    return 0.0
  yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
  disk = yy ** 2 + xx ** 2 <= radius ** 2
  precision = (pred_b & ndi.binary_dilation(gt_b, disk)).sum() / n_pred
  recall = (gt_b & ndi.binary_dilation(pred_b, disk)).sum() / n_gt
  if precision + recall == 0:
    return 0.0
  return float(2 * precision * recall / (precision + recall))


def _per_example(array, count: int | None = None):
  array = np.asarray(array)
  if array.ndim == 4 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim != 3 or (count is not None and array.shape[0] != count):
    raise ValueError(f'Expected (N, H, W[, 1]) arrays, got {array.shape}.')
  return array


def _trimap_to_uint8(trimap: np.ndarray) -> np.ndarray:
  if np.issubdtype(trimap.dtype, np.integer):
    return trimap.astype(np.uint8)
  return np.where(trimap_lib.unknown_mask(trimap), trimap_lib.TRIMAP_UNKNOWN,
                  np.where(trimap >= 0.75, 255, 0)).astype(np.uint8)


def batch_eval_metrics(pred, gt, trimap=None, which=ALL_METRICS,
                       iou_threshold: float = 0.5) -> dict:
  """Per-example metrics of a batch for evaluation (host numpy).

  Float mattes are quantised with `quantize` first. The whole-image metrics are
  named 'sad', 'mse', ...; with a trimap, the unknown-region ones are added as
  'sad_unknown', ...; 'iou' and 'boundary_f' (`boundary_f`) compare
  alpha >= `iou_threshold` masks.

  Args:
    pred: (N, H, W[, 1]) float alpha in [0, 1] (or uint8).
    gt: same.
    trimap: optional (N, H, W[, 1]) float {0, 0.5, 1} or uint8 {0, 128, 255}.
    which: subset of ('sad', 'mse', 'grad', 'conn').
    iou_threshold: foreground threshold on the [0, 1] scale.

  Returns:
    dict name -> (N,) float64 array.
  """
  _check_which(which)
  pred = _per_example(pred)
  count = pred.shape[0]
  gt = _per_example(gt, count)
  to_u8 = lambda a: a.astype(np.uint8) if np.issubdtype(
      a.dtype, np.integer) else quantize(a)
  pred, gt = to_u8(pred), to_u8(gt)
  if trimap is not None:
    trimap = _trimap_to_uint8(_per_example(trimap, count))
  # uint8 >= k is the same test as the float alpha rounded, >= threshold.
  k_fg = int(np.ceil(iou_threshold * 255.0 - 1e-9))
  rows = []
  for i in range(count):
    maps = _error_maps(pred[i], gt[i], which)
    row = _reduce(maps, np.ones(pred[i].shape, bool))
    if trimap is not None:
      unknown = _reduce(maps, trimap[i] == trimap_lib.TRIMAP_UNKNOWN)
      row.update({f'{k}_unknown': v for k, v in unknown.items()})
    row['iou'] = iou(pred[i] >= k_fg, gt[i] >= k_fg)
    row['boundary_f'] = boundary_f(pred[i] >= k_fg, gt[i] >= k_fg)
    rows.append(row)
  return {k: np.array([row[k] for row in rows]) for k in rows[0]}


def region_eval_metrics(pred, gt, trimap, region, which=ALL_METRICS) -> dict:
  """`batch_eval_metrics` of each example cropped to its region.

  Args:
    pred, gt, trimap: as `batch_eval_metrics` (N, H, W[, 1]).
    region: (N, 2) int, the (height, width) of each example's photo in the
      top-left corner of its letterboxed square (`input_pipeline.Prepare`);
      None: the whole arrays.
  Returns:
    dict name -> (N,) float64 array.
  """
  if region is None:
    return batch_eval_metrics(pred, gt, trimap, which=which)
  rows = []
  for i, (height, width) in enumerate(np.asarray(region)):
    crop = lambda a: None if a is None else np.asarray(a)[i:i + 1, :height, :width]
    rows.append(batch_eval_metrics(crop(pred), crop(gt), crop(trimap), which=which))
  return {k: np.concatenate([row[k] for row in rows]) for k in rows[0]}


def batch_matting_metrics(pred, gt, trimap=None, which=ALL_METRICS) -> dict:
  """Per-example DIM metrics over the trimap's unknown region (or the image).

  Args and quantisation as in `batch_eval_metrics`. Returns dict name -> (N,)
  float64 array for the names in `which`.
  """
  metrics = batch_eval_metrics(pred, gt, trimap, which)
  suffix = '' if trimap is None else '_unknown'
  return {name: metrics[name + suffix] for name in which}


def sad_mse_jax(pred: jax.Array, gt: jax.Array,
                mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Jittable per-example SAD and MSE (DIM units) for cheap in-loop eval.

  Inputs are quantised to the uint8 grid first, so the results equal
  `batch_matting_metrics(..., which=('sad', 'mse'))` up to float32 summation
  rounding (about 1e-6 relative).

  Args:
    pred: (N, H, W, 1) float alpha in [0, 1].
    gt: (N, H, W, 1) float alpha in [0, 1].
    mask: optional (N, H, W, 1) bool/{0, 1} region (e.g. the unknown region);
      None means the whole image.

  Returns:
    (sad, mse), each (N,) float32; MSE is 0 where the region is empty.
  """
  quant = lambda a: jnp.round(jnp.clip(a.astype(jnp.float32), 0.0, 1.0) * 255.0)
  diff = (quant(pred) - quant(gt)) / 255.0
  if mask is None:
    mask = jnp.ones_like(diff)
  mask = jnp.broadcast_to(mask.astype(jnp.float32), diff.shape)
  axes = tuple(range(1, diff.ndim))
  sad = jnp.sum(jnp.abs(diff) * mask, axis=axes) / 1000.0
  count = jnp.sum(mask, axis=axes)
  squared = jnp.sum(diff**2 * mask, axis=axes)
  mse = jnp.where(count > 0, squared / jnp.maximum(count, 1.0), 0.0)
  return sad, mse


def average_collection(keys) -> type[clu_metrics.Collection]:
  """A clu Collection with one `Average` per key (train losses, eval metrics)."""
  return clu_metrics.Collection.create(
      **{k: clu_metrics.Average.from_output(k) for k in keys})


def merge_means(totals: clu_metrics.Collection | None,
                per_example: dict) -> clu_metrics.Collection:
  """Running means (one clu `Average` per name) with a batch added.

  Args:
    totals: the running means so far, or None to start.
    per_example: name -> (N,) per-example values (names without '/', as clu
      fields); the same names every call.
  Returns:
    The merged Collection; `compute_means` gives the means.
  """
  update = average_collection(per_example).single_from_model_output(**per_example)
  return update if totals is None else totals.merge(update)


def compute_means(totals: clu_metrics.Collection) -> dict[str, float]:
  """name -> mean over every example merged into `totals`."""
  return {k: float(v) for k, v in totals.compute().items()}
