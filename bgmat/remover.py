"""Background removal: `Remover` (Python API) behind `bgmat remove` and `bgmat.remove`.

  remover = bgmat.Remover.from_workdir('runs/demo/matting')
  rgba = remover(image)          # numpy (H, W, 3) uint8 -> (H, W, 4) uint8; PIL -> PIL
  alpha = remover.alpha(image)   # (H, W) float32 in [0, 1]

Both stages run at a fixed working size (the photo letterboxed into a square,
so one compiled shape serves every photo), and the alpha is resized back to
the photo's own size.
"""

import json
import os
from typing import Any, Sequence
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageOps

from bgmat import checkpointing
from bgmat import train

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

  @classmethod
  def from_workdir(cls, workdir: str, working_size: int | None = None) -> 'Remover':
    """Loads a matting stage's workdir (and the stage-1 run it names)."""
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

  def predict(self, image: np.ndarray) -> dict[str, np.ndarray]:
    """(H, W, 3) uint8 -> {'alpha', 'preseg'}: (H, W) float32 in [0, 1]."""
    height, width = image.shape[:2]
    boxed, (box_h, box_w) = _letterbox(image, self.working_size)
    batch = jnp.asarray(boxed[None], jnp.float32) / 255.0
    alpha, prior = self._predict(self._matting_vars, self._preseg_vars, batch)
    out = {}
    for key, value in (('alpha', alpha), ('preseg', prior)):
      small = np.asarray(value[0, :box_h, :box_w, 0], np.float32)
      full = Image.fromarray(small, mode='F').resize((width, height), Image.BILINEAR)
      out[key] = np.clip(np.asarray(full), 0.0, 1.0)
    return out

  def alpha(self, image: Any) -> np.ndarray:
    return self.predict(_as_rgb_array(image))['alpha']

  def __call__(self, image: Any):
    """RGBA cut-out: numpy in -> (H, W, 4) uint8 numpy out; PIL in -> PIL out."""
    rgb = _as_rgb_array(image)
    alpha = self.alpha(rgb)
    rgba = np.concatenate([rgb, np.round(alpha * 255).astype(np.uint8)[..., None]], axis=-1)
    return Image.fromarray(rgba, 'RGBA') if isinstance(image, Image.Image) else rgba


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


def save_png_atomic(array: np.ndarray, path: str) -> None:
  """Writes a PNG through a temporary file in the same directory + rename."""
  tmp = f'{path}.tmp-{os.getpid()}.png'
  try:
    Image.fromarray(array).save(tmp, format='PNG')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def remove_files(remover: Remover, paths: Sequence[str], out_dir: str, *,
                 save_alpha: bool = False, log=print) -> list[tuple[str, str]]:
  """Writes OUT_DIR/<stem>.png (RGBA) per input; returns [(path, error)] of failures.

  Outputs are named by the input's base name only, so nothing is written
  outside `out_dir`. One bad input never stops the others.
  """
  os.makedirs(out_dir, exist_ok=True)
  failures = []
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0] or 'image'
    try:
      rgb = load_image(path)
    except InputError as e:
      log(f'error: {e}')
      failures.append((path, str(e)))
      continue
    alpha = remover.alpha(rgb)
    alpha_u8 = np.round(alpha * 255).astype(np.uint8)
    target = os.path.join(out_dir, f'{stem}.png')
    save_png_atomic(np.concatenate([rgb, alpha_u8[..., None]], axis=-1), target)
    if save_alpha:
      save_png_atomic(alpha_u8, os.path.join(out_dir, f'{stem}_alpha.png'))
    log(f'{path} -> {target}')
  return failures
