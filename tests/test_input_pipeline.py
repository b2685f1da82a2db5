"""Input pipeline: determinism across worker counts, exact resume, contents."""

import numpy as np
import pytest

from bgmat import input_pipeline
import configs.preseg as preseg_configs
import configs.matting as matting_configs


def _config(tiny_data, workers=0, module=preseg_configs, arg='tiny'):
  config = module.get_config(arg)
  config.dataset, config.data_dir = tiny_data
  config.input.worker_count = workers
  return config


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batches_shapes_and_ranges(tiny_data):
  config = _config(tiny_data, module=matting_configs, arg='tiny,perturbed_gt')
  dataset = input_pipeline.create_train_dataset(
      config, process_index=0, process_count=1, per_process_batch=4)
  batch = next(iter(dataset))
  size = config.image_size
  assert batch['image'].shape == (4, size, size, 3)
  assert batch['alpha'].shape == batch['trimap'].shape == batch['prior'].shape == (4, size, size, 1)
  for key in ('image', 'alpha', 'fg', 'bg', 'prior'):
    assert batch[key].dtype == np.float32
    assert 0.0 <= batch[key].min() and batch[key].max() <= 1.0
  assert set(np.unique(batch['trimap'])) <= {0.0, 0.5, 1.0}
  # The composite is re-made from the parts, so it is exactly consistent.
  np.testing.assert_allclose(
      batch['image'], batch['alpha'] * batch['fg'] + (1 - batch['alpha']) * batch['bg'],
      atol=1e-6)


def test_train_image_size_sets_the_training_side_only(tiny_data):
  """train_image_size shapes the training examples; evaluation stays at
  image_size; 0 means image_size; a negative side is refused."""
  config = _config(tiny_data)
  config.train_image_size = config.image_size // 2
  batch = next(iter(input_pipeline.create_train_dataset(
      config, process_index=0, process_count=1, per_process_batch=2)))
  side = config.image_size // 2
  assert batch['image'].shape == (2, side, side, 3)
  assert batch['alpha'].shape == batch['trimap'].shape == (2, side, side, 1)
  evaluated = next(input_pipeline.eval_batches(
      config, 'validation', process_index=0, process_count=1, per_process_batch=2))
  assert evaluated['image'].shape[1:3] == (config.image_size, config.image_size)
  config.train_image_size = 0
  assert input_pipeline.train_image_size(config) == config.image_size
  config.train_image_size = -1
  with pytest.raises(ValueError, match='train_image_size'):
    input_pipeline.train_image_size(config)


def test_determinism_across_worker_counts(tiny_data):
  batches = []
  for workers in (0, 2):
    dataset = input_pipeline.create_train_dataset(
        _config(tiny_data, workers), process_index=0, process_count=1, per_process_batch=4)
    iterator = iter(dataset)
    batches.append(_take(iterator, 3))
    if hasattr(iterator, 'close'):
      iterator.close()
  _assert_batches_equal(*batches)


def test_process_shards_are_disjoint(tiny_data):
  config = _config(tiny_data)
  config.aug.recomposite_prob = 0.0
  config.aug.jitter = 0.0
  seen = []
  for index in range(2):
    dataset = input_pipeline.create_train_dataset(
        config, process_index=index, process_count=2, per_process_batch=8)
    seen.append(next(iter(dataset)))
  assert not np.array_equal(seen[0]['alpha'], seen[1]['alpha'])


def test_global_batches_do_not_depend_on_process_count(tiny_data):
  """Process p's batches are rows [p * P, (p + 1) * P) of the 1-process global
  batches (augmentation included), so multi-host training sees the same data."""
  config = _config(tiny_data)
  single = _take(iter(input_pipeline.create_train_dataset(
      config, process_index=0, process_count=1, per_process_batch=8)), 3)
  parts = [_take(iter(input_pipeline.create_train_dataset(
      config, process_index=p, process_count=2, per_process_batch=4)), 3) for p in range(2)]
  joined = [{k: np.concatenate([parts[0][b][k], parts[1][b][k]]) for k in single[b]}
            for b in range(3)]
  _assert_batches_equal(single, joined)


def test_eval_batches_do_not_depend_on_process_count(tiny_data):
  config = _config(tiny_data)
  single = list(input_pipeline.eval_batches(
      config, 'validation', process_index=0, process_count=1, per_process_batch=2))
  parts = [list(input_pipeline.eval_batches(
      config, 'validation', process_index=p, process_count=2, per_process_batch=1))
      for p in range(2)]
  assert len(single) == len(parts[0]) == len(parts[1]) == 2
  for b, batch in enumerate(single):
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([parts[0][b][key], parts[1][b][key]]), err_msg=key)


