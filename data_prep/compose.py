"""Decoding untrusted matting files, foreground estimation, compositing, encoding.

The per-source work of the real-data builders (`matting_sets.py`), run in worker
processes: `make_records(task)` turns one source (a natural photo + alpha, or a
foreground + alpha to composite onto N backgrounds) into encoded TFDS records and
report lines. It is a pure function of the task and the worker's settings, with
every random choice drawn from (seed, split, index), so any number of processes
gives byte-identical records.

Image modes are normalised with a report line each: grayscale, palette, CMYK,
16-bit and RGBA images become 8-bit RGB; EXIF orientation is applied (unless the
alpha matches only the stored orientation); alphas become (H, W) uint8.
Unreadable, truncated, non-image and over-large (decompression bomb) files raise
`BadInput`, which the caller turns into a 'skipped' report line.
"""

import dataclasses
import io
import os
import time
from typing import Any
import zlib

import numpy as np
from PIL import Image
from PIL import ImageOps

from bgmat.inference import image_io
from data_prep import synthetic

# Larger images are refused as possible decompression bombs (as bgmat.inference.remover).
MAX_PIXELS = image_io.MAX_PIXELS
# An alpha of another size is resized onto its image only if their aspect
# ratios agree this closely (the same picture at another resolution).
ASPECT_TOLERANCE = 0.01
FG_METHODS = ('multilevel', 'none')
BG_POLICIES = ('cover', 'stretch')
ALPHA_MISMATCH = ('resize', 'skip')
_EXIF_ORIENTATION = 0x0112


