"""Aligned Xception: depthwise impls, endpoints, parameter counts, timm parity."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat.models import layers
from bgmat.models import xception as X


def np_init(model, x, seed=0):
  """Variables with random values from numpy (no XLA compile, unlike `model.init`).

  Kernels ~ He normal, BN scale/bias and running statistics randomized, so
  eval-mode comparisons exercise every parameter.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, False))
  rng = np.random.default_rng(seed)

  def make(path, spec):
    name = path[-1].key
    shape = spec.shape
    if name == 'kernel':
      fan_in = int(np.prod(shape[:-1])) if len(shape) != 4 or shape[2] != 1 else shape[0] * shape[1]
      v = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif name in ('scale', 'var'):
      v = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      v = rng.normal(0, 0.1, shape)
    return jnp.asarray(v, spec.dtype)

  return jax.tree_util.tree_map_with_path(make, shapes)


def _count(tree):
  return sum(int(np.prod(l.shape)) for l in jax.tree_util.tree_leaves(tree))


@functools.lru_cache(maxsize=None)
def _abstract(arch, output_stride=32, num_classes=1000, size=64):
  model = X.xception(arch, output_stride=output_stride, num_classes=num_classes)
  x = jnp.zeros((1, size, size, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, False))
  feats = jax.eval_shape(lambda v: model.apply(v, x, False), variables)
  return variables, feats


# --------------------------------------------------------------------------
# Depthwise convolution: 'shifted' (custom VJP) == 'grouped' (lax conv).


@pytest.mark.parametrize('h,w,stride,dilation', [
    (9, 9, 1, 1), (10, 7, 2, 1), (11, 11, 1, 2), (8, 8, 2, 1), (7, 9, 1, 3), (5, 5, 1, 6),
    (4, 4, 1, 12),  # padding larger than the input (ASPP rates on small maps)
])
def test_depthwise_impls_match_forward_and_grad(h, w, stride, dilation):
  rng = np.random.default_rng(h * 100 + w + stride + dilation)
  x = jnp.asarray(rng.standard_normal((2, h, w, 5)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 1, 5)), jnp.float32)
  pad = layers.get_padding(3, stride, dilation)
  a = layers.depthwise_conv(x, k, stride=stride, dilation=dilation, padding=pad, impl='grouped')
  b = layers.depthwise_conv(x, k, stride=stride, dilation=dilation, padding=pad, impl='shifted')
  assert a.shape == b.shape == (2, layers.conv_out_size(h, 3, stride, dilation, pad),
                                layers.conv_out_size(w, 3, stride, dilation, pad), 5)
  np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  g = jnp.asarray(rng.standard_normal(a.shape), jnp.float32)

  def loss(impl, x, k):
    y = layers.depthwise_conv(x, k, stride=stride, dilation=dilation, padding=pad, impl=impl)
    return jnp.sum(jnp.tanh(y) * g)

  ga = jax.grad(functools.partial(loss, 'grouped'), (0, 1))(x, k)
  gb = jax.jit(jax.grad(functools.partial(loss, 'shifted'), (0, 1)))(x, k)
  np.testing.assert_allclose(gb[0], ga[0], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(gb[1], ga[1], rtol=1e-4, atol=1e-4)


def test_depthwise_impl_auto_and_errors():
  assert layers.resolve_depthwise_impl('auto') == (
      'shifted' if jax.default_backend() == 'cpu' else 'grouped')
  with pytest.raises(ValueError):
    layers.resolve_depthwise_impl('fast')


def test_xception_tiny_impls_match_forward_and_grad():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 51, 45, 3)), jnp.float32)
  ms = X.xception_tiny(depthwise_impl='shifted', output_stride=16)
  mg = X.xception_tiny(depthwise_impl='grouped', output_stride=16)
  variables = np_init(ms, x)
  # Same parameter tree either way.
  assert jax.tree_util.tree_structure(variables) == jax.tree_util.tree_structure(
      jax.eval_shape(lambda: mg.init(jax.random.PRNGKey(0), x, False)))

  def loss(model, params):
    out, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, True,
                         mutable=['batch_stats'])
    return jnp.mean(out['logits'] ** 2) + jnp.mean(out['stride4'])

  ls, gs = jax.jit(jax.value_and_grad(functools.partial(loss, ms)))(variables['params'])
  lg, gg = jax.jit(jax.value_and_grad(functools.partial(loss, mg)))(variables['params'])
  np.testing.assert_allclose(ls, lg, rtol=1e-4)
  # Some gradients are exactly zero in theory (the bias of a BN followed by a
  # 1x1 conv and another train-mode BN), so errors are also measured against
  # the largest gradient overall.
  gmax = max(float(np.abs(l).max()) for l in jax.tree_util.tree_leaves(gg))
  for path, a in jax.tree_util.tree_leaves_with_path(gs):
    b = np.asarray(functools.reduce(lambda t, k: t[k.key], path, gg))
    err = float(np.abs(np.asarray(a) - b).max())
    assert err <= 1e-3 * float(np.abs(b).max()) + 1e-5 * gmax, (jax.tree_util.keystr(path), err)


