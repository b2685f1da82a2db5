r"""Video on this machine: flicker with temporal smoothing off and on, and frames/s.

  python -m bench.video --workdir runs/demo/matting
  python -m bench.video --workdir runs/demo/matting --frames 48 --fps-frames 24,8

The clip is generated: a synthetic portrait (`data_prep.synthetic`, the test
split) slides across a static background, with +-4 levels of seeded sensor
noise per frame, encoded as H.264 (CRF 18) at 12 frames/s; its true alpha is
known. Printed, as markdown, and written to bench/results/video_<device>.md:

- flicker: the mean absolute alpha change between consecutive frames on the
  static background (pixels at least 8 px from the subject in every frame),
  the number the smoothing is meant to lower;
- lag: the mean absolute alpha error against the true alpha in the band
  within 8 px of the moving subject's edge, where a trailing average would
  show (smoothing must not raise it);
- frames/s of `remove_video` end to end (decode, model, render, encode) at
  512x288 and 1920x1080, after a warm-up clip of the same size (compiles
  excluded).

Smoothing settings: off; 0.6 and 0.8 (motion-gated, the default gate); 0.6
without the gate (a plain moving average, for contrast).
"""

import argparse
import datetime
import os
import platform
import tempfile
import time

import av
import jax
import numpy as np
from PIL import Image
from scipy import ndimage

from bgmat import atomic
from bgmat.inference import remover as remover_lib
from bgmat.inference import video
from bgmat import report_stats
from data_prep import synthetic

RATE = 12
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def moving_subject_clip(path: str, frames: int, height: int, width: int,
                        seed: int = 0) -> list[np.ndarray]:
  """Writes the clip (module docstring) to `path`; -> the true alpha per frame,
  (height, width) float32 in [0, 1]."""
  subject = synthetic.generate_example(3, 'test', seed, height)
  scene = synthetic.generate_example(7, 'test', seed, max(height, width))
  background = np.asarray(Image.fromarray(scene['bg']).resize((width, height), Image.BICUBIC),
                          np.float32)
  fg, alpha = subject['fg'].astype(np.float32), subject['alpha'].astype(np.float32) / 255.0
  rng = np.random.default_rng(seed)
  travel = width - height  # The subject (height x height) slides over this many pixels.
  truths = []
  with av.open(path, 'w') as container:
    stream = container.add_stream('libx264', rate=RATE, options={'crf': '18'})
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    for index in range(frames):
      left = round(travel * index / max(frames - 1, 1))
      a = np.zeros((height, width), np.float32)
      f = np.zeros((height, width, 3), np.float32)
      a[:, left:left + height], f[:, left:left + height] = alpha, fg
      image = a[..., None] * f + (1 - a[..., None]) * background
      image += rng.integers(-4, 5, image.shape)
      frame = av.VideoFrame.from_ndarray(np.clip(np.round(image), 0, 255).astype(np.uint8),
                                         format='rgb24')
      for packet in stream.encode(frame):
        container.mux(packet)
      truths.append(a)
    for packet in stream.encode():
      container.mux(packet)
  return truths


def _regions(truths: list[np.ndarray], margin: int = 8) -> tuple[np.ndarray, list[np.ndarray]]:
  """(static background mask, [edge band mask per frame])."""
  near = np.zeros(truths[0].shape, bool)
  bands = []
  for truth in truths:
    subject = truth > 0.0
    grown = ndimage.binary_dilation(subject, iterations=margin)
    near |= grown
    solid = ndimage.binary_erosion(truth >= 1.0, iterations=margin)
    bands.append(grown & ~solid)
  return ~near, bands


def _quality(remover, clip: str, truths, smoothing: float, gate: bool) -> tuple[float, float]:
  mattes = []
  # No gate: thresholds no change reaches, so every pixel is averaged.
  smoother = (video.PriorSmoother(smoothing) if gate else
              video.PriorSmoother(smoothing, motion_threshold=np.inf, cut_threshold=np.inf))
  with tempfile.TemporaryDirectory() as tmp:
    video.remove_video(remover, clip, os.path.join(tmp, 'alpha.mp4'), format='alpha',
                       temporal_smoothing=smoother if smoothing else 0.0, batch_size=4,
                       alphas=mattes.append)
  static, bands = _regions(truths)
  lag = float(np.mean([np.abs(m - t)[b].mean() for m, t, b in zip(mattes, truths, bands)]))
  return video.flicker(mattes, static), lag


