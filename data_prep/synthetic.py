"""Procedural head-and-shoulders portraits with a true soft alpha; backgrounds.

Pure numpy / PIL / scipy (no TFDS, no network). Every example is a pure function
of `(seed, split, index)` through `default_rng([seed, split_id, index])`, so it
does not depend on the order or parallelism of generation.

Foreground: head (ears, painted face), neck, shoulders in textured clothing, and
hair: a cap plus hundreds of thin semi-transparent Bezier strands and flyaways.
Shapes are drawn at `supersample`x and box-downsampled (area coverage), and
layers are combined with "over", so the alpha has genuinely fractional values.

Backgrounds: procedural textures or random crops of photos bundled with
scikit-image (offline). Photos of people are never used (`HELD_OUT_PHOTOS`;
`astronaut` and `camera` are held out for evaluation). The other photos are
split disjointly (`BACKGROUND_PHOTOS`): validation and test backgrounds are
photos that training never saw.
"""
import colorsys
import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}

# Photos that show people (or faces): never used for backgrounds or training.
HELD_OUT_PHOTOS = ('astronaut', 'camera', 'coins', 'lfw_subset',
                   'shepp_logan_phantom')
# Disjoint partition of the bundled, person-free skimage photos by split.
BACKGROUND_PHOTOS = {
    'train': ('chelsea', 'rocket', 'hubble_deep_field', 'immunohistochemistry',
              'stereo_motorcycle', 'brick', 'gravel', 'moon', 'page'),
    'validation': ('retina', 'cell', 'text'),
    'test': ('coffee', 'grass', 'clock', 'colorwheel'),
}
_PHOTO_PROBABILITY = 0.5
_MAX_PHOTO_SIDE = 768

# Approximate skin tones from light to deep (RGB).
_SKIN_TONES = np.array([
    (255, 224, 196), (241, 194, 167), (224, 172, 138), (198, 134, 103),
    (164, 107, 77), (141, 85, 58), (111, 68, 45), (82, 52, 38)], np.float32)
_HAIR_COLOURS = np.array([
    (22, 18, 16), (45, 32, 24), (80, 55, 35), (120, 85, 55), (160, 120, 75),
    (215, 185, 125), (135, 60, 30), (165, 165, 160), (225, 220, 210)], 'f4')


def _random_colour(rng, saturation=(0.2, 0.9), value=(0.2, 0.95)):
  """Random RGB colour in [0, 255] from HSV ranges, shape (3,)."""
  hsv = rng.random(), rng.uniform(*saturation), rng.uniform(*value)
  return np.array(colorsys.hsv_to_rgb(*hsv), np.float32) * 255


def _grid(size):
  """Pixel-centre coordinates in [0, 1], each of shape (size, size)."""
  coords = (np.arange(size, dtype=np.float32) + 0.5) / size
  return np.meshgrid(coords, coords)  # x, y


def _noise(rng, size, base=(4, 4), octaves=4):
  """Fractal value noise in [0, 1], shape (size, size); base = (rows, cols)."""
  out = np.zeros((size, size), np.float32)
  for octave in range(octaves):
    shape = tuple(min(b * 2**octave, size) + 1 for b in base)
    grid = Image.fromarray(rng.random(shape, dtype=np.float32), 'F')
    out += 0.5**octave * np.asarray(grid.resize((size, size), Image.BICUBIC))
  out -= out.min()
  return out / max(out.max(), 1e-6)


def _lerp(colour_a, colour_b, t):
  """Blend two (3,) colours with weights t (H, W) -> (H, W, 3)."""
  return colour_a + (colour_b - colour_a) * t[..., None]


def _ellipse(cx, cy, rx, ry, n=72, jaw=0.0):
  """Ellipse outline points (n, 2); `jaw` narrows the lower half (a chin)."""
  t = np.linspace(0, 2 * np.pi, n, endpoint=False)
  narrow = 1 - jaw * np.clip(np.sin(t), 0, None)
  return np.stack([cx + rx * np.cos(t) * narrow, cy + ry * np.sin(t)], -1)


