"""DeepLabV3+: presets, improved-vs-original difference, sharding, smp parity."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bgmat.models import deeplab as D
from tests.models.test_xception import np_init


def _flat_shapes(tree):
  return {jax.tree_util.keystr(p): tuple(l.shape)
          for p, l in jax.tree_util.tree_leaves_with_path(tree)}


@functools.lru_cache(maxsize=None)
def _abstract_vars(name, size=64, **kwargs):
  model = D.PRESETS[name](**kwargs)
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), False))


# Computed once with jax.eval_shape (sum of the sizes of all 'params' leaves)
# when the presets were written. smp's DeepLabV3Plus('tu-xception65') has
# 41,036,865 parameters (torch, counted), which the 'smp' preset reproduces.
PRESET_PARAM_COUNTS = {
    'deeplabv3plus_xception65': 41_050_273,
    'deeplabv3plus_xception65_improved': 42_935_185,
    'deeplabv3plus_xception41': 28_103_521,
    'deeplabv3plus_xception71': 43_472_697,
    'deeplabv3plus_xception65_smp': 41_036_865,
    'deeplabv3plus_tiny': 165_985,
    'deeplabv3plus_tiny_improved': 184_369,
    'deeplabv3plus_small': 942_765,
    'deeplabv3plus_small_wide': 2_922_573,
    'deeplabv3plus_small_deep': 3_955_533,
}


@pytest.mark.parametrize('name', sorted(PRESET_PARAM_COUNTS))
def test_preset_param_counts(name):
  variables = _abstract_vars(name)
  n = sum(int(np.prod(s)) for s in _flat_shapes(variables['params']).values())
  assert n == PRESET_PARAM_COUNTS[name]
  assert 'head' not in variables['params']['encoder']  # encoder without classifier


@pytest.mark.parametrize('base,low,aspp,skip8', [
    ('deeplabv3plus_xception65', 48, 256, 48),
    ('deeplabv3plus_tiny', 16, 32, 16),
])
def test_improved_differs_only_by_the_additions(base, low, aspp, skip8):
  orig = _flat_shapes(_abstract_vars(base)['params'])
  impr = _flat_shapes(_abstract_vars(base + '_improved')['params'])
  added = set(impr) - set(orig)
  expected = set()
  for mod in ('aspp_pyramid_pool_2', 'aspp_pyramid_pool_3', 'aspp_pyramid_pool_6',
              'aspp_pyramid_fuse', 'skip8'):
    expected |= {f"['{mod}']['conv']['kernel']", f"['{mod}']['bn']['scale']",
                 f"['{mod}']['bn']['bias']"}
  assert added == expected
  assert set(orig) - set(impr) == set()
  changed = {k: (orig[k], impr[k]) for k in orig if orig[k] != impr[k]}
  c0, c1 = aspp + low, aspp + low + skip8
  assert changed == {
      "['decoder_conv_0']['conv_dw']['kernel']": ((3, 3, 1, c0), (3, 3, 1, c1)),
      "['decoder_conv_0']['bn_dw']['scale']": ((c0,), (c1,)),
      "['decoder_conv_0']['bn_dw']['bias']": ((c0,), (c1,)),
      "['decoder_conv_0']['conv_pw']['kernel']": ((1, 1, c0, aspp), (1, 1, c1, aspp)),
  }
  # The fused pyramid keeps the ASPP projection input unchanged.
  assert orig["['aspp_project']['conv']['kernel']"] == impr["['aspp_project']['conv']['kernel']"]


def test_finer_flags():
  only_pool = _flat_shapes(_abstract_vars('deeplabv3plus_tiny', pyramid_bins=(1, 2))['params'])
  assert "['aspp_pyramid_pool_2']['conv']['kernel']" in only_pool
  assert not any('skip8' in k for k in only_pool)
  only_skip = _flat_shapes(_abstract_vars('deeplabv3plus_tiny', use_stride8_skip=True)['params'])
  assert "['skip8']['conv']['kernel']" in only_skip
  assert not any('pyramid' in k for k in only_skip)
  with pytest.raises(ValueError, match='contain 1'):
    _abstract_vars('deeplabv3plus_tiny', pyramid_bins=(2, 3))


@pytest.mark.parametrize('name', ['deeplabv3plus_tiny', 'deeplabv3plus_tiny_improved'])
@pytest.mark.parametrize('head', ['paper', 'smp'])
@pytest.mark.parametrize('output_stride', [8, 16])
def test_output_shape_any_size(name, head, output_stride):
  model = D.PRESETS[name](head=head, output_stride=output_stride, num_classes=2)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 67, 45, 3)), jnp.float32)
  variables = np_init(model, x)
  out = jax.jit(lambda v, x: model.apply(v, x, False))(variables, x)
  assert out.shape == (2, 67, 45, 2) and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))


def test_aspp_rates():
  assert D.DeepLabV3Plus()._rates() == (6, 12, 18)
  assert D.DeepLabV3Plus(output_stride=8)._rates() == (12, 24, 36)
  assert D.DeepLabV3Plus(head='smp')._rates() == (12, 24, 36)
  assert D.DeepLabV3Plus(head='smp', output_stride=8)._rates() == (12, 24, 36)


def test_depthwise_impls_agree_on_deeplab_tiny():
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(1, 72, 56, 3)), jnp.float32)
  ms = D.deeplabv3plus_tiny_improved(depthwise_impl='shifted')
  mg = D.deeplabv3plus_tiny_improved(depthwise_impl='grouped')
  variables = np_init(ms, x)
  np.testing.assert_allclose(jax.jit(lambda v, x: ms.apply(v, x, False))(variables, x),
                             jax.jit(lambda v, x: mg.apply(v, x, False))(variables, x),
                             rtol=1e-4, atol=1e-5)


def test_bfloat16_deeplab_tiny():
  model = D.deeplabv3plus_tiny_improved(dtype=jnp.bfloat16)
  x = jnp.ones((1, 48, 48, 3)) * 0.3
  variables = np_init(model, x)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(variables))
  out = jax.jit(lambda v, x: model.apply(v, x, False))(variables, x)
  assert out.dtype == jnp.float32 and out.shape == (1, 48, 48, 1)
  ref = jax.jit(lambda v, x: D.deeplabv3plus_tiny_improved().apply(v, x, False))(variables, x)
  assert float(jnp.abs(out - ref).max()) < 0.1 * float(jnp.abs(ref).max()) + 0.1


# --------------------------------------------------------------------------
# Data parallel: batch sharded over 4 CPU devices == unsharded.


@pytest.mark.slow
def test_sharded_forward_backward_matches_unsharded():
  """Batch sharded over 4 devices == unsharded, computed in float64.

  On the improved head only: it is the original plus the two additions and
  nothing else (the pooling bins include the original's global one, the
  stride-8 skip is an extra branch), so every layer of the original runs here.

  In float32 the two layouts sum in different orders and the train-mode
  BatchNorm backward of this small random model is ill-conditioned enough that
  the rounding differences reach 1e-5 of some leaves, by an amount that
  depends on the CPU's SIMD path: a tolerance that held on one machine failed
  on another. In float64 the reduction-order differences are ~1e-16 relative,
  so the bounds below are set far above them (about 1e-9 after the worst
  conditioning seen) and far below what a sharding error gives (the batch
  statistics of one shard instead of the batch: differences of order 1e-2).
  The model's input normalisation and output logits stay float32 (the module
  casts them), identical in both layouts but for rare one-ulp (6e-8) flips of
  a logit, covered by the 1e-6 bounds.
  """
  if len(jax.devices()) < 4:
    pytest.skip('needs 4 devices (tests/conftest.py forces 4 CPU devices)')
  mesh = Mesh(np.array(jax.devices()), ('data',))
  with jax.enable_x64(True):
    model = D.PRESETS['deeplabv3plus_tiny_improved'](aspp_dropout=0.0, dtype=jnp.float64,
                                                     param_dtype=jnp.float64)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 64, 64, 3)).astype(np.float64)
    y = (rng.uniform(size=(8, 64, 64, 1)) > 0.5).astype(np.float64)
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, False))(x[:1])
    assert all(l.dtype == jnp.float64 for l in jax.tree_util.tree_leaves(variables['params']))

    def loss_fn(params, batch_stats, x, y):
      logits, upd = model.apply({'params': params, 'batch_stats': batch_stats}, x, True,
                                mutable=['batch_stats'], rngs={'dropout': jax.random.PRNGKey(3)})
      logits = logits.astype(jnp.float64)
      loss = jnp.mean(jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits))))
      return loss, upd['batch_stats']

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, bs), grads = step(variables['params'], variables['batch_stats'], x, y)
    repl = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P('data'))
    params_r = jax.device_put(variables['params'], repl)
    bs_r = jax.device_put(variables['batch_stats'], repl)
    xs, ys = jax.device_put(x, data), jax.device_put(y, data)
    assert len(xs.sharding.device_set) == 4
    (loss_s, bs_s), grads_s = step(params_r, bs_r, xs, ys)

  np.testing.assert_allclose(loss_s, loss, rtol=1e-9)
  gmax = max(float(np.abs(l).max()) for l in jax.tree_util.tree_leaves(grads))
  for a, b in zip(jax.tree_util.tree_leaves(grads_s), jax.tree_util.tree_leaves(grads)):
    b = np.asarray(b)
    assert float(np.abs(np.asarray(a) - b).max()) <= 1e-6 * float(np.abs(b).max()) + 1e-7 * gmax
  # Flax keeps BatchNorm statistics in float32: one rounding of float64 values
  # that agree to ~1e-16 of their O(1) inputs, so at most one float32 ulp
  # apart, or both at float64 noise level (~1e-17) where the true value is 0.
  for a, b in zip(jax.tree_util.tree_leaves(bs_s), jax.tree_util.tree_leaves(bs)):
    np.testing.assert_allclose(a, b, rtol=2 * np.finfo(np.float32).eps, atol=1e-12)

  # Train-mode forward with dropout (default rate, float32): same masks when sharded.
  model_d = D.PRESETS['deeplabv3plus_tiny_improved']()
  variables = jax.tree.map(lambda a: np.asarray(a, np.float32), variables)
  x = x.astype(np.float32)
  fwd = jax.jit(lambda v, x: model_d.apply(v, x, True, mutable=['batch_stats'],
                                           rngs={'dropout': jax.random.PRNGKey(3)})[0])
  ref = np.asarray(fwd(variables, x))
  out = np.asarray(fwd(jax.device_put(variables, NamedSharding(mesh, P())),
                       jax.device_put(x, NamedSharding(mesh, P('data')))))
  assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()



# --------------------------------------------------------------------------
# Parity with segmentation_models_pytorch (head='smp').


@pytest.mark.slow
def test_smp_parity():
  smp = pytest.importorskip('segmentation_models_pytorch')
  pytest.importorskip('timm')
  import torch
  from bgmat import convert
  from tests.models.test_xception import randomize_bn
  torch.set_num_threads(2)
  torch.manual_seed(0)
  tm = randomize_bn(smp.DeepLabV3Plus(encoder_name='tu-xception65', encoder_weights=None)).eval()
  assert sum(p.numel() for p in tm.parameters()) == 41_036_865
  variables = convert.smp_deeplabv3plus(
      {k: v.numpy() for k, v in tm.state_dict().items()}, 'xception65')
  model = D.deeplabv3plus_xception65_smp()
  fwd = jax.jit(lambda v, x: model.apply(v, x, False))
  for size in (64, 96):  # smp needs sizes divisible by the output stride (16)
    x = np.random.default_rng(size).uniform(size=(1, size, size, 3)).astype(np.float32)
    with torch.no_grad():
      ref = tm(torch.from_numpy(((x - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()))
    ref = ref.numpy().transpose(0, 2, 3, 1)
    out = np.asarray(fwd(variables, x))
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, (size, rel)