def _fps(remover, height: int, width: int, frames: int, fmt: str, container: str) -> float:
  with tempfile.TemporaryDirectory() as tmp:
    clip = os.path.join(tmp, 'clip.mp4')
    moving_subject_clip(clip, frames, height, width, seed=1)
    target = os.path.join(tmp, 'out' + video.EXTENSIONS[container])
    warm = os.path.join(tmp, 'warm.mp4')
    moving_subject_clip(warm, 4, height, width, seed=2)
    video.remove_video(remover, warm, target, format=fmt, container=container, batch_size=4)
    start = time.perf_counter()
    info = video.remove_video(remover, clip, target, format=fmt, container=container,
                              batch_size=4)
    return info.frames / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='A trained matting run.')
  parser.add_argument('--frames', type=int, default=36, help='Frames of the flicker clip.')
  parser.add_argument('--size', default='288,512', help='height,width of the flicker clip.')
  parser.add_argument('--fps-frames', default='24,8',
                      help='Timed frames at 512x288 and at 1920x1080 (0: skip).')
  parser.add_argument('--out', default=None, help='Markdown file (default bench/results/'
                      'video_<platform>.md).')
  args = parser.parse_args()
  remover = remover_lib.Remover.from_workdir(args.workdir)
  device = jax.devices()[0]
  lines = [f'`python -m bench.video --workdir {args.workdir} --frames {args.frames} '
           f'--size {args.size} --fps-frames {args.fps_frames}`', '',
           f'{datetime.date.today()}; device {device.platform} ({device.device_kind}), '
           f'{os.cpu_count()} CPUs, {platform.machine()} ({report_stats.cpu_model()}), '
           f'jax {jax.__version__}, PyAV {av.__version__}; working size {remover.working_size}.',
           '']

  def emit(line=''):
    print(line, flush=True)
    lines.append(line)

  for line in lines:
    print(line)
  height, width = (int(s) for s in args.size.split(','))
  with tempfile.TemporaryDirectory() as tmp:
    clip = os.path.join(tmp, 'clip.mp4')
    truths = moving_subject_clip(clip, args.frames, height, width)
    static, _ = _regions(truths)
    emit(f'Flicker clip: {args.frames} frames of {width}x{height} at {RATE} frames/s, a '
         f'synthetic portrait sliding {width - height} px; static background '
         f'{100 * static.mean():.0f}% of the frame.')
    emit()
    emit('| temporal smoothing | flicker on static background | alpha error at the moving '
         'edge (lag) |')
    emit('|---|---|---|')
    for smoothing, gate, name in ((0.0, True, 'off'), (0.6, True, '0.6 (motion-gated)'),
                                  (0.8, True, '0.8 (motion-gated)'),
                                  (0.6, False, '0.6, plain moving average (no gate)')):
      flicker, lag = _quality(remover, clip, truths, smoothing, gate)
      emit(f'| {name} | {flicker:.5f} | {lag:.4f} |')
  counts = [int(s) for s in args.fps_frames.split(',')]
  emit()
  emit('| clip | output | frames | frames/s (decode + model + encode) |')
  emit('|---|---|---|---|')
  for (h, w), count in zip(((288, 512), (1080, 1920)), counts):
    if not count:
      continue
    for fmt, container, name in (('alpha', 'mp4', 'alpha mp4 (H.264)'),
                                 ('rgba', 'webm', 'rgba webm (VP9 + alpha, blur fusion)')):
      fps = _fps(remover, h, w, count, fmt, container)
      emit(f'| {w}x{h} | {name} | {count} | {fps:.2f} |')
  out = args.out or os.path.join(RESULTS, f'video_{device.platform}.md')
  atomic.write_text(out, '\n'.join(lines) + '\n')
  print(f'\nwritten: {out}')


if __name__ == '__main__':
  main()
