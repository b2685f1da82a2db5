"""Conditional multi-scale PatchGAN discriminator (pix2pixHD style).

Each scale is an N-layer PatchGAN (Isola et al. 2017) on concat(image, alpha):
4x4 convs with padding 2 (as in pix2pixHD), `n_layers` of them at stride 2
then one at stride 1, channels `base_channels` doubling up to
`max_channels`, LeakyReLU(0.2), no normalisation on the first layer, and a
final 4x4 conv to one channel of patch logits. Scale k sees the input
average-pooled k times with a 3x3 window, stride 2, padding 1 and
count_include_pad=False (exactly pix2pixHD's `AvgPool2d`), so spatial sizes
go H -> ceil(H / 2) -> ...

Every scale returns its logits and the activations of its hidden layers,
which is what a pix2pixHD feature-matching loss needs.

Normalisation (`norm` field): 'none' (default: every conv has a bias),
'instance' (instance norm without scale/bias, pix2pixHD's
`nn.InstanceNorm2d(affine=False)`) or 'batch' (BatchNorm; the caller must make
'batch_stats' mutable when training). Convs that feed a norm have no bias (the
norm would cancel it).

Why not instance norm by default: it divides every channel by its per-image
spread, and the spread of the first layers' edge responses is what tells a
sharp matte from a blurred one (blur lowers edge contrast). With it
the tiny preset stayed at chance against a blurred ground truth (held-out
LSGAN loss 0.26-0.28 after 50 steps, above the 0.25 of a constant output;
mean real - fake output at most 0.015), where 'none' reached 0.17-0.21 and
0.16-0.25 (seeds 0-2,
`tests/models/test_discriminator.py::test_learns_to_tell_real_from_blurred`).
Instance norm with a learnable scale and bias cannot restore the lost spread
and learned no faster in the same check.

Spectral normalisation (`spectral_norm=True`) wraps every conv in
`nn.SpectralNorm`. Its power-iteration vectors `u` and estimates `sigma` live
in the 'batch_stats' collection and are updated only when train=True, so the
caller must then apply with mutable=['batch_stats'] and keep the returned
state; with train=False they are read but not written.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from bgmat.models import layers

NORMS = ('instance', 'batch', 'none')


class PatchConv(nn.Module):
  """4x4 conv, padding 2 on every side (pix2pixHD), optional bias.

  The parameters are `nn.Conv`'s: `kernel` (4, 4, C_in, features) float32,
  LeCun-normal init, and `bias` (features,) zeros. `conv_impl` picks how the
  convolution is computed (`layers.conv2d`; 'auto' avoids XLA:CPU's slow
  kernel gradient of the stride-1 layer), never what it computes.
  """
  features: int
  strides: int
  use_bias: bool
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (4, 4, x.shape[-1], self.features), jnp.float32)
    y = layers.conv2d(x.astype(self.dtype), kernel.astype(self.dtype),
                      stride=self.strides, padding=2, impl=self.conv_impl)
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class PatchGAN(nn.Module):
  """One N-layer PatchGAN.

  Attributes:
    base_channels: channels of the first conv; doubled at every later conv.
    n_layers: number of stride-2 convs (the receptive field grows with it).
    max_channels: cap on the channel count.
    norm: 'none', 'instance' or 'batch' (see module docstring).
    spectral_norm: wrap every conv in nn.SpectralNorm.
    conv_impl: 'auto', 'shifted' or 'lax' (`layers.conv2d`): how, not what.
    dtype: compute dtype; parameters stay float32, logits are float32.
  """
  base_channels: int = 64
  n_layers: int = 3
  max_channels: int = 512
  norm: str = 'none'
  spectral_norm: bool = False
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  def _conv(self, x, filters, strides, use_bias, name, train):
    """4x4 conv with pix2pixHD's padding 2, optionally spectrally normed."""
    conv = PatchConv(filters, strides, use_bias, conv_impl=self.conv_impl,
                     dtype=self.dtype, name=name)
    if self.spectral_norm:
      return nn.SpectralNorm(conv, name=f'{name}_sn')(x, update_stats=train)
    return conv(x)

  def _norm(self, x, name, train):
    if self.norm == 'instance':
      return nn.InstanceNorm(epsilon=1e-5, use_bias=False, use_scale=False,
                             dtype=self.dtype, name=name)(x)
    if self.norm == 'batch':
      return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                          epsilon=1e-5, dtype=self.dtype, name=name)(x)
    return x

  @nn.compact
  def __call__(self, x, train: bool):
    """Patch logits for one scale.

    Args:
      x: (N, H, W, C) input (already normalised).
      train: updates BatchNorm / spectral-norm statistics when True.

    Returns:
      (logits, features): logits (N, h, w, 1) float32 and a list of the
      n_layers + 1 hidden activations (N, h_i, w_i, C_i) in `dtype`. Each
      stride-2 conv maps a size s to s // 2 + 1, each stride-1 conv to
      s + 1 (4x4 kernel, padding 2).
    """
    if self.norm not in NORMS:
      raise ValueError(f'norm must be one of {NORMS}, got {self.norm!r}')
    use_bias = self.norm == 'none'
    features = []
    channels = self.base_channels
    x = nn.leaky_relu(self._conv(x, channels, 2, True, 'conv0', train), 0.2)
    features.append(x)
    for i in range(1, self.n_layers + 1):
      channels = min(channels * 2, self.max_channels)
      # The last hidden conv keeps the resolution (stride 1), as pix2pixHD.
      strides = 2 if i < self.n_layers else 1
      x = self._conv(x, channels, strides, use_bias, f'conv{i}', train)
      x = nn.leaky_relu(self._norm(x, f'norm{i}', train), 0.2)
      features.append(x)
    logits = self._conv(x, 1, 1, True, f'conv{self.n_layers + 1}', train)
    return logits.astype(jnp.float32), features


