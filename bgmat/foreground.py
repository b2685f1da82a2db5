"""Foreground colour estimation: edge pixels lose the old background's colour.

A photo pixel is I = alpha * F + (1 - alpha) * B. Cutting out with the photo's
own colours (F := I) leaves a halo of the old background in hair and other
soft edges; estimating F removes it.

  fg = estimate_foreground(image, alpha)                        # blur fusion (JAX)
  fg = estimate_foreground(image, alpha, method='multilevel')   # pymatting

Methods:
  'blur_fusion': Forte & Pitie, "Approximate fast foreground colour
      estimation", ICIP 2021. Two passes of local (box-blurred) F and B
      means with a large then a small window. Jittable, O(HW) per pass.
  'multilevel':  Germer et al., "Fast multi-level foreground estimation",
      ICPR 2020, through pymatting's `estimate_foreground_ml` (optional
      dependency: `pip install bgmat[matting]`).
  'none':        F := I (the photo's own colours).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bgmat.inference import compile_cache

METHODS = ('blur_fusion', 'multilevel', 'none')
# The one default of every entry point (CLI, Python API, server, video).
DEFAULT_METHOD = 'blur_fusion'

# The paper's window sizes (r=90 then r=6) suit photos of about this size;
# they are scaled with the long side so a thumbnail is not one blurred window.
REFERENCE_SIZE = 1024
DEFAULT_RADII = (90, 6)


def _box_sum_1d(x: jax.Array, size: int, axis: int) -> jax.Array:
  """Sum over a window of `size` (anchor at size // 2, as cv2.blur) along `axis`,
  counting only in-image pixels."""
  before = size // 2
  after = size - 1 - before
  n = x.shape[axis]
  # Cumulative sums of 1D lines stay small (<= n), so float32 keeps ~1e-4 accuracy.
  pad = [(0, 0)] * x.ndim
  pad[axis] = (1, 0)
  csum = jnp.pad(jnp.cumsum(x, axis=axis), pad)  # csum[k] = sum of x[:k], k in [0, n].
  # Edge padding clips the window to the image; static slices, no gathers.
  pad[axis] = (before, after)
  csum = jnp.pad(csum, pad, mode='edge')
  hi = jax.lax.slice_in_dim(csum, before + after + 1, before + after + 1 + n, axis=axis)
  lo = jax.lax.slice_in_dim(csum, 0, n, axis=axis)
  return hi - lo


def box_blur(x: jax.Array, size: int, row_valid: jax.Array | None = None,
             col_valid: jax.Array | None = None) -> jax.Array:
  """Mean over a size x size window of (H, W, ...) `x`, over in-image pixels only.

  `row_valid` (H,) and `col_valid` (W,) (1 inside, 0 outside) mark the image
  inside a padded array: padded pixels neither count nor contribute, so the
  valid region's result equals that of the unpadded image.
  """
  if size <= 1:
    return x
  height, width = x.shape[:2]
  if row_valid is None:
    row_valid = jnp.ones((height,), x.dtype)
  if col_valid is None:
    col_valid = jnp.ones((width,), x.dtype)
  trailing = (1,) * (x.ndim - 2)
  valid = (row_valid[:, None] * col_valid[None, :]).reshape((height, width) + trailing)
  sums = _box_sum_1d(_box_sum_1d(x * valid, size, 0), size, 1)
  # The window's in-image pixel count is separable: rows x columns.
  rows = _box_sum_1d(row_valid.astype(x.dtype), size, 0)
  cols = _box_sum_1d(col_valid.astype(x.dtype), size, 0)
  counts = (rows[:, None] * cols[None, :]).reshape((height, width) + trailing)
  return sums / jnp.maximum(counts, 1.0)


def _blur_fusion_pass(image, fg, bg, alpha, size, row_valid, col_valid):
  """One pass: local means of F (weighted by alpha) and B (by 1 - alpha), then
  F moved along the compositing equation so that alpha F + (1 - alpha) B = I."""
  # One blur of all 7 channels: alpha, alpha F, (1 - alpha) B.
  blurred = box_blur(jnp.concatenate([alpha, fg * alpha, bg * (1 - alpha)], axis=-1), size,
                     row_valid, col_valid)
  blurred_alpha = blurred[..., :1]
  blurred_fg = blurred[..., 1:4] / (blurred_alpha + 1e-5)
  blurred_bg = blurred[..., 4:] / ((1 - blurred_alpha) + 1e-5)
  fg = blurred_fg + alpha * (image - alpha * blurred_fg - (1 - alpha) * blurred_bg)
  return jnp.clip(fg, 0.0, 1.0), blurred_bg


@functools.partial(jax.jit, static_argnames=('radii',))
def blur_fusion(image: jax.Array, alpha: jax.Array,
                radii: tuple[int, ...] = DEFAULT_RADII,
                row_valid: jax.Array | None = None,
                col_valid: jax.Array | None = None) -> jax.Array:
  """Blur-fusion foreground. image (H, W, 3), alpha (H, W) float32 in [0, 1] -> (H, W, 3).

  `radii` are box window sizes in pixels, one pass each (the paper: 90, 6).
  `row_valid` (H,) / `col_valid` (W,): the image inside a padded array (see
  `box_blur`); `estimate_foreground` pads to a few shapes so that a folder of
  photos of many sizes compiles a bounded number of times.
  """
  image = image.astype(jnp.float32)
  alpha = alpha.astype(jnp.float32)[..., None]
  fg, bg = image, image
  for size in radii:
    fg, bg = _blur_fusion_pass(image, fg, bg, alpha, size, row_valid, col_valid)
  return fg


def padded_side(side: int) -> int:
  """`side` rounded up to a multiple of 2**(floor(log2 side) - 2) (at least 32):
  four shapes per octave, at most 25% padding, so compiles stay few."""
  step = max(32, 2 ** (max(side, 1).bit_length() - 3))
  return -(-side // step) * step


# Above this side blur fusion runs in TILE x TILE tiles (plus a halo), so the
# peak memory of a large photo is that of a tile; the result is the same.
TILE = 2048


def padded_shape(height: int, width: int) -> tuple[int, int]:
  """The shape blur fusion pads a height x width image to: the default matting
  bucket (30 shapes, `bgmat.inference.resolution`) for long sides 256..2048, else each
  side by `padded_side`, so a folder of any mix of sizes compiles a bounded
  number of shapes."""
  if 256 <= max(height, width) <= TILE:
    from bgmat.inference import resolution  # pylint: disable=g-import-not-at-top
    shape = resolution.Buckets().fit(height, width)
    if shape is not None:
      return shape
  return padded_side(height), padded_side(width)


def _blur_fusion_padded(image: np.ndarray, alpha: np.ndarray, radii: tuple[int, ...],
                        shape: tuple[int, int]) -> np.ndarray:
  """Blur fusion of (h, w) inside an array padded to `shape` (valid masks keep the
  result that of the unpadded image)."""
  height, width = alpha.shape
  pad = ((0, shape[0] - height), (0, shape[1] - width))
  row_valid = (np.arange(shape[0]) < height).astype(np.float32)
  col_valid = (np.arange(shape[1]) < width).astype(np.float32)
  compile_cache.admit(('blur_fusion', shape, radii))
  fg = blur_fusion(np.pad(image, pad + ((0, 0),)), np.pad(alpha, pad), radii=radii,
                   row_valid=row_valid, col_valid=col_valid)
  return np.asarray(fg[:height, :width])


def _blur_fusion_tiled(image: np.ndarray, alpha: np.ndarray, radii: tuple[int, ...],
                       tile: int) -> np.ndarray:
  """Blur fusion in tile x tile blocks, each run with a halo of the passes' reach
  (sum of window // 2, + 1): a pass reads at most window // 2 pixels away, so
  every block equals the whole image's result (up to float summation order)."""
  height, width = alpha.shape
  halo = sum(size // 2 for size in radii) + 1
  side = padded_side(tile + 2 * halo)
  out = np.empty((height, width, 3), np.float32)
  for top in range(0, height, tile):
    for left in range(0, width, tile):
      rows = slice(max(0, top - halo), min(height, top + tile + halo))
      cols = slice(max(0, left - halo), min(width, left + tile + halo))
      block = _blur_fusion_padded(image[rows, cols], alpha[rows, cols], radii, (side, side))
      bottom, right = min(height, top + tile), min(width, left + tile)
      out[top:bottom, left:right] = block[top - rows.start:bottom - rows.start,
                                          left - cols.start:right - cols.start]
  return out


def scaled_radii(height: int, width: int,
                 radii: tuple[int, ...] = DEFAULT_RADII) -> tuple[int, ...]:
  """The paper's window sizes scaled to the image's long side (at least 3 and 1)."""
  scale = max(height, width) / REFERENCE_SIZE
  large, *small = radii
  return (max(3, round(large * scale)), *(max(1, round(r * scale)) for r in small))


def _multilevel(image: np.ndarray, alpha: np.ndarray, **kwargs) -> np.ndarray:
  try:
    from pymatting import estimate_foreground_ml  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "method='multilevel' needs pymatting: pip install 'bgmat[matting]' "
        "(or pymatting>=1.1.12); method='blur_fusion' needs nothing extra") from e
  if max(alpha.shape) < 2:
    # pymatting's level count is ceil(log2(long side)): 0 for one pixel, and it
    # divides by it. With no neighbours the estimate is F = I, what its
    # coarsest level (and blur fusion) gives for a constant image.
    return np.clip(image, 0.0, 1.0).astype(np.float32)
  fg = estimate_foreground_ml(image.astype(np.float64), alpha.astype(np.float64), **kwargs)
  return np.clip(fg, 0.0, 1.0).astype(np.float32)


def estimate_foreground(image, alpha, method: str = 'blur_fusion',
                        radii: tuple[int, ...] | None = None, **kwargs) -> np.ndarray:
  """Foreground colours F. image (H, W, 3), alpha (H, W), float in [0, 1] -> (H, W, 3) float32.

  Args:
    image: the photo.
    alpha: its matte.
    method: 'blur_fusion' (default), 'multilevel' or 'none'.
    radii: blur-fusion window sizes; default: (90, 6) scaled to the image size.
    **kwargs: passed to pymatting's `estimate_foreground_ml` for 'multilevel'.
  """
  image = np.asarray(image, np.float32)
  alpha = np.asarray(alpha, np.float32)
  if image.ndim != 3 or image.shape[-1] != 3 or alpha.shape != image.shape[:2]:
    raise ValueError(f'Expected image (H, W, 3) and alpha (H, W), got {image.shape} '
                     f'and {alpha.shape}')
  if method == 'blur_fusion':
    height, width = alpha.shape
    padded_h, padded_w = padded_shape(height, width)
    # Radii from the padded shape: one compile per padded shape, not per size.
    radii = tuple(radii) if radii else scaled_radii(padded_h, padded_w)
    if max(height, width) > TILE:
      return _blur_fusion_tiled(image, alpha, radii, TILE)
    return _blur_fusion_padded(image, alpha, radii, (padded_h, padded_w))
  if method == 'multilevel':
    return _multilevel(image, alpha, **kwargs)
  if method == 'none':
    return image
  raise ValueError(f'Unknown foreground method {method!r}; known: {list(METHODS)}')
