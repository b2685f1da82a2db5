"""Video in `bgmat remove`: clips in, matte / composite / cut-out videos out (PyAV).

  bgmat remove clip.mp4 -o out/ --workdir W                     # out/clip.webm: VP9 + alpha
  bgmat remove clip.mp4 -o out/ --workdir W --format composite --bg '#00b140'  # out/clip.mp4
  bgmat remove clip.mp4 -o out/ --workdir W --format alpha      # out/clip.mp4: the matte, grey
  bgmat remove clip.mp4 -o out/ --workdir W --video-container mov   # ProRes 4444 with alpha
  bgmat remove clip.mp4 -o out/ --workdir W --video-container png   # out/clip/000001.png ...
  bgmat remove clip.mp4 -o cut.webm --workdir W --temporal-smoothing 0.6

  remove_video(remover, 'clip.mp4', 'out/clip.webm')            # the same from Python

| container | video codec, pixels | --format | audio |
|---|---|---|---|
| webm (rgba's default) | VP9, yuva420p (alpha) / yuv420p | all | copied if Opus/Vorbis, else Opus |
| mp4 (the others') | H.264 CRF 18, yuv420p | alpha, foreground, composite | copied, else AAC |
| mov | ProRes 4444, yuva444p10le (alpha) / yuv444p10le | all | copied, else AAC |
| png | folder NAME/ of 000001.png ... (RGBA, L, RGB) | all | copied to NAME/audio.m4a (.mka) |

Frame count, size and timestamps (so the frame rate, constant or variable) are the
input's; `alpha` is the matte as luma. Frames are decoded by a reader thread and
encoded by a writer thread while the model runs `batch_size` frames at a time
(`Remover.predict_batch`), with bounded queues between them, so memory does not
grow with the clip's length. Outputs are written to a hidden temporary name
beside the target and renamed when complete (`bgmat.atomic`); a PNG sequence is
a temporary folder renamed at the end. A clip that cannot be decoded is a
`VideoError` naming it; nothing is left under the target name.

Temporal smoothing (`temporal_smoothing` = s in [0, 1), 0 = off, the default):
the pre-segmentation probability p (the prior, at the working size) is
averaged over frames, P_t = w * P_{t-1} + (1 - w) * p_t, where the frame did
not change: w = s * clip(1 - d / motion_threshold, 0, 1), d the absolute grey
difference between this frame and the last (box-blurred, at the prior's size).
Static background gets the exponential moving average (flicker damped); what
moves gets this frame's prior (no trail behind a moving subject); a scene cut
(mean d above `cut_threshold`) or a new frame size starts afresh. The matting
network then refines each frame as usual.
"""

import concurrent.futures
import dataclasses
import fractions
import json
import os
import queue
import shutil
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from bgmat import atomic
from bgmat import foreground
from bgmat.inference import image_io
from bgmat.inference import render as render_lib

# Inputs taken as video by their name (folders, globs); a named file without a
# known image or video extension is probed (`is_video`).
VIDEO_EXTENSIONS = frozenset({
    '.mp4', '.m4v', '.mov', '.qt', '.mkv', '.webm', '.avi', '.mpg', '.mpeg', '.ts', '.mts',
    '.m2ts', '.3gp', '.ogv', '.wmv', '.flv'})
CONTAINERS = ('webm', 'mp4', 'mov', 'png')
DEFAULT_CONTAINER = {'rgba': 'webm', 'alpha': 'mp4', 'foreground': 'mp4', 'composite': 'mp4'}
EXTENSIONS = {'webm': '.webm', 'mp4': '.mp4', 'mov': '.mov', 'png': ''}
# The mark of a PNG sequence folder bgmat wrote (a JSON file: frame rate, frames, source).
SEQUENCE_MARK = '.bgmat-sequence.json'
_AUDIO_ENCODER = {'webm': 'libopus', 'mp4': 'aac', 'mov': 'aac'}
_AUDIO_RATES = {'libopus': (48000, 24000, 16000, 12000, 8000)}
# FFmpeg demuxers of still images: such inputs are photos (Pillow's), never video.
_IMAGE_DEMUXERS = frozenset({'image2', 'gif', 'apng', 'webp', 'ico', 'tiff'})
_QUEUE_POLL_S = 0.1


