"""The parts of `bgmat.report` outside the runs' own data sets.

  * `alphamatting_rows`: the alphamatting.com photos (true soft alpha): the
    matting stage fed a prior made from each trimap vs closed-form matting
    (pymatting) with the same trimap, DIM metrics on the trimap's unknown region
    and the whole image.
  * `render_cutouts`: `bgmat remove` (the Python API, `Remover.from_workdir`)
    of the two held-out demo photos, scikit-image's astronaut and matplotlib's
    Grace Hopper, on a checkerboard, one small PNG per photo.
"""

import glob
import os

import jax
import numpy as np
from PIL import Image
import scipy.ndimage as ndi

from bgmat import baselines
from bgmat import evaluate as eval_lib
from bgmat.inference import image_io
from bgmat.inference import resolution
from bgmat import metrics as metrics_lib
from bgmat import runs as runs_lib
from bgmat import trimap as trimap_lib

METRICS = metrics_lib.ALL_METRICS


def _read(path: str, mode: str) -> np.ndarray:
  try:
    return np.asarray(image_io.open_image(path).convert(mode))
  except image_io.ImageReadError as e:
    raise ValueError(image_io.describe(e)) from e


def _resize(array: np.ndarray, scale: float, resample) -> np.ndarray:
  if scale == 1.0:
    return array
  height, width = array.shape[:2]
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return np.asarray(Image.fromarray(array).resize(size, resample))


def load_alphamatting(directory: str, trimap_dir: str, max_side: int = 0):
  """Yields (name, image (H, W, 3) float32 [0, 1], alpha (H, W) float32 [0, 1],
  trimap (H, W) float32 {0, 0.5, 1}) for every DIR/image/*.png.

  Layout (alphamatting.com training set): DIR/image/GTxx.png (RGB),
  DIR/alpha/GTxx.png (true alpha, grey), DIR/<trimap_dir>/GTxx.png (0 / 128 /
  255). With `max_side` > 0, photos whose long side is larger are downscaled
  to it: image and alpha bilinearly, the trimap nearest (its three levels stay).

  Raises:
    ValueError: naming the file: a missing alpha/trimap, unreadable image or
      mismatched sizes; or no photos at all.
  """
  paths = sorted(glob.glob(os.path.join(directory, 'image', '*.png')))
  if not paths:
    raise ValueError(f'{directory}: no image/*.png (expected the alphamatting.com layout '
                     'image/, alpha/, trimap1/)')
  for path in paths:
    name = os.path.basename(path)
    image = _read(path, 'RGB')
    alpha = _read(os.path.join(directory, 'alpha', name), 'L')
    trimap = _read(os.path.join(directory, trimap_dir, name), 'L')
    if alpha.shape != image.shape[:2] or trimap.shape != image.shape[:2]:
      raise ValueError(f'{directory}: {name}: image {image.shape[:2]}, alpha {alpha.shape} '
                       f'and {trimap_dir} {trimap.shape} differ in size')
    scale = min(1.0, max_side / max(image.shape[:2])) if max_side > 0 else 1.0
    image = _resize(image, scale, Image.BILINEAR)
    alpha = _resize(alpha, scale, Image.BILINEAR)
    trimap = _resize(trimap, scale, Image.NEAREST)
    levels = np.where(trimap <= 64, 0.0, np.where(trimap >= 192, 1.0, 0.5)).astype(np.float32)
    yield (os.path.splitext(name)[0], image.astype(np.float32) / 255.0,
           alpha.astype(np.float32) / 255.0, levels)


PRIOR_FILLS = ('flat', 'ramp')


