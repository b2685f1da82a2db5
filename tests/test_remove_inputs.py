"""The one photo reader (`bgmat.inference.image_io.read_photo`): every mode, dtype, size,
orientation and profile gives the reference pixels or a clear InputError.

No model here: these run in seconds. The reference decode is written with
numpy from the generating array (orientation, palette, bit depth), not with
the reader's own Pillow calls. The two property tests draw their cases with
Hypothesis (structure: mode / dtype, size from 1x1, orientation, profile;
pixels: from a drawn seed), derandomized so that CI runs the same cases on
every machine; a failure shrinks to the smallest failing structure.
"""

import io
import warnings

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
from PIL import Image
from PIL import ImageCms
import pytest

from bgmat.inference import image_io

InputError = image_io.InputError

# EXIF orientation -> the displayed image of the stored one (EXIF 2.3, tag 0x0112).
ORIENT = {
    1: lambda x: x,
    2: lambda x: x[:, ::-1],
    3: lambda x: x[::-1, ::-1],
    4: lambda x: x[::-1],
    5: lambda x: np.swapaxes(x, 0, 1),
    6: lambda x: np.rot90(x, -1),
    7: lambda x: np.swapaxes(x[::-1, ::-1], 0, 1),
    8: lambda x: np.rot90(x, 1),
}
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile('sRGB')).tobytes()


def _u8(unit):
  return np.round(np.asarray(unit, np.float64) * 255).astype(np.uint8)


FILE_MODES = ('1', 'L', 'P', 'RGB', 'RGBA', 'LA', 'I;16', 'F', 'F01')
PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def _file_case(mode, height, width, orientation, with_profile, seed):
  """An image file -> (bytes, expected rgb or None for 'refused', expected alpha,
  profile expected on the photo, case name). 'F01': float TIFF in [0, 1]."""
  rng = np.random.default_rng(seed)
  profile = SRGB if mode in ('RGB', 'RGBA', 'P') and with_profile else None
  alpha = None
  fmt = 'PNG'
  if mode == '1':
    bits = rng.random((height, width)) < 0.5
    img, rgb = Image.fromarray(bits), np.repeat(_u8(bits)[..., None], 3, -1)
  elif mode == 'L':
    grey = rng.integers(0, 256, (height, width), dtype=np.uint8)
    img, rgb = Image.fromarray(grey), np.repeat(grey[..., None], 3, -1)
  elif mode == 'P':
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    index = rng.integers(0, 256, (height, width), dtype=np.uint8)
    img = Image.fromarray(index, 'L').convert('P')
    img.putpalette(palette.tobytes())
    rgb = palette[index]
  elif mode in ('RGB', 'RGBA', 'LA'):
    channels = {'RGB': 3, 'RGBA': 4, 'LA': 2}[mode]
    array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    if channels != 3 and rng.random() < 0.3:
      array[..., -1] = 255  # Opaque: no alpha comes back.
    img = Image.fromarray(array, mode)
    colour = array[..., :1 if mode == 'LA' else 3]
    rgb = np.broadcast_to(colour, (height, width, 3))
    if channels != 3 and array[..., -1].min() < 255:
      alpha = array[..., -1] / 255.0
  elif mode == 'I;16':
    deep = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    img = Image.fromarray(deep)
    rgb = np.repeat(_u8(deep / 65535.0)[..., None], 3, -1)
  else:  # 32-bit float TIFF: in [0, 1] (read), or beyond (refused).
    fmt = 'TIFF'
    scale = 1.0 if mode == 'F01' else 255.0
    values = (rng.random((height, width)) * scale).astype(np.float32)
    if mode == 'F':
      values.flat[0] = 2.0  # Certainly outside [0, 1].
    img = Image.fromarray(values, 'F')
    rgb = np.repeat(_u8(values)[..., None], 3, -1) if mode == 'F01' else None
  exif = Image.Exif()
  exif[0x0112] = orientation
  buffer = io.BytesIO()
  options = {'exif': exif}
  if profile:
    options['icc_profile'] = profile
  img.save(buffer, format=fmt, **options)
  if rgb is not None:
    rgb = ORIENT[orientation](np.asarray(rgb))
  if alpha is not None:
    alpha = ORIENT[orientation](alpha)
  return buffer.getvalue(), rgb, alpha, profile, f'{mode} {height}x{width} o{orientation}'


