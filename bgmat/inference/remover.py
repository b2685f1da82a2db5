"""Background removal: `Remover` (Python API) behind `bgmat remove` and `bgmat.remove`.

  remover = bgmat.Remover.from_workdir('runs/demo/matting')
  remover = bgmat.Remover.from_export('model.bgmat')   # or a `bgmat export` file
  rgba = remover(image)          # numpy (H, W, 3) uint8 -> (H, W, 4) uint8; PIL -> PIL
  alpha = remover.alpha(image)   # (H, W) float32 in [0, 1]
  out = remover.cutout(image, format='composite', bg='white')   # see FORMATS

Every input (a path, a PIL image, a numpy array of any dtype) is read by
`bgmat.inference.image_io.read_photo`, the reader `bgmat remove` uses too: same pixels,
same orientation, same errors (`InputError`) either way.

The pre-segmentation runs at a fixed working size (the photo letterboxed into
a square); the matting generator at up to the photo's own size, padded to a
shape bucket (`bgmat.inference.resolution`), in tiles above the largest bucket.
`process_inputs` (behind `bgmat remove`, in `bgmat.inference.remove_run`) decodes photos
in a thread pool while the device runs, batches photos of one bucket and shows
a progress bar.
"""

import collections
import functools
from typing import Any, Sequence
import warnings

import jax
import numpy as np
from PIL import Image

from bgmat import foreground
from bgmat.inference import compile_cache
from bgmat.inference import image_io
from bgmat.inference import render as render_lib
from bgmat.inference import resolution

# bgmat's one pixel limit: photos larger than this are refused as possible
# decompression bombs (Pillow's own, lower limit does not apply).
MAX_PIXELS = image_io.MAX_PIXELS

InputError = image_io.InputError
# Rendering lives in `bgmat.inference.render`; these names stay importable here.
FORMATS = render_lib.FORMATS
constrain_alpha = render_lib.constrain_alpha
parse_background = render_lib.parse_background
render = render_lib.render


