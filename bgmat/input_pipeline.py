"""Everything between a TFDS data source and a global batch.

TFDS array_record data source -> Grain `MapDataset`: shuffle by seed -> repeat
-> per-example augmentation (`random_map`, seeded by the element's index in
this global stream, so results depend neither on the number of workers nor on
the number of processes) -> this process's rows of each global batch ->
`IterDataset` (optionally multi-process prefetch). Global batch b is elements
[b * G, (b + 1) * G) of the stream; process p reads (and decodes) only rows
[p * P, (p + 1) * P) of it, P = G / process_count: the global batches are the
same whatever the number of processes. The iterator state is checkpointable
together with the train state (see `checkpointing.py`).

Training examples (numpy, per process) hold
  image, fg, bg: (H, W, 3) float32 in [0, 1], image = alpha * fg + (1 - alpha) * bg
  alpha:         (H, W, 1) float32 in [0, 1]
  trimap:        (H, W, 1) float32 in {0, 0.5, 1} made from alpha
  prior:         (H, W, 1) float32, a perturbed ground truth mask standing in for
                 the pre-segmentation output (only when `config.prior == 'perturbed_gt'`)
"""

import dataclasses
import importlib
import sys
from typing import Any, Iterator

from absl import flags
import grain
import numpy as np
from PIL import Image
from scipy import ndimage

from bgmat import trimap as trimap_lib

_RGB_KEYS = ('image', 'fg', 'bg')


def open_source(dataset: str, split: str, data_dir: str | None):
  """Random-access TFDS data source for `dataset` ('name/config') and `split`.

  Registered builders (ours live in `data_prep/`) are imported first; any other
  prepared TFDS directory is read from its files, without its builder code.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  module = 'data_prep.' + dataset.split('/')[0].split(':')[0]
  try:
    importlib.import_module(module)
  except ModuleNotFoundError as e:
    if e.name != module:
      raise
  try:
    return tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises several types for a missing data set.
    raise FileNotFoundError(
        f'Cannot open TFDS data set {dataset!r} split {split!r} in data_dir '
        f'{data_dir!r}: {e}. Build it first, e.g. `python -m data_prep.build '
        f'{dataset.split("/")[0]} --data_dir {data_dir}`.') from e


# ---------------------------------------------------------------------------
# Per-example transforms (numpy, run in Grain workers).
# ---------------------------------------------------------------------------


def _resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a uint8 (H, W, C) array to size = (height, width)."""
  if array.shape[:2] == tuple(size):
    return array
  channels = [Image.fromarray(array[..., c]).resize((size[1], size[0]), Image.BILINEAR)
              for c in range(array.shape[-1])]
  return np.stack([np.asarray(c) for c in channels], axis=-1)


