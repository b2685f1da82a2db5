"""`bgmat export` / `Remover.from_export`: same alpha as the live models, file format.

Tiny models with deterministic random weights (no training: eval_shape + numpy
fill, so nothing but the predict function is compiled). The export against a
trained workdir and the CLI are tested in test_remover.py.
"""

import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat import export
from bgmat import models
from bgmat.remover import Remover

SIZE = 32


def _random_variables(module, seed, *inputs, **kwargs):
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'var' in name or 'scale' in name:
      return np.ones(leaf.shape, np.float32)
    return (rng.normal(size=leaf.shape) * 0.1).astype(np.float32)

  shapes = jax.eval_shape(
      lambda key: module.init({'params': key, 'dropout': key}, *inputs, **kwargs),
      jax.random.key(0))
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def remover():
  preseg = models.get_model('deeplabv3plus_tiny')
  matting = models.get_model('generator_tiny')
  image = jnp.zeros((1, SIZE, SIZE, 3))
  prior = jnp.zeros((1, SIZE, SIZE, 1))
  return Remover(matting, _random_variables(matting, 1, image, prior, train=False),
                 preseg, _random_variables(preseg, 2, image, train=False), SIZE)


@pytest.fixture(scope='module')
def exported(remover):
  return export.export_predict(remover.batch_fn, SIZE)


def test_exported_call_matches_live_predict_for_any_batch(remover, exported):
  assert set(exported.platforms) == {'cpu', 'cuda'}
  batch = jnp.asarray(np.random.default_rng(0).random((3, SIZE, SIZE, 3)), jnp.float32)
  live = remover.batch_fn(batch)
  for b in (1, 3):  # The batch dimension is symbolic.
    out = exported.call(batch[:b])
    assert len(out) == 2
    for got, want in zip(out, live):
      assert got.shape == (b, SIZE, SIZE, 1)
      np.testing.assert_allclose(np.asarray(got), np.asarray(want[:b]), atol=1e-5)
  assert float(jnp.std(live[0])) > 1e-4  # Random weights give a non-constant alpha.


def test_file_round_trip_same_alpha(remover, exported, tmp_path):
  pytest.importorskip('flatbuffers', reason='jax.export serialization needs flatbuffers')
  path = tmp_path / 'sub' / 'model.bgmat'
  export.write_export(str(path), exported, SIZE, extra={'note': 'test'})
  assert [p.name for p in path.parent.iterdir()] == ['model.bgmat']  # No temp file left.
  with zipfile.ZipFile(path) as zf:
    assert sorted(zf.namelist()) == sorted([export.HEADER, export.MODULE])  # No pickle.
    header = json.loads(zf.read(export.HEADER))
  assert header['format'] == export.FORMAT and header['working_size'] == SIZE
  assert header['platforms'] == ['cpu', 'cuda'] and header['note'] == 'test'
  loaded = Remover.from_export(str(path))
  assert loaded.working_size == SIZE
  image = np.random.default_rng(3).integers(0, 256, size=(41, 27, 3), dtype=np.uint8)
  np.testing.assert_allclose(loaded.alpha(image), remover.alpha(image), atol=1e-5)
  rgba = loaded(image)
  assert rgba.shape == (41, 27, 4) and rgba.dtype == np.uint8


def test_not_an_export_is_a_clear_error(tmp_path):
  junk = tmp_path / 'junk.bgmat'
  junk.write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='not a bgmat export'):
    export.read_export(str(junk))
  other = tmp_path / 'other.zip'
  with zipfile.ZipFile(other, 'w') as zf:
    zf.writestr(export.HEADER, json.dumps({'format': 'something-else'}))
    zf.writestr(export.MODULE, b'')
  with pytest.raises(ValueError, match='something-else'):
    export.read_export(str(other))
  newer = tmp_path / 'newer.zip'
  with zipfile.ZipFile(newer, 'w') as zf:
    zf.writestr(export.HEADER, json.dumps({'format': export.FORMAT,
                                           'version': export.VERSION + 1}))
    zf.writestr(export.MODULE, b'')
  with pytest.raises(ValueError, match='upgrade bgmat'):
    export.read_export(str(newer))