def _assert_resumes_exactly(config, count=3):
  """A fresh iterator given the state after 2 batches yields the next ones."""
  iterator = iter(input_pipeline.create_train_dataset(
      config, process_index=0, process_count=1, per_process_batch=4))
  _take(iterator, 2)
  state = iterator.get_state()
  expected = _take(iterator, count)
  fresh = iter(input_pipeline.create_train_dataset(
      config, process_index=0, process_count=1, per_process_batch=4))
  fresh.set_state(state)
  _assert_batches_equal(expected, _take(fresh, count))


def test_exact_resume_from_iterator_state(tiny_data):
  _assert_resumes_exactly(_config(tiny_data))


def test_eval_batches_pad_to_equal_counts(tiny_data):
  config = _config(tiny_data)
  # 4 validation examples, 3 per process, 2 processes: one batch each, padded.
  per_process = [list(input_pipeline.eval_batches(
      config, 'validation', process_index=i, process_count=2, per_process_batch=3))
      for i in range(2)]
  assert [len(b) for b in per_process] == [1, 1]
  valid = np.concatenate([b[0]['valid'] for b in per_process])
  assert valid.sum() == 4 and valid.shape == (6,)
  names = [n for b in per_process for n in b[0]['name'] if n]
  assert len(set(names)) == 4


def test_missing_dataset_names_the_fix(tmp_path):
  config = preseg_configs.get_config('tiny')
  config.data_dir = str(tmp_path)
  try:
    input_pipeline.open_source(config.dataset, 'train', config.data_dir)
  except FileNotFoundError as e:
    assert 'python -m data_prep.build' in str(e)
  else:
    raise AssertionError('expected FileNotFoundError')


def _record(height=30, width=40, seed=0):
  rng = np.random.default_rng(seed)
  alpha = np.zeros((height, width, 1), np.uint8)
  alpha[5:25, 10:30] = 255
  alpha[5:25, 9] = 128
  fg = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  bg = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # not fg/bg's composite
  return {'image': image, 'alpha': alpha, 'fg': fg, 'bg': bg, 'name': b'x'}


def test_augment_uses_the_photo_or_the_composite():
  record = _record()
  as_photo = input_pipeline.Augment(source=[record], image_size=16, jitter=0.0, flip=False,
                                    use_photo_prob=1.0, letterbox_prob=1.0)
  example = as_photo(record, np.random.default_rng(0))
  boxed, region = input_pipeline.letterbox(record['image'], 16)
  assert region == (12, 16)
  np.testing.assert_allclose(example['image'], boxed / 255.0, atol=1e-6)
  composite = input_pipeline.Augment(source=[record], image_size=16, jitter=0.0, flip=False,
                                     recomposite_prob=0.0, letterbox_prob=1.0)
  example = composite(record, np.random.default_rng(0))
  alpha = example['alpha']
  np.testing.assert_allclose(example['image'],
                             alpha * example['fg'] + (1 - alpha) * example['bg'], atol=1e-6)
  assert np.abs(example['image'] - boxed / 255.0).max() > 0.1


def test_augment_defaults_draw_nothing_extra():
  """Configs without the new options keep their exact example stream."""
  record = _record()
  base = input_pipeline.Augment(source=[record], image_size=16)
  same = input_pipeline.Augment(source=[record], image_size=16, use_photo_prob=0.0,
                                letterbox_prob=0.0, zoom_out_prob=0.0, zoom_out_scale=(0.1, 0.2),
                                grayscale_prob=0.0)
  a = base(record, np.random.default_rng(3))
  b = same(record, np.random.default_rng(3))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_grayscale_is_bt601_luma_and_keeps_the_composite():
  rgb = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.4, 0.6]]],
                 np.float32)
  gray = input_pipeline.to_grayscale(rgb)
  expected = np.array([0.299, 0.587, 0.114, 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6])
  np.testing.assert_allclose(gray, np.repeat(expected[None, :, None], 3, -1), atol=1e-6)
  record = _record()
  augment = input_pipeline.Augment(source=[record], image_size=16, recomposite_prob=0.0,
                                   grayscale_prob=1.0)
  example = augment(record, np.random.default_rng(0))
  for key in ('image', 'fg', 'bg'):
    np.testing.assert_array_equal(example[key][..., 0], example[key][..., 1])
    np.testing.assert_array_equal(example[key][..., 0], example[key][..., 2])
  alpha = example['alpha']
  np.testing.assert_allclose(example['image'],
                             alpha * example['fg'] + (1 - alpha) * example['bg'], atol=1e-5)
  # At probability 0.5 some examples of a colour record stay in colour.
  half = input_pipeline.Augment(source=[record], image_size=16, grayscale_prob=0.5)
  colour = [np.abs(np.diff(half(record, np.random.default_rng(seed))['image'], axis=-1)).max()
            > 0 for seed in range(16)]
  assert 0 < sum(colour) < 16


