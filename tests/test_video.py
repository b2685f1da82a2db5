"""Video (bgmat.inference.video): clips made here with PyAV round-trip through `bgmat remove`.

Most tests use the `tiny` presets with random weights (no training: fast); the
CLI test uses a trained tiny run (slow, tests/conftest.py).
"""
import fractions
import os

import numpy as np
from PIL import Image
import pytest

av = pytest.importorskip('av', reason='video tests need PyAV: pip install "bgmat[video]"')

# pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import cli
from bgmat.inference import remove_run
from bgmat.inference import resolution
from bgmat.inference import serve
from bgmat.inference import video

WIDTH, HEIGHT, FRAMES, RATE, SAMPLE_RATE = 128, 96, 12, 12, 44100
RADIUS = 14


def disc_centre(index: int) -> tuple[int, int]:
  return HEIGHT // 2, 24 + 6 * index


def make_frames(count: int = FRAMES, noise: int = 0, seed: int = 0) -> list[np.ndarray]:
  """A disc moving right over a static striped background; `noise`: +-levels per frame."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:HEIGHT, :WIDTH]
  background = np.stack([40 + (xx // 16 % 2) * 60, 90 + 0 * yy, 140 - yy // 2], -1)
  frames = []
  for index in range(count):
    frame = background.copy()
    cy, cx = disc_centre(index)
    frame[(yy - cy) ** 2 + (xx - cx) ** 2 < RADIUS ** 2] = (230, 180, 140)
    if noise:
      frame = frame + rng.integers(-noise, noise + 1, frame.shape)
    frames.append(np.clip(frame, 0, 255).astype(np.uint8))
  return frames


def static_mask(count: int = FRAMES) -> np.ndarray:
  """Pixels at least 4 px away from the disc in every frame."""
  yy, xx = np.mgrid[:HEIGHT, :WIDTH]
  mask = np.ones((HEIGHT, WIDTH), bool)
  for index in range(count):
    cy, cx = disc_centre(index)
    mask &= (yy - cy) ** 2 + (xx - cx) ** 2 > (RADIUS + 4) ** 2
  return mask


def make_clip(path: str, frames=None, audio: bool = True) -> str:
  """H.264 mp4 of `frames` at RATE frames/s, with a 440 Hz mono AAC track as long."""
  frames = make_frames() if frames is None else frames
  with av.open(path, 'w') as container:
    stream = container.add_stream('libx264', rate=RATE)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, 'yuv420p'
    audio_stream = container.add_stream('aac', rate=SAMPLE_RATE) if audio else None
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
    if audio:
      samples = len(frames) * SAMPLE_RATE // RATE
      wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / SAMPLE_RATE))
      for start in range(0, samples, 1024):
        chunk = av.AudioFrame.from_ndarray(wave[None, start:start + 1024].astype(np.float32),
                                           format='fltp', layout='mono')
        chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
        for packet in audio_stream.encode(chunk):
          container.mux(packet)
      for packet in audio_stream.encode():
        container.mux(packet)
  return path


def probe(path: str) -> dict:
  """Frames, size, average rate, audio seconds (decoded samples) and the longest audio frame."""
  with av.open(path) as container:
    stream = container.streams.video[0]
    info = {'rate': stream.average_rate, 'size': (stream.codec_context.width,
                                                  stream.codec_context.height)}
    info['frames'] = sum(1 for _ in container.decode(video=0))
  info['audio_s'] = info['audio_frame_s'] = None
  with av.open(path) as container:
    if container.streams.audio:
      stream = container.streams.audio[0]
      rate, samples, longest = stream.codec_context.sample_rate, 0, 0
      for frame in container.decode(stream):
        samples += frame.samples
        longest = max(longest, frame.samples)
      info['audio_s'], info['audio_frame_s'] = samples / rate, longest / rate
      info['audio_codec'] = stream.codec_context.name
  return info


def decoded_alpha(path: str, container: str) -> list[np.ndarray]:
  """The alpha plane of each frame, uint8 (webm: libvpx's decoder, which reads VP9 alpha)."""
  with av.open(path) as source:
    stream = source.streams.video[0]
    if container == 'webm':
      decoder = av.CodecContext.create('libvpx-vp9', 'r')
      frames = [f for packet in source.demux(stream) for f in decoder.decode(packet)]
    else:
      frames = list(source.decode(stream))
    assert 'a' in frames[0].format.name, frames[0].format.name  # yuva420p, yuva444p1Xle
    return [f.to_ndarray(format='rgba')[..., 3] for f in frames]


@pytest.fixture(scope='module')
def remover():
  """The tiny presets with random weights (seed 0), matting buckets of 64 and 128 px."""
  return serve.random_remover('tiny', buckets=resolution.Buckets(long_sides=(64, 128)))


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  return make_clip(str(tmp_path_factory.mktemp('clips') / 'clip.mp4'))


@pytest.mark.parametrize('fmt,container', [('rgba', 'webm'), ('rgba', 'mov'), ('rgba', 'png'),
                                           ('alpha', 'mp4'), ('composite', 'mp4')])
def test_round_trip_keeps_frames_size_rate_and_audio(remover, clip, tmp_path, fmt, container):
  target = str(tmp_path / ('out' + video.EXTENSIONS[container]))
  mattes = []
  info = video.remove_video(remover, clip, target, format=fmt, container=container,
                            bg=(0, 177, 64), batch_size=4, alphas=mattes.append)
  source = probe(clip)
  assert info.frames == len(mattes) == source['frames'] == FRAMES
  assert (info.width, info.height) == source['size'] == (WIDTH, HEIGHT)
  assert info.frame_rate == source['rate'] == RATE
  expected = [np.round(m * 255).astype(np.uint8) for m in mattes]
  if container == 'png':
    names = sorted(n for n in os.listdir(target) if n.endswith('.png'))
    assert names == [f'{i:06d}.png' for i in range(1, FRAMES + 1)]
    rgba = [np.asarray(Image.open(os.path.join(target, n))) for n in names]
    assert rgba[0].shape == (HEIGHT, WIDTH, 4)
    np.testing.assert_array_equal(np.stack([f[..., 3] for f in rgba]), np.stack(expected))
    meta = video.read_sequence_info(target)
    assert fractions.Fraction(meta['frame_rate']) == RATE and meta['frames'] == FRAMES
    assert info.audio == 'copied aac (audio.m4a)'
    with av.open(os.path.join(target, 'audio.m4a')) as audio:
      samples = sum(f.samples for f in audio.decode(audio.streams.audio[0]))
    assert samples / SAMPLE_RATE == source['audio_s']
    return
  out = probe(target)
  assert (out['frames'], out['size'], out['rate']) == (FRAMES, (WIDTH, HEIGHT), RATE)
  # Audio: the same length, within one audio frame (copied exactly, or re-encoded to Opus).
  assert abs(out['audio_s'] - source['audio_s']) <= max(out['audio_frame_s'],
                                                        source['audio_frame_s'])
  assert out['audio_codec'] == ('opus' if container == 'webm' else 'aac')
  assert info.audio == ('aac -> libopus' if container == 'webm' else 'copied aac')
  if fmt == 'rgba':
    alphas = decoded_alpha(target, container)
    assert len(alphas) == FRAMES
    # Lossy codecs: the decoded alpha is the matte within a few levels on average.
    assert np.abs(np.stack(alphas).astype(int) - np.stack(expected)).mean() < 4
  if fmt == 'alpha':
    with av.open(target) as source_video:
      luma = [f.to_ndarray(format='gray') for f in source_video.decode(video=0)]
    assert np.abs(np.stack(luma).astype(int) - np.stack(expected)).mean() < 4
  assert video.is_bgmat_video(target)
  assert video.flicker(expected, static_mask()) >= 0.0


def test_prior_smoother_averages_still_pixels_and_follows_motion():
  smoother = video.PriorSmoother(0.6, motion_threshold=0.08)
  frame = np.full((40, 40, 3), 100, np.uint8)
  first = np.full((20, 20), 0.2, np.float32)
  np.testing.assert_array_equal(smoother(first, frame), first)
  # A still frame: the moving average 0.6 * 0.2 + 0.4 * 1.0.
  np.testing.assert_allclose(smoother(np.ones((20, 20), np.float32), frame), 0.52, atol=1e-6)
  # The left half brightens by 80 levels (motion): there the prior is this frame's.
  moved = frame.copy()
  moved[:, :20] = 180
  smoothed = smoother(np.zeros((20, 20), np.float32), moved)
  np.testing.assert_array_equal(smoothed[:, :5], 0.0)
  np.testing.assert_allclose(smoothed[:, -5:], 0.6 * 0.52, atol=1e-6)
  # A scene cut and a new size start afresh.
  cut = np.full((40, 40, 3), 250, np.uint8)
  np.testing.assert_array_equal(smoother(first, cut), first)
  assert smoother.cuts == 1
  other = np.full((10, 30), 0.7, np.float32)
  np.testing.assert_array_equal(smoother(other, np.full((20, 60, 3), 250, np.uint8)), other)
  with pytest.raises(ValueError, match='0, 1'):
    video.PriorSmoother(1.0)


def test_smoothing_damps_prior_flicker_on_the_still_background(remover):
  frames = make_frames(noise=6)
  raw = remover.presegment(frames, 4)
  smoother = video.PriorSmoother(0.6)
  smoothed = [smoother(prior, frame) for prior, frame in zip(raw, frames)]
  mask = resolution.resize(static_mask().astype(np.float32), raw[0].shape) > 0.999
  assert video.flicker(smoothed, mask) < 0.8 * video.flicker(raw, mask)


def test_flicker_metric():
  a = np.zeros((4, 4), np.float32)
  b = a + 0.5
  mask = np.zeros((4, 4), bool)
  mask[0] = True
  assert video.flicker([a, b, b]) == pytest.approx(0.25)
  c = b.copy()
  c[0] = 0.0
  assert video.flicker([a, c], mask) == 0.0
  assert video.flicker([np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)]) == 1.0
  with pytest.raises(ValueError):
    video.flicker([a])


