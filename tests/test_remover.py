"""`bgmat remove` and `bgmat.remove`: sizes, alpha range, bad inputs."""

import logging
import os

import numpy as np
from PIL import Image
import pytest

from bgmat import cli
from bgmat import export as export_lib
from bgmat.inference import remover as remover_lib
from bgmat.inference import resolution
import bgmat

# Tiny matting buckets (64 and 128 px long sides) keep compiles small; one CLI
# test runs the product's default set.
SIDES = '64,128'
SMALL = resolution.Buckets(long_sides=(64, 128))


def _photo(path, size, mode='RGB'):
  rng = np.random.default_rng(0)
  array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(array).convert(mode).save(path)
  return str(path)


def test_cli_writes_same_size_rgba_and_alpha(matting_workdir, tmp_path):
  inputs = [_photo(tmp_path / 'wide.jpg', (90, 50)), _photo(tmp_path / 'tall.png', (33, 71)),
            _photo(tmp_path / 'gray.png', (40, 40), 'L')]
  out = tmp_path / 'out'
  assert cli.main(['remove', *inputs, '-o', str(out), '--workdir', matting_workdir,
                   '--save-alpha', '--foreground-method', 'none']) == 0
  for path, size in zip(inputs, [(90, 50), (33, 71), (40, 40)]):
    stem = os.path.splitext(os.path.basename(path))[0]
    with Image.open(out / f'{stem}.png') as rgba:
      assert rgba.mode == 'RGBA' and rgba.size == size
      array = np.asarray(rgba)
    with Image.open(path) as original:
      np.testing.assert_array_equal(array[..., :3], np.asarray(original.convert('RGB')))
    with Image.open(out / f'{stem}_alpha.png') as alpha:
      assert alpha.size == size
      np.testing.assert_array_equal(np.asarray(alpha), array[..., 3])
  assert not [f for f in os.listdir(out) if '.tmp' in f]


def test_corrupt_input_is_reported_and_others_written(matting_workdir, tmp_path, capsys):
  good = _photo(tmp_path / 'good.png', (40, 30))
  corrupt = tmp_path / 'corrupt.jpg'
  corrupt.write_bytes(open(good, 'rb').read()[:60])
  text = tmp_path / 'notes.png'
  text.write_text('not an image')
  out = tmp_path / 'out'
  code = cli.main(['remove', str(corrupt), good, str(text), str(tmp_path / 'missing.png'),
                   '-o', str(out), '--workdir', matting_workdir, '--bucket-sides', SIDES])
  assert code == 1
  captured = capsys.readouterr()
  for name in ('corrupt.jpg', 'notes.png', 'missing.png'):
    assert name in captured.out + captured.err
  assert sorted(os.listdir(out)) == ['good.png']


def test_python_api_alpha_range_and_kinds(matting_workdir):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, size=(37, 52, 3), dtype=np.uint8)
  rgba = bgmat.remove(image, workdir=matting_workdir, foreground_method='none')
  assert rgba.shape == (37, 52, 4) and rgba.dtype == np.uint8
  np.testing.assert_array_equal(rgba[..., :3], image)
  # One default for the edge colours, the CLI's (blur fusion), everywhere.
  from bgmat import foreground  # pylint: disable=g-import-not-at-top
  np.testing.assert_array_equal(
      bgmat.remove(image, workdir=matting_workdir),
      bgmat.remove(image, workdir=matting_workdir, foreground_method=foreground.DEFAULT_METHOD))
  assert foreground.DEFAULT_METHOD == 'blur_fusion'
  remover = bgmat.Remover.from_workdir(matting_workdir)
  alpha = remover.alpha(image)
  assert alpha.shape == (37, 52) and alpha.dtype == np.float32
  assert 0.0 <= alpha.min() and alpha.max() <= 1.0
  np.testing.assert_array_equal(np.round(alpha * 255).astype(np.uint8), rgba[..., 3])
  pil = remover(Image.fromarray(image))
  assert isinstance(pil, Image.Image) and pil.mode == 'RGBA' and pil.size == (52, 37)


def test_decompression_bomb_is_refused(tmp_path):
  path = _photo(tmp_path / 'big.png', (200, 200))
  with pytest.raises(remover_lib.InputError, match='big.png'):
    remover_lib.load_image(path, max_pixels=1000)