class VideoError(image_io.InputError):
  """A video input that cannot be read or written; the message names the file."""


@dataclasses.dataclass(frozen=True)
class _Encoding:
  codec: str
  pix_fmt: str
  options: dict[str, str]


def _encoding(container: str, with_alpha: bool) -> _Encoding:
  if container == 'webm':
    # CRF mode (b=0); 'good' at speed 4 with row threading: about real time at 512 px.
    return _Encoding('libvpx-vp9', 'yuva420p' if with_alpha else 'yuv420p',
                     {'crf': '30', 'b': '0', 'deadline': 'good', 'cpu-used': '4',
                      'row-mt': '1'})
  if container == 'mov':
    return _Encoding('prores_ks', 'yuva444p10le' if with_alpha else 'yuv444p10le',
                     {'profile': '4444'})
  if container == 'mp4':
    if with_alpha:
      raise ValueError('mp4 (H.264) has no alpha channel; for --format rgba use '
                       '--video-container webm, mov or png')
    return _Encoding('libx264', 'yuv420p', {'crf': '18', 'preset': 'veryfast'})
  raise ValueError(f'Unknown video container {container!r}; known: {list(CONTAINERS)}')


def check_container(container: str, format: str) -> None:  # pylint: disable=redefined-builtin
  """Raises ValueError for an unknown container or one that cannot hold `format`."""
  if container != 'png':
    _encoding(container, format == 'rgba')


def _av():
  """PyAV, or a clear error when the `video` extra is not installed."""
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise VideoError('video needs PyAV: pip install "bgmat[video]"', 'missing_dependency') from e
  return av


def available() -> bool:
  """Whether PyAV can be imported (the `video` extra)."""
  try:
    _av()
  except VideoError:
    return False
  return True


def has_video_extension(path: str) -> bool:
  return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def is_video(path: str) -> bool:
  """Whether a file is a video: by its extension (VIDEO_EXTENSIONS); a file with
  neither a video nor an image extension is probed with FFmpeg (a container
  with a video stream that is not a still-image format). False without PyAV."""
  path = os.fspath(path)
  if has_video_extension(path):
    return True
  if os.path.splitext(path)[1].lower() in Image.registered_extensions() or not available():
    return False
  av = _av()
  try:
    with av.open(path) as container:
      demuxers = set(container.format.name.split(','))
      return bool(container.streams.video) and not (
          demuxers & _IMAGE_DEMUXERS or any(d.endswith('_pipe') for d in demuxers))
  except Exception:  # pylint: disable=broad-except  # Whatever FFmpeg refuses is not a video.
    return False


def is_bgmat_video(path: str) -> bool:
  """Whether `path` is a video file or a PNG sequence folder that bgmat wrote."""
  if os.path.isdir(path):
    return os.path.isfile(os.path.join(path, SEQUENCE_MARK))
  if not has_video_extension(path) or not available():
    return False
  try:
    with _av().open(path) as container:
      # Matroska upper-cases tag names (COMMENT); mp4 / mov keep 'comment'.
      comments = [v for k, v in container.metadata.items() if k.lower() == 'comment']
      return any(str(c).startswith(_mark_prefix()) for c in comments)
  except Exception:  # pylint: disable=broad-except  # Unreadable: not ours.
    return False


def _mark_prefix() -> str:
  return 'bgmat '


def _mark() -> str:
  from bgmat import __version__  # pylint: disable=g-import-not-at-top
  return f'bgmat {__version__}'


