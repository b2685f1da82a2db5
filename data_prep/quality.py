r"""Quality filter for training portraits: resolution, sharpness, coverage, exposure, duplicates.

  python -m data_prep.quality --images DIR [--alphas DIR] --report FILE \
      [--workers N --min_side 512 --min_sharpness 20 ... (every `Thresholds` field is a flag)]

`measure` computes cheap per-image statistics (pure, safe in worker
processes); `QualityFilter.decide` turns them into a drop reason or None. The
filter is stateful (it remembers kept images' perceptual hashes), so call it
in a deterministic order. The CLI writes one JSON line per dropped file
(`{"file", "reason", "stats"}`) and a final summary line
(`{"summary": {"total", "kept", "dropped", "by_reason"}}`).

Statistics (`measure`):
  * sharpness: variance of the Laplacian of the luma (0..255) after resizing
    the short side to ANALYSIS_SIDE, so it does not depend on the photo's
    resolution. With an alpha only foreground pixels (alpha >= 0.5) count: a
    portrait with a deliberately blurred background is still sharp.
  * coverage: mean alpha in [0, 1] (None without an alpha).
  * mean_luma in [0, 1]; clipped_dark / clipped_bright: fractions of pixels
    whose luma is <= CLIP_DARK or >= CLIP_BRIGHT (crushed shadows, blown
    highlights).
  * phash: 64-bit DCT perceptual hash (as imagehash.phash: 32x32 luma, 2-D
    DCT-II, the 8x8 lowest frequencies, bit = coefficient > their median), an
    int whose bit 63 is the top-left coefficient.
"""

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import scipy.fft
import scipy.ndimage as ndi

from bgmat import atomic
from bgmat.inference import image_io

ANALYSIS_SIDE = 256
CLIP_DARK = 2
CLIP_BRIGHT = 253
_HASH_SIZE = 8
_HASH_INPUT = 32


def _luma(image: np.ndarray) -> np.ndarray:
  """(H, W, 3) uint8 -> (H, W) float32 luma in [0, 255] (ITU-R BT.601 weights)."""
  return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
  """(H, W) float32 -> (height, width) float32: area average when shrinking (a
  photo and its 2x box-downscaled copy then analyse alike), bilinear when growing."""
  shrink = height * width < array.shape[0] * array.shape[1]
  return np.asarray(Image.fromarray(array, mode='F').resize(
      (width, height), Image.BOX if shrink else Image.BILINEAR))


def phash(luma: np.ndarray) -> int:
  """64-bit DCT perceptual hash of a (H, W) luma image (see the module docstring)."""
  small = _resize(np.asarray(luma, np.float32), _HASH_INPUT, _HASH_INPUT)
  low = scipy.fft.dctn(small.astype(np.float64), type=2)[:_HASH_SIZE, :_HASH_SIZE]
  bits = (low > np.median(low)).ravel()
  return int(''.join('1' if b else '0' for b in bits), 2)


def hamming(hash_a: int, hash_b: int) -> int:
  return (hash_a ^ hash_b).bit_count()