def test_loading_a_run_logs_no_warnings_about_unread_items(matting_workdir, caplog):
  """Issue 14, kind 8: every CLI run printed four absl warnings about 'data'."""
  from bgmat import runs  # pylint: disable=g-import-not-at-top
  with caplog.at_level(logging.WARNING):
    bgmat.Remover.from_workdir(matting_workdir, buckets=SMALL)
    runs.load_preseg(matting_workdir)  # The report's and the baselines' path.
  assert not [r for r in caplog.records if 'could not be restored' in r.getMessage()]


def test_wrong_workdir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    bgmat.Remover.from_workdir(str(tmp_path))


def _read(path):
  with Image.open(path) as img:
    return img.format, img.mode, np.asarray(img)


@pytest.fixture(scope='module')
def loaded_remover(matting_workdir):
  return bgmat.Remover.from_workdir(matting_workdir, buckets=SMALL)


def test_formats_and_backgrounds(loaded_remover, matting_workdir, tmp_path):
  photo = _photo(tmp_path / 'p.png', (45, 30))
  rgb = np.asarray(Image.open(photo).convert('RGB'))
  backdrop = _photo(tmp_path / 'backdrop.jpg', (20, 90))
  for fmt, bg in [('rgba', None), ('alpha', None), ('foreground', None),
                  ('composite', '#00ff00')]:
    summary = remover_lib.process_inputs(loaded_remover, [photo], str(tmp_path / fmt),
                                         format=fmt, bg=bg)
    assert len(summary.written) == 1 and not summary.failures
  # The CLI's wiring: a photo background, written as JPEG.
  assert cli.main(['remove', photo, '-o', str(tmp_path / 'photo'), '--workdir',
                   matting_workdir, '--format', 'composite', '--bg', backdrop,
                   '--bucket-sides', SIDES]) == 0
  fmt, mode, alpha = _read(tmp_path / 'alpha' / 'p.png')
  assert (fmt, mode, alpha.shape) == ('PNG', 'L', (30, 45))
  fmt, mode, rgba = _read(tmp_path / 'rgba' / 'p.png')
  assert (fmt, mode) == ('PNG', 'RGBA')
  np.testing.assert_array_equal(rgba[..., 3], alpha)
  fmt, mode, fg = _read(tmp_path / 'foreground' / 'p.png')
  assert (fmt, mode, fg.shape) == ('PNG', 'RGB', (30, 45, 3))
  np.testing.assert_array_equal(rgba[..., :3], fg)  # Both blur fusion by default.
  assert np.abs(fg.astype(int) - rgb).max() > 0  # Soft pixels got new colours.
  fmt, _, comp = _read(tmp_path / 'composite' / 'p.jpg')
  assert fmt == 'JPEG' and comp.shape == (30, 45, 3)
  a = alpha[..., None] / 255.0
  want = a * fg / 255.0 + (1 - a) * np.array([0.0, 1.0, 0.0])
  assert np.abs(comp / 255.0 - want).mean() < 0.03  # JPEG tolerance.
  fmt, _, comp_photo = _read(tmp_path / 'photo' / 'p.jpg')
  assert fmt == 'JPEG' and comp_photo.shape == (30, 45, 3)
  assert np.abs(comp_photo.astype(int) - comp).mean() > 5  # A photo, not green.


def test_python_cutout_and_foreground_methods(loaded_remover):
  image = np.random.default_rng(2).integers(0, 256, size=(24, 30, 3), dtype=np.uint8)
  remover = loaded_remover
  alpha = remover.alpha(image)
  raw = remover(image, foreground_method='none')
  np.testing.assert_array_equal(raw[..., :3], image)  # 'none': the photo's colours.
  # The default is the CLI's, blur fusion.
  np.testing.assert_array_equal(remover(image), remover.cutout(image, format='rgba'))
  for method in ('blur_fusion', 'multilevel'):
    rgba = remover.cutout(image, format='rgba', foreground_method=method)
    np.testing.assert_array_equal(rgba[..., 3], np.round(alpha * 255).astype(np.uint8))
    assert rgba.shape == (24, 30, 4) and not np.array_equal(rgba[..., :3], image)
  white = remover.cutout(image, format='composite', bg='white', foreground_method='none')
  want = alpha[..., None] * image + (1 - alpha[..., None]) * 255.0
  assert np.abs(white.astype(float) - want).max() <= 0.5 + 1e-3
  with pytest.raises(ValueError, match='neither an image file nor a colour'):
    remover.cutout(image, format='composite', bg='not-a-colour')
  with pytest.raises(ValueError, match='Unknown format'):
    remover.cutout(image, format='gif')


