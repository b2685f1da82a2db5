"""Building blocks shared by the segmentation models (NHWC, Flax linen).

Conventions (chosen so PyTorch / timm weights drop in, see `bgmat.convert`):

* Padding is timm's symmetric PyTorch-style padding,
  `pad = ((stride - 1) + dilation * (kernel - 1)) // 2` on every side
  (`timm.layers.padding.get_padding`), not TF 'SAME'. For a 3x3 kernel that is
  `dilation` at stride 1 and 1 at stride 2; for 1x1 it is 0.
* Convolution kernels are HWIO: a k x k conv is `(k, k, C_in, C_out)`, a 1x1
  conv `(1, 1, C_in, C_out)`, a depthwise conv `(k, k, 1, C)`. Convolutions
  that feed a BatchNorm have no bias.
* BatchNorm `momentum` is Flax's (`1 - torch_momentum`: torch 0.1 -> 0.9).
  Running variance is updated with the biased batch variance (Flax), where
  torch uses the unbiased one; inference is identical.
* Compute happens in `dtype` (e.g. bfloat16 on GPU); parameters stay in
  `param_dtype` (float32).

Depthwise convolution has two implementations with the same parameters:

* 'grouped': `lax.conv_general_dilated(..., feature_group_count=C)`. Fast on
  GPU/TPU; XLA:CPU runs it 20-30x slower than PyTorch.
* 'shifted': the k*k shifted, per-channel multiply-adds over the padded input,
  with a `jax.custom_vjp` whose backward is again shifted multiply-adds (the
  input gradient is the same depthwise op on the stride-dilated output gradient
  with the flipped kernel). Fast on CPU.

`depthwise_impl='auto'` picks 'shifted' on the CPU backend and 'grouped'
elsewhere. 1x1 convolutions are a `dot_general` over the channel axis on every
backend.

Dense k x k convolution (`conv2d`) likewise has two implementations with the
same parameters: 'lax' (`lax.conv_general_dilated` forward and backward) and
'shifted', whose forward and input gradient are still XLA's convolution but
whose kernel gradient is k*k matrix products, one per tap, of the shifted
input and the output gradient over the N*H*W positions. XLA:CPU computes the
kernel gradient of some convolutions (stride-1 4x4, as in the PatchGAN) on a
generic path about 100x below its matmul speed
(`bench/xla_cpu_conv_kernel_grad_repro.py`). `conv_impl='auto'` picks
'shifted' on the CPU backend and 'lax' elsewhere.
"""
from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = Any

DEPTHWISE_IMPLS = ('auto', 'shifted', 'grouped')

# He (Kaiming) normal on fan-in: for a depthwise (k, k, 1, C) kernel fan-in is k*k.
default_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def get_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
  """timm's symmetric padding (`timm.layers.padding.get_padding`)."""
  return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def conv_out_size(size: int, kernel_size: int, stride: int, dilation: int, pad: int) -> int:
  return (size + 2 * pad - dilation * (kernel_size - 1) - 1) // stride + 1


def resolve_depthwise_impl(impl: str) -> str:
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f'depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'shifted' if jax.default_backend() == 'cpu' else 'grouped'
  return impl


# ---------------------------------------------------------------------------
# Dense convolution.

CONV_IMPLS = ('auto', 'shifted', 'lax')
Padding2D = tuple[tuple[int, int], tuple[int, int]]


def resolve_conv_impl(impl: str) -> str:
  if impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got {impl!r}')
  if impl == 'auto':
    return 'shifted' if jax.default_backend() == 'cpu' else 'lax'
  return impl