def _rotate(points, pivot, angle):
  """Rotates points (..., 2) about pivot (2,) by angle (radians, y down)."""
  c, s, d = np.cos(angle), np.sin(angle), points - pivot
  return np.stack([c * d[..., 0] - s * d[..., 1],
                   s * d[..., 0] + c * d[..., 1]], -1) + pivot


class _Canvas:
  """Coverage masks drawn at `supersample`x and box-downsampled to `size`."""

  def __init__(self, size, supersample):
    self.ss, self.scale = supersample, size * supersample

  def _coverage(self, draw_fn):
    image = Image.new('L', (self.scale, self.scale), 0)
    draw_fn(ImageDraw.Draw(image))
    return np.asarray(image.reduce(self.ss), np.float32) / 255

  def polygons(self, *shapes):
    """Coverage (size, size) in [0, 1] of (points (N, 2), fill), in order."""
    def draw_fn(draw):
      for points, fill in shapes:
        draw.polygon([tuple(p) for p in points * self.scale], fill=fill)
    return self._coverage(draw_fn)

  def lines(self, points, widths):
    """Coverage of polylines (N, P, 2); widths (N,) in quarter output pixels."""
    widths = np.maximum(np.asarray(widths) * self.ss // 4, 1)
    def draw_fn(draw):
      for line, width in zip(points * self.scale, widths):
        draw.line(line.ravel().tolist(), fill=255, width=int(width))
    return self._coverage(draw_fn)


def _unit(vectors):
  """Normalises vectors (..., 2) to unit length."""
  return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _bezier(p0, p1, p2, p3, t):
  """Cubic Bezier at parameters t (broadcast against the control points)."""
  return ((1 - t)**3 * p0 + 3 * (1 - t)**2 * t * p1 + 3 * (1 - t) * t**2 * p2 +
          t**3 * p3)


def _strands(rng, roots, directions, lengths, gravity, curl, n_points=10,
             jitter=0.35):
  """Cubic Bezier hair strands with optional curl, points (N, n_points, 2).

  Strands start at `roots` (N, 2) along unit `directions` (N, 2), bend towards
  `gravity` and random directions (scale `jitter`), and wave with amplitude
  `curl` times their `lengths` (N,); gravity and curl are (N,) or scalars.
  """
  n, length = len(roots), lengths[:, None]
  d_end = _unit(directions + np.reshape(gravity, (-1, 1)) * [0.0, 1.0] +
                rng.normal(0, jitter, (n, 2)))
  perp = np.stack([-directions[:, 1], directions[:, 0]], -1)
  bend = rng.normal(0, 0.4 * jitter, (n, 2))
  p1 = roots + length * (directions / 3 + perp * bend[:, :1])
  p2 = roots + length * ((directions + d_end) / 3 + perp * bend[:, 1:])
  t = np.linspace(0, 1, n_points, dtype=np.float32)[None, :, None]
  points = _bezier(roots[:, None], p1[:, None], p2[:, None],
                   (p2 + length * d_end / 3)[:, None], t)
  wave = np.reshape(curl, (-1, 1, 1)) * length[..., None] * np.sin(
      2 * np.pi * rng.uniform(1, 3, (n, 1, 1)) * t +
      rng.uniform(0, 2 * np.pi, (n, 1, 1)))
  return points + wave * perp[:, None]


def _pattern(rng, size):
  """Fabric or wallpaper: plain, stripes, checks, dots, mottled; (S, S, 3)."""
  c1, c2 = _random_colour(rng), _random_colour(rng)
  kind = rng.integers(5)
  angle, period, sharp = (rng.uniform(0, np.pi), rng.uniform(0.03, 0.15),
                          rng.uniform(1, 6))
  u, v = np.moveaxis(_rotate(np.stack(_grid(size), -1), 0.0, -angle), -1, 0)
  if kind == 0:  # solid
    t = np.zeros_like(u)
  elif kind == 1:  # stripes
    t = 0.5 + 0.5 * np.tanh(sharp * np.sin(2 * np.pi * u / period))
  elif kind == 2:  # checks / plaid
    t = 0.25 * (2 + np.tanh(sharp * np.sin(2 * np.pi * u / period)) +
                np.tanh(sharp * np.sin(2 * np.pi * v / period)))
  elif kind == 3:  # polka dots
    du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
    t = (du**2 + dv**2 < rng.uniform(0.03, 0.15)).astype(np.float32)
  else:  # mottled
    t = _noise(rng, size, octaves=5)
  folds = _noise(rng, size, base=(2, 3), octaves=3)
  return _lerp(c1, c2, t) * (0.75 + 0.4 * folds)[..., None]


def _hair_colour(rng, size):
  """Streaky hair colour (size, size, 3) in [0, 255]."""
  base = (_random_colour(rng, (0.4, 0.9), (0.3, 0.8)) if rng.random() < 0.1
          else _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))])  # dyed or not
  streaks = _noise(rng, size, base=(1, 12), octaves=3)
  return base * rng.uniform(0.85, 1.15, 3) * (0.75 + 0.5 * streaks)[..., None]


