"""Residual U-Net matting generator: (image, pre-segmentation) -> alpha.

The encoder is a ResNet (stage sizes as in flax `examples/imagenet`): a 7x7
stride-2 stem, a 3x3 max-pool and four residual stages at strides 4, 8, 16 and
32. Because alpha detail (hair, edges) lives at the finest scales, two extra
skips are kept besides the four stage outputs: a 3x3 conv at full resolution
and the stride-2 stem output. The decoder climbs back to the input resolution
with bilinear x2 upsampling, concatenation of the skip at that scale and two
3x3 conv-BN-ReLU layers (U-Net style), then a 3x3 conv gives one logit per
pixel and alpha = sigmoid(logit).

Inputs are padded (reflect, bottom/right) to a multiple of 32 and the output is
cropped back, so any input size works and every skip matches its upsampled
decoder feature exactly.

Normalisation: the RGB image in [0, 1] is standardised with the ImageNet
mean/std (so the RGB part of the stem can take timm ResNet weights), and the
pre-segmentation probability in [0, 1] is mapped to [-1, 1].
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bgmat.models import guided_filter

ModuleDef = Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The encoder downsamples 5 times (stem, max-pool, stages 2-4).
SIZE_MULTIPLE = 32


class ResNetBlock(nn.Module):
  """Basic residual block: two 3x3 convs (ResNet-18/34)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    # Zero-init the last scale so every block starts as the identity.
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides,
                           name='conv_proj')(residual)
      residual = self.norm(name='norm_proj')(residual)
    return nn.relu(residual + y)