def container_of(target: str) -> str:
  """The container a target path names by its extension ('webm', 'mp4', 'mov')."""
  ext = os.path.splitext(target)[1].lower()
  for container, container_ext in EXTENSIONS.items():
    if container_ext and ext == container_ext:
      return container
  raise ValueError(f'{target}: a video output ends in .webm, .mp4 or .mov (or pass '
                   "container='png' for a folder of PNG frames)")


class PriorSmoother:
  """Motion-gated exponential moving average of the pre-segmentation across frames
  (the module docstring). Call it on each frame in order.

  Args:
    strength: s in [0, 1): the weight of the past on a static pixel; 0 is off.
    motion_threshold: grey difference (in [0, 1]) at which a pixel counts as
      moving and takes this frame's prior alone.
    cut_threshold: mean grey difference above which the frame is a scene cut.
  """

  def __init__(self, strength: float, motion_threshold: float = 0.08,
               cut_threshold: float = 0.25):
    if not 0.0 <= strength < 1.0:
      raise ValueError(f'temporal smoothing must be in [0, 1), got {strength}')
    self.strength = float(strength)
    self.motion_threshold = float(motion_threshold)
    self.cut_threshold = float(cut_threshold)
    self.cuts = 0
    self._prior = None
    self._grey = None

  def reset(self) -> None:
    self._prior = self._grey = None

  def __call__(self, prior: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """prior (h, w) float32 in [0, 1] (`Remover.presegment`), frame (H, W, 3) uint8
    -> the smoothed prior, (h, w) float32 in [0, 1]."""
    grey = np.asarray(Image.fromarray(frame).convert('L').resize(
        prior.shape[::-1], Image.BILINEAR), np.float32) / 255.0
    previous, previous_grey = self._prior, self._grey
    self._grey = grey
    if previous is None or previous.shape != prior.shape or self.strength == 0.0:
      self._prior = prior.astype(np.float32)
      return self._prior
    change = ndimage.uniform_filter(np.abs(grey - previous_grey), size=5)
    if float(change.mean()) > self.cut_threshold:
      self.cuts += 1
      self._prior = prior.astype(np.float32)
      return self._prior
    weight = self.strength * np.clip(1.0 - change / self.motion_threshold, 0.0, 1.0)
    self._prior = (weight * previous + (1.0 - weight) * prior).astype(np.float32)
    return self._prior


def flicker(alphas: Sequence[np.ndarray], mask: np.ndarray | None = None) -> float:
  """Mean absolute alpha change between consecutive frames over `mask`.

  Args:
    alphas: T >= 2 mattes, (H, W) float in [0, 1] (uint8 is read as / 255).
    mask: (H, W) bool, the pixels to measure (e.g. the static background);
      None: every pixel.
  Returns:
    The mean over the T - 1 frame pairs of mean |a_t - a_{t-1}| on the mask, in [0, 1].
  Raises:
    ValueError: fewer than 2 frames, or an empty mask.
  """
  if len(alphas) < 2:
    raise ValueError(f'flicker needs at least 2 frames, got {len(alphas)}')
  if mask is not None and not mask.any():
    raise ValueError('flicker mask selects no pixel')
  frames = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
            for a in alphas]
  changes = []
  for before, after in zip(frames, frames[1:]):
    diff = np.abs(after - before)
    changes.append(float(diff[mask].mean() if mask is not None else diff.mean()))
  return float(np.mean(changes))


@dataclasses.dataclass
class VideoInfo:
  """What `remove_video` wrote: frames, size (width, height), frame rate (the
  container's average, frames/s), audio ('copied aac', 'aac -> libopus', or
  None), seconds of wall time, and scene cuts the smoothing reset at."""
  target: str
  frames: int
  width: int
  height: int
  frame_rate: fractions.Fraction | None
  audio: str | None
  seconds: float
  cuts: int = 0


