r"""Automatic alpha labels: photo + coarse mask -> trimap -> closed-form alpha -> foreground.

  python -m data_prep.autolabel --images DIR (--masks DIR | --preseg_workdir DIR) --out DIR \
      [--report FILE] [--max_side 1024] [--trimap_fraction 0.05] [--workers N] \
      [--fg_format png|jpg] [--binarize_mask] [--beam [--beam_pipeline_options=K=V,...]]
  python -m data_prep.autolabel --eval_synthetic 50 --eval_size 256   # SAD coarse vs label
  python -m data_prep.autolabel --eval_alphamatting ALPHAMATTING_DIR --eval_size 320 \
      --eval_solve_sides 0,160 --eval_seeds 2 [--eval_out FILE]  # DIM metrics, settings grid

Writes OUT/alpha/<stem>.png (8-bit matte), OUT/fg/<stem>.png|jpg (estimated
foreground colours), OUT/meta/<stem>.json (confidence and its parts) and one
JSON line per photo to the report (default OUT/report.jsonl), then a summary
line. Every file is written atomically and the meta file last, so a stem with
a meta file is complete: a restarted run skips it (and repeats its line in the
report). Labels do not depend on --workers (deterministic). Bad inputs (unreadable, missing mask, mask of another size, no
certain foreground or background) get a report line and never stop the run.
With --beam the same per-photo steps (`label_one`) run as an Apache Beam
pipeline (`run_beam`, data_prep/beam_pipeline.py) on the local DirectRunner or
a cluster; folders may then be URIs (gs://...); same files, same report.

Steps for one photo (`label_image`):
  1. Coarse mask (H, W) uint8: a file of --masks with the photo's stem (0/1
     masks are scaled to 0/255; an RGBA cut-out gives its alpha channel), or the
     sigmoid of a trained bgmat pre-segmentation run (--preseg_workdir).
  2. Trimap: values <= 25 are certain background, >= 230 certain foreground,
     the rest uncertain; the unknown region is the uncertain zone plus a band of
     radius r = max(1, round(trimap_fraction * short side)) around it and around
     every hard edge (bgmat.trimap.trimap_from_alpha, disk). Default 0.05: the
     lowest SAD over the benchmark trimap's unknown region of 0.01 / 0.02 /
     0.03 / 0.05 / 0.08 on the 27 alphamatting.com photos (true alpha) at 320 px,
     2 simulated segmenter masks each (`--eval_alphamatting`; table in the
     README). 0.03 gives a 5 % lower whole-image SAD there, 0.05 a 4 % lower
     unknown-region SAD. (An earlier default, 0.03, was picked on synthetic
     test-split portraits; it is no longer used for tuning.)
  3. Alpha: closed-form matting (Levin et al. 2008, pymatting's
     estimate_alpha_cf). Its cost grows faster than the pixel count (measured,
     2-core CPU: 0.13 s at 256 px, 1.6 s at 512 px, 8.9 s at 1024 px), so a
     photo whose long side exceeds --max_side is solved at that size (trimap
     rebuilt there with the same fraction) and the alpha bilinearly upsampled;
     the known regions are then reset to exactly 0 / 1 at full size. Detail
     finer than the solve scale (single hair strands) is lost by this.
  4. Foreground colours: pymatting's multi-level estimator at full size.
  5. Confidence in [0, 1] (`confidence`), the product of
       edge:     1 - J / EDGE_JUMP_SCALE (at least 0), J = mean |alpha - known
                 value| over unknown pixels touching the known regions. A right
                 mask lets alpha run smoothly into 0 and 1; a wrong band edge
                 (e.g. across the subject) leaves a jump.
       decisive: mean over the unknown band of |2 alpha - 1| ** 0.5. Where the
                 band is wider than the real transition (as it should be) most
                 of it resolves to near 0 or 1; a band across flat colour with no
                 real edge gives a grey ramp.
       band:     pixels of the band around the mask's hard edge / all unknown
                 pixels: 1 for a binary mask, lower the more of the mask is
                 uncertain (a segmenter that does not know).
"""

import collections
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import scipy.ndimage as ndi
import tqdm

from bgmat import atomic
from bgmat import trimap as trimap_lib
from data_prep import fileio
from data_prep import quality

CERTAIN_BG = 25
CERTAIN_FG = 230
DEFAULT_TRIMAP_FRACTION = 0.05
DEFAULT_MAX_SIDE = 1024
# A mean jump of this size at the band's border gives edge = 0. Measured on
# synthetic portraits: segmenter-like masks leave <= 0.024, masks shifted or
# unrelated to the subject >= 0.026 (256 px) to >= 0.064 (128 px).
EDGE_JUMP_SCALE = 0.1
_FOUR_CONNECTED = ndi.generate_binary_structure(2, 1)


class LabelError(ValueError):
  """A photo that cannot be labelled; the message says why."""


def band_radius(height: int, width: int, fraction: float) -> int:
  return max(1, round(fraction * min(height, width)))


def make_trimap(coarse: np.ndarray, radius: int) -> np.ndarray:
  """(H, W) uint8 coarse mask -> (H, W) uint8 trimap in {0, 128, 255} (step 2)."""
  levels = np.full(coarse.shape, trimap_lib.TRIMAP_UNKNOWN, np.uint8)
  levels[coarse <= CERTAIN_BG] = 0
  levels[coarse >= CERTAIN_FG] = 255
  return trimap_lib.trimap_from_alpha(levels, radius, shape='disk')