class MultiScalePatchGAN(nn.Module):
  """`num_scales` PatchGANs on the input and its 2x, 4x, ... downsamples.

  Attributes:
    num_scales: number of discriminators; scale k sees 1 / 2**k resolution.
    Other fields: as in `PatchGAN`, shared by all scales.
  """
  num_scales: int = 3
  base_channels: int = 64
  n_layers: int = 3
  max_channels: int = 512
  norm: str = 'none'
  spectral_norm: bool = False
  conv_impl: str = 'auto'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image, alpha, train: bool = True):
    """Discriminates (image, alpha) pairs at every scale.

    Args:
      image: (N, H, W, 3) float RGB in [0, 1].
      alpha: (N, H, W, 1) float alpha in [0, 1] (real or generated).
      train: update BatchNorm / spectral-norm statistics; then the caller
        must apply with mutable=['batch_stats'].

    Returns:
      A list over scales (full resolution first) of (logits, features):
      logits (N, h_k, w_k, 1) float32, features a list of n_layers + 1
      hidden activations for feature matching.
    """
    if image.shape[:3] != alpha.shape[:3]:
      raise ValueError(f'image {image.shape} and alpha {alpha.shape} differ '
                       'in batch or spatial size')
    # Both inputs to [-1, 1], like the pix2pixHD / pix2pix conventions.
    x = jnp.concatenate([image, alpha], axis=-1).astype(jnp.float32)
    x = x * 2.0 - 1.0
    outputs = []
    for k in range(self.num_scales):
      if k:
        # Border windows average only the real pixels (no zero bleed).
        x = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                        count_include_pad=False)
      disc = PatchGAN(base_channels=self.base_channels,
                      n_layers=self.n_layers, max_channels=self.max_channels,
                      norm=self.norm, spectral_norm=self.spectral_norm,
                      conv_impl=self.conv_impl, dtype=self.dtype,
                      name=f'scale{k}')
      outputs.append(disc(x.astype(self.dtype), train))
    return outputs


patchgan_ms = functools.partial(MultiScalePatchGAN, num_scales=3,
                                base_channels=64, n_layers=3)
# For tests and the CPU demo.
patchgan_tiny = functools.partial(MultiScalePatchGAN, num_scales=2,
                                  base_channels=8, n_layers=2)

PRESETS: dict[str, Callable[..., MultiScalePatchGAN]] = {
    'patchgan_ms': patchgan_ms,
    'patchgan_tiny': patchgan_tiny,
}
