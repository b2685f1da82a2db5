"""Aligned Xception (DeepLab variant), a Flax port of timm's `xception_aligned`.

Structure, padding, BatchNorm epsilon (1e-3) and the output-stride logic follow
`timm.models.xception_aligned.XceptionAligned` (`xception41`, `xception65`,
`xception71`) exactly, so converted timm weights give the same outputs
(`bgmat.convert.timm_xception`). Parameter names mirror timm's flattened names
(`stem_0`, `stem_1`, `blocks_{i}` / `conv{1,2,3}` / `conv_dw`, `bn_dw`,
`conv_pw`, `bn_pw`, `shortcut` / `conv`, `bn`, and `head` for the classifier).

Input: an already normalized NHWC image (timm's xception weights expect
`(x - 0.5) / 0.5`). Output: a dict of features

  ==========  =========================================================  ==========
  key         what (timm `feature_info` module)                          channels
  ==========  =========================================================  ==========
  stride2     input of the strided conv3 of the 1st strided block,       128
              after its ReLU (`blocks.0.stack.act3`)
  stride4     same for the 2nd strided block (`blocks.1.stack.act3`;      256
              `blocks.2...` in xception71)
  stride8     same for the 3rd strided block (`blocks.2.stack.act3`;      728
              `blocks.4...` in xception71)
  stride16    same for the exit-flow strided block                       1024
              (`blocks.{n-2}.stack.act3`)
  final       output of the last block (`blocks.{n-1}`)                  2048
  logits      classifier logits (N, num_classes), float32, only when
              `num_classes > 0`
  ==========  =========================================================  ==========

Keys name the nominal stride (the one at output stride 32); a tap's actual
stride is `min(nominal, output_stride)`: with `output_stride=16` the exit-flow
block keeps stride 1 and the following convs are dilated (x2), with 8 the last
two strided blocks do (timm's rule, see `block_plan`). These are exactly the
taps timm's `features_only=True` / `forward_intermediates` return, and what
smp's `tu-xception*` encoders hand their decoders.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bgmat.models import layers

Dtype = Any


@dataclasses.dataclass(frozen=True)
class BlockCfg:
  """One `XceptionModule` (timm block_cfg entry)."""
  in_chs: int
  out_chs: tuple[int, int, int]
  stride: int = 1
  no_skip: bool = False
  start_with_relu: bool = True


def _blk(in_chs, out_chs, stride=1, **kw) -> BlockCfg:
  if isinstance(out_chs, int):
    out_chs = (out_chs,) * 3
  return BlockCfg(in_chs, tuple(out_chs), stride, **kw)


def _exit_flow(in_chs=728, mid=(728, 1024, 1024), last=(1536, 1536, 2048)):
  return (_blk(in_chs, mid, 2),
          _blk(mid[-1], last, 1, no_skip=True, start_with_relu=False))


XCEPTION41_BLOCKS = (
    _blk(64, 128, 2), _blk(128, 256, 2), _blk(256, 728, 2),
    *([_blk(728, 728, 1)] * 8),
    *_exit_flow())

XCEPTION65_BLOCKS = (
    _blk(64, 128, 2), _blk(128, 256, 2), _blk(256, 728, 2),
    *([_blk(728, 728, 1)] * 16),
    *_exit_flow())

XCEPTION71_BLOCKS = (
    _blk(64, 128, 2), _blk(128, 256, 1), _blk(256, 256, 2), _blk(256, 728, 1), _blk(728, 728, 2),
    *([_blk(728, 728, 1)] * 16),
    *_exit_flow())

# Tiny member of the family for tests and the CPU demo (trained from scratch):
# same entry/middle/exit layout, widths 8..128, 2 middle blocks.
XCEPTION_TINY_BLOCKS = (
    _blk(16, 24, 2), _blk(24, 32, 2), _blk(32, 64, 2),
    *([_blk(64, 64, 1)] * 2),
    *_exit_flow(64, (64, 96, 96), (128, 128, 128)))

# Small member for the CPU study (256 px, trained from scratch in under an hour
# on 2 cores): thin at high resolution (where XLA:CPU is memory bound), wider
# from stride 16 on (where the capacity is cheap): widths 24..320, 6 middle
# blocks.
XCEPTION_SMALL_BLOCKS = (
    _blk(24, 32, 2), _blk(32, 64, 2), _blk(64, 128, 2),
    *([_blk(128, 128, 1)] * 6),
    *_exit_flow(128, (128, 192, 192), (256, 256, 320)))


def _small_wide_blocks(middle_blocks: int):
  """`xception_small`'s entry flow to stride 16, then 256 channels there
  (`middle_blocks` middle blocks) and an exit flow up to 512."""
  return (_blk(24, 32, 2), _blk(32, 64, 2), _blk(64, 128, 2), _blk(128, 256, 1),
          *([_blk(256, 256, 1)] * middle_blocks),
          *_exit_flow(256, (256, 384, 384), (512, 512, 512)))


# Wider from stride 16 on than `xception_small` (the 16x16 map at 256 px,
# where width is cheap): middle 256, exit up to 512.
XCEPTION_SMALL_WIDE_BLOCKS = _small_wide_blocks(5)

# `xception_small_wide` with 10 middle blocks instead of 5 (Xception-65 has
# 16): more depth where the map is smallest (12x12 for a 192 px example), for
# what a from-scratch encoder gets wrong on real portraits (what is a person),
# at little compute. At the study's 3000 steps it did not help (validation IoU
# 0.920 vs 0.926, one seed; bench/results/preseg_wide_cpu.md).
XCEPTION_SMALL_DEEP_BLOCKS = _small_wide_blocks(10)

ARCH_CONFIGS = {
    'xception41': dict(block_cfg=XCEPTION41_BLOCKS, stem_chs=(32, 64)),
    'xception65': dict(block_cfg=XCEPTION65_BLOCKS, stem_chs=(32, 64)),
    'xception71': dict(block_cfg=XCEPTION71_BLOCKS, stem_chs=(32, 64)),
    'xception_tiny': dict(block_cfg=XCEPTION_TINY_BLOCKS, stem_chs=(8, 16)),
    'xception_small': dict(block_cfg=XCEPTION_SMALL_BLOCKS, stem_chs=(12, 24)),
    'xception_small_wide': dict(block_cfg=XCEPTION_SMALL_WIDE_BLOCKS, stem_chs=(12, 24)),
    'xception_small_deep': dict(block_cfg=XCEPTION_SMALL_DEEP_BLOCKS, stem_chs=(12, 24)),
}

# timm parameter counts (incl. the 1000-class head), from
# `sum(p.numel() for p in timm.create_model(arch).parameters())`, timm 1.0.31.
TIMM_PARAM_COUNTS = {
    'xception41': 26_969_560,
    'xception65': 39_916_312,
    'xception71': 42_338_736,
}


@dataclasses.dataclass(frozen=True)
class PlannedBlock:
  index: int
  cfg: BlockCfg
  stride: int      # stride actually applied (1 once output_stride is reached)
  dilation: int    # dilation of this block's 3x3 depthwise convs
  tap: str | None  # feature key of this block's tap, for nominally strided blocks
  tap_reduction: int | None  # timm `feature_info` reduction of the tap


def block_plan(block_cfg: Sequence[BlockCfg], output_stride: int = 32) -> list[PlannedBlock]:
  """Per-block stride/dilation/taps, exactly timm's `XceptionAligned.__init__` loop."""
  if output_stride not in (8, 16, 32):
    raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}')
  curr_dilation, curr_stride, nominal = 1, 2, 2
  plan = []
  for i, b in enumerate(block_cfg):
    stride, dilation, tap, red = b.stride, curr_dilation, None, None
    if b.stride > 1:
      tap, red = f'stride{nominal}', curr_stride
      nominal *= b.stride
      next_stride = curr_stride * b.stride
      if next_stride > output_stride:
        curr_dilation *= b.stride
        stride = 1
      else:
        curr_stride = next_stride
    plan.append(PlannedBlock(i, b, stride, dilation, tap, red))
  return plan


