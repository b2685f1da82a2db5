r"""TFDS builder `matting_sets`: public matting sets and your own folders as shards.

  python -m data_prep.build matting_sets --data_dir DIR --layout p3m10k --root P3M-10k
  python -m data_prep.build matting_sets --data_dir DIR --layout compose \
      --fg FG_DIR --alpha ALPHA_DIR --bg BG_DIR --num_bg 4 --workers 2

or `build_matting_set(DIR, 'p3m10k', root=...)`. Layouts: see `layouts.py` and
the README's trees. Records carry what `bgmat/input_pipeline.py` reads, with
the synthetic set's names and dtypes and any size: image, fg, bg (H, W, 3)
uint8 (jpeg or png), alpha (H, W, 1) uint8 png, name. Natural photos keep the
photo as `image` and get estimated fg AND bg (so training can re-composite);
foregrounds are re-estimated (no halo of their old background) and composited
onto `num_bg` backgrounds each, image = round(alpha fg + (1 - alpha) bg).
Layout `autolabel` (photos + coarse binary masks): each photo is labelled by
data_prep.autolabel, filtered by data_prep.quality including the label
confidence (always), kept on its own background and composited onto `num_bg`
backgrounds; backgrounds are disjoint between train and the other splits (by a
hash of the file name unless `eval_bg_dir` is given) and those with a long side
under `min_bg_side` are dropped (report reason 'bg_too_small').

Decoding, estimation and encoding run in a process pool with ordered results,
every random choice drawn from (seed, split, index): 1 and N workers write
byte-identical shards. With Beam options (`--beam`, `build_matting_set(...,
beam_options=...)`) the same per-source functions run as an Apache Beam
pipeline instead (data_prep/beam_pipeline.py), on the local DirectRunner or on
Dataflow / Flink / Spark, and write the same records and report. Bad files never stop a build; each is a line of
`build_report.jsonl` in the data set's directory (see `report.py`). TFDS writes
into an `incomplete.*` directory renamed when done, so readers never see a
half-written set. The config name, `<layout>_<hash>` unless --name is given,
changes with every setting that changes the data (paths, seed, formats, ...).
"""

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re

from etils import epath
import tensorflow_datasets as tfds
import tqdm

from data_prep import compose
from data_prep import fileio
from data_prep import layouts
from data_prep import report as report_lib

REPORT_NAME = 'build_report.jsonl'
_DATA_FIELDS = ('layout', 'root', 'image_dir', 'fg_dir', 'alpha_dir', 'bg_dir', 'eval_bg_dir',
                'num_bg', 'eval_num_bg', 'seed', 'image_format', 'jpeg_quality', 'max_side',
                'alpha_mismatch', 'bg_policy', 'fg_method', 'val_fraction', 'test_fraction',
                'max_pixels', 'quality_filter', 'trimap_fraction', 'label_max_side',
                'min_bg_side')
# Fields added after the first release: in the name's hash only when not at their
# default, so the names of sets built before them do not change.
_LATER_FIELDS = {'trimap_fraction': 0.05, 'label_max_side': 0, 'min_bg_side': 0}
_PATH_FIELDS = ('root', 'image_dir', 'fg_dir', 'alpha_dir', 'bg_dir', 'eval_bg_dir')
# The autolabel layout always filters (its label confidence must be checked) and
# drops backgrounds with a long side under this many pixels unless told otherwise.
AUTOLABEL_MIN_BG_SIDE = 480
_NAME_RE = re.compile(r'^[A-Za-z0-9_][A-Za-z0-9_.+-]*$')


