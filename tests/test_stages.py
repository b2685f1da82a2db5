"""The stage registry and the typed train state (bgmat/stages.py)."""

import jax
import ml_collections
import numpy as np
import pytest

from bgmat import stages
import configs.matting as matting_configs
import configs.preseg as preseg_configs


def test_unknown_stage_is_refused_naming_the_valid_ones():
  config = preseg_configs.get_config('tiny')
  config.stage = 'segmentation'
  with pytest.raises(ValueError, match=r"'segmentation' is not one of \['matting', 'preseg'\]"):
    stages.get(config)


@pytest.mark.parametrize('arg, keys', [
    ('preseg:tiny', {'step', 'params', 'batch_stats', 'opt_state', 'skipped_steps'}),
    ('matting:tiny,noadv', {'step', 'params', 'batch_stats', 'opt_state', 'skipped_steps',
                            'ema_params', 'ema_batch_stats'}),
    ('matting:tiny', {'step', 'params', 'batch_stats', 'opt_state', 'skipped_steps',
                      'ema_params', 'ema_batch_stats', 'disc'}),
])
def test_checkpoint_layout_is_the_plain_dict_of_present_fields(arg, keys):
  """Checkpoints hold TrainState.to_dict(): the keys runs saved before the
  typed state existed, so old runs restore and new runs read as before."""
  module, size = arg.split(':')
  config = (preseg_configs if module == 'preseg' else matting_configs).get_config(size)
  stage = stages.get(config)
  assert stage.name == config.stage
  abstract = jax.eval_shape(stage.init, jax.random.key(0))
  tree = abstract.to_dict()
  assert set(tree) == keys
  if 'disc' in keys:
    assert set(tree['disc']) == {'params', 'batch_stats', 'opt_state'}
  # Round trip, leaf for leaf.
  back = stages.TrainState.from_dict(tree)
  assert jax.tree.structure(back) == jax.tree.structure(abstract)
  # The matting stage's averaged weights start equal to the live ones.
  if arg == 'matting:tiny,noadv':
    state = jax.jit(stage.init)(jax.random.key(0))
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params)):
      np.testing.assert_array_equal(a, b)


def test_from_dict_refuses_a_tree_that_is_not_a_train_state():
  with pytest.raises(TypeError):
    stages.TrainState.from_dict({'params': {}, 'weights': {}})


@pytest.mark.slow  # Compiles tiny DeepLabV3+ steps: tens of seconds.
def test_preseg_stage_steps_and_predicts_through_the_one_interface():
  """init -> step -> eval_variables -> predict, with no stage-specific code."""
  config = preseg_configs.get_config('tiny')
  stage = stages.get(config)
  size = config.image_size
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((2, size, size, 3), np.float32),
           'alpha': (rng.random((2, size, size, 1)) > 0.5).astype(np.float32)}
  state = jax.jit(stage.init)(jax.random.key(0))
  assert stage.load_frozen('unused') is None
  new_state, metrics = jax.jit(stage.step)(state, batch, jax.random.key(1), None)
  assert int(new_state.step) == 1 and int(new_state.skipped_steps) == 0
  assert {'loss', 'train_iou', 'grad_norm'} <= set(metrics)
  assert np.isfinite(float(metrics['loss']))
  out = jax.jit(stage.predict)(stage.eval_variables(new_state), None, batch)
  assert out['alpha'].shape == (2, size, size, 1)
  assert float(out['alpha'].min()) >= 0.0 and float(out['alpha'].max()) <= 1.0


def test_matting_eval_variables_follow_eval_ema():
  config = matting_configs.get_config('tiny,noadv')
  stage = stages.get(config)
  state = jax.jit(stage.init)(jax.random.key(0))
  marker = jax.tree.map(lambda x: x + 1.0, state.params)
  state = state.replace(ema_params=marker)
  assert config.eval_ema
  assert stage.eval_variables(state)['params'] is marker
  stage.config = ml_collections.ConfigDict(dict(config.to_dict(), eval_ema=False))
  assert stage.eval_variables(state)['params'] is state.params


def test_preseg_ema_is_kept_and_evaluated_only_when_asked():
  """`ema_decay` > 0 adds the averages to a pre-segmentation state (old runs,
  without it, keep their checkpoint layout); `eval_ema` evaluates them."""
  config = preseg_configs.get_config('tiny')
  assert not config.ema_decay and not config.eval_ema
  plain = jax.eval_shape(stages.get(config).init, jax.random.key(0)).to_dict()
  assert 'ema_params' not in plain
  config.ema_decay, config.eval_ema = 0.9, True
  stage = stages.get(config)
  state = jax.eval_shape(stage.init, jax.random.key(0))
  assert {'ema_params', 'ema_batch_stats'} <= set(state.to_dict())
  assert stage.eval_variables(state)['params'] is state.ema_params
  assert stage.eval_variables(state)['batch_stats'] is state.ema_batch_stats


@pytest.mark.slow  # Compiles a tiny DeepLabV3+ step.
def test_preseg_step_updates_the_ema_as_ema_update_does():
  config = preseg_configs.get_config('tiny')
  config.ema_decay, config.eval_ema = 0.9, True
  config.loss.lovasz = 1.0
  stage = stages.get(config)
  size = config.image_size
  rng = np.random.default_rng(0)
  batch = {'image': rng.random((2, size, size, 3), np.float32),
           'alpha': (rng.random((2, size, size, 1)) > 0.5).astype(np.float32)}
  state = jax.jit(stage.init)(jax.random.key(0))
  new_state, metrics = jax.jit(stage.step)(state, batch, jax.random.key(1), None)
  assert np.isfinite(float(metrics['loss']))
  # Step 1 of the bias-corrected average weighs the new value fully.
  expected = stages.ema_update(state.ema_params, new_state.params, 1, 0.9)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(new_state.ema_params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(new_state.ema_params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
