"""`bgmat remove` and `bgmat.remove`: sizes, alpha range, bad inputs."""

import os

import numpy as np
from PIL import Image
import pytest

import bgmat
from bgmat import cli
from bgmat import remover as remover_lib
from bgmat import train
import configs.matting as matting_configs
import configs.preseg as preseg_configs


@pytest.fixture(scope='module')
def matting_workdir(tiny_data, tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  preseg = preseg_configs.get_config('tiny')
  preseg.dataset, preseg.data_dir = tiny_data
  preseg.num_train_steps = 2
  preseg.eval_test = False
  train.train_and_evaluate(preseg, str(root / 'preseg'))
  matting = matting_configs.get_config('tiny,noadv')
  matting.dataset, matting.data_dir = tiny_data
  matting.num_train_steps = 2
  matting.eval_test = False
  matting.preseg_workdir = 'preseg'  # Relative to the workdir's parent.
  train.train_and_evaluate(matting, str(root / 'matting'))
  return str(root / 'matting')


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
                   '--save-alpha']) == 0
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
                   '-o', str(out), '--workdir', matting_workdir])
  assert code == 1
  captured = capsys.readouterr()
  for name in ('corrupt.jpg', 'notes.png', 'missing.png'):
    assert name in captured.out + captured.err
  assert sorted(os.listdir(out)) == ['good.png']


def test_python_api_alpha_range_and_kinds(matting_workdir):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, size=(37, 52, 3), dtype=np.uint8)
  rgba = bgmat.remove(image, workdir=matting_workdir)
  assert rgba.shape == (37, 52, 4) and rgba.dtype == np.uint8
  np.testing.assert_array_equal(rgba[..., :3], image)
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


def test_wrong_workdir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    bgmat.Remover.from_workdir(str(tmp_path))
