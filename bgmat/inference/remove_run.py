"""`bgmat remove` over files, folders and globs: what is taken, where it goes, and
a run that never loses a photo.

Inputs: a named file (or `-`, stdin) is always taken. In a folder or a glob,
every file Pillow can identify is taken, except bgmat's own outputs (marked
in the file, see `save_image_atomic`), leftover temporary files of a killed
run and the output folder itself; what is left out is listed with the reason
(`Summary.ignored`).

Outputs: OUT_DIR/<stem>.png (.jpg for composite), a folder's images keeping
their path relative to it, or one named file (`-o cutout.png`, one input).
Names are unique within a run (case-insensitively, `_alpha` files included);
an output never replaces an input of the run nor a file bgmat did not write:
it takes the next free name `<stem>-2`, `<stem>-3`, ... Existing bgmat
outputs are replaced (or kept with `skip_existing`). Every file is written
atomically (a hidden temporary file in the same folder, then a rename).

Videos (`bgmat.inference.video`): a clip becomes OUT_DIR/<stem>.webm (rgba, VP9 with
alpha) or .mp4 (alpha, foreground, composite), or .mov / a PNG sequence folder
<stem>/ (`video_container`), audio kept; `-o NAME.webm|.mp4|.mov` for one clip.

Failures: a problem with the output location is an `OutputError` before any
work (`prepare_output`, which the CLI calls before the model loads). Any
failure of one photo (decode, matting, foreground estimation, rendering,
writing) is reported with the photo's name and the run goes on.
"""

import collections
import concurrent.futures
import ctypes
import dataclasses
import functools
import glob
import os
import re
import sys
import tempfile
import traceback
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL import PngImagePlugin
import tqdm

from bgmat import atomic
from bgmat import foreground
from bgmat.inference import image_io
from bgmat.inference import render as render_lib
from bgmat.inference import video

# Extensions of files written by earlier versions; folder scans now take any
# file Pillow identifies (`expand_inputs`).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.tif', '.tiff', '.gif')
# The mark in bgmat's outputs: PNG text 'Software', JPEG comment.
OUTPUT_MARK = 'bgmat'
# Temporary files of `save_image_atomic` (and of earlier versions: no leading dot).
_TEMP = re.compile(r'\.tmp-(\d+)\.(png|jpe?g|mp4|webm|mov)$', re.IGNORECASE)
_WRITTEN_FORMATS = {'.png': 'PNG', '.jpg': 'JPEG', '.jpeg': 'JPEG'}


class OutputError(ValueError):
  """The output location cannot be used (not writable, a file, ...)."""


def _version() -> str:
  from bgmat import __version__  # pylint: disable=g-import-not-at-top
  return __version__


def save_image_atomic(array: np.ndarray, path: str, quality: int = 95,
                      icc_profile: bytes | None = None) -> None:
  """Writes PNG or JPEG (by extension) through a hidden temporary file in the same
  folder + rename, marked as bgmat's (PNG text 'Software', JPEG comment) and with
  `icc_profile` (the colour space of the pixels) when given."""
  fmt = _WRITTEN_FORMATS.get(os.path.splitext(path)[1].lower(), 'PNG')
  mark = f'{OUTPUT_MARK} {_version()}'
  options: dict[str, Any] = {}
  if icc_profile and array.ndim == 3:
    options['icc_profile'] = icc_profile
  if fmt == 'JPEG':
    # 4:4:4 chroma: subsampled colour smears the cut-out's edges into the new background.
    options.update(quality=quality, subsampling=0, comment=mark.encode())
  else:
    info = PngImagePlugin.PngInfo()
    info.add_text('Software', mark)
    options['pnginfo'] = info
  atomic.write_with(path, lambda tmp: Image.fromarray(array).save(tmp, format=fmt, **options),
                    suffix='.' + fmt.lower())


def save_png_atomic(array: np.ndarray, path: str) -> None:
  """Writes a PNG through a temporary file in the same directory + rename."""
  save_image_atomic(array, path)