def _resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 (H, W) or (H, W, 3) -> (height, width, ...) uint8, antialiased bilinear."""
  return np.asarray(Image.fromarray(array).resize((width, height), Image.BILINEAR))


def solve_alpha(image: np.ndarray, coarse: np.ndarray, fraction: float,
                max_side: int) -> tuple[np.ndarray, np.ndarray]:
  """Closed-form alpha (step 3). image (H, W, 3) uint8, coarse (H, W) uint8 ->
  (alpha (H, W) float32 in [0, 1], trimap (H, W) uint8 at full size)."""
  from pymatting import estimate_alpha_cf  # pylint: disable=g-import-not-at-top
  height, width = coarse.shape
  trimap = make_trimap(coarse, band_radius(height, width, fraction))
  if not (trimap == 255).any():
    raise LabelError('the coarse mask has no certain foreground (nothing >= '
                     f'{CERTAIN_FG} left after the {band_radius(height, width, fraction)} px band)')
  if not (trimap == 0).any():
    raise LabelError(f'the coarse mask has no certain background (nothing <= {CERTAIN_BG} '
                     f'left after the {band_radius(height, width, fraction)} px band)')
  scale = min(1.0, max_side / max(height, width))
  small_h, small_w = max(1, round(height * scale)), max(1, round(width * scale))
  if scale < 1.0:
    small_image = _resize(image, small_h, small_w)
    small_trimap = make_trimap(_resize(coarse, small_h, small_w),
                               band_radius(small_h, small_w, fraction))
  else:
    small_image, small_trimap = image, trimap
  if (small_trimap == 255).any() and (small_trimap == 0).any():
    # pymatting prints a warning to stdout whenever its incomplete-Cholesky
    # preconditioner needs a diagonal shift (often; harmless); keep the log readable.
    with contextlib.redirect_stdout(io.StringIO()):
      alpha = estimate_alpha_cf(small_image.astype(np.float64) / 255.0,
                                small_trimap.astype(np.float64) / 255.0)
  else:  # The band swallowed one side at the solve size only: no solve there.
    alpha = small_trimap.astype(np.float64) / 255.0
  alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
  if scale < 1.0:
    alpha = np.asarray(Image.fromarray(alpha, mode='F').resize((width, height),
                                                                Image.BILINEAR))
  alpha = np.where(trimap == 0, 0.0, np.where(trimap == 255, 1.0, np.clip(alpha, 0.0, 1.0)))
  return alpha.astype(np.float32), trimap


def confidence_parts(alpha: np.ndarray, trimap: np.ndarray, coarse: np.ndarray,
                     radius: int) -> dict[str, float]:
  """The parts of the confidence (step 5) and their product 'confidence'."""
  unknown = trimap == trimap_lib.TRIMAP_UNKNOWN
  if not unknown.any():
    return {'edge': 1.0, 'decisive': 1.0, 'band': 1.0, 'confidence': 1.0}
  near_fg = unknown & ndi.binary_dilation(trimap == 255, _FOUR_CONNECTED)
  near_bg = unknown & ndi.binary_dilation(trimap == 0, _FOUR_CONNECTED)
  jumps = np.concatenate([1.0 - alpha[near_fg], alpha[near_bg]])
  edge = max(0.0, 1.0 - float(jumps.mean()) / EDGE_JUMP_SCALE) if jumps.size else 1.0
  decisive = float(np.sqrt(np.abs(2.0 * alpha[unknown] - 1.0)).mean())
  binary = np.where(coarse >= 128, 255, 0).astype(np.uint8)
  hard_band = trimap_lib.trimap_from_alpha(binary, radius, 'disk') == trimap_lib.TRIMAP_UNKNOWN
  band = min(1.0, float((hard_band & unknown).sum()) / float(unknown.sum()))
  return {'edge': edge, 'decisive': decisive, 'band': band,
          'confidence': edge * decisive * band}


def normalise_mask(mask: np.ndarray) -> np.ndarray:
  """uint8 mask; a 0/1 label map (max 1) is scaled to 0/255."""
  mask = np.asarray(mask, np.uint8)
  return mask * np.uint8(255) if mask.max() == 1 else mask


def label_alpha(image: np.ndarray, coarse: np.ndarray,
                trimap_fraction: float = DEFAULT_TRIMAP_FRACTION,
                max_side: int = DEFAULT_MAX_SIDE, binarize: bool = False) -> dict:
  """Steps 1-3 and 5 (no foreground colours). image (H, W, 3) uint8, coarse
  (H, W) uint8 (0/1 or 0..255) -> {'alpha' (H, W) float32 in [0, 1], 'trimap'
  (H, W) uint8, 'confidence', 'edge', 'decisive', 'band', 'unknown_fraction'
  floats}.

  `binarize` thresholds the mask at 128 first, for segmenters whose
  probabilities are not calibrated: the band then comes from the radius alone.
  Raises LabelError when the mask gives nothing to solve from.
  """
  if image.shape[:2] != coarse.shape:
    raise LabelError(f'mask shape {coarse.shape} != photo shape {image.shape[:2]}')
  coarse = normalise_mask(coarse)
  if binarize:
    coarse = np.where(coarse >= 128, 255, 0).astype(np.uint8)
  alpha, trimap = solve_alpha(image, coarse, trimap_fraction, max_side)
  parts = confidence_parts(alpha, trimap, coarse, band_radius(*coarse.shape, trimap_fraction))
  return {'alpha': alpha, 'trimap': trimap,
          'unknown_fraction': float((trimap == trimap_lib.TRIMAP_UNKNOWN).mean()),
          **parts}


def label_image(image: np.ndarray, coarse: np.ndarray,
                trimap_fraction: float = DEFAULT_TRIMAP_FRACTION,
                max_side: int = DEFAULT_MAX_SIDE, binarize: bool = False,
                foreground_method: str = 'multilevel') -> dict:
  """One label. image (H, W, 3) uint8, coarse (H, W) uint8 (0/1 or 0..255) ->
  {'alpha' (H, W) uint8, 'fg' (H, W, 3) uint8, 'trimap' (H, W) uint8,
   'confidence', 'edge', 'decisive', 'band', 'unknown_fraction' floats}.

  See `label_alpha` for `binarize`; raises LabelError when the mask gives
  nothing to solve from.
  """
  from bgmat import foreground  # pylint: disable=g-import-not-at-top
  label = label_alpha(image, coarse, trimap_fraction, max_side, binarize)
  fg = foreground.estimate_foreground(image.astype(np.float32) / 255.0, label['alpha'],
                                      method=foreground_method)
  return {**label, 'alpha': np.round(label['alpha'] * 255).astype(np.uint8),
          'fg': np.clip(np.round(fg * 255), 0, 255).astype(np.uint8)}


# ---------------------------------------------------------------------------
# Coarse mask sources: (stem, image) -> (H, W) uint8.
# ---------------------------------------------------------------------------


class FolderMasks:
  """Masks from files with the photo's stem (any image extension, PNG first)."""

  def __init__(self, folder: str):
    if not fileio.isdir(folder):
      raise ValueError(f'--masks {folder}: not a folder')
    self.folder = folder
    self._index = quality.index_by_stem(folder)

  def path_of(self, stem: str) -> str:
    """The mask file of `stem`; raises LabelError when there is none."""
    path = self._index.get(stem)
    if path is None:
      raise LabelError(f'no mask named {stem}.* in {self.folder}')
    return path

  def __call__(self, stem: str, image: np.ndarray) -> np.ndarray:
    return quality.load_mask(self.path_of(stem), image.shape[:2])