def feature_info(arch_or_cfg, output_stride: int = 32) -> list[dict]:
  """timm-style feature info: key, channels, reduction, timm module name."""
  cfg = ARCH_CONFIGS[arch_or_cfg]['block_cfg'] if isinstance(arch_or_cfg, str) else arch_or_cfg
  plan = block_plan(cfg, output_stride)
  info = [dict(key=p.tap, num_chs=p.cfg.out_chs[-2], reduction=p.tap_reduction,
               module=f'blocks.{p.index}.stack.act3') for p in plan if p.tap]
  final_red = 2
  for p in plan:
    final_red *= p.stride
  info.append(dict(key='final', num_chs=cfg[-1].out_chs[-1], reduction=final_red,
                   module=f'blocks.{len(cfg) - 1}'))
  return info


class XceptionBlock(nn.Module):
  """timm `XceptionModule` (non pre-activation). Returns (output, tap)."""
  out_chs: tuple[int, int, int]
  stride: int = 1
  dilation: int = 1
  no_skip: bool = False
  start_with_relu: bool = True
  bn_eps: float = 1e-3
  bn_momentum: float = 0.9
  depthwise_impl: str = 'auto'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    in_chs = x.shape[-1]
    skip = x
    if not self.no_skip and (self.out_chs[-1] != in_chs or self.stride != 1):
      skip = layers.ConvBN(self.out_chs[-1], 1, self.stride, act=False, bn_eps=self.bn_eps,
                           bn_momentum=self.bn_momentum, dtype=self.dtype,
                           param_dtype=self.param_dtype, name='shortcut')(x, train)
    tap = None
    for i in range(3):
      if self.start_with_relu:
        x = nn.relu(x)
      if i == 2:
        tap = x
      x = layers.SeparableConv2D(
          self.out_chs[i], 3, stride=self.stride if i == 2 else 1, dilation=self.dilation,
          dw_norm=True, act=not self.start_with_relu, bn_eps=self.bn_eps,
          bn_momentum=self.bn_momentum, depthwise_impl=self.depthwise_impl, dtype=self.dtype,
          param_dtype=self.param_dtype, name=f'conv{i + 1}')(x, train)
    if not self.no_skip:
      x = x + skip
    return x, tap


