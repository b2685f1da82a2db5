"""Atomic file writes: every file bgmat writes appears whole or not at all.

A write goes to a hidden temporary file beside the target
(`.NAME.tmp-PID<suffix>`, same folder so the rename stays on one filesystem)
and is renamed onto the target when complete (`os.replace`, atomic on POSIX);
on any error the temporary file is removed and the target is left as it was.
A killed process can leave a temporary file behind; its name says which
process wrote it (`bgmat.inference.remove_run` removes such leftovers of its own).
"""

import contextlib
import json
import os
from typing import Any, Callable, Iterator


def temporary_path(path: str, suffix: str = '') -> str:
  """The temporary file name beside `path` used while writing it."""
  folder, base = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f'.{base}.tmp-{os.getpid()}{suffix}')


@contextlib.contextmanager
def replacing(path: str, suffix: str = '') -> Iterator[str]:
  """Yields a temporary path to write; renames it onto `path` on success.

  Args:
    path: the target file; its folder is created if missing.
    suffix: appended to the temporary name (e.g. '.png', so that a writer that
      picks the format from the extension sees the right one).

  Raises:
    Whatever the body raises (the temporary file is removed, `path` untouched).
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = temporary_path(path, suffix)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str, fsync: bool = False) -> None:
  """Writes UTF-8 `text` to `path` atomically (`fsync`: flush to disk first)."""
  with replacing(path) as tmp:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
      if fsync:
        f.flush()
        os.fsync(f.fileno())


def write_json(path: str, data: Any, **dump_kwargs) -> None:
  """Writes `data` as JSON to `path` atomically (`dump_kwargs`: json.dump's)."""
  write_text(path, json.dumps(data, **dump_kwargs))


def write_with(path: str, write: Callable[[str], None], suffix: str = '') -> None:
  """Calls `write(temporary_path)` (a writer that takes a file name: PIL's
  `save`, matplotlib's `savefig`, zipfile...), then renames onto `path`."""
  with replacing(path, suffix) as tmp:
    write(tmp)