def _paint_face(head_rgb, centre, rx, ry, tilt, turn, rng):
  """Paints eyes, brows, nose and mouth into head colour (S, S, 3) [0, 255]."""
  size = head_rgb.shape[0]
  image = Image.fromarray(np.clip(head_rgb, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  dark = tuple(int(c) for c in rng.uniform(20, 60, 3))
  lips = np.clip(centre * size, 0, size - 1).astype(int)
  lips = tuple(int(c) for c in head_rgb[lips[1], lips[0]] * [0.75, 0.5, 0.5])

  def shape(u, v, hu, hv, fill):
    points = _ellipse(centre[0] + (0.3 * turn + u) * rx, centre[1] + v * ry,
                      hu * rx, hv * ry, n=16)
    draw.polygon([tuple(p) for p in _rotate(points, centre, tilt) * size],
                 fill=fill)

  for side in (-1, 1):
    squeeze = 1 - 0.45 * max(0.0, side * turn)
    u = side * 0.38 * squeeze
    shape(u, -0.05, 0.15 * squeeze, 0.07, (235, 235, 230))
    shape(u, -0.05, 0.07 * squeeze, 0.06, dark)
    shape(u, -0.25, 0.18 * squeeze, 0.035, dark)
  shape(0.15 * turn, 0.28, 0.07, 0.06, tuple(int(c * 0.8) for c in lips))
  shape(0.05 * turn, 0.52, 0.28 * (1 - 0.3 * abs(turn)), 0.06, lips)
  return np.asarray(image, np.float32)


def _hair_layers(rng, canvas, head, style, hair_rgb):
  """Hair cap, strands and flyaways as [(coverage, colour, gain)], back first.

  `head` = (cx, cy, rx, ry, tilt) in units of the image side; the hair rotates
  with the head about the chin. Long hair also gets a mass behind the head.
  """
  cx, cy, rx, ry, tilt = head
  chin = np.array([cx, cy + ry])
  volume = {'short': 1.06, 'medium': 1.12, 'long': 1.12, 'curly': 1.3}[style]
  hair_rx, hair_ry = np.array([rx * 1.05, ry]) * volume * rng.uniform(0.97, 1.1)
  hair_cy, back, front = cy - ry * 0.06, [], []

  def outline_point(t, scale=1.0):
    return np.stack([cx + hair_rx * scale * np.cos(t),
                     hair_cy + hair_ry * scale * np.sin(t)], -1)

  if style == 'long':  # a mass behind head and shoulders, strands on its sides
    hair_len = ry * rng.uniform(1.6, 3.5)
    flare = rng.uniform(1.0, 1.35)
    mass = np.concatenate([
        outline_point(np.linspace(np.pi, 2 * np.pi, 36)),
        [[cx + hair_rx * flare, hair_cy + hair_len],
         [cx - hair_rx * flare, hair_cy + hair_len]]])
    back.append((canvas.polygons((_rotate(mass, chin, tilt / 2), 255)),
                 hair_rgb, 0.85))
    count = int(rng.integers(80, 160))
    side = rng.choice([-1.0, 1.0], (count, 1))
    edge = np.concatenate([side * hair_rx * (flare - 1),
                           np.full((count, 1), hair_len)], -1)
    roots = np.concatenate([cx + side * hair_rx * rng.uniform(
        0.97, 1, (count, 1)), np.full((count, 1), hair_cy)], -1)
    roots += rng.uniform(0, 0.9, (count, 1)) * edge
    directions = _unit(_unit(edge) + side * np.array([1.0, 0.0]) *
                       rng.uniform(-0.1, 0.3, (count, 1)))
    points = _strands(rng, roots, directions, ry * rng.uniform(0.3, 1.0, count),
                      rng.uniform(0, 0.5, count), 0.02, jitter=0.1)
    cov = canvas.lines(_rotate(points, chin, tilt / 2),
                       rng.choice([1, 2, 3], count))
    back.append((cov * rng.uniform(0.5, 1.0), hair_rgb, 0.9))

  # Cap: a wobbly larger ellipse (clumps) minus the face, cut at the sides.
  hairline = rng.uniform(0.2, 0.55)
  side_len = {'short': 0.0, 'curly': 0.3, 'medium': 0.45, 'long': 0.6}[style]
  angle = np.linspace(0, 2 * np.pi, 160, endpoint=False)[:, None]
  wobble = (rng.normal(0, 0.012, 6) * np.sin(
      rng.integers(5, 30, 6) * angle + rng.uniform(0, 2 * np.pi, 6))).sum(-1)
  cap = outline_point(angle[:, 0], 1 + wobble)
  face = _ellipse(cx, cy + ry * (0.35 - hairline / 2), rx * 0.93,
                  ry * (0.65 + hairline / 2), 48)
  cut = np.array([[cx - 1, cy + ry * side_len], [cx + 1, cy + ry * side_len],
                  [cx + 1, cy + 2], [cx - 1, cy + 2]])
  front.append((canvas.polygons(*[(_rotate(p, chin, tilt), fill) for p, fill in
                                  ((cap, 255), (face, 0), (cut, 0))]),
                hair_rgb, 1.0))

  # Strands rooted inside the cap outline flow along it, away from the
  # parting, and droop; their tips make the fuzzy, partly transparent edge.
  count = int(rng.integers(300, 600))
  beta = 0.2 + side_len
  t = rng.uniform(-np.pi - beta, beta, count)
  roots = outline_point(t, rng.uniform(0.8, 1.0, count))
  normal = _unit(np.stack([np.cos(t) / hair_rx, np.sin(t) / hair_ry], -1))
  flow = np.sign(np.cos(t) - rng.normal(0, 0.3))[:, None] * np.stack(
      [-normal[:, 1], normal[:, 0]], -1)
  outward, (len_lo, len_hi) = {
      'short': ((0.1, 0.6), (0.15, 0.45)),
      'medium': ((0.0, 0.45), (0.3, 0.8)),
      'long': ((0.0, 0.4), (0.5, 1.2)),
      'curly': ((0.3, 1.2), (0.15, 0.5))}[style]
  directions = _unit(flow + normal * rng.uniform(*outward, (count, 1)))
  gravity = rng.uniform(0, 0.8, count) * (2.0 if style == 'long' else 1.0)
  lengths = ry * rng.uniform(len_lo, len_hi, count)
  main = _strands(rng, roots, directions, lengths, gravity,
                  0.1 if style == 'curly' else 0.02, jitter=0.15)

  # Flyaways: a few long, thin, faint strands far outside the outline.
  count = int(rng.integers(5, 30))
  t = rng.uniform(-np.pi - 0.3, 0.3, count)
  flyaways = _strands(
      rng, outline_point(t), np.stack([np.cos(t), np.sin(t)], -1),
      ry * rng.uniform(0.2, 0.7, count), rng.uniform(0, 0.8, count), 0.03, 14)

  for points, groups, opacity in ((main, 3, (0.45, 1.0)),
                                  (flyaways, 1, (0.25, 0.6))):
    points = _rotate(points, chin, tilt)
    widths = rng.choice([1, 1, 2, 3], len(points))
    group = rng.integers(0, groups, len(points))
    for g in range(groups):
      cov = canvas.lines(points[group == g], widths[group == g])
      front.append((cov * rng.uniform(*opacity), hair_rgb,
                    rng.uniform(0.8, 1.2)))
  return back, front


def render_portrait(rng, size, supersample=4):
  """Renders one head-and-shoulders foreground.

  Args:
    rng: a `np.random.Generator`.
    size: output height and width in pixels.
    supersample: drawing resolution factor (coverage has supersample**2 levels).

  Returns:
    fg: (size, size, 3) uint8, nearest-colour extended where alpha == 0.
    alpha: (size, size) uint8 soft matte.
  """
  canvas, (x, y) = _Canvas(size, supersample), _grid(size)

  # Pose, in units of the image side.
  ry = rng.uniform(0.12, 0.22)
  turn = rng.uniform(-1, 1)
  rx = ry * rng.uniform(0.72, 0.84) * (1 - 0.08 * abs(turn))
  cx, cy = rng.uniform(0.32, 0.68), rng.uniform(0.26, 0.42)
  tilt = np.clip(rng.normal(0, 0.12), -0.35, 0.35)
  chin = np.array([cx, cy + ry])
  neck_len = ry * rng.uniform(0.35, 0.6)
  neck_w = rx * rng.uniform(0.55, 0.7)
  base_y = cy + ry + neck_len
  light = rng.normal(0, 1, 2) * rng.uniform(0, 0.5)
  lighting = (1 + light[0] * (x - cx) + light[1] * (y - cy))[..., None]
  skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))]
  skin = skin * rng.uniform(0.92, 1.08, 3)
  style = rng.choice(['bald', 'short', 'medium', 'long', 'curly'],
                     p=[0.05, 0.3, 0.25, 0.25, 0.15])
  hair_back, hair_front = [], []
  if style != 'bald':
    hair_back, hair_front = _hair_layers(
        rng, canvas, (cx, cy, rx, ry, tilt), style,
        _hair_colour(rng, size) * lighting)

  # Torso with rounded shoulders, leaning slightly; arms run off the bottom.
  shoulder_w = rx * rng.uniform(2.3, 3.3)
  shoulder_y = base_y + ry * rng.uniform(0.0, 0.25)
  t = np.linspace(0, 1, 12)[:, None]
  sides = []
  for side in (-1, 1):
    shoulder = _bezier(
        np.array([cx + side * neck_w * 0.9, base_y - 0.3 * neck_len]),
        np.array([cx + side * shoulder_w * 0.55, shoulder_y - 0.02]),
        np.array([cx + side * shoulder_w * 1.05, shoulder_y]),
        np.array([cx + side * shoulder_w * 1.1, shoulder_y + 0.25 * ry]), t)
    sides.append(np.concatenate([shoulder,
                                 [[cx + side * shoulder_w * 1.15, 1.3]]]))
  torso = _rotate(np.concatenate([sides[0][::-1], sides[1]]),
                  np.array([cx, 1.0]), rng.normal(0, 0.04))
  torso_layer = (canvas.polygons((torso, 255)),
                 _pattern(rng, size) * lighting, 1.0)

  # Neck, extended into a round or V neckline.
  depth = base_y + ry * rng.uniform(0.1, 0.7)
  neck = np.array([[cx - neck_w, cy], [cx + neck_w, cy],
                   [cx + neck_w * 1.05, base_y], [cx + neck_w * 0.4, depth],
                   [cx - neck_w * 0.4, depth], [cx - neck_w * 1.05, base_y]])
  shadow = np.clip((y - chin[1]) / (2 * neck_len), 0, 1)[..., None]
  neck_layer = (canvas.polygons((_rotate(neck, chin, tilt * 0.3), 255)),
                skin * (0.7 + 0.2 * shadow) * lighting, 1.0)

  # Head with ears and a painted face, shaded towards its outline.
  shapes = [(_ellipse(cx, cy, rx, ry, 96, jaw=0.15), 255)]
  for side in (-1, 1):
    if side * turn < 0.6:  # the far ear hides behind a turned head
      shapes.append((_ellipse(cx + side * rx * 0.97, cy + 0.05 * ry,
                              0.12 * ry, 0.22 * ry, 24), 255))
  local = _rotate(np.stack([x, y], -1), chin, -tilt)
  radius = ((local[..., 0] - cx) / rx)**2 + ((local[..., 1] - cy) / ry)**2
  head_rgb = skin * (1 - 0.25 * np.clip(radius, 0, 1.5)**2)[..., None]
  head_rgb = _paint_face(head_rgb * lighting,
                         _rotate(np.array([cx, cy]), chin, tilt), rx, ry, tilt,
                         turn, rng)
  head_layer = (canvas.polygons(*[(_rotate(p, chin, tilt), f)
                                  for p, f in shapes]), head_rgb, 1.0)

  # "Over" compositing, back to front, in premultiplied colour.
  alpha = np.zeros((size, size), np.float32)
  premult = np.zeros((size, size, 3), np.float32)
  for cov, colour, gain in (hair_back + [torso_layer, neck_layer, head_layer] +
                            hair_front):
    rows, cols = np.flatnonzero(cov.any(1)), np.flatnonzero(cov.any(0))
    if not rows.size:
      continue
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # speed only
    cov = cov[box]
    premult[box] = (colour[box] * (gain * cov[..., None]) +
                    premult[box] * (1 - cov[..., None]))
    alpha[box] = cov + alpha[box] * (1 - cov)
  alpha_u8 = np.rint(alpha * 255).astype(np.uint8)
  fg = premult / np.maximum(alpha, 1e-6)[..., None]
  fg = np.clip(np.rint(fg), 0, 255).astype(np.uint8)
  # Extend colour outside the matte with the nearest foreground colour, so
  # resampling or re-compositing never pulls in a dark halo.
  _, (iy, ix) = ndimage.distance_transform_edt(alpha_u8 == 0,
                                               return_indices=True)
  return fg[iy, ix], alpha_u8