class Xception(nn.Module):
  """Aligned Xception backbone (+ optional ImageNet head).

  Attributes:
    block_cfg: tuple of `BlockCfg` (see `ARCH_CONFIGS`).
    stem_chs: channels of the two 3x3 stem convs (stride 2, 1).
    output_stride: 8, 16 or 32 (atrous rates replace the late strides).
    num_classes: classifier classes; 0 = no head (no `head` params).
    bn_eps / bn_momentum: BatchNorm epsilon (timm: 1e-3) and Flax momentum
      (timm torch momentum 0.1 -> 0.9).
    depthwise_impl: 'auto' | 'shifted' | 'grouped' (see `layers`).
    dtype: compute dtype; params are `param_dtype` (float32).
  """
  block_cfg: tuple[BlockCfg, ...] = XCEPTION65_BLOCKS
  stem_chs: tuple[int, int] = (32, 64)
  output_stride: int = 32
  num_classes: int = 1000
  bn_eps: float = 1e-3
  bn_momentum: float = 0.9
  depthwise_impl: str = 'auto'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False) -> dict:
    common = dict(bn_eps=self.bn_eps, bn_momentum=self.bn_momentum, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    x = layers.ConvBN(self.stem_chs[0], 3, 2, name='stem_0', **common)(x, train)
    x = layers.ConvBN(self.stem_chs[1], 3, 1, name='stem_1', **common)(x, train)
    feats = {}
    for p in block_plan(self.block_cfg, self.output_stride):
      b = p.cfg
      if b.in_chs != x.shape[-1]:
        raise ValueError(f'block {p.index}: config in_chs={b.in_chs} but input has {x.shape[-1]}')
      x, tap = XceptionBlock(b.out_chs, p.stride, p.dilation, b.no_skip, b.start_with_relu,
                             depthwise_impl=self.depthwise_impl, name=f'blocks_{p.index}',
                             **common)(x, train)
      if p.tap:
        feats[p.tap] = tap
    feats['final'] = x
    if self.num_classes > 0:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
      feats['logits'] = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                                 name='head')(pooled).astype(jnp.float32)
    return feats


def xception(arch: str, **kwargs) -> Xception:
  if arch not in ARCH_CONFIGS:
    raise ValueError(f'unknown xception arch {arch!r}; known: {sorted(ARCH_CONFIGS)}')
  return Xception(**ARCH_CONFIGS[arch], **kwargs)


xception41 = functools.partial(xception, 'xception41')
xception65 = functools.partial(xception, 'xception65')
xception71 = functools.partial(xception, 'xception71')
xception_tiny = functools.partial(xception, 'xception_tiny')

PRESETS = {
    'xception41': xception41,
    'xception65': xception65,
    'xception71': xception71,
    'xception_tiny': xception_tiny,
}
