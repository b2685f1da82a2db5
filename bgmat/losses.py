"""Segmentation, matting, adversarial and feature-matching losses (JAX).

All functions are jittable and return a float32 scalar. Images are NHWC float32:
alpha (N, H, W, 1) in [0, 1], colour images (N, H, W, 3) in [0, 1]. Optional
masks are float weights broadcastable to the compared tensor (e.g. the unknown
region (N, H, W, 1) as 0/1); a masked mean is sum(w * err) / sum(w) over the
whole batch, and is 0 (with zero gradients) when the mask is empty.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST
# 5x5 binomial kernel [1, 4, 6, 4, 1]^2 / 256, as in MG-Matting / FBA.
# numpy, not jnp: importing this module must not start the XLA backend
# (jax.distributed.initialize() has to come first in multi-host runs).
_GAUSS_1D = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], np.float32)
_GAN_KINDS = ('lsgan', 'hinge')


def _masked_mean(error: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean of `error` weighted by `mask` (broadcast); 0 for an empty mask."""
  if mask is None:
    return jnp.mean(error)
  weights = jnp.broadcast_to(mask.astype(error.dtype), error.shape)
  total_weight = jnp.sum(weights)
  # Double `where` keeps the gradient finite when the mask is empty.
  safe_weight = jnp.where(total_weight > 0, total_weight, 1.0)
  return jnp.where(total_weight > 0, jnp.sum(weights * error) / safe_weight,
                   0.0)


def _depthwise_conv(images: jax.Array, kernel_2d: jax.Array) -> jax.Array:
  """'VALID' correlation of every channel with the same 2-D kernel."""
  channels = images.shape[-1]
  kernel = jnp.tile(kernel_2d.astype(images.dtype)[:, :, None, None],
                    (1, 1, 1, channels))
  return jax.lax.conv_general_dilated(
      images, kernel, (1, 1), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=channels,
      precision=_HIGHEST)


def _pad_hw(images: jax.Array, pad: int, mode: str) -> jax.Array:
  return jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)


# ---------------------------------------------------------------- segmentation


def sigmoid_bce_loss(logits: jax.Array, target: jax.Array,
                     mask: jax.Array | None = None) -> jax.Array:
  """Numerically stable binary cross-entropy with logits, (masked) mean.

  Args:
    logits: (N, H, W, 1) pre-sigmoid scores.
    target: (N, H, W, 1) targets in [0, 1]; hard {0, 1} or soft alpha.
    mask: optional weights.
  """
  target = target.astype(logits.dtype)
  # max(x, 0) - x t + log(1 + exp(-|x|)) == -t log s(x) - (1-t) log(1-s(x)).
  error = (jnp.maximum(logits, 0.0) - logits * target +
           jnp.log1p(jnp.exp(-jnp.abs(logits))))
  return _masked_mean(error, mask)


def soft_dice_loss(logits: jax.Array, target: jax.Array,
                   smooth: float = 1.0) -> jax.Array:
  """1 - soft Dice per example, averaged over the batch.

  dice = (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth) with
  p = sigmoid(logits), sums over H, W, C. `smooth` = 1 makes an empty target
  with an empty prediction a perfect score.
  """
  prob = jax.nn.sigmoid(logits)
  target = target.astype(prob.dtype)
  axes = tuple(range(1, logits.ndim))
  overlap = jnp.sum(prob * target, axis=axes)
  total = jnp.sum(prob, axis=axes) + jnp.sum(target, axis=axes)
  return jnp.mean(1.0 - (2.0 * overlap + smooth) / (total + smooth))