@functools.lru_cache(maxsize=None)
def load_photo(name):
  """A bundled scikit-image photo as RGB PIL image (longer side <= 768)."""
  if name in HELD_OUT_PHOTOS:
    raise ValueError(f'{name!r} shows people and is held out.')
  from skimage import data  # pylint: disable=g-import-not-at-top
  photo = getattr(data, name)()
  if name == 'stereo_motorcycle':
    photo = photo[0]
  image = Image.fromarray(np.asarray(photo)[..., :3]).convert('RGB')
  image.thumbnail((_MAX_PHOTO_SIDE, _MAX_PHOTO_SIDE), Image.BILINEAR)
  return image


def _photo_background(rng, size, split):
  """Random crop of one of this split's photos, (size, size, 3) float."""
  image = load_photo(str(rng.choice(BACKGROUND_PHOTOS[split])))
  side = min(image.size) * rng.uniform(0.35, 1.0)
  x0, y0 = rng.uniform(0, 1, 2) * (image.width - side, image.height - side)
  bg = np.asarray(image.resize((size, size), Image.BILINEAR,
                               box=(x0, y0, x0 + side, y0 + side)), np.float32)
  if rng.random() < 0.5:
    bg = bg[:, ::-1]
  if np.ptp(bg.reshape(-1, 3).mean(0)) < 2:  # grayscale: tint it
    bg = bg * (1 - rng.uniform(0, 0.5) * (1 - _random_colour(rng) / 255))
  return bg * rng.uniform(0.7, 1.2)