# --------------------------------------------------------------------------
# Structure.


@pytest.mark.parametrize('arch', ['xception41', 'xception65', 'xception71'])
def test_param_counts_equal_timm(arch):
  variables, _ = _abstract(arch)
  assert _count(variables['params']) == X.TIMM_PARAM_COUNTS[arch]
  assert set(variables) == {'params', 'batch_stats'}


def test_param_counts_tiny():
  # Computed once with jax.eval_shape over xception_tiny(); head = 128*1000 + 1000.
  variables, _ = _abstract('xception_tiny')
  assert _count(variables['params']) == 260_632
  no_head, _ = _abstract('xception_tiny', num_classes=0)
  assert _count(no_head['params']) == 260_632 - 129_000
  assert 'head' not in no_head['params']


@pytest.mark.parametrize('arch', ['xception65', 'xception71', 'xception_tiny'])
@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_endpoint_strides_and_shapes(arch, output_stride):
  size = 128
  _, feats = _abstract(arch, output_stride, 10, size)
  big = arch != 'xception_tiny'
  chans = dict(stride2=128 if big else 24, stride4=256 if big else 32,
               stride8=728 if big else 64, stride16=1024 if big else 96,
               final=2048 if big else 128)
  for key, c in chans.items():
    stride = min(int(key[6:]) if key != 'final' else 32, output_stride)
    assert feats[key].shape == (1, size // stride, size // stride, c), (key, feats[key].shape)
  assert feats['logits'].shape == (1, 10)
  assert feats['logits'].dtype == jnp.float32
  info = X.feature_info(arch, output_stride)
  assert [i['key'] for i in info] == ['stride2', 'stride4', 'stride8', 'stride16', 'final']
  assert [i['num_chs'] for i in info] == list(chans.values())


def test_block_plan_matches_timm_rule():
  plan = X.block_plan(X.XCEPTION65_BLOCKS, 16)
  assert [(p.stride, p.dilation) for p in plan[18:]] == [(1, 1), (1, 1), (1, 2)]
  plan = X.block_plan(X.XCEPTION65_BLOCKS, 8)
  assert plan[2].stride == 1 and plan[2].dilation == 1
  assert all(p.dilation == 2 for p in plan[3:20])
  assert plan[19].stride == 1 and plan[20].dilation == 4


def test_bfloat16_compute_float32_params():
  model = X.xception_tiny(dtype=jnp.bfloat16, num_classes=5)
  x = jnp.ones((1, 32, 32, 3))
  variables = np_init(model, x)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(variables))
  out = jax.jit(lambda v, x: model.apply(v, x, False))(variables, x)
  assert out['final'].dtype == jnp.bfloat16
  assert out['logits'].dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out['logits'])))


# --------------------------------------------------------------------------
# Parity with timm (random weights, randomized BatchNorm statistics, eval mode).


def randomize_bn(torch_model, seed=1):
  import torch
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in torch_model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1, generator=g)
        m.running_var.uniform_(0.5, 1.5, generator=g)
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
  return torch_model


@pytest.mark.parametrize('arch', ['xception41', 'xception65', 'xception71'])
def test_timm_parity(arch):
  timm = pytest.importorskip('timm')
  import torch
  from bgmat import convert
  torch.set_num_threads(2)
  torch.manual_seed(0)
  tm = randomize_bn(timm.create_model(arch, pretrained=False)).eval()
  assert sum(p.numel() for p in tm.parameters()) == X.TIMM_PARAM_COUNTS[arch]
  variables = convert.timm_xception({k: v.numpy() for k, v in tm.state_dict().items()}, arch)
  assert _count(variables['params']) == X.TIMM_PARAM_COUNTS[arch]
  model = X.xception(arch)
  fwd = jax.jit(lambda v, x: model.apply(v, x, False)['logits'])
  for size in (64, 67):  # 67: not divisible by 32, exercises the stride-2 padding
    x = np.random.default_rng(size).standard_normal((1, size, size, 3)).astype(np.float32)
    with torch.no_grad():
      ref = tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    out = np.asarray(fwd(variables, x))
    rel = np.abs(out - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, (arch, size, rel)