def prior_from_trimap(trimap: np.ndarray, blur_sigma: float = 0.0, fill: str = 'flat') -> np.ndarray:
  """The matting stage's prior from a trimap. (H, W) {0, 0.5, 1} -> (H, W) float32 in [0, 1].

  Known foreground is 1 and known background 0; the unknown region is filled
  with 0.5 (`fill='flat'`) or, with `fill='ramp'`, with d_bg / (d_bg + d_fg), the
  Euclidean distances (pixels) to the nearest known background and foreground
  pixel: a soft transition across the unknown band, closer to what the
  pre-segmentation the stage was trained on gives than a plateau (0.5 where a
  known region is missing). Then, if `blur_sigma` > 0 (pixels), a Gaussian blur.

  Raises:
    ValueError: an unknown `fill`.
  """
  if fill not in PRIOR_FILLS:
    raise ValueError(f'fill must be one of {PRIOR_FILLS}, got {fill!r}')
  prior = np.asarray(trimap, np.float32)
  unknown = (prior > 0.0) & (prior < 1.0)
  if fill == 'ramp' and unknown.any() and (prior >= 1.0).any() and (prior <= 0.0).any():
    to_fg = ndi.distance_transform_edt(prior < 1.0)  # 0 on known foreground.
    to_bg = ndi.distance_transform_edt(prior > 0.0)  # 0 on known background.
    prior = np.where(unknown, to_bg / (to_bg + to_fg), prior).astype(np.float32)
  if blur_sigma > 0:
    prior = ndi.gaussian_filter(prior, blur_sigma, mode='nearest')
  return np.clip(prior, 0.0, 1.0)


def paste_known_regions(alpha: np.ndarray, trimap: np.ndarray) -> np.ndarray:
  """Alpha with the trimap's known regions pasted in. (H, W) float alpha in [0, 1]
  and (H, W) trimap {0, 0.5, 1} -> (H, W) float32: 0 on known background, 1 on
  known foreground, `alpha` over the unknown region. The usual evaluation of
  trimap-based matting (e.g. the Deep Image Matting and GCA Matting reference
  code clip the prediction to the trimap before computing the metrics).

  Raises:
    ValueError: the shapes differ.
  """
  alpha = np.asarray(alpha, np.float32)
  trimap = np.asarray(trimap, np.float32)
  if alpha.shape != trimap.shape:
    raise ValueError(f'alpha {alpha.shape} and trimap {trimap.shape} differ in shape')
  # The unknown region the '_unknown' metrics use; outside it the trimap is 0 or 1.
  return np.where(trimap_lib.unknown_mask(trimap), alpha, trimap).astype(np.float32)