def _edge_biased_crop_box(alpha: np.ndarray, side: int, edge_bias: float,
                          rng: np.random.Generator) -> tuple[int, int]:
  """Top-left corner of a side x side crop, centred on the alpha edge with
  probability `edge_bias` (where the matte is fractional), else uniform."""
  height, width = alpha.shape[:2]
  center = None
  if rng.random() < edge_bias:
    ys, xs = np.nonzero((alpha[..., 0] > 0) & (alpha[..., 0] < 255))
    if len(ys):
      k = rng.integers(len(ys))
      center = (ys[k], xs[k])
  if center is None:
    center = (rng.integers(height), rng.integers(width))
  top = int(np.clip(center[0] - side // 2, 0, height - side))
  left = int(np.clip(center[1] - side // 2, 0, width - side))
  return top, left


def _random_crop_resize(arrays: dict[str, np.ndarray], alpha: np.ndarray, size: int,
                        scale: tuple[float, float], edge_bias: float,
                        rng: np.random.Generator) -> dict[str, np.ndarray]:
  height, width = alpha.shape[:2]
  side = max(8, int(round(rng.uniform(*scale) * min(height, width))))
  side = min(side, height, width)
  top, left = _edge_biased_crop_box(alpha, side, edge_bias, rng)
  return {k: _resize(v[top:top + side, left:left + side], (size, size))
          for k, v in arrays.items()}


def _jitter(rgb: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
  """Per-channel affine colour jitter (gain and offset) plus saturation."""
  if strength <= 0:
    return rgb
  gain = 1.0 + rng.uniform(-strength, strength, size=3).astype(np.float32)
  offset = rng.uniform(-strength / 2, strength / 2, size=3).astype(np.float32)
  out = rgb * gain + offset
  gray = out.mean(axis=-1, keepdims=True)
  saturation = np.float32(1.0 + rng.uniform(-strength, strength))
  out = gray + saturation * (out - gray)
  return np.clip(out, 0.0, 1.0)


# ITU-R BT.601 luma weights (as PIL's `convert('L')`).
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
  """(..., 3) float RGB in [0, 1] -> the same shape, every channel the BT.601
  luma `0.299 R + 0.587 G + 0.114 B` (a black-and-white photo as 3 channels)."""
  luma = rgb @ LUMA_WEIGHTS
  return np.repeat(luma[..., None], 3, axis=-1)


def perturb_mask(alpha: np.ndarray, rng: np.random.Generator,
                 max_morph: int = 6, max_blur: float = 3.0,
                 max_holes: int = 3) -> np.ndarray:
  """A coarse, imperfect foreground probability made from the true alpha.

  Stands in for the pre-segmentation output while training the matting stage
  on its own: threshold, random erosion or dilation, random holes and blobs,
  then a blur so the prior is soft like a sigmoid output.

  Args:
    alpha: (H, W, 1) float32 in [0, 1].
  Returns:
    (H, W, 1) float32 in [0, 1].
  """
  mask = alpha[..., 0] >= 0.5
  height, width = mask.shape
  radius = int(rng.integers(0, max_morph + 1))
  if radius:
    op = ndimage.binary_dilation if rng.random() < 0.5 else ndimage.binary_erosion
    mask = op(mask, iterations=radius)
  yy, xx = np.mgrid[:height, :width]
  for _ in range(int(rng.integers(0, max_holes + 1))):
    cy, cx = rng.integers(height), rng.integers(width)
    ry, rx = rng.uniform(0.02, 0.08, size=2) * np.array([height, width])
    blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    mask = mask ^ blob if rng.random() < 0.5 else mask & ~blob
  prior = mask.astype(np.float32)
  sigma = rng.uniform(0.0, max_blur)
  if sigma > 0.3:
    prior = ndimage.gaussian_filter(prior, sigma)
  return np.clip(prior, 0.0, 1.0)[..., None]


def _fit(shape: tuple[int, int], side: int) -> tuple[int, int]:
  """(height, width) of a `shape` photo whose long side is resized to `side`."""
  height, width = shape
  scale = side / max(height, width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def letterbox(array: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """(size, size, C) uint8: the long side resized to `size`, bottom/right
  edge-padded, as `bgmat.inference.resolution.letterbox` prepares photos for
  `bgmat remove`; and the (height, width) of the photo inside it."""
  new_size = _fit(array.shape[:2], size)
  resized = _resize(array, new_size)
  pad = ((0, size - new_size[0]), (0, size - new_size[1]), (0, 0))
  return np.pad(resized, pad, mode='edge'), new_size


def zoom_out(array: np.ndarray, size: int, box: int, top: int, left: int) -> np.ndarray:
  """(size, size, C) uint8: the record letterboxed into a `box` x `box`
  square (long side resized to `box`), its top-left corner at (top, left)
  of the canvas, the rest edge-padded as `letterbox` pads its bars: people
  smaller in the frame than the data set shows them (a full-body or group
  photo's head). `box == size` with top = left = 0 is `letterbox`.

  Raises:
    ValueError: the placed photo would leave the canvas.
  """
  new_size = _fit(array.shape[:2], box)
  if not (0 <= top <= size - new_size[0] and 0 <= left <= size - new_size[1]):
    raise ValueError(f'a {new_size} photo at ({top}, {left}) leaves the {size} px canvas')
  resized = _resize(array, new_size)
  pad = ((top, size - new_size[0] - top), (left, size - new_size[1] - left), (0, 0))
  return np.pad(resized, pad, mode='edge')


@dataclasses.dataclass(frozen=True)
class Augment:
  """Training transform: crop at the edge (or letterbox), flip, photo or
  (re-)composite, jitter. See `config_defaults.base` for the fields."""

  source: Any
  image_size: int
  crop_scale: tuple[float, float] = (0.5, 1.0)
  edge_bias: float = 0.5
  flip: bool = True
  recomposite_prob: float = 0.5
  jitter: float = 0.1
  trimap_radius: int = 5
  prior: str = 'none'
  use_photo_prob: float = 0.0
  letterbox_prob: float = 0.0
  zoom_out_prob: float = 0.0
  zoom_out_scale: tuple[float, float] = (0.5, 1.0)
  grayscale_prob: float = 0.0

  def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    size = self.image_size
    # Random draws only for the options in use, so that configs without them
    # keep their exact example stream.
    use_photo = bool(self.use_photo_prob) and rng.random() < self.use_photo_prob
    keys = ('fg', 'alpha', 'bg') + (('image',) if use_photo else ())
    if self.zoom_out_prob and rng.random() < self.zoom_out_prob:
      box = max(8, min(size, int(round(rng.uniform(*self.zoom_out_scale) * size))))
      inner = _fit(record['alpha'].shape[:2], box)
      top = int(rng.integers(0, size - inner[0] + 1))
      left = int(rng.integers(0, size - inner[1] + 1))
      parts = {k: zoom_out(record[k], size, box, top, left) for k in keys}
    elif self.letterbox_prob and rng.random() < self.letterbox_prob:
      parts = {k: letterbox(record[k], size)[0] for k in keys}
    else:
      parts = _random_crop_resize({k: record[k] for k in keys}, record['alpha'], size,
                                  self.crop_scale, self.edge_bias, rng)
    if not use_photo and self.recomposite_prob and rng.random() < self.recomposite_prob:
      # A new background: another example's, from a crop of its own.
      other = self.source[int(rng.integers(len(self.source)))]['bg']
      parts['bg'] = _random_crop_resize({'bg': other}, other[..., :1], size,
                                        self.crop_scale, 0.0, rng)['bg']
    if self.flip and rng.random() < 0.5:
      parts = {k: v[:, ::-1] for k, v in parts.items()}
    if self.flip and rng.random() < 0.5:
      parts['bg'] = parts['bg'][:, ::-1]
    alpha_u8 = np.ascontiguousarray(parts['alpha'])
    alpha = alpha_u8.astype(np.float32) / 255.0
    fg = _jitter(parts['fg'].astype(np.float32) / 255.0, self.jitter, rng)
    bg = _jitter(parts['bg'].astype(np.float32) / 255.0, self.jitter, rng)
    if use_photo:
      # The photo itself: no re-composite from estimated fg / bg, whose
      # errors would otherwise be in every training image.
      image = _jitter(parts['image'].astype(np.float32) / 255.0, self.jitter, rng)
    else:
      image = alpha * fg + (1.0 - alpha) * bg
    if self.grayscale_prob and rng.random() < self.grayscale_prob:
      # A black-and-white photo: image, fg and bg alike (image = alpha fg +
      # (1 - alpha) bg still holds, luma being linear).
      image, fg, bg = to_grayscale(image), to_grayscale(fg), to_grayscale(bg)
    example = {
        'image': image,
        'alpha': alpha,
        'fg': fg,
        'bg': bg,
        'trimap': trimap_lib.trimap01_from_alpha(alpha_u8, self.trimap_radius),
    }
    if self.prior == 'perturbed_gt':
      example['prior'] = perturb_mask(alpha, rng)
    return example


@dataclasses.dataclass(frozen=True)
class Prepare:
  """Evaluation transform, no randomness: the record letterboxed into the
  working size as `bgmat remove` sees a photo (long side to `image_size`,
  edge padding), with `region` = (height, width) of the photo inside the
  square; metrics are computed on that region only, at the photo's aspect."""

  image_size: int
  trimap_radius: int = 5

  def __call__(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
    alpha_u8, region = letterbox(record['alpha'], self.image_size)
    example = {k: letterbox(record[k], self.image_size)[0].astype(np.float32) / 255.0
               for k in _RGB_KEYS}
    example['alpha'] = alpha_u8.astype(np.float32) / 255.0
    example['trimap'] = trimap_lib.trimap01_from_alpha(alpha_u8, self.trimap_radius)
    example['valid'] = np.float32(1.0)
    example['region'] = np.asarray(region, np.int32)
    return example


# ---------------------------------------------------------------------------
# Datasets.
# ---------------------------------------------------------------------------


def train_image_size(config) -> int:
  """Side of the training examples: config.train_image_size, or image_size when
  that is 0 or unset (`config_defaults.base`).

  Raises:
    ValueError: a negative train_image_size.
  """
  size = int(config.get('train_image_size', 0) or 0)
  if size < 0:
    raise ValueError(f'train_image_size must be >= 0 (0: image_size), got {size}')
  return size or int(config.image_size)


def _augmented_source(config, dataset: str, split: str, seed: int) -> grain.MapDataset:
  """`split` of `dataset` shuffled with `seed`, repeated and augmented
  (`Augment` with config's fields, seeded `seed + 1`)."""
  source = open_source(dataset, split, config.data_dir)
  mapped = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
  return mapped.random_map(
      Augment(source=source, image_size=train_image_size(config),
              crop_scale=tuple(config.aug.crop_scale), edge_bias=config.aug.edge_bias,
              flip=config.aug.flip, recomposite_prob=config.aug.recomposite_prob,
              jitter=config.aug.jitter, trimap_radius=config.trimap_radius,
              prior=config.get('prior', 'none'),
              use_photo_prob=config.aug.get('use_photo_prob', 0.0),
              letterbox_prob=config.aug.get('letterbox_prob', 0.0),
              zoom_out_prob=config.aug.get('zoom_out_prob', 0.0),
              zoom_out_scale=tuple(config.aug.get('zoom_out_scale', (0.5, 1.0))),
              grayscale_prob=config.aug.get('grayscale_prob', 0.0)),
      seed=seed + 1)


def create_train_dataset(config, *, process_index: int, process_count: int,
                         per_process_batch: int) -> grain.IterDataset:
  """Infinite, shuffled, augmented training data: this process's rows of each
  global batch, (per_process_batch, ...) arrays.

  `process_index` is the block of rows this process feeds in the global batch
  (see `sharding.process_batch_block`; the process index on usual meshes).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  dataset = _augmented_source(config, config.dataset, config.train_split, config.seed)
  mix = config.get('train_mix', None)
  share = float(mix.share) if mix is not None else 0.0
  if not 0.0 <= share <= 1.0:
    raise ValueError(f'train_mix.share must be in [0, 1], got {share}')
  if share > 0.0:
    # A second data set (or split) mixed in at a fixed share of the examples,
    # augmented alike; its shuffle and augmentation seeds are its own, so the
    # main data set's examples stay those of an unmixed run, interleaved.
    other = _augmented_source(config, mix.dataset or config.dataset, mix.split,
                              config.seed + 1_000_003)
    dataset = other if share == 1.0 else grain.MapDataset.mix(
        [dataset, other], weights=[1.0 - share, share])
  # Blocks of P consecutive elements; global batch b is blocks
  # [b * count, (b + 1) * count), so this process takes every count-th block.
  # Both steps are lazy index arithmetic: other processes' rows are never read.
  dataset = dataset.batch(per_process_batch, drop_remainder=True)
  dataset = dataset[process_index::process_count]
  iter_dataset = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=config.input.num_threads,
                        prefetch_buffer_size=config.input.prefetch))
  if config.input.worker_count > 0:
    # Grain's worker processes read absl flags: parse them (with defaults) when
    # the caller is not an absl app, e.g. a notebook or pytest.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS(sys.argv[:1])
    iter_dataset = iter_dataset.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=config.input.worker_count))
  return iter_dataset


def eval_batches(config, split: str, *, process_index: int, process_count: int,
                 per_process_batch: int, max_examples: int | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's padded eval batches over `split`, in order.

  Every process yields the same number of batches (padding with `valid == 0`
  examples), so jitted steps over global arrays stay in lock-step.
  """
  source = open_source(config.dataset, split, config.data_dir)
  prepare = Prepare(config.image_size, config.trimap_radius)
  num_examples = len(source) if max_examples is None else min(max_examples, len(source))
  # Global batch b is examples [b * G, (b + 1) * G) (padded at the end);
  # this process holds rows [p * P, (p + 1) * P) of it, as in training.
  global_batch = per_process_batch * process_count
  num_batches = -(-num_examples // global_batch)
  for b in range(num_batches):
    start = b * global_batch + process_index * per_process_batch
    chunk = range(start, min(start + per_process_batch, num_examples))
    examples = [prepare(source[int(i)]) for i in chunk]
    names = [_as_str(source[int(i)]['name']) for i in chunk]
    while len(examples) < per_process_batch:
      pad = {k: np.zeros_like(v) for k, v in (examples[0] if examples else
                                              _empty_example(config.image_size)).items()}
      examples.append(pad)
      names.append('')
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    batch['name'] = np.asarray(names)
    yield batch


def _empty_example(size: int) -> dict[str, np.ndarray]:
  rgb = np.zeros((size, size, 3), np.float32)
  one = np.zeros((size, size, 1), np.float32)
  return {'image': rgb, 'fg': rgb, 'bg': rgb, 'alpha': one, 'trimap': one,
          'valid': np.float32(0.0), 'region': np.asarray((size, size), np.int32)}


def _as_str(name: Any) -> str:
  return name.decode('utf-8') if isinstance(name, bytes) else str(name)