def is_bgmat_output(path: str) -> bool:
  """Whether `path` is a PNG / JPEG / video that bgmat wrote (its mark, header only)."""
  if video.has_video_extension(path):
    return video.is_bgmat_video(path)
  if os.path.splitext(path)[1].lower() not in _WRITTEN_FORMATS:
    return False
  try:
    with Image.open(path) as img:
      mark = img.info.get('Software') if img.format == 'PNG' else img.info.get('comment')
  except Exception:  # pylint: disable=broad-except  # Not an image, unreadable: not ours.
    return False
  if isinstance(mark, bytes):
    mark = mark.decode('latin-1')
  return isinstance(mark, str) and mark.startswith(OUTPUT_MARK + ' ')


def is_leftover_temp(name: str) -> bool:
  """Whether a file name is a temporary file of `save_image_atomic`."""
  return bool(_TEMP.search(name))


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OSError):
    return True
  return True


def clean_leftovers(folder: str) -> list[str]:
  """Removes temporary files of killed runs (their process is gone) from `folder`."""
  removed = []
  try:
    names = os.listdir(folder)
  except OSError:
    return removed
  for name in names:
    match = _TEMP.search(name)
    path = os.path.join(folder, name)
    if match and not _alive(int(match.group(1))) and os.path.isfile(path):
      try:
        os.remove(path)
        removed.append(path)
      except OSError:
        pass  # Someone else's file or already gone: left alone, never taken as input.
  return removed


@dataclasses.dataclass(frozen=True)
class Output:
  """Where a run writes: a folder, or one file (`file` set, for one input)."""
  folder: str
  file: str | None = None


def _extension_format(path: str) -> str | None:
  ext = os.path.splitext(path)[1].lower()
  return ext if ext in Image.registered_extensions() else None


def prepare_output(output: str, inputs: Sequence[str], format: str = 'rgba'  # pylint: disable=redefined-builtin
                   ) -> Output:
  """Checks (and creates) the output location before any work.

  `output` is a folder, or, when it ends in an image extension, is not an
  existing folder and there is one input file (or '-'), that one output file.

  Raises:
    OutputError: a file where a folder is needed, a location that cannot be
      created or written, a file name for several inputs, or an extension
      the format cannot be written as.
  """
  output = os.path.abspath(os.fspath(output))
  if video.has_video_extension(output) and not os.path.isdir(output):
    return _video_file_output(output, inputs, format)
  if _extension_format(output) and not os.path.isdir(output):
    single = len(inputs) == 1 and (inputs[0] == '-' or os.path.isfile(inputs[0]))
    if not single:
      raise OutputError(f'-o {output} names a file, but the inputs are '
                        f'{len(inputs)} file(s) or folder(s); give a folder')
    ext = os.path.splitext(output)[1].lower()
    allowed = ('.jpg', '.jpeg', '.png') if format == 'composite' else ('.png',)
    if ext not in allowed:
      raise OutputError(f'-o {output}: format {format!r} is written as '
                        f'{" or ".join(allowed)}, not {ext}')
    if inputs[0] != '-' and os.path.exists(output) and os.path.samefile(inputs[0], output):
      raise OutputError(f'-o {output} is the input itself; inputs are never overwritten')
    folder = os.path.dirname(output)
    _writable_folder(folder)
    return Output(folder, output)
  _writable_folder(output)
  return Output(output)


def _video_file_output(output: str, inputs: Sequence[str],
                       format: str) -> Output:  # pylint: disable=redefined-builtin
  """`-o NAME.webm|.mp4|.mov`: one video input written to that file."""
  if len(inputs) != 1 or not os.path.isfile(inputs[0]) or not video.is_video(inputs[0]):
    raise OutputError(f'-o {output} names a video file; the input must be one video file')
  try:
    container = video.container_of(output)
    video.check_container(container, format)
  except ValueError as e:
    raise OutputError(f'-o {output}: {e}') from e
  if os.path.exists(output) and os.path.samefile(inputs[0], output):
    raise OutputError(f'-o {output} is the input itself; inputs are never overwritten')
  _writable_folder(os.path.dirname(output))
  return Output(os.path.dirname(output), output)


def _writable_folder(folder: str) -> None:
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise OutputError(f'{folder}: exists and is not a folder')
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise OutputError(f'{folder}: cannot create the output folder ({e.strerror or e})') from e
  try:
    handle, probe = tempfile.mkstemp(dir=folder, prefix='.bgmat-probe-')
    os.close(handle)
    os.remove(probe)
  except OSError as e:
    raise OutputError(f'{folder}: cannot write in the output folder '
                      f'({e.strerror or e})') from e


