"""A trained matting run as one self-contained file (StableHLO via `jax.export`).

  bgmat export --workdir runs/demo/matting --out bgmat_demo.bgmat
  remover = bgmat.Remover.from_export('bgmat_demo.bgmat')   # no configs, no training code

The file is a zip (no pickle anywhere) with two members:
  header.json     format, version, working size, platforms, input/output layout
  model.jaxexport `jax.export.Exported.serialize()` of
                  predict(image (B, S, S, 3) f32 in [0, 1]) -> (alpha, preseg) (B, S, S, 1),
                  with both stages' weights baked in as constants; B is symbolic.

Serialized exports load on newer JAX versions (JAX keeps backward compatibility
of serialized artifacts for at least 6 months), on the platforms listed in the
header; by default those are 'cpu' and 'cuda', lowered here without a GPU.
"""

import datetime
import json
import os
import zipfile

import jax
import jax.numpy as jnp

FORMAT = 'bgmat-export'
VERSION = 1
HEADER = 'header.json'
MODULE = 'model.jaxexport'
DEFAULT_PLATFORMS = ('cpu', 'cuda')


def export_predict(predict_fn, working_size: int,
                   platforms=DEFAULT_PLATFORMS) -> jax.export.Exported:
  """`jax.export` of predict_fn(image (B, S, S, 3)) -> (alpha, preseg), B symbolic."""
  (batch,) = jax.export.symbolic_shape('b')
  spec = jax.ShapeDtypeStruct((batch, working_size, working_size, 3), jnp.float32)
  return jax.export.export(jax.jit(predict_fn), platforms=tuple(platforms))(spec)


def _require_flatbuffers():
  # jax.export's (de)serialization imports flatbuffers lazily; jax does not depend on it.
  try:
    import flatbuffers  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError("Reading or writing a bgmat export needs 'flatbuffers' "
                      "(pip install flatbuffers, or 'bgmat[export]')") from e


def write_export(path: str, exported: jax.export.Exported, working_size: int,
                 extra: dict | None = None) -> None:
  """Writes header + serialized module as one zip, atomically (temp file + rename)."""
  header = {
      'format': FORMAT,
      'version': VERSION,
      'working_size': working_size,
      'platforms': list(exported.platforms),
      'input': 'image (B, S, S, 3) float32 in [0, 1], S = working_size, letterboxed',
      'outputs': ['alpha (B, S, S, 1) float32', 'preseg (B, S, S, 1) float32'],
      'jax_version': jax.__version__,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      **(extra or {}),
  }
  _require_flatbuffers()
  blob = bytes(exported.serialize())
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    # Stored, not deflated: the module is mostly float constants.
    with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as zf:
      zf.writestr(HEADER, json.dumps(header, indent=1))
      zf.writestr(MODULE, blob)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_export(path: str) -> tuple[dict, jax.export.Exported]:
  """(header, Exported) of a file written by `write_export`."""
  try:
    with zipfile.ZipFile(path) as zf:
      header = json.loads(zf.read(HEADER).decode('utf-8'))
      blob = zf.read(MODULE)
  except (zipfile.BadZipFile, KeyError) as e:
    raise ValueError(f'{path} is not a bgmat export ({e})') from e
  if header.get('format') != FORMAT:
    raise ValueError(f'{path} is not a bgmat export (format {header.get("format")!r})')
  if header.get('version', 0) > VERSION:
    raise ValueError(f'{path} has export version {header["version"]}; this bgmat reads '
                     f'up to {VERSION}: upgrade bgmat')
  _require_flatbuffers()
  return header, jax.export.deserialize(bytearray(blob))


def export_workdir(workdir: str, out: str, working_size: int | None = None,
                   platforms=DEFAULT_PLATFORMS) -> dict:
  """Exports a matting run's workdir to `out`; returns the header written."""
  from bgmat import remover as remover_lib  # pylint: disable=g-import-not-at-top
  remover = remover_lib.Remover.from_workdir(workdir, working_size=working_size)
  exported = export_predict(remover.batch_fn, remover.working_size, platforms)
  write_export(out, exported, remover.working_size,
               extra={'source_workdir': os.path.abspath(workdir)})
  header, _ = read_export(out)
  return header
