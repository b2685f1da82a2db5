"""layers.conv2d: the 'shifted' kernel gradient equals the 'lax' one.

Both implementations are compared with a float64 NumPy reference under the
standard rounding-error bound of a float32 sum of K products (Higham,
"Accuracy and Stability of Numerical Algorithms", 2nd ed., eq. 3.5):
|fl(sum) - sum| <= gamma_K * sum |terms|, gamma_K = K u / (1 - K u),
u = 2**-24. The float32 inputs are exact in float64, so the only error is
the float32 accumulation (plus one final rounding, u * |result|).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat.models import discriminator, layers

U32 = 2.0**-24


def _gamma(k):
  return k * U32 / (1 - k * U32)


def _taps(xp, kh, kw, stride, out_h, out_w):
  """Per tap (i, j): xp[:, i + s*oh, j + s*ow, :], float64."""
  return [[xp[:, i:i + (out_h - 1) * stride + 1:stride,
              j:j + (out_w - 1) * stride + 1:stride, :]
           for j in range(kw)] for i in range(kh)]


def _reference(x, kernel, g, stride, padding):
  """float64 (y, dx, dk) and the abs-sums that bound their rounding errors."""
  x, kernel, g = (np.asarray(a, np.float64) for a in (x, kernel, g))
  (pt, pb), (pl, pr) = padding
  kh, kw = kernel.shape[:2]
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  _, out_h, out_w, _ = g.shape
  taps = _taps(xp, kh, kw, stride, out_h, out_w)
  y = sum(taps[i][j] @ kernel[i, j] for i in range(kh) for j in range(kw))
  y_abs = sum(np.abs(taps[i][j]) @ np.abs(kernel[i, j])
              for i in range(kh) for j in range(kw))
  dk = np.stack([np.stack([np.einsum('nhwc,nhwd->cd', taps[i][j], g)
                           for j in range(kw)]) for i in range(kh)])
  dk_abs = np.stack([np.stack([np.einsum('nhwc,nhwd->cd', np.abs(taps[i][j]),
                                         np.abs(g))
                               for j in range(kw)]) for i in range(kh)])
  dxp = np.zeros_like(xp)
  dxp_abs = np.zeros_like(xp)
  for i in range(kh):
    for j in range(kw):
      window = (slice(None), slice(i, i + (out_h - 1) * stride + 1, stride),
                slice(j, j + (out_w - 1) * stride + 1, stride))
      dxp[window] += g @ kernel[i, j].T
      dxp_abs[window] += np.abs(g) @ np.abs(kernel[i, j]).T
  crop = (slice(None), slice(pt, pt + x.shape[1]), slice(pl, pl + x.shape[2]))
  return (y, y_abs), (dxp[crop], dxp_abs[crop]), (dk, dk_abs)


def _assert_within_bound(got, ref, ref_abs, terms, what):
  got = np.asarray(got, np.float64)
  bound = _gamma(terms) * ref_abs + U32 * np.abs(ref)
  excess = np.abs(got - ref) - bound
  assert np.all(excess <= 0), (what, float(excess.max()), terms)


@pytest.mark.parametrize('shape,kernel_size,stride,padding', [
    ((2, 9, 9, 5), 4, 1, 2),  # the PatchGAN's stride-1 layer
    ((2, 10, 7, 5), 4, 2, 2),  # its stride-2 layers, non-square
    ((1, 8, 8, 3), 3, 1, 1),
    ((2, 7, 9, 4), 3, 2, ((0, 1), (2, 1))),  # asymmetric padding
])
def test_conv2d_impls_match_float64_reference(shape, kernel_size, stride,
                                              padding):
  rng = np.random.default_rng(sum(shape) + kernel_size + stride)
  x = rng.standard_normal(shape).astype(np.float32)
  kernel = rng.standard_normal(
      (kernel_size, kernel_size, shape[-1], 6)).astype(np.float32)
  pads = ((padding, padding),) * 2 if isinstance(padding, int) else padding
  y_shape = jax.eval_shape(
      functools.partial(layers.conv2d, stride=stride, padding=padding,
                        impl='lax'), x, kernel).shape
  g = rng.standard_normal(y_shape).astype(np.float32)
  (y, y_abs), (dx, dx_abs), (dk, dk_abs) = _reference(x, kernel, g, stride,
                                                      pads)
  n, out_h, out_w, cout = y_shape
  # Terms per sum: y over taps and C_in; dx over taps (at most kh*kw reach
  # one input) and C_out; dk over the N*h*w output positions.
  terms = {'y': kernel_size**2 * shape[-1],
           'dx': kernel_size**2 * cout,
           'dk': n * out_h * out_w}
  for impl in ('shifted', 'lax'):
    conv = functools.partial(layers.conv2d, stride=stride, padding=padding,
                             impl=impl)
    y_got, vjp = jax.vjp(conv, x, kernel)
    dx_got, dk_got = jax.jit(vjp)(g)
    _assert_within_bound(y_got, y, y_abs, terms['y'], (impl, 'y'))
    _assert_within_bound(dx_got, dx, dx_abs, terms['dx'], (impl, 'dx'))
    _assert_within_bound(dk_got, dk, dk_abs, terms['dk'], (impl, 'dk'))


def test_conv2d_impl_auto_and_errors():
  assert layers.resolve_conv_impl('auto') == (
      'shifted' if jax.default_backend() == 'cpu' else 'lax')
  with pytest.raises(ValueError, match='conv_impl'):
    layers.resolve_conv_impl('fast')


def test_conv2d_shifted_bfloat16_accumulates_in_float32():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 9, 9, 4)), jnp.bfloat16)
  kernel = jnp.asarray(rng.standard_normal((4, 4, 4, 3)), jnp.bfloat16)
  g = jnp.ones((2, 10, 10, 3), jnp.bfloat16)
  dk = jax.vjp(functools.partial(layers.conv2d, stride=1, padding=2,
                                 impl='shifted'), x, kernel)[1](g)[1]
  assert dk.dtype == jnp.bfloat16
  # Exact products of bf16 values summed in float64, rounded once to bf16:
  # the float32 accumulation's error (gamma_200 ~ 1.2e-5 of the abs-sum) is
  # far below bf16's half-ulp (2**-9), so at most one bf16 ulp apart.
  ref = _reference(np.asarray(x, np.float32), np.asarray(kernel, np.float32),
                   np.asarray(g, np.float32), 1, ((2, 2), (2, 2)))[2][0]
  ulp = 2.0**(np.floor(np.log2(np.maximum(np.abs(ref), 1e-30))) - 7)
  assert np.all(np.abs(np.asarray(dk, np.float64) - ref) <= ulp)


def test_patchgan_impls_same_params_and_gradients():
  rng = np.random.default_rng(0)
  image = rng.random((2, 24, 24, 3), np.float32)
  alpha = rng.random((2, 24, 24, 1), np.float32)
  models = {impl: discriminator.patchgan_tiny(conv_impl=impl)
            for impl in ('shifted', 'lax')}
  variables = models['lax'].init(jax.random.key(0, impl='rbg'), image, alpha,
                                 train=False)
  assert (jax.tree.structure(models['shifted'].init(
      jax.random.key(0, impl='rbg'), image, alpha, train=False)) ==
          jax.tree.structure(variables))

  def loss(model, params):
    outputs = model.apply({'params': params}, image, alpha, train=True)
    return sum(jnp.mean(logits**2) + sum(jnp.mean(f**2) for f in feats)
               for logits, feats in outputs)

  grads = {impl: jax.jit(jax.grad(functools.partial(loss, m)))(
      variables['params']) for impl, m in models.items()}
  # Per op the two differ by at most gamma_K of the abs-sums (test above;
  # K <= 2 * 14 * 14 = 392 here, gamma ~ 2.3e-5); through the network's few
  # layers that stays well under 1e-4 of each gradient's largest entry.
  for a, b in zip(jax.tree.leaves(grads['shifted']),
                  jax.tree.leaves(grads['lax'])):
    np.testing.assert_allclose(a, b, atol=1e-4 * float(np.abs(b).max()),
                               rtol=0)


@pytest.mark.parametrize('size,dilation,taps', [(4, 12, 1), (32, 36, 1), (32, 24, 9),
                                                (8, 6, 9)])
def test_depthwise_shifted_skips_taps_that_read_only_padding(size, dilation, taps):
  """ASPP's dilated 3x3 on a map narrower than the dilation: off-centre taps
  read only zeros and are not computed (forward: one multiply per tap)."""
  x = jnp.zeros((1, size, size, 4), jnp.float32)
  kernel = jnp.zeros((3, 3, 1, 4), jnp.float32)
  jaxpr = jax.make_jaxpr(functools.partial(
      layers.depthwise_conv, stride=1, dilation=dilation, padding=dilation,
      impl='shifted'))(x, kernel)
  text = str(jaxpr)
  assert text.count(' mul ') == taps, text