def _identify(path: str) -> str | None:
  """None if `path` should be taken from a folder / glob, else why not."""
  name = os.path.basename(path)
  if is_leftover_temp(name):
    return 'temporary file of an interrupted run'
  if is_bgmat_output(path):
    return 'written by bgmat (an output of an earlier run)'
  if _extension_format(path) or video.has_video_extension(path):
    return None  # An image or video by its name; a broken one is reported when decoded.
  try:
    with Image.open(path):
      return None
  except Image.UnidentifiedImageError:
    return 'not an image Pillow can identify'
  except Exception:  # pylint: disable=broad-except  # Bombs, truncation: reported at decode.
    return None


def expand_inputs(inputs: Sequence[str], recursive: bool = False,
                  exclude: str | None = None,
                  ignored: list[tuple[str, str]] | None = None
                  ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
  """Files, folders and globs -> ([(path, relative output stem)], [(input, error)]).

  A file or glob match gives its base name; a folder gives each image's path
  relative to that folder (subfolders only with `recursive`), so outputs stay
  inside the output directory and same-named photos in subfolders do not clash.
  Folders and globs skip hidden files, the folder `exclude` (the output) and
  the files `_identify` refuses; those are appended to `ignored` as (path, why).
  """
  ignored = [] if ignored is None else ignored
  exclude = os.path.realpath(exclude) if exclude else None
  planned, errors = [], []

  def take(paths):
    taken = []
    for path in paths:
      why = _identify(path)
      if why:
        ignored.append((path, why))
      else:
        taken.append(path)
    return taken

  for item in inputs:
    item = os.fspath(item)
    if item == '-':
      planned.append(('-', 'stdin'))
    elif os.path.isdir(item):
      found = []
      for root, dirs, files in os.walk(item):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.') and
                         os.path.realpath(os.path.join(root, d)) != exclude)
        if not recursive:
          dirs.clear()
        found += take(os.path.join(root, f) for f in sorted(files) if not f.startswith('.'))
      if not found:
        errors.append((item, 'no images in this folder'))
      planned += [(p, os.path.splitext(os.path.relpath(p, item))[0]) for p in found]
    elif not os.path.exists(item) and any(c in item for c in '*?['):
      matches = sorted(p for p in glob.glob(item, recursive=recursive) if os.path.isfile(p))
      matches = take(matches)
      if not matches:
        errors.append((item, 'no files match this pattern'))
      planned += [(p, _stem(p)) for p in matches]
    else:
      planned.append((item, _stem(item)))  # A missing file fails later, with the others.
  return planned, errors


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0] or 'image'


def _file_id(path: str) -> tuple[int, int] | None:
  try:
    stat = os.stat(path)
  except OSError:
    return None
  return stat.st_dev, stat.st_ino


@dataclasses.dataclass
class Summary:
  """What `process_inputs` did: output paths written, inputs skipped (output exists),
  (input, error) failed, (file, why) not taken from folders / globs, (input, note)."""
  written: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  notes: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _decoded(items: Sequence[tuple], workers: int, in_flight: int, max_pixels: int):
  """Yields (item, Photo or InputError) in order for items (path, ...), decoding in
  `workers` threads with at most `in_flight` photos ahead (bounded memory)."""
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    pending = collections.deque()
    for item in items:
      pending.append((item, pool.submit(image_io.read_photo, item[0], max_pixels)))
      if len(pending) >= in_flight:
        yield _result(*pending.popleft())
    while pending:
      yield _result(*pending.popleft())


def _result(item, future):
  try:
    return item, future.result()
  except image_io.InputError as e:
    return item, e
  except Exception as e:  # pylint: disable=broad-except  # One photo never stops the run.
    return item, image_io.InputError(f'{item[0]}: not a readable image '
                                     f'({type(e).__name__}: {e})')


def _describe(error: BaseException) -> str:
  text = str(error) or repr(error)
  return f'{type(error).__name__}: {text}'


