"""TFDS builder `synthetic_portraits`: procedural portraits with a soft alpha.

The embedded default data set: needs no download and no TensorFlow (images are
encoded with PIL here and handed to TFDS as bytes). Build it with

  python -m data_prep.build synthetic_portraits --data_dir DIR --config demo

or `build_synthetic(DIR, 'demo', image_size=...)`, which writes

  DIR/synthetic_portraits/<config>/<version>/
      dataset_info.json, features.json,
      synthetic_portraits-{train,validation,test}.array_record-000NN-of-000MM

Named configs: `tiny` (64 px, 16/4/4, tests), `demo` (128 px, 400/50/50, CPU
demo), `default` (256 px, 5000/500/500). Overriding any field gives a config
whose name spells out every field (`custom_128px_400-50-50_seed1_jpeg95`), so
two different settings never share a directory. TFDS writes into a temporary
`incomplete.*` sibling directory and renames it when done (and deletes it on
failure), so readers never see a half-written data set.

Read it with (record i of a split is example index i; arrays are uint8)

  import data_prep.synthetic_portraits  # registers the builder
  source = tfds.data_source('synthetic_portraits/demo', data_dir=DIR)
  source['train'][0]  # image (S, S, 3), alpha (S, S, 1), fg, bg, name

or, without this code, `tfds.builder_from_directory(path).as_data_source()`.
"""
import dataclasses
import io

from etils import epath
from PIL import Image
import tensorflow_datasets as tfds

from data_prep import synthetic

_IMAGE_FORMATS = ('jpeg', 'png')


@dataclasses.dataclass(eq=False)
class SyntheticPortraitsConfig(tfds.core.BuilderConfig):
  """What to generate; every field changes the data, so names must differ."""
  image_size: int = 256
  num_train: int = 5000
  num_validation: int = 500
  num_test: int = 500
  seed: int = 0
  image_format: str = 'jpeg'  # for image, fg and bg; alpha is always png
  jpeg_quality: int = 95

  @property
  def num_examples(self):
    return {'train': self.num_train, 'validation': self.num_validation,
            'test': self.num_test}


_GENERATION_FIELDS = ('image_size', 'num_train', 'num_validation', 'num_test',
                      'seed', 'image_format', 'jpeg_quality')
_CONFIGS = (
    SyntheticPortraitsConfig(
        name='tiny', description='64 px, 16/4/4 examples, for tests.',
        image_size=64, num_train=16, num_validation=4, num_test=4),
    SyntheticPortraitsConfig(
        name='demo', description='128 px, 400/50/50 examples, CPU demo.',
        image_size=128, num_train=400, num_validation=50, num_test=50),
    SyntheticPortraitsConfig(
        name='default', description='256 px, 5000/500/500 examples.'),
)


def _config_name(fields):
  """Canonical name for a custom config, spelling out every generation field."""
  quality = fields['jpeg_quality'] if fields['image_format'] == 'jpeg' else ''
  return (f"custom_{fields['image_size']}px_{fields['num_train']}-"
          f"{fields['num_validation']}-{fields['num_test']}_seed"
          f"{fields['seed']}_{fields['image_format']}{quality}")


def make_config(config_name='demo', **overrides):
  """Named config, or a uniquely named custom one if `overrides` change it.

  Args:
    config_name: one of the named configs (`tiny`, `demo`, `default`).
    **overrides: generation fields (`image_size`, `num_train`, ...); None values
      are ignored, so CLI flags can be passed through unchanged.

  Returns:
    A `SyntheticPortraitsConfig`.
  """
  configs = {config.name: config for config in _CONFIGS}
  if config_name not in configs:
    raise ValueError(f'Unknown config {config_name!r}; known: {list(configs)}')
  unknown = set(overrides) - set(_GENERATION_FIELDS)
  if unknown:
    raise ValueError(f'Unknown fields {sorted(unknown)}; known: '
                     f'{list(_GENERATION_FIELDS)}')
  base = configs[config_name]
  fields = {name: getattr(base, name) for name in _GENERATION_FIELDS}
  fields.update({k: v for k, v in overrides.items() if v is not None})
  if fields['image_format'] not in _IMAGE_FORMATS:
    raise ValueError(f"image_format must be one of {_IMAGE_FORMATS}, got "
                     f"{fields['image_format']!r}")
  if fields['image_size'] < 16 or min(
      fields[f'num_{split}'] for split in synthetic.SPLIT_IDS) < 0:
    raise ValueError(f'Invalid sizes or counts: {fields}')
  # A named config that already matches is reused, so its directory is shared.
  for config in _CONFIGS:
    if all(getattr(config, k) == v for k, v in fields.items()):
      return config
  return SyntheticPortraitsConfig(
      name=_config_name(fields), description=f'Custom: {fields}', **fields)