@PROPERTY
@given(mode=st.sampled_from(FILE_MODES), height=st.integers(1, 9), width=st.integers(1, 9),
       orientation=st.integers(1, 8), with_profile=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_files_property_same_pixels_or_input_error(mode, height, width, orientation,
                                                   with_profile, seed):
  """Files of every mode and bit depth, sizes from 1x1, all EXIF orientations,
  with and without an ICC profile."""
  data, rgb, alpha, profile, case = _file_case(mode, height, width, orientation,
                                               with_profile, seed)
  if rgb is None:
    with pytest.raises(InputError, match=r'\[0, 1\]'):
      image_io.read_photo(data, name=case)
    return
  photo = image_io.read_photo(data, name=case)
  np.testing.assert_array_equal(photo.rgb, rgb, err_msg=case)
  assert photo.rgb.dtype == np.uint8 and photo.rgb.flags.c_contiguous, case
  if alpha is None:
    assert photo.alpha is None, case
  else:
    np.testing.assert_allclose(photo.alpha, alpha, atol=1e-6, err_msg=case)
  assert photo.icc_profile == profile, case


DTYPES = (np.uint8, np.uint16, np.bool_, np.float16, np.float32, np.float64,
          np.int8, np.int16, np.int32, np.int64, np.uint32, np.uint64)


@PROPERTY
@given(dtype=st.sampled_from(DTYPES), height=st.integers(1, 6), width=st.integers(1, 6),
       channels=st.sampled_from([0, 1, 2, 3, 4]), seed=st.integers(0, 2**32 - 1))
def test_arrays_property_real_range_or_input_error(dtype, height, width, channels, seed):
  """Arrays of every dtype and channel count (0: a 2-D array): read by their real
  range (uint8 as is, uint16 / 65535, bool, float in [0, 1]) or refused by name."""
  rng = np.random.default_rng(seed)
  shape = (height, width) + ((channels,) if channels else ())
  if dtype == np.bool_:
    array = rng.random(shape) < 0.5
  elif np.issubdtype(dtype, np.floating):
    array = (rng.random(shape) * rng.choice([1.0, 255.0])).astype(dtype)
  else:
    info = np.iinfo(dtype)
    array = rng.integers(0, min(int(info.max), 2**31), shape).astype(dtype)
  case = f'{np.dtype(dtype).name} {shape}'
  if dtype == np.uint8:
    unit = array / 255.0
  elif dtype == np.uint16:
    unit = array / 65535.0
  elif dtype == np.bool_:
    unit = array.astype(np.float64)
  elif np.issubdtype(dtype, np.floating) and array.max() <= 1.0:
    unit = array.astype(np.float64)
  else:
    with pytest.raises(InputError, match='array'):
      image_io.read_photo(array)
    return
  photo = image_io.read_photo(array)
  unit = unit.reshape((height, width, -1))
  colour = unit[..., :3] if unit.shape[-1] >= 3 else unit[..., :1]
  np.testing.assert_array_equal(photo.rgb, np.broadcast_to(_u8(colour), (height, width, 3)),
                                err_msg=case)
  if unit.shape[-1] in (2, 4) and unit[..., -1].min() < 1.0:
    np.testing.assert_allclose(photo.alpha, unit[..., -1], atol=1e-6, err_msg=case)
  else:
    assert photo.alpha is None, case


def test_float_tiff_in_unit_range_is_not_black():
  """Issue 14, kind 3: a 32-bit float TIFF in [0, 1] was read as a black image."""
  values = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
  buffer = io.BytesIO()
  Image.fromarray(values, 'F').save(buffer, format='TIFF')
  photo = image_io.read_photo(buffer.getvalue())
  np.testing.assert_array_equal(photo.rgb[..., 1], _u8(values))
  assert photo.rgb.max() == 255


def test_wide_integer_and_out_of_range_arrays_are_refused_not_saturated():
  """Issue 14, kind 3: int64 arrays saturated to white; uint16 too."""
  with pytest.raises(InputError, match='int64 array has no defined pixel range'):
    image_io.read_photo(np.full((4, 4, 3), 128, np.int64))
  deep = np.full((4, 4, 3), 32768, np.uint16)
  assert (image_io.read_photo(deep).rgb == 128).all()  # 32768 / 65535 * 255 = 127.5.
  with pytest.raises(InputError, match=r'values in \[0, 255\]'):
    image_io.read_photo(np.linspace(0.0, 255.0, 12).reshape(2, 2, 3))
  with pytest.raises(InputError, match='NaN'):
    image_io.read_photo(np.full((2, 2, 3), np.nan, np.float32))


def test_32_bit_integer_tiff_is_refused(tmp_path):
  path = tmp_path / 'int32.tif'
  Image.fromarray(np.full((3, 3), 7, np.int32)).save(path)
  with pytest.raises(InputError, match='int32.tif: 32-bit integer pixels'):
    image_io.read_photo(str(path))


def test_empty_and_wrong_shaped_inputs_are_clear_errors():
  """Issue 14, kind 8: an empty array gave ZeroDivisionError; a path 'got shape ()'."""
  with pytest.raises(InputError, match='empty image'):
    image_io.read_photo(np.zeros((0, 5, 3), np.uint8))
  with pytest.raises(InputError, match=r'got shape \(2, 2, 5\)'):
    image_io.read_photo(np.zeros((2, 2, 5), np.uint8))
  with pytest.raises(InputError, match='path string'):
    image_io.read_photo(np.asarray('photo.jpg'))
  with pytest.raises(InputError, match='unsupported input type'):
    image_io.read_photo(3.5)
  with pytest.raises(InputError, match='empty input'):
    image_io.read_photo(b'')


def test_pil_image_is_read_upright():
  """Issue 14, kind 3: a PIL image with EXIF orientation came back sideways."""
  stored = np.random.default_rng(2).integers(0, 256, (4, 6, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = 6
  buffer = io.BytesIO()
  Image.fromarray(stored).save(buffer, format='PNG', exif=exif)
  with Image.open(buffer) as img:
    photo = image_io.read_photo(img)
  np.testing.assert_array_equal(photo.rgb, np.rot90(stored, -1))
  path_photo = image_io.read_photo(buffer.getvalue())
  np.testing.assert_array_equal(photo.rgb, path_photo.rgb)


def test_pillow_limit_does_not_apply_below_ours(tmp_path, monkeypatch):
  """Issue 14, kind 5: a photo under bgmat's limit was refused by Pillow's own
  (89.5 MP); Pillow's limit is lowered here so the test stays small."""
  path = tmp_path / 'large.png'
  Image.fromarray(np.zeros((60, 50, 3), np.uint8)).save(path)
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # 3000 px: Pillow warns; 2x: errors.
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert image_io.read_photo(str(path), max_pixels=10_000).rgb.shape == (60, 50, 3)
  with pytest.raises(InputError, match='large.png: 50x60 pixels is over the limit of 2000'):
    image_io.read_photo(str(path), max_pixels=2000)
  with pytest.raises(InputError, match='over the limit of 100'):
    image_io.read_photo(np.zeros((20, 20, 3), np.uint8), max_pixels=100)


def test_profiles_kept_or_converted_with_a_note():
  """Issue 14, kind 4: an RGB profile stays with the photo; a grey or CMYK one is
  converted to sRGB and said so."""
  buffer = io.BytesIO()
  Image.new('RGB', (3, 2), (10, 200, 30)).save(buffer, format='PNG', icc_profile=SRGB)
  assert image_io.read_photo(buffer.getvalue()).icc_profile == SRGB
  cmyk = Image.new('CMYK', (3, 2), (0, 255, 255, 0))
  photo = image_io.read_photo(cmyk)
  assert photo.icc_profile is None and 'CMYK without an ICC profile' in photo.notes[0]
  np.testing.assert_array_equal(photo.rgb[0, 0], [255, 0, 0])  # Pillow's naive CMYK.
  lab = image_io.read_photo(Image.new('LAB', (2, 2), (255, 128, 128)))  # L* 100, a* b* 0.
  assert 'converted from Lab to sRGB' in lab.notes
  assert (lab.rgb >= 250).all()


def test_frames_and_transparency_are_reported_not_dropped():
  """Issue 14, kind 8: animations gave the first frame without a word; alpha was dropped."""
  frames = [Image.new('RGB', (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
  buffer = io.BytesIO()
  frames[0].save(buffer, format='GIF', save_all=True, append_images=frames[1:])
  photo = image_io.read_photo(buffer.getvalue(), name='anim.gif')
  assert photo.notes == ('2 frames (animated): the first is used',)
  assert tuple(photo.rgb[0, 0]) == (255, 0, 0)
  rgba = np.zeros((3, 3, 4), np.uint8)
  rgba[..., 3] = 255
  rgba[0, 0, 3] = 0
  alpha = image_io.read_photo(Image.fromarray(rgba, 'RGBA')).alpha
  assert alpha[0, 0] == 0 and alpha[1, 1] == 1


def test_missing_not_an_image_and_truncated_files(tmp_path):
  with pytest.raises(InputError, match='missing.png: no such file'):
    image_io.read_photo(str(tmp_path / 'missing.png'))
  (tmp_path / 'notes.png').write_text('text')
  with pytest.raises(InputError, match='notes.png: not a readable image'):
    image_io.read_photo(str(tmp_path / 'notes.png'))
  buffer = io.BytesIO()
  noise = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
  Image.fromarray(noise).save(buffer, format='PNG')
  (tmp_path / 'cut.png').write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  with pytest.raises(InputError, match='cut.png'):
    image_io.read_photo(str(tmp_path / 'cut.png'))