class PresegMasks:
  """Masks from a trained pre-segmentation run (or the one a matting run names):
  the photo letterboxed to the run's image size (bgmat.inference.resolution.letterbox, as
  bgmat.inference.remover does), then the sigmoid probability resized back to the photo
  and scaled to 0..255."""

  def __init__(self, workdir: str):
    import jax  # pylint: disable=g-import-not-at-top
    from bgmat import runs  # pylint: disable=g-import-not-at-top
    if not os.path.exists(os.path.join(workdir, 'config.json')):
      raise ValueError(f'{os.path.join(workdir, "config.json")} not found: --preseg_workdir '
                       'must be a trained bgmat run (python -m bgmat.main --config '
                       'configs/preseg.py)')
    # A matting run stands for its stage 1 (runs.load_preseg resolves and checks it).
    stage = runs.load_preseg(workdir)
    self.workdir = stage.workdir
    self.working_size = int(stage.config.image_size)
    self._variables = jax.device_put(stage.variables)
    self._prob = jax.jit(lambda v, x: runs.preseg_probability(stage.module, v, x))

  def __call__(self, stem: str, image: np.ndarray) -> np.ndarray:
    del stem  # The model needs only the pixels.
    from bgmat.inference import resolution  # pylint: disable=g-import-not-at-top
    height, width = image.shape[:2]
    boxed, (box_h, box_w) = resolution.letterbox(image, self.working_size)
    batch = boxed[None].astype(np.float32) / 255.0
    prob = np.asarray(self._prob(self._variables, batch), np.float32)[0, :box_h, :box_w, 0]
    full = np.asarray(Image.fromarray(prob, mode='F').resize((width, height), Image.BILINEAR))
    return np.round(np.clip(full, 0.0, 1.0) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# A folder: resumable, ordered, optionally in worker processes.
# ---------------------------------------------------------------------------


def _label_job(image, coarse, trimap_fraction, max_side, binarize):
  """(label dict or None, error or None, seconds); runs in worker processes."""
  start = time.perf_counter()
  try:
    label = label_image(image, coarse, trimap_fraction, max_side, binarize)
  except (ValueError, ArithmeticError, MemoryError) as e:  # LabelError and solver failures.
    return None, f'{type(e).__name__}: {e}', time.perf_counter() - start
  return label, None, time.perf_counter() - start


_SCORES = ('confidence', 'edge', 'decisive', 'band', 'unknown_fraction')


def _duplicate_record(name: str, stem: str) -> dict:
  return {'file': name, 'status': 'skipped',
          'error': f'another photo has the stem {stem!r}; rename one'}


def resumed_record(out_dir: str, stem: str, fg_format: str) -> dict | None:
  """The report record of a label a previous run completed (its meta file,
  alpha and fg all exist), or None."""
  meta_path = fileio.join(out_dir, 'meta', f'{stem}.json')
  if (fileio.exists(meta_path) and fileio.exists(fileio.join(out_dir, 'alpha', f'{stem}.png'))
      and fileio.exists(fileio.join(out_dir, 'fg', f'{stem}.{fg_format}'))):
    return {**json.loads(fileio.read_text(meta_path)), 'status': 'resumed'}
  return None


def write_label(out_dir: str, name: str, stem: str, label: dict, fg_format: str,
                seconds: float) -> dict:
  """Writes alpha/<stem>.png, fg/<stem>.<fg_format> and, last, meta/<stem>.json
  (each atomically; `out_dir` may be a URI); returns the report record.
  `seconds`: time spent on this photo before writing."""
  from bgmat.inference import remover  # pylint: disable=g-import-not-at-top
  write_start = time.perf_counter()
  alpha_rel, fg_rel = f'alpha/{stem}.png', f'fg/{stem}.{fg_format}'
  for array, rel in ((label['alpha'], alpha_rel), (label['fg'], fg_rel)):
    path = fileio.join(out_dir, rel)
    if fileio.is_uri(path):
      fileio.write_with(path, lambda tmp, a=array: remover.save_image_atomic(a, tmp),
                        suffix=os.path.splitext(rel)[1])
    else:
      remover.save_image_atomic(array, path)
  record = {'file': name, 'alpha': alpha_rel, 'fg': fg_rel,
            **{k: round(label[k], 6) for k in _SCORES},
            'seconds': round(seconds + time.perf_counter() - write_start, 3)}
  # The meta file last: its presence means the label is complete.
  meta_path = fileio.join(out_dir, 'meta', f'{stem}.json')
  if fileio.is_uri(meta_path):
    fileio.write_text(meta_path, json.dumps(record))
  else:
    atomic.write_json(meta_path, record)
  return {**record, 'status': 'labelled'}


def summarize(records: list[dict], seconds: float) -> dict:
  """The report's summary line of the records (one per photo) of a run."""
  counts = collections.Counter(record['status'] for record in records)
  return {'total': len(records), **{k: counts[k] for k in ('labelled', 'resumed', 'skipped')},
          'seconds': round(seconds, 3),
          'labelled_per_second': round(counts['labelled'] / max(seconds, 1e-9), 3)}


def plan_tasks(images_dir: str, masks: FolderMasks) -> list[dict]:
  """One task per photo of `images_dir` in name order, as `run` visits them:
  {'position', 'path', 'name', 'stem', 'duplicate' (a stem seen before),
  'mask' (its mask file or None), 'mask_error' (why there is none)}."""
  tasks, seen = [], set()
  for position, path in enumerate(quality.list_images(images_dir)):
    stem = quality.stem_of(path)
    try:
      mask, mask_error = masks.path_of(stem), None
    except LabelError as e:
      mask, mask_error = None, str(e)
    tasks.append({'position': position, 'path': path, 'name': os.path.basename(path),
                  'stem': stem, 'duplicate': stem in seen, 'mask': mask,
                  'mask_error': mask_error})
    seen.add(stem)
  return tasks


def _load_photo(path: str) -> np.ndarray:
  """(H, W, 3) uint8 photo as `remover.load_image` reads it; a URI via epath."""
  from bgmat.inference import image_io  # pylint: disable=g-import-not-at-top
  from bgmat.inference import remover  # pylint: disable=g-import-not-at-top
  if not fileio.is_uri(path):
    return remover.load_image(path)
  try:
    data = fileio.read_bytes(path)
  except FileNotFoundError as e:
    raise image_io.InputError(f'{path}: no such file', 'missing') from e
  return image_io.read_photo(data, name=path).rgb


def label_one(out_dir: str, task: dict, *, trimap_fraction: float, max_side: int,
              binarize: bool, fg_format: str) -> tuple[dict, float | None]:
  """One photo of `plan_tasks` as `run` does it, in the calling process (Beam
  workers): resumed, skipped or labelled and written. Returns (report record,
  seconds of the closed-form labelling or None when it did not run)."""
  name, stem = task['name'], task['stem']
  if task['duplicate']:
    return _duplicate_record(name, stem), None
  resumed = resumed_record(out_dir, stem, fg_format)
  if resumed is not None:
    return resumed, None
  load_start = time.perf_counter()
  try:
    image = _load_photo(task['path'])
    if task['mask'] is None:
      raise LabelError(task['mask_error'])
    coarse = quality.load_mask(task['mask'], image.shape[:2])
  except ValueError as e:  # InputError, LabelError, unreadable or mis-sized masks.
    return {'file': name, 'status': 'skipped', 'error': str(e)}, None
  load_seconds = time.perf_counter() - load_start
  label, error, solve_seconds = _label_job(image, coarse, trimap_fraction, max_side, binarize)
  if error:
    return {'file': name, 'status': 'skipped', 'error': error}, solve_seconds
  return write_label(out_dir, name, stem, label, fg_format,
                     load_seconds + solve_seconds), solve_seconds


def run_beam(images_dir: str, masks: FolderMasks, out_dir: str, report_path: str | None = None,
             beam_options='', *, trimap_fraction: float = DEFAULT_TRIMAP_FRACTION,
             max_side: int = DEFAULT_MAX_SIDE, binarize: bool = False,
             fg_format: str = 'png') -> dict:
  """`run` as an Apache Beam pipeline (data_prep.beam_pipeline): the same files
  and report lines (their 'seconds' aside). Folders may be URIs (gs://...).

  Args:
    images_dir, masks, out_dir, report_path, trimap_fraction, max_side, binarize,
      fg_format: as `run` (masks from a folder only: a pre-segmentation model
      is not shipped to the workers).
    beam_options: pipeline options, 'key=value,...' or a list of flags
      (beam_pipeline.pipeline_options); '' runs the local DirectRunner.
  Returns:
    The report's summary, plus 'beam_metrics' {name: value}.
  """
  from data_prep import beam_pipeline  # pylint: disable=g-import-not-at-top
  if fg_format not in ('png', 'jpg'):
    raise ValueError(f'fg_format must be png or jpg, got {fg_format!r}')
  out_dir = fileio.absolute(out_dir)
  for kind in ('alpha', 'fg', 'meta'):
    fileio.makedirs(fileio.join(out_dir, kind))
  report_path = fileio.absolute(report_path) if report_path else fileio.join(out_dir,
                                                                              'report.jsonl')
  fileio.makedirs(os.path.dirname(report_path))
  tasks = plan_tasks(images_dir, masks)
  settings = dict(trimap_fraction=trimap_fraction, max_side=max_side, binarize=binarize,
                  fg_format=fg_format)
  summary, metrics = beam_pipeline.run_autolabel(tasks, out_dir, report_path, beam_options,
                                                 settings=settings)
  print(beam_pipeline.format_metrics(metrics, f'autolabel {images_dir}'))
  return {**summary, 'beam_metrics': metrics}


def run(images_dir: str, mask_source, out_dir: str, report_path: str | None = None, *,
        trimap_fraction: float = DEFAULT_TRIMAP_FRACTION, max_side: int = DEFAULT_MAX_SIDE,
        binarize: bool = False, fg_format: str = 'png', workers: int = 1,
        progress: bool = True) -> dict:
  """Labels every photo of `images_dir` (see the module docstring); returns the summary.

  `mask_source`: FolderMasks, PresegMasks or any (stem, image) -> (H, W) uint8.
  Report lines keep the photos' name order whatever `workers` is.
  """
  from bgmat.inference import remover  # pylint: disable=g-import-not-at-top
  if fg_format not in ('png', 'jpg'):
    raise ValueError(f'fg_format must be png or jpg, got {fg_format!r}')
  out_dir = os.path.abspath(out_dir)
  dirs = {kind: os.path.join(out_dir, kind) for kind in ('alpha', 'fg', 'meta')}
  for directory in dirs.values():
    os.makedirs(directory, exist_ok=True)
  report_path = report_path or os.path.join(out_dir, 'report.jsonl')
  os.makedirs(os.path.dirname(os.path.abspath(report_path)), exist_ok=True)
  paths = quality.list_images(images_dir)
  counts = collections.Counter()
  pool = None
  if workers > 1:
    # Spawned workers: forking a process that holds JAX's threads can deadlock.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('spawn'))
  start = time.perf_counter()
  # FIFO of (name, stem, ready record | (future, seconds so far)): lines stay in order.
  pending = collections.deque()
  bar = tqdm.tqdm(total=len(paths), unit='img', disable=not progress, desc='autolabel')

  def finish(report, name, stem, entry):
    if isinstance(entry, dict):
      record = entry
    else:
      future, seconds = entry
      label, error, solve_seconds = future.result() if pool else future
      if error:
        record = {'file': name, 'status': 'skipped', 'error': error}
      else:
        record = write_label(out_dir, name, stem, label, fg_format, seconds + solve_seconds)
    counts[record['status']] += 1
    report.write(json.dumps(record) + '\n')
    report.flush()
    bar.update(1)

  try:
    with open(report_path, 'w', encoding='utf-8') as report:
      seen = set()
      for path in paths:
        name, stem = os.path.basename(path), quality.stem_of(path)
        if stem in seen:
          entry = _duplicate_record(name, stem)
        elif resumed_record(out_dir, stem, fg_format) is not None:
          entry = resumed_record(out_dir, stem, fg_format)
        else:
          load_start = time.perf_counter()
          try:
            image = remover.load_image(path)
            coarse = mask_source(stem, image)
          except ValueError as e:  # InputError, LabelError, unreadable or mis-sized masks.
            entry = {'file': name, 'status': 'skipped', 'error': str(e)}
          else:
            load_seconds = time.perf_counter() - load_start
            args = (image, coarse, trimap_fraction, max_side, binarize)
            entry = (pool.submit(_label_job, *args) if pool else _label_job(*args), load_seconds)
        seen.add(stem)
        pending.append((name, stem, entry))
        while len(pending) > 2 * max(1, workers) - 1:
          finish(report, *pending.popleft())
      while pending:
        finish(report, *pending.popleft())
      summary = summarize([{'status': status} for status in counts.elements()],
                          time.perf_counter() - start)
      report.write(json.dumps({'summary': summary}) + '\n')
  finally:
    bar.close()
    if pool:
      pool.shutdown(cancel_futures=True)
  return summary


# ---------------------------------------------------------------------------
# Evaluation on synthetic portraits with known alpha (`--eval_synthetic N`).
# ---------------------------------------------------------------------------


def simulate_segmenter_mask(alpha: np.ndarray, rng: np.random.Generator,
                            blur_fraction: float = 0.01, wobble: float = 0.15,
                            max_shift: int = 0) -> np.ndarray:
  """A binary (H, W) uint8 mask that errs as a segmenter does: the true alpha
  (H, W) uint8 blurred (thin strands vanish, corners round), plus smooth
  low-frequency noise that moves (warps) the boundary by a few pixels,
  thresholded at 0.5, then shifted by up to `max_shift` px in each axis
  (seeded; the uncovered edge repeats the border)."""
  height, width = alpha.shape
  soft = ndi.gaussian_filter(alpha.astype(np.float32) / 255.0,
                             blur_fraction * min(height, width))
  cells = rng.standard_normal((6, 6)).astype(np.float32)
  noise = np.asarray(Image.fromarray(cells, mode='F').resize((width, height), Image.BICUBIC))
  mask = np.where(soft + wobble * noise >= 0.5, 255, 0).astype(np.uint8)
  if max_shift > 0:
    dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
    mask = ndi.shift(mask, (dy, dx), order=0, mode='nearest')
  return mask


def shifted_mask(mask: np.ndarray, fraction: float) -> np.ndarray:
  """A wrong mask for confidence checks: `mask` (H, W) moved right by
  `fraction` of its width (the uncovered side repeats the border column)."""
  return ndi.shift(mask, (0, round(fraction * mask.shape[1])), order=0, mode='nearest')


def load_alphamatting(root: str, size: int, trimap_name: str = 'trimap1'):
  """The alphamatting.com training set under `root` (image/, alpha/, trimap1/,
  trimap2/ of GTxx.png) with the long side resized to `size` (Lanczos for the
  photo and alpha, nearest for the trimap). Yields (stem, image (H, W, 3) uint8,
  alpha (H, W) uint8, trimap (H, W) uint8 in {0, 128, 255}).

  Raises FileNotFoundError when a folder or a matching file is missing.
  """
  from bgmat.inference import remover  # pylint: disable=g-import-not-at-top
  folders = {k: os.path.join(root, k) for k in ('image', 'alpha', trimap_name)}
  for folder in folders.values():
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'{folder}: no such folder (expected the alphamatting layout)')
  alpha_index = quality.index_by_stem(folders['alpha'])
  trimap_index = quality.index_by_stem(folders[trimap_name])
  for path in quality.list_images(folders['image']):
    stem = quality.stem_of(path)
    if stem not in alpha_index or stem not in trimap_index:
      raise FileNotFoundError(f'{path}: no alpha or {trimap_name} with the stem {stem!r}')
    image = remover.load_image(path)
    alpha = quality.load_mask(alpha_index[stem], image.shape[:2])
    trimap = quality.load_mask(trimap_index[stem], image.shape[:2])
    height, width = alpha.shape
    scale = size / max(height, width)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    yield (stem, np.asarray(Image.fromarray(image).resize(new, Image.LANCZOS)),
           np.asarray(Image.fromarray(alpha).resize(new, Image.LANCZOS)),
           np.asarray(Image.fromarray(trimap).resize(new, Image.NEAREST)))


