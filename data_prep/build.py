r"""Builds a data set as TFDS array_record shards under --data_dir.

  python -m data_prep.build synthetic_portraits --data_dir DIR [--config demo] \
      [--num_train N --num_validation N --num_test N --image_size S --seed S \
       --image_format jpeg|png --jpeg_quality Q]

The data land in `DIR/<dataset>/<config>/<version>/`; read them with
`tfds.data_source('<dataset>/<config>', data_dir=DIR)` (after importing the
builder module) or `tfds.builder_from_directory(path).as_data_source()`.
Building an existing data set is a no-op. More builders (real matting sets) are
added as entries of `_BUILDERS`.
"""
from absl import app
from absl import flags
from absl import logging

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


# name -> function(data_dir, config_name) -> (tfds name, written directory).
_BUILDERS = {
    'synthetic_portraits': _build_synthetic_portraits,
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
