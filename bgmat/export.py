"""A trained matting run as one self-contained file (StableHLO via `jax.export`).

  bgmat export --workdir runs/demo/matting --out bgmat_demo.bgmat
  remover = bgmat.Remover.from_export('bgmat_demo.bgmat')   # no configs, no training code

The file is a zip (no pickle anywhere) with three members:
  header.json       format, version, working size, bucket set, platforms, functions
  preseg.jaxexport  preseg(image (B, S, S, 3) f32 in [0, 1], letterboxed) -> (B, S, S, 1)
                    probability; S = working size, B symbolic
  matting.jaxexport matting(image (B, H, W, 3), prior (B, H, W, 1)) -> alpha (B, H, W, 1);
                    B, H and W symbolic (H, W any multiples of 32: every bucket)
Both stages' weights are baked in as constants. The matting function has
symbolic sides rather than one export per bucket: jax.export handles this
generator's shapes when the sides are multiples of its stride (32), so one
module serves every bucket and the weights are stored once.

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

from bgmat import atomic
from bgmat.inference import resolution

FORMAT = 'bgmat-export'
# 1: one letterboxed working size for both stages; 2: matting at bucket sizes.
VERSION = 2
HEADER = 'header.json'
MEMBERS = {'preseg': 'preseg.jaxexport', 'matting': 'matting.jaxexport'}
DEFAULT_PLATFORMS = ('cpu', 'cuda')


def export_functions(preseg_fn, matting_fn, working_size: int,
                     platforms=DEFAULT_PLATFORMS) -> dict[str, jax.export.Exported]:
  """`jax.export` of preseg_fn(image (B, S, S, 3)) and matting_fn(image, prior) with
  B symbolic and the matting sides symbolic multiples of 32."""
  batch, = jax.export.symbolic_shape('b')
  preseg = jax.export.export(jax.jit(preseg_fn), platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((batch, working_size, working_size, 3), jnp.float32))
  # One scope: the two inputs share b, h and w.
  batch, rows, cols = jax.export.symbolic_shape(
      f'b, {resolution.STRIDE}*h, {resolution.STRIDE}*w')
  matting = jax.export.export(jax.jit(matting_fn), platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((batch, rows, cols, 3), jnp.float32),
      jax.ShapeDtypeStruct((batch, rows, cols, 1), jnp.float32))
  return {'preseg': preseg, 'matting': matting}


def _require_flatbuffers():
  # jax.export's (de)serialization imports flatbuffers lazily; jax does not depend on it.
  try:
    import flatbuffers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError("Reading or writing a bgmat export needs 'flatbuffers' "
                      "(pip install flatbuffers, or 'bgmat[export]')") from e


def write_export(path: str, functions: dict[str, jax.export.Exported], working_size: int,
                 buckets: resolution.Buckets, extra: dict | None = None) -> None:
  """Writes header + serialized modules as one zip, atomically (temp file + rename)."""
  header = {
      'format': FORMAT,
      'version': VERSION,
      'working_size': working_size,
      'buckets': buckets.to_json(),
      'bucket_shapes': [list(s) for s in buckets.shapes()],
      'platforms': list(functions['matting'].platforms),
      'functions': {
          'preseg': {'member': MEMBERS['preseg'],
                     'inputs': ['image (B, S, S, 3) float32 in [0, 1], S = working_size, '
                                'letterboxed'],
                     'outputs': ['preseg probability (B, S, S, 1) float32']},
          'matting': {'member': MEMBERS['matting'],
                      'inputs': ['image (B, H, W, 3) float32 in [0, 1]',
                                 'prior (B, H, W, 1) float32: preseg upsampled to H x W'],
                      'outputs': ['alpha (B, H, W, 1) float32'],
                      'shapes': f'B, H, W symbolic; H, W multiples of {resolution.STRIDE}'},
      },
      'jax_version': jax.__version__,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      **(extra or {}),
  }
  _require_flatbuffers()

  def write(tmp):  # atomic.write_with creates the folder.
    # Stored, not deflated: the modules are mostly float constants.
    with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_STORED) as zf:
      zf.writestr(HEADER, json.dumps(header, indent=1))
      for name, member in MEMBERS.items():
        zf.writestr(member, bytes(functions[name].serialize()))
  atomic.write_with(path, write)


def read_export(path: str) -> tuple[dict, dict[str, jax.export.Exported]]:
  """(header, {'preseg': Exported, 'matting': Exported}) of a file from `write_export`."""
  try:
    with zipfile.ZipFile(path) as zf:
      header = json.loads(zf.read(HEADER).decode('utf-8'))
      if header.get('format') != FORMAT:
        raise ValueError(f'{path} is not a bgmat export (format {header.get("format")!r})')
      version = header.get('version', 0)
      if version > VERSION:
        raise ValueError(f'{path} has export version {version}; this bgmat reads '
                         f'up to {VERSION}: upgrade bgmat')
      if version < VERSION:
        raise ValueError(f'{path} has export version {version} (one letterboxed working '
                         f'size); this bgmat needs version {VERSION}: run `bgmat export` '
                         'again on the workdir')
      blobs = {name: zf.read(member) for name, member in MEMBERS.items()}
  except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path} is not a bgmat export ({type(e).__name__}: {e})') from e
  _require_flatbuffers()
  return header, {name: jax.export.deserialize(bytearray(blob)) for name, blob in blobs.items()}


def export_remover(remover, out: str, platforms=DEFAULT_PLATFORMS,
                   extra: dict | None = None) -> dict:
  """Exports a live `Remover` (its weights, working size and buckets) to `out`."""
  functions = export_functions(remover.preseg_fn, remover.matting_fn, remover.working_size,
                               platforms)
  write_export(out, functions, remover.working_size, remover.buckets, extra=extra)
  header, _ = read_export(out)
  return header


def export_workdir(workdir: str, out: str, working_size: int | None = None,
                   platforms=DEFAULT_PLATFORMS, buckets: resolution.Buckets | None = None
                   ) -> dict:
  """Exports a matting run's workdir to `out`; returns the header written."""
  from bgmat.inference import remover as remover_lib  # pylint: disable=g-import-not-at-top
  remover = remover_lib.Remover.from_workdir(workdir, working_size=working_size,
                                             buckets=buckets)
  return export_remover(remover, out, platforms,
                        extra={'source_workdir': os.path.abspath(workdir)})
