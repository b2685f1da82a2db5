"""Train steps: sharded == unsharded; end-to-end save / interrupt / resume."""

import os

import jax
import numpy as np
import pytest

from bgmat import checkpointing
from bgmat import input_pipeline
from bgmat import models
from bgmat import sharding
from bgmat import stages
from bgmat import train
from bgmat import writers
import configs.matting as matting_configs
import configs.preseg as preseg_configs


def _batch(config, tiny_data):
  config.dataset, config.data_dir = tiny_data
  dataset = input_pipeline.create_train_dataset(
      config, process_index=0, process_count=1, per_process_batch=config.batch_size)
  return next(iter(dataset))


def _run_step(config, batch, devices):
  """One jitted step over a mesh of `devices`; returns (state, metrics) on host."""
  mesh = sharding.create_mesh([('data', -1)], devices)
  stage = stages.get(config)
  rng = jax.random.key(0, impl=config.rng_impl)
  init_fn, _, shardings = train.sharded_init(mesh, stage, rng)
  state = jax.jit(init_fn, out_shardings=shardings)(rng)
  # No frozen stage 1 here: the matting configs use the perturbed-gt prior.
  jitted = jax.jit(stage.step, in_shardings=(shardings, sharding.batch_sharding(mesh), None, None),
                   out_shardings=(shardings, None))
  state, metrics = jitted(state, sharding.to_global(batch, mesh), rng, None)
  return sharding.to_host(state.to_dict()), sharding.to_host(metrics)


@pytest.mark.slow
@pytest.mark.parametrize('stage', ['preseg', 'matting'])
def test_sharded_step_equals_unsharded(stage, tiny_data):
  if stage == 'preseg':
    config = preseg_configs.get_config('tiny')
    # Dropout draws depend on the layout for non-partitionable RNGs: compare
    # the deterministic part of the step.
    config.model.kwargs.aspp_dropout = 0.0
  else:
    config = matting_configs.get_config('tiny,perturbed_gt')  # adversarial on
  batch = _batch(config, tiny_data)
  assert len(jax.devices()) == 4
  state_1, metrics_1 = _run_step(config, batch, jax.devices()[:1])
  state_4, metrics_4 = _run_step(config, batch, jax.devices())
  for key in metrics_1:
    np.testing.assert_allclose(metrics_1[key], metrics_4[key], rtol=2e-4, atol=1e-6,
                               err_msg=key)
  flat_1 = jax.tree_util.tree_leaves_with_path(state_1)
  flat_4 = jax.tree.leaves(state_4)
  for (path, a), b in zip(flat_1, flat_4):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5,
                               err_msg=jax.tree_util.keystr(path))
  if stage == 'matting':
    assert 'd_loss' in metrics_1 and np.isfinite(metrics_1['d_loss'])


def _tiny_preseg(tiny_data, **overrides):
  """The tiny stage-1 config (4 steps), as conftest.SharedRuns trains it: the
  same compiled step, read from the compilation cache if already built."""
  config = preseg_configs.get_config('tiny')
  config.dataset, config.data_dir = tiny_data
  for key, value in overrides.items():
    config[key] = value
  return config


def _train_losses(workdir):
  return [r['train/loss'] for r in writers.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
          if 'train/loss' in r]


