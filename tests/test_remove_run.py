"""`bgmat remove` on the folders of issue 14: failures, collisions, formats, colour,
limits, folder types and the small things (stdin, -o FILE, transparency).

The model is the `tiny` presets with random weights (no training): these tests
are about files, names and errors, not about the matte's quality. The CLI is
given that model by replacing `Remover.from_workdir`, which also tells whether
the model was loaded at all.
"""

import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from PIL import ImageCms
import pytest

from bgmat import cli
from bgmat.inference import compile_cache
from bgmat.inference import remover as remover_lib
from bgmat.inference import render as render_lib
from bgmat.inference import resolution
import configs.matting as matting_configs
import configs.preseg as preseg_configs

SMALL = resolution.Buckets(long_sides=(64, 128))


@pytest.fixture(scope='module')
def remover():
  config = matting_configs.get_config('tiny,noadv')
  return remover_lib.Remover.from_configs(preseg_configs.get_config('tiny').model,
                                          config.model, config.image_size, buckets=SMALL)


@pytest.fixture
def bgmat_cli(remover, monkeypatch):
  """cli.main with the random model; `.loads` counts model loads."""
  loads = []

  def from_workdir(workdir, working_size=None, **kwargs):
    loads.append(workdir)
    remover.max_pixels = kwargs.get('max_pixels', remover_lib.MAX_PIXELS)
    return remover

  monkeypatch.setattr(remover_lib.Remover, 'from_workdir', staticmethod(from_workdir))
  run = lambda *args: cli.main(['remove', *map(str, args), '--workdir', 'random', '-q'])
  run.loads = loads
  yield run
  remover.max_pixels = remover_lib.MAX_PIXELS


def _photo(path, size=(20, 16), mode='RGB', seed=0, **save):
  """Writes a random (width, height) photo; returns its path as str."""
  rng = np.random.default_rng(seed)
  array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(array).convert(mode).save(path, **save)
  return str(path)


def _open(path):
  with Image.open(path) as img:
    return img.mode, np.asarray(img), img.info.get('icc_profile')


# Kind 1: a failure while matting, rendering or writing one photo.

def test_multilevel_on_a_1x1_photo_and_the_run_goes_on(bgmat_cli, tmp_path):
  good = _photo(tmp_path / 'good.jpg')
  tiny = _photo(tmp_path / 'tiny_1x1.png', (1, 1))
  other = _photo(tmp_path / 'other.jpg', seed=1)
  out = tmp_path / 'out'
  assert bgmat_cli(good, tiny, other, '-o', out, '--foreground-method', 'multilevel') == 0
  assert sorted(os.listdir(out)) == ['good.png', 'other.png', 'tiny_1x1.png']
  assert _open(out / 'tiny_1x1.png')[1].shape == (1, 1, 4)


def test_any_per_photo_failure_is_named_and_the_run_goes_on(bgmat_cli, remover, tmp_path,
                                                            monkeypatch, capsys):
  photos = [_photo(tmp_path / f'{name}.png', size, seed=i) for i, (name, size) in
            enumerate([('a', (20, 16)), ('render_fails', (13, 11)), ('c', (20, 16)),
                       ('matting_fails', (9, 7)), ('e', (16, 20))])]
  real_render, real_predict = render_lib.render, remover.predict_batch

  def render(rgb, alpha, *args, **kwargs):
    if rgb.shape[:2] == (11, 13):
      raise ZeroDivisionError('division by zero')
    return real_render(rgb, alpha, *args, **kwargs)

  def predict_batch(images, *args, **kwargs):
    if any(image.shape[:2] == (7, 9) for image in images):
      raise RuntimeError('RESOURCE_EXHAUSTED: out of memory')
    return real_predict(images, *args, **kwargs)

  monkeypatch.setattr(render_lib, 'render', render)
  monkeypatch.setattr(remover, 'predict_batch', predict_batch)
  out = tmp_path / 'out'
  assert bgmat_cli(*photos, '-o', out) == 1
  assert sorted(os.listdir(out)) == ['a.png', 'c.png', 'e.png']
  err = capsys.readouterr().err
  assert 'render_fails.png: rgba output failed (ZeroDivisionError' in err
  assert 'matting_fails.png: matting failed (RuntimeError: RESOURCE_EXHAUSTED' in err


