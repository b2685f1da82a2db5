r"""Where the time of the pre-segmentation train step goes: bgmat (JAX) vs the peer.

  python -m bench.profile_step                # Xception-65, smp head, 512 px, batch 2
  python -m bench.profile_step --size 256     # quicker
  python -m bench.profile_step --preset tiny --size 64 --peer_steps 1   # seconds

Ours: the smp-head twin's jitted `stages.PresegStage.step`, built with
bench/train_step.py's own config and batch helpers, one warm-up step, then
`jax.profiler.trace` over `--steps` steps. The Chrome trace
(`*.trace.json.gz`) has one event per XLA:CPU thunk (`args.hlo_op`); each is
classified from the compiled HLO: the opcodes inside the thunk's fusion, the
`op_name` metadata (`jvp(...)` = forward, `transpose(jvp(...))` = backward,
Flax module path such as `conv_dw` / `bn_pw`) and, for convolutions, the
window (a filter-gradient conv's window is the activation, not a 3x3 kernel).

Peer: smp `DeepLabV3Plus('tu-xception65')` eager NCHW, the step of
bench/peer_torch.py, under `torch.profiler` over `--steps` steps; self CPU time
by category (convolution kind from the weight shape) and the top ops.

Op times are summed over all threads, so they are "op-seconds"; the wall time
per step is printed next to them.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

from bench import peer_torch
from bench import train_step
import configs.matting as matting_configs

_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(')
_COMP = re.compile(r'^(?:ENTRY\s+)?%([\w.\-]+)\s')
_CALLS = re.compile(r'calls=%([\w.\-]+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_WINDOW = re.compile(r'window=\{size=([\dx]+)')

JAX_CATEGORIES = (
    'conv fwd (dense kxk)', 'conv bwd-data', 'conv bwd-filter',
    'depthwise fwd (shifted)', 'depthwise bwd (shifted)',
    'dot / 1x1 fwd', 'dot / 1x1 bwd', 'BN reductions fwd', 'BN reductions bwd',
    'BN elementwise', 'elementwise fusions', 'copies / transposes',
    'loss', 'optimizer update + grad norm', 'other')


def parse_hlo(text: str) -> dict[str, dict]:
  """HLO instruction name -> {opcode, op_name, body: {(opcode, line)}, comp, line}."""
  comps = collections.defaultdict(list)  # computation -> [(name, opcode, line)]
  current = None
  for line in text.splitlines():
    if not line.startswith(' ') and _COMP.match(line) and line.rstrip().endswith('{'):
      current = _COMP.match(line).group(1)
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      comps[current].append((m.group(1), m.group(3), line))
  instrs = {}
  for comp, lines in comps.items():
    for name, opcode, line in lines:
      op_name = _OP_NAME.search(line)
      body = set()
      calls = _CALLS.search(line)
      if calls:
        body = {(op, l) for _, op, l in comps.get(calls.group(1), ())}
      instrs[name] = dict(opcode=opcode, op_name=op_name.group(1) if op_name else '',
                          body=body, comp=comp, line=line)
  return instrs


def _filter_grad(conv_line: str) -> bool:
  """A conv whose window is an activation (> 7x7), not a kernel: a filter gradient."""
  window = _WINDOW.search(conv_line)
  return bool(window) and np.prod([int(d) for d in window.group(1).split('x')]) > 49


def classify(name: str, instr: dict | None) -> str:
  """One of JAX_CATEGORIES for the thunk of HLO instruction `name`."""
  if instr is None:
    return 'other'
  op_name = instr['op_name']
  ops = {op for op, _ in instr['body']} | {instr['opcode']}
  backward = 'transpose(jvp(' in op_name
  in_model = 'DeepLabV3Plus' in op_name
  path = op_name.split('/')
  if 'convolution' in ops:
    # Filter-gradient convs lose their op_name after layout passes; the window tells.
    lines = [l for op, l in instr['body'] if op == 'convolution'] or [instr['line']]
    if _filter_grad(lines[0]):
      return 'conv bwd-filter'
    return 'conv bwd-data' if backward else 'conv fwd (dense kxk)'
  if (instr['opcode'] in ('copy', 'transpose') or name.startswith(('copy', 'transpose'))
      or op_name.endswith('/transpose')):
    return 'copies / transposes'
  if in_model and 'conv_dw' in path:
    return 'depthwise bwd (shifted)' if backward else 'depthwise fwd (shifted)'
  if 'dot' in ops or op_name.endswith('dot_general'):
    return 'dot / 1x1 bwd' if backward else 'dot / 1x1 fwd'
  if in_model and any(p.startswith('bn') for p in path):
    if 'reduce' in ops:
      return 'BN reductions bwd' if backward else 'BN reductions fwd'
    return 'BN elementwise'
  if 'jvp()' in op_name:
    return 'loss'
  if op_name.startswith('jit(') and not in_model and 'jvp(' not in op_name:
    return 'optimizer update + grad norm'
  if in_model or instr['opcode'] == 'fusion':
    return 'elementwise fusions'
  return 'other'


def build_jax_step(preset: str, size: int, batch: int):
  """(compiled step, state, step args, compile s) of the smp-head twin, as train_step."""
  args = argparse.Namespace(preset=preset, batch=batch, size=size, dtype='float32')
  _, twin, _, _ = train_step._configs(args, on_gpu=False)  # pylint: disable=protected-access
  return train_step.compile_step(twin)


def build_matting_step(preset: str, size: int, batch: int):
  """(compiled step, state, step args, compile s) of the GAN matting step, as train_step."""
  config = matting_configs.get_config(preset)
  config.image_size, config.batch_size = size, batch
  return train_step.compile_step(config)


def profile_jax(preset: str, size: int, batch: int, steps: int, stage: str = 'preseg') -> dict:
  """Per-category and per-thunk op time of `steps` profiled steps."""
  build = build_jax_step if stage == 'preseg' else build_matting_step
  compiled, state, step_args, compile_s = build(preset, size, batch)
  instrs = parse_hlo(compiled.as_text())
  state, metrics = compiled(state, *step_args)  # Warm-up.
  jax.block_until_ready(metrics)
  log_dir = tempfile.mkdtemp(prefix='bgmat_profile_')
  try:
    with jax.profiler.trace(log_dir):
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = compiled(state, *step_args)
      jax.block_until_ready((state, metrics))
      wall = (time.perf_counter() - start) / steps
    paths = glob.glob(os.path.join(log_dir, '**', '*.trace.json.gz'), recursive=True)
    if not paths:
      raise RuntimeError(f'no *.trace.json.gz written under {log_dir}')
    with gzip.open(paths[0], 'rt') as f:
      trace = json.load(f)
  finally:
    shutil.rmtree(log_dir, ignore_errors=True)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  by_cat = collections.Counter()
  by_op = collections.Counter()
  unknown = 0
  for e in events:
    hlo_op = (e.get('args') or {}).get('hlo_op')
    if 'dur' not in e or not hlo_op or e['name'].startswith('end: '):
      continue
    instr = instrs.get(hlo_op)
    unknown += instr is None
    seconds = e['dur'] * 1e-6 / steps
    by_cat[classify(hlo_op, instr)] += seconds
    by_op[re.sub(r'\.\d+$', '', hlo_op)] += seconds
  if not by_cat:
    raise RuntimeError('the trace has no XLA:CPU thunk events (args.hlo_op)')
  return dict(wall=wall, by_cat=by_cat, by_op=by_op, compile_s=compile_s,
              unknown=unknown, thunks=len(instrs))


def _torch_category(name: str, shapes) -> str:
  """A JAX_CATEGORIES-like label for an aten op (conv kind from its weight shape)."""
  if 'conv' in name and 'backward' not in name.lower():
    weight = shapes[1] if len(shapes) > 1 and len(shapes[1]) == 4 else None
    kind = ('depthwise' if weight and weight[1] == 1 else
            '1x1' if weight and weight[2:] == [1, 1] else 'dense kxk')
    return f'conv fwd ({kind})'
  if name == 'aten::convolution_backward':
    weight = shapes[2] if len(shapes) > 2 and len(shapes[2]) == 4 else None
    kind = ('depthwise' if weight and weight[1] == 1 else
            '1x1' if weight and weight[2:] == [1, 1] else 'dense kxk')
    return f'conv bwd ({kind})'
  if 'batch_norm' in name:
    return 'BN bwd' if 'backward' in name else 'BN fwd'
  if '_foreach' in name or 'addcdiv' in name or 'lerp' in name or 'Optimizer.step' in name:
    return 'optimizer / clip (foreach)'
  if name in ('aten::copy_', 'aten::clone', 'aten::contiguous', 'aten::to', 'aten::_to_copy'):
    return 'copies'
  return 'other (elementwise, autograd, loss)'


def profile_torch(preset: str, size: int, batch: int, steps: int) -> dict:
  """Self CPU time per category and top ops of the eager peer step."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import profiler as tprof  # pylint: disable=g-import-not-at-top
  _, peer_arch, peer_width = train_step.PRESETS[preset]
  torch.manual_seed(0)
  model = peer_torch.build_peer(peer_arch, peer_width).train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
  rng = np.random.default_rng(0)
  image = torch.from_numpy(rng.random((batch, 3, size, size), np.float32)) * 2 - 1
  alpha = torch.from_numpy((rng.random((batch, 1, size, size)) > 0.5).astype(np.float32))

  def step():  # bench/peer_torch.py's step, eager NCHW.
    optimizer.zero_grad(set_to_none=True)
    loss = peer_torch._loss(model(image), alpha, 1.0, 0.5)  # pylint: disable=protected-access
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss

  float(step().detach())  # Warm-up.
  with tprof.profile(activities=[tprof.ProfilerActivity.CPU], record_shapes=True) as prof:
    start = time.perf_counter()
    for _ in range(steps):
      loss = step()
    float(loss.detach())
    wall = (time.perf_counter() - start) / steps
  by_cat = collections.Counter()
  by_op = collections.Counter()
  for avg in prof.key_averages(group_by_input_shape=True):
    seconds = avg.self_cpu_time_total * 1e-6 / steps
    by_op[avg.key] += seconds
    by_cat[_torch_category(avg.key, avg.input_shapes or [])] += seconds
  return dict(wall=wall, by_cat=by_cat, by_op=by_op, threads=torch.get_num_threads())