def evaluate_alphamatting(root: str, size: int = 320, fractions=(0.01, 0.02, 0.03, 0.05, 0.08),
                          solve_sides=(0,), seeds: int = 1, trimap_name: str = 'trimap1',
                          blur_fraction: float = 0.01, wobble: float = 0.15,
                          max_shift: int = 3, wrong_shift: float = 0.15) -> dict:
  """DIM metrics of coarse masks vs auto-labels on photos with true alpha.

  For each photo (long side `size`) and seed, a segmenter-like coarse mask is
  made from the TRUE alpha (`simulate_segmenter_mask`: blur, low-frequency
  boundary warp, threshold, shift of up to `max_shift` px) and labelled with
  every (trimap_fraction, solve side) of the grid (solve side 0: the photo's
  size). SAD, MSE, Grad, Conn (bgmat.metrics, DIM conventions) are averaged over
  the photos, on the benchmark trimap's unknown region ('u_') and the whole
  image ('w_'). The confidence is also taken of a wrong mask (the coarse mask
  shifted right by `wrong_shift` of the width), to place min_confidence.

  Returns {'rows': [one dict per setting, and one 'coarse' row], 'best': the
  setting with the lowest unknown-region SAD, 'num_images', 'seconds'}.
  """
  from bgmat import metrics  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  settings = [(f, s) for f in fractions for s in solve_sides]
  per = {key: collections.defaultdict(list) for key in settings + ['coarse']}
  count = 0
  for index, (stem, image, alpha, trimap) in enumerate(load_alphamatting(root, size,
                                                                        trimap_name)):
    for seed in range(seeds):
      rng = np.random.default_rng([seed, index])
      coarse = simulate_segmenter_mask(alpha, rng, blur_fraction, wobble, max_shift)
      wrong = shifted_mask(coarse, wrong_shift)
      count += 1
      candidates = [('coarse', coarse, None, None)]
      for fraction, side in settings:
        solve = side or max(alpha.shape)
        try:
          good = label_alpha(image, coarse, fraction, solve, binarize=True)
          bad = label_alpha(image, wrong, fraction, solve, binarize=True)
        except LabelError as e:
          raise LabelError(f'{stem}: {e}') from e
        candidates.append(((fraction, side), metrics.quantize(good['alpha']),
                           good['confidence'], bad['confidence']))
      for key, pred, conf_good, conf_bad in candidates:
        values = per[key]
        for prefix, region in (('u_', trimap), ('w_', None)):
          for name, value in metrics.matting_metrics(pred, alpha, region).items():
            values[prefix + name].append(value)
        if conf_good is not None:
          values['confidence'].append(conf_good)
          values['confidence_wrong'].append(conf_bad)
  rows = []
  for key, values in per.items():
    row = {'setting': 'coarse mask' if key == 'coarse' else
           f'trimap_fraction {key[0]:g}, solve side {key[1] or size}'}
    if key != 'coarse':
      row.update(trimap_fraction=key[0], solve_side=key[1] or size)
    for name, series in values.items():
      row[name] = float(np.mean(series))
    if key != 'coarse':
      row['confidence_values'] = [round(float(v), 4) for v in values['confidence']]
      row['confidence_wrong_values'] = [round(float(v), 4) for v in values['confidence_wrong']]
      row['confidence_min'] = float(np.min(values['confidence']))
      row['confidence_wrong_max'] = float(np.max(values['confidence_wrong']))
      coarse_sad = np.array(per['coarse']['u_sad'])
      row['images_better_u_sad'] = int(np.sum(np.array(values['u_sad']) < coarse_sad))
    rows.append(row)
  labelled = [r for r in rows if 'trimap_fraction' in r]
  best = min(labelled, key=lambda r: r['u_sad'])
  return {'rows': rows, 'best': best, 'num_images': count, 'size': size,
          'trimap': trimap_name, 'seconds': time.perf_counter() - start}


