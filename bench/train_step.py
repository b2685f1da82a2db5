r"""Train-step images/s and model FLOP utilisation, bgmat (JAX) vs a PyTorch peer.

  python -m bench.train_step --preset tiny --steps 1     # smoke test, seconds
  python -m bench.train_step --preset demo               # the CPU demo models, 128 px
  python -m bench.train_step --preset full --batch 2 --steps 3 \
      --out bench/results/train_step_cpu.md              # Xception-65 at 512 px
  python -m bench.train_step --preset full               # GPU: bf16, config batch

Rows, all on ONE device (per-device throughput; the step is the same jitted
function the training loop runs, on a one-device mesh):
  * preseg, the config's model (`configs/preseg.py:<preset>`, improved DeepLabV3+);
  * preseg, the same encoder with smp's DeepLabV3+ head (`head='smp'`): the
    JAX twin of the peer, parameter for parameter (tested);
  * preseg, the peer: segmentation_models_pytorch `DeepLabV3Plus('tu-xception65')`
    (for tiny/demo: timm's XceptionAligned with bgmat's xception_tiny layout),
    same batch, size, loss (BCE + 0.5 Dice), optimiser (AdamW + clipping), in
    each of `--peer_modes` (eager NCHW, channels_last, torch.compile; AMP bf16 on
    CUDA); ratio = ours(smp head) / peer images/s;
  * matting, the config's generator + multi-scale PatchGAN GAN step (no
    off-the-shelf PyTorch peer exists for this generator; ours only).

MFU = XLA cost-analysis FLOPs of one step / step time / peak. The peer's MFU
uses the FLOPs of its JAX twin (same architecture). Peak: a known accelerator's
dense bf16 peak (table below), `--peak_tflops`, or on CPU the best measured f32
matmul TFLOP/s ("measured matmul peak"). Timings are steady state: one warm-up
(compiling) step, then `--steps` timed steps.
"""

import argparse
import datetime
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import peer_torch
from bgmat import atomic
from bgmat import sharding
from bgmat import stages
from bgmat import train
import configs.matting as matting_configs
import configs.preseg as preseg_configs

# Dense bf16 peak TFLOP/s per device (vendor data sheets; SXM parts for GPUs).
PEAK_TFLOPS = {
    'h100': 989.0, 'h200': 989.0, 'a100': 312.0,
    'tpu v4': 275.0, 'tpu v5 lite': 197.0, 'tpu v5e': 197.0, 'tpu v5p': 459.0,
}

# (config argument, peer encoder, peer decoder width) per preset.
PRESETS = {
    'tiny': ('tiny', 'xception_tiny', 32),
    'demo': ('demo', 'xception_tiny', 32),
    'study': ('study', 'xception_small', 64),
    'full': ('full', 'xception65', 256),
}


def write_table(out: str, module: str, argv: list[str], lines: list[str]) -> None:
  """Writes a benchmark's markdown `lines` to `out` (atomically), headed by the
  command that made them (`python -m MODULE ARGV`)."""
  atomic.write_text(out, f'`python -m {module} {" ".join(argv)}`\n\n' + '\n'.join(lines) + '\n')


def xla_flops(compiled) -> float:
  """FLOPs of a compiled computation from XLA's cost analysis (0 if unknown)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per module.
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def measured_matmul_peak(size: int = 2048, repeats: int = 5) -> float:
  """Best f32 matmul TFLOP/s on the default device (the CPU 'peak')."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e12


def device_peak(device, override: float | None) -> tuple[float, str]:
  """(peak TFLOP/s, how it was obtained) for `device`."""
  if override:
    return override, 'given (--peak_tflops)'
  if device.platform == 'cpu':
    return measured_matmul_peak(), 'measured matmul peak (f32, 2048^2)'
  kind = device.device_kind.lower()
  for name, peak in PEAK_TFLOPS.items():
    if name in kind:
      return peak, f'{device.device_kind} dense bf16 data-sheet peak'
  raise SystemExit(f'Unknown accelerator {device.device_kind!r}: pass --peak_tflops.')