class _Names:
  """Output names of one run: unique (case-insensitively), never an input's file,
  never a file bgmat did not write."""

  def __init__(self, input_ids: set[tuple[int, int]]):
    self.input_ids = input_ids
    self.taken: set[str] = set()

  def free(self, path: str) -> bool:
    if os.path.normcase(path).casefold() in self.taken:
      return False
    file_id = _file_id(path)
    if file_id is None:
      return not os.path.lexists(path)
    if file_id in self.input_ids:
      return False
    if os.path.isdir(path):  # A PNG sequence of an earlier run is replaced.
      return video.is_bgmat_video(path)
    return os.path.isfile(path) and is_bgmat_output(path)

  def pick(self, folder: str, rel_stem: str, ext: str, alpha: bool) -> tuple[str, str]:
    """-> (output path, alpha path): the first free `<stem>`, `<stem>-2`, ..."""
    n = 1
    while True:
      stem = rel_stem if n == 1 else f'{rel_stem}-{n}'
      target = os.path.join(folder, stem + ext)
      alpha_target = os.path.join(folder, f'{stem}_alpha.png')
      if self.free(target) and (not alpha or self.free(alpha_target)):
        self.taken.add(os.path.normcase(target).casefold())
        if alpha:
          self.taken.add(os.path.normcase(alpha_target).casefold())
        return target, alpha_target
      n += 1