def measure(image: np.ndarray, alpha: np.ndarray | None = None) -> dict:
  """Statistics of one photo. image (H, W, 3) uint8, alpha (H, W) uint8 or None.

  Returns a JSON-serialisable dict: height, width, sharpness, coverage (None
  without alpha), mean_luma, clipped_dark, clipped_bright, phash.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f'image must be (H, W, 3) uint8, got {image.shape} {image.dtype}')
  height, width = image.shape[:2]
  if alpha is not None:
    alpha = np.asarray(alpha)
    if alpha.shape != (height, width):
      raise ValueError(f'alpha shape {alpha.shape} != image shape {(height, width)}')
  luma = _luma(image)
  scale = ANALYSIS_SIDE / min(height, width)
  small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
  laplacian = ndi.laplace(_resize(luma, small_h, small_w), mode='reflect')
  region = None
  if alpha is not None:
    region = _resize(alpha.astype(np.float32), small_h, small_w) >= 127.5
    if region.sum() < 16:  # Too little foreground to measure: use the whole image.
      region = None
  sharpness = laplacian[region].var() if region is not None else laplacian.var()
  return {
      'height': int(height),
      'width': int(width),
      'sharpness': float(sharpness),
      'coverage': None if alpha is None else float(alpha.mean() / 255.0),
      'mean_luma': float(luma.mean() / 255.0),
      'clipped_dark': float((luma <= CLIP_DARK).mean()),
      'clipped_bright': float((luma >= CLIP_BRIGHT).mean()),
      'phash': phash(luma),
  }


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """Limits of `QualityFilter`; an image outside any of them is dropped.

  Defaults and why:
    min_side 512: the full configs train on 512 px crops; a smaller photo
      would be upsampled, teaching blur.
    min_sharpness 20: measured at ANALYSIS_SIDE on 15 bundled scikit-image
      photos (2-core CPU box, see readme): sharp originals 1.7..2482 (median
      320; smooth content such as `cell`, `clock`, `colorwheel` scores < 10),
      the same photos Gaussian-blurred with sigma 2 px at that size 0.4..16.9.
      The score depends on content: calibrate it on your own photos.
    min_coverage 0.05 / max_coverage 0.95: a portrait needs a subject and some
      background; a subject filling the whole frame teaches nothing about edges.
    min_mean_luma 0.1 / max_mean_luma 0.9: badly under- or over-exposed.
    max_clipped 0.2: more than this fraction of crushed-black or blown-white
      pixels (each counted alone) has lost the detail the matte must follow.
    max_phash_distance 8: measured on the same photos: JPEG q=50 or a resize
      to half size moves a hash by <= 2 bits of 64, a 3% crop by 0..16 (<= 8
      for 8 of 15); distinct photos differ by >= 20 (median 32) and 1770 pairs
      of distinct synthetic portraits (one shared layout) by >= 10. 0 disables
      the duplicate check.
    min_confidence 0.75: autolabel confidence (`data_prep.autolabel`) below
      which a label is dropped; ignored for stats without 'confidence'.
      Placed on the 27 alphamatting.com photos with true alpha at 320 px, band
      0.05 (`autolabel --eval_alphamatting`, 2 masks per photo; see readme):
      labels from segmenter-like masks score 0.798 to 0.97 (0 of 54 below
      0.75), from the same masks shifted by 15 % of the width 0.62 to 0.821
      (45 of 54 below 0.75; 0.8 would drop 52 wrong and 1 good). The score
      grows with the band (trimap_fraction) and the photo size; re-place it
      when those change. (It was first set on synthetic test-split portraits.)
  """
  min_side: int = 512
  min_sharpness: float = 20.0
  min_coverage: float = 0.05
  max_coverage: float = 0.95
  min_mean_luma: float = 0.1
  max_mean_luma: float = 0.9
  max_clipped: float = 0.2
  max_phash_distance: int = 8
  min_confidence: float = 0.75


class QualityFilter:
  """Decides, image by image, whether to keep it; remembers kept images' hashes."""

  def __init__(self, thresholds: Thresholds):
    self.thresholds = thresholds
    self._kept_keys: list[str] = []
    self._kept_hashes = np.zeros((0,), np.uint64)

  def _check(self, stats: dict) -> str | None:
    t = self.thresholds
    side = min(stats['height'], stats['width'])
    if side < t.min_side:
      return f'resolution: short side {side} px < min_side {t.min_side}'
    # Exposure before sharpness: a dark photo also has little contrast, and
    # 'blurry' would be the wrong reason.
    if stats['mean_luma'] < t.min_mean_luma:
      return f'exposure: mean luma {stats["mean_luma"]:.3f} < min_mean_luma {t.min_mean_luma:g}'
    if stats['mean_luma'] > t.max_mean_luma:
      return f'exposure: mean luma {stats["mean_luma"]:.3f} > max_mean_luma {t.max_mean_luma:g}'
    for name in ('clipped_dark', 'clipped_bright'):
      if stats[name] > t.max_clipped:
        return f'exposure: {name} {stats[name]:.3f} > max_clipped {t.max_clipped:g}'
    if stats['sharpness'] < t.min_sharpness:
      return f'sharpness: {stats["sharpness"]:.1f} < min_sharpness {t.min_sharpness:g}'
    coverage = stats.get('coverage')
    if coverage is not None and coverage < t.min_coverage:
      return f'coverage: {coverage:.3f} < min_coverage {t.min_coverage:g}'
    if coverage is not None and coverage > t.max_coverage:
      return f'coverage: {coverage:.3f} > max_coverage {t.max_coverage:g}'
    confidence = stats.get('confidence')
    if confidence is not None and confidence < t.min_confidence:
      return f'confidence: {confidence:.3f} < min_confidence {t.min_confidence:g}'
    return None

  def decide(self, key: str, stats: dict) -> str | None:
    """Drop reason ('<check>: <value> <op> <threshold>') or None to keep.

    A near-duplicate names the closest kept image (the earliest on ties). Only
    kept images enter the hash index, so a dropped blurry copy never causes
    a later sharp one to be dropped.
    """
    reason = self._check(stats)
    if reason is not None:
      return reason
    image_hash = np.uint64(stats['phash'])
    limit = self.thresholds.max_phash_distance
    if limit > 0 and self._kept_hashes.size:
      # Vectorised popcount: linear in the kept set, fast enough for 1e5 images.
      distances = np.bitwise_count(self._kept_hashes ^ image_hash)
      closest = int(np.argmin(distances))
      if distances[closest] <= limit:
        return (f'duplicate: phash distance {int(distances[closest])} <= max_phash_distance '
                f'{limit} to {self._kept_keys[closest]}')
    self._kept_keys.append(key)
    self._kept_hashes = np.append(self._kept_hashes, image_hash)
    return None


