r"""Pre-segmentation inference time, bgmat (JAX) vs the same smp model in PyTorch.

  python -m bench.preseg_infer --preset tiny --size 64 --batches 1 --repeats 1  # smoke
  python -m bench.preseg_infer --preset full --size 512 --batches 1,8 \
      --out bench/results/preseg_infer_cpu.md      # Xception-65 at 512 px, CPU f32
  python -m bench.preseg_infer --preset full        # on a GPU: bf16 vs PyTorch AMP bf16

Rows per batch size, all on ONE device, random weights (time does not depend
on their values) and random photos:
  * ours, the config's model (`configs/preseg.py:<preset>`, improved head);
  * ours, the smp-head twin (`head='smp'`): parameter for parameter the
    peer's architecture (weight parity tested in tests/models/test_deeplab.py);
  * the peer: segmentation_models_pytorch `DeepLabV3Plus('tu-xception65')` in
    eval mode under `torch.inference_mode()`, in each of `--peer_modes`
    (eager NCHW, channels_last, torch.compile of the channels_last model; on
    CUDA with bf16 autocast).

Both sides compute logits -> sigmoid probability of the whole batch and wait for
it (`block_until_ready` / `cuda.synchronize`). Every implementation is first
warmed up (`--warmup` calls; compilation happens there: XLA's jit on ours,
torch.compile's graph capture and autotuning on the peer); then `--repeats`
rounds call each of them once, in an order rotated every round, so that all of
them see the same load (a shared host's throughput drifts by 20% and more over
minutes; timed one after the other, they would be compared across minutes).
Time per batch is an implementation's median over the rounds; ours / peer is
the median over the rounds of that round's time ratio, with its min-max
(lower is better for ours; the acceptance bar in issue 13 is <= 0.9 against
the best peer mode).
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import peer_torch
from bench import train_step as train_step_bench
from bgmat import models


def _warm(call, sync, warmup: int) -> float:
  """Runs `warmup` untimed calls (compilation happens in the first); returns
  the first call's seconds."""
  start = time.perf_counter()
  sync(call())
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    sync(call())
  return first


def time_interleaved(entries: list[dict], repeats: int) -> list[list[float]]:
  """Seconds per call of every warmed-up entry ({'call', 'sync'}), `repeats`
  rounds, each entry called once per round, the order rotated every round.

  Interleaving puts every implementation under the same load drift (a shared
  host's neighbours come and go over minutes): per-round ratios compare calls
  made seconds apart, where timing one implementation after the other would
  compare different minutes. Returns times[entry][round].
  """
  times = [[] for _ in entries]
  for r in range(repeats):
    for k in range(len(entries)):
      i = (k + r) % len(entries)
      start = time.perf_counter()
      entries[i]['sync'](entries[i]['call']())
      times[i].append(time.perf_counter() - start)
  return times


def prepare_ours(config, batch: int, size: int, warmup: int) -> dict:
  """The jitted eval forward + sigmoid of `config.model` on a random batch,
  warmed up: {'call', 'sync', 'first_s', 'params'}."""
  model = models.get_model(config.model.name, **config.model.kwargs.to_dict())
  image = jax.device_put(np.random.default_rng(0).random((batch, size, size, 3), np.float32))
  variables = jax.jit(lambda: model.init(jax.random.key(0), image[:1], train=False))()

  @jax.jit
  def predict(variables, image):
    return jax.nn.sigmoid(model.apply(variables, image, train=False).astype(jnp.float32))

  call = lambda: predict(variables, image)
  first = _warm(call, jax.block_until_ready, warmup)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))
  return {'call': call, 'sync': jax.block_until_ready, 'first_s': first, 'params': params}