def test_corrupt_video_is_reported_and_the_next_processed(remover, clip, tmp_path):
  corrupt = tmp_path / 'broken.mp4'
  corrupt.write_bytes(open(clip, 'rb').read()[:600])  # Header only: no frames.
  garbage = tmp_path / 'noise.mov'
  garbage.write_bytes(os.urandom(5000))
  lines = []
  summary = remove_run.process_inputs(remover, [str(corrupt), str(garbage), clip],
                                      str(tmp_path / 'out'), format='alpha', log=lines.append)
  assert [p for p, _ in summary.failures] == [str(corrupt), str(garbage)]
  for path, error in summary.failures:
    assert error.startswith(path + ': ')
  assert summary.written == [str(tmp_path / 'out' / 'clip.mp4')]
  assert probe(summary.written[0])['frames'] == FRAMES
  assert sorted(os.listdir(tmp_path / 'out')) == ['clip.mp4']


def test_a_failing_run_leaves_nothing_under_the_target(remover, clip, tmp_path):
  class Failing:
    max_pixels = remover.max_pixels

    def __init__(self):
      self.calls = 0

    def presegment(self, images, batch_size):
      return remover.presegment(images, batch_size)

    def predict_batch(self, images, batch_size, **kwargs):
      self.calls += 1
      if self.calls == 2:
        raise RuntimeError('device lost')
      return remover.predict_batch(images, batch_size, **kwargs)

  out = tmp_path / 'out'
  for container in ('webm', 'png'):
    with pytest.raises(RuntimeError, match='device lost'):
      video.remove_video(Failing(), clip, str(out / ('clip' + video.EXTENSIONS[container])),
                         container=container, batch_size=4)
  assert os.listdir(out) == []