class _Stop(Exception):
  """The run is stopping (an error elsewhere); a thread leaves quietly."""


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
  while True:
    if stop.is_set():
      raise _Stop()
    try:
      q.put(item, timeout=_QUEUE_POLL_S)
      return
    except queue.Full:
      continue


def _get(q: queue.Queue, stop: threading.Event):
  while True:
    if stop.is_set():
      raise _Stop()
    try:
      return q.get(timeout=_QUEUE_POLL_S)
    except queue.Empty:
      continue


_END = ('end',)


def _open_input(path: str, max_pixels: int):
  av = _av()
  try:
    container = av.open(path, metadata_errors='ignore')
  except Exception as e:  # pylint: disable=broad-except  # FFmpeg's errors vary by container.
    if isinstance(e, FileNotFoundError) or not os.path.exists(path):
      raise VideoError(f'{path}: no such file', 'missing') from e
    raise VideoError(f'{path}: not a readable video ({type(e).__name__}: {e})',
                     'unreadable') from e
  if not container.streams.video:
    container.close()
    raise VideoError(f'{path}: no video stream', 'not_a_video')
  stream = container.streams.video[0]
  width, height = stream.codec_context.width, stream.codec_context.height
  if width * height == 0:
    container.close()
    raise VideoError(f'{path}: video stream has no size', 'unreadable')
  if width * height > max_pixels:
    container.close()
    raise VideoError(f'{path}: {width}x{height} pixels per frame is over the limit of '
                     f'{max_pixels}', 'decompression_bomb')
  return container


def _reader(container, path, out_q, stop, max_pixels):
  """Decodes frames -> ('frame', rgb, pts, time_base); audio packets -> ('audio', packet)."""
  video_in = container.streams.video[0]
  audio_in = container.streams.audio[0] if container.streams.audio else None
  video_in.thread_type = 'AUTO'
  streams = [video_in] + ([audio_in] if audio_in is not None else [])
  index = 0
  try:
    for packet in container.demux(streams):
      if packet.stream.type == 'audio':
        if packet.size and packet.dts is not None:  # Not the demuxer's empty flush packet.
          _put(out_q, ('audio', packet), stop)
        continue
      for frame in packet.decode():
        if frame.width * frame.height > max_pixels:
          raise VideoError(f'{path}: frame {index} is {frame.width}x{frame.height} pixels, '
                           f'over the limit of {max_pixels}', 'decompression_bomb')
        rgb = frame.to_ndarray(format='rgb24')
        _put(out_q, ('frame', rgb, frame.pts, frame.time_base), stop)
        index += 1
    if not index:
      raise VideoError(f'{path}: no frame could be decoded', 'unreadable')
    _put(out_q, _END, stop)
  except _Stop:
    pass
  except Exception as e:  # pylint: disable=broad-except  # Handed to the main thread.
    stop_error = e if isinstance(e, VideoError) else VideoError(
        f'{path}: not a readable video at frame {index} ({type(e).__name__}: {e})',
        'unreadable')
    try:
      _put(out_q, ('error', stop_error), stop)
    except _Stop:
      pass