def _procedural_background(rng, size):
  """Gradient, noise, wallpaper, blobs, bokeh or shelves; (S, S, 3) float."""
  (x, y), kind = _grid(size), rng.integers(6)
  c1, c2 = _random_colour(rng), _random_colour(rng)
  if kind == 0:  # linear gradient
    angle = rng.uniform(0, 2 * np.pi)
    t = 0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)
    return _lerp(c1, c2, np.clip(t, 0, 1)) + 20 * (_noise(rng, size) - 0.5)[
        ..., None]
  if kind == 1:  # fractal noise on a three-colour palette
    t = _noise(rng, size, base=(rng.integers(2, 8),) * 2, octaves=5)
    return np.where(t[..., None] < 0.5, _lerp(c1, c2, 2 * t),
                    _lerp(c2, _random_colour(rng), 2 * t - 1))
  if kind == 2:
    return _pattern(rng, size)
  # Blobs, bokeh (bright translucent discs) or rectangles (shelves, windows).
  image = Image.fromarray(np.clip(_lerp(c1, c2, y), 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image, 'RGBA')
  radius, opacity = {3: ((0.03, 0.25), (80, 255)), 4: ((0.02, 0.12), (40, 140)),
                     5: ((0.05, 0.4), (255, 256))}[kind]
  for _ in range(int(rng.integers(8, 40))):
    colour = tuple(int(c) for c in _random_colour(rng))
    fill = colour + (int(rng.integers(*opacity)),)
    px, py = rng.uniform(-0.1, 1.1, 2) * size
    rw, rh = rng.uniform(*radius, 2) * size
    rh = rw if kind == 4 else rh  # bokeh discs are round
    shape = draw.rectangle if kind == 5 else draw.ellipse
    shape((px - rw, py - rh, px + rw, py + rh), fill=fill)
  blur = {3: 0.02, 4: 0.01, 5: 0.004}[kind] * size
  return np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), np.float32)