@dataclasses.dataclass(eq=False)
class MattingSetsConfig(tfds.core.BuilderConfig):
  """Where the files are and how to turn them into records (all change the data)."""
  layout: str = 'natural'
  root: str = ''
  image_dir: str = ''
  fg_dir: str = ''
  alpha_dir: str = ''
  bg_dir: str = ''  # backgrounds of the train split (compose layouts)
  eval_bg_dir: str = ''  # of the other splits; default: bg_dir
  num_bg: int = 1  # composites per foreground, train split
  eval_num_bg: int = 1  # other splits
  seed: int = 0
  image_format: str = 'jpeg'
  jpeg_quality: int = 95
  max_side: int = 0
  alpha_mismatch: str = 'resize'
  bg_policy: str = 'cover'
  fg_method: str = 'multilevel'
  val_fraction: float = 0.0
  test_fraction: float = 0.0
  max_pixels: int = compose.MAX_PIXELS
  quality_filter: str = ''  # JSON of quality.Thresholds fields; '' = no filter
  # autolabel layout: unknown band radius / short side, closed-form solve side
  # (0: the record size), and backgrounds with a shorter long side are dropped.
  trimap_fraction: float = 0.05  # autolabel.DEFAULT_TRIMAP_FRACTION
  label_max_side: int = 0
  min_bg_side: int = 0

  def settings(self) -> compose.Settings:
    return compose.Settings(
        seed=self.seed, image_format=self.image_format, jpeg_quality=self.jpeg_quality,
        max_side=self.max_side, alpha_mismatch=self.alpha_mismatch,
        bg_policy=self.bg_policy, fg_method=self.fg_method, max_pixels=self.max_pixels,
        num_bg=(('train', self.num_bg), ('validation', self.eval_num_bg),
                ('test', self.eval_num_bg)),
        measure_quality=bool(self.quality_filter),
        trimap_fraction=self.trimap_fraction, label_max_side=self.label_max_side)


def make_config(layout: str, name: str | None = None, **fields) -> MattingSetsConfig:
  """A config with absolute paths, checked, named `<layout>_<hash of all fields>`.

  Args:
    layout: one of `layouts.ALL_LAYOUTS`.
    name: config name to use instead of the derived one.
    **fields: `MattingSetsConfig` fields; None values are ignored (unset flags).
      `quality_filter` may be a `quality.Thresholds` (or its dict).
  """
  unknown = set(fields) - set(_DATA_FIELDS)
  if unknown:
    raise ValueError(f'Unknown fields {sorted(unknown)}; known: {list(_DATA_FIELDS)}')
  values = {k: v for k, v in fields.items() if v is not None}
  values['layout'] = layout
  for key in _PATH_FIELDS:
    if values.get(key):
      values[key] = fileio.absolute(values[key])
  if layout == 'autolabel':
    if not values.get('quality_filter'):
      from data_prep import quality  # pylint: disable=g-import-not-at-top
      values['quality_filter'] = quality.Thresholds()
    values.setdefault('min_bg_side', AUTOLABEL_MIN_BG_SIDE)
  thresholds = values.get('quality_filter')
  if thresholds and not isinstance(thresholds, str):
    as_dict = thresholds if isinstance(thresholds, dict) else dataclasses.asdict(thresholds)
    values['quality_filter'] = json.dumps(as_dict, sort_keys=True)
  config = MattingSetsConfig(name='unnamed', **values)
  _check(config)
  hashed = {k: getattr(config, k) for k in _DATA_FIELDS
            if k not in _LATER_FIELDS or getattr(config, k) != _LATER_FIELDS[k]}
  digest = hashlib.sha1(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:10]
  config_name = name or f'{layout}_{digest}'
  if not _NAME_RE.match(config_name):
    raise ValueError(f'Invalid data set name {config_name!r}: use letters, digits, _ . + -')
  return dataclasses.replace(
      config, name=config_name,
      description='Settings: ' + json.dumps({k: getattr(config, k) for k in _DATA_FIELDS},
                                            sort_keys=True))


