"""Background removal: `Remover` (Python API) behind `bgmat remove` and `bgmat.remove`.

  remover = bgmat.Remover.from_workdir('runs/demo/matting')
  remover = bgmat.Remover.from_export('model.bgmat')   # or a `bgmat export` file
  rgba = remover(image)          # numpy (H, W, 3) uint8 -> (H, W, 4) uint8; PIL -> PIL
  alpha = remover.alpha(image)   # (H, W) float32 in [0, 1]
  out = remover.cutout(image, format='composite', bg='white')   # see FORMATS

The pre-segmentation runs at a fixed working size (the photo letterboxed into
a square); the matting generator at up to the photo's own size, padded to a
shape bucket (`bgmat.resolution`), in tiles above the largest bucket.
`process_inputs` (behind `bgmat remove`) decodes photos in a thread pool while
the device runs, batches photos of one bucket and shows a progress bar.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import glob
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image
from PIL import ImageColor
from PIL import ImageOps
import tqdm

from bgmat import foreground
from bgmat import image_io
from bgmat import resolution

# Photos larger than this are refused as possible decompression bombs.
MAX_PIXELS = image_io.MAX_PIXELS


class InputError(ValueError):
  """A file that cannot be read as an image; the message names the file."""


def load_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Reads a photo as (H, W, 3) uint8 RGB, upright per its EXIF orientation."""
  try:
    img = image_io.open_image(path, max_pixels)
  except image_io.ImageReadError as e:
    raise InputError(image_io.describe(e)) from e
  try:
    img = ImageOps.exif_transpose(img)
    if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
      array = np.asarray(img, dtype=np.float64)
      img = Image.fromarray(np.clip(array / 257.0, 0, 255).astype(np.uint8))
    if img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and 'transparency' in img.info):
      img = img.convert('RGBA').convert('RGB')
    return np.asarray(img.convert('RGB'))
  except (OSError, ValueError, SyntaxError) as e:
    raise InputError(f'{path}: not a readable image ({type(e).__name__}: {e})') from e