# A file that cannot be used; `reason` is a short code for the report.
BadInput = image_io.ImageReadError


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything the per-source work depends on (all of it changes the data)."""
  seed: int = 0
  image_format: str = 'jpeg'  # image, fg, bg; alpha is always png
  jpeg_quality: int = 95
  max_side: int = 0  # 0: keep the source size; else downscale the long side to it
  alpha_mismatch: str = 'resize'
  bg_policy: str = 'cover'
  fg_method: str = 'multilevel'
  max_pixels: int = MAX_PIXELS
  num_bg: tuple[tuple[str, int], ...] = ()  # (split, backgrounds per foreground)
  measure_quality: bool = False
  # 'autolabel' sources: data_prep.autolabel's band and solve size (0: record size).
  trimap_fraction: float = 0.05  # autolabel.DEFAULT_TRIMAP_FRACTION
  label_max_side: int = 0


@dataclasses.dataclass(frozen=True)
class Source:
  """One input: `kind` 'natural' (image = photo), 'compose' (image = foreground)
  or 'autolabel' (image = photo, alpha = its coarse binary mask)."""
  id: str
  kind: str
  image: str
  alpha: str


# ---------------------------------------------------------------------------
# Decoding.
# ---------------------------------------------------------------------------


def open_image(path: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
  """Opens and fully decodes `path`; raises BadInput for anything unusable."""
  return image_io.open_image(path, max_pixels)


def _orientation(img: Image.Image) -> int:
  try:
    return int(img.getexif().get(_EXIF_ORIENTATION, 1))
  except Exception:  # pylint: disable=broad-except  # malformed EXIF: ignore it
    return 1


def _upright(img: Image.Image) -> Image.Image:
  return ImageOps.exif_transpose(img) if _orientation(img) not in (0, 1) else img


def to_rgb(img: Image.Image, path: str, notes: list) -> np.ndarray:
  """8-bit (H, W, 3) RGB of any PIL mode; each conversion appends a note."""
  mode = img.mode
  if mode == 'RGB':
    return np.asarray(img)
  if mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    scaled = np.clip(np.asarray(img, np.float64) / 257.0, 0, 255)
    img = Image.fromarray(np.rint(scaled).astype(np.uint8))
    notes.append(_note(path, '16bit', f'{mode} scaled to 8 bits, as grayscale'))
    return np.asarray(img.convert('RGB'))
  reason = {'L': 'grayscale', '1': 'grayscale', 'LA': 'grayscale', 'P': 'palette',
            'PA': 'palette', 'CMYK': 'cmyk', 'RGBA': 'rgba', 'RGBX': 'rgba',
            'YCbCr': 'colour_space', 'LAB': 'colour_space', 'HSV': 'colour_space'}.get(mode)
  if reason is None:
    raise BadInput(path, 'unsupported_mode', f'image mode {mode}')
  notes.append(_note(path, reason, f'{mode} converted to RGB'
                     + (' (alpha channel dropped)' if 'A' in mode else '')))
  return np.asarray(img.convert('RGB'))


def to_alpha(img: Image.Image, path: str, notes: list) -> np.ndarray:
  """(H, W) uint8 matte of any PIL mode: grey levels, or the A channel of an
  image whose colour is constant."""
  mode = img.mode
  if mode == 'L':
    return np.asarray(img)
  if mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    notes.append(_note(path, '16bit', f'{mode} alpha scaled to 8 bits'))
    return np.rint(np.clip(np.asarray(img, np.float64) / 257.0, 0, 255)).astype(np.uint8)
  if mode in ('LA', 'RGBA', 'PA') or (mode == 'P' and 'transparency' in img.info):
    rgba = np.asarray(img.convert('RGBA'))
    if np.ptp(rgba[..., :3]) == 0 and np.ptp(rgba[..., 3]) > 0:
      notes.append(_note(path, 'alpha_channel', f'{mode} matte read from its A channel'))
      return np.ascontiguousarray(rgba[..., 3])
    img = img.convert('RGB')
  if mode == '1':
    return np.asarray(img.convert('L'))
  rgb = np.asarray(img.convert('RGB'))
  if mode != 'RGB':
    notes.append(_note(path, 'alpha_mode', f'{mode} matte converted to grey levels'))
  if (rgb == rgb[..., :1]).all():
    return np.ascontiguousarray(rgb[..., 0])
  notes.append(_note(path, 'alpha_colour', 'colour matte converted to luma'))
  return np.asarray(Image.fromarray(rgb).convert('L'))


def _note(path: str, reason: str, detail: str, action: str = 'converted') -> dict:
  return {'file': str(path), 'reason': reason, 'detail': detail, 'action': action}


def load_pair(source: Source, settings: Settings) -> tuple[np.ndarray, np.ndarray, list]:
  """(rgb (H, W, 3), alpha (H, W)) uint8 of a source, and its report notes."""
  notes = []
  image = open_image(source.image, settings.max_pixels)
  matte = open_image(source.alpha, settings.max_pixels)
  upright_image, upright_matte = _upright(image), _upright(matte)
  if upright_image is not image:
    if upright_image.size == upright_matte.size:
      notes.append(_note(source.image, 'exif_rotated',
                         f'EXIF orientation {_orientation(image)} applied'))
    elif image.size == upright_matte.size:
      # The matte was drawn on the stored pixels: keep them as stored.
      notes.append(_note(source.image, 'exif_ignored',
                         f'EXIF orientation {_orientation(image)} not applied: the alpha '
                         'matches the stored orientation'))
      upright_image = image
  if upright_matte is not matte:
    notes.append(_note(source.alpha, 'exif_rotated',
                       f'EXIF orientation {_orientation(matte)} applied'))
  rgb = to_rgb(upright_image, source.image, notes)
  alpha = to_alpha(upright_matte, source.alpha, notes)
  if alpha.shape != rgb.shape[:2]:
    alpha = _fit_alpha(alpha, rgb.shape[:2], source, settings, notes)
  return rgb, alpha, notes


def _fit_alpha(alpha, size, source, settings, notes):
  (height, width), (alpha_h, alpha_w) = size, alpha.shape
  detail = f'alpha {alpha_w}x{alpha_h}, image {width}x{height}'
  same_aspect = abs(np.log((alpha_w / alpha_h) / (width / height))) < ASPECT_TOLERANCE
  if settings.alpha_mismatch == 'resize' and same_aspect:
    notes.append(_note(source.alpha, 'alpha_resized', detail + ': alpha resized'))
    return np.asarray(Image.fromarray(alpha).resize((width, height), Image.BILINEAR))
  raise BadInput(source.alpha, 'alpha_size_mismatch', detail)


# ---------------------------------------------------------------------------
# Size policy, foreground estimation, compositing, encoding.
# ---------------------------------------------------------------------------


def limit_size(rgb: np.ndarray, alpha: np.ndarray, max_side: int):
  """Downscales (Lanczos) so the long side is at most `max_side` (0: unchanged)."""
  height, width = alpha.shape
  if not max_side or max(height, width) <= max_side:
    return rgb, alpha
  scale = max_side / max(height, width)
  new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return (np.asarray(Image.fromarray(rgb).resize(new_size, Image.LANCZOS)),
          np.asarray(Image.fromarray(alpha).resize(new_size, Image.LANCZOS)))


def estimate_fg_bg(rgb: np.ndarray, alpha: np.ndarray, method: str = 'multilevel'):
  """Foreground and background colours (H, W, 3) uint8 of a photo and its matte.

  'multilevel' is pymatting's multi-level estimator (Germer et al. 2020, as
  `bgmat.foreground`), which also gives the background; 'none' returns the
  photo for both (edge pixels then keep the old background's colour).
  """
  if method == 'none':
    return rgb, rgb
  if method != 'multilevel':
    raise ValueError(f'Unknown fg_method {method!r}; known: {FG_METHODS}')
  from pymatting import estimate_foreground_ml  # pylint: disable=g-import-not-at-top
  fg, bg = estimate_foreground_ml(rgb.astype(np.float64) / 255.0,
                                  alpha.astype(np.float64) / 255.0,
                                  return_background=True)
  def to_u8(x):
    return np.clip(np.rint(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)
  return to_u8(fg), to_u8(bg)


def fit_background(bg: np.ndarray, height: int, width: int, policy: str,
                   rng: np.random.Generator) -> np.ndarray:
  """A (height, width, 3) background: 'cover' scales it to cover the size
  (keeping its aspect) and takes a random crop; 'stretch' resizes it to fit."""
  if policy == 'stretch':
    return np.asarray(Image.fromarray(bg).resize((width, height), Image.BICUBIC))
  if policy != 'cover':
    raise ValueError(f'Unknown bg_policy {policy!r}; known: {BG_POLICIES}')
  scale = max(height / bg.shape[0], width / bg.shape[1])
  new_h = max(height, round(bg.shape[0] * scale))
  new_w = max(width, round(bg.shape[1] * scale))
  if (new_h, new_w) != bg.shape[:2]:
    bg = np.asarray(Image.fromarray(bg).resize((new_w, new_h), Image.BICUBIC))
  top = int(rng.integers(new_h - height + 1))
  left = int(rng.integers(new_w - width + 1))
  return bg[top:top + height, left:left + width]


def encode(array: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
  """PIL-encodes uint8 (H, W, 3) or (H, W) to jpeg (4:4:4) or png bytes."""
  buffer = io.BytesIO()
  if image_format == 'jpeg':
    # 4:4:4 chroma keeps colour edges sharp at the matte boundary.
    Image.fromarray(array).save(buffer, format='JPEG', quality=jpeg_quality, subsampling=0)
  elif image_format == 'png':
    Image.fromarray(array).save(buffer, format='PNG', compress_level=3)
  else:
    raise ValueError(f'Unknown image format {image_format!r}')
  return buffer.getvalue()


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of source `index` of `split`: independent of processing order."""
  return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


# ---------------------------------------------------------------------------
# Per-source work (runs in worker processes).
# ---------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def init_worker(settings: Settings, backgrounds: dict[str, list[str]]) -> None:
  """Pool initializer: the settings and background lists every task reads."""
  _WORKER['settings'] = settings
  _WORKER['backgrounds'] = backgrounds


def _load_background(paths: list[str], first: int, settings: Settings, notes: list):
  """The first usable background at or after `first` (cyclically), as RGB."""
  for offset in range(len(paths)):
    path = paths[(first + offset) % len(paths)]
    try:
      image = open_image(path, settings.max_pixels)
      return path, to_rgb(_upright(image), path, notes)
    except BadInput as e:
      notes.append(_note(e.file, e.reason, e.detail + ' (background)', action='skipped'))
  raise BadInput(paths[first], 'no_background', 'no background file could be read')


def make_records(task: tuple[str, int, Source]) -> dict[str, Any]:
  """`records_of` with the settings and backgrounds of `init_worker` (process pools)."""
  return records_of(task, _WORKER['settings'], _WORKER['backgrounds'])


def records_of(task: tuple[str, int, Source], settings: Settings,
               backgrounds: dict[str, list[str]]) -> dict[str, Any]:
  """Encoded records, report notes and quality stats of one source.

  Args:
    task: (split, index of the source in its split, source).
    settings: the build's settings.
    backgrounds: split -> background paths (compositing layouts).
  Returns:
    {'records': [dict(image, alpha, fg, bg: bytes, name: str)], 'notes': [report
    entries], 'stats': quality.measure(...) or None, 'error': report entry or None};
    'autolabel' sources also give 'label_seconds' (the closed-form solve, float).
  """
  split, index, source = task
  notes: list[dict] = []
  if source.kind == 'autolabel':
    return _autolabel_records(split, index, source, settings, backgrounds.get(split, []))
  try:
    rgb, alpha, notes = load_pair(source, settings)
    rgb, alpha = limit_size(rgb, alpha, settings.max_side)
    stats = None
    if settings.measure_quality:
      from data_prep import quality  # pylint: disable=g-import-not-at-top
      stats = quality.measure(rgb, alpha)
    fg, bg = estimate_fg_bg(rgb, alpha, settings.fg_method)
    fmt, quality_level = settings.image_format, settings.jpeg_quality
    alpha_png = encode(alpha, 'png')
    if source.kind == 'natural':
      records = [{'image': encode(rgb, fmt, quality_level), 'alpha': alpha_png,
                  'fg': encode(fg, fmt, quality_level), 'bg': encode(bg, fmt, quality_level),
                  'name': source.id}]
    else:
      records = _composites(split, index, source, fg, alpha, alpha_png, settings,
                            backgrounds.get(split, []), notes)
    return {'records': records, 'notes': notes, 'stats': stats, 'error': None}
  except BadInput as e:
    return {'records': [], 'notes': notes, 'stats': None,
            'error': _note(e.file, e.reason, e.detail, action='skipped')}


def _composites(split, index, source, fg, alpha, alpha_png, settings, paths, notes):
  """N composites of one estimated foreground onto backgrounds chosen by seed."""
  num_bg = dict(settings.num_bg).get(split, 1)
  if not paths:
    raise BadInput(source.image, 'no_background', f'no background files for split {split!r}')
  rng = example_rng(settings.seed, split, index)
  firsts = rng.choice(len(paths), size=num_bg, replace=num_bg > len(paths))
  height, width = alpha.shape
  fmt, quality_level = settings.image_format, settings.jpeg_quality
  fg_bytes = encode(fg, fmt, quality_level)
  records = []
  for k, first in enumerate(firsts):
    path, bg = _load_background(paths, int(first), settings, notes)
    bg = fit_background(bg, height, width, settings.bg_policy, rng)
    # Rounded fg and bg make the stored image exactly their composite.
    image = synthetic.composite(fg, alpha, bg)
    records.append({
        'image': encode(image, fmt, quality_level), 'alpha': alpha_png, 'fg': fg_bytes,
        'bg': encode(np.ascontiguousarray(bg), fmt, quality_level),
        'name': f'{source.id}@{k:03d}_{os.path.splitext(os.path.basename(path))[0]}'})
  return records


def _autolabel_records(split, index, source, settings, paths) -> dict[str, Any]:
  """`make_records` of a photo with a coarse mask (layout 'autolabel').

  1. Quality statistics (data_prep.quality.measure) of the photo at its source
     size, the mask as its matte (so min_side is the photo's resolution).
  2. Downscale photo and mask to `max_side` (Lanczos), threshold the mask at 128.
  3. data_prep.autolabel.label_alpha: trimap band of `trimap_fraction` of the
     short side, closed-form alpha (solved at `label_max_side`, 0 = this size),
     confidence; the confidence parts join the statistics, so the quality
     filter's min_confidence applies.
  4. fg and bg colours: pymatting's multi-level estimator (`estimate_fg_bg`).
  5. Records: the photo itself (image = photo, alpha = label, fg, bg estimated;
     name = id), then `num_bg` composites of fg onto backgrounds of this split
     (names `<id>@<k>_<background stem>`).
  A mask with no certain foreground or background is a 'dropped' line (reason
  'autolabel').
  """
  from data_prep import autolabel  # pylint: disable=g-import-not-at-top
  from data_prep import quality  # pylint: disable=g-import-not-at-top
  notes: list[dict] = []
  try:
    rgb, mask, notes = load_pair(source, settings)
    stats = quality.measure(rgb, mask) if settings.measure_quality else None
    rgb, mask = limit_size(rgb, mask, settings.max_side)
    start = time.perf_counter()
    try:
      label = autolabel.label_alpha(rgb, mask, settings.trimap_fraction,
                                    settings.label_max_side or max(mask.shape),
                                    binarize=True)
    except autolabel.LabelError as e:
      return {'records': [], 'notes': notes, 'stats': stats,
              'error': _note(source.alpha, 'autolabel', str(e), action='dropped'),
              'label_seconds': time.perf_counter() - start}
    label_seconds = time.perf_counter() - start
    if stats is not None:
      stats.update({k: label[k] for k in ('confidence', 'edge', 'decisive', 'band',
                                          'unknown_fraction')})
    alpha = np.round(label['alpha'] * 255).astype(np.uint8)
    fg, bg = estimate_fg_bg(rgb, alpha, settings.fg_method)
    fmt, quality_level = settings.image_format, settings.jpeg_quality
    alpha_png = encode(alpha, 'png')
    records = [{'image': encode(rgb, fmt, quality_level), 'alpha': alpha_png,
                'fg': encode(fg, fmt, quality_level), 'bg': encode(bg, fmt, quality_level),
                'name': source.id}]
    records += _composites(split, index, source, fg, alpha, alpha_png, settings, paths, notes)
    return {'records': records, 'notes': notes, 'stats': stats, 'error': None,
            'label_seconds': label_seconds}
  except BadInput as e:
    return {'records': [], 'notes': notes, 'stats': None,
            'error': _note(e.file, e.reason, e.detail, action='skipped')}