def test_a_write_failure_of_one_photo_does_not_stop_the_run(bgmat_cli, tmp_path, capsys):
  src = tmp_path / 'src'
  (src / 'sub').mkdir(parents=True)
  _photo(src / 'a.png')
  _photo(src / 'sub' / 'b.png')
  _photo(src / 'z.png')
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'sub').write_text('a file where the subfolder should be')
  assert bgmat_cli(src, '--recursive', '-o', out) == 1
  assert sorted(os.listdir(out)) == ['a.png', 'sub', 'z.png']
  assert 'b.png: cannot write' in capsys.readouterr().err


def test_unusable_output_location_is_refused_before_the_model_loads(bgmat_cli, tmp_path,
                                                                   capsys):
  photo = _photo(tmp_path / 'p.png')
  blocker = tmp_path / 'blocker'
  blocker.write_text('a file')
  assert bgmat_cli(photo, '-o', blocker) == 2
  assert 'exists and is not a folder' in capsys.readouterr().err
  assert bgmat_cli(photo, '-o', blocker / 'out') == 2
  assert 'cannot create the output folder' in capsys.readouterr().err
  assert bgmat_cli(photo, photo, '-o', tmp_path / 'cutout.png') == 2
  assert 'names a file' in capsys.readouterr().err
  assert bgmat_cli(photo, '-o', tmp_path / 'cutout.jpg') == 2  # rgba is PNG only.
  assert bgmat_cli(photo, '-o', photo) == 2
  assert 'never overwritten' in capsys.readouterr().err
  assert not bgmat_cli.loads


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes into read-only folders')
def test_read_only_output_folder_is_refused_before_the_model_loads(bgmat_cli, tmp_path,
                                                                  capsys):
  out = tmp_path / 'ro'
  out.mkdir()
  out.chmod(0o555)
  assert bgmat_cli(_photo(tmp_path / 'p.png'), '-o', out) == 2
  assert 'cannot write in the output folder' in capsys.readouterr().err
  assert not bgmat_cli.loads


# Kind 2: inputs and outputs that collide.

def test_same_folder_in_and_out_never_replaces_or_rereads(bgmat_cli, tmp_path, capsys):
  folder = tmp_path / 'photos'
  folder.mkdir()
  original = _photo(folder / 'y.png')
  before = open(original, 'rb').read()
  _photo(folder / 'x.jpg', seed=1)
  (folder / 'x.png.tmp-999999999.png').write_bytes(b'')  # A killed run's leftover.
  assert bgmat_cli(folder, '-o', folder) == 0
  assert open(original, 'rb').read() == before
  assert sorted(os.listdir(folder)) == ['x.jpg', 'x.png', 'y-2.png', 'y.png']
  capsys.readouterr()
  # A rerun takes neither the cut-outs nor anything new as input, and replaces its
  # own outputs in place.
  assert bgmat_cli(folder, '-o', folder) == 0
  assert sorted(os.listdir(folder)) == ['x.jpg', 'x.png', 'y-2.png', 'y.png']
  assert '2 written' in capsys.readouterr().out
  assert open(original, 'rb').read() == before