def prepare_peer(arch: str, width: int, *, batch: int, size: int, mode: str, device: str,
                 amp: bool, warmup: int) -> dict:
  """The smp peer's eval forward + sigmoid, warmed up: {'call', 'sync',
  'first_s'}, or {'error': ...} if the mode fails (torch.compile without a C++
  compiler, say)."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = peer_torch.build_peer(arch, width).to(device).eval()
  rng = np.random.default_rng(0)
  image = torch.from_numpy(rng.random((batch, 3, size, size), np.float32)).to(device)
  image = (image - 0.5) / 0.5
  if mode in ('channels_last', 'compile'):
    model = model.to(memory_format=torch.channels_last)
    image = image.contiguous(memory_format=torch.channels_last)

  def forward(image):
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
      return torch.sigmoid(model(image).float())

  if mode == 'compile':
    forward = torch.compile(forward)

  def call():
    with torch.inference_mode():
      return forward(image)

  def sync(out):
    if device == 'cuda':
      torch.cuda.synchronize()
    return out

  try:
    first = _warm(call, sync, warmup)
  except Exception as e:  # pylint: disable=broad-except
    return {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:120]}'}
  return {'call': call, 'sync': sync, 'first_s': first}


def ratio_summary(ours: list[float], peer: list[float]) -> str:
  """'median (min-max)' of the per-round time ratios ours / peer."""
  ratios = [a / b for a, b in zip(ours, peer)]
  if len(ratios) == 1:
    return f'{ratios[0]:.3g}'
  return f'{statistics.median(ratios):.3g} ({min(ratios):.3g}-{max(ratios):.3g})'


def run(args) -> list[str]:
  """Benchmarks the preset at each batch size; returns the markdown lines."""
  device = jax.devices()[0]
  on_gpu = device.platform == 'gpu'
  targs = argparse.Namespace(preset=args.preset, batch=0, size=args.size, dtype=args.dtype)
  preseg, twin, _, (peer_arch, peer_width) = train_step_bench._configs(targs, on_gpu)  # pylint: disable=protected-access
  bf16 = 'dtype' in preseg.model.kwargs
  dtype = 'bf16' if bf16 else 'f32'
  size = preseg.image_size
  import torch  # pylint: disable=g-import-not-at-top
  torch_device = 'cuda' if on_gpu else 'cpu'
  lines = [
      f'device: {device.device_kind} ({platform.processor() or platform.machine()}, '
      f'{os.cpu_count()} CPU cores), jax {jax.__version__}, torch {torch.__version__} '
      f'({torch.get_num_threads()} threads), {datetime.date.today().isoformat()}',
      f'preset {args.preset}, {size} px, {dtype}; median of {args.repeats} interleaved '
      f'rounds (every implementation called once per round) after {args.warmup} warm-up '
      'call(s) each', '',
      '| batch | model | implementation | ms / batch | images/s | first call s | ours / peer '
      '(time) |', '|---|---|---|---|---|---|---|']
  for line in lines:
    print(line, flush=True)

  def emit(line):
    lines.append(line)
    print(line, flush=True)

  def row(batch, model, impl, result, ratio=''):
    if 'error' in result:
      return f'| {batch} | {model} | {impl} (failed: {result["error"]}) | - | - | - | |'
    return (f'| {batch} | {model} | {impl} | {1e3 * result["batch_s"]:.1f} | '
            f'{batch / result["batch_s"]:.2f} | {result["first_s"]:.1f} | {ratio} |')

  twin_name = f'DeepLabV3+ {peer_arch}, smp head'
  improved = preseg.model.name + (' (improved)' if preseg.model.kwargs.get('improved') else '')
  params = {}
  for batch in args.batches:
    ours = prepare_ours(preseg, batch, size, args.warmup)
    mine = prepare_ours(twin, batch, size, args.warmup)
    params = {'ours': ours['params'], 'twin': mine['params']}
    peers = [(mode, prepare_peer(peer_arch, peer_width, batch=batch, size=size, mode=mode,
                                 device=torch_device, amp=on_gpu and bf16,
                                 warmup=args.warmup))
             for mode in args.peer_modes]
    ok = [r for _, r in peers if 'error' not in r]
    timed = [ours, mine] + ok
    times = time_interleaved(timed, args.repeats)
    for entry, entry_times in zip(timed, times):
      entry['times'] = entry_times
      entry['batch_s'] = statistics.median(entry_times)
    best = min(ok, key=lambda r: r['batch_s']) if ok else None
    emit(row(batch, improved, 'bgmat JAX', ours,
             f'{ratio_summary(ours["times"], best["times"])} (vs best peer)' if best else ''))
    emit(row(batch, twin_name, 'bgmat JAX', mine,
             f'{ratio_summary(mine["times"], best["times"])} (vs best peer)' if best else ''))
    for mode, result in peers:
      label = f'PyTorch smp, {mode}' + (' + AMP bf16' if on_gpu and bf16 else '')
      ratio = ratio_summary(mine['times'], result['times']) if 'times' in result else ''
      emit(row(batch, twin_name, label, result, ratio))
    del ours, mine, peers, timed
  emit('')
  emit(f'Parameters: {preseg.model.name} {params.get("ours", 0):,}; smp-head twin '
       f'{params.get("twin", 0):,} (= the peer\'s). Ratios per row: the twin\'s time / that '
       'peer mode\'s time, the median over the interleaved rounds (min-max); the first '
       'two rows against the best peer mode (lowest median time).')
  if os.path.exists('/proc/loadavg'):
    emit('Load average at the end (1/5/15 min): '
         + ' '.join(open('/proc/loadavg').read().split()[:3]))
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='full', choices=sorted(train_step_bench.PRESETS))
  parser.add_argument('--size', type=int, default=512, help='square photo side (px)')
  parser.add_argument('--batches', default='1,8', help='comma-separated batch sizes')
  parser.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16'],
                      help='auto: bf16 on GPU (peer: AMP bf16), f32 on CPU')
  parser.add_argument('--peer_modes', default='eager,channels_last,compile',
                      help="comma-separated PyTorch modes; '' skips the peer")
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls first (>= 1)')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', default='', help='also write the table (markdown) here')
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  try:
    args.batches = [int(b) for b in args.batches.split(',')]
  except ValueError:
    parser.error(f'--batches must be comma-separated integers, got {args.batches!r}')
  if min(args.batches) < 1 or args.warmup < 1 or args.repeats < 1:
    parser.error('--batches, --warmup and --repeats must be >= 1')
  args.peer_modes = [m for m in args.peer_modes.split(',') if m]
  lines = run(args)
  if args.out:
    train_step_bench.write_table(args.out, 'bench.preseg_infer', argv, lines)

if __name__ == '__main__':
  main()
