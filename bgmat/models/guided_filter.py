"""The colour guided filter (He, Sun and Tang, "Guided Image Filtering",
TPAMI 2013, Algorithm 1 with the colour-guide Eqs. 19-21), in JAX.

Within every (2r+1) x (2r+1) window the output is an affine function of the
guide's colour, q = a . I + b, the same local linear model closed-form matting
(Levin et al., PAMI 2008) is derived from; as the last layer of a matting
network (the "guided filtering layer" of Wu et al., "Fast End-to-End Trainable
Guided Filter", CVPR 2018) it makes the matte's edges follow the photo's
colour edges. Differentiable with respect to the guide and the input;
windows are clipped at the image border (means over the pixels inside, as the
reference MATLAB code's boxfilter(ones) normalisation).
"""

import jax
import jax.numpy as jnp


def box_mean(x: jax.Array, radius: int) -> jax.Array:
  """Mean over the (2r+1) x (2r+1) window around each pixel, clipped at the border.

  Direct window sums (2r+1 terms per axis), not the running sums of
  `foreground.box_blur`: those carry an absolute error of about n * 2^-24 per
  line of n pixels, which the covariances below (differences of means, then
  divided through matrices as small as eps) would amplify at small radii.

  Args:
    x: (N, H, W, C) float.
    radius: r >= 0 in pixels.
  Returns:
    (N, H, W, C) float, same dtype.
  Raises:
    ValueError: radius < 0.
  """
  if radius < 0:
    raise ValueError(f'radius must be >= 0, got {radius}')
  if radius == 0:
    return x

  def window_sum(v, axis):  # (2r+1)-tap sum along axis 1 (rows) or 2 (columns).
    window, padding = [1, 1, 1, 1], [(0, 0)] * 4
    window[axis], padding[axis] = 2 * radius + 1, (radius, radius)
    return jax.lax.reduce_window(v, 0.0, jax.lax.add, window, (1, 1, 1, 1), padding)

  height, width = x.shape[1:3]
  # Pixels inside each clipped window, from 1-D counts (a 2-D count XLA would
  # constant-fold slowly; H and W may be symbolic under jax.export).
  count = (window_sum(jnp.ones((1, height, 1, 1), x.dtype), 1)
           * window_sum(jnp.ones((1, 1, width, 1), x.dtype), 2))
  return window_sum(window_sum(x, 1), 2) / count


def guided_filter(guide: jax.Array, src: jax.Array, radius: int, eps: float) -> jax.Array:
  """Guided filter of `src` with a colour `guide` (He et al. 2013, Eqs. 19-21).

  Per window k: a_k = (Sigma_k + eps U)^-1 cov_k(I, p), b_k = mean_k(p) -
  a_k . mean_k(I); the output is mean(a) . I + mean(b) at every pixel.

  Args:
    guide: (N, H, W, 3) float colour image I, in [0, 1].
    src: (N, H, W, 1) float input p (e.g. alpha in [0, 1]).
    radius: window radius r in pixels (>= 1).
    eps: regularisation of the colour covariance (> 0; in squared guide units:
      an edge with colour variance well above eps is kept, flatter windows
      are smoothed).
  Returns:
    (N, H, W, 1) float32 filtered `src` (not clipped: it may leave [0, 1]).
  Raises:
    ValueError: bad shapes, radius < 1 or eps <= 0.
  """
  if guide.ndim != 4 or guide.shape[-1] != 3 or src.shape != guide.shape[:3] + (1,):
    raise ValueError(f'need guide (N,H,W,3) and src (N,H,W,1), got {guide.shape} and '
                     f'{src.shape}')
  if radius < 1:
    raise ValueError(f'radius must be >= 1, got {radius}')
  if not eps > 0:
    raise ValueError(f'eps must be > 0, got {eps}')
  guide = guide.astype(jnp.float32)
  src = src.astype(jnp.float32)
  mean = lambda x: box_mean(x, radius)
  r, g, b = guide[..., 0:1], guide[..., 1:2], guide[..., 2:3]
  mean_i = mean(guide)
  mr, mg, mb = mean_i[..., 0:1], mean_i[..., 1:2], mean_i[..., 2:3]
  mean_p = mean(src)
  cov_ip = mean(guide * src) - mean_i * mean_p
  # The symmetric covariance Sigma + eps U, its six distinct entries.
  second = mean(jnp.concatenate([r * r, r * g, r * b, g * g, g * b, b * b], axis=-1))
  srr = second[..., 0:1] - mr * mr + eps
  srg = second[..., 1:2] - mr * mg
  srb = second[..., 2:3] - mr * mb
  sgg = second[..., 3:4] - mg * mg + eps
  sgb = second[..., 4:5] - mg * mb
  sbb = second[..., 5:6] - mb * mb + eps
  # Inverse through the adjugate (symmetric 3x3): elementwise, no batched LU.
  inv_rr = sgg * sbb - sgb * sgb
  inv_rg = sgb * srb - srg * sbb
  inv_rb = srg * sgb - sgg * srb
  inv_gg = srr * sbb - srb * srb
  inv_gb = srb * srg - srr * sgb
  inv_bb = srr * sgg - srg * srg
  det = srr * inv_rr + srg * inv_rg + srb * inv_rb
  cr, cg, cb = cov_ip[..., 0:1], cov_ip[..., 1:2], cov_ip[..., 2:3]
  a = jnp.concatenate([inv_rr * cr + inv_rg * cg + inv_rb * cb,
                       inv_rg * cr + inv_gg * cg + inv_gb * cb,
                       inv_rb * cr + inv_gb * cg + inv_bb * cb], axis=-1) / det
  b_coef = mean_p - jnp.sum(a * mean_i, axis=-1, keepdims=True)
  return jnp.sum(mean(a) * guide, axis=-1, keepdims=True) + mean(b_coef)