def test_outputs_replace_their_own_never_other_files(remover, clip, tmp_path):
  out = tmp_path / 'out'
  first = remove_run.process_inputs(remover, [clip], str(out), log=lambda line: None)
  again = remove_run.process_inputs(remover, [clip], str(out), log=lambda line: None)
  assert first.written == again.written == [str(out / 'clip.webm')]
  (out / 'clip.mp4').write_bytes(b'not ours')
  third = remove_run.process_inputs(remover, [clip], str(out), format='composite',
                                    log=lambda line: None)
  assert third.written == [str(out / 'clip-2.mp4')]
  assert (out / 'clip.mp4').read_bytes() == b'not ours'
  seq = remove_run.process_inputs(remover, [clip], str(out), video_container='png',
                                  log=lambda line: None)
  seq2 = remove_run.process_inputs(remover, [clip], str(out), video_container='png',
                                   log=lambda line: None)
  assert seq.written == seq2.written == [str(out / 'clip')]
  with pytest.raises(ValueError, match='alpha channel'):
    remove_run.process_inputs(remover, [clip], str(out), video_container='mp4')


def test_video_is_found_by_extension_or_probing(clip, tmp_path):
  unnamed = tmp_path / 'recording'
  unnamed.write_bytes(open(clip, 'rb').read())
  photo = tmp_path / 'photo'
  Image.fromarray(make_frames(1)[0]).save(photo, format='PNG')
  assert video.is_video(clip) and video.is_video(str(unnamed))
  assert not video.is_video(str(photo))
  assert not video.is_video(str(tmp_path / 'missing'))