class _Matter:
  """A matting run applied to one photo at a time, padded to a multiple of the
  network stride (edge values), so photos of one padded size share a compile."""

  def __init__(self, workdir: str):
    stage = runs_lib.load_stage(workdir)
    if stage.config.stage != 'matting':
      raise ValueError(f'{workdir} is a {stage.config.stage!r} run, not a matting run')
    module, variables = stage.module, jax.device_put(stage.variables)
    self._apply = jax.jit(lambda v, x, p: module.apply(v, x, p, train=False))
    self._variables = variables

  def __call__(self, image: np.ndarray, prior: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    side = -(-max(height, width) // resolution.STRIDE) * resolution.STRIDE
    image_p = resolution.pad_to(image, side, side)[None]
    prior_p = resolution.pad_to(prior, side, side)[None, ..., None]
    alpha = np.asarray(self._apply(self._variables, image_p, prior_p))[0, :height, :width, 0]
    return np.clip(alpha, 0.0, 1.0)


def alphamatting_rows(directory: str, matting_runs: list, trimaps=('trimap1',),
                      max_side: int = 400, blur_sigma: float = 0.0, prior_fill: str = 'flat',
                      paste_known: bool = False, cg_maxiter: int = 2000,
                      log=print) -> list[dict]:
  """Per trimap set: one row per matting run and one for closed-form matting.

  `matting_runs`: [(label, run name, workdir)]. Metrics are the DIM metrics
  of each photo (`metrics.batch_eval_metrics` with the given trimap, so the
  '_unknown' ones are over its unknown region) averaged over the photos.
  `paste_known`: set the matting runs' alpha to the trimap's known values
  outside its unknown region (`paste_known_regions`), as trimap-based matting
  is evaluated (closed-form matting keeps them by construction).
  Rows: method, run, trimap, n (photos), deterministic, and the metrics.
  """
  matters = [(label, name, _Matter(workdir)) for label, name, workdir in matting_runs]
  rows = []
  for trimap_dir in trimaps:
    per_method = {}
    count = 0
    for name, image, alpha, trimap in load_alphamatting(directory, trimap_dir, max_side):
      prior = prior_from_trimap(trimap, blur_sigma, prior_fill)
      predictions = {(label, run): matter(image, prior) for label, run, matter in matters}
      if paste_known:
        predictions = {key: paste_known_regions(pred, trimap) for key, pred in predictions.items()}
      predictions[('closed-form matting (pymatting)', '-')] = baselines.closed_form_alpha(
          image, trimap, cg_maxiter)[..., 0]
      for key, pred in predictions.items():
        per_example = metrics_lib.batch_eval_metrics(pred[None], alpha[None], trimap[None],
                                                     which=METRICS)
        per_method[key] = metrics_lib.merge_means(per_method.get(key), per_example)
      count += 1
      log(f'alphamatting {trimap_dir} {name}')
    for (label, run), totals in per_method.items():
      rows.append(dict(method=label, run=run, trimap=trimap_dir, n=count,
                       deterministic=run == '-', **metrics_lib.compute_means(totals)))
  return rows


# ---------------------------------------------------------------------------
# Cut-outs of the held-out demo photos.
# ---------------------------------------------------------------------------


def demo_photos() -> dict[str, np.ndarray]:
  """{'astronaut', 'grace_hopper'}: (H, W, 3) uint8, shipped with scikit-image
  and matplotlib (no download). Held out: demo inputs only, never training."""
  import matplotlib.cbook  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  with matplotlib.cbook.get_sample_data('grace_hopper.jpg') as f:
    hopper = np.asarray(Image.open(f).convert('RGB'))
  return {'astronaut': np.asarray(skimage.data.astronaut()), 'grace_hopper': hopper}


def on_checkerboard(image: np.ndarray, alpha: np.ndarray, height: int) -> np.ndarray:
  """(H, W, 3) uint8 + (H, W) alpha -> the cut-out over a checkerboard, `height` tall."""
  scale = height / image.shape[0]
  width = max(1, round(image.shape[1] * scale))
  small = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR),
                     np.float32) / 255.0
  small_alpha = resolution.resize(alpha, (height, width))[..., None]
  board = eval_lib.checkerboard(height, width, cell=max(4, height // 32))
  return np.clip(np.round((small_alpha * small + (1 - small_alpha) * board) * 255),
                 0, 255).astype(np.uint8)


def side_by_side(panels: list[np.ndarray], axis: int = 1, gap: int = 2) -> np.ndarray:
  """uint8 RGB panels joined along `axis` (1: a row, 0: a column) with `gap`
  px white strips between them; the panels agree on the other side."""
  shape = list(panels[0].shape)
  shape[axis] = gap
  white = np.full(shape, 255, np.uint8)
  return np.concatenate([p for panel in panels for p in (panel, white)][:-1], axis=axis)


def render_cutouts(workdirs: list[tuple], out_dir: str, height: int = 256,
                   log=print) -> list[tuple[str, str]]:
  """For each demo photo: input | cut-out of each (label, matting workdir), side by side.

  An entry may carry a third element, keyword arguments of
  `Remover.from_workdir` (e.g. preseg_flip=True, preseg_scales=(0.75, 1)).
  Writes OUT_DIR/cutout_<photo>.png atomically (uint8 RGB, `height` px tall,
  2 px white gaps); returns [(photo, path)]. The column order is `workdirs`'.
  """
  from bgmat.inference import remover as remover_lib  # pylint: disable=g-import-not-at-top
  removers = [remover_lib.Remover.from_workdir(entry[1], **(entry[2] if len(entry) > 2 else {}))
              for entry in workdirs]
  written = []
  for photo, image in demo_photos().items():
    panels = [np.asarray(Image.fromarray(image).resize(
        (max(1, round(image.shape[1] * height / image.shape[0])), height), Image.BILINEAR))]
    for remover in removers:
      panels.append(on_checkerboard(image, remover.alpha(image), height))
    row = side_by_side(panels)
    path = os.path.join(out_dir, f'cutout_{photo}.png')
    remover_lib.save_png_atomic(row, path)
    written.append((photo, path))
    log(f'cut-out {photo}')
  return written
