"""Matting resolution: shape buckets, the plan for one photo, overlapping tiles.

The pre-segmentation runs at the fixed working size (the photo letterboxed into
a square). The matting generator runs at (up to) the photo's own resolution,
with the pre-segmentation upsampled to that size as its prior. So that jit does
not compile once per photo size, the photo and its prior are padded (edge
values) to the smallest shape of a fixed bucket set that holds them, and the
alpha is cropped back.

Default bucket set (`Buckets()`): long side in (256, 512, 768, 1024, 1536, 2048) x
short/long ratio in (9/16, 3/4, 1), both orientations, each side rounded up to
a multiple of the generator's stride (32): 30 shapes, e.g. 768x1024 for a 3:4
portrait of up to that size. A photo pads to at most 1.5x its side (a step of
the long-side ladder) times one aspect step. Tests pass tiny bucket sets.

Photos whose matting size (the photo, or the photo scaled down to `max_side`)
exceeds the largest bucket are cut into overlapping tiles of the largest square
bucket, run through the same compiled function, and blended with feathered
(linear ramp) weights. Tiles rather than guided-filter upsampling of a
lower-resolution alpha: a tile runs the network at the photo's own pixel scale,
so detail finer than a downscaled pixel (hair strands) is predicted, not
interpolated; the guided filter can only copy edges that are visible as colour
edges in the photo. Global context, which a tile lacks, comes from the prior
(the pre-segmentation of the whole photo).
"""

import dataclasses
import math

import numpy as np
from PIL import Image

# The matting generator pads to a multiple of 32 (five stride-2 steps,
# `bgmat.models.generator.SIZE_MULTIPLE`); bucket sides are multiples of it so
# the padding is ours (edge values, cropped away) and exports can use
# symbolic sides 32*h, 32*w.
STRIDE = 32