def test_sequence_smooths_across_sorted_frames(remover, tmp_path):
  frames = make_frames(6, noise=6)
  folder = tmp_path / 'frames'
  folder.mkdir()
  for index, frame in enumerate(frames):
    Image.fromarray(frame).save(folder / f'f{index:03d}.png')
  out = tmp_path / 'out'
  summary = remove_run.process_inputs(remover, [str(folder)], str(out), format='alpha',
                                      sequence=True, temporal_smoothing=0.6, batch_size=2,
                                      log=lambda line: None)
  assert len(summary.written) == 6 and not summary.failures
  smoother = video.PriorSmoother(0.6)
  priors = [smoother(p, f) for p, f in zip(remover.presegment(frames, 2), frames)]
  expected = remover.predict_batch(frames, 2, with_preseg=False, priors=priors)
  plain = remover.predict_batch(frames, 2, with_preseg=False)
  for index in range(6):
    written = np.asarray(Image.open(out / f'f{index:03d}.png'))
    np.testing.assert_array_equal(written, np.round(expected[index]['alpha'] * 255))
  assert any(not np.array_equal(e['alpha'], p['alpha']) for e, p in zip(expected, plain))
  with pytest.raises(ValueError, match='temporal_smoothing'):
    remove_run.process_inputs(remover, [str(folder)], str(out), sequence=True)


def test_cli_video_with_a_trained_run(matting_workdir, clip, tmp_path, capsys):
  out = tmp_path / 'cut.webm'
  code = cli.main(['remove', clip, '-o', str(out), '--workdir', matting_workdir,
                   '--bucket-sides', '64,128', '--temporal-smoothing', '0.6', '--quiet'])
  assert code == 0, capsys.readouterr()
  info = probe(str(out))
  assert (info['frames'], info['size'], info['rate']) == (FRAMES, (WIDTH, HEIGHT), RATE)
  assert len(decoded_alpha(str(out), 'webm')) == FRAMES
  with pytest.raises(SystemExit):
    cli.main(['remove', clip, '-o', str(tmp_path), '--workdir', matting_workdir,
              '--video-container', 'mp4'])
  assert 'no alpha channel' in capsys.readouterr().err