class _Writer:
  """Renders, encodes and muxes frames and audio into a temporary target (thread)."""

  def __init__(self, temp: str, container: str, fmt: str, input_container, bg,
               foreground_method: str, source: str):
    av = _av()
    self.container_name, self.format, self.temp = container, fmt, temp
    self.bg, self.foreground_method = bg, foreground_method
    video_in = input_container.streams.video[0]
    self.audio_in = input_container.streams.audio[0] if input_container.streams.audio else None
    self.rate = video_in.average_rate or video_in.guessed_rate or fractions.Fraction(25)
    self.time_base = video_in.time_base or 1 / self.rate
    self.frames, self.audio = 0, None
    self.output = self.audio_output = self.stream = self.audio_stream = None
    self._background = None
    self._audio_encoder = None
    self._next_pts = 0
    if container == 'png':
      os.makedirs(temp)
      self.sequence_info = {'frame_rate': str(self.rate), 'source': os.path.basename(source),
                            'format': fmt, 'written_by': _mark()}
      if self.audio_in is not None:
        # .m4a keeps AAC's encoder delay (an edit list); Matroska takes any codec.
        name = self.audio_in.codec_context.name
        self.audio_output = av.open(os.path.join(temp, 'audio.m4a'), 'w', format='mp4')
        if name not in self.audio_output.supported_codecs:
          self.audio_output.close()
          os.remove(os.path.join(temp, 'audio.m4a'))
          self.audio_output = av.open(os.path.join(temp, 'audio.mka'), 'w', format='matroska')
        self.audio_stream = self.audio_output.add_stream_from_template(self.audio_in)
        self.audio = f'copied {name} ({os.path.basename(self.audio_output.name)})'
      return
    encoding = _encoding(container, fmt == 'rgba')
    self.output = av.open(temp, 'w', format={'mp4': 'mp4', 'mov': 'mov', 'webm': 'webm'}[
        container])
    self.output.metadata['comment'] = _mark()
    self.stream = self.output.add_stream(encoding.codec, rate=self.rate,
                                         options=dict(encoding.options))
    self.stream.width, self.stream.height = video_in.codec_context.width, \
        video_in.codec_context.height
    self.stream.pix_fmt = encoding.pix_fmt
    self.stream.time_base = self.time_base
    self.stream.thread_type = 'AUTO'
    if self.audio_in is not None:
      name = self.audio_in.codec_context.name
      if name in self.output.supported_codecs:
        self.audio_stream = self.output.add_stream_from_template(self.audio_in)
        self.audio = f'copied {name}'
      else:
        encoder = _AUDIO_ENCODER[container]
        rate = self.audio_in.codec_context.sample_rate
        rates = _AUDIO_RATES.get(encoder)
        if rates and rate not in rates:
          rate = rates[0]
        self.audio_stream = self.output.add_stream(encoder, rate=rate)
        self.audio_stream.layout = self.audio_in.codec_context.layout
        self._audio_encoder = self.audio_stream
        self.audio = f'{name} -> {encoder}'
    self.audio_output = self.output

  def _render(self, rgb: np.ndarray, alpha: np.ndarray):
    av = _av()
    bg = self.bg
    if self.format == 'composite' and not isinstance(bg, tuple):
      if self._background is None or self._background.shape != rgb.shape:
        # pylint: disable-next=protected-access
        self._background = render_lib.cover(bg, *rgb.shape[:2])
      bg = self._background
    array = render_lib.render(rgb, alpha, self.format, bg=bg,
                               foreground_method=self.foreground_method)
    if self.container_name == 'png':
      return array
    pixel_format = {2: 'gray', 3: 'rgb24', 4: 'rgba'}[array.ndim if array.ndim == 2
                                                        else array.shape[-1]]
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=pixel_format)

  def frame(self, rgb: np.ndarray, alpha: np.ndarray, pts, time_base) -> None:
    rendered = self._render(rgb, alpha)
    self.frames += 1
    if self.container_name == 'png':
      from bgmat.inference import remove_run  # pylint: disable=g-import-not-at-top
      remove_run.save_image_atomic(rendered, os.path.join(self.temp, f'{self.frames:06d}.png'))
      return
    if pts is None or time_base is None:  # Containers without timestamps: by frame count.
      pts, time_base = self._next_pts, 1 / self.rate
    rendered.pts, rendered.time_base = pts, time_base
    self._next_pts = pts + 1
    for packet in self.stream.encode(rendered):
      self.output.mux(packet)

  def audio_packet(self, packet) -> None:
    if self._audio_encoder is None:
      packet.stream = self.audio_stream
      self.audio_output.mux(packet)
      return
    for frame in self.audio_in.codec_context.decode(packet):
      frame.pts = None  # The encoder's resampler re-times the samples.
      for out_packet in self._audio_encoder.encode(frame):
        self.output.mux(out_packet)

  def finish(self) -> None:
    if self.stream is not None:
      for packet in self.stream.encode():
        self.output.mux(packet)
    if self._audio_encoder is not None:
      for frame in self.audio_in.codec_context.decode(None):
        frame.pts = None
        for out_packet in self._audio_encoder.encode(frame):
          self.output.mux(out_packet)
      for out_packet in self._audio_encoder.encode():
        self.output.mux(out_packet)
    self.close()
    if self.container_name == 'png':
      self.sequence_info['frames'] = self.frames
      atomic.write_json(os.path.join(self.temp, SEQUENCE_MARK), self.sequence_info, indent=1)

  def close(self) -> None:
    for output in {id(o): o for o in (self.output, self.audio_output) if o is not None}.values():
      output.close()
    self.output = self.audio_output = None


