"""bgmat: portrait background removal by soft alpha matting in JAX/Flax.

  import bgmat
  rgba = bgmat.remove(image, workdir='runs/demo/matting')   # (H, W, 4) uint8
  remover = bgmat.Remover.from_workdir('runs/demo/matting')  # reuse for many photos
"""

import functools

__version__ = '0.1.0'


def __getattr__(name):
  # Lazy, so `import bgmat` stays cheap and does not initialise JAX.
  if name == 'Remover':
    from bgmat.inference.remover import Remover  # pylint: disable=g-import-not-at-top
    return Remover
  raise AttributeError(name)


@functools.lru_cache(maxsize=4)
def _cached_remover(workdir: str):
  from bgmat.inference.remover import Remover  # pylint: disable=g-import-not-at-top
  return Remover.from_workdir(workdir)


def remove(image, workdir: str, foreground_method: str = 'blur_fusion'):
  """RGBA cut-out of one image with the matting run in `workdir`.

  numpy (H, W, 3) uint8 in -> (H, W, 4) uint8 out; PIL in -> PIL RGBA out.
  foreground_method: the colours of soft edges (`bgmat.foreground.METHODS`;
  the default is `foreground.DEFAULT_METHOD`, as for the CLI; 'none' keeps the
  photo's colours).
  """
  return _cached_remover(str(workdir))(image, foreground_method=foreground_method)