def process_inputs(remover, inputs: Sequence[str], out_dir: str, *,
                   format: str = 'rgba',  # pylint: disable=redefined-builtin
                   bg: Any = 'white', foreground_method: str = foreground.DEFAULT_METHOD,
                   recursive: bool = False, skip_existing: bool = False,
                   save_alpha: bool = False, batch_size: int = 1, workers: int = 2,
                   keep_transparency: bool = False, max_pixels: int | None = None,
                   progress: bool | None = False, log=print, log_written: bool = True,
                   video_container: str | None = None, video_batch_size: int | None = None,
                   temporal_smoothing: float = 0.0, sequence: bool = False) -> Summary:
  """Cuts out every input (files, folders, globs, '-') into `out_dir` (a folder, or
  one file for one input, see `prepare_output`); one bad input never stops the
  others. Outputs: OUT_DIR/<stem>.png (.jpg for composite), in input order,
  named as the module docstring says.

  Photos are decoded by `workers` threads while the device runs; photos of one
  bucket are matted `batch_size` at a time. A window of W = 2 * max(batch_size, 4)
  decoded photos is matted together while up to W - 1 more decode, and nothing
  per photo is kept but its output path, so memory stays flat over any number
  of photos.

  Videos (`video.is_video`: by extension, or probed when named) are written
  by `video.remove_video` as OUT_DIR/<stem>.webm (rgba) or .mp4 (the other
  formats), or in `video_container` ('webm', 'mp4', 'mov', 'png': a folder
  <stem>/ of frames); `-o NAME.webm|.mp4|.mov` for one video. One video is one
  item of the run: a bad one is a failure naming it, and the run goes on.

  Args:
    keep_transparency: an input's own alpha bounds the matte (`constrain_alpha`).
    video_batch_size: video frames per model call (default max(batch_size, 4)).
    temporal_smoothing: s in [0, 1) of `video.PriorSmoother` for videos (and,
      with `sequence`, for images); 0 is off.
    sequence: the images are frames of one sequence, in their sorted order:
      the prior is smoothed across them (needs temporal_smoothing > 0); it
      starts afresh in each folder and at a new frame size or scene cut.
    max_pixels: bgmat's pixel limit (default: the remover's).
    progress: a tqdm bar (images/s) on stderr; None: only when stderr is a terminal.
    log: called with one line per event; `log_written=False` keeps only errors.

  Raises:
    ValueError: unknown format, batch_size < 1, a bad background.
    OutputError: the output location cannot be used (before any work).
  """
  if format not in render_lib.FORMATS:
    raise ValueError(f'Unknown format {format!r}; known: {list(render_lib.FORMATS)}')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if video_container is not None:
    video.check_container(video_container, format)
  if sequence and not temporal_smoothing:
    raise ValueError('sequence smooths the prior across frames: give temporal_smoothing > 0')
  smoother = video.PriorSmoother(temporal_smoothing) if sequence else None
  video_batch_size = video_batch_size or max(batch_size, 4)
  if format == 'composite':
    bg = render_lib.parse_background(bg)  # Fail before any work; read a photo once.
  inputs = [os.fspath(i) for i in inputs]
  output = prepare_output(out_dir, inputs, format)
  max_pixels = max_pixels or getattr(remover, 'max_pixels', image_io.MAX_PIXELS)
  summary = Summary()
  planned, failures = expand_inputs(inputs, recursive, exclude=output.folder,
                                    ignored=summary.ignored)
  for item, error in failures:
    log(f'error: {item}: {error}')
  summary.failures += failures
  if log_written:
    for path, why in summary.ignored:
      log(f'{path}: not taken: {why}')
  bar = tqdm.tqdm(total=len(planned), unit='img', file=sys.stderr, dynamic_ncols=True,
                  disable=None if progress is None else not progress)
  if not bar.disable and log is print:
    log = lambda line: tqdm.tqdm.write(line, file=sys.stdout)  # Keeps the bar intact.

  names = _Names({i for i in (_file_id(p) for p, _ in planned if p != '-') if i})
  ext = render_lib.EXTENSIONS[format]
  todo, folders, videos = [], set(), []

  def skip(path, target) -> bool:
    """--skip-existing: True (and counted, logged) when target exists."""
    if not (skip_existing and os.path.exists(target)):
      return False
    if log_written:
      log(f'{path}: {target} exists, skipped')
    summary.skipped.append(path)
    bar.update()
    return True

  for path, rel_stem in planned:
    if path != '-' and video.is_video(path):
      container = video_container or video.DEFAULT_CONTAINER[format]
      if output.file:
        target = output.file
        if not video.has_video_extension(target):
          message = (f'{path}: a video is written into a folder or to -o NAME.webm, .mp4 '
                     f'or .mov, not {target}')
          log(f'error: {message}')
          summary.failures.append((path, message))
          bar.update()
          continue
        container = video.container_of(target)
      else:
        target, _ = names.pick(output.folder, rel_stem, video.EXTENSIONS[container], False)
      if skip(path, target):
        continue
      videos.append((path, target, container))
      continue
    if output.file:
      target = output.file
      alpha_target = os.path.splitext(target)[0] + '_alpha.png'
    else:
      target, alpha_target = names.pick(output.folder, rel_stem, ext,
                                        save_alpha and format != 'alpha')
      wanted = os.path.join(output.folder, rel_stem + ext)
      if target != wanted and os.path.lexists(wanted) and log_written:
        log(f'{path}: {wanted} is an input or a file bgmat did not write; writing '
            f'{target} instead')
    folders.add(os.path.dirname(target))
    if skip(path, target):
      continue
    todo.append((path, target, alpha_target))
  for folder in folders:
    clean_leftovers(folder)

  def fail(path, message):
    log(f'error: {message}')
    summary.failures.append((path, message))

  def write(path, target, alpha_target, photo, alpha):
    alpha = render_lib.constrain_alpha(alpha, photo.alpha if keep_transparency else None)
    try:
      array = render_lib.render(photo.rgb, alpha, format, bg=bg,
                                 foreground_method=foreground_method)
    except Exception as e:  # pylint: disable=broad-except  # One photo never stops the run.
      return fail(path, f'{path}: {format} output failed ({_describe(e)})')
    try:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      # The photo's colours keep its profile; a matte has none.
      save_image_atomic(array, target, icc_profile=photo.icc_profile)
      if save_alpha and format != 'alpha':
        save_image_atomic(np.round(alpha * 255).astype(np.uint8), alpha_target)
    except Exception as e:  # pylint: disable=broad-except
      return fail(path, f'{path}: cannot write {target} ({_describe(e)})')
    summary.written.append(target)
    if log_written:
      log(f'{path} -> {target}')

  def smoothed_priors(loaded):
    """The sequence's smoothed priors of the window, in order (None: no sequence)."""
    if smoother is None:
      return None
    priors = []
    rgbs = [p.rgb for _, p in loaded]
    for (item, _), rgb, prior in zip(loaded, rgbs, remover.presegment(rgbs, batch_size)):
      folder = os.path.dirname(os.path.abspath(item[0]))
      if folder != smoothed_priors.folder:
        smoother.reset()
        smoothed_priors.folder = folder
      priors.append(smoother(prior, rgb))
    return priors
  smoothed_priors.folder = None

  def matte(loaded):
    """[(item, Photo)] -> [alpha or exception]: the window at once, or one by one
    when it fails, so only the photo at fault is lost."""
    try:
      results = remover.predict_batch([p.rgb for _, p in loaded], batch_size,
                                      with_preseg=False, priors=smoothed_priors(loaded))
      return [r['alpha'] for r in results]
    except Exception:  # pylint: disable=broad-except
      if len(loaded) == 1:
        return [sys.exc_info()[1]]
    alphas = []
    for _, photo in loaded:
      try:
        alphas.append(remover.predict_batch([photo.rgb], batch_size,
                                            with_preseg=False)[0]['alpha'])
      except Exception as e:  # pylint: disable=broad-except
        alphas.append(e)
    return alphas

  window = 2 * max(batch_size, 4)
  loaded = []  # [((path, target, alpha_target), Photo)]: at most `window`.
  for index, (item, photo) in enumerate(_decoded(todo, workers, window, max_pixels)):
    if isinstance(photo, image_io.InputError):
      fail(item[0], str(photo))
      bar.update()
    else:
      for note in photo.notes:
        summary.notes.append((item[0], note))
        log(f'{item[0]}: note: {note}')
      loaded.append((item, photo))
    if len(loaded) == window or (loaded and index == len(todo) - 1):
      for (item_done, photo_done), alpha in zip(loaded, matte(loaded)):
        if isinstance(alpha, BaseException):
          trace = ''.join(traceback.format_exception_only(type(alpha), alpha)).strip()
          fail(item_done[0], f'{item_done[0]}: matting failed ({trace})')
        else:
          write(*item_done, photo_done, alpha)
        bar.update()
      loaded = []
      _return_freed_memory()
  if videos and save_alpha and format != 'alpha' and log_written:
    log('note: --save-alpha is for photos; a video\'s matte is --format alpha')
  for path, target, container in videos:
    try:
      info = video.remove_video(
          remover, path, target, format=format, container=container, bg=bg,
          foreground_method=foreground_method, batch_size=video_batch_size,
          temporal_smoothing=temporal_smoothing, max_pixels=max_pixels)
    except image_io.InputError as e:  # video.VideoError: names the file.
      fail(path, str(e))
    except Exception as e:  # pylint: disable=broad-except  # One video never stops the run.
      fail(path, f'{path}: video failed ({_describe(e)})')
    else:
      summary.written.append(target)
      if log_written:
        log(f'{path} -> {target} ({info.frames} frames, {info.width}x{info.height}, '
            f'{float(info.frame_rate or 0):.3g} frames/s, audio '
            f'{info.audio or "none"}, {info.frames / info.seconds:.2f} frames/s)')
    bar.update()
    _return_freed_memory()
  bar.close()
  return summary