def test_folders_globs_and_skip_existing(loaded_remover, matting_workdir, tmp_path, capsys):
  src = tmp_path / 'src'
  (src / 'a').mkdir(parents=True)
  (src / 'b').mkdir()
  _photo(src / 'top.png', (20, 20))
  _photo(src / 'a' / 'same.png', (20, 24))
  _photo(src / 'b' / 'same.jpg', (24, 20))
  (src / 'notes.txt').write_text('not an image, not picked up')
  out = tmp_path / 'out'
  run = lambda *inputs, **kw: remover_lib.process_inputs(
      loaded_remover, [str(i) for i in inputs], str(out), format='alpha', **kw)
  listing = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob('*.png'))
  assert len(run(src).written) == 1 and listing(out) == ['top.png']
  assert len(run(src, recursive=True).written) == 3
  assert listing(out) == ['a/same.png', 'b/same.png', 'top.png']
  assert _read(out / 'b' / 'same.png')[2].shape == (20, 24)
  # Globs use base names; two matches with one name both survive.
  glob_out = tmp_path / 'glob_out'
  remover_lib.process_inputs(loaded_remover, [str(src / '*' / 'same.*')], str(glob_out),
                             format='alpha')
  assert listing(glob_out) == ['same-2.png', 'same.png']
  # --skip-existing leaves outputs alone (through the CLI); the default overwrites them
  # (bgmat's outputs: the marker is written as one).
  marker = np.zeros((20, 20), np.uint8)
  remover_lib.save_image_atomic(marker, str(out / 'top.png'))
  capsys.readouterr()
  assert cli.main(['remove', str(src), '--recursive', '--skip-existing', '-o', str(out),
                   '--workdir', matting_workdir, '--format', 'alpha',
                   '--bucket-sides', SIDES]) == 0
  assert '0 written' in capsys.readouterr().out
  np.testing.assert_array_equal(_read(out / 'top.png')[2], marker)
  assert run(src / 'top.png').written
  assert not np.array_equal(_read(out / 'top.png')[2], marker)
  # A pattern without matches and an empty folder are failures; the rest is written.
  (tmp_path / 'empty').mkdir()
  summary = run(tmp_path / 'nothing*.png', tmp_path / 'empty', src / 'top.png')
  assert len(summary.written) == 1
  assert sorted(os.path.basename(p) for p, _ in summary.failures) == ['empty', 'nothing*.png']
  assert not [p for p in out.rglob('*') if '.tmp' in p.name]


def test_cli_bad_background_is_refused_before_work(matting_workdir, tmp_path, capsys):
  photo = _photo(tmp_path / 'p.png', (20, 20))
  out = tmp_path / 'out'
  assert cli.main(['remove', photo, '-o', str(out), '--workdir', matting_workdir,
                   '--format', 'composite', '--bg', 'nocolour']) == 2
  assert 'nocolour' in capsys.readouterr().err and not out.exists()


def test_cli_export_gives_same_alpha_as_workdir(matting_workdir, tmp_path):
  pytest.importorskip('flatbuffers', reason='jax.export serialization needs flatbuffers')
  model = tmp_path / 'model.bgmat'
  assert cli.main(['export', '--workdir', matting_workdir, '--out', str(model),
                   '--platforms', 'cpu', '--bucket-sides', SIDES]) == 0
  header, _ = export_lib.read_export(str(model))
  assert header['buckets']['long_sides'] == [64, 128] and header['platforms'] == ['cpu']
  image = np.random.default_rng(4).integers(0, 256, size=(50, 35, 3), dtype=np.uint8)
  exported = bgmat.Remover.from_export(str(model), buckets=SMALL)
  live = bgmat.Remover.from_workdir(matting_workdir, buckets=SMALL)
  np.testing.assert_allclose(exported.alpha(image), live.alpha(image), atol=1e-5)
  out = tmp_path / 'out'
  photo = _photo(tmp_path / 'p.png', (30, 20))
  assert cli.main(['remove', photo, '-o', str(out), '--model', str(model),
                   '--format', 'alpha', '--bucket-sides', SIDES]) == 0
  np.testing.assert_array_equal(
      _read(out / 'p.png')[2],
      np.round(live.alpha(np.asarray(Image.open(photo).convert('RGB'))) * 255).astype(np.uint8))