def _check(config: MattingSetsConfig) -> None:
  choices = {'layout': layouts.ALL_LAYOUTS, 'image_format': ('jpeg', 'png'),
             'alpha_mismatch': compose.ALPHA_MISMATCH, 'bg_policy': compose.BG_POLICIES,
             'fg_method': compose.FG_METHODS}
  for key, known in choices.items():
    if getattr(config, key) not in known:
      raise ValueError(f'{key} must be one of {list(known)}, got {getattr(config, key)!r}')
  composes = config.layout in ('compose', 'comp1k', 'd646', 'autolabel')
  if composes and not config.bg_dir:
    raise ValueError(f'Layout {config.layout!r} composites: it needs --bg DIR')
  if config.num_bg < 1 or config.eval_num_bg < 1 or config.max_side < 0:
    raise ValueError('num_bg and eval_num_bg must be >= 1 and max_side >= 0')
  if not 0 < config.trimap_fraction < 0.5:
    raise ValueError(f'trimap_fraction must be in (0, 0.5), got {config.trimap_fraction}')
  if config.label_max_side < 0 or config.min_bg_side < 0:
    raise ValueError('label_max_side and min_bg_side must be >= 0')
  if not (0 <= config.val_fraction and 0 <= config.test_fraction
          and config.val_fraction + config.test_fraction < 1):
    raise ValueError('val_fraction and test_fraction must be >= 0 and sum to less than 1')
  if not 1 <= config.jpeg_quality <= 100:
    raise ValueError(f'jpeg_quality must be in [1, 100], got {config.jpeg_quality}')


