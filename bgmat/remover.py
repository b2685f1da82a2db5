"""Background removal: `Remover` (Python API) behind `bgmat remove` and `bgmat.remove`.

  remover = bgmat.Remover.from_workdir('runs/demo/matting')
  remover = bgmat.Remover.from_export('model.bgmat')   # or a `bgmat export` file
  rgba = remover(image)          # numpy (H, W, 3) uint8 -> (H, W, 4) uint8; PIL -> PIL
  alpha = remover.alpha(image)   # (H, W) float32 in [0, 1]
  out = remover.cutout(image, format='composite', bg='white')   # see FORMATS

Both stages run at a fixed working size (the photo letterboxed into a square,
so one compiled shape serves every photo), and the alpha is resized back to
the photo's own size.
"""

import dataclasses
import glob
import json
import os
from typing import Any, Sequence
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageColor
from PIL import ImageOps

from bgmat import foreground

# Photos larger than this are refused as possible decompression bombs.
MAX_PIXELS = 100_000_000


class InputError(ValueError):
  """A file that cannot be read as an image; the message names the file."""


def load_image(path: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """Reads a photo as (H, W, 3) uint8 RGB, upright per its EXIF orientation."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(path) as img:
        if img.width * img.height > max_pixels:
          raise InputError(f'{path}: {img.width}x{img.height} pixels is over the '
                           f'limit of {max_pixels} (possible decompression bomb)')
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
          array = np.asarray(img, dtype=np.float64)
          img = Image.fromarray(np.clip(array / 257.0, 0, 255).astype(np.uint8))
        if img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and 'transparency' in img.info):
          img = img.convert('RGBA').convert('RGB')
        return np.asarray(img.convert('RGB'))
  except InputError:
    raise
  except FileNotFoundError as e:
    raise InputError(f'{path}: no such file') from e
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
          Image.DecompressionBombWarning) as e:
    raise InputError(f'{path}: not a readable image ({type(e).__name__}: {e})') from e


def _letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """Resizes the long side to `size` and pads (edge values) to size x size."""
  height, width = image.shape[:2]
  scale = size / max(height, width)
  new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
  padded = np.pad(resized, ((0, size - new_h), (0, size - new_w), (0, 0)), mode='edge')
  return padded, (new_h, new_w)


class Remover:
  """Pre-segmentation + matting models with their weights, ready to run."""

  def __init__(self, matting_model, matting_vars, preseg_model, preseg_vars,
               working_size: int):
    self.working_size = working_size
    self._matting_vars = jax.device_put(matting_vars)
    self._preseg_vars = jax.device_put(preseg_vars)

    def predict(matting_vars, preseg_vars, image):
      prior = jax.nn.sigmoid(preseg_model.apply(preseg_vars, image, train=False))
      return matting_model.apply(matting_vars, image, prior, train=False), prior

    self._predict = jax.jit(predict)

  def batch_fn(self, image: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, S, S, 3) float32 in [0, 1] -> (alpha, preseg), each (B, S, S, 1); S = working_size."""
    return self._predict(self._matting_vars, self._preseg_vars, image)

  @classmethod
  def from_workdir(cls, workdir: str, working_size: int | None = None) -> 'Remover':
    """Loads a matting stage's workdir (and the stage-1 run it names)."""
    # Training code is imported here only, so `from_export` does not need it.
    from bgmat import checkpointing  # pylint: disable=g-import-not-at-top
    from bgmat import train  # pylint: disable=g-import-not-at-top
    config_path = os.path.join(workdir, 'config.json')
    if not os.path.exists(config_path):
      raise FileNotFoundError(f'{config_path} not found: --workdir must be a trained '
                              'matting run (python -m bgmat.main --config configs/matting.py)')
    with open(config_path, encoding='utf-8') as f:
      config = ml_collections.ConfigDict(json.load(f))
    if config.stage != 'matting':
      raise ValueError(f'{workdir} is a {config.stage!r} run; pass the matting run\'s workdir')
    state = checkpointing.restore_state_only(workdir)
    params = state['ema_params'] if config.eval_ema else state['params']
    matting_vars = {'params': params, 'batch_stats': state['batch_stats']}
    preseg_model, preseg_vars = train.load_frozen_preseg(
        train.resolve_preseg_workdir(config, workdir))
    return cls(train.build_model(config.model), matting_vars, preseg_model, preseg_vars,
               working_size or config.image_size)

  @classmethod
  def from_export(cls, path: str) -> 'Remover':
    """Loads a `bgmat export` file: no configs, checkpoints or model code needed."""
    from bgmat import export  # pylint: disable=g-import-not-at-top
    header, exported = export.read_export(path)
    backend = jax.default_backend()
    # JAX names the GPU backend 'gpu'; exports name the platform ('cuda' or 'rocm').
    if not set({'gpu': ('cuda', 'rocm')}.get(backend, (backend,))) & set(exported.platforms):
      raise ValueError(f'{path} was exported for {list(exported.platforms)}, not for '
                       f'{backend!r}; re-export with --platforms including it')
    remover = cls.__new__(cls)
    remover.working_size = int(header['working_size'])
    call = jax.jit(exported.call)
    remover.batch_fn = lambda image: tuple(call(image))
    return remover

  def predict(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 -> {'alpha', 'preseg'}: (H, W) float32 in [0, 1]."""
    height, width = image.shape[:2]
    boxed, (box_h, box_w) = _letterbox(image, self.working_size)
    batch = jnp.asarray(boxed[None], jnp.float32) / 255.0
    alpha, prior = self.batch_fn(batch)
    out = {}
    for key, value in (('alpha', alpha), ('preseg', prior)):
      small = np.asarray(value[0, :box_h, :box_w, 0], np.float32)
      full = Image.fromarray(small, mode='F').resize((width, height), Image.BILINEAR)
      out[key] = np.clip(np.asarray(full), 0.0, 1.0)
    return out

  def alpha(self, image: Any) -> np.ndarray:
    return self.predict(_as_rgb_array(image))['alpha']

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


def process_inputs(remover: Remover, inputs: Sequence[str], out_dir: str, *,
                   format: str = 'rgba',  # pylint: disable=redefined-builtin
                   bg: Any = 'white', foreground_method: str = 'blur_fusion',
                   recursive: bool = False, skip_existing: bool = False,
                   save_alpha: bool = False, log=print) -> Summary:
  """Cuts out every input (files, folders, globs) into `out_dir`; one bad input never
  stops the others. Outputs: OUT_DIR/<stem>.png (.jpg for composite)."""
  if format not in FORMATS:
    raise ValueError(f'Unknown format {format!r}; known: {list(FORMATS)}')
  if format == 'composite':
    bg = parse_background(bg)  # Fail before any work; read a photo once.
  planned, failures = expand_inputs(inputs, recursive)
  for item, error in failures:
    log(f'error: {item}: {error}')
  summary = Summary(failures=list(failures))
  out_dir = os.path.abspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  taken = set()
  for path, rel_stem in planned:
    stem, n = rel_stem, 1
    while stem in taken:  # Two inputs with one name: keep both.
      n += 1
      stem = f'{rel_stem}-{n}'
    taken.add(stem)
    target = os.path.join(out_dir, stem + _EXTENSIONS[format])
    if skip_existing and os.path.exists(target):
      log(f'{path}: {target} exists, skipped')
      summary.skipped.append(path)
      continue
    try:
      rgb = load_image(path)
    except InputError as e:
      log(f'error: {e}')
      summary.failures.append((path, str(e)))
      continue
    alpha = remover.alpha(rgb)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    save_image_atomic(render(rgb, alpha, format, bg=bg, foreground_method=foreground_method),
                      target)
    if save_alpha and format != 'alpha':
      save_image_atomic(np.round(alpha * 255).astype(np.uint8),
                        os.path.join(out_dir, f'{stem}_alpha.png'))
    summary.written.append(target)
    log(f'{path} -> {target}')
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