def alphamatting_table(result: dict) -> str:
  """Markdown table of `evaluate_alphamatting`'s rows."""
  names = ['u_sad', 'u_mse', 'u_grad', 'u_conn', 'w_sad', 'w_mse', 'w_grad', 'w_conn']
  head = ('| setting | ' + ' | '.join(n.replace('u_', 'U ').replace('w_', 'whole ')
                                      for n in names)
          + ' | better U SAD | confidence mean / min | wrong mask conf. max |')
  lines = [head, '|' + '---|' * (len(names) + 4)]
  for row in result['rows']:
    cells = [f'{row[n]:.4g}' for n in names]
    extra = ([f"{row['images_better_u_sad']}/{result['num_images']}",
              f"{row['confidence']:.3f} / {row['confidence_min']:.3f}",
              f"{row['confidence_wrong_max']:.3f}"]
             if 'trimap_fraction' in row else ['', '', ''])
    lines.append(f"| {row['setting']} | " + ' | '.join(cells + extra) + ' |')
  return '\n'.join(lines)


def evaluate_synthetic(num_images: int, image_size: int, seed: int = 0,
                       trimap_fraction: float = DEFAULT_TRIMAP_FRACTION,
                       max_side: int = DEFAULT_MAX_SIDE) -> dict:
  """Mean whole-image SAD (DIM convention, /1000) of the coarse masks and of
  the labels, against the exact alpha of `synthetic` test-split portraits."""
  from bgmat import metrics  # pylint: disable=g-import-not-at-top
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  sad_coarse, sad_label, confidence = [], [], []
  start = time.perf_counter()
  for index in range(num_images):
    example = synthetic.generate_example(index, 'test', seed=seed, image_size=image_size)
    coarse = simulate_segmenter_mask(example['alpha'], np.random.default_rng([seed, index]))
    label = label_image(example['image'], coarse, trimap_fraction, max_side)
    sad_coarse.append(metrics.matting_metrics(coarse, example['alpha'], which=('sad',))['sad'])
    sad_label.append(metrics.matting_metrics(label['alpha'], example['alpha'],
                                             which=('sad',))['sad'])
    confidence.append(label['confidence'])
  return {'num_images': num_images, 'image_size': image_size,
          'sad_coarse': float(np.mean(sad_coarse)), 'sad_autolabel': float(np.mean(sad_label)),
          'images_better': int(np.sum(np.array(sad_label) < np.array(sad_coarse))),
          'confidence_mean': float(np.mean(confidence)),
          'confidence_min': float(np.min(confidence)),
          'seconds_per_image': (time.perf_counter() - start) / max(num_images, 1)}


