"""Folder layouts of public matting sets: which files pair up into which split.

Each layout maps a split to folders relative to its root, as the sets are
released (see the README section "Real matting data" for the trees):

  p3m10k    train/{blurred_image,mask}; validation <- validation/P3M-500-P/
            {blurred_image,mask}; test <- validation/P3M-500-NP/{original_image,mask}
  am2k      train/{original,mask}; test <- validation/{original,mask}
  aim500    test <- {original,mask}
  ppm100    test <- {image,matte}
  comp1k    Composition-1k (Adobe Deep Image Matting, Combined_Dataset/):
            train <- Training_set/*/{fg,alpha}; test <- Test_set/*/{fg,alpha}
  d646      Distinctions-646: train <- Train/{FG,GT}; test <- Test/{FG,GT}

plus the generic layouts `natural` (--image DIR --alpha DIR), `compose`
(--fg DIR --alpha DIR, composited onto --bg) and `autolabel` (--image DIR
--mask DIR: photos with coarse binary person masks, labelled automatically by
data_prep.autolabel, kept on their own background and composited onto --bg).
Files pair by stem (`a.jpg` with `a.png`); anything unpaired, ambiguous or not
an image is a report line. Folders may be URIs (gs://, s3://: data_prep.fileio).
"""

import contextlib
import dataclasses
import hashlib
import os

from etils import epath

from data_prep import fileio
from data_prep.compose import Source

IMAGE_EXTENSIONS = frozenset(
    ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.gif', '.ppm', '.pgm'))

# layout -> (kind, {split: [(image folder, alpha folder), ...]}); '*' globs.
LAYOUTS = {
    'p3m10k': ('natural', {
        'train': [('train/blurred_image', 'train/mask')],
        'validation': [('validation/P3M-500-P/blurred_image', 'validation/P3M-500-P/mask')],
        'test': [('validation/P3M-500-NP/original_image', 'validation/P3M-500-NP/mask')]}),
    'am2k': ('natural', {
        'train': [('train/original', 'train/mask')],
        'test': [('validation/original', 'validation/mask')]}),
    'aim500': ('natural', {'test': [('original', 'mask')]}),
    'ppm100': ('natural', {'test': [('image', 'matte')]}),
    'comp1k': ('compose', {
        'train': [('Training_set/*/fg', 'Training_set/*/alpha')],
        'test': [('Test_set/*/fg', 'Test_set/*/alpha')]}),
    'd646': ('compose', {
        'train': [('Train/FG', 'Train/GT')],
        'test': [('Test/FG', 'Test/GT')]}),
}
GENERIC = ('natural', 'compose', 'autolabel')
ALL_LAYOUTS = tuple(LAYOUTS) + GENERIC


@dataclasses.dataclass(frozen=True)
class Listing:
  """Sources per split, and report entries for files that could not be paired."""
  sources: dict[str, list[Source]]
  problems: list[dict]


def _files(folder: str) -> list[str]:
  """Regular, non-hidden files of `folder` (not recursive), sorted."""
  if not fileio.isdir(folder):
    raise FileNotFoundError(f'{folder}: no such folder')
  return sorted(fileio.join(folder, name) for name in fileio.listdir(folder)
                if not name.startswith('.') and fileio.isfile(fileio.join(folder, name)))


def _by_stem(files: list[str], problems: list[dict]) -> dict[str, str]:
  """stem -> file over image files; non-images and repeated stems are reported."""
  out = {}
  for path in files:
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext.lower() not in IMAGE_EXTENSIONS:
      problems.append(_problem(path, 'not_an_image', f'extension {ext!r} is not an image type'))
    elif stem in out:
      problems.append(_problem(path, 'duplicate_stem', f'{out[stem]} has the same stem; '
                               'that one is used'))
    else:
      out[stem] = path
  return out


def _problem(path, reason, detail):
  return {'file': path, 'reason': reason, 'detail': detail, 'action': 'skipped'}


def pair_folders(image_dir: str, alpha_dir: str, kind: str, id_prefix: str = ''
                 ) -> tuple[list[Source], list[dict]]:
  """Sources from two folders matched by stem, sorted by id."""
  problems = []
  images = _by_stem(_files(image_dir), problems)
  alphas = _by_stem(_files(alpha_dir), problems)
  for stem in sorted(set(images) - set(alphas)):
    problems.append(_problem(images[stem], 'missing_pair', f'no alpha {stem}.* in {alpha_dir}'))
  for stem in sorted(set(alphas) - set(images)):
    problems.append(_problem(alphas[stem], 'missing_pair', f'no image {stem}.* in {image_dir}'))
  sources = [Source(id=id_prefix + stem, kind=kind, image=images[stem], alpha=alphas[stem])
             for stem in sorted(set(images) & set(alphas))]
  return sources, problems


def _expand(root: str, image_rel: str, alpha_rel: str) -> list[tuple[str, str, str]]:
  """(image dir, alpha dir, id prefix) for a possibly globbed pair of folders."""
  if '*' not in image_rel:
    return [(os.path.join(root, image_rel), os.path.join(root, alpha_rel), '')]
  pattern_parts = image_rel.split('/')
  star = pattern_parts.index('*')
  out = []
  parent = os.path.join(root, *pattern_parts[:star])
  matches = ([os.path.join(parent, name) for name in fileio.listdir(parent)
              if not name.startswith('.')] if fileio.isdir(parent) else [])
  for match in sorted(matches):
    if fileio.isdir(match):
      name = os.path.basename(match)
      out.append((os.path.join(root, image_rel.replace('*', name, 1)),
                  os.path.join(root, alpha_rel.replace('*', name, 1)), name + '/'))
  if not out:
    raise FileNotFoundError(f'{os.path.join(root, image_rel)}: no folder matches')
  return out


def split_of(source_id: str, val_fraction: float, test_fraction: float) -> str:
  """Stable train/validation/test assignment by a hash of the id."""
  value = int(hashlib.sha1(source_id.encode()).hexdigest()[:8], 16) / 2**32
  if value < test_fraction:
    return 'test'
  return 'validation' if value < test_fraction + val_fraction else 'train'


def list_sources(layout: str, root: str | None = None, image_dir: str | None = None,
                 fg_dir: str | None = None, alpha_dir: str | None = None,
                 val_fraction: float = 0.0, test_fraction: float = 0.0) -> Listing:
  """Sources per split for `layout`; `val/test_fraction` of train move by hash."""
  problems: list[dict] = []
  per_split: dict[str, list[Source]] = {}
  if layout in LAYOUTS:
    if not root:
      raise ValueError(f'Layout {layout!r} needs --root (the folder the set unpacks to)')
    kind, splits = LAYOUTS[layout]
    for split, pairs in splits.items():
      for image_rel, alpha_rel in pairs:
        for image, alpha, prefix in _expand(root, image_rel, alpha_rel):
          sources, found = pair_folders(image, alpha, kind, prefix)
          per_split.setdefault(split, []).extend(sources)
          problems.extend(dict(p, split=split) for p in found)
  elif layout in GENERIC:
    images = fg_dir if layout == 'compose' else image_dir
    if not images or not alpha_dir:
      flag = '--fg' if layout == 'compose' else '--image'
      second = '--mask' if layout == 'autolabel' else '--alpha'
      raise ValueError(f'Layout {layout!r} needs {flag} DIR and {second} DIR')
    sources, problems = pair_folders(images, alpha_dir, layout)
    per_split['train'] = sources
  else:
    raise ValueError(f'Unknown layout {layout!r}; known: {list(ALL_LAYOUTS)}')
  if val_fraction or test_fraction:
    carved: dict[str, list[Source]] = {}
    for source in per_split.pop('train', []):
      carved.setdefault(split_of(source.id, val_fraction, test_fraction), []).append(source)
    for split, sources in carved.items():
      per_split.setdefault(split, []).extend(sources)
  for split, sources in per_split.items():
    ids = [s.id for s in sources]
    if len(ids) != len(set(ids)):
      raise ValueError(f'Split {split!r} has repeated ids; rename the files')
    sources.sort(key=lambda s: s.id)
  return Listing({k: v for k, v in per_split.items() if v}, problems)


def list_backgrounds(folder: str) -> tuple[list[str], list[dict]]:
  """Image files under `folder` (recursive, sorted); others are report lines."""
  if not fileio.isdir(folder):
    raise FileNotFoundError(f'{folder}: no such background folder')
  paths, problems = [], []
  for directory, subdirs, names in fileio.walk(folder):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith('.'))
    for name in sorted(names):
      path = os.path.join(directory, name)
      if name.startswith('.'):
        continue
      if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        paths.append(path)
      else:
        problems.append(_problem(path, 'not_an_image', 'background folder file with a '
                                 'non-image extension'))
  if not paths:
    raise FileNotFoundError(f'{folder}: no background images')
  return sorted(paths), problems


