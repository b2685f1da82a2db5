r"""The PyTorch peer of the pre-segmentation train step, for bench/train_step.py.

The peer is what people would use instead of bgmat's stage 1:
segmentation_models_pytorch's `DeepLabV3Plus(encoder_name='tu-xception65')`
(timm's aligned Xception-65 encoder, smp's DeepLabV3+ head), trained with
AdamW, gradient clipping and BCE + Dice, exactly the loss and optimiser of
`bgmat.stages.PresegStage.step`. Its JAX twin is
`DeepLabV3Plus(backbone=..., head='smp')` (weight parity is tested in
tests/models/test_deeplab.py), so both sides run the same architecture and the
XLA FLOP count of ours is the FLOP count of the peer.

For the `tiny`, `demo` and `study` presets the encoder is timm's
`XceptionAligned` with bgmat's `xception_tiny` / `xception_small` block layout,
registered in timm under `bgmat_xception_tiny` / `bgmat_xception_small` (at run
time, in this process only), so smp builds it like any timm encoder.

Modes: 'eager' (NCHW), 'channels_last', 'compile' (torch.compile of the whole
step's forward + loss; needs a C++ compiler on CPU) and, on CUDA, AMP bf16
autocast on top of each. A mode that fails is reported with its error instead
of a number.
"""

import dataclasses
import functools
import time

import numpy as np

from bgmat.models import xception as xception_lib

# bgmat's own layouts, registered in timm as `bgmat_<name>`.
BGMAT_LAYOUTS = ('xception_tiny', 'xception_small')


def _register_encoder(layout: str) -> str:
  """Registers bgmat's `layout` as a timm model (idempotent); returns its name."""
  import timm  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from timm.layers import ConvNormAct  # pylint: disable=g-import-not-at-top
  from timm.models import xception_aligned  # pylint: disable=g-import-not-at-top
  name = f'bgmat_{layout}'
  if timm.list_models(name):
    return name
  arch = xception_lib.ARCH_CONFIGS[layout]
  block_cfg = [dataclasses.asdict(b) for b in arch['block_cfg']]
  stem_0, stem_1 = arch['stem_chs']

  class NarrowXceptionAligned(xception_aligned.XceptionAligned):
    """timm's XceptionAligned with the layout's narrower stem (timm's is 32, 64)."""

    def __init__(self, **kwargs):
      super().__init__(**kwargs)
      norm = kwargs['norm_layer']
      self.stem = torch.nn.Sequential(
          ConvNormAct(3, stem_0, kernel_size=3, stride=2, norm_layer=norm),
          ConvNormAct(stem_0, stem_1, kernel_size=3, stride=1, norm_layer=norm))

  def build(pretrained=False, **kwargs):
    norm = functools.partial(torch.nn.BatchNorm2d, eps=1e-3, momentum=0.1)
    # 'xception41' only names the (unused) pretrained config.
    return xception_aligned.build_model_with_cfg(
        NarrowXceptionAligned, 'xception41', pretrained,
        feature_cfg=dict(flatten_sequential=True, feature_cls='hook'),
        **dict(dict(block_cfg=[dict(b) for b in block_cfg], norm_layer=norm), **kwargs))

  build.__name__ = name
  build.__module__ = __name__
  timm.models.register_model(build)
  return name


def build_peer(arch: str, decoder_channels: int):
  """smp DeepLabV3Plus with timm encoder `arch` ('xception65', or one of
  BGMAT_LAYOUTS)."""
  import segmentation_models_pytorch as smp  # pylint: disable=g-import-not-at-top
  if arch in BGMAT_LAYOUTS:
    arch = _register_encoder(arch)
  return smp.DeepLabV3Plus(encoder_name=f'tu-{arch}', encoder_weights=None,
                           decoder_channels=decoder_channels, classes=1)


def param_count(module) -> int:
  return sum(p.numel() for p in module.parameters())


def _loss(logits, alpha, bce_weight: float, dice_weight: float):
  """BCE + soft Dice on a hard target, as `bgmat.losses.seg_loss`."""
  import torch  # pylint: disable=g-import-not-at-top
  logits = logits.float()
  target = (alpha >= 0.5).float()
  loss = bce_weight * torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
  if dice_weight:
    prob = torch.sigmoid(logits)
    overlap = (prob * target).sum(dim=(1, 2, 3))
    total = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    loss = loss + dice_weight * (1.0 - (2.0 * overlap + 1.0) / (total + 1.0)).mean()
  return loss


@dataclasses.dataclass
class PeerResult:
  mode: str
  images_per_s: float | None
  first_step_s: float | None
  error: str = ''


def bench_peer(arch: str, decoder_channels: int, *, size: int, batch: int, steps: int,
               mode: str, device: str = 'cpu', amp: bool = False, lr: float = 1e-3,
               bce_weight: float = 1.0, dice_weight: float = 0.5,
               grad_clip: float = 1.0) -> PeerResult:
  """Images/s of the peer's train step (steady state, after one warm-up step).

  Args:
    mode: 'eager', 'channels_last' or 'compile' (compile also uses channels_last).
    amp: bf16 autocast (CUDA only).
  """
  import torch  # pylint: disable=g-import-not-at-top
  label = mode + (' + AMP bf16' if amp else '')
  torch.manual_seed(0)
  model = build_peer(arch, decoder_channels).to(device).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
  rng = np.random.default_rng(0)
  image = torch.from_numpy(rng.random((batch, 3, size, size), np.float32)).to(device)
  alpha = torch.from_numpy((rng.random((batch, 1, size, size)) > 0.5).astype(np.float32))
  alpha = alpha.to(device)
  # smp's timm encoders expect the same (x - 0.5) / 0.5 normalisation as ours.
  image = (image - 0.5) / 0.5
  if mode in ('channels_last', 'compile'):
    model = model.to(memory_format=torch.channels_last)
    image = image.contiguous(memory_format=torch.channels_last)

  def forward_loss(image, alpha):
    with torch.autocast(device_type=device.split(':')[0], dtype=torch.bfloat16, enabled=amp):
      logits = model(image)
    return _loss(logits, alpha, bce_weight, dice_weight)

  if mode == 'compile':
    forward_loss = torch.compile(forward_loss)

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = forward_loss(image, alpha)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss

  def sync():
    if device.startswith('cuda'):
      torch.cuda.synchronize()

  try:
    start = time.perf_counter()
    float(step().detach())
    sync()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
      loss = step()
    float(loss.detach())
    sync()
    elapsed = time.perf_counter() - start
  except Exception as e:  # pylint: disable=broad-except
    # torch.compile fails in many ways (no compiler, unsupported op): report it.
    return PeerResult(label, None, None, f'{type(e).__name__}: {str(e).splitlines()[0][:120]}')
  return PeerResult(label, batch * steps / elapsed, first)
