"""Reading untrusted images: one opener for files, one reader for photos.

`open_image` is the guard every file reader in bgmat shares (`bgmat remove`,
the data builders, the labelling tools): a decompression bomb, a missing file,
a non-image or a truncated image is refused the same way everywhere, with the
file named and a short reason code that reports can count.

`read_photo` is the one reader of photos for `bgmat remove` and the Python API
(`bgmat.remove`, `bgmat.Remover`): a path, `-` (stdin), bytes, a PIL image or a
numpy array all become a `Photo` by the same rules:

| input | pixels used |
|---|---|
| 8-bit modes (1, L, P, RGB, CMYK, YCbCr, HSV) | converted to RGB |
| 16-bit (PIL I;16*, PNG/TIFF 16-bit, numpy uint16) | x / 65535 * 255, rounded |
| float (PIL F, numpy float16/32/64) | x * 255 rounded, if every value is finite and in [0, 1]; else refused |
| numpy bool | False 0, True 255 |
| other integer types (int8..int64, uint32/64), 32-bit integer TIFF | refused: no defined range |
| alpha channel (RGBA, LA, PA, P+transparency, (H, W, 2|4) arrays) | kept as `Photo.alpha` |
| EXIF orientation (files and PIL images) | applied: the photo is upright |
| ICC profile, RGB | kept as `Photo.icc_profile` (outputs carry it) |
| ICC profile of another space (grey, CMYK, Lab) | converted to sRGB, said in `Photo.notes` |
| animated GIF/WebP/PNG, multi-page TIFF | first frame, said in `Photo.notes` |
| empty (0 pixels), > max_pixels | refused |

Anything else is an `InputError` naming the input and the problem; nothing
is guessed silently.
"""

import dataclasses
import io
import os
import sys
import threading
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageOps

# bgmat's one pixel limit: larger images are refused as possible
# decompression bombs (Pillow's own limit is raised to this, see `open_image`).
MAX_PIXELS = 100_000_000


class ImageReadError(ValueError):
  """A file that cannot be used; `reason` is a short code for reports
  ('missing', 'not_an_image', 'decompression_bomb', 'unreadable', ...)."""

  def __init__(self, file: str, reason: str, detail: str):
    super().__init__(f'{file}: {reason}: {detail}')
    self.file, self.reason, self.detail = str(file), reason, detail


class InputError(ValueError):
  """An input that cannot be used as a photo; the message names it and says why.

  `reason`: a short code ('missing', 'not_an_image', 'decompression_bomb',
  'unreadable', 'empty', 'dtype', 'range', 'shape', 'mode', 'type').
  """

  def __init__(self, message: str, reason: str = 'unreadable'):
    super().__init__(message)
    self.reason = reason


_PILLOW_LIMIT_LOCK = threading.Lock()


def _allow_pillow_up_to(max_pixels: int) -> None:
  """Pillow refuses images above its own MAX_IMAGE_PIXELS (89.5 MP: a warning,
  an error at twice that) before bgmat can apply its limit. bgmat checks every
  image against `max_pixels` right after the header is read (as Pillow does),
  so Pillow's limit is raised to ours; it is never lowered."""
  with _PILLOW_LIMIT_LOCK:
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
      Image.MAX_IMAGE_PIXELS = max_pixels


def _open(source: Any, name: str, max_pixels: int) -> tuple[Image.Image, int]:
  """Opens and decodes `source` (a path or a binary file); -> (first frame, frames)."""
  _allow_pillow_up_to(max_pixels)
  try:
    with Image.open(source) as img:
      if img.width * img.height > max_pixels:
        raise ImageReadError(name, 'decompression_bomb',
                             f'{img.width}x{img.height} pixels is over the limit of '
                             f'{max_pixels}')
      frames = int(getattr(img, 'n_frames', 1) or 1)
      img.load()
      # The context manager closes the file; a copy keeps pixels and info.
      return img.copy(), frames
  except ImageReadError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageReadError(name, 'decompression_bomb', str(e)) from e
  except FileNotFoundError as e:
    raise ImageReadError(name, 'missing', 'no such file') from e
  except IsADirectoryError as e:
    raise ImageReadError(name, 'not_an_image', 'a folder, not a file') from e
  except Image.UnidentifiedImageError as e:
    raise ImageReadError(name, 'not_an_image', 'not a known image format') from e
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    raise ImageReadError(name, 'unreadable', f'{type(e).__name__}: {e}') from e


