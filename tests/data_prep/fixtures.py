"""Tiny fixture folders for the matting-set builders: each released layout, and
a folder of bad inputs of every kind (made with data_prep.synthetic and numpy)."""
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

from data_prep import synthetic

# (height, width) of the fixture photos: varied sizes and aspects.
SIZES = ((48, 64), (64, 40), (56, 56), (40, 60))


def portrait(index: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A synthetic portrait cropped to SIZES[index % 4]: image, fg, bg, alpha uint8."""
  example = synthetic.generate_example(index, 'train', seed=seed, image_size=64,
                                       supersample=2)
  height, width = SIZES[index % len(SIZES)]
  return {k: np.ascontiguousarray(example[k][:height, :width])
          for k in ('image', 'fg', 'bg', 'alpha')}


def save(path: str, array: np.ndarray, **kwargs) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)
  return path


def write_natural(image_dir: str, alpha_dir: str, stems: list[str], seed: int = 0,
                  image_ext: str = '.png') -> dict[str, dict[str, np.ndarray]]:
  """Photos and alphas under matching stems; returns stem -> portrait arrays."""
  out = {}
  for i, stem in enumerate(stems):
    example = portrait(i, seed)
    save(os.path.join(image_dir, stem + image_ext), example['image'])
    save(os.path.join(alpha_dir, stem + '.png'), example['alpha'])
    out[stem] = example
  return out


def write_foregrounds(fg_dir: str, alpha_dir: str, stems: list[str], seed: int = 0,
                      old_bg=(0, 255, 0)) -> dict[str, dict[str, np.ndarray]]:
  """Released-style foregrounds: the true fg, but soft pixels carry the colour of
  the green screen they were shot on (the halo estimation must remove)."""
  out = {}
  for i, stem in enumerate(stems):
    example = portrait(i, seed)
    screen = np.broadcast_to(np.asarray(old_bg, np.uint8), example['fg'].shape)
    released = synthetic.composite(example['fg'], example['alpha'], screen)
    save(os.path.join(fg_dir, stem + '.png'), released)
    save(os.path.join(alpha_dir, stem + '.png'), example['alpha'])
    out[stem] = dict(example, released=released)
  return out


def write_backgrounds(folder: str, count: int, seed: int = 0) -> list[str]:
  """Smooth random backgrounds of other sizes than the foregrounds (some smaller)."""
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    height, width = [(30, 90), (80, 50), (64, 64), (100, 120)][i % 4]
    colours = rng.integers(0, 256, size=(2, 2, 3)).astype(np.uint8)
    bg = np.asarray(Image.fromarray(colours).resize((width, height), Image.BILINEAR))
    paths.append(save(os.path.join(folder, f'bg{i:02d}.jpg'), bg, quality=95))
  return paths


def write_layout(root: str, layout: str, seed: int = 0) -> dict[str, dict[str, tuple]]:
  """A tiny copy of a released layout under `root`.

  Returns:
    {split: {expected id: (image or fg path, alpha path)}}.
  """
  two, three = ['a', 'b'], ['c', 'd', 'e']
  trees = {
      'p3m10k': {'train': [('train/blurred_image', 'train/mask', '', three)],
                 'validation': [('validation/P3M-500-P/blurred_image',
                                 'validation/P3M-500-P/mask', '', two)],
                 'test': [('validation/P3M-500-NP/original_image',
                           'validation/P3M-500-NP/mask', '', ['f'])]},
      'am2k': {'train': [('train/original', 'train/mask', '', three)],
               'test': [('validation/original', 'validation/mask', '', two)]},
      'aim500': {'test': [('original', 'mask', '', three)]},
      'ppm100': {'test': [('image', 'matte', '', two)]},
      'comp1k': {'train': [('Training_set/Adobe-licensed images/fg',
                            'Training_set/Adobe-licensed images/alpha',
                            'Adobe-licensed images/', two),
                           ('Training_set/Other/fg', 'Training_set/Other/alpha', 'Other/',
                            ['z'])],
                 'test': [('Test_set/Adobe-licensed images/fg',
                           'Test_set/Adobe-licensed images/alpha',
                           'Adobe-licensed images/', ['t'])]},
      'd646': {'train': [('Train/FG', 'Train/GT', '', three)],
               'test': [('Test/FG', 'Test/GT', '', two)]},
  }
  expected = {}
  for split, folders in trees[layout].items():
    for image_rel, alpha_rel, prefix, stems in folders:
      writer = write_foregrounds if layout in ('comp1k', 'd646') else write_natural
      image_dir, alpha_dir = os.path.join(root, image_rel), os.path.join(root, alpha_rel)
      writer(image_dir, alpha_dir, stems, seed)
      for stem in stems:
        expected.setdefault(split, {})[prefix + stem] = (
            os.path.join(image_dir, stem + '.png'), os.path.join(alpha_dir, stem + '.png'))
  return expected


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return (struct.pack('>I', len(data)) + kind + data
          + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))


def bomb_png(path: str, side: int = 60_000) -> str:
  """A PNG header claiming side x side pixels (3.6 G for the default), a few bytes."""
  header = struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)
  data = (b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', header)
          + _png_chunk(b'IDAT', zlib.compress(b'\x00' * 64)) + _png_chunk(b'IEND', b''))
  with open(path, 'wb') as f:
    f.write(data)
  return path


def _exif_rotated_jpeg(path: str, stored: np.ndarray) -> None:
  exif = Image.Exif()
  exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
  Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())


def write_bad_inputs(root: str) -> dict:
  """A `natural` layout (root/image, root/alpha) with good files and bad ones.

  Returns:
    {'good': stems that must be in the data set (some after a conversion),
     'skipped': {file name: reason}, 'converted': {file name: reason}}.
  """
  image_dir, alpha_dir = os.path.join(root, 'image'), os.path.join(root, 'alpha')
  good = write_natural(image_dir, alpha_dir, ['good0', 'good1'])
  skipped, converted = {}, {}

  def pair(stem, index, image_ext='.png', image=None, alpha=None, **kwargs):
    example = portrait(index)
    image_path = os.path.join(image_dir, stem + image_ext)
    save(image_path, example['image'] if image is None else image, **kwargs)
    save(os.path.join(alpha_dir, stem + '.png'),
         example['alpha'] if alpha is None else alpha)
    return example, image_path

  # Conversions: the example stays, with a report line.
  example, _ = pair('gray', 2, image=portrait(2)['image'].mean(-1).astype(np.uint8))
  converted['gray.png'] = 'grayscale'
  Image.fromarray(portrait(3)['image']).convert('P').save(os.path.join(image_dir, 'palette.png'))
  save(os.path.join(alpha_dir, 'palette.png'), portrait(3)['alpha'])
  converted['palette.png'] = 'palette'
  cmyk = Image.fromarray(portrait(0)['image']).convert('CMYK')
  cmyk.save(os.path.join(image_dir, 'cmyk.jpg'), quality=95)
  save(os.path.join(alpha_dir, 'cmyk.png'), portrait(0)['alpha'])
  converted['cmyk.jpg'] = 'cmyk'
  deep = (portrait(1)['image'][..., 0].astype(np.uint16) * 257)
  pair('deep16', 1, image=deep)
  converted['deep16.png'] = '16bit'
  rgba = np.dstack([portrait(2)['image'], np.full(SIZES[2], 200, np.uint8)])
  pair('rgba', 2, image=rgba)
  converted['rgba.png'] = 'rgba'
  alpha16 = portrait(3)['alpha'].astype(np.uint16) * 257
  pair('alpha16', 3, alpha=alpha16)
  converted['alpha/alpha16.png'] = '16bit'
  example = portrait(0)  # 48 x 64: half-resolution alpha, same aspect
  half = np.asarray(Image.fromarray(example['alpha']).resize((32, 24), Image.BILINEAR))
  pair('halfalpha', 0, alpha=half)
  converted['alpha/halfalpha.png'] = 'alpha_resized'
  # EXIF: stored sideways; the alpha is drawn on the upright picture.
  example = portrait(1)
  _exif_rotated_jpeg(os.path.join(image_dir, 'rotated.jpg'), np.rot90(example['image'], 1))
  save(os.path.join(alpha_dir, 'rotated.png'), example['alpha'])
  converted['rotated.jpg'] = 'exif_rotated'

  # Skips: the example is absent, with a report line.
  pair('mismatch', 0, alpha=np.zeros((30, 30), np.uint8))
  skipped['alpha/mismatch.png'] = 'alpha_size_mismatch'
  buffer = io.BytesIO()
  Image.fromarray(portrait(1)['image']).save(buffer, format='JPEG', quality=95)
  with open(os.path.join(image_dir, 'truncated.jpg'), 'wb') as f:
    f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  save(os.path.join(alpha_dir, 'truncated.png'), portrait(1)['alpha'])
  skipped['truncated.jpg'] = 'unreadable'
  with open(os.path.join(image_dir, 'garbage.png'), 'wb') as f:
    f.write(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
  save(os.path.join(alpha_dir, 'garbage.png'), portrait(1)['alpha'])
  skipped['garbage.png'] = 'not_an_image'
  bomb_png(os.path.join(image_dir, 'bomb.png'))
  save(os.path.join(alpha_dir, 'bomb.png'), portrait(1)['alpha'])
  skipped['bomb.png'] = 'decompression_bomb'
  with open(os.path.join(image_dir, 'notes.txt'), 'w', encoding='utf-8') as f:
    f.write('not an image\n')
  skipped['notes.txt'] = 'not_an_image'
  save(os.path.join(image_dir, 'orphan.png'), portrait(2)['image'])
  skipped['orphan.png'] = 'missing_pair'
  save(os.path.join(image_dir, 'badalpha.png'), portrait(2)['image'])
  buffer = io.BytesIO()
  Image.fromarray(portrait(2)['alpha']).save(buffer, format='PNG')
  with open(os.path.join(alpha_dir, 'badalpha.png'), 'wb') as f:
    f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  skipped['alpha/badalpha.png'] = 'unreadable'
  save(os.path.join(image_dir, 'dup.png'), portrait(3)['image'])
  save(os.path.join(image_dir, 'dup.tif'), portrait(3)['image'])
  save(os.path.join(alpha_dir, 'dup.png'), portrait(3)['alpha'])
  skipped['dup.tif'] = 'duplicate_stem'
  good_stems = sorted(list(good) + ['dup'] + [os.path.splitext(os.path.basename(n))[0] for n in converted])
  return {'good': good_stems, 'skipped': skipped, 'converted': converted,
          'image_dir': image_dir, 'alpha_dir': alpha_dir}