def render_background(rng, size, split):
  """Background for `split`: photo crop or procedural; (size, size, 3) uint8."""
  if rng.random() < _PHOTO_PROBABILITY:
    bg = _photo_background(rng, size, split)
  else:
    bg = _procedural_background(rng, size)
  if rng.random() < 0.4:  # shallow depth of field, as in portrait photos
    radius = rng.uniform(0.5, 3.0) * size / 128
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    bg = np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float32)
  bg = bg + rng.normal(0, rng.uniform(0, 4), bg.shape)
  return np.clip(np.rint(bg), 0, 255).astype(np.uint8)


def composite(fg, alpha, bg):
  """round(alpha * fg + (1 - alpha) * bg); fg, bg (H, W, 3), alpha (H, W) u8."""
  a = alpha.astype(np.float64)[..., None] / 255
  image = a * fg.astype(np.float64) + (1 - a) * bg.astype(np.float64)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_example(index, split='train', seed=0, image_size=128,
                     supersample=4):
  """One example, a pure function of (seed, split, index).

  Returns:
    dict with image, fg, bg (S, S, 3) uint8, alpha (S, S) uint8, name str.
  """
  if split not in SPLIT_IDS:
    raise ValueError(f'Unknown split {split!r}; known: {list(SPLIT_IDS)}')
  rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
  rng_fg, rng_bg = rng.spawn(2)
  fg, alpha = render_portrait(rng_fg, image_size, supersample)
  bg = render_background(rng_bg, image_size, split)
  return {'image': composite(fg, alpha, bg), 'alpha': alpha, 'fg': fg,
          'bg': bg, 'name': f'synthetic_{split}_{index:06d}'}