def conv2d_lax(x, kernel, stride: int, padding: Padding2D):
  """x (N, H, W, C_in), kernel (kh, kw, C_in, C_out) -> (N, h, w, C_out)."""
  return lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv2d_kernel_grad_shifted(x, g, kernel_shape, stride: int, padding: Padding2D):
  """d(sum g * conv2d(x, k)) / dk as one matrix product per kernel tap.

  dk[i, j] = sum over n, oh, ow of xp[n, i + s*oh, j + s*ow, :]^T g[n, oh, ow, :]
  with xp the zero-padded x: a (C_in, M) x (M, C_out) product, M = N*h*w,
  accumulated in float32. Returns float32 (kh, kw, C_in, C_out).
  """
  kh, kw = kernel_shape[0], kernel_shape[1]
  n, _, _, c = x.shape
  _, out_h, out_w, _ = g.shape
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  g2 = g.reshape(-1, g.shape[-1])
  rows = []
  for i in range(kh):
    row = []
    for j in range(kw):
      sl = lax.slice(xp, (0, i, j, 0),
                     (n, i + (out_h - 1) * stride + 1, j + (out_w - 1) * stride + 1, c),
                     (1, stride, stride, 1))
      row.append(lax.dot_general(sl.reshape(-1, c), g2, (((0,), (0,)), ((), ())),
                                 preferred_element_type=jnp.float32))
    rows.append(jnp.stack(row))
  return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_shifted(x, kernel, stride: int, padding: Padding2D):
  """`conv2d_lax` whose kernel gradient is `conv2d_kernel_grad_shifted`."""
  return conv2d_lax(x, kernel, stride, padding)


def _conv2d_shifted_fwd(x, kernel, stride, padding):
  return conv2d_lax(x, kernel, stride, padding), (x, kernel)


def _conv2d_shifted_bwd(stride, padding, res, g):
  x, kernel = res
  g = g.astype(x.dtype)
  _, input_vjp = jax.vjp(lambda x: conv2d_lax(x, kernel, stride, padding), x)
  dx, = input_vjp(g)
  dk = conv2d_kernel_grad_shifted(x, g, kernel.shape, stride, padding)
  return dx, dk.astype(kernel.dtype)


conv2d_shifted.defvjp(_conv2d_shifted_fwd, _conv2d_shifted_bwd)


def conv2d(x, kernel, *, stride: int = 1, padding: int | Padding2D = 0, impl: str = 'auto'):
  """Dense NHWC / HWIO convolution, no dilation, explicit zero padding.

  Args:
    x: (N, H, W, C_in) float.
    kernel: (kh, kw, C_in, C_out), same dtype as x.
    stride: spatial stride (both axes).
    padding: an int (same on every side) or ((top, bottom), (left, right)).
    impl: 'auto', 'shifted' or 'lax' (module docstring); every impl gives the
      same values up to float rounding.

  Returns:
    (N, (H + top + bottom - kh) // stride + 1, (W + ...) // stride + 1, C_out).

  Raises:
    ValueError: unknown impl.
  """
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  padding = tuple(tuple(int(p) for p in side) for side in padding)
  if resolve_conv_impl(impl) == 'lax':
    return conv2d_lax(x, kernel, stride, padding)
  return conv2d_shifted(x, kernel, stride, padding)


# ---------------------------------------------------------------------------
# Depthwise convolution.


def depthwise_conv_grouped(x, kernel, stride: int = 1, dilation: int = 1, padding: int = 0):
  """x (N, H, W, C), kernel (kh, kw, 1, C); symmetric zero padding."""
  return lax.conv_general_dilated(
      x, kernel,
      window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])


def _tap_reads_data(i, dilation, stride, out_size, valid):
  """Whether tap offset i*dilation reads any index of [valid[0], valid[1])."""
  first = i * dilation
  last = first + (out_size - 1) * stride
  return first < valid[1] and last >= valid[0]


