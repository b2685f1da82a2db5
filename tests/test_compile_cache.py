"""bgmat.inference.compile_cache: at most `budget` shapes stay compiled, and eviction
changes no result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat.inference import compile_cache
from bgmat.inference import resolution
from tests.test_resolution import make_remover
from tests.test_resolution import networks  # noqa: F401  pylint: disable=unused-import
from tests.test_resolution import photo


def test_admit_empties_jax_caches_past_the_budget():
  traces = []

  @jax.jit
  def double(x):
    traces.append(x.shape)
    return 2 * x

  compile_cache.set_budget(2)
  compile_cache.reset()
  clears = compile_cache.clears()
  assert not compile_cache.admit(('test_a', 1))
  double(jnp.ones(1))
  assert not compile_cache.admit(('test_b', 2))
  double(jnp.ones(2))
  assert not compile_cache.admit(('test_a', 1))  # Already live: no clear.
  double(jnp.ones(1))
  assert traces == [(1,), (2,)]
  assert compile_cache.admit(('test_c', 3))  # A third shape: caches emptied first.
  assert compile_cache.clears() == clears + 1
  double(jnp.ones(3))
  double(jnp.ones(1))  # Evicted: traced (and compiled or loaded) again.
  assert traces == [(1,), (2,), (3,), (1,)]
  with pytest.raises(ValueError, match='budget'):
    compile_cache.set_budget(0)


def test_eviction_leaves_the_mattes_unchanged(networks):  # noqa: F811
  images = [photo(40, 60, 1), photo(100, 45, 2), photo(150, 130, 3), photo(50, 64, 4)]
  buckets = resolution.Buckets((64, 128, 160), (0.5, 1.0))
  compile_cache.set_budget(10**9)
  kept = make_remover(networks, buckets)
  expected = [kept.alpha(image) for image in images]
  # Budget 2: the pre-segmentation and one matting bucket; every new bucket evicts.
  compile_cache.set_budget(2)
  compile_cache.reset()
  clears = compile_cache.clears()
  evicting = make_remover(networks, buckets)
  for image, alpha in zip(images + images, expected + expected):
    # The same programs compiled again (or loaded from the persistent cache):
    # equal up to float summation order, which XLA does not change between
    # compiles of one program on one machine; 1e-6 leaves room for nothing else.
    np.testing.assert_allclose(evicting.alpha(image), alpha, atol=1e-6)
  assert compile_cache.clears() >= clears + 4
  matting = [n for (name, _), n in evicting.compiles.items() if name == 'matting']
  assert max(matting) >= 2  # A bucket was traced again after its eviction.


def test_persistent_cache_folder(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  folder = compile_cache.default_cache_dir()
  # One folder per jax version and CPU kind: XLA:CPU code is compiled for the host.
  assert folder.startswith(str(tmp_path / 'bgmat' / 'xla' / f'jax-{jax.__version__}-'))
  assert compile_cache.default_cache_dir() == folder
  # conftest.py configured a cache for the tests: an explicit setting is left alone.
  configured = jax.config.jax_compilation_cache_dir
  assert configured
  assert compile_cache.use_persistent_cache(str(tmp_path / 'other')) == configured
  assert compile_cache.use_persistent_cache('none') == configured
  assert not (tmp_path / 'other').exists()


def test_a_folder_of_many_sizes_keeps_at_most_the_budget(networks, tmp_path):  # noqa: F811
  """Issue 14, kind 7: a folder run (matting and blur fusion) over photos of six
  sizes never holds more than `budget` compiled shapes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from bgmat.inference import remove_run  # pylint: disable=g-import-not-at-top
  src = tmp_path / 'photos'
  src.mkdir()
  sizes = [(40, 60), (100, 45), (150, 130), (64, 64), (30, 120), (120, 30)] * 2
  for i, (height, width) in enumerate(sizes):
    Image.fromarray(photo(height, width, i)).save(src / f'{i:02d}.png')
  compile_cache.set_budget(3)
  compile_cache.reset()
  clears = compile_cache.clears()
  remover = make_remover(networks, resolution.Buckets((64, 128, 160), (0.5, 1.0)))
  live = []
  admit = compile_cache.admit

  def watched(key):
    cleared = admit(key)
    live.append(len(compile_cache._live))  # pylint: disable=protected-access
    return cleared

  compile_cache.admit = watched
  try:
    summary = remove_run.process_inputs(remover, [str(src)], str(tmp_path / 'out'),
                                        log=lambda line: None)
  finally:
    compile_cache.admit = admit
  assert len(summary.written) == len(sizes) and not summary.failures
  assert max(live) <= 3 and compile_cache.clears() > clears