def load_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Reads a photo as (H, W, 3) uint8 RGB, upright per its EXIF orientation
  (`image_io.read_photo`); raises InputError naming the file."""
  return image_io.read_photo(path, max_pixels).rgb


class Remover:
  """Pre-segmentation + matting models with their weights, ready to run.

  The pre-segmentation runs at `working_size` (the photo letterboxed into a
  square, one compiled shape). The matting generator runs at (up to) the
  photo's own size, its prior being the pre-segmentation upsampled to that
  size, padded to a shape bucket (`bgmat.inference.resolution`): one compiled function
  per bucket and batch size, counted in `compiles`. Photos above the largest
  bucket are matted in overlapping, feathered tiles; `max_side` caps the
  matting size (the alpha is then resized back). `max_pixels` is the limit of
  the photos it reads (bgmat's, default 100 MP; larger ones are refused).
  `preseg_flip` / `preseg_scales`: test-time augmentation of the
  pre-segmentation (`runs.preseg_probability`: logits averaged over the mirror
  and over the working size times each scale; default one plain pass).

  The generator was trained on crops whose prior is the pre-segmentation of
  that same crop, image and prior at one resolution (`stages.MattingStage.step`).
  Here it sees the photo at a higher resolution than in training, the prior
  upsampled from the working size: this is how matting refiners are used. The
  network is fully convolutional and refines the prior's edges from local
  image evidence; the global decision (what is foreground) is the prior's.
  """

  def __init__(self, matting_model, matting_vars, preseg_model, preseg_vars,
               working_size: int, *, buckets: resolution.Buckets | None = None,
               max_side: int | None = None, tile_overlap: int | None = None,
               max_pixels: int = MAX_PIXELS, preseg_flip: bool = False,
               preseg_scales: Sequence[float] = (1.0,)):
    matting_vars = jax.device_put(matting_vars)
    preseg_vars = jax.device_put(preseg_vars)

    from bgmat import runs  # pylint: disable=g-import-not-at-top
    # Checked now, not at first use.
    preseg_scales = resolution.check_scales(preseg_scales, 'preseg_scales')

    def preseg_apply(variables, image):
      return runs.preseg_probability(preseg_model, variables, image, flip=preseg_flip,
                                     scales=preseg_scales)

    def matting_apply(variables, image, prior):
      return matting_model.apply(variables, image, prior, train=False)

    # The modules and weights, for `bgmat export --format onnx` (bgmat.export_onnx).
    self.stages = {'preseg': (preseg_model, preseg_vars), 'matting': (matting_model, matting_vars)}
    # Closures over the weights, for `bgmat export` (weights become constants).
    self.preseg_fn = functools.partial(preseg_apply, preseg_vars)
    self.matting_fn = functools.partial(matting_apply, matting_vars)
    self._setup(working_size, buckets, max_side, tile_overlap, max_pixels)
    # Weights as arguments, not constants, so each bucket compiles quickly.
    preseg_jit = jax.jit(self._counted('preseg', preseg_apply))
    matting_jit = jax.jit(self._counted('matting', matting_apply))
    self._preseg_call = functools.partial(preseg_jit, preseg_vars)
    self._matting_call = functools.partial(matting_jit, matting_vars)

  def _setup(self, working_size, buckets, max_side, tile_overlap, max_pixels=MAX_PIXELS):
    self.working_size = int(working_size)
    if max_pixels < 1:
      raise ValueError(f'max_pixels must be positive, got {max_pixels}')
    self.max_pixels = int(max_pixels)
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

    `kwargs`: buckets, max_side, tile_overlap, max_pixels, preseg_flip,
    preseg_scales (see the class docstring).
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
  def from_configs(cls, preseg_model_config, matting_model_config, working_size: int,
                   seed: int = 0, **kwargs) -> 'Remover':
    """Both stages freshly initialised (random weights) from their model configs
    (`config.model` of a preseg / matting config: name + kwargs): for
    benchmarks, whose times do not depend on the weights, and tests.

    `kwargs`: buckets, max_side, tile_overlap, max_pixels, preseg_flip,
    preseg_scales (see the class docstring).
    """
    from bgmat import runs  # pylint: disable=g-import-not-at-top
    preseg = runs.build_model(preseg_model_config)
    matting = runs.build_model(matting_model_config)
    image = jax.numpy.zeros((1, working_size, working_size, 3))
    prior = jax.numpy.zeros((1, working_size, working_size, 1))
    preseg_key, matting_key = jax.random.split(jax.random.key(seed))
    preseg_vars = jax.jit(lambda k: preseg.init(k, image, train=False))(preseg_key)
    matting_vars = jax.jit(lambda k: matting.init(k, image, prior, train=False))(matting_key)
    return cls(matting, matting_vars, preseg, preseg_vars, working_size, **kwargs)

  @classmethod
  def from_export(cls, path: str, buckets: resolution.Buckets | None = None,
                  max_side: int | None = None, tile_overlap: int | None = None,
                  max_pixels: int = MAX_PIXELS) -> 'Remover':
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
                   max_side, tile_overlap, max_pixels)
    if remover.buckets.stride % resolution.STRIDE:
      raise ValueError(f'bucket stride must be a multiple of {resolution.STRIDE}')
    remover.preseg_fn = functions['preseg'].call
    remover.matting_fn = functions['matting'].call
    remover._preseg_call = jax.jit(remover._counted('preseg', functions['preseg'].call))
    remover._matting_call = jax.jit(remover._counted('matting', functions['matting'].call))
    return remover

  def presegment(self, images: Sequence[np.ndarray], batch_size: int = 1) -> list[np.ndarray]:
    """[(H, W, 3) uint8] -> the pre-segmentation probability of each photo at the
    working size S: [(h, w) float32 in [0, 1]], the letterboxed photo's area
    (h, w <= S, long side S). What `predict_batch(priors=...)` takes back."""
    priors = []
    for start in range(0, len(images), batch_size):
      boxed = [resolution.letterbox(image, self.working_size)
               for image in images[start:start + batch_size]]
      batch = resolution.pad_batch(np.stack([b for b, _ in boxed]), batch_size)
      compile_cache.admit(('preseg', id(self), batch.shape))
      probs = np.asarray(self._preseg_call(batch.astype(np.float32) / 255.0))
      priors += [prob[:h, :w, 0] for prob, (_, (h, w)) in zip(probs, boxed)]
    return priors

  def predict_batch(self, images: Sequence[np.ndarray], batch_size: int = 1,
                    with_preseg: bool = True, priors: Sequence[np.ndarray] | None = None
                    ) -> list[dict[str, np.ndarray]]:
    """[(H, W, 3) uint8] -> [{'alpha'[, 'preseg']}: (H, W) float32 in [0, 1]], same order.

    Photos (or tiles) of one bucket run together, `batch_size` at a time; a
    short batch is padded to `batch_size` so each bucket compiles once.
    `priors`: the pre-segmentations to use, one per image as `presegment`
    returns them (e.g. smoothed over video frames, `bgmat.inference.video`); None runs
    `presegment`.

    Raises:
      ValueError: `priors` not one per image.
    """
    if not len(images):
      return []
    if priors is None:
      priors = self.presegment(images, batch_size)
    elif len(priors) != len(images):
      raise ValueError(f'{len(priors)} priors for {len(images)} images')
    # Jobs: (photo index, bucket, image crop (h, w, 3) uint8, prior crop (h, w), where).
    jobs, sums = [], {}
    for index, (image, prior) in enumerate(zip(images, priors)):
      p = resolution.plan(*image.shape[:2], self.buckets, self.max_side, self.tile_overlap)
      if p.size != image.shape[:2]:
        image = np.asarray(Image.fromarray(image).resize(p.size[::-1], Image.BILINEAR))
      prior = resolution.resize(prior, p.size)
      if p.bucket is not None:
        jobs.append((index, p.bucket, image, prior, None))
        continue
      sums[index] = (np.zeros(p.size, np.float32), np.zeros(p.size, np.float32))
      overlap = self.tile_overlap if p.overlap is None else p.overlap
      for rows, cols, weights in resolution.tiles(*p.size, p.tile, overlap):
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
        compile_cache.admit(('matting', id(self), batch_size, height, width))
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

  def read(self, image: Any) -> image_io.Photo:
    """Any input of the API (path, PIL image, numpy array) -> `image_io.Photo`,
    by `image_io.read_photo` (the reader of `bgmat remove`); what it noted
    (first frame of an animation, colours converted) is issued as a warning.

    Raises:
      InputError: an input that cannot be read by its real range.
    """
    photo = image_io.read_photo(image, self.max_pixels)
    for note in photo.notes:
      warnings.warn(f'{photo.name}: {note}', stacklevel=3)
    return photo

  def _alpha(self, photo: image_io.Photo, keep_transparency: bool) -> np.ndarray:
    alpha = self.predict_batch([photo.rgb], with_preseg=False)[0]['alpha']
    return constrain_alpha(alpha, photo.alpha if keep_transparency else None)

  def alpha(self, image: Any, keep_transparency: bool = False) -> np.ndarray:
    """(H, W) float32 alpha in [0, 1] of an image (path, PIL or numpy, see `read`).

    keep_transparency: an input's own alpha channel bounds the result
      (`constrain_alpha`): what was transparent stays transparent.
    """
    return self._alpha(self.read(image), keep_transparency)

  def __call__(self, image: Any, foreground_method: str = foreground.DEFAULT_METHOD,
               keep_transparency: bool = False):
    """RGBA cut-out: numpy (or path) in -> (H, W, 4) uint8 numpy out; PIL in -> PIL
    out (upright, with the photo's ICC profile).

    The colours are the estimated foreground (`bgmat.foreground`; default
    'blur_fusion', as the CLI), or the photo's own with foreground_method='none'.
    """
    photo = self.read(image)
    rgba = render(photo.rgb, self._alpha(photo, keep_transparency), 'rgba',
                  foreground_method=foreground_method)
    if not isinstance(image, Image.Image):
      return rgba
    out = Image.fromarray(rgba, 'RGBA')
    if photo.icc_profile:
      out.info['icc_profile'] = photo.icc_profile
    return out

  def cutout(self, image: Any, format: str = 'rgba',  # pylint: disable=redefined-builtin
             bg: Any = 'white', foreground_method: str = foreground.DEFAULT_METHOD,
             keep_transparency: bool = False) -> np.ndarray:
    """One output of FORMATS as uint8: rgba (H, W, 4), alpha (H, W), foreground or composite
    (H, W, 3). `bg` (composite only): a colour name / '#rrggbb', an RGB tuple, or an image."""
    if format not in FORMATS:  # Before the model runs.
      raise ValueError(f'Unknown format {format!r}; known: {list(FORMATS)}')
    photo = self.read(image)
    return render(photo.rgb, self._alpha(photo, keep_transparency), format, bg=bg,
                  foreground_method=foreground_method)


# Folder batching, naming and writing live in `bgmat.inference.remove_run`; these names
# stay importable from here (`remover.process_inputs`, ...). Resolved on first
# use (PEP 562), so that either module can be imported first.
_FROM_REMOVE_RUN = frozenset({
    'IMAGE_EXTENSIONS', 'OutputError', 'Summary', 'expand_inputs', 'prepare_output',
    'process_inputs', 'remove_files', 'save_image_atomic', 'save_png_atomic'})


def __getattr__(name: str):
  if name in _FROM_REMOVE_RUN:
    from bgmat.inference import remove_run  # pylint: disable=g-import-not-at-top
    return getattr(remove_run, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