def table(counter: collections.Counter, wall: float, title: str, top: int = 0) -> list[str]:
  """Markdown rows: name, op-seconds per step, % of summed op time, % of wall step."""
  total = sum(counter.values())
  items = counter.most_common(top or None)
  lines = [f'| {title} | s / step | % of op time | % of wall step |', '|---|---|---|---|']
  for name, seconds in items:
    lines.append(f'| {name} | {seconds:.3f} | {100 * seconds / total:.1f}% | '
                 f'{100 * seconds / wall:.1f}% |')
  lines.append(f'| **sum of listed** | {sum(s for _, s in items):.3f} | | |')
  lines.append(f'| wall time per step | {wall:.3f} | | |')
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='full', choices=sorted(train_step.PRESETS))
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--steps', type=int, default=2, help='profiled steps per side')
  parser.add_argument('--peer_steps', type=int, default=0, help='0: --steps')
  parser.add_argument('--skip_peer', action='store_true')
  parser.add_argument('--stage', default='preseg', choices=['preseg', 'matting'],
                      help='matting: the GAN step (generator + PatchGAN); no peer')
  parser.add_argument('--out', default='', help='also write the tables (markdown) here')
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top
  lines = [f'jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__} '
           f'({torch.get_num_threads()} threads), {os.cpu_count()} CPU cores; preset '
           f'{args.preset}, {"smp head" if args.stage == "preseg" else "GAN matting step"}, '
           f'{args.size} px, batch {args.batch}']
  print(lines[0], flush=True)
  ours = profile_jax(args.preset, args.size, args.batch, args.steps, args.stage)
  lines += ['', f'bgmat JAX: compile {ours["compile_s"]:.1f} s, {ours["thunks"]} HLO '
            f'instructions, {ours["unknown"]} thunk events not found in the HLO', '']
  lines += table(ours['by_cat'], ours['wall'], 'bgmat JAX category') + ['']
  lines += table(ours['by_op'], ours['wall'], 'bgmat JAX thunk (name prefix)', 15)
  print('\n'.join(lines[1:]), flush=True)  # Ours before the peer is profiled (minutes).
  if not args.skip_peer and args.stage == 'preseg':
    peer = profile_torch(args.preset, args.size, args.batch, args.peer_steps or args.steps)
    printed = len(lines)
    lines += ['', f'PyTorch smp eager (NCHW), {peer["threads"]} threads', '']
    lines += table(peer['by_cat'], peer['wall'], 'PyTorch category') + ['']
    lines += table(peer['by_op'], peer['wall'], 'PyTorch op (self CPU)', 12)
    print('\n'.join(lines[printed:]))
  if args.out:
    train_step.write_table(args.out, 'bench.profile_step', argv, lines)


if __name__ == '__main__':
  main()