# ---------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------


def _define_flags() -> None:
  flags.DEFINE_string('images', None, 'Folder of photos (not recursive).')
  flags.DEFINE_string('masks', None, 'Folder of coarse masks named like the photos.')
  flags.DEFINE_string('preseg_workdir', None, 'Trained bgmat pre-segmentation run (or a '
                      'matting run: its pre-segmentation is used) giving the coarse masks.')
  flags.DEFINE_string('out', None, 'Output folder (alpha/, fg/, meta/, report.jsonl).')
  flags.DEFINE_string('report', None, 'JSON-lines report; default OUT/report.jsonl.')
  flags.DEFINE_integer('max_side', DEFAULT_MAX_SIDE, 'Long side of the closed-form solve; '
                       'larger photos are solved downscaled and the alpha upsampled.')
  flags.DEFINE_float('trimap_fraction', DEFAULT_TRIMAP_FRACTION,
                     'Unknown band radius as a fraction of the short side (at least 1 px).')
  flags.DEFINE_bool('binarize_mask', False, 'Threshold coarse masks at 0.5 first (segmenters '
                    'with uncalibrated probabilities); by default 25 < mask < 230 is unknown.')
  flags.DEFINE_integer('workers', 1, 'Processes solving in parallel.')
  flags.DEFINE_enum('fg_format', 'png', ['png', 'jpg'], 'Foreground file format.')
  flags.DEFINE_bool('beam', False, 'Label with Apache Beam (data_prep/beam_pipeline.py; '
                    '--masks only): the local DirectRunner unless --beam_pipeline_options '
                    'names another runner. Folders may then be URIs (gs://...).')
  flags.DEFINE_string('beam_pipeline_options', '', '--beam: pipeline options as '
                      'key=value,key=value (e.g. direct_num_workers=2,'
                      'direct_running_mode=multi_processing).')
  flags.DEFINE_integer('eval_synthetic', 0, 'Instead of a folder: label N synthetic test '
                       'portraits from simulated segmenter masks and print SAD coarse vs label.')
  flags.DEFINE_integer('eval_size', 256, 'Image size for --eval_synthetic, long side for '
                       '--eval_alphamatting.')
  flags.DEFINE_string('eval_alphamatting', None, 'Instead of a folder: the alphamatting.com '
                      'training set (image/, alpha/, trimap1/); labels coarse masks made from '
                      'the true alpha over a grid of settings and prints the DIM metrics.')
  flags.DEFINE_list('eval_fractions', ['0.01', '0.02', '0.03', '0.05', '0.08'],
                    'trimap_fraction grid of --eval_alphamatting.')
  flags.DEFINE_list('eval_solve_sides', ['0'], 'Solve sides (--max_side) of the '
                    '--eval_alphamatting grid; 0 = the photo size.')
  flags.DEFINE_integer('eval_seeds', 1, 'Coarse masks per photo for --eval_alphamatting.')
  flags.DEFINE_string('eval_trimap', 'trimap1', 'Benchmark trimap folder giving the unknown '
                      'region: trimap1 (small) or trimap2 (large).')
  flags.DEFINE_string('eval_out', None, 'Also write the --eval_alphamatting result (JSON).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if FLAGS.eval_alphamatting:
    result = evaluate_alphamatting(
        FLAGS.eval_alphamatting, FLAGS.eval_size,
        fractions=tuple(float(v) for v in FLAGS.eval_fractions),
        solve_sides=tuple(int(v) for v in FLAGS.eval_solve_sides),
        seeds=FLAGS.eval_seeds, trimap_name=FLAGS.eval_trimap)
    if FLAGS.eval_out:
      atomic.write_json(FLAGS.eval_out, result)
    print(alphamatting_table(result))
    best = {k: v for k, v in result['best'].items() if not k.endswith('_values')}
    print(json.dumps({'best': best, 'num_images': result['num_images'],
                      'seconds': round(result['seconds'], 1)}))
    return
  if FLAGS.eval_synthetic > 0:
    print(json.dumps(evaluate_synthetic(FLAGS.eval_synthetic, FLAGS.eval_size,
                                        trimap_fraction=FLAGS.trimap_fraction,
                                        max_side=FLAGS.max_side)))
    return
  if not FLAGS.images or not FLAGS.out:
    raise app.UsageError('--images and --out are required')
  if FLAGS.beam_pipeline_options and not FLAGS.beam:
    raise app.UsageError('--beam_pipeline_options needs --beam')
  if FLAGS.beam:
    if not FLAGS.masks:
      raise app.UsageError('--beam takes the coarse masks from --masks DIR (a pre-segmentation '
                           'model is not shipped to the workers; write its masks first)')
    if FLAGS.trimap_fraction <= 0 or FLAGS.max_side < 16:
      raise app.UsageError('--trimap_fraction must be > 0 and --max_side >= 16')
    try:
      masks = FolderMasks(FLAGS.masks)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
    summary = run_beam(FLAGS.images, masks, FLAGS.out, FLAGS.report, FLAGS.beam_pipeline_options,
                       trimap_fraction=FLAGS.trimap_fraction, max_side=FLAGS.max_side,
                       binarize=FLAGS.binarize_mask, fg_format=FLAGS.fg_format)
    print(json.dumps(summary))
    return
  if not os.path.isdir(FLAGS.images):
    raise app.UsageError(f'--images {FLAGS.images}: not a folder')
  if bool(FLAGS.masks) == bool(FLAGS.preseg_workdir):
    raise app.UsageError('Give exactly one of --masks and --preseg_workdir')
  if FLAGS.trimap_fraction <= 0 or FLAGS.max_side < 16:
    raise app.UsageError('--trimap_fraction must be > 0 and --max_side >= 16')
  try:
    source = FolderMasks(FLAGS.masks) if FLAGS.masks else PresegMasks(FLAGS.preseg_workdir)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  summary = run(FLAGS.images, source, FLAGS.out, FLAGS.report,
                trimap_fraction=FLAGS.trimap_fraction, max_side=FLAGS.max_side,
                binarize=FLAGS.binarize_mask, fg_format=FLAGS.fg_format,
                workers=FLAGS.workers)
  print(json.dumps(summary))


if __name__ == '__main__':
  _define_flags()
  app.run(main)