def _writer_loop(writer: _Writer, in_q: queue.Queue, stop: threading.Event) -> None:
  try:
    while True:
      item = _get(in_q, stop)
      if item is _END:
        writer.finish()
        return
      if item[0] == 'audio':
        writer.audio_packet(item[1])
      else:
        writer.frame(*item[1:])
  except _Stop:
    return
  except BaseException:
    stop.set()  # The model loop and the reader stop too.
    raise


def remove_video(remover, source: str, target: str, *,
                 format: str = 'rgba',  # pylint: disable=redefined-builtin
                 container: str | None = None, bg: Any = 'white',
                 foreground_method: str = foreground.DEFAULT_METHOD, batch_size: int = 4,
                 temporal_smoothing: 'float | PriorSmoother' = 0.0,
                 max_pixels: int | None = None,
                 alphas: Callable[[np.ndarray], None] | None = None) -> VideoInfo:
  """Cuts the background out of every frame of `source` into `target`.

  Args:
    remover: a `bgmat.Remover` (its `presegment` and `predict_batch`).
    source: a video file FFmpeg can read.
    target: the output file (.webm, .mp4, .mov), or the folder of a PNG
      sequence (container 'png'); written atomically, replaced if it exists.
    format: 'rgba' (needs webm, mov or png), 'alpha', 'foreground' or
      'composite' (over `bg`: a colour or an image, resized to cover).
    container: 'webm', 'mp4', 'mov' or 'png'; None: by `target`'s extension.
    batch_size: frames per model call.
    temporal_smoothing: s in [0, 1) of `PriorSmoother` (0 is off), or a
      `PriorSmoother` (its thresholds).
    max_pixels: the frame size limit (default: the remover's).
    alphas: called with each frame's matte, (H, W) float32 in [0, 1], in order
      (benchmarks, tests).
  Returns:
    A `VideoInfo`.
  Raises:
    VideoError: the source cannot be read (naming it), or the output cannot be
      encoded; nothing is left under `target`.
    ValueError: unknown format or container, rgba in mp4, bad smoothing.
  """
  if format not in render_lib.FORMATS:
    raise ValueError(f'Unknown format {format!r}; known: {list(render_lib.FORMATS)}')
  container = container or container_of(target)
  check_container(container, format)  # Refuses rgba in mp4 before any work.
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if isinstance(temporal_smoothing, PriorSmoother):
    smoother = temporal_smoothing
  else:
    smoother = PriorSmoother(temporal_smoothing) if temporal_smoothing else None
  if format == 'composite':
    bg = render_lib.parse_background(bg)
  max_pixels = max_pixels or getattr(remover, 'max_pixels', image_io.MAX_PIXELS)
  start = time.perf_counter()
  source, target = os.fspath(source), os.path.abspath(os.fspath(target))
  input_container = _open_input(source, max_pixels)
  width = input_container.streams.video[0].codec_context.width
  height = input_container.streams.video[0].codec_context.height
  temp = atomic.temporary_path(target, EXTENSIONS[container])
  try:
    os.makedirs(os.path.dirname(target), exist_ok=True)
  except OSError as e:
    input_container.close()
    raise VideoError(f'{source}: cannot create the folder of {target} ({e})', 'unwritable') from e
  stop = threading.Event()
  frames_q, encode_q = queue.Queue(maxsize=2 * batch_size), queue.Queue(maxsize=2 * batch_size)
  writer = None
  try:
    writer = _Writer(temp, container, format, input_container, bg, foreground_method, source)
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix='bgmat-video') as pool:
      reading = pool.submit(_reader, input_container, source, frames_q, stop, max_pixels)
      writing = pool.submit(_writer_loop, writer, encode_q, stop)
      try:
        _run_model(remover, frames_q, encode_q, stop, writing, batch_size, smoother, alphas)
        writing.result()
      except _Stop:
        pass  # The writer stopped the run: its error is raised below.
      finally:
        stop.set()  # Releases a reader blocked on a full queue after an error.
        reading.result()
      if writing.exception() is not None:
        raise VideoError(f'{source}: cannot write {target} '
                         f'({type(writing.exception()).__name__}: {writing.exception()})',
                         'unwritable') from writing.exception()
    if container == 'png':
      _replace_folder(temp, target)
    else:
      os.replace(temp, target)
  finally:
    if writer is not None:
      try:
        writer.close()
      except Exception:  # pylint: disable=broad-except  # Already failing; the temp goes below.
        pass
    input_container.close()
    if os.path.isdir(temp):
      shutil.rmtree(temp, ignore_errors=True)
    elif os.path.exists(temp):
      os.remove(temp)
  return VideoInfo(target, writer.frames, width, height, writer.rate, writer.audio,
                   time.perf_counter() - start, smoother.cuts if smoother else 0)


