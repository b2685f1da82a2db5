"""Issue 14, kind 7: compiled shapes and work bounded over any mix of photo sizes.

Pure shape arithmetic plus one small blur-fusion run: seconds, no model.
"""

import numpy as np

from bgmat import foreground
from bgmat.inference import resolution


def test_blur_fusion_shapes_are_bounded_over_random_sizes():
  """Every photo up to the largest bucket pads to one of at most 30 bucket shapes
  (long side >= 256) or 8 x 8 small shapes: a folder of random sizes compiles
  at most 94 blur-fusion shapes (the former ladder: one per 4 steps an octave
  on each side, 20 x 20 = 400 up to 2048)."""
  rng = np.random.default_rng(0)
  sizes = rng.integers(1, 2049, size=(5000, 2))
  shapes = {foreground.padded_shape(int(h), int(w)) for h, w in sizes}
  large = {s for s in shapes if max(s) > 256}
  assert large <= set(resolution.Buckets().shapes())
  assert len(shapes) <= 30 + 64
  for (h, w) in sizes[:500]:
    ph, pw = foreground.padded_shape(int(h), int(w))
    assert ph >= h and pw >= w


def test_blur_fusion_in_tiles_equals_the_whole_image(monkeypatch):
  """Large photos run blur fusion in tiles with a halo (bounded peak memory); the
  result is the whole image's up to float32 summation order (box sums of up to
  ~10^3 terms of values in [0, 1]: 1e-4)."""
  rng = np.random.default_rng(1)
  image = rng.random((150, 230, 3)).astype(np.float32)
  alpha = rng.random((150, 230)).astype(np.float32)
  radii = (21, 5)
  whole = foreground.estimate_foreground(image, alpha, radii=radii)
  monkeypatch.setattr(foreground, 'TILE', 64)
  tiled = foreground.estimate_foreground(image, alpha, radii=radii)
  np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_strips_are_matted_in_small_tiles():
  """A 4000x20 strip ran as 1152x2048 tiles (23 s, 1 GB on the 2-core box); it now
  runs in the bucket shape that pads least, at under a fifth of the pixels."""
  buckets = resolution.Buckets()
  for size in ((20, 4000), (4000, 20), (20, 1000), (100, 3000)):
    p = resolution.plan(*size, buckets)
    old_tile = buckets.fit(min(size[0], 2048), min(size[1], 2048))
    old = resolution._cost(resolution.Plan(size, buckets.fit(*size)) if buckets.fit(*size)  # pylint: disable=protected-access
                           else resolution.Plan(size, None, old_tile), 256)
    new = resolution._cost(p, 256)  # pylint: disable=protected-access
    assert p.tile in buckets.shapes() and new * 2 < old, (size, p, new, old)
    overlap = p.overlap
    covered = np.zeros(size, int)
    for rows, cols, weights in resolution.tiles(*size, p.tile, overlap):
      covered[rows, cols] += 1
      assert weights.min() > 0
    assert covered.min() >= 1
  # Ordinary photos keep their plans.
  assert resolution.plan(3024, 4032, buckets).tile == (2048, 2048)
  assert resolution.plan(300, 200, buckets) == resolution.Plan((300, 200), (512, 288))