def reason_category(reason: str) -> str:
  """'sharpness: 3.1 < ...' -> 'sharpness' (for summaries)."""
  return reason.split(':', 1)[0]


def define_flags() -> None:
  """absl flags, one per `Thresholds` field (idempotent; only CLIs call it)."""
  defaults = Thresholds()
  for field in dataclasses.fields(Thresholds):
    if field.name in flags.FLAGS:
      continue
    default = getattr(defaults, field.name)
    help_text = f'Quality filter threshold {field.name} (see data_prep.quality.Thresholds).'
    if field.type is int or field.type == 'int':
      flags.DEFINE_integer(field.name, default, help_text)
    else:
      flags.DEFINE_float(field.name, default, help_text)


def thresholds_from_flags() -> Thresholds:
  return Thresholds(**{f.name: getattr(flags.FLAGS, f.name)
                       for f in dataclasses.fields(Thresholds)})


# ---------------------------------------------------------------------------
# Files: photo listing, mattes by stem (also used by data_prep.autolabel).
# ---------------------------------------------------------------------------

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.tif', '.tiff', '.gif')
# Mattes above this many pixels are refused (as bgmat.inference.remover.MAX_PIXELS for photos).
MAX_PIXELS = image_io.MAX_PIXELS


def stem_of(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def list_images(folder: str) -> list[str]:
  """Image files directly in `folder` (no subfolders, no hidden files), sorted by
  name; `folder` may be a URI (data_prep.fileio)."""
  from data_prep import fileio  # pylint: disable=g-import-not-at-top
  return [fileio.join(folder, name) for name in sorted(fileio.listdir(folder))
          if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.')
          and fileio.isfile(fileio.join(folder, name))]


def index_by_stem(folder: str) -> dict[str, str]:
  """{stem: path} of the images in `folder`; on clashes the first extension of
  IMAGE_EXTENSIONS wins (PNG before JPEG: lossless mattes first)."""
  index = {}
  rank = lambda path: IMAGE_EXTENSIONS.index(os.path.splitext(path)[1].lower())
  for path in sorted(list_images(folder), key=rank):
    index.setdefault(stem_of(path), path)
  return index


def load_mask(path: str, shape: tuple[int, int] | None = None) -> np.ndarray:
  """Reads a matte or mask as (H, W) uint8: greyscale as is (16-bit scaled), the
  alpha channel of an image with one (an RGBA cut-out), else the luma of RGB.

  Raises ValueError naming the file when it is unreadable, too large, or not
  of `shape` (H, W).
  """
  try:
    img = image_io.open_image(path, MAX_PIXELS)
  except image_io.ImageReadError as e:
    raise ValueError(image_io.describe(e)) from e
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    values = np.asarray(img, np.float64)
    # 16-bit mattes span 0..65535; float (TIFF) mattes 0..1 or 0..255.
    scale = (1 / 257.0 if img.mode != 'F' else 255.0 if values.max() <= 1.0 else 1.0)
    mask = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
  elif img.mode in ('RGBA', 'LA', 'PA') or 'transparency' in img.info:
    mask = np.asarray(img.convert('RGBA'))[..., 3]
  else:
    mask = np.asarray(img.convert('L'))
  if shape is not None and mask.shape != tuple(shape):
    raise ValueError(f'{path}: mask is {mask.shape[1]}x{mask.shape[0]} but the photo is '
                     f'{shape[1]}x{shape[0]} (width x height)')
  return mask


# ---------------------------------------------------------------------------
# CLI: scan a folder, write the JSON-lines report of dropped files.
# ---------------------------------------------------------------------------


def _measure_file(image_path: str, alpha_path: str | None,
                  with_alpha: bool) -> tuple[dict | None, str | None]:
  """(stats, None) or (None, error); runs in worker processes."""
  from bgmat.inference import remover  # pylint: disable=g-import-not-at-top
  try:
    image = remover.load_image(image_path)
    alpha = None
    if with_alpha:
      if alpha_path is None:
        return None, 'unreadable: no matte with this stem in --alphas'
      alpha = load_mask(alpha_path, image.shape[:2])
  except ValueError as e:  # remover.InputError is a ValueError; both name the file.
    return None, f'unreadable: {e}'
  return measure(image, alpha), None


def scan(images_dir: str, alphas_dir: str | None, thresholds: Thresholds,
         workers: int = 1) -> tuple[list[dict], dict]:
  """Measures and filters every image of a folder in name order.

  Returns (dropped records {'file', 'reason', 'stats'}, summary dict).
  """
  paths = list_images(images_dir)
  alphas = index_by_stem(alphas_dir) if alphas_dir else {}
  args = (list(paths), [alphas.get(stem_of(p)) for p in paths],
          [alphas_dir is not None] * len(paths))
  quality_filter = QualityFilter(thresholds)
  dropped, counts = [], {}
  pool = None
  if workers > 1:
    # Spawned workers: forking a process that may hold JAX's threads can deadlock.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('spawn'))
  try:
    # map keeps the input order, so dedup decisions do not depend on `workers`.
    results = (pool.map(_measure_file, *args, chunksize=8) if pool
               else map(_measure_file, *args))
    for path, (stats, error) in zip(paths, results):
      name = os.path.basename(path)
      reason = error or quality_filter.decide(name, stats)
      if reason is not None:
        dropped.append({'file': name, 'reason': reason, 'stats': stats})
        category = reason_category(reason)
        counts[category] = counts.get(category, 0) + 1
  finally:
    if pool:
      pool.shutdown()
  summary = {'total': len(paths), 'kept': len(paths) - len(dropped), 'dropped': len(dropped),
             'by_reason': dict(sorted(counts.items()))}
  return dropped, summary


def write_jsonl_atomic(records: list[dict], path: str) -> None:
  """Writes JSON lines through a temporary file in the same directory + rename."""
  atomic.write_text(path, ''.join(json.dumps(record) + '\n' for record in records))


def _define_cli_flags() -> None:
  flags.DEFINE_string('images', None, 'Folder of photos to scan (not recursive).', required=True)
  flags.DEFINE_string('alphas', None, 'Optional folder of mattes named like the photos '
                      '(same stem); enables the coverage check.')
  flags.DEFINE_string('report', None, 'JSON-lines report to write.', required=True)
  flags.DEFINE_integer('workers', 1, 'Processes measuring images.')
  define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not os.path.isdir(flags.FLAGS.images):
    raise app.UsageError(f'--images {flags.FLAGS.images}: not a folder')
  dropped, summary = scan(flags.FLAGS.images, flags.FLAGS.alphas, thresholds_from_flags(),
                          flags.FLAGS.workers)
  write_jsonl_atomic(dropped + [{'summary': summary}], flags.FLAGS.report)
  print(f'{summary["kept"]} of {summary["total"]} kept; dropped by reason: '
        f'{summary["by_reason"]}; report: {flags.FLAGS.report}')


if __name__ == '__main__':
  _define_cli_flags()
  app.run(main)