class MattingSets(tfds.core.GeneratorBasedBuilder):
  """Matting sets from folders on disk: photos or composites with alpha, fg and bg."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = []  # every build makes its own config (paths are part of it)
  code_path = epath.Path(__file__)

  def __init__(self, *, num_workers: int = 1, report_path: str | None = None,
               progress: bool = True, file_format=None, **kwargs):
    # array_record gives the random access that tfds.data_source needs.
    super().__init__(file_format=file_format or 'array_record', **kwargs)
    self._num_workers = max(1, int(num_workers))
    self._report_path = report_path
    self._progress = progress
    self._pool = None
    self._beam = False  # set per build from the download config
    self._split_order: list[str] = []
    self.report = report_lib.Report()
    # Beam builds: {metric name: value} of the finished pipeline (see beam_pipeline).
    self.beam_metrics: dict[str, float] = {}

  def _info(self):
    fmt = self.builder_config.image_format
    rgb = dict(shape=(None, None, 3), encoding_format=fmt)
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f'Matting set from files on disk, layout {self.builder_config.layout!r}. '
            'Natural photos: image is the photo; fg and bg are estimated from it and '
            'its alpha. Composites: fg is estimated from the released foreground and '
            'alpha, image = round(alpha * fg + (1 - alpha) * bg). '
            + self.builder_config.description),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(**rgb),
            'alpha': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
            'fg': tfds.features.Image(**rgb),
            'bg': tfds.features.Image(**rgb),
            'name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'alpha'),
        disable_shuffling=True,  # keep the sorted source order
    )

  def download_and_prepare(self, *args, **kwargs):
    """As TFDS's; on failure the report goes beside the (absent) data set."""
    final_dir = self.data_dir
    try:
      super().download_and_prepare(*args, **kwargs)
    except BaseException:
      path = self._report_path or os.path.join(os.path.dirname(final_dir),
                                               'build_report.failed.jsonl')
      self.report.write(path)
      raise

  def _download_and_prepare(self, dl_manager, download_config):
    self._beam = (download_config.beam_runner is not None
                  or download_config.beam_options is not None)
    try:
      super()._download_and_prepare(dl_manager, download_config)
    except BaseException:
      if self._beam:  # what the pipeline's review steps wrote before the failure
        self._merge_beam_parts(must_exist=False)
      raise
    finally:
      if self._pool is not None:
        self._pool.terminate()
        self._pool.join()
        self._pool = None
    if self._beam:
      self._merge_beam_parts(must_exist=True)
    # Inside TFDS's incomplete.* directory: renamed together with the shards.
    self.report.write(os.path.join(self.data_dir, REPORT_NAME))
    if self._report_path:
      self.report.write(self._report_path)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    config = self.builder_config
    listing = layouts.list_sources(
        config.layout, root=config.root, image_dir=config.image_dir, fg_dir=config.fg_dir,
        alpha_dir=config.alpha_dir, val_fraction=config.val_fraction,
        test_fraction=config.test_fraction)
    self.report.extend(listing.problems)
    backgrounds = {}
    if config.bg_dir and config.layout == 'autolabel':
      backgrounds = self._autolabel_backgrounds(listing.sources)
    elif config.bg_dir:
      for split in listing.sources:
        folder = config.bg_dir if split == 'train' else (config.eval_bg_dir or config.bg_dir)
        paths, problems = layouts.list_backgrounds(folder)
        self.report.extend(problems)
        kept, dropped = layouts.drop_small_backgrounds(paths, config.min_bg_side, split)
        self.report.extend(dropped)
        backgrounds[split] = kept
    settings = config.settings()
    self._split_order = list(listing.sources)
    if self._beam:
      from data_prep import beam_pipeline  # pylint: disable=g-import-not-at-top
      return beam_pipeline.split_transforms(
          self._beam_dir(), listing.sources, backgrounds, settings, config.quality_filter)
    if self._num_workers > 1:
      # spawn: the parent has JAX/TFDS threads running, which fork would copy.
      context = multiprocessing.get_context('spawn')
      self._pool = context.Pool(self._num_workers, initializer=compose.init_worker,
                                initargs=(settings, backgrounds))
    else:
      compose.init_worker(settings, backgrounds)
    return {split: self._generate_examples(split, sources)
            for split, sources in listing.sources.items()}

  def _autolabel_backgrounds(self, splits) -> dict[str, list[str]]:
    """Backgrounds per split, disjoint between train and the other splits:
    --bg for train and --eval_bg for the others, or, without --eval_bg, --bg
    split by the stable hash of each file name (val_fraction + test_fraction of
    them held out). Backgrounds smaller than min_bg_side are dropped first."""
    config = self.builder_config
    groups = {}
    if config.eval_bg_dir:
      for group, folder in (('train', config.bg_dir), ('eval', config.eval_bg_dir)):
        paths, problems = layouts.list_backgrounds(folder)
        self.report.extend(problems)
        groups[group] = paths
    else:
      paths, problems = layouts.list_backgrounds(config.bg_dir)
      self.report.extend(problems)
      eval_fraction = config.val_fraction + config.test_fraction
      for path in paths:
        groups.setdefault(layouts.background_split(path, eval_fraction), []).append(path)
    out = {}
    for group in ('train', 'eval'):
      kept, dropped = layouts.drop_small_backgrounds(
          groups.get(group, []), config.min_bg_side,
          'train' if group == 'train' else 'validation+test')
      self.report.extend(dropped)
      groups[group] = kept
    for split in splits:
      kept = groups['train' if split == 'train' else 'eval']
      if not kept:
        raise ValueError(f'Split {split!r}: no background is left for it (after dropping '
                         f'those under min_bg_side {config.min_bg_side} px); give more '
                         'backgrounds, --eval_bg, or a lower --min_bg_side')
      out[split] = kept
    return out

  def _beam_dir(self) -> str:
    """Beam's work files: inside TFDS's incomplete.* directory while building."""
    return fileio.join(os.fspath(self.data_dir), '.beam')

  def _merge_beam_parts(self, must_exist: bool) -> None:
    """Adds each split's report part (written by the pipeline) to `self.report`,
    in split order, then removes the work files."""
    from data_prep import beam_pipeline  # pylint: disable=g-import-not-at-top
    for split in self._split_order:
      part = beam_pipeline.read_report_part(self._beam_dir(), split, must_exist)
      if part is not None:
        self.report.extend(part['entries'])
        self.report.examples[split] = part['count']
    fileio.remove_tree(self._beam_dir())

  def _process_pipeline_result(self, pipeline_result):
    from data_prep import beam_pipeline  # pylint: disable=g-import-not-at-top
    self.beam_metrics = beam_pipeline.metrics_of(pipeline_result)
    title = f'{self.name}/{self.builder_config.name}'
    print(beam_pipeline.format_metrics(self.beam_metrics, title))

  def _generate_examples(self, split, sources):
    config = self.builder_config
    quality_filter = make_quality_filter(config.quality_filter)
    tasks = [(split, index, source) for index, source in enumerate(sources)]
    if self._pool is not None:
      results = self._pool.imap(compose.make_records, tasks, chunksize=2)
    else:
      results = map(compose.make_records, tasks)
    count = 0
    bar = tqdm.tqdm(total=len(tasks), unit='img', desc=f'{config.name} {split}',
                    disable=not self._progress, smoothing=0.1)
    with contextlib.closing(bar):
      for source, result in zip(sources, results):
        bar.update(1)
        if not review_source(split, source, result, quality_filter, self.report):
          continue
        for record in result['records']:
          yield f'{count:09d}', record
          count += 1
    check_split_count(split, count, len(sources))
    self.report.examples[split] = count