def test_output_names_are_unique_whatever_the_input_names(bgmat_cli, tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  for name in ('a.jpg', 'a.png', 'A.bmp', 'b_alpha.png', 'b.png'):
    _photo(src / name)
  foreign = tmp_path / 'out' / 'c.png'
  foreign.parent.mkdir()
  _photo(foreign, seed=5)  # Not written by bgmat: never replaced.
  foreign_bytes = foreign.read_bytes()
  _photo(src / 'c.png', seed=6)
  assert bgmat_cli(src, '-o', tmp_path / 'out', '--save-alpha') == 0
  names = sorted(os.listdir(tmp_path / 'out'))
  assert len({n.casefold() for n in names}) == len(names) == 13  # 6 inputs x 2 + foreign.
  assert foreign.read_bytes() == foreign_bytes and 'c-2.png' in names


def test_leftover_temporary_files_are_removed_and_never_inputs(bgmat_cli, tmp_path):
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  pid = int(dead.stdout)
  out = tmp_path / 'out'
  out.mkdir()
  leftover = out / f'.p.png.tmp-{pid}.png'
  old_style = out / f'q.png.tmp-{pid}.png'
  leftover.write_bytes(b'')
  old_style.write_bytes(b'')
  assert bgmat_cli(_photo(tmp_path / 'p.png'), '-o', out) == 0
  assert sorted(os.listdir(out)) == ['p.png']


# Kind 3 (the CLI and the API read alike), 4 (colour), 5 (limits).

def test_float_tiff_and_api_dtypes_read_by_their_range(bgmat_cli, remover, tmp_path):
  values = np.random.default_rng(3).random((16, 20)).astype(np.float32)
  Image.fromarray(values, 'F').save(tmp_path / 'float.tif')
  out = tmp_path / 'out'
  assert bgmat_cli(tmp_path / 'float.tif', '-o', out, '--foreground-method', 'none') == 0
  rgba = _open(out / 'float.png')[1]
  np.testing.assert_array_equal(rgba[..., 0], np.round(values * 255).astype(np.uint8))
  grey = np.repeat(np.round(values * 255).astype(np.uint8)[..., None], 3, -1)
  np.testing.assert_array_equal(remover.alpha(str(tmp_path / 'float.tif')), remover.alpha(grey))
  deep = grey.astype(np.uint16) * 257
  np.testing.assert_array_equal(remover.alpha(deep), remover.alpha(grey))
  with pytest.raises(remover_lib.InputError, match='int64'):
    remover.alpha(grey.astype(np.int64))
  with pytest.raises(remover_lib.InputError, match='empty image'):
    remover.alpha(np.zeros((0, 4, 3), np.uint8))


def test_pil_with_exif_orientation_comes_back_upright_as_in_the_cli(bgmat_cli, remover,
                                                                   tmp_path):
  exif = Image.Exif()
  exif[0x0112] = 6
  path = _photo(tmp_path / 'rotated.png', (20, 12), exif=exif)
  with Image.open(path) as img:
    rgba = remover(img)
  assert rgba.size == (12, 20)
  assert bgmat_cli(path, '-o', tmp_path / 'out', '--format', 'alpha') == 0
  np.testing.assert_array_equal(_open(tmp_path / 'out' / 'rotated.png')[1],
                                np.asarray(rgba)[..., 3])


def test_icc_profile_kept_on_outputs_with_the_photos_colours(bgmat_cli, tmp_path):
  profile = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()
  path = _photo(tmp_path / 'p3.jpg', icc_profile=profile)
  for fmt, want in [('rgba', profile), ('foreground', profile), ('composite', profile),
                    ('alpha', None)]:
    assert bgmat_cli(path, '-o', tmp_path / fmt, '--format', fmt) == 0
    (name,) = os.listdir(tmp_path / fmt)
    assert _open(tmp_path / fmt / name)[2] == want, fmt


def test_one_pixel_limit_and_compiled_shapes_settable_from_the_cli(bgmat_cli, tmp_path,
                                                                  monkeypatch, capsys):
  path = _photo(tmp_path / 'big.png', (60, 50))
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # Pillow's limit below the photo.
  assert bgmat_cli(path, '-o', tmp_path / 'ok', '--max-pixels', '5000',
                   '--max-compiled', '3') == 0
  assert compile_cache.budget() == 3
  assert bgmat_cli(path, '-o', tmp_path / 'refused', '--max-pixels', '2999') == 1
  assert 'big.png: 60x50 pixels is over the limit of 2999' in capsys.readouterr().err
  assert compile_cache.budget() == compile_cache.DEFAULT_BUDGET  # Not the last run's.


# Kind 6 (folder types) and 8 (smaller things).

def test_folder_takes_every_image_type_and_says_what_it_skipped(bgmat_cli, tmp_path, capsys):
  src = tmp_path / 'src'
  src.mkdir()
  _photo(src / 'a.jfif', format='JPEG')
  _photo(src / 'b.avif', seed=1)
  _photo(src / 'c_no_extension', seed=2, format='PNG')
  (src / 'notes.txt').write_text('not an image')
  assert bgmat_cli(src, '-o', tmp_path / 'out') == 0
  assert sorted(os.listdir(tmp_path / 'out')) == ['a.png', 'b.png', 'c_no_extension.png']
  assert '3 written' in (out := capsys.readouterr().out) and '1 not taken' in out
  assert 'not an image' in out


def test_keep_transparency_animations_stdin_and_output_file(bgmat_cli, remover, tmp_path,
                                                            monkeypatch, capsys):
  rgba = np.random.default_rng(4).integers(0, 256, (16, 20, 4), dtype=np.uint8)
  rgba[:, :10, 3] = 0
  rgba[:, 10:, 3] = 255
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'cut.png')
  assert bgmat_cli(tmp_path / 'cut.png', '-o', tmp_path / 'kept', '--format', 'alpha',
                   '--keep-transparency') == 0
  kept = _open(tmp_path / 'kept' / 'cut.png')[1]
  assert (kept[:, :10] == 0).all()
  assert (kept[:, 10:] == np.round(remover.alpha(rgba[..., :3]) * 255)[:, 10:]).all()
  assert (remover.alpha(rgba, keep_transparency=True)[:, :10] == 0).all()
  frames = [Image.new('RGB', (8, 8), c) for c in ('red', 'blue')]
  frames[0].save(tmp_path / 'anim.gif', save_all=True, append_images=frames[1:])
  capsys.readouterr()
  assert cli.main(['remove', str(tmp_path / 'anim.gif'), '-o', str(tmp_path / 'a'),
                   '--workdir', 'random']) == 0
  assert 'anim.gif: note: 2 frames (animated): the first is used' in capsys.readouterr().out
  with pytest.warns(UserWarning, match='2 frames'):
    remover.alpha(str(tmp_path / 'anim.gif'))
  # '-' reads stdin; -o FILE.png for one input writes that file.
  buffer = io.BytesIO()
  Image.fromarray(rgba[..., :3]).save(buffer, format='PNG')
  monkeypatch.setattr(sys, 'stdin', io.TextIOWrapper(io.BytesIO(buffer.getvalue())))
  assert bgmat_cli('-', '-o', tmp_path / 'cutout.png', '--save-alpha') == 0
  assert (tmp_path / 'cutout.png').is_file() and (tmp_path / 'cutout_alpha.png').is_file()
  assert _open(tmp_path / 'cutout.png')[1].shape == (16, 20, 4)


def test_api_takes_paths(remover, tmp_path):
  path = _photo(tmp_path / 'p.png')
  np.testing.assert_array_equal(remover.alpha(path),
                                remover.alpha(np.asarray(Image.open(path))))
  assert remover(path).shape == (16, 20, 4)


def test_either_module_imports_first():
  """remove_run and remover import each other; neither order may fail."""
  for first in ('bgmat.inference.remove_run', 'bgmat.inference.remover'):
    code = f'import {first}; from bgmat.inference import remover; remover.process_inputs'
    subprocess.run([sys.executable, '-c', code], check=True, capture_output=True)


def test_freed_heap_is_returned_without_error():
  from bgmat.inference import remove_run  # pylint: disable=g-import-not-at-top
  remove_run._return_freed_memory()  # pylint: disable=protected-access
  remove_run._return_freed_memory()  # pylint: disable=protected-access
  assert remove_run._malloc_trim.cache_info().currsize == 1  # pylint: disable=protected-access  (resolved once)