def test_load_image_input_kinds(tmp_path):
  """EXIF rotation, grayscale, palette, 16-bit and RGBA inputs become upright RGB uint8."""
  rng = np.random.default_rng(3)
  rgb = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
  # EXIF orientation 6 (rotate 90 degrees clockwise to display): stored 20x30, shown 30x20.
  exif = Image.Exif()
  exif[0x0112] = 6
  yy, xx = np.mgrid[:20, :30]
  smooth = np.stack([yy * 12, xx * 8, 255 - xx * 8], axis=-1).astype(np.uint8)
  Image.fromarray(smooth).save(tmp_path / 'rotated.jpg', exif=exif, quality=100, subsampling=0)
  loaded = remover_lib.load_image(str(tmp_path / 'rotated.jpg'))
  assert loaded.shape == (30, 20, 3)
  np.testing.assert_allclose(loaded.astype(float), np.rot90(smooth, k=-1).astype(float), atol=6)
  Image.fromarray(rgb[..., 0]).save(tmp_path / 'gray.png')
  gray = remover_lib.load_image(str(tmp_path / 'gray.png'))
  assert gray.shape == (20, 30, 3) and (gray[..., 0] == rgb[..., 0]).all()
  Image.fromarray(rgb).convert('P').save(tmp_path / 'palette.png')
  assert remover_lib.load_image(str(tmp_path / 'palette.png')).shape == (20, 30, 3)
  sixteen = (rgb[..., 0].astype(np.uint16) * 257)
  Image.fromarray(sixteen).save(tmp_path / 'sixteen.png')
  deep = remover_lib.load_image(str(tmp_path / 'sixteen.png'))
  assert deep.dtype == np.uint8 and (deep[..., 0] == rgb[..., 0]).all()
  rgba = np.concatenate([rgb, np.full((20, 30, 1), 128, np.uint8)], axis=-1)
  Image.fromarray(rgba).save(tmp_path / 'rgba.png')
  np.testing.assert_array_equal(remover_lib.load_image(str(tmp_path / 'rgba.png')), rgb)


def test_cli_batch_size_quiet_max_side_and_progress(matting_workdir, loaded_remover, tmp_path,
                                                    capsys):
  sizes = [(90, 50), (40, 60), (70, 33), (64, 64), (50, 90)]  # (width, height)
  photos = [_photo(tmp_path / f'p{i}.png', size) for i, size in enumerate(sizes)]
  for i, path in enumerate(photos):  # Different content per photo.
    Image.fromarray(np.roll(np.asarray(Image.open(path)), 7 * i, axis=1)).save(path)
  base = ['remove', *photos, '--workdir', matting_workdir, '--format', 'alpha',
          '--bucket-sides', SIDES]
  capsys.readouterr()
  assert cli.main(base + ['-o', str(tmp_path / 'one')]) == 0
  captured = capsys.readouterr()
  assert captured.out.count(' -> ') == 5 and 'img/s' not in captured.err  # Not a terminal.
  assert cli.main(base + ['-o', str(tmp_path / 'batched'), '--batch_size', '3', '--quiet']) == 0
  captured = capsys.readouterr()
  assert ' -> ' not in captured.out and '5 written' in captured.out
  assert 'img/s' not in captured.err and '%|' not in captured.err
  for i, (width, height) in enumerate(sizes):
    one = _read(tmp_path / 'one' / f'p{i}.png')[2]
    assert one.shape == (height, width)
    # Batched photos of one bucket give the same matte as one by one.
    np.testing.assert_array_equal(_read(tmp_path / 'batched' / f'p{i}.png')[2], one)
  # --max-side: matted smaller, written at the photo's size.
  assert cli.main(base[:2] + ['-o', str(tmp_path / 'capped'), '--workdir', matting_workdir,
                              '--format', 'alpha', '--max-side', '32', '-q']) == 0
  assert _read(tmp_path / 'capped' / 'p0.png')[2].shape == (50, 90)
  # The progress bar, when asked for, reports images/s on stderr.
  capsys.readouterr()
  summary = remover_lib.process_inputs(loaded_remover, photos[:2], str(tmp_path / 'bar'),
                                       format='alpha', progress=True, batch_size=2)
  assert len(summary.written) == 2
  captured = capsys.readouterr()
  assert 'img/s' in captured.err and '2/2' in captured.err
  for flags in (['--batch-size', '0'], ['--bucket-sides', '100'], ['--max-side', 'x']):
    with pytest.raises(SystemExit):
      cli.main(base + ['-o', str(tmp_path / 'bad')] + flags)
  assert not (tmp_path / 'bad').exists()
