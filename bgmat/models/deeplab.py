"""DeepLabV3+ with an aligned-Xception encoder, original and improved.

One module, `DeepLabV3Plus`, with flags:

head='paper' (DeepLabV3+, Chen et al. 2018, as in the TF DeepLab code):
  ASPP on the encoder's final features: a 1x1 conv, three atrous separable 3x3
  convs at rates (6, 12, 18) for output stride 16 (doubled for 8), and an
  image-pooling branch (global average pool -> 1x1 conv -> upsample); the five
  branches (`aspp_channels` each) are concatenated -> 1x1 projection
  (`aspp_channels`) -> dropout. Decoder: a 48-channel 1x1 projection of the
  stride-4 features, concatenated after the ASPP output upsampled to stride 4,
  -> two separable 3x3 convs of `decoder_channels` -> 1x1 logits, bilinearly
  upsampled to the input size. Every conv is followed by BN + ReLU; separable
  convs have BN + ReLU after the depthwise and after the pointwise conv (TF
  DeepLab's split separable conv). Bilinear resizes use half-pixel
  (align_corners=False) sampling to the exact target size, so any input size
  works.

head='smp': segmentation_models_pytorch 0.6 `DeepLabV3Plus` exactly (for its
  checkpoints, `bgmat.convert.smp_deeplabv3plus`): ASPP rates (12, 24, 36) even
  at output stride 16, separable convs as depthwise -> pointwise -> BN -> ReLU
  (no BN in between), ASPP dropout 0.5, an extra separable conv + BN + ReLU
  after the ASPP, ONE separable conv after the concat, all bilinear upsampling
  with align_corners=True, decoder BN eps 1e-5. smp upsamples by fixed factors
  (x4, x4) and so requires inputs divisible by the output stride; here the
  resizes go to the exact feature / input sizes, which is the same thing for
  such inputs and stays defined for others.

improved=True adds the method's two additions and nothing else:
  (a) pyramid image pooling: the ASPP image-pooling branch pools at several bin
      sizes (`pyramid_bins`, default (1, 2, 3, 6); torch AdaptiveAvgPool2d
      bins), each bin through its own 1x1 conv + BN + ReLU (`aspp_channels`),
      upsampled bilinearly to the feature size, and fused by concatenation ->
      1x1 conv + BN + ReLU (`pyramid_fuse`, back to `aspp_channels`), which is
      the branch output. Bin 1 IS the original image-pooling conv
      (`aspp/image_pool`), so the ASPP projection is unchanged.
  (b) stride-8 skip: the encoder's stride-8 features through a 1x1 conv + BN +
      ReLU (`skip8`, `skip8_channels`), upsampled to stride 4 and concatenated
      into the decoder after the 48-channel stride-4 projection; only the first
      decoder conv's input channels grow (by `skip8_channels`).
  The finer flags `pyramid_bins` / `use_stride8_skip` override `improved`.

Input: an image in [0, 1], NHWC; the module normalizes with `mean`/`std`
(default 0.5/0.5 -> [-1, 1], what timm's Xception weights expect) before the
encoder. Output: float32 logits (N, H, W, num_classes). In training
(`train=True`) BatchNorm uses batch statistics and updates `batch_stats` (pass
`mutable=['batch_stats']`) and dropout needs a 'dropout' rng.

The encoder submodule is named `encoder` (an `Xception` without head), so
converted timm encoder weights drop into `params['encoder']`.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from bgmat.models import layers
from bgmat.models import xception as xception_lib

Dtype = Any


class DeepLabV3Plus(nn.Module):
  """DeepLabV3+ segmentation model (see module docstring).

  Attributes:
    backbone: key of `xception.ARCH_CONFIGS` ('xception65', ..., 'xception_tiny').
    output_stride: encoder output stride, 8 or 16.
    num_classes: logit channels (1 = foreground/background).
    head: 'paper' or 'smp'.
    aspp_channels / decoder_channels / low_level_channels: widths (256/256/48).
    aspp_rates: None = head default ('paper': (6, 12, 18) * 16 / output_stride;
      'smp': (12, 24, 36)).
    aspp_dropout: None = head default ('paper': 0.1, 'smp': 0.5).
    improved: enable both additions (defaults of the two flags below).
    pyramid_bins: None = (1, 2, 3, 6) if improved else (1,); must contain 1.
    use_stride8_skip: None = improved.
    skip8_channels: width of the stride-8 projection (48).
    align_corners: None = head default ('paper': False, 'smp': True).
    bn_eps / bn_momentum: head BatchNorm (eps 1e-5, Flax momentum 0.9 = torch
      0.1); the encoder keeps timm's eps 1e-3.
    mean / std: input normalization applied to the [0, 1] image.
  """
  backbone: str = 'xception65'
  output_stride: int = 16
  num_classes: int = 1
  head: str = 'paper'
  aspp_channels: int = 256
  decoder_channels: int = 256
  low_level_channels: int = 48
  aspp_rates: Optional[tuple[int, int, int]] = None
  aspp_dropout: Optional[float] = None
  improved: bool = False
  pyramid_bins: Optional[tuple[int, ...]] = None
  use_stride8_skip: Optional[bool] = None
  skip8_channels: int = 48
  align_corners: Optional[bool] = None
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9
  mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
  std: tuple[float, float, float] = (0.5, 0.5, 0.5)
  depthwise_impl: str = 'auto'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  # Resolved settings ---------------------------------------------------------
  def _rates(self):
    if self.aspp_rates is not None:
      return tuple(self.aspp_rates)
    if self.head == 'smp':
      return (12, 24, 36)
    return tuple(r * 16 // self.output_stride for r in (6, 12, 18))

  def _bins(self):
    bins = self.pyramid_bins
    if bins is None:
      bins = (1, 2, 3, 6) if self.improved else (1,)
    bins = tuple(bins)
    if 1 not in bins:
      raise ValueError(f'pyramid_bins must contain 1 (the image-pooling branch), got {bins}')
    return bins

  def _skip8(self):
    return self.improved if self.use_stride8_skip is None else self.use_stride8_skip

  def _align(self):
    if self.align_corners is not None:
      return self.align_corners
    return self.head == 'smp'

  def _dropout(self):
    if self.aspp_dropout is not None:
      return self.aspp_dropout
    return 0.5 if self.head == 'smp' else 0.1

  @nn.compact
  def __call__(self, image, train: bool = False):
    if self.head not in ('paper', 'smp'):
      raise ValueError(f"head must be 'paper' or 'smp', got {self.head!r}")
    if self.output_stride not in (8, 16):
      raise ValueError(f'output_stride must be 8 or 16, got {self.output_stride}')
    smp = self.head == 'smp'
    align = self._align()
    common = dict(bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    sep = functools.partial(layers.SeparableConv2D, dw_norm=not smp, act=True,
                            depthwise_impl=self.depthwise_impl, **common)
    conv_bn = functools.partial(layers.ConvBN, kernel_size=1, act=True, **common)

    n, h, w, _ = image.shape
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    x = ((image.astype(jnp.float32) - mean) / std).astype(self.dtype)

    encoder = xception_lib.Xception(
        **xception_lib.ARCH_CONFIGS[self.backbone], output_stride=self.output_stride,
        num_classes=0, depthwise_impl=self.depthwise_impl, dtype=self.dtype,
        param_dtype=self.param_dtype, name='encoder')
    feats = encoder(x, train)

    # ASPP -------------------------------------------------------------------
    top = feats['final']
    fh, fw = top.shape[1], top.shape[2]
    branches = [conv_bn(self.aspp_channels, name='aspp_conv1x1')(top, train)]
    for i, rate in enumerate(self._rates()):
      branches.append(sep(self.aspp_channels, 3, dilation=rate, name=f'aspp_atrous_{i}')(top, train))
    pooled = []
    for b in self._bins():
      p = layers.adaptive_avg_pool(top, b)
      name = 'aspp_image_pool' if b == 1 else f'aspp_pyramid_pool_{b}'
      p = conv_bn(self.aspp_channels, name=name)(p, train)
      pooled.append(layers.resize_bilinear(p, (fh, fw), align))
    if len(pooled) > 1:
      pool_branch = conv_bn(self.aspp_channels, name='aspp_pyramid_fuse')(
          jnp.concatenate(pooled, axis=-1), train)
    else:
      pool_branch = pooled[0]
    branches.append(pool_branch)
    y = conv_bn(self.aspp_channels, name='aspp_project')(jnp.concatenate(branches, axis=-1), train)
    y = nn.Dropout(self._dropout(), deterministic=not train)(y)
    if smp:
      y = sep(self.aspp_channels, 3, name='aspp_sep')(y, train)

    # Decoder ----------------------------------------------------------------
    low = conv_bn(self.low_level_channels, name='low_level')(feats['stride4'], train)
    lh, lw = low.shape[1], low.shape[2]
    parts = [layers.resize_bilinear(y, (lh, lw), align), low]
    if self._skip8():
      s8 = conv_bn(self.skip8_channels, name='skip8')(feats['stride8'], train)
      parts.append(layers.resize_bilinear(s8, (lh, lw), align))
    y = jnp.concatenate(parts, axis=-1)
    for i in range(1 if smp else 2):
      y = sep(self.decoder_channels, 3, name=f'decoder_conv_{i}')(y, train)
    logits = layers.Conv1x1(self.num_classes, use_bias=True, dtype=self.dtype,
                            param_dtype=self.param_dtype, name='logits')(y)
    logits = layers.resize_bilinear(logits.astype(jnp.float32), (h, w), align)
    return logits


def deeplabv3plus(backbone: str = 'xception65', **kwargs) -> DeepLabV3Plus:
  return DeepLabV3Plus(backbone=backbone, **kwargs)


_TINY = dict(backbone='xception_tiny', aspp_channels=32, decoder_channels=32,
             low_level_channels=16, skip8_channels=16)
_SMALL = dict(backbone='xception_small', aspp_channels=96, decoder_channels=64,
              low_level_channels=24, skip8_channels=24)
_SMALL_WIDE = dict(_SMALL, aspp_channels=128)  # Its heads (backbone set per preset).

deeplabv3plus_xception65 = functools.partial(DeepLabV3Plus, backbone='xception65')
deeplabv3plus_xception65_improved = functools.partial(
    DeepLabV3Plus, backbone='xception65', improved=True)
deeplabv3plus_xception41 = functools.partial(DeepLabV3Plus, backbone='xception41')
deeplabv3plus_xception71 = functools.partial(DeepLabV3Plus, backbone='xception71')
deeplabv3plus_xception65_smp = functools.partial(DeepLabV3Plus, backbone='xception65', head='smp')
deeplabv3plus_tiny = functools.partial(DeepLabV3Plus, **_TINY)
deeplabv3plus_tiny_improved = functools.partial(DeepLabV3Plus, improved=True, **_TINY)
deeplabv3plus_small = functools.partial(DeepLabV3Plus, **_SMALL)
deeplabv3plus_small_wide = functools.partial(
    DeepLabV3Plus, **{**_SMALL_WIDE, 'backbone': 'xception_small_wide'})
deeplabv3plus_small_deep = functools.partial(
    DeepLabV3Plus, **{**_SMALL_WIDE, 'backbone': 'xception_small_deep'})

PRESETS = {
    'deeplabv3plus_xception65': deeplabv3plus_xception65,
    'deeplabv3plus_xception65_improved': deeplabv3plus_xception65_improved,
    'deeplabv3plus_xception41': deeplabv3plus_xception41,
    'deeplabv3plus_xception71': deeplabv3plus_xception71,
    'deeplabv3plus_xception65_smp': deeplabv3plus_xception65_smp,
    'deeplabv3plus_tiny': deeplabv3plus_tiny,
    'deeplabv3plus_tiny_improved': deeplabv3plus_tiny_improved,
    'deeplabv3plus_small': deeplabv3plus_small,
    'deeplabv3plus_small_wide': deeplabv3plus_small_wide,
    'deeplabv3plus_small_deep': deeplabv3plus_small_deep,
}