def _return_freed_memory() -> None:
  """Hands the C heap's free pages back to the OS (glibc `malloc_trim(0)`).

  Photos of many sizes leave the heap fragmented at its high-water mark; glibc
  keeps freed pages mapped, so RSS would only grow over a folder. A no-op where
  the C library has no `malloc_trim` (musl, macOS, Windows).
  """
  trim = _malloc_trim()
  if trim is not None:
    trim(0)


@functools.cache
def _malloc_trim():
  """The C library's `malloc_trim`, or None where there is none (resolved once)."""
  try:
    return ctypes.CDLL(None).malloc_trim
  except (AttributeError, OSError):
    return None


def remove_files(remover, paths: Sequence[str], out_dir: str, *,
                 save_alpha: bool = False, log=print, **kwargs) -> list[tuple[str, str]]:
  """Writes OUT_DIR/<stem>.png (RGBA) per input; returns [(path, error)] of failures.

  Outputs are named by the input's base name only, so nothing is written
  outside `out_dir`. One bad input never stops the others. `kwargs` go to
  `process_inputs` (format, bg, foreground_method, recursive, skip_existing).
  """
  kwargs.setdefault('foreground_method', 'none')  # This function's original output.
  return process_inputs(remover, paths, out_dir, save_alpha=save_alpha, log=log,
                        **kwargs).failures