@dataclasses.dataclass(frozen=True)
class Buckets:
  """A set of (height, width) shapes that matting inputs are padded to.

  Attributes:
    long_sides: long sides of the shapes, in pixels.
    aspects: short side / long side ratios in (0, 1].
    stride: every side is rounded up to a multiple of this.
  """
  long_sides: tuple[int, ...] = (256, 512, 768, 1024, 1536, 2048)
  aspects: tuple[float, ...] = (9 / 16, 3 / 4, 1.0)
  stride: int = STRIDE

  def __post_init__(self):
    if not self.long_sides or min(self.long_sides) < self.stride:
      raise ValueError(f'long_sides {self.long_sides} must be >= the stride {self.stride}')
    if not self.aspects or not all(0 < a <= 1 for a in self.aspects):
      raise ValueError(f'aspects {self.aspects} must be in (0, 1]')

  def shapes(self) -> list[tuple[int, int]]:
    """All (height, width) shapes, sorted by area."""
    round_up = lambda x: max(self.stride, math.ceil(x / self.stride) * self.stride)
    shapes = set()
    for long in self.long_sides:
      for aspect in self.aspects:
        long_side, short_side = round_up(long), round_up(long * aspect)
        shapes |= {(long_side, short_side), (short_side, long_side)}
    return sorted(shapes, key=lambda s: (s[0] * s[1], s))

  @property
  def max_side(self) -> int:
    return max(max(s) for s in self.shapes())

  def fit(self, height: int, width: int) -> tuple[int, int] | None:
    """The smallest-area shape holding height x width, or None if none does."""
    for shape in self.shapes():
      if shape[0] >= height and shape[1] >= width:
        return shape
    return None

  def to_json(self) -> dict:
    return {'long_sides': list(self.long_sides), 'aspects': list(self.aspects),
            'stride': self.stride}

  @classmethod
  def from_json(cls, data: dict) -> 'Buckets':
    return cls(tuple(int(s) for s in data['long_sides']),
               tuple(float(a) for a in data['aspects']), int(data['stride']))


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one photo is matted.

  Attributes:
    size: (height, width) the generator sees: the photo's own size, or smaller
      when `max_side` caps it (the alpha is then resized back).
    bucket: the padded (height, width) for a direct run; None for tiles.
    tile: (height, width) of each tile when `bucket` is None.
    overlap: the tile overlap of a strip's small tiles (`strip_tile`); None:
      the remover's.
  """
  size: tuple[int, int]
  bucket: tuple[int, int] | None
  tile: tuple[int, int] | None = None
  overlap: int | None = None


def plan(height: int, width: int, buckets: Buckets, max_side: int | None = None,
         overlap: int | None = None) -> Plan:
  """The matting size, and the bucket or tile shape, of a height x width photo.

  A photo more elongated than every bucket aspect (a 4000x20 strip) is cut
  into tiles of the bucket shape that pads least in all (`strip_tile`) when
  that is under half the pixels of the plain plan, so a strip costs about its
  own area, not a square's. `overlap`: the tile overlap (default as Remover).
  """
  scale = 1.0 if not max_side else min(1.0, max_side / max(height, width))
  size = (max(1, round(height * scale)), max(1, round(width * scale)))
  overlap = default_overlap(buckets) if overlap is None else overlap
  bucket = buckets.fit(*size)
  if bucket is not None:
    direct = Plan(size, bucket)
  else:
    largest = buckets.max_side
    # Tiles are the largest square bucket, cut down (to a bucket shape) along a
    # side the photo does not fill; every tile of a photo has one shape.
    tile = buckets.fit(min(size[0], largest), min(size[1], largest))
    if tile is None:
      raise ValueError(f'Buckets {buckets.shapes()} hold no tile for {size}; include an '
                       'aspect of 1 (square) in the bucket set')
    direct = Plan(size, None, tile)
  if min(size) / max(size) >= min(buckets.aspects):
    return direct
  strip = strip_tile(*size, buckets, overlap)
  if strip is not None and strip[1] * 2 < _cost(direct, overlap):
    return Plan(size, None, strip[0], min(overlap, min(strip[0]) // 4))
  return direct


def default_overlap(buckets: Buckets) -> int:
  """The tile overlap `Remover` uses: 1/8 of the largest side, at least the stride."""
  return max(buckets.max_side // 8, buckets.stride)


def _tile_count(height: int, width: int, tile: tuple[int, int], overlap: int) -> int:
  tile_h, tile_w = min(tile[0], height), min(tile[1], width)
  return (len(tile_origins(height, tile_h, min(overlap, tile_h - 1))) *
          len(tile_origins(width, tile_w, min(overlap, tile_w - 1))))


def _cost(p: Plan, overlap: int) -> int:
  """Pixels the generator runs on for plan `p`."""
  if p.bucket is not None:
    return p.bucket[0] * p.bucket[1]
  overlap = overlap if p.overlap is None else p.overlap
  return _tile_count(*p.size, p.tile, overlap) * p.tile[0] * p.tile[1]


def strip_tile(height: int, width: int, buckets: Buckets, overlap: int
               ) -> tuple[tuple[int, int], int] | None:
  """(tile shape, pixels run) of the bucket shape covering height x width in
  overlapping tiles with the fewest pixels; the overlap is at most a quarter
  of a tile side, so small tiles still advance."""
  best = None
  for shape in buckets.shapes():
    tile_overlap = min(overlap, min(shape) // 4)
    cost = _tile_count(height, width, shape, tile_overlap) * shape[0] * shape[1]
    if best is None or cost < best[1]:
      best = (shape, cost)
  return best


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
  """Start offsets of tiles of `tile` px covering `length` px, overlapping by >= `overlap`."""
  if length <= tile:
    return [0]
  if not 0 <= overlap < tile:
    raise ValueError(f'overlap {overlap} must be in [0, tile={tile})')
  step = tile - overlap
  origins = list(range(0, length - tile, step))
  return origins + [length - tile]  # The last tile is flush with the border.


def _ramp(length: int, start: int, stop: int, total: int, overlap: int) -> np.ndarray:
  """1D feather weights of a tile covering [start, stop) of `total` px: a linear ramp
  over `overlap` px on each side that has a neighbour, 1 elsewhere (never 0)."""
  weights = np.ones(length, np.float32)
  overlap = min(overlap, length // 2)  # The two ramps never cross.
  ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / max(overlap, 1)
  if overlap and start > 0:
    weights[:overlap] = ramp
  if overlap and stop < total:
    weights[length - overlap:] = ramp[::-1]
  return weights


def tiles(height: int, width: int, tile: tuple[int, int], overlap: int
          ) -> list[tuple[slice, slice, np.ndarray]]:
  """[(rows, cols, weights (h, w) float32)] of overlapping tiles covering height x width.

  Tiles are at most `tile`; a side shorter than the tile gets one tile of that side.
  """
  tile_h, tile_w = min(tile[0], height), min(tile[1], width)
  out = []
  for top in tile_origins(height, tile_h, min(overlap, tile_h - 1)):
    for left in tile_origins(width, tile_w, min(overlap, tile_w - 1)):
      weight_y = _ramp(tile_h, top, top + tile_h, height, overlap)
      weight_x = _ramp(tile_w, left, left + tile_w, width, overlap)
      out.append((slice(top, top + tile_h), slice(left, left + tile_w),
                  weight_y[:, None] * weight_x[None, :]))
  return out


def pad_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
  """Edge-pads (h, w, ...) at the bottom/right to height x width."""
  pad = [(0, height - array.shape[0]), (0, width - array.shape[1])]
  return np.pad(array, pad + [(0, 0)] * (array.ndim - 2), mode='edge')


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
  """Resizes the long side to `size` and pads (edge values) to size x size."""
  height, width = image.shape[:2]
  scale = size / max(height, width)
  new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
  resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
  padded = np.pad(resized, ((0, size - new_h), (0, size - new_w), (0, 0)), mode='edge')
  return padded, (new_h, new_w)


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of (h, w) float32 to size = (height, width)."""
  if array.shape == tuple(size):
    return array.astype(np.float32)
  resized = Image.fromarray(array.astype(np.float32), mode='F').resize(
      (size[1], size[0]), Image.BILINEAR)
  return np.asarray(resized, np.float32)


def pad_batch(batch: np.ndarray, size: int) -> np.ndarray:
  """Repeats the last item so the batch has `size` items (one compiled shape)."""
  if len(batch) >= size:
    return batch
  return np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)])


def check_scales(scales, name: str = 'test-time scales') -> tuple[float, ...]:
  """`scales` (numbers, or their text) as a tuple of floats.

  The test-time scales of the pre-segmentation (`runs.preseg_probability`):
  the working size is multiplied by each. Checked here, without jax, so that
  the command line refuses bad values while parsing its arguments.

  Raises:
    ValueError: empty, not numbers, or a scale <= 0 (the message names `name`).
  """
  try:
    scales = tuple(float(s) for s in scales)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be a non-empty list of numbers > 0, got {scales!r}') from None
  if not scales or min(scales) <= 0:
    raise ValueError(f'{name} must be a non-empty list of numbers > 0, got {scales}')
  return scales