def _synthetic_batch(size: int, n: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  alpha = (rng.random((n, size, size, 1)) > 0.5).astype(np.float32)
  return {'image': rng.random((n, size, size, 3), np.float32), 'alpha': alpha,
          'fg': rng.random((n, size, size, 3), np.float32),
          'bg': rng.random((n, size, size, 3), np.float32),
          'trimap': np.full((n, size, size, 1), 0.5, np.float32), 'prior': alpha}


def compile_step(config):
  """(compiled step, state, step args, compile seconds) of `config.stage`'s jitted
  train step on one device, with a synthetic batch."""
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  if config.stage == 'matting':
    config.prior = 'perturbed_gt'  # No stage-1 model here; its cost is inference only.
  stage = stages.get(config)
  rng = jax.random.key(0, impl=config.rng_impl)
  init_fn, _, shardings = train.sharded_init(mesh, stage, rng)
  state = jax.jit(init_fn, out_shardings=shardings)(rng)
  batch = sharding.to_global(_synthetic_batch(config.image_size, config.batch_size), mesh)
  args = (batch, rng, None)
  start = time.perf_counter()
  compiled = jax.jit(stage.step, donate_argnums=0).lower(state, *args).compile()
  return compiled, state, args, time.perf_counter() - start


def bench_jax(config, steps: int) -> dict:
  """images/s, FLOPs/step and compile time of a stage's jitted train step."""
  compiled, state, args, compile_s = compile_step(config)
  state, metrics = compiled(state, *args)  # Warm-up.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, *args)
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - start
  if not np.isfinite(float(metrics['loss'])):
    raise RuntimeError(f'{config.model.name}: non-finite loss in the benchmark step')
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  return {'images_per_s': config.batch_size * steps / elapsed,
          'flops': xla_flops(compiled), 'compile_s': compile_s, 'params': params}


def _configs(args, on_gpu: bool):
  """(preseg, preseg with smp head, matting) configs of the preset."""
  config_arg, peer_arch, peer_width = PRESETS[args.preset]
  configs = []
  for module in (preseg_configs, matting_configs):
    config = module.get_config(config_arg)
    config.num_train_steps = max(config.num_train_steps, 2)
    if args.batch:
      config.batch_size = args.batch
    if args.size:
      config.image_size = args.size
    if args.dtype == 'bfloat16' or (args.dtype == 'auto' and on_gpu):
      config.model.kwargs.dtype = jnp.bfloat16
      if config.stage == 'matting':
        config.disc.kwargs.dtype = jnp.bfloat16
    configs.append(config)
  twin = configs[0].copy_and_resolve_references()
  # The peer's architecture in JAX: same encoder, smp's head, smp's widths.
  twin.model.kwargs = dict(twin.model.kwargs.to_dict(), head='smp', improved=False,
                           aspp_channels=peer_width, decoder_channels=peer_width,
                           low_level_channels=48)
  return configs[0], twin, configs[1], (peer_arch, peer_width)


def _row(stage, model, impl, config, dtype, ips, flops, peak, compile_s, ratio=''):
  mfu = f'{100 * flops * ips / config.batch_size / (peak * 1e12):.1f}%' if ips else '-'
  ips_text = f'{ips:.3g}' if ips else '-'
  gflop = f'{flops / config.batch_size / 1e9:.3g}' if flops else '-'
  first = f'{compile_s:.1f}' if compile_s is not None else '-'
  return (f'| {stage} | {model} | {impl} | {config.image_size} | {config.batch_size} | '
          f'{dtype} | {ips_text} | {gflop} | {mfu} | {first} | {ratio} |')


def run(args) -> list[str]:
  """Benchmarks the preset; returns the markdown lines it printed."""
  device = jax.devices()[0]
  on_gpu = device.platform == 'gpu'
  peak, peak_how = device_peak(device, args.peak_tflops)
  preseg, twin, matting, (peer_arch, peer_width) = _configs(args, on_gpu)
  dtype = 'bf16' if 'dtype' in preseg.model.kwargs else 'f32'
  import torch  # pylint: disable=g-import-not-at-top
  lines = [
      f'device: {device.device_kind} ({platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} CPU cores), jax {jax.__version__}, torch {torch.__version__} '
      f'({torch.get_num_threads()} threads), {datetime.date.today().isoformat()}',
      f'preset {args.preset}: {args.steps} timed steps after 1 warm-up step; peak '
      f'{peak:.3f} TFLOP/s per device ({peak_how})', '',
      '| stage | model | implementation | size | batch | dtype | images/s | GFLOP/image '
      '(XLA) | MFU | first step / compile s | ours / peer |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  for line in lines:
    print(line, flush=True)

  def emit(line):
    lines.append(line)
    print(line, flush=True)

  stages = set(args.stages.split(','))
  ours = mine = gan = None
  if 'preseg' in stages:
    ours, mine = _preseg_rows(args, preseg, twin, peer_arch, peer_width, dtype, peak, on_gpu,
                              emit)
  if 'matting' in stages:
    gan = bench_jax(matting, args.steps)
    emit(_row('matting', f'{matting.model.name} + {matting.disc.name}', 'bgmat JAX', matting,
              dtype, gan['images_per_s'], gan['flops'], peak, gan['compile_s']))
  emit('')
  counts = []
  if ours:
    counts += [f'{preseg.model.name} {ours["params"]:,}',
               f'smp-head twin {mine["params"]:,} (= the peer\'s)']
  if gan:
    counts.append(f'generator {gan["params"]:,}')
  emit(f'Parameters: {"; ".join(counts)}.')
  emit(f'Load average at the end (1/5/15 min): {" ".join(open("/proc/loadavg").read().split()[:3])}'
       if os.path.exists('/proc/loadavg') else '')
  return lines


def _preseg_rows(args, preseg, twin, peer_arch, peer_width, dtype, peak, on_gpu, emit):
  """Emits the pre-segmentation rows; returns (ours, smp-head twin) results."""
  ours = bench_jax(preseg, args.steps)
  emit(_row('preseg', preseg.model.name + (' (improved)' if preseg.model.kwargs.get(
      'improved') else ''), 'bgmat JAX', preseg, dtype, ours['images_per_s'], ours['flops'],
            peak, ours['compile_s']))
  mine = bench_jax(twin, args.steps)
  twin_name = f'DeepLabV3+ {peer_arch}, smp head'
  peer_rows = []
  if args.peer_modes:
    device_name = 'cuda' if on_gpu else 'cpu'
    for mode in args.peer_modes.split(','):
      result = peer_torch.bench_peer(
          peer_arch, peer_width, size=twin.image_size, batch=twin.batch_size,
          steps=args.steps, mode=mode, device=device_name, amp=on_gpu and dtype == 'bf16',
          lr=twin.opt.lr, bce_weight=twin.loss.bce, dice_weight=twin.loss.dice,
          grad_clip=twin.opt.grad_clip)
      peer_rows.append(result)
  best = max((r.images_per_s for r in peer_rows if r.images_per_s), default=None)
  ratio = f'{mine["images_per_s"] / best:.3g} (vs best peer)' if best else ''
  emit(_row('preseg', twin_name, 'bgmat JAX', twin, dtype, mine['images_per_s'],
            mine['flops'], peak, mine['compile_s'], ratio))
  for result in peer_rows:
    impl = f'PyTorch smp, {result.mode}'
    if result.error:
      impl += f' (failed: {result.error})'
    ratio = f'{mine["images_per_s"] / result.images_per_s:.3g}' if result.images_per_s else ''
    emit(_row('preseg', twin_name, impl, twin, dtype, result.images_per_s, mine['flops'],
              peak, result.first_step_s, ratio))
  return ours, mine


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='demo', choices=sorted(PRESETS))
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--batch', type=int, default=0, help='0: the config batch size')
  parser.add_argument('--size', type=int, default=0, help='0: the config image size')
  parser.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16'],
                      help='auto: bf16 on GPU, f32 on CPU')
  parser.add_argument('--peer_modes', default='eager,channels_last,compile',
                      help="comma-separated PyTorch modes; '' skips the peer")
  parser.add_argument('--peak_tflops', type=float, default=None)
  parser.add_argument('--stages', default='preseg,matting',
                      help='comma-separated: preseg (ours, twin, peer rows), matting')
  parser.add_argument('--out', default='', help='also write the table (markdown) here')
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error('--steps must be >= 1')
  lines = run(args)
  if args.out:
    write_table(args.out, 'bench.train_step', argv, lines)


if __name__ == '__main__':
  main()