@pytest.mark.slow
def test_interrupted_run_resumes_and_matches(tiny_data, tmp_path):
  full_dir, cut_dir = str(tmp_path / 'full'), str(tmp_path / 'cut')
  full = train.train_and_evaluate(_tiny_preseg(tiny_data), full_dir)
  # Interrupted after step 2 (checkpoint saved), then started again unchanged.
  assert train.train_and_evaluate(_tiny_preseg(tiny_data, stop_at_step=2), cut_dir) == {}
  assert _train_losses(cut_dir) and len(_train_losses(cut_dir)) == 1
  resumed = train.train_and_evaluate(_tiny_preseg(tiny_data), cut_dir)

  np.testing.assert_allclose(_train_losses(full_dir), _train_losses(cut_dir), rtol=1e-5)
  final_full = checkpointing.restore_state_only(full_dir)
  final_cut = checkpointing.restore_state_only(cut_dir)
  for a, b in zip(jax.tree.leaves(final_full), jax.tree.leaves(final_cut)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert full['validation'].keys() == resumed['validation'].keys()
  for key, value in full['test'].items():
    np.testing.assert_allclose(value, resumed['test'][key], rtol=1e-4, err_msg=key)
  assert os.path.exists(os.path.join(full_dir, 'eval', 'test_alpha_side_by_side.png'))


def test_init_from_converted_encoder(tmp_path):
  """config.init_from grafts converted encoder weights; the head stays as initialised."""
  from bgmat import convert  # pylint: disable=g-import-not-at-top
  config = preseg_configs.get_config('tiny')
  encoder = models.get_model('xception_tiny', num_classes=10)
  shapes = jax.eval_shape(lambda: encoder.init(
      jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32)))
  rng = np.random.default_rng(0)
  pretrained = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
  pretrained = jax.tree.map(np.asarray, dict(pretrained))
  convert.save_variables(pretrained, tmp_path / 'enc', meta={'arch': 'xception_tiny'})

  mesh = sharding.create_mesh([('data', -1)])
  key = jax.random.key(0, impl=config.rng_impl)
  init_fn, _, shardings = train.sharded_init(mesh, stages.get(config), key)
  state = jax.jit(init_fn, out_shardings=shardings)(key)
  grafted = train._init_encoder_from(state, str(tmp_path / 'enc'), shardings)  # pylint: disable=protected-access
  host = sharding.to_host(grafted.to_dict())
  for path, value in jax.tree_util.tree_leaves_with_path(pretrained['params']):
    if 'head' in jax.tree_util.keystr(path):
      continue
    target = host['params']['encoder']
    for key_entry in path:
      target = target[key_entry.key]
    np.testing.assert_array_equal(target, value)
  np.testing.assert_array_equal(host['params']['logits']['kernel'],
                                sharding.to_host(state.params)['logits']['kernel'])


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_state(tiny_data, tmp_path):
  """config.dtype='bfloat16': bf16 activations, float32 params / optimizer
  state, finite float32 losses."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  config = _tiny_preseg(tiny_data, dtype='bfloat16', num_train_steps=2, eval_test=False,
                        profile_steps=1)
  model = stages.get(config).model
  assert model.dtype == jnp.bfloat16
  results = train.train_and_evaluate(config, str(tmp_path))
  losses = _train_losses(str(tmp_path))
  assert len(losses) == 1 and all(np.isfinite(losses))
  assert all(np.isfinite(v) for v in results['validation'].values())
  # The Profile hook (profile_steps) wrote a trace.
  traces = [f for _, _, files in os.walk(tmp_path / 'plugins' / 'profile') for f in files]
  assert any(f.endswith('.xplane.pb') for f in traces), traces
  state = checkpointing.restore_state_only(str(tmp_path))
  floats = [x for x in jax.tree.leaves(state) if np.issubdtype(x.dtype, np.floating)]
  assert floats and all(x.dtype == np.float32 and np.isfinite(x).all() for x in floats)
  # The activations really are bf16 (the model returns float32 logits).
  image = np.zeros((1, config.image_size, config.image_size, 3), np.float32)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, image, train=False))(
      {'params': state['params'], 'batch_stats': state['batch_stats']})
  assert 'conv_general_dilated' in str(jaxpr) and 'bf16[1,' in str(jaxpr)


def test_ema_update_is_bias_corrected():
  decay = 0.9
  values = [np.float32(v) for v in (3.0, -1.0, 2.0, 5.0)]
  ema = {'w': np.float32(100.0)}  # the initial weights must leave no trace
  zero_started = 0.0
  for t, value in enumerate(values, start=1):
    ema = stages.ema_update(ema, {'w': value}, t, decay)
    zero_started = decay * zero_started + (1 - decay) * value
    # float32: a few roundings of numbers up to 100 in magnitude.
    np.testing.assert_allclose(ema['w'], zero_started / (1 - decay ** t), rtol=0,
                               atol=16 * np.finfo(np.float32).eps * 100)
  np.testing.assert_allclose(
      stages.ema_update({'w': np.float32(7.0)}, {'w': np.float32(3.0)}, 1, decay)['w'], 3.0,
      rtol=0, atol=8 * np.finfo(np.float32).eps * 7)


def test_eval_variables_average_batch_stats_too():
  from bgmat import runs  # pylint: disable=g-import-not-at-top
  config = matting_configs.get_config('tiny')
  state = {'params': 1, 'batch_stats': 2, 'ema_params': 3, 'ema_batch_stats': 4}
  assert runs.eval_variables(state, config) == {'params': 3, 'batch_stats': 4}
  config.eval_ema = False
  assert runs.eval_variables(state, config) == {'params': 1, 'batch_stats': 2}
  preseg = preseg_configs.get_config('tiny')
  assert runs.eval_variables(state, preseg) == {'params': 1, 'batch_stats': 2}
