r"""Builds a data set as TFDS array_record shards under --data_dir.

  python -m data_prep.build synthetic_portraits --data_dir DIR [--config demo] \
      [--num_train N --num_validation N --num_test N --image_size S --seed S \
       --image_format jpeg|png --jpeg_quality Q]

The data land in `DIR/<dataset>/<config>/<version>/`; read them with
`tfds.data_source('<dataset>/<config>', data_dir=DIR)` (after importing the
builder module) or `tfds.builder_from_directory(path).as_data_source()`.
Building an existing data set is a no-op.

Real matting data (layouts: generic natural / compose, p3m10k, am2k, aim500,
ppm100, comp1k, d646; see data_prep/layouts.py and the README):

  python -m data_prep.build matting_sets --data_dir DIR --layout natural \
      --image PHOTOS --alpha MATTES [--val_fraction F --test_fraction F]
  python -m data_prep.build matting_sets --data_dir DIR --layout compose \
      --fg FG --alpha MATTES --bg BACKGROUNDS --num_bg N [--workers W]
  python -m data_prep.build matting_sets --data_dir DIR --layout p3m10k --root P3M-10k
  python -m data_prep.build matting_sets --data_dir DIR --layout autolabel \
      --image PHOTOS --mask MASKS --bg BACKGROUNDS --num_bg 2 --max_side 320 \
      --val_fraction 0.1 --test_fraction 0.1 [--min_confidence C --trimap_fraction F]

Each build writes `build_report.jsonl` (skipped / converted / dropped files)
beside its shards; `--filter` applies data_prep.quality's thresholds.

Any matting_sets build runs as an Apache Beam pipeline with `--beam` (needs the
`bgmat[beam]` extra; data_prep/beam_pipeline.py), same records and report:

  python -m data_prep.build matting_sets ... --beam \
      --beam_pipeline_options=direct_num_workers=2,direct_running_mode=multi_processing
  python -m data_prep.build matting_sets --data_dir gs://BUCKET/data ... --beam \
      --beam_pipeline_options=runner=DataflowRunner,project=P,region=R,...  (see notes/beam.md)
"""
from absl import app
from absl import flags
from absl import logging

from data_prep import compose
from data_prep import layouts
from data_prep import matting_sets
from data_prep import synthetic_portraits

# Python entry point for demos and tests (defines no flags).
build_synthetic = synthetic_portraits.build_synthetic

FLAGS = flags.FLAGS


def define_flags():
  """Defines the CLI flags; only when run as a script, so importing is safe."""
  flags.DEFINE_string('data_dir', None, 'TFDS data dir to write to.',
                      required=True)
  flags.DEFINE_string('config', 'demo', 'Named builder config to start from '
                      '(synthetic_portraits: tiny, demo, default).')
  flags.DEFINE_integer('num_train', None, 'Train examples.')
  flags.DEFINE_integer('num_validation', None, 'Validation examples.')
  flags.DEFINE_integer('num_test', None, 'Test examples.')
  flags.DEFINE_integer('image_size', None, 'Image side in pixels.')
  flags.DEFINE_integer('seed', None, 'Generation seed.')
  flags.DEFINE_enum('image_format', None, ['jpeg', 'png'],
                    'Encoding of image, fg and bg (alpha is always png).')
  flags.DEFINE_integer('jpeg_quality', None, 'JPEG quality.')
  # matting_sets
  flags.DEFINE_enum('layout', None, list(layouts.ALL_LAYOUTS),
                    'matting_sets: folder layout of the data.')
  flags.DEFINE_string('root', None, 'matting_sets: root folder of a released set.')
  flags.DEFINE_string('image', None, 'matting_sets natural: folder of photos.')
  flags.DEFINE_string('fg', None, 'matting_sets compose: folder of foregrounds.')
  flags.DEFINE_string('alpha', None, 'matting_sets: folder of alpha mattes (same stems).')
  flags.DEFINE_string('mask', None, 'matting_sets autolabel: folder of coarse binary masks '
                      '(same stems as --image).')
  flags.DEFINE_float('trimap_fraction', None, 'matting_sets autolabel: unknown band radius '
                     'as a fraction of the short side (data_prep.autolabel).')
  flags.DEFINE_integer('label_max_side', None, 'matting_sets autolabel: long side of the '
                       'closed-form solve (0: the record size).')
  flags.DEFINE_integer('min_bg_side', None, 'matting_sets: drop backgrounds whose long side '
                       'is below this (autolabel default '
                       f'{matting_sets.AUTOLABEL_MIN_BG_SIDE}, others 0).')
  flags.DEFINE_string('bg', None, 'matting_sets: backgrounds for the train split.')
  flags.DEFINE_string('eval_bg', None, 'matting_sets: backgrounds for the other splits '
                      '(default: --bg; separate folders keep test backgrounds unseen).')
  flags.DEFINE_integer('num_bg', None, 'matting_sets: composites per train foreground.')
  flags.DEFINE_integer('eval_num_bg', None, 'matting_sets: composites per other foreground.')
  flags.DEFINE_integer('max_side', None, 'matting_sets: downscale the long side to this '
                       '(0: keep sizes).')
  flags.DEFINE_enum('alpha_mismatch', None, list(compose.ALPHA_MISMATCH),
                    'matting_sets: alpha of another size but the same aspect: resize or '
                    'skip (another aspect is always skipped).')
  flags.DEFINE_enum('bg_policy', None, list(compose.BG_POLICIES),
                    'matting_sets: background fitting: cover + random crop, or stretch.')
  flags.DEFINE_enum('fg_method', None, list(compose.FG_METHODS),
                    'matting_sets: foreground (and background) colour estimation.')
  flags.DEFINE_float('val_fraction', None, 'matting_sets: share of train sources moved '
                     'to validation (stable hash of the file name).')
  flags.DEFINE_float('test_fraction', None, 'matting_sets: same, to test.')
  flags.DEFINE_integer('max_pixels', None, 'matting_sets: larger images are refused '
                       '(decompression bombs).')
  flags.DEFINE_string('name', None, 'matting_sets: config name (default: '
                      '<layout>_<hash of the settings>).')
  flags.DEFINE_integer('workers', 1, 'matting_sets: worker processes (same output for any).')
  flags.DEFINE_string('report', None, 'matting_sets: also write the report here.')
  flags.DEFINE_bool('filter', False, 'matting_sets: drop files that fail '
                    'data_prep.quality thresholds (their flags below).')
  flags.DEFINE_bool('beam', False, 'matting_sets: build with Apache Beam (the local '
                    'DirectRunner unless --beam_pipeline_options names another runner).')
  flags.DEFINE_string('beam_pipeline_options', '', 'matting_sets --beam: pipeline options '
                      'as key=value,key=value (e.g. direct_num_workers=2,'
                      'direct_running_mode=multi_processing, or runner=DataflowRunner,...).')
  quality = _quality_module()
  if quality is not None:
    quality.define_flags()