class Remover:
  """Pre-segmentation + matting models with their weights, ready to run.

  The pre-segmentation runs at `working_size` (the photo letterboxed into a
  square, one compiled shape). The matting generator runs at (up to) the
  photo's own size, its prior being the pre-segmentation upsampled to that
  size, padded to a shape bucket (`bgmat.resolution`): one compiled function
  per bucket and batch size, counted in `compiles`. Photos above the largest
  bucket are matted in overlapping, feathered tiles; `max_side` caps the
  matting size (the alpha is then resized back).

  The generator was trained on crops whose prior is the pre-segmentation of
  that same crop, image and prior at one resolution (`train.matting_step`).
  Here it sees the photo at a higher resolution than in training, the prior
  upsampled from the working size: this is how matting refiners are used. The
  network is fully convolutional and refines the prior's edges from local
  image evidence; the global decision (what is foreground) is the prior's.
  """

  def __init__(self, matting_model, matting_vars, preseg_model, preseg_vars,
               working_size: int, *, buckets: resolution.Buckets | None = None,
               max_side: int | None = None, tile_overlap: int | None = None):
    matting_vars = jax.device_put(matting_vars)
    preseg_vars = jax.device_put(preseg_vars)

    def preseg_apply(variables, image):
      return jax.nn.sigmoid(preseg_model.apply(variables, image, train=False))

    def matting_apply(variables, image, prior):
      return matting_model.apply(variables, image, prior, train=False)

    # Closures over the weights, for `bgmat export` (weights become constants).
    self.preseg_fn = functools.partial(preseg_apply, preseg_vars)
    self.matting_fn = functools.partial(matting_apply, matting_vars)
    self._setup(working_size, buckets, max_side, tile_overlap)
    # Weights as arguments, not constants, so each bucket compiles quickly.
    preseg_jit = jax.jit(self._counted('preseg', preseg_apply))
    matting_jit = jax.jit(self._counted('matting', matting_apply))
    self._preseg_call = functools.partial(preseg_jit, preseg_vars)
    self._matting_call = functools.partial(matting_jit, matting_vars)

  def _setup(self, working_size, buckets, max_side, tile_overlap):
    self.working_size = int(working_size)
    self.buckets = buckets or resolution.Buckets()
    self.max_side = max_side
    if max_side is not None and max_side < 1:
      raise ValueError(f'max_side must be positive, got {max_side}')
    self.tile_overlap = (tile_overlap if tile_overlap is not None
                         else max(self.buckets.max_side // 8, self.buckets.stride))
    # (function, input shape) -> times traced; jit traces once per new shape,
    # so this counts compilations (tests assert one per bucket).
    self.compiles = collections.Counter()

  def _counted(self, name, fn):
    def traced(*args):
      shape = next(a.shape for a in args if hasattr(a, 'shape'))
      self.compiles[(name, tuple(shape))] += 1
      return fn(*args)
    return traced

  @classmethod
  def from_workdir(cls, workdir: str, working_size: int | None = None,
                   **kwargs) -> 'Remover':
    """Loads a matting stage's workdir (and the stage-1 run it names).

    `kwargs`: buckets, max_side, tile_overlap (see the class docstring).
    """
    # Checkpoint code is imported here only, so `from_export` does not need it.
    from bgmat import runs  # pylint: disable=g-import-not-at-top
    config = runs.read_config(workdir)
    if config.stage != 'matting':
      raise ValueError(f'{workdir} is a {config.stage!r} run; pass the matting run\'s workdir')
    # One rule for the weights (runs.eval_variables): EMA parameters with their
    # EMA BatchNorm statistics, as the run was evaluated.
    matting = runs.load_stage(workdir)
    preseg = runs.load_preseg(workdir)
    return cls(matting.module, matting.variables, preseg.module, preseg.variables,
               working_size or config.image_size, **kwargs)

  @classmethod
  def from_export(cls, path: str, buckets: resolution.Buckets | None = None,
                  max_side: int | None = None, tile_overlap: int | None = None
                  ) -> 'Remover':
    """Loads a `bgmat export` file: no configs, checkpoints or model code needed.

    The matting function's sides are symbolic, so any bucket set works; the
    default is the one in the file's header.
    """
    from bgmat import export  # pylint: disable=g-import-not-at-top
    header, functions = export.read_export(path)
    backend = jax.default_backend()
    # JAX names the GPU backend 'gpu'; exports name the platform ('cuda' or 'rocm').
    wanted = set({'gpu': ('cuda', 'rocm')}.get(backend, (backend,)))
    for exported in functions.values():
      if not wanted & set(exported.platforms):
        raise ValueError(f'{path} was exported for {list(exported.platforms)}, not for '
                         f'{backend!r}; re-export with --platforms including it')
    remover = cls.__new__(cls)
    remover._setup(header['working_size'],
                   buckets or resolution.Buckets.from_json(header['buckets']),
                   max_side, tile_overlap)
    if remover.buckets.stride % resolution.STRIDE:
      raise ValueError(f'bucket stride must be a multiple of {resolution.STRIDE}')
    remover.preseg_fn = functions['preseg'].call
    remover.matting_fn = functions['matting'].call
    remover._preseg_call = jax.jit(remover._counted('preseg', functions['preseg'].call))
    remover._matting_call = jax.jit(remover._counted('matting', functions['matting'].call))
    return remover

  def _presegment(self, images: Sequence[np.ndarray], batch_size: int) -> list[np.ndarray]:
    """Pre-segmentation of each photo at the working size: [(h, w) float32], h, w <= S."""
    priors = []
    for start in range(0, len(images), batch_size):
      boxed = [resolution.letterbox(image, self.working_size)
               for image in images[start:start + batch_size]]
      batch = resolution.pad_batch(np.stack([b for b, _ in boxed]), batch_size)
      probs = np.asarray(self._preseg_call(batch.astype(np.float32) / 255.0))
      priors += [prob[:h, :w, 0] for prob, (_, (h, w)) in zip(probs, boxed)]
    return priors

  def predict_batch(self, images: Sequence[np.ndarray], batch_size: int = 1,
                    with_preseg: bool = True) -> list[dict[str, np.ndarray]]:
    """[(H, W, 3) uint8] -> [{'alpha'[, 'preseg']}: (H, W) float32 in [0, 1]], same order.

    Photos (or tiles) of one bucket run together, `batch_size` at a time; a
    short batch is padded to `batch_size` so each bucket compiles once.
    """
    priors = self._presegment(images, batch_size)
    # Jobs: (photo index, bucket, image crop (h, w, 3) uint8, prior crop (h, w), where).
    jobs, sums = [], {}
    for index, (image, prior) in enumerate(zip(images, priors)):
      p = resolution.plan(*image.shape[:2], self.buckets, self.max_side)
      if p.size != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize(p.size[::-1], Image.BILINEAR))
      prior = resolution.resize(prior, p.size)
      if p.bucket is not None:
        jobs.append((index, p.bucket, image, prior, None))
        continue
      sums[index] = (np.zeros(p.size, np.float32), np.zeros(p.size, np.float32))
      for rows, cols, weights in resolution.tiles(*p.size, p.tile, self.tile_overlap):
        jobs.append((index, p.tile, image[rows, cols], prior[rows, cols], (rows, cols, weights)))
    alphas = {}
    by_bucket = collections.defaultdict(list)
    for job in jobs:
      by_bucket[job[1]].append(job)
    for (height, width), group in by_bucket.items():
      for start in range(0, len(group), batch_size):
        chunk = group[start:start + batch_size]
        image_batch = np.stack([resolution.pad_to(j[2], height, width) for j in chunk])
        prior_batch = np.stack([resolution.pad_to(j[3], height, width) for j in chunk])
        out = np.asarray(self._matting_call(
            resolution.pad_batch(image_batch, batch_size).astype(np.float32) / 255.0,
            resolution.pad_batch(prior_batch, batch_size)[..., None]))
        for (index, _, image, _, where), alpha in zip(chunk, out):
          alpha = alpha[:image.shape[0], :image.shape[1], 0]
          if where is None:
            alphas[index] = alpha
          else:  # Feathered blend: sum(w * alpha) / sum(w) over the tiles.
            rows, cols, weights = where
            sums[index][0][rows, cols] += weights * alpha
            sums[index][1][rows, cols] += weights
    for index, (total, weight) in sums.items():
      alphas[index] = total / weight
    results = []
    for index, image in enumerate(images):
      size = image.shape[:2]
      alpha = alphas.pop(index)
      if alpha.shape != size:  # Matted below the photo's size (max_side).
        alpha = resolution.resize(alpha, size)
      result = {'alpha': np.clip(alpha, 0.0, 1.0)}
      if with_preseg:
        result['preseg'] = np.clip(resolution.resize(priors[index], size), 0.0, 1.0)
      results.append(result)
    return results

  def predict(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 -> {'alpha', 'preseg'}: (H, W) float32 in [0, 1]."""
    return self.predict_batch([image])[0]

  def alpha(self, image: Any) -> np.ndarray:
    """(H, W) float32 alpha in [0, 1] of an (H, W, 3) image (numpy or PIL)."""
    return self.predict_batch([_as_rgb_array(image)], with_preseg=False)[0]['alpha']

  def __call__(self, image: Any, foreground_method: str = 'none'):
    """RGBA cut-out: numpy in -> (H, W, 4) uint8 numpy out; PIL in -> PIL out.

    The colours are the photo's own unless `foreground_method` is set
    ('blur_fusion' or 'multilevel', see `bgmat.foreground`).
    """
    rgba = self.cutout(image, format='rgba', foreground_method=foreground_method)
    return Image.fromarray(rgba, 'RGBA') if isinstance(image, Image.Image) else rgba

  def cutout(self, image: Any, format: str = 'rgba',  # pylint: disable=redefined-builtin
             bg: Any = 'white', foreground_method: str = 'blur_fusion') -> np.ndarray:
    """One output of FORMATS as uint8: rgba (H, W, 4), alpha (H, W), foreground or composite
    (H, W, 3). `bg` (composite only): a colour name / '#rrggbb', an RGB tuple, or an image."""
    return render(_as_rgb_array(image), self.alpha(image), format, bg=bg,
                  foreground_method=foreground_method)


FORMATS = {
    'rgba': 'PNG with alpha; colours are the estimated foreground',
    'alpha': 'greyscale PNG of the matte',
    'foreground': 'RGB PNG of the estimated foreground colours (no alpha)',
    'composite': 'JPEG of the foreground over --bg (a colour or a photo)',
}
_EXTENSIONS = {'rgba': '.png', 'alpha': '.png', 'foreground': '.png', 'composite': '.jpg'}


def parse_background(bg: Any) -> np.ndarray | tuple[int, int, int]:
  """A colour ('white', '#00ff00', (r, g, b)), an image path or an array -> RGB or (H, W, 3)."""
  if isinstance(bg, (tuple, list)) and len(bg) == 3:
    return tuple(int(c) for c in bg)
  if isinstance(bg, (np.ndarray, Image.Image)):
    return _as_rgb_array(bg)
  if isinstance(bg, str):
    if os.path.isfile(bg):
      return load_image(bg)
    try:
      return ImageColor.getrgb(bg)[:3]
    except ValueError as e:
      raise ValueError(f'--bg {bg!r} is neither an image file nor a colour (a name such '
                       'as white, or #rrggbb)') from e
  raise ValueError(f'Unsupported background {bg!r}')


def _cover(photo: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes `photo` to cover height x width (keeping its aspect) and centre-crops."""
  scale = max(height / photo.shape[0], width / photo.shape[1])
  new_h = max(height, round(photo.shape[0] * scale))
  new_w = max(width, round(photo.shape[1] * scale))
  resized = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.BICUBIC))
  top, left = (new_h - height) // 2, (new_w - width) // 2
  return resized[top:top + height, left:left + width]