def encode_image(array, image_format, jpeg_quality=95):
  """PIL-encodes a uint8 (H, W, C) array (C = 1 or 3) to jpeg or png bytes."""
  image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
  buffer = io.BytesIO()
  if image_format == 'jpeg':
    # 4:4:4 chroma keeps colour edges sharp at the matte boundary.
    image.save(buffer, format='JPEG', quality=jpeg_quality, subsampling=0)
  else:
    image.save(buffer, format='PNG', compress_level=3)
  return buffer.getvalue()


def make_record(index, split, config):
  """Encoded TFDS record for example `index` of `split`: pure in its inputs."""
  example = synthetic.generate_example(index, split, config.seed,
                                       config.image_size)
  fmt, quality = config.image_format, config.jpeg_quality
  return {
      'image': encode_image(example['image'], fmt, quality),
      'alpha': encode_image(example['alpha'][..., None], 'png'),
      'fg': encode_image(example['fg'], fmt, quality),
      'bg': encode_image(example['bg'], fmt, quality),
      'name': example['name'],
  }


class SyntheticPortraits(tfds.core.GeneratorBasedBuilder):
  """Head-and-shoulders portraits with hair strands, on varied backgrounds."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = list(_CONFIGS)
  DEFAULT_CONFIG_NAME = 'default'
  # TFDS 4.9.10 derives this through the `importlib_resources` backport, which
  # it only declares for Python < 3.9; a plain path avoids that import.
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format=None, **kwargs):
    # array_record gives the random access that tfds.data_source needs.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self):
    size = self.builder_config.image_size
    fmt = self.builder_config.image_format
    rgb = dict(shape=(size, size, 3), encoding_format=fmt)
    photos = '; '.join(f'{split}: {", ".join(names)}'
                       for split, names in synthetic.BACKGROUND_PHOTOS.items())
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            'Procedural head-and-shoulders portraits (hair of thin '
            'semi-transparent strands, textured clothing) with a true soft '
            'alpha, composited as image = round(alpha * fg + (1 - alpha) * '
            'bg). Backgrounds: procedural textures or crops of scikit-image '
            f'photos, disjoint per split ({photos}); photos of people are '
            f'never used ({", ".join(synthetic.HELD_OUT_PHOTOS)}). Record i '
            'of a split is example i, a pure function of (seed, split, i).'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(**rgb),
            'alpha': tfds.features.Image(shape=(size, size, 1),
                                         encoding_format='png'),
            'fg': tfds.features.Image(**rgb),
            'bg': tfds.features.Image(**rgb),
            'name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'alpha'),
        disable_shuffling=True,  # keep record i == example index i
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, count)
            for split, count in self.builder_config.num_examples.items()
            if count > 0}

  def _generate_examples(self, split, num_examples):
    for index in range(num_examples):
      record = make_record(index, split, self.builder_config)
      yield record['name'], record


def no_download_config():
  """Download config that never looks for prepared copies on GCS."""
  return tfds.download.DownloadConfig(try_download_gcs=False)


def build_synthetic(data_dir, config_name='demo', **overrides):
  """Builds `synthetic_portraits` (no-op if present); returns its TFDS name.

  Args:
    data_dir: TFDS data dir; the data go to
      `data_dir/synthetic_portraits/<config>/<version>/`.
    config_name: base named config (`tiny`, `demo`, `default`).
    **overrides: fields of `SyntheticPortraitsConfig` to change.

  Returns:
    Name for `tfds.data_source(name, data_dir=data_dir)`, e.g.
    'synthetic_portraits/demo'.
  """
  config = make_config(config_name, **overrides)
  builder = SyntheticPortraits(data_dir=data_dir, config=config)
  if not builder.is_prepared():
    builder.download_and_prepare(download_config=no_download_config())
  return f'{builder.name}/{config.name}'
