"""Rendering a matte into an output: RGBA cut-out, alpha, foreground colours,
or a composite over a new background. One job: pixels in, pixels out (no
files; `bgmat.inference.remove_run` writes them).

  array = render(rgb, alpha, 'composite', bg='#00ff00')   # (H, W, 3) uint8

`rgb` (H, W, 3) uint8 and `alpha` (H, W) float32 in [0, 1], the photo's own
size. Foreground colours are estimated with `bgmat.foreground` (the default
method, blur fusion, for every entry point) so soft edges lose the old
background's colour; the composite is C = alpha * F + (1 - alpha) * B
(Porter & Duff, "Compositing digital images", SIGGRAPH 1984).
"""

import os
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageColor

from bgmat import foreground
from bgmat.inference import image_io


def constrain_alpha(alpha: np.ndarray, input_alpha: np.ndarray | None) -> np.ndarray:
  """min(predicted alpha, the input's own alpha), both (H, W) float32 in [0, 1]:
  a pixel the input already made transparent stays so; None leaves alpha as is."""
  if input_alpha is None:
    return alpha
  return np.minimum(alpha, input_alpha.astype(np.float32))


FORMATS = {
    'rgba': 'PNG with alpha; colours are the estimated foreground',
    'alpha': 'greyscale PNG of the matte',
    'foreground': 'RGB PNG of the estimated foreground colours (no alpha)',
    'composite': 'JPEG of the foreground over --bg (a colour or a photo)',
}
EXTENSIONS = {'rgba': '.png', 'alpha': '.png', 'foreground': '.png', 'composite': '.jpg'}


def parse_background(bg: Any) -> np.ndarray | tuple[int, int, int]:
  """A colour ('white', '#00ff00', (r, g, b)), an image path or an array -> RGB or (H, W, 3)."""
  if isinstance(bg, (tuple, list)) and len(bg) == 3:
    return tuple(int(c) for c in bg)
  if isinstance(bg, (np.ndarray, Image.Image)):
    return image_io.read_photo(bg, name='background').rgb
  if isinstance(bg, (str, os.PathLike)):
    bg = os.fspath(bg)
    if os.path.isfile(bg):
      return image_io.read_photo(bg).rgb
    try:
      return ImageColor.getrgb(bg)[:3]
    except ValueError as e:
      raise ValueError(f'--bg {bg!r} is neither an image file nor a colour (a name such '
                       'as white, or #rrggbb)') from e
  raise ValueError(f'Unsupported background {bg!r}')


def cover(photo: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes `photo` to cover height x width (keeping its aspect) and centre-crops."""
  scale = max(height / photo.shape[0], width / photo.shape[1])
  new_h = max(height, round(photo.shape[0] * scale))
  new_w = max(width, round(photo.shape[1] * scale))
  resized = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.BICUBIC))
  top, left = (new_h - height) // 2, (new_w - width) // 2
  return resized[top:top + height, left:left + width]


def render(rgb: np.ndarray, alpha: np.ndarray,
           format: str = 'rgba',  # pylint: disable=redefined-builtin
           bg: Any = 'white', foreground_method: str = foreground.DEFAULT_METHOD) -> np.ndarray:
  """rgb (H, W, 3) uint8 + alpha (H, W) float32 -> the uint8 output of `format`."""
  if format not in FORMATS:
    raise ValueError(f'Unknown format {format!r}; known: {list(FORMATS)}')
  alpha_u8 = np.round(alpha * 255).astype(np.uint8)
  if format == 'alpha':
    return alpha_u8
  if foreground_method == 'none':
    fg = rgb.astype(np.float32) / 255.0
  else:
    fg = foreground.estimate_foreground(rgb.astype(np.float32) / 255.0, alpha,
                                        method=foreground_method)
  if format == 'rgba':
    fg_u8 = rgb if foreground_method == 'none' else _to_u8(fg)
    return np.concatenate([fg_u8, alpha_u8[..., None]], axis=-1)
  if format == 'foreground':
    return _to_u8(fg)
  background = parse_background(bg)
  if isinstance(background, tuple):
    background = np.broadcast_to(np.asarray(background, np.float32), rgb.shape)
  else:
    background = cover(background, *rgb.shape[:2])
  a = alpha[..., None]
  return _to_u8(a * fg + (1 - a) * background.astype(np.float32) / 255.0)


def _to_u8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