class BottleneckResNetBlock(nn.Module):
  """Bottleneck block: 1x1, 3x3, 1x1 convs, 4x expansion (ResNet-50)."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * 4, (1, 1), self.strides,
                           name='conv_proj')(residual)
      residual = self.norm(name='norm_proj')(residual)
    return nn.relu(residual + y)


class DecoderBlock(nn.Module):
  """Bilinear x2 upsample, concat the skip, two 3x3 conv-BN-ReLU.

  Shapes: x (N, h, w, C), skip (N, 2h, 2w, S) -> (N, 2h, 2w, filters).
  """
  filters: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x, skip):
    n, h, w, _ = skip.shape
    x = jax.image.resize(x, (n, h, w, x.shape[-1]), method='bilinear')
    x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
    for _ in range(2):
      x = nn.relu(self.norm()(self.conv(self.filters, (3, 3))(x)))
    return x


class MattingGenerator(nn.Module):
  """ResNet encoder + U-Net decoder predicting a soft alpha matte.

  Attributes:
    stage_sizes: residual blocks per encoder stage (4 stages).
    block: 'basic' (ResNet-18/34) or 'bottleneck' (ResNet-50).
    width: channels of the stem and of the first stage (64 in ResNet); the
      stages use width * (1, 2, 4, 8) (times 4 for bottleneck blocks), the
      full-resolution skip width // 2, and the decoder
      width * (4, 2, 1, 1/2, 1/4) from stride 16 down to stride 1.
    decoder_min_width: lower bound on each decoder block's channels (0: none).
      ResNet's halving leaves the stride-2 and stride-1 decoder blocks, the
      ones that place the matte's edges, very thin at small widths (16 and 8
      channels at width 32); a floor widens only those blocks.
    dtype: compute dtype (e.g. jnp.bfloat16); parameters and the output stay
      float32.
    residual_prior: predict a correction to the pre-segmentation: logits =
      logit(preseg) + head(features), with the head initialised to zero, so
      training starts from the pre-segmentation used as alpha and learns to
      refine it (edges, hair) instead of first learning to copy it. Same
      parameters either way.
    guided_filter_radius: 0 (off), or r > 0: alpha = clip(GF(sigmoid(logits)),
      0, 1), the colour guided filter of radius r with the input photo as the
      guide (`guided_filter.py`; He et al. 2013; as a trainable last layer,
      Wu et al., CVPR 2018): the matte becomes locally affine in the photo's
      colour, closed-form matting's model, so its edges follow the photo's.
      No parameters: a checkpoint runs with it on or off.
    guided_filter_eps: the filter's regularisation (> 0; squared [0, 1]
      colour units).
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  width: int = 64
  decoder_min_width: int = 0
  dtype: Any = jnp.float32
  residual_prior: bool = False
  guided_filter_radius: int = 0
  guided_filter_eps: float = 1e-3

  @nn.compact
  def __call__(self, image, preseg, train: bool, return_logits: bool = False):
    """Predicts alpha.

    Args:
      image: (N, H, W, 3) float RGB in [0, 1]; any H, W.
      preseg: (N, H, W, 1) float pre-segmentation probability in [0, 1].
      train: batch statistics (True) or running averages (False) in
        BatchNorm; when True the caller must make 'batch_stats' mutable.
      return_logits: return the pre-sigmoid logits instead of alpha (for
        numerically stable losses); alpha == jax.nn.sigmoid(logits).

    Returns:
      (N, H, W, 1) float32 alpha in [0, 1] (or logits).
    Raises:
      ValueError: bad shapes or settings; return_logits with the guided
        filter on (its output is no sigmoid of a logit).
    """
    if self.block not in ('basic', 'bottleneck'):
      raise ValueError(f"block must be 'basic' or 'bottleneck', got "
                       f'{self.block!r}')
    if len(self.stage_sizes) != 4:
      raise ValueError(f'need 4 stage sizes, got {self.stage_sizes}')
    if return_logits and self.guided_filter_radius:
      raise ValueError('return_logits needs guided_filter_radius=0: the filtered alpha '
                       'is not the sigmoid of a logit')
    if image.shape[-1] != 3 or preseg.shape[-1] != 1:
      raise ValueError(f'expected image (N,H,W,3) and preseg (N,H,W,1), got '
                       f'{image.shape} and {preseg.shape}')
    out_height, out_width = image.shape[1:3]

    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             padding='SAME')
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.9, epsilon=1e-5, dtype=self.dtype)
    block_cls = (ResNetBlock if self.block == 'basic'
                 else BottleneckResNetBlock)

    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = jnp.concatenate([(image.astype(jnp.float32) - mean) / std,
                         preseg.astype(jnp.float32) * 2.0 - 1.0], axis=-1)
    # Reflect-pad to a multiple of 32 so all skips line up at x2 exactly;
    # reflection keeps image statistics near the border (zeros would not).
    pad_h = -out_height % SIZE_MULTIPLE
    pad_w = -out_width % SIZE_MULTIPLE
    if pad_h or pad_w:
      x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='reflect')
    x = x.astype(self.dtype)

    skips = []
    # Full-resolution skip: cheap but it carries the finest alpha detail.
    skips.append(nn.relu(norm(name='norm_full')(
        conv(self.width // 2, (3, 3), name='conv_full')(x))))
    y = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)),
             name='conv_stem')(x)
    y = nn.relu(norm(name='norm_stem')(y))
    skips.append(y)  # stride 2
    y = nn.max_pool(y, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        y = block_cls(self.width * 2**i, conv=conv, norm=norm,
                      strides=strides, name=f'stage{i + 1}_block{j + 1}')(y)
      skips.append(y)  # strides 4, 8, 16, 32

    # Decoder: from stride 32 down to stride 1, one skip per scale.
    y = skips.pop()
    decoder_widths = tuple(
        max(w, self.decoder_min_width) for w in
        (self.width * 4, self.width * 2, self.width, self.width // 2, self.width // 4))
    for i, filters in enumerate(decoder_widths):
      y = DecoderBlock(filters, conv=conv, norm=norm,
                       name=f'decoder{i + 1}')(y, skips.pop())
    head_init = (nn.initializers.zeros if self.residual_prior
                 else nn.linear.default_kernel_init)
    logits = nn.Conv(1, (3, 3), padding='SAME', dtype=self.dtype,
                     kernel_init=head_init, name='conv_alpha')(y)
    logits = logits[:, :out_height, :out_width].astype(jnp.float32)
    if self.residual_prior:
      prior = jnp.clip(preseg.astype(jnp.float32), 1e-4, 1.0 - 1e-4)
      logits = logits + jnp.log(prior) - jnp.log1p(-prior)
    if return_logits:
      return logits
    alpha = jax.nn.sigmoid(logits)
    if self.guided_filter_radius:
      alpha = jnp.clip(guided_filter.guided_filter(
          image, alpha, self.guided_filter_radius, self.guided_filter_eps), 0.0, 1.0)
    return alpha


generator_r18 = functools.partial(MattingGenerator, stage_sizes=(2, 2, 2, 2),
                                  block='basic')
generator_r34 = functools.partial(MattingGenerator, stage_sizes=(3, 4, 6, 3),
                                  block='basic')
generator_r50 = functools.partial(MattingGenerator, stage_sizes=(3, 4, 6, 3),
                                  block='bottleneck')
# For tests and the CPU demo: about 0.5M parameters.
generator_tiny = functools.partial(MattingGenerator, stage_sizes=(1, 1, 1, 1),
                                   block='basic', width=16)
# For the CPU study (256 px, trained in under an hour on 2 cores): ResNet-18's
# layout at half width, about 3.6M parameters.
generator_small = functools.partial(MattingGenerator, stage_sizes=(2, 2, 2, 2),
                                    block='basic', width=32)
# generator_small with its two finest decoder blocks (stride 2 and 1) at 32
# channels instead of 16 and 8: the study's probe of edge placement (README).
generator_small_fine = functools.partial(generator_small, decoder_min_width=32)

PRESETS: dict[str, Callable[..., MattingGenerator]] = {
    'generator_r18': generator_r18,
    'generator_r34': generator_r34,
    'generator_r50': generator_r50,
    'generator_tiny': generator_tiny,
    'generator_small': generator_small,
    'generator_small_fine': generator_small_fine,
}