def background_split(path: str, eval_fraction: float) -> str:
  """'train' or 'eval' for a background file, by the stable hash of its file
  name (as `split_of`): `eval_fraction` of the names go to 'eval'."""
  name = os.path.basename(path)
  value = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32
  return 'eval' if value < eval_fraction else 'train'


def drop_small_backgrounds(paths: list[str], min_long_side: int, group: str
                           ) -> tuple[list[str], list[dict]]:
  """(backgrounds whose long side is >= `min_long_side` px, report lines of
  the others). Sizes come from the file headers (nothing is decoded); a file
  whose header cannot be read is kept here and reported when it is used.

  Why: a small background upscaled under a sharp photo is blurrier than the
  subject, and a model learns 'sharp means foreground' from it.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if min_long_side <= 0:
    return list(paths), []
  kept, problems = [], []
  for path in paths:
    try:
      with contextlib.ExitStack() as stack:
        source = (stack.enter_context(epath.Path(path).open('rb')) if fileio.is_uri(path)
                  else path)
        width, height = stack.enter_context(Image.open(source)).size
    except Exception:  # pylint: disable=broad-except  # decoded (and reported) later
      kept.append(path)
      continue
    if max(width, height) < min_long_side:
      problems.append({'file': path, 'reason': 'bg_too_small',
                       'detail': f'long side {max(width, height)} px < min_bg_side '
                                 f'{min_long_side} ({width}x{height})',
                       'action': 'dropped', 'split': group})
    else:
      kept.append(path)
  return kept, problems