def test_prepare_letterboxes_at_the_photo_aspect():
  record = _record(30, 40)
  example = input_pipeline.Prepare(image_size=20)(record)
  assert example['image'].shape == (20, 20, 3)
  np.testing.assert_array_equal(example['region'], [15, 20])
  # Bottom rows are edge padding of the last photo row.
  np.testing.assert_array_equal(example['alpha'][15:], np.repeat(example['alpha'][14:15], 5, 0))


def test_zoom_out_places_a_smaller_letterbox_and_keeps_labels_aligned():
  record = _record(30, 40)
  # The photo carries its own mask, so any misalignment shows.
  record['image'] = np.repeat(record['alpha'], 3, axis=-1)
  boxed = input_pipeline.zoom_out(record['alpha'], 32, 16, 5, 9)
  inner = input_pipeline.letterbox(record['alpha'], 16)[0][:12]  # the 12 x 16 photo
  np.testing.assert_array_equal(boxed[5:17, 9:25], inner)
  # Edge padding around it: the rows above repeat its first row, etc.
  np.testing.assert_array_equal(boxed[:5, 9:25], np.repeat(inner[:1], 5, 0))
  np.testing.assert_array_equal(boxed[17:, 9:25], np.repeat(inner[-1:], 15, 0))
  np.testing.assert_array_equal(boxed[5:17, :9], np.repeat(inner[:, :1], 9, 1))
  np.testing.assert_array_equal(input_pipeline.zoom_out(record['alpha'], 16, 16, 0, 0),
                                input_pipeline.letterbox(record['alpha'], 16)[0])
  with pytest.raises(ValueError, match='leaves the 32 px canvas'):
    input_pipeline.zoom_out(record['alpha'], 32, 16, 21, 0)
  augment = input_pipeline.Augment(source=[record], image_size=32, jitter=0.0, flip=False,
                                   use_photo_prob=1.0, zoom_out_prob=1.0,
                                   zoom_out_scale=(0.25, 0.75))
  sizes = set()
  for seed in range(20):
    example = augment(record, np.random.default_rng(seed))
    np.testing.assert_allclose(example['image'], np.repeat(example['alpha'], 3, -1), atol=1e-6)
    # The person's box (alpha 1) shrinks with the zoom: 20 x 20 of a 30 x 40 record.
    rows = np.nonzero(example['alpha'][..., 0].max(axis=1) == 1.0)[0]
    sizes.add(len(rows))
  assert min(sizes) < max(sizes) and max(sizes) <= 0.75 * 32 * 20 / 40 + 1


def test_train_mix_draws_its_share_from_the_second_source(tiny_data):
  """train_mix.share of the examples come from the second source (here the
  validation split), the rest from config.dataset's train split; off by
  default; resumable; a share outside [0, 1] is refused."""
  config = _config(tiny_data)
  config.aug.letterbox_prob, config.aug.flip = 1.0, False  # alpha = the record's, letterboxed
  size = input_pipeline.train_image_size(config)

  def letterboxed(split):
    source = input_pipeline.open_source(config.dataset, split, config.data_dir)
    return [input_pipeline.letterbox(source[i]['alpha'], size)[0].astype(np.float32) / 255.0
            for i in range(len(source))]

  known = {'train': letterboxed('train'), 'validation': letterboxed('validation')}

  def origins(share, batches=6):
    config.train_mix.split, config.train_mix.share = 'validation', share
    iterator = iter(input_pipeline.create_train_dataset(
        config, process_index=0, process_count=1, per_process_batch=4))
    found = []
    for batch in _take(iterator, batches):
      for alpha in batch['alpha']:
        hits = [split for split, alphas in known.items()
                if any(np.array_equal(alpha, a) for a in alphas)]
        assert len(hits) == 1, hits
        found.append(hits[0])
    return found

  assert config.train_mix.share == 0.0
  assert set(origins(0.0)) == {'train'}
  assert set(origins(1.0)) == {'validation'}
  half = origins(0.5)
  assert half.count('validation') == half.count('train') == 12
  _assert_resumes_exactly(config, count=2)
  config.train_mix.share = 1.5
  with pytest.raises(ValueError, match='train_mix.share'):
    input_pipeline.create_train_dataset(config, process_index=0, process_count=1,
                                        per_process_batch=4)