def _run_model(remover, frames_q, encode_q, stop, writing, batch_size, smoother, alphas):
  """Main thread: frames from the reader, `batch_size` at a time through the model,
  to the writer; audio packets pass through in their order among the frames."""
  pending = []  # Reader items since the last model call.

  def flush():
    frames = [item for item in pending if item[0] == 'frame']
    rgbs = [item[1] for item in frames]
    mattes = []
    if rgbs:
      priors = None
      if smoother is not None:
        priors = [smoother(prior, rgb)
                  for prior, rgb in zip(remover.presegment(rgbs, batch_size), rgbs)]
      mattes = [r['alpha'] for r in remover.predict_batch(rgbs, batch_size, with_preseg=False,
                                                         priors=priors)]
    mattes = iter(mattes)
    for item in pending:
      if item[0] == 'frame':
        alpha = next(mattes)
        if alphas is not None:
          alphas(alpha)
        item = ('frame', item[1], alpha, item[2], item[3])
      _put(encode_q, item, stop)
    pending.clear()

  while True:
    item = _get(frames_q, stop)
    if item[0] == 'error':
      raise item[1]
    if item is _END:
      flush()
      _put(encode_q, _END, stop)
      return
    pending.append(item)
    if sum(1 for i in pending if i[0] == 'frame') == batch_size:
      flush()


def _replace_folder(temp: str, target: str) -> None:
  """Renames the finished sequence folder onto `target` (an older one of bgmat's is
  moved aside first, then removed)."""
  old = None
  if os.path.lexists(target):
    if not is_bgmat_video(target):
      raise VideoError(f'{target}: exists and is not a PNG sequence bgmat wrote', 'unwritable')
    old = atomic.temporary_path(target, '.old')
    os.rename(target, old)
  os.rename(temp, target)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def read_sequence_info(folder: str) -> dict:
  """The JSON mark of a PNG sequence folder (frame_rate, frames, source, format)."""
  with open(os.path.join(folder, SEQUENCE_MARK), encoding='utf-8') as f:
    return json.load(f)