def _shifted_taps(xp, kernel, stride, dilation, out_h, out_w, valid=None):
  """sum_ij xp[:, i*d + s*oh, j*d + s*ow, :] * kernel[i, j, 0, :] (no padding).

  valid: ((row_lo, row_hi), (col_lo, col_hi)), the region of xp outside which
  it is zero; taps whose reads all fall outside it are skipped (e.g. the
  off-centre taps of a dilated conv wider than its map, ASPP at small sizes).
  """
  kh, kw = kernel.shape[0], kernel.shape[1]
  n, hp, wp, c = xp.shape
  (row_lo, row_hi), (col_lo, col_hi) = valid or ((0, hp), (0, wp))
  acc = None
  for i in range(kh):
    if not _tap_reads_data(i, dilation, stride, out_h, (row_lo, row_hi)):
      continue
    for j in range(kw):
      if not _tap_reads_data(j, dilation, stride, out_w, (col_lo, col_hi)):
        continue
      sl = lax.slice(
          xp, (0, i * dilation, j * dilation, 0),
          (n, i * dilation + (out_h - 1) * stride + 1, j * dilation + (out_w - 1) * stride + 1, c),
          (1, stride, stride, 1))
      term = sl * kernel[i, j, 0]
      acc = term if acc is None else acc + term
  if acc is None:
    return jnp.zeros((n, out_h, out_w, c), xp.dtype)
  return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_conv_shifted(x, kernel, stride: int = 1, dilation: int = 1, padding: int = 0):
  """Same result as `depthwise_conv_grouped`, as k*k shifted multiply-adds."""
  return _dw_shifted_fwd(x, kernel, stride, dilation, padding)[0]


def _dw_shifted_fwd(x, kernel, stride, dilation, padding):
  kh, kw = kernel.shape[0], kernel.shape[1]
  _, h, w, _ = x.shape
  out_h = conv_out_size(h, kh, stride, dilation, padding)
  out_w = conv_out_size(w, kw, stride, dilation, padding)
  kernel = kernel.astype(x.dtype)
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  valid = ((padding, padding + h), (padding, padding + w))
  y = _shifted_taps(xp, kernel, stride, dilation, out_h, out_w, valid)
  return y, (x, kernel)


def _dw_shifted_bwd(stride, dilation, padding, res, g):
  x, kernel = res
  kh, kw = kernel.shape[0], kernel.shape[1]
  n, h, w, c = x.shape
  _, out_h, out_w, _ = g.shape
  g = g.astype(x.dtype)
  # Input gradient: dilate g by the stride, pad, and correlate with the
  # flipped kernel (stride 1, same dilation).
  lo_h = (kh - 1) * dilation - padding
  lo_w = (kw - 1) * dilation - padding
  hi_h = h + (kh - 1) * dilation - ((out_h - 1) * stride + 1) - lo_h
  hi_w = w + (kw - 1) * dilation - ((out_w - 1) * stride + 1) - lo_w
  gd = lax.pad(g, jnp.zeros((), g.dtype),
               ((0, 0, 0), (lo_h, hi_h, stride - 1), (lo_w, hi_w, stride - 1), (0, 0, 0)))
  valid = ((lo_h, lo_h + (out_h - 1) * stride + 1), (lo_w, lo_w + (out_w - 1) * stride + 1))
  dx = _shifted_taps(gd, kernel[::-1, ::-1], 1, dilation, h, w, valid)
  # Kernel gradient: per tap, a reduction of g * shifted input.
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  taps = []
  for i in range(kh):
    row = []
    for j in range(kw):
      if not (_tap_reads_data(i, dilation, stride, out_h, (padding, padding + h)) and
              _tap_reads_data(j, dilation, stride, out_w, (padding, padding + w))):
        row.append(jnp.zeros((c,), jnp.float32))  # reads only padding
        continue
      sl = lax.slice(
          xp, (0, i * dilation, j * dilation, 0),
          (n, i * dilation + (out_h - 1) * stride + 1, j * dilation + (out_w - 1) * stride + 1, c),
          (1, stride, stride, 1))
      row.append(jnp.sum((sl * g).astype(jnp.promote_types(sl.dtype, jnp.float32)), axis=(0, 1, 2)))
    taps.append(jnp.stack(row))
  dk = jnp.stack(taps)[:, :, None, :]
  return dx, dk.astype(kernel.dtype)


depthwise_conv_shifted.defvjp(_dw_shifted_fwd, _dw_shifted_bwd)


