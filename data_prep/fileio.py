"""Files by path or URI: local paths through `os`, URIs (gs://, s3://, ...) through etils.epath.

The data builders read their inputs through these few functions so that the
same code runs on one machine and on Beam workers reading a bucket. Local
paths behave exactly as `os.listdir` / `os.path` / `bgmat.atomic` do; a URI
goes through `etils.epath` (fsspec: `gcsfs` for gs://, `s3fs` for s3:// must be
installed), the filesystem TFDS itself writes its shards with.
"""

import os
import tempfile
from typing import Callable

from etils import epath

from bgmat import atomic


def is_uri(path: str) -> bool:
  """True for 'scheme://...' (gs://, s3://, ...), False for local paths."""
  return '://' in str(path)


def absolute(path: str) -> str:
  """Local paths made absolute (~ expanded); URIs unchanged."""
  path = str(path)
  return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def join(folder: str, *names: str) -> str:
  return os.path.join(str(folder), *names)


def isdir(path: str) -> bool:
  return epath.Path(path).is_dir() if is_uri(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return epath.Path(path).is_file() if is_uri(path) else os.path.isfile(path)


def exists(path: str) -> bool:
  return epath.Path(path).exists() if is_uri(path) else os.path.exists(path)


def listdir(folder: str) -> list[str]:
  """Names (not paths) in `folder`, unsorted; FileNotFoundError if it is absent."""
  if is_uri(folder):
    return [child.name for child in epath.Path(folder).iterdir()]
  return os.listdir(folder)


def walk(folder: str):
  """As `os.walk` (top-down; the caller may prune `subdirs` in place)."""
  if is_uri(folder):
    for directory, subdirs, names in epath.Path(folder).walk(top_down=True):
      yield os.fspath(directory), subdirs, names
  else:
    yield from os.walk(folder)


def read_bytes(path: str) -> bytes:
  """The file's bytes; FileNotFoundError if it is absent."""
  return epath.Path(path).read_bytes()


def read_text(path: str) -> str:
  return epath.Path(path).read_text(encoding='utf-8')


def makedirs(folder: str) -> None:
  epath.Path(folder).mkdir(parents=True, exist_ok=True)


def write_with(path: str, write: Callable[[str], None], suffix: str = '') -> None:
  """Calls `write(local file name)`, then makes that file appear at `path` whole.

  Local: `bgmat.atomic.write_with` (temporary file + rename). URI: written to a
  local temporary file, then uploaded in one object write (object stores make an
  object visible only when its upload completes).
  """
  if not is_uri(path):
    atomic.write_with(path, write, suffix)
    return
  with tempfile.TemporaryDirectory(prefix='bgmat_upload_') as tmp:
    local = os.path.join(tmp, 'file' + suffix)
    write(local)
    with open(local, 'rb') as f:
      epath.Path(path).write_bytes(f.read())


def write_text(path: str, text: str) -> None:
  """UTF-8 `text` to `path`, whole or not at all (see `write_with`)."""
  if not is_uri(path):
    atomic.write_text(path, text, fsync=True)
  else:
    epath.Path(path).write_text(text, encoding='utf-8')


def remove_file(path: str) -> None:
  """Removes a file if present."""
  epath.Path(path).unlink(missing_ok=True)


def remove_tree(path: str) -> None:
  """Removes a folder and its contents if present."""
  target = epath.Path(path)
  if target.exists():
    target.rmtree()
