"""`bgmat export` / `Remover.from_export`: same alpha as the live models, file format.

Tiny models with deterministic random weights (no training: eval_shape + numpy
fill, so nothing but the predict functions is compiled); tiny buckets. The
export against a trained workdir and the CLI are tested in test_remover.py.
"""

import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat import export
from bgmat.inference.remover import Remover
from bgmat.inference import resolution
from bgmat import models
from tests.test_resolution import photo
from tests.test_resolution import random_variables

SIZE = 32
BUCKETS = resolution.Buckets(long_sides=(64, 96), aspects=(0.5, 1.0))


def tiny_random_remover(**kwargs) -> Remover:
  """The tiny stages with deterministic random weights at working size SIZE
  (also the ONNX export tests' model); kwargs go to Remover."""
  preseg = models.get_model('deeplabv3plus_tiny')
  matting = models.get_model('generator_tiny')
  image = jnp.zeros((1, SIZE, SIZE, 3))
  prior = jnp.zeros((1, SIZE, SIZE, 1))
  return Remover(matting, random_variables(matting, 1, image, prior, train=False),
                 preseg, random_variables(preseg, 2, image, train=False), SIZE, **kwargs)


@pytest.fixture(scope='module')
def remover():
  return tiny_random_remover(buckets=BUCKETS, tile_overlap=16)


@pytest.fixture(scope='module')
def exported(remover):
  return export.export_functions(remover.preseg_fn, remover.matting_fn, SIZE)


def test_exported_calls_match_live_for_any_batch_and_bucket(remover, exported):
  assert set(exported) == {'preseg', 'matting'}
  assert set(exported['matting'].platforms) == {'cpu', 'cuda'}
  rng = np.random.default_rng(0)
  batch = jnp.asarray(rng.random((3, SIZE, SIZE, 3)), jnp.float32)
  live = jax.jit(remover.preseg_fn)(batch)
  for b in (1, 3):  # The batch dimension is symbolic.
    got = exported['preseg'].call(batch[:b])
    assert got.shape == (b, SIZE, SIZE, 1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(live[:b]), atol=1e-5)
  # The matting sides are symbolic too: one module serves two bucket shapes.
  for b, height, width in ((2, 64, 32), (1, 96, 96)):
    image = jnp.asarray(rng.random((b, height, width, 3)), jnp.float32)
    prior = jnp.asarray(rng.random((b, height, width, 1)), jnp.float32)
    got = exported['matting'].call(image, prior)
    want = jax.jit(remover.matting_fn)(image, prior)
    assert got.shape == (b, height, width, 1)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert float(jnp.std(want)) > 1e-3  # Random weights give a non-constant alpha.


def test_file_round_trip_same_alpha(remover, exported, tmp_path):
  pytest.importorskip('flatbuffers', reason='jax.export serialization needs flatbuffers')
  path = tmp_path / 'sub' / 'model.bgmat'
  export.write_export(str(path), exported, SIZE, BUCKETS, extra={'note': 'test'})
  assert [p.name for p in path.parent.iterdir()] == ['model.bgmat']  # No temp file left.
  with zipfile.ZipFile(path) as zf:  # No pickle: a header and two StableHLO modules.
    assert sorted(zf.namelist()) == sorted([export.HEADER, *export.MEMBERS.values()])
    header = json.loads(zf.read(export.HEADER))
  assert header['format'] == export.FORMAT and header['version'] == 2
  assert header['working_size'] == SIZE and header['note'] == 'test'
  assert header['platforms'] == ['cpu', 'cuda']
  assert resolution.Buckets.from_json(header['buckets']) == BUCKETS
  assert [tuple(s) for s in header['bucket_shapes']] == BUCKETS.shapes()
  loaded = Remover.from_export(str(path), tile_overlap=remover.tile_overlap)
  assert loaded.working_size == SIZE and loaded.buckets == BUCKETS
  # A direct run (41x27 in a 64x32 bucket) and a tiled one (150x130 > 96).
  for image in (photo(41, 27, 3), photo(150, 130, 4)):
    np.testing.assert_allclose(loaded.alpha(image), remover.alpha(image), atol=1e-5)
  assert ('matting', (1, 96, 96, 3)) in loaded.compiles  # The tiled run did tile.
  rgba = loaded(photo(41, 27, 3))
  assert rgba.shape == (41, 27, 4) and rgba.dtype == np.uint8


def test_not_an_export_is_a_clear_error(tmp_path):
  junk = tmp_path / 'junk.bgmat'
  junk.write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='not a bgmat export'):
    export.read_export(str(junk))
  other = tmp_path / 'other.zip'
  with zipfile.ZipFile(other, 'w') as zf:
    zf.writestr(export.HEADER, json.dumps({'format': 'something-else'}))
    zf.writestr(export.MEMBERS['matting'], b'')
  with pytest.raises(ValueError, match='something-else'):
    export.read_export(str(other))
  newer = tmp_path / 'newer.zip'
  with zipfile.ZipFile(newer, 'w') as zf:
    zf.writestr(export.HEADER, json.dumps({'format': export.FORMAT,
                                           'version': export.VERSION + 1}))
    zf.writestr(export.MEMBERS['matting'], b'')
  with pytest.raises(ValueError, match='upgrade bgmat'):
    export.read_export(str(newer))
  older = tmp_path / 'older.zip'
  with zipfile.ZipFile(older, 'w') as zf:
    zf.writestr(export.HEADER, json.dumps({'format': export.FORMAT, 'version': 1}))
    zf.writestr('model.jaxexport', b'')
  with pytest.raises(ValueError, match='bgmat export. again'):
    export.read_export(str(older))