def render(rgb: np.ndarray, alpha: np.ndarray,
           format: str = 'rgba',  # pylint: disable=redefined-builtin
           bg: Any = 'white', foreground_method: str = 'blur_fusion') -> np.ndarray:
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
    background = _cover(background, *rgb.shape[:2])
  a = alpha[..., None]
  return _to_u8(a * fg + (1 - a) * background.astype(np.float32) / 255.0)


def _to_u8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def _as_rgb_array(image: Any) -> np.ndarray:
  if isinstance(image, Image.Image):
    return np.asarray(image.convert('RGB'))
  array = np.asarray(image)
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (3, 4):
    raise ValueError(f'Expected an (H, W, 3) RGB image, got shape {array.shape}')
  if array.dtype != np.uint8:
    array = np.clip(np.round(array.astype(np.float32) * 255), 0, 255).astype(np.uint8)
  return array[..., :3]


def save_image_atomic(array: np.ndarray, path: str, quality: int = 95) -> None:
  """Writes PNG or JPEG (by extension) through a temporary file in the same directory + rename."""
  fmt = 'JPEG' if os.path.splitext(path)[1].lower() in ('.jpg', '.jpeg') else 'PNG'
  tmp = f'{path}.tmp-{os.getpid()}.{fmt.lower()}'
  try:
    # 4:4:4 chroma: subsampled colour smears the cut-out's edges into the new background.
    options = {'quality': quality, 'subsampling': 0} if fmt == 'JPEG' else {}
    Image.fromarray(array).save(tmp, format=fmt, **options)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_png_atomic(array: np.ndarray, path: str) -> None:
  """Writes a PNG through a temporary file in the same directory + rename."""
  save_image_atomic(array, path)


IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff', '.gif')


def expand_inputs(inputs: Sequence[str], recursive: bool = False
                  ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """Files, folders and globs -> ([(path, relative output stem)], [(input, error)]).

  A file or glob match gives its base name; a folder gives each image's path
  relative to that folder (subfolders only with `recursive`), so outputs stay
  inside the output directory and same-named photos in subfolders do not clash.
  """
  planned, errors = [], []
  for item in inputs:
    if os.path.isdir(item):
      found = []
      for root, dirs, files in os.walk(item):
        dirs.sort()
        if not recursive:
          dirs.clear()
        found += [os.path.join(root, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')]
      if not found:
        errors.append((item, 'no images in this folder'))
      planned += [(p, os.path.splitext(os.path.relpath(p, item))[0]) for p in found]
    elif not os.path.exists(item) and any(c in item for c in '*?['):
      matches = sorted(p for p in glob.glob(item, recursive=recursive) if os.path.isfile(p))
      if not matches:
        errors.append((item, 'no files match this pattern'))
      planned += [(p, _stem(p)) for p in matches]
    else:
      planned.append((item, _stem(item)))  # A missing file fails later, with the others.
  return planned, errors


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0] or 'image'


@dataclasses.dataclass
class Summary:
  """What `process_inputs` did: output paths written, inputs skipped, (input, error) failed."""
  written: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _decoded(items: Sequence[tuple], workers: int, in_flight: int):
  """Yields (item, (H, W, 3) uint8 or InputError) in order for items (path, ...),
  decoding in `workers` threads with at most `in_flight` photos ahead (bounded memory)."""
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    pending = collections.deque()
    for item in items:
      pending.append((item, pool.submit(load_image, item[0])))
      if len(pending) >= in_flight:
        yield _result(*pending.popleft())
    while pending:
      yield _result(*pending.popleft())


def _result(item, future):
  try:
    return item, future.result()
  except InputError as e:
    return item, e


def process_inputs(remover: Remover, inputs: Sequence[str], out_dir: str, *,
                   format: str = 'rgba',  # pylint: disable=redefined-builtin
                   bg: Any = 'white', foreground_method: str = 'blur_fusion',
                   recursive: bool = False, skip_existing: bool = False,
                   save_alpha: bool = False, batch_size: int = 1, workers: int = 2,
                   progress: bool | None = False, log=print, log_written: bool = True
                   ) -> Summary:
  """Cuts out every input (files, folders, globs) into `out_dir`; one bad input never
  stops the others. Outputs: OUT_DIR/<stem>.png (.jpg for composite), in input order.

  Photos are decoded by `workers` threads while the device runs; photos of one
  bucket are matted `batch_size` at a time. A window of W = 2 * max(batch_size, 4)
  decoded photos is matted together while up to W - 1 more decode, and nothing
  per photo is kept but its output path, so memory stays flat over any number
  of photos.

  Args:
    progress: a tqdm bar (images/s) on stderr; None: only when stderr is a terminal.
    log: called with one line per event; `log_written=False` keeps only errors.
  """
  if format not in FORMATS:
    raise ValueError(f'Unknown format {format!r}; known: {list(FORMATS)}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if format == 'composite':
    bg = parse_background(bg)  # Fail before any work; read a photo once.
  planned, failures = expand_inputs(inputs, recursive)
  for item, error in failures:
    log(f'error: {item}: {error}')
  summary = Summary(failures=list(failures))
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  bar = tqdm.tqdm(total=len(planned), unit='img', file=sys.stderr, dynamic_ncols=True,
                  disable=None if progress is None else not progress)
  if not bar.disable and log is print:
    log = lambda line: tqdm.tqdm.write(line, file=sys.stdout)  # Keeps the bar intact.
  todo, taken = [], set()
  for path, rel_stem in planned:
    stem, n = rel_stem, 1
    while stem in taken:  # Two inputs with one name: keep both.
      n += 1
      stem = f'{rel_stem}-{n}'
    taken.add(stem)
    target = os.path.join(out_dir, stem + _EXTENSIONS[format])
    if skip_existing and os.path.exists(target):
      if log_written:
        log(f'{path}: {target} exists, skipped')
      summary.skipped.append(path)
      bar.update()
      continue
    todo.append((path, stem, target))

  def write(path, stem, target, rgb, alpha):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    save_image_atomic(render(rgb, alpha, format, bg=bg, foreground_method=foreground_method),
                      target)
    if save_alpha and format != 'alpha':
      save_image_atomic(np.round(alpha * 255).astype(np.uint8),
                        os.path.join(out_dir, f'{stem}_alpha.png'))
    summary.written.append(target)
    if log_written:
      log(f'{path} -> {target}')

  window = 2 * max(batch_size, 4)
  loaded = []  # [((path, stem, target), rgb)]: at most `window`.
  for index, (item, rgb) in enumerate(_decoded(todo, workers, window)):
    if isinstance(rgb, InputError):
      log(f'error: {rgb}')
      summary.failures.append((item[0], str(rgb)))
      bar.update()
    else:
      loaded.append((item, rgb))
    if len(loaded) == window or (loaded and index == len(todo) - 1):
      results = remover.predict_batch([rgb for _, rgb in loaded], batch_size,
                                      with_preseg=False)
      for (item_done, rgb_done), result in zip(loaded, results):
        write(*item_done, rgb_done, result['alpha'])
        bar.update()
      loaded = []
  bar.close()
  return summary


def remove_files(remover: Remover, paths: Sequence[str], out_dir: str, *,
                 save_alpha: bool = False, log=print, **kwargs) -> list[tuple[str, str]]:
  """Writes OUT_DIR/<stem>.png (RGBA) per input; returns [(path, error)] of failures.

  Outputs are named by the input's base name only, so nothing is written
  outside `out_dir`. One bad input never stops the others. `kwargs` go to
  `process_inputs` (format, bg, foreground_method, recursive, skip_existing).
  """
  kwargs.setdefault('foreground_method', 'none')  # This function's original output.
  return process_inputs(remover, paths, out_dir, save_alpha=save_alpha, log=log,
                        **kwargs).failures