def open_image(path: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
  """Opens and fully decodes `path` (mode and EXIF as stored; the first frame
  of an animation); raises ImageReadError for anything unusable. A URI
  (gs://, s3://, ...) is read through etils.epath (the data builders on Beam)."""
  if '://' in str(path):
    from etils import epath  # pylint: disable=g-import-not-at-top
    try:
      data = epath.Path(path).read_bytes()
    except FileNotFoundError as e:
      raise ImageReadError(str(path), 'missing', 'no such file') from e
    return _open(io.BytesIO(data), str(path), max_pixels)[0]
  return _open(path, str(path), max_pixels)[0]


def describe(error: ImageReadError) -> str:
  """'<file>: <what is wrong>' in words, for messages to people."""
  if error.reason == 'missing':
    return f'{error.file}: no such file'
  if error.reason == 'decompression_bomb':
    return f'{error.file}: {error.detail} (possible decompression bomb)'
  return f'{error.file}: not a readable image ({error.detail})'


@dataclasses.dataclass
class Photo:
  """One input, read.

  Attributes:
    rgb: (H, W, 3) uint8, upright.
    alpha: (H, W) float32 in [0, 1], the input's own transparency; None when
      it has no alpha channel or is fully opaque.
    icc_profile: the RGB ICC profile `rgb` is encoded in; None means sRGB.
    notes: what the reader did that a user should know (first frame used,
      colours converted to sRGB), one sentence each.
    name: the input's name in messages.
  """
  rgb: np.ndarray
  alpha: np.ndarray | None = None
  icc_profile: bytes | None = None
  notes: tuple[str, ...] = ()
  name: str = 'image'


def read_photo(source: Any, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Photo:
  """Reads a path (str / os.PathLike; '-' is stdin), bytes, a binary file, a PIL
  image or a numpy array as a `Photo`, by the rules in the module docstring.

  Raises:
    InputError: naming the input, for anything that cannot be read by its
      real range (see the module docstring).
  """
  if isinstance(source, Image.Image):
    return _from_pil(source, name or 'PIL image', 1, max_pixels)
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if path == '-':
      return read_photo(sys.stdin.buffer.read(), max_pixels, name or '<stdin>')
    name = name or path
    try:
      img, frames = _open(path, name, max_pixels)
    except ImageReadError as e:
      raise InputError(describe(e), e.reason) from e
    return _from_pil(img, name, frames, max_pixels)
  if isinstance(source, (bytes, bytearray, memoryview)):
    if not len(source):
      raise InputError(f'{name or "bytes"}: empty input (0 bytes)', 'empty')
    source = io.BytesIO(bytes(source))
  if hasattr(source, 'read'):
    name = name or getattr(source, 'name', None) or 'file object'
    try:
      img, frames = _open(source, name, max_pixels)
    except ImageReadError as e:
      raise InputError(describe(e), e.reason) from e
    return _from_pil(img, name, frames, max_pixels)
  if isinstance(source, np.ndarray) or hasattr(source, '__array__'):
    return _from_array(np.asarray(source), name or 'array', max_pixels)
  raise InputError(f'{name or "input"}: unsupported input type {type(source).__name__}; '
                   'pass a path, a PIL image or a numpy (H, W, 3) array', 'type')


def _check_size(name: str, height: int, width: int, max_pixels: int) -> None:
  if height * width == 0:
    raise InputError(f'{name}: empty image ({height}x{width} pixels)', 'empty')
  if height * width > max_pixels:
    raise InputError(f'{name}: {width}x{height} pixels is over the limit of {max_pixels} '
                     '(possible decompression bomb)', 'decompression_bomb')


def _to_u8(unit: np.ndarray) -> np.ndarray:
  """[0, 1] floats -> uint8, rounded."""
  return np.round(np.asarray(unit, np.float64) * 255.0).astype(np.uint8)


def _unit_range(values: np.ndarray, name: str, what: str) -> np.ndarray:
  """values of dtype `what` by their real range -> float64 in [0, 1], or InputError."""
  if values.dtype == np.uint8:
    return values / 255.0
  if values.dtype == np.uint16:
    return values / 65535.0
  if values.dtype == np.bool_:
    return values.astype(np.float64)
  if np.issubdtype(values.dtype, np.floating):
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
      raise InputError(f'{name}: {what} has NaN or infinite values', 'range')
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
      raise InputError(
          f'{name}: {what} has values in [{low:g}, {high:g}]; float images are read in '
          '[0, 1] (divide 0-255 values by 255, or pass uint8)', 'range')
    return values
  raise InputError(
      f'{name}: {what} has no defined pixel range; pass uint8 (0-255), uint16 '
      '(0-65535), bool or float in [0, 1] (e.g. array.astype(np.uint8) for 0-255 '
      'values)', 'dtype')


def _from_array(array: np.ndarray, name: str, max_pixels: int) -> Photo:
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
    kind = 'a path string' if array.ndim == 0 and array.dtype.kind in 'US' else 'shape'
    raise InputError(f'{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got '
                     f'{kind} {array.shape}', 'shape')
  _check_size(name, *array.shape[:2], max_pixels)
  unit = _unit_range(array, name, f'a {array.dtype} array')
  channels = array.shape[-1]
  colour = unit[..., :1 if channels < 3 else 3]
  rgb = _to_u8(np.broadcast_to(colour, array.shape[:2] + (3,)))
  alpha = None
  if channels in (2, 4) and unit[..., -1].min() < 1.0:
    alpha = unit[..., -1].astype(np.float32)
  return Photo(np.ascontiguousarray(rgb), alpha, None, (), name)


_SIXTEEN_BIT = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def _icc_space(profile: bytes) -> bytes:
  """The ICC header's data colour space (bytes 16-19: b'RGB ', b'GRAY', b'CMYK', ...)."""
  return bytes(profile[16:20]) if len(profile) >= 20 else b''


def _to_srgb(img: Image.Image, profile: bytes | None) -> Image.Image:
  """img (mode L, CMYK, LAB, ...) in `profile` (None: CIE Lab) -> RGB in sRGB
  (littleCMS, perceptual intent); raises ImageCms.PyCMSError, OSError, ValueError."""
  from PIL import ImageCms  # pylint: disable=g-import-not-at-top
  source = (ImageCms.ImageCmsProfile(io.BytesIO(profile)) if profile
            else ImageCms.createProfile('LAB'))
  return ImageCms.profileToProfile(img, source, ImageCms.createProfile('sRGB'),
                                   outputMode='RGB')


def _split_alpha(img: Image.Image) -> tuple[Image.Image, np.ndarray | None]:
  """-> (the colour bands without alpha, straight (H, W) float32 alpha or None)."""
  mode = img.mode
  if mode == 'P' and 'transparency' in img.info:
    img, mode = img.convert('RGBA'), 'RGBA'
  if mode in ('LA', 'La'):
    straight = img.convert('LA') if mode == 'La' else img
    return straight.convert('L'), _alpha_of(straight)
  if mode in ('RGBA', 'RGBa', 'PA'):
    straight = img.convert('RGBA')
    return straight.convert('RGB'), _alpha_of(straight)
  return img, None


def _from_pil(img: Image.Image, name: str, frames: int, max_pixels: int) -> Photo:
  notes = []
  if frames > 1:
    kind = 'frames (animated)' if getattr(img, 'is_animated', True) else 'pages'
    notes.append(f'{frames} {kind}: the first is used')
  _check_size(name, img.height, img.width, max_pixels)
  try:
    upright = ImageOps.exif_transpose(img)
    img = upright if upright is not None else img
  except (OSError, ValueError, SyntaxError, KeyError, TypeError) as e:
    notes.append(f'EXIF orientation unreadable ({type(e).__name__}); used as stored')
  profile = img.info.get('icc_profile') or None
  mode = img.mode
  if mode in _SIXTEEN_BIT or mode in ('I', 'F'):
    if profile is not None and _icc_space(profile) != b'RGB ':
      notes.append('its ICC profile is not applied to high-bit-depth grey; values read '
                   'as sRGB')
    return Photo(_grey_high_bit_depth(img, name), None,
                 profile if profile and _icc_space(profile) == b'RGB ' else None,
                 tuple(notes), name)
  try:
    colour, alpha = _split_alpha(img)
    if mode == 'LAB':
      rgb = _to_srgb(colour, None)
      notes.append('converted from Lab to sRGB')
      profile = None
    elif profile is not None and _icc_space(profile) != b'RGB ':
      # A grey / CMYK profile cannot describe RGB output pixels: convert.
      space = _icc_space(profile).decode('latin-1').strip() or 'unknown'
      try:
        rgb = _to_srgb(colour.convert('RGB') if colour.mode == 'P' else colour, profile)
        notes.append(f'converted from its {space} ICC profile to sRGB')
      except Exception as e:  # pylint: disable=broad-except  # ImageCms.PyCMSError et al.
        rgb = colour.convert('RGB')
        notes.append(f'its {space} ICC profile does not fit mode {colour.mode} '
                     f'({type(e).__name__}); colours read as sRGB')
      profile = None
    else:
      if mode == 'CMYK':
        notes.append('CMYK without an ICC profile: converted to RGB without colour '
                     'management')
      rgb = colour.convert('RGB')
    array = np.asarray(rgb, np.uint8).copy()
  except (ValueError, OSError) as e:
    raise InputError(f'{name}: pixel mode {mode} cannot be read as RGB ({e})', 'mode') from e
  return Photo(array, alpha, profile, tuple(notes), name)


def _grey_high_bit_depth(img: Image.Image, name: str) -> np.ndarray:
  """(H, W, 3) uint8 of a mode I;16*, I or F image, by its real range."""
  if img.mode == 'F':
    unit = _unit_range(np.asarray(img, np.float32), name, '32-bit float pixel data')
  elif img.mode == 'I':
    bits, fmt = _int_layout(img)
    if not (bits == 16 and fmt == 1):
      raise InputError(f'{name}: {bits or 32}-bit integer pixels have no defined black and '
                       'white level; save as 8- or 16-bit, or as float in [0, 1]', 'mode')
    unit = np.clip(np.asarray(img, np.int64), 0, 65535) / 65535.0
  else:
    unit = np.asarray(img).astype(np.uint16) / 65535.0
  return _to_u8(np.repeat(unit[..., None], 3, -1))


def _alpha_of(img: Image.Image) -> np.ndarray | None:
  alpha = np.asarray(img.getchannel('A'), np.float32) / 255.0
  return alpha if alpha.min() < 1.0 else None


def _int_layout(img: Image.Image) -> tuple[int | None, int | None]:
  """(bits per sample, TIFF sample format 1=uint 2=int 3=float) of a mode-I image."""
  if img.format == 'PNG':
    return 16, 1  # PNG integers are unsigned, at most 16 bits.
  tags = getattr(img, 'tag_v2', None)
  if tags is None:
    return None, None
  bits = tags.get(258, (None,))
  fmt = tags.get(339, (1,))
  bits = bits[0] if isinstance(bits, tuple) else bits
  fmt = fmt[0] if isinstance(fmt, tuple) else fmt
  return bits, fmt