def make_quality_filter(thresholds_json: str):
  """quality.QualityFilter of a config's `quality_filter` JSON, or None for ''."""
  if not thresholds_json:
    return None
  from data_prep import quality  # pylint: disable=g-import-not-at-top
  return quality.QualityFilter(quality.Thresholds(**json.loads(thresholds_json)))


def review_source(split: str, source: compose.Source, result: dict, quality_filter,
                  report: report_lib.Report) -> bool:
  """Whether the records of one source go into the set; adds its report lines.

  Call in source order (the quality filter's duplicate check is stateful); the
  process pool and the Beam pipeline both do. `result` is `compose.records_of`'s
  ('records' may be absent).
  """
  report.extend(dict(note, split=split) for note in result['notes'])
  if result['error'] is not None:
    report.add(**result['error'], split=split)
    return False
  if quality_filter is not None:
    reason = quality_filter.decide(source.id, result['stats'])
    if reason is not None:
      report.add(source.image, 'quality', reason, action='dropped', split=split)
      return False
  return True


def check_split_count(split: str, count: int, num_sources: int) -> None:
  """Raises ValueError when a split got no records."""
  if not count:
    raise ValueError(f'Split {split!r}: none of its {num_sources} sources could be used; '
                     'see the build report')


def no_download_config():
  """Download config that never looks for prepared copies on GCS."""
  return tfds.download.DownloadConfig(try_download_gcs=False)


def build_matting_set(data_dir: str, layout: str, *, name: str | None = None,
                      num_workers: int = 1, report_path: str | None = None,
                      progress: bool = True, beam_options=None,
                      **fields) -> tuple[str, str]:
  """Builds a matting set (no-op if present).

  Args:
    data_dir: TFDS data dir (a local path or a URI such as gs://bucket/data).
    layout: one of `layouts.ALL_LAYOUTS`.
    name: config name instead of `<layout>_<hash>`.
    num_workers: processes of the single-machine path.
    report_path: also write the report here.
    progress: show progress bars (single-machine path).
    beam_options: None for the single-machine path; else build with Apache Beam
      under these pipeline options: 'key=value,...' (as TFDS's
      --beam_pipeline_options), a list of flags ['--runner=DataflowRunner', ...]
      or a PipelineOptions. '' runs the local DirectRunner with its defaults.
    **fields: `MattingSetsConfig` fields (see `make_config`).

  Returns:
    (name for `tfds.data_source(name, data_dir=data_dir)`, e.g.
    'matting_sets/p3m10k_0123456789', the directory with the shards and the report).
  """
  config = make_config(layout, name=name, **fields)
  builder = MattingSets(data_dir=data_dir, config=config, num_workers=num_workers,
                        report_path=report_path, progress=progress)
  if not builder.is_prepared():
    if beam_options is None:
      download_config = no_download_config()
    else:
      from data_prep import beam_pipeline  # pylint: disable=g-import-not-at-top
      download_config = beam_pipeline.download_config(beam_options)
    builder.download_and_prepare(download_config=download_config)
  return f'{builder.name}/{config.name}', os.fspath(builder.data_dir)