def depthwise_conv(x, kernel, *, stride: int = 1, dilation: int = 1, padding: int = 0,
                   impl: str = 'auto'):
  impl = resolve_depthwise_impl(impl)
  if impl == 'grouped':
    return depthwise_conv_grouped(x, kernel, stride, dilation, padding)
  return depthwise_conv_shifted(x, kernel, stride, dilation, padding)


class DepthwiseConv2D(nn.Module):
  """k x k depthwise conv, kernel param `kernel` of shape (k, k, 1, C), no bias."""
  kernel_size: int = 3
  stride: int = 1
  dilation: int = 1
  padding: Optional[int] = None  # None: timm symmetric padding
  depthwise_impl: str = 'auto'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = default_kernel_init

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, k, 1, c), self.param_dtype)
    pad = self.padding if self.padding is not None else get_padding(k, self.stride, self.dilation)
    x = x.astype(self.dtype)
    return depthwise_conv(x, kernel.astype(self.dtype), stride=self.stride,
                          dilation=self.dilation, padding=pad, impl=self.depthwise_impl)


def _pointwise(module, x):
  """1x1 conv as a `dot_general` (fast on XLA:CPU); kernel `(1, 1, C_in, C_out)`.

  Shared by `Conv1x1` and `Conv2D` (k == 1); creates the params in `module`.
  """
  c = x.shape[-1]
  kernel = module.param('kernel', module.kernel_init, (1, 1, c, module.features), module.param_dtype)
  if module.stride > 1:
    x = x[:, ::module.stride, ::module.stride, :]
  x = x.astype(module.dtype)
  y = lax.dot_general(x, kernel[0, 0].astype(module.dtype), (((x.ndim - 1,), (0,)), ((), ())))
  if module.use_bias:
    bias = module.param('bias', module.bias_init, (module.features,), module.param_dtype)
    y = y + bias.astype(module.dtype)
  return y


class Conv1x1(nn.Module):
  """1x1 conv as a dot over channels; kernel `(1, 1, C_in, C_out)`, optional bias."""
  features: int
  stride: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = default_kernel_init
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    return _pointwise(self, x)


class Conv2D(nn.Module):
  """Dense k x k conv with timm symmetric padding; kernel `(k, k, C_in, C_out)`.

  1x1 kernels go through `Conv1x1` (same parameter shapes).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  dilation: int = 1
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = default_kernel_init
  bias_init: Any = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    if k == 1:
      return self._conv1x1(x)
    c = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (k, k, c, self.features), self.param_dtype)
    pad = get_padding(k, self.stride, self.dilation)
    y = lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype),
        window_strides=(self.stride, self.stride),
        padding=((pad, pad), (pad, pad)),
        rhs_dilation=(self.dilation, self.dilation),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.use_bias:
      bias = self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      y = y + bias.astype(self.dtype)
    return y

  def _conv1x1(self, x):
    return _pointwise(self, x)


def batch_norm(train: bool, eps: float, momentum: float, dtype, param_dtype, name: str):
  # Two-pass variance (use_fast_variance=False): E[x^2] - E[x]^2 cancels
  # catastrophically in float32 where the mean is large against the spread
  # (e.g. BN over the few globally pooled values of the ASPP pooling branch),
  # and then gradients depend on the reduction order (sharded vs not).
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=eps,
                      dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, name=name)


class ConvBN(nn.Module):
  """conv (k x k, no bias) -> BatchNorm -> optional ReLU; submodules `conv`, `bn`.

  timm's `ConvNormAct` (stem, shortcut) and the 1x1 conv+BN+ReLU units of the
  DeepLab heads.
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  dilation: int = 1
  act: bool = True
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = Conv2D(self.features, self.kernel_size, self.stride, self.dilation, use_bias=False,
               dtype=self.dtype, param_dtype=self.param_dtype, name='conv')(x)
    x = batch_norm(train, self.bn_eps, self.bn_momentum, self.dtype, self.param_dtype, 'bn')(x)
    return nn.relu(x) if self.act else x