def _quality_module():
  """data_prep.quality (another part of issue 5), or None before it exists."""
  try:
    from data_prep import quality  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as e:
    if e.name != 'data_prep.quality':
      raise
    return None
  return quality


def _build_synthetic_portraits(data_dir, config_name):
  """Builds `synthetic_portraits` from flags; returns (name, directory)."""
  config = synthetic_portraits.make_config(
      config_name, image_size=FLAGS.image_size, num_train=FLAGS.num_train,
      num_validation=FLAGS.num_validation, num_test=FLAGS.num_test,
      seed=FLAGS.seed, image_format=FLAGS.image_format,
      jpeg_quality=FLAGS.jpeg_quality)
  builder = synthetic_portraits.SyntheticPortraits(data_dir=data_dir,
                                                   config=config)
  if builder.is_prepared():
    print(f'Already built, nothing to do: {builder.data_dir}')
  else:
    builder.download_and_prepare(
        download_config=synthetic_portraits.no_download_config())
  return f'{builder.name}/{config.name}', builder.data_dir


def _build_matting_sets(data_dir, config_name):
  """Builds `matting_sets` from flags; returns (name, directory)."""
  del config_name  # matting_sets names its config after its settings (or --name)
  if not FLAGS.layout:
    raise app.UsageError(f'matting_sets needs --layout, one of {list(layouts.ALL_LAYOUTS)}')
  thresholds = None
  if FLAGS.layout == 'autolabel' and FLAGS.alpha:
    raise app.UsageError('Layout autolabel takes the coarse masks as --mask DIR, not --alpha')
  if FLAGS.filter or FLAGS.layout == 'autolabel':  # autolabel always filters
    quality = _quality_module()
    if quality is None:
      raise app.UsageError('--filter needs data_prep/quality.py')
    thresholds = quality.thresholds_from_flags()
  if FLAGS.beam_pipeline_options and not FLAGS.beam:
    raise app.UsageError('--beam_pipeline_options needs --beam')
  try:
    name, directory = matting_sets.build_matting_set(
        data_dir, FLAGS.layout, name=FLAGS.name, num_workers=FLAGS.workers,
        report_path=FLAGS.report, root=FLAGS.root, image_dir=FLAGS.image,
        fg_dir=FLAGS.fg, alpha_dir=FLAGS.mask if FLAGS.layout == 'autolabel' else FLAGS.alpha,
        bg_dir=FLAGS.bg, eval_bg_dir=FLAGS.eval_bg,
        num_bg=FLAGS.num_bg, eval_num_bg=FLAGS.eval_num_bg, seed=FLAGS.seed,
        image_format=FLAGS.image_format, jpeg_quality=FLAGS.jpeg_quality,
        max_side=FLAGS.max_side, alpha_mismatch=FLAGS.alpha_mismatch,
        bg_policy=FLAGS.bg_policy, fg_method=FLAGS.fg_method,
        val_fraction=FLAGS.val_fraction, test_fraction=FLAGS.test_fraction,
        max_pixels=FLAGS.max_pixels, quality_filter=thresholds,
        trimap_fraction=FLAGS.trimap_fraction, label_max_side=FLAGS.label_max_side,
        min_bg_side=FLAGS.min_bg_side,
        beam_options=FLAGS.beam_pipeline_options if FLAGS.beam else None)
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from e
  print(f'Report: {directory}/{matting_sets.REPORT_NAME}')
  return name, directory


# name -> function(data_dir, config_name) -> (tfds name, written directory).
_BUILDERS = {
    'synthetic_portraits': _build_synthetic_portraits,
    'matting_sets': _build_matting_sets,
}


def get_builder(name):
  """The build function registered as `name`."""
  if name not in _BUILDERS:
    raise ValueError(f'Unknown data set {name!r}; known: {sorted(_BUILDERS)}')
  return _BUILDERS[name]


def main(argv):
  if len(argv) != 2:
    raise app.UsageError(
        f'Expected one data set name, one of {sorted(_BUILDERS)}; got '
        f'{argv[1:]}')
  try:
    build = get_builder(argv[1])
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  name, directory = build(FLAGS.data_dir, FLAGS.config)
  logging.info('Built %s in %s', name, directory)
  print(f'Data set {name!r} is in {directory}\n'
        f"Read it with tfds.data_source('{name}', data_dir='{FLAGS.data_dir}')")


if __name__ == '__main__':
  define_flags()
  app.run(main)