def lovasz_hinge_loss(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Lovasz hinge per example, averaged over the batch: a convex surrogate of
  1 - IoU of the foreground (logits > 0) that is tight at hinge errors in {0, 1}.

  Berman, Rannen Triki & Blaschko, "The Lovasz-Softmax loss: a tractable
  surrogate for the optimization of the intersection-over-union measure in
  neural networks", CVPR 2018, eq. (9) and Alg. 1 (reference code: the
  authors' `lovasz_hinge_flat`). The hinge errors m_i = max(0, 1 - x_i y_i),
  y_i = +-1, are sorted in decreasing order and weighted by the increments of
  the Jaccard loss along that order.

  Args:
    logits: (N, H, W, 1) pre-sigmoid scores.
    target: (N, H, W, 1) hard targets in {0, 1} (values >= 0.5 count as 1).

  Returns:
    float32 scalar >= 0; 0 when every pixel is on its side with margin >= 1.
    An example with no foreground and no error contributes 0.
  """
  n = logits.shape[0]
  x = logits.reshape(n, -1).astype(jnp.float32)
  y = (target.reshape(n, -1) >= 0.5).astype(jnp.float32)
  errors = 1.0 - x * (2.0 * y - 1.0)
  order = jnp.argsort(-errors, axis=1)
  errors_sorted = jnp.take_along_axis(errors, order, axis=1)
  # The Jaccard weights depend on the order only (no gradient through them).
  y_sorted = jax.lax.stop_gradient(jnp.take_along_axis(y, order, axis=1))
  positives = jnp.sum(y_sorted, axis=1, keepdims=True)
  intersection = positives - jnp.cumsum(y_sorted, axis=1)
  union = positives + jnp.cumsum(1.0 - y_sorted, axis=1)
  jaccard = 1.0 - intersection / union  # union >= 1 from the first pixel on.
  increments = jnp.concatenate([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
  per_example = jnp.sum(jax.nn.relu(errors_sorted) * increments, axis=1)
  return jnp.mean(per_example)


def seg_loss(logits: jax.Array, alpha: jax.Array, bce_weight: float = 1.0,
             dice_weight: float = 0.0, binarize: bool = True,
             lovasz_weight: float = 0.0) -> jax.Array:
  """Pre-segmentation loss: bce_weight * BCE + dice_weight * Dice
  + lovasz_weight * Lovasz hinge (`lovasz_hinge_loss`).

  Args:
    logits: (N, H, W, 1) pre-sigmoid scores.
    alpha: (N, H, W, 1) alpha in [0, 1].
    binarize: if True the target is `alpha >= 0.5` (a hard person mask);
      otherwise the soft alpha itself (the Lovasz term always uses
      `alpha >= 0.5`).
  """
  target = (alpha >= 0.5).astype(logits.dtype) if binarize else alpha
  loss = bce_weight * sigmoid_bce_loss(logits, target)
  if dice_weight:
    loss = loss + dice_weight * soft_dice_loss(logits, target)
  if lovasz_weight:
    loss = loss + lovasz_weight * lovasz_hinge_loss(logits, alpha >= 0.5)
  return loss


# -------------------------------------------------------------------- matting


def alpha_l1(pred: jax.Array, gt: jax.Array,
             mask: jax.Array | None = None) -> jax.Array:
  """Mean |pred - gt| over the mask; (N, H, W, 1) inputs."""
  return _masked_mean(jnp.abs(pred - gt), mask)


def composition_l1(pred_alpha: jax.Array, gt_alpha: jax.Array, fg: jax.Array,
                   bg: jax.Array, image: jax.Array | None = None,
                   mask: jax.Array | None = None) -> jax.Array:
  """L1 between pred_alpha * fg + (1 - pred_alpha) * bg and a target image.

  The target is `image` when given (DIM's composition loss against the input),
  otherwise the ground-truth composite gt_alpha * fg + (1 - gt_alpha) * bg,
  which is exactly zero at pred_alpha == gt_alpha even when the input image was
  colour-jittered or quantised. The mean runs over mask pixels and channels.

  Args:
    pred_alpha, gt_alpha: (N, H, W, 1).
    fg, bg: (N, H, W, 3) true foreground and background colours.
    image: optional (N, H, W, 3).
    mask: optional (N, H, W, 1) weights.
  """
  composite = pred_alpha * fg + (1.0 - pred_alpha) * bg
  if image is None:
    image = gt_alpha * fg + (1.0 - gt_alpha) * bg
  return _masked_mean(jnp.abs(composite - image), mask)


def _gauss_blur(images: jax.Array, scale: float = 1.0) -> jax.Array:
  kernel = jnp.outer(_GAUSS_1D, _GAUSS_1D) * scale
  return _depthwise_conv(_pad_hw(images, 2, 'reflect'), kernel)


def laplacian_pyramid(images: jax.Array, levels: int) -> list[jax.Array]:
  """Band-pass levels of the MG-Matting Laplacian pyramid (no low-pass term).

  Per level: blur with the 5x5 binomial kernel (reflect padding), keep every
  second pixel, upsample by zero insertion and blur with 4x the kernel, and
  store current - upsampled. Odd sizes are cropped after upsampling.
  """
  pyramid = []
  current = images
  for _ in range(levels):
    height, width = current.shape[1:3]
    down = _gauss_blur(current)[:, ::2, ::2]
    up = jnp.zeros(down.shape[:1] + (2 * down.shape[1], 2 * down.shape[2]) +
                   down.shape[3:], down.dtype).at[:, ::2, ::2].set(down)
    up = _gauss_blur(up, 4.0)[:, :height, :width]
    pyramid.append(current - up)
    current = down
  return pyramid


def laplacian_pyramid_loss(pred: jax.Array, gt: jax.Array,
                           levels: int = 5) -> jax.Array:
  """sum_i 2**i * mean|L_i(pred) - L_i(gt)| over the pyramid levels i.

  As in MG-Matting (Yu et al. 2021): 5 band-pass levels, weight 2**i on the
  i-th (coarser) level. The pyramid has no low-pass residual, so a constant
  offset between `pred` and `gt` costs nothing: pair it with `alpha_l1`.

  Args:
    pred, gt: (N, H, W, C); H and W should be >= 2**levels (reflect padding
      needs at least 3 pixels at the coarsest level).
  """
  loss = jnp.zeros((), jnp.float32)
  for level, (band_pred, band_gt) in enumerate(
      zip(laplacian_pyramid(pred, levels), laplacian_pyramid(gt, levels))):
    loss = loss + (2.0**level) * jnp.mean(jnp.abs(band_pred - band_gt))
  return loss


def sobel_gradients(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(gx, gy) of (N, H, W, C) images with the unnormalised 3x3 Sobel kernels
  (as cv2.Sobel ksize=3), replicate padding; gx = right minus left."""
  padded = _pad_hw(images, 1, 'edge')
  return (_depthwise_conv(padded, _SOBEL_X),
          _depthwise_conv(padded, _SOBEL_X.T))


def alpha_gradient_loss(pred: jax.Array, gt: jax.Array,
                        mask: jax.Array | None = None) -> jax.Array:
  """Mean over the mask of |gx_p - gx_g| + |gy_p - gy_g| (Sobel gradients)."""
  pred_x, pred_y = sobel_gradients(pred)
  gt_x, gt_y = sobel_gradients(gt)
  return _masked_mean(jnp.abs(pred_x - gt_x) + jnp.abs(pred_y - gt_y), mask)


# ---------------------------------------------------------------- adversarial


def _check_kind(kind: str) -> None:
  if kind not in _GAN_KINDS:
    raise ValueError(f'Unknown GAN loss {kind!r}; known: {_GAN_KINDS}.')


def adversarial_d_loss(real_logits: Sequence[jax.Array],
                       fake_logits: Sequence[jax.Array],
                       kind: str = 'lsgan') -> jax.Array:
  """Discriminator loss averaged over the discriminator scales.

  Per scale: 'lsgan' 0.5 * (mean((real - 1)^2) + mean(fake^2)) (the 0.5 of
  pix2pixHD's loss_D; pix2pixHD sums, not averages, over scales);
  'hinge' mean(relu(1 - real)) + mean(relu(1 + fake)) (SPADE, no 0.5).

  Args:
    real_logits, fake_logits: one (N, h, w, 1) logit map per scale.
  """
  _check_kind(kind)
  if len(real_logits) != len(fake_logits) or not real_logits:
    raise ValueError('Need the same, non-zero number of real and fake scales.')
  losses = []
  for real, fake in zip(real_logits, fake_logits):
    if kind == 'lsgan':
      losses.append(0.5 * (jnp.mean((real - 1.0)**2) + jnp.mean(fake**2)))
    else:
      losses.append(jnp.mean(jax.nn.relu(1.0 - real)) +
                    jnp.mean(jax.nn.relu(1.0 + fake)))
  return sum(losses) / len(losses)


def adversarial_g_loss(fake_logits: Sequence[jax.Array],
                       kind: str = 'lsgan') -> jax.Array:
  """Generator loss averaged over scales: 'lsgan' mean((fake - 1)^2),
  'hinge' -mean(fake)."""
  _check_kind(kind)
  if not fake_logits:
    raise ValueError('Need at least one scale.')
  if kind == 'lsgan':
    losses = [jnp.mean((fake - 1.0)**2) for fake in fake_logits]
  else:
    losses = [-jnp.mean(fake) for fake in fake_logits]
  return sum(losses) / len(losses)


def feature_matching_loss(real_feats: Sequence[Sequence[jax.Array]],
                          fake_feats: Sequence[Sequence[jax.Array]],
                          skip_last: bool = False) -> jax.Array:
  """pix2pixHD feature matching: mean |fake - stop_gradient(real)|.

  Averaged over the layers of each scale, then over scales (pix2pixHD weights
  4 / (n_layers + 1) and 1 / num_D instead; scale by a lambda outside).

  Args:
    real_feats, fake_feats: per scale, a list of intermediate feature maps of
      the discriminator on real and fake inputs (same structure and shapes).
    skip_last: drop the last entry of each list (when it is the final logit).
  """
  if len(real_feats) != len(fake_feats) or not real_feats:
    raise ValueError('Need the same, non-zero number of real and fake scales.')
  per_scale = []
  for real_layers, fake_layers in zip(real_feats, fake_feats):
    if skip_last:
      real_layers, fake_layers = real_layers[:-1], fake_layers[:-1]
    if len(real_layers) != len(fake_layers) or not real_layers:
      raise ValueError('Each scale needs the same, non-zero number of layers.')
    per_layer = [jnp.mean(jnp.abs(fake - jax.lax.stop_gradient(real)))
                 for real, fake in zip(real_layers, fake_layers)]
    per_scale.append(sum(per_layer) / len(per_layer))
  return sum(per_scale) / len(per_scale)