class SeparableConv2D(nn.Module):
  """Depthwise k x k (dilated) -> [BN -> act] -> pointwise 1x1 -> BN -> [act].

  With `dw_norm=True` this is timm's aligned-Xception `SeparableConv2d`
  (`conv_dw`, `bn_dw`, `act_dw`, `conv_pw`, `bn_pw`, `act_pw`): BN after the
  depthwise AND after the pointwise conv, a ReLU after each BN when `act`
  (timm passes `act_layer=None`, no ReLU at all, inside blocks that start with
  a ReLU). With `dw_norm=False` it is smp's `SeparableConv2d` + BN + ReLU
  (depthwise -> pointwise -> BN -> ReLU, no BN in between); the BN is still
  named `bn_pw`.
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  dilation: int = 1
  dw_norm: bool = True
  act: bool = True
  bn_eps: float = 1e-3
  bn_momentum: float = 0.9
  depthwise_impl: str = 'auto'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = DepthwiseConv2D(self.kernel_size, self.stride, self.dilation,
                        depthwise_impl=self.depthwise_impl, dtype=self.dtype,
                        param_dtype=self.param_dtype, name='conv_dw')(x)
    if self.dw_norm:
      x = batch_norm(train, self.bn_eps, self.bn_momentum, self.dtype, self.param_dtype, 'bn_dw')(x)
      if self.act:
        x = nn.relu(x)
    x = Conv1x1(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name='conv_pw')(x)
    x = batch_norm(train, self.bn_eps, self.bn_momentum, self.dtype, self.param_dtype, 'bn_pw')(x)
    if self.act:
      x = nn.relu(x)
    return x


# ---------------------------------------------------------------------------
# Resampling as small interpolation / pooling matrices (cheap dots on any backend).


def _interp_matrix(out_size: int, in_size: int, align_corners: bool) -> np.ndarray:
  """(out, in) bilinear weights, PyTorch `interpolate(mode='bilinear')` semantics."""
  m = np.zeros((out_size, in_size), np.float64)
  if in_size == 1:
    m[:, 0] = 1.0
    return m.astype(np.float32)
  i = np.arange(out_size, dtype=np.float64)
  if align_corners:
    src = i * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros_like(i)
  else:
    src = (i + 0.5) * (in_size / out_size) - 0.5
    src = np.maximum(src, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = src - i0
  np.add.at(m, (np.arange(out_size), i0), 1.0 - w1)
  np.add.at(m, (np.arange(out_size), i1), w1)
  return m.astype(np.float32)


def _adaptive_pool_matrix(out_size: int, in_size: int) -> np.ndarray:
  """(out, in) averaging weights, PyTorch `AdaptiveAvgPool2d` bins."""
  m = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m


def _apply_separable(x, mh: np.ndarray, mw: np.ndarray):
  mh = jnp.asarray(mh, x.dtype)
  mw = jnp.asarray(mw, x.dtype)
  x = jnp.einsum('oh,nhwc->nowc', mh, x, precision=lax.Precision.HIGHEST)
  return jnp.einsum('pw,nowc->nopc', mw, x, precision=lax.Precision.HIGHEST)


def resize_bilinear(x, size: Sequence[int], align_corners: bool = False):
  """Bilinear resize of NHWC `x` to `size` = (H, W), as torch's interpolate."""
  h, w = x.shape[1], x.shape[2]
  oh, ow = int(size[0]), int(size[1])
  if (h, w) == (oh, ow):
    return x
  if h == 1 and w == 1:
    return jnp.broadcast_to(x, (x.shape[0], oh, ow, x.shape[3]))
  return _apply_separable(x, _interp_matrix(oh, h, align_corners), _interp_matrix(ow, w, align_corners))


def adaptive_avg_pool(x, size: int | Sequence[int]):
  """torch `AdaptiveAvgPool2d(size)` for NHWC `x`."""
  if isinstance(size, int):
    size = (size, size)
  h, w = x.shape[1], x.shape[2]
  if tuple(size) == (1, 1):
    return jnp.mean(x, axis=(1, 2), keepdims=True)
  return _apply_separable(x, _adaptive_pool_matrix(size[0], h), _adaptive_pool_matrix(size[1], w))
