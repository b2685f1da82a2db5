"""Opening untrusted image files: one guard for every reader in bgmat.

`bgmat remove`, the data builders and the labelling tools all read files that
users point them at. They share this opener, so a decompression bomb, a missing
file, a non-image or a truncated image is refused the same way everywhere, with
the file named and a short reason code that reports can count.
"""

import warnings

from PIL import Image

# Images larger than this are refused as possible decompression bombs.
MAX_PIXELS = 100_000_000


class ImageReadError(ValueError):
  """A file that cannot be used; `reason` is a short code for reports
  ('missing', 'not_an_image', 'decompression_bomb', 'unreadable', ...)."""

  def __init__(self, file: str, reason: str, detail: str):
    super().__init__(f'{file}: {reason}: {detail}')
    self.file, self.reason, self.detail = str(file), reason, detail


def open_image(path: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
  """Opens and fully decodes `path` (mode and EXIF as stored); raises
  ImageReadError for anything unusable."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(path) as img:
        if img.width * img.height > max_pixels:
          raise ImageReadError(path, 'decompression_bomb',
                               f'{img.width}x{img.height} pixels is over the limit of '
                               f'{max_pixels}')
        img.load()
        # The context manager closes the file; a copy keeps pixels and info.
        return img.copy()
  except ImageReadError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise ImageReadError(path, 'decompression_bomb', str(e)) from e
  except FileNotFoundError as e:
    raise ImageReadError(path, 'missing', 'no such file') from e
  except Image.UnidentifiedImageError as e:
    raise ImageReadError(path, 'not_an_image', 'not a known image format') from e
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    raise ImageReadError(path, 'unreadable', f'{type(e).__name__}: {e}') from e


def describe(error: ImageReadError) -> str:
  """'<file>: <what is wrong>' in words, for messages to people."""
  if error.reason == 'missing':
    return f'{error.file}: no such file'
  if error.reason == 'decompression_bomb':
    return f'{error.file}: {error.detail} (possible decompression bomb)'
  return f'{error.file}: not a readable image ({error.detail})'
