"""Tests for bgmat.models.generator."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import pytest

from bgmat.models import generator

# Exact parameter counts ('params' only, not 'batch_stats'), computed once with
# jax.eval_shape and cross-checked against `_expected_params` below.
PARAM_COUNTS = {
    'generator_r18': 14_337_169,
    'generator_r34': 24_445_329,
    'generator_r50': 32_530_065,
    'generator_tiny': 508_213,
    'generator_small': 3_590_665,
    'generator_small_fine': 3_627_329,
}
PRESET_ARGS = {
    'generator_r18': ((2, 2, 2, 2), 'basic', 64),
    'generator_r34': ((3, 4, 6, 3), 'basic', 64),
    'generator_r50': ((3, 4, 6, 3), 'bottleneck', 64),
    'generator_tiny': ((1, 1, 1, 1), 'basic', 16),
    'generator_small': ((2, 2, 2, 2), 'basic', 32),
    'generator_small_fine': ((2, 2, 2, 2), 'basic', 32, 32),
}


def _inputs(batch, height, width, seed=0):
  """(image, preseg, target alpha), float32 in [0, 1]; numpy: no compiles."""
  rng = np.random.default_rng(seed)
  image = rng.random((batch, height, width, 3), np.float32)
  preseg = rng.random((batch, height, width, 1), np.float32)
  target = rng.random((batch, height, width, 1), np.float32)
  return image, preseg, target


def _init(model, height=64, width=64):
  image, preseg, _ = _inputs(1, height, width)
  # An 'rbg' key: on CPU, XLA compiles threefry initialisers of a few dozen
  # kernels very slowly (~20 s for the tiny preset), rbg in a few seconds.
  rng = jax.random.key(1, impl='rbg')
  return jax.jit(functools.partial(model.init, train=False))(rng, image,
                                                             preseg)


@pytest.fixture(scope='module')
def tiny_variables():
  return _init(generator.generator_tiny())


@functools.partial(jax.jit, static_argnames=('model', 'train',
                                             'return_logits'))
def _apply(model, variables, image, preseg, train, return_logits=False):
  """Jitted apply; tests share compiles by reusing (model, shape) pairs."""
  out, _ = model.apply(variables, image, preseg, train=train,
                       return_logits=return_logits, mutable=['batch_stats'])
  return out


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _expected_params(stage_sizes, block, width, decoder_min_width=0):
  """Parameter count written out layer by layer, independent of the model."""
  conv = lambda k, c_in, c_out: k * k * c_in * c_out  # no bias (BN follows)
  bn = lambda c: 2 * c  # scale + bias
  total = conv(3, 4, width // 2) + bn(width // 2)  # full-resolution skip
  total += conv(7, 4, width) + bn(width)  # stem
  c_in = width
  stage_channels = []
  for i, num_blocks in enumerate(stage_sizes):
    filters = width * 2**i
    c_out = filters if block == 'basic' else 4 * filters
    for j in range(num_blocks):
      if block == 'basic':
        total += conv(3, c_in, filters) + bn(filters)
        total += conv(3, filters, filters) + bn(filters)
      else:
        total += conv(1, c_in, filters) + bn(filters)
        total += conv(3, filters, filters) + bn(filters)
        total += conv(1, filters, c_out) + bn(c_out)
      if j == 0 and (i > 0 or c_in != c_out):  # projection shortcut
        total += conv(1, c_in, c_out) + bn(c_out)
      c_in = c_out
    stage_channels.append(c_out)
  skip_channels = [width // 2, width] + stage_channels[:3]  # fine -> coarse
  decoder_widths = [max(w, decoder_min_width)
                    for w in (4 * width, 2 * width, width, width // 2, width // 4)]
  for filters, skip in zip(decoder_widths, reversed(skip_channels)):
    total += conv(3, c_in + skip, filters) + bn(filters)
    total += conv(3, filters, filters) + bn(filters)
    c_in = filters
  total += conv(3, c_in, 1) + 1  # alpha head, with bias
  return total


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_param_count(name):
  model = generator.PRESETS[name]()
  variables = jax.eval_shape(functools.partial(_init, model))
  assert _count(variables['params']) == PARAM_COUNTS[name]
  assert _count(variables['params']) == _expected_params(*PRESET_ARGS[name])
  assert all(x.dtype == jnp.float32
             for x in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('height,width,train', [(96, 96, False),
                                              (100, 100, False),
                                              (70, 45, True)])
def test_output_shape_and_range(tiny_variables, height, width, train):
  model = generator.generator_tiny()
  image, preseg, _ = _inputs(2, height, width)
  alpha = _apply(model, tiny_variables, image, preseg, train)
  assert alpha.shape == (2, height, width, 1)
  assert alpha.dtype == jnp.float32
  assert np.all(np.isfinite(alpha))
  assert np.all((alpha >= 0) & (alpha <= 1))
  # Not a constant map: the inputs reach the output.
  assert np.std(alpha) > 0


def test_bottleneck_blocks():
  # A bottleneck model small enough for CPU: the r50 block structure.
  stage_sizes, block, width = (1, 1, 1, 1), 'bottleneck', 8
  model = generator.MattingGenerator(stage_sizes, block, width)
  variables = _init(model, 32, 32)
  assert _count(variables['params']) == _expected_params(stage_sizes, block,
                                                         width)
  image, preseg, _ = _inputs(2, 40, 40)
  alpha = _apply(model, variables, image, preseg, train=True)
  assert alpha.shape == (2, 40, 40, 1)
  assert np.all((alpha >= 0) & (alpha <= 1)) and np.std(alpha) > 0


def test_pad_and_crop_keep_the_top_left(tiny_variables):
  # At 100 px the model reflect-pads to 128 and crops back; in eval mode this
  # must equal running on the padded image and cropping by hand.
  model = generator.generator_tiny()
  image, preseg, _ = _inputs(2, 100, 100)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, 28), (0, 28), (0, 0)), 'reflect')
  alpha = _apply(model, tiny_variables, image, preseg, False)
  alpha_padded = _apply(model, tiny_variables, pad(image), pad(preseg), False)
  np.testing.assert_allclose(alpha, alpha_padded[:, :100, :100], atol=1e-6)


def test_return_logits(tiny_variables):
  model = generator.generator_tiny()
  image, preseg, _ = _inputs(2, 96, 96)
  alpha = _apply(model, tiny_variables, image, preseg, False)
  logits = _apply(model, tiny_variables, image, preseg, False,
                  return_logits=True)
  assert logits.shape == alpha.shape and logits.dtype == jnp.float32
  np.testing.assert_allclose(jax.nn.sigmoid(logits), alpha, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_output(tiny_variables):
  model = generator.generator_tiny(dtype=jnp.bfloat16)
  image, preseg, _ = _inputs(2, 96, 96)
  alpha = _apply(model, tiny_variables, image, preseg, False)
  assert alpha.dtype == jnp.float32
  reference = _apply(generator.generator_tiny(), tiny_variables, image,
                     preseg, False)
  assert np.max(np.abs(alpha - reference)) < 0.05
  # Initialised in bf16 mode, parameters and statistics are still float32.
  variables = jax.eval_shape(functools.partial(_init, model))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


def test_bad_arguments_raise():
  image, preseg, _ = _inputs(1, 32, 32)
  with pytest.raises(ValueError, match='block'):
    generator.MattingGenerator(block='wide').init(
        jax.random.PRNGKey(0), image, preseg, train=False)
  with pytest.raises(ValueError, match='preseg'):
    generator.generator_tiny().init(
        jax.random.PRNGKey(0), image, image, train=False)


def _loss_and_grads(model, variables, image, preseg, target):
  """Train-mode forward + backward: (loss, alpha, new batch_stats, grads)."""

  def loss_fn(params):
    alpha, updates = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']},
        image, preseg, train=True, mutable=['batch_stats'])
    return jnp.mean((alpha - target)**2), (alpha, updates['batch_stats'])

  (loss, (alpha, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      variables['params'])
  return loss, alpha, stats, grads


def test_sharded_batch_matches_unsharded(tiny_variables):
  assert len(jax.devices()) == 4, 'tests/conftest.py forces 4 CPU devices'
  model = generator.generator_tiny()
  size = 32
  # Non-zero last-BN scales so every residual branch gets a gradient.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, 0.5) if 'scale' in str(path[-1])
      else x, tiny_variables)
  batch = _inputs(8, size, size, seed=2)
  step = functools.partial(_loss_and_grads, model)

  expected = jax.jit(step)(variables, *batch)

  mesh = Mesh(np.array(jax.devices()), ('data',))
  data = NamedSharding(mesh, P('data'))
  replicated = NamedSharding(mesh, P())
  sharded_step = jax.jit(step, in_shardings=(replicated, data, data, data))
  batch = jax.device_put(batch, data)
  assert len(batch[0].sharding.device_set) == 4
  got = sharded_step(jax.device_put(variables, replicated), *batch)

  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
      got, expected)
  # The comparison above covers the BatchNorm running statistics, which are
  # means over the global batch; make sure it compared something non-trivial.
  assert all(np.any(g != 0) for g in jax.tree.leaves(expected[3]))


def test_residual_prior_starts_from_the_prior_with_the_same_parameters(tiny_variables):
  model = generator.generator_tiny(residual_prior=True)
  variables = _init(model)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, tiny_variables)
  image, preseg, _ = _inputs(2, 64, 64)
  alpha = _apply(model, variables, image, preseg, train=False)
  np.testing.assert_allclose(alpha, np.clip(preseg, 1e-4, 1 - 1e-4), atol=1e-5)
  # A non-zero head moves alpha away from the prior.
  params = jax.tree.map(lambda x: x, variables['params'])
  params['conv_alpha']['kernel'] = params['conv_alpha']['kernel'] + 0.1
  moved = _apply(model, {**variables, 'params': params}, image, preseg, train=False)
  assert np.abs(np.asarray(moved) - np.asarray(alpha)).max() > 1e-3


def test_decoder_min_width_widens_only_the_thin_blocks():
  def widths(model):
    params = jax.eval_shape(functools.partial(_init, model))['params']
    return [params[f'decoder{i}']['Conv_1']['kernel'].shape[-1] for i in range(1, 6)]

  assert widths(generator.generator_small()) == [128, 64, 32, 16, 8]
  assert widths(generator.generator_small_fine()) == [128, 64, 32, 32, 32]
  assert widths(generator.generator_small(decoder_min_width=16)) == [128, 64, 32, 16, 16]
