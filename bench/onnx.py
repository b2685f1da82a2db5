r"""ONNX export of a trained run: alpha drift vs JAX, and ONNX Runtime CPU latency vs JAX.

  python -m bench.onnx --workdir /work/runs/demo_out/matting \
      --photos '/work/shared/data/portraits/image/*' --out bench/results/onnx_cpu.md

Exports the run with `bgmat.export_onnx` in both formats ('onnx': both stages
in one graph, dynamic batch and sides; 'onnx-rembg': rembg's u2net_custom
convention), then:
  * drift: max |alpha ONNX Runtime - alpha JAX| of the same two-stage function
    (`export_onnx.pipeline_fn` over the Remover's own jitted stages) on
    synthetic images, on `--max_photos` real photos (long side capped at
    `--max_side`) and on the held-out demo photos (skimage astronaut, matplotlib
    grace_hopper); and, separately, |ONNX - `Remover.alpha`| (what `bgmat remove`
    computes: Pillow letterbox and bucket padding instead of the graph's resizes);
  * latency: ms per batch of ONNX Runtime (CPU provider, all cores) and of the
    jitted JAX function, at the working size and at 512 px, batch 1 and 8;
    median of --repeats calls after one warm-up call (JAX compiles there).
ONNX / JAX: ONNX Runtime's time over JAX's in the same run (< 1: ONNX faster).
Real photos are read, never written.
"""

import argparse
import datetime
import glob
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

from bench import train_step as train_step_bench
from bgmat import export_onnx
from bgmat.inference import image_io
from bgmat.inference.remover import Remover
from bgmat import report_stats


def _demo_photos() -> list[tuple[str, np.ndarray]]:
  photos = []
  try:
    import skimage.data  # pylint: disable=g-import-not-at-top
    photos.append(('astronaut', skimage.data.astronaut()))
  except ImportError:
    pass
  try:
    import matplotlib.cbook  # pylint: disable=g-import-not-at-top
    with matplotlib.cbook.get_sample_data('grace_hopper.jpg') as f:
      photos.append(('grace_hopper', image_io.read_photo(f.name).rgb))
  except (ImportError, OSError):
    pass
  return photos


def _capped(rgb: np.ndarray, max_side: int) -> np.ndarray:
  height, width = rgb.shape[:2]
  scale = min(1.0, max_side / max(height, width))
  size = (max(32, round(height * scale)), max(32, round(width * scale)))
  if size == (height, width):
    return rgb
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return np.asarray(Image.fromarray(rgb).resize(size[::-1], Image.BILINEAR))


def _time(call, repeats: int) -> float:
  call()  # Warm-up: JAX compiles here; ONNX Runtime plans the shape.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def run(args) -> list[str]:
  remover = Remover.from_workdir(args.workdir)
  size = remover.working_size
  import onnxruntime  # pylint: disable=g-import-not-at-top
  lines = [f'machine: {report_stats.machine_name()}; jax {jax.__version__}, onnxruntime {onnxruntime.__version__}, '
           f'{datetime.date.today().isoformat()}, load average at start '
           f'{" ".join(f"{x:.2f}" for x in os.getloadavg())}',
           f'model: {args.workdir} (working size {size})', '']
  folder = tempfile.mkdtemp(prefix='bench_onnx_')
  exported = {}
  for fmt in export_onnx.FORMATS:
    start = time.perf_counter()
    exported[fmt] = export_onnx.export_remover(remover, os.path.join(folder, f'{fmt}.onnx'), fmt)
    done = exported[fmt]
    lines.append(f'- export {fmt}: {time.perf_counter() - start:.0f} s (jax2onnx conversion + '
                 f'validation), {os.path.getsize(done.path) / 2**20:.1f} MiB, inputs '
                 f'{done.inputs}, outputs {done.outputs}, validation max |diff| '
                 f'{done.max_abs_diff:.2e}')
    print(lines[-1], flush=True)
  sess = export_onnx.session(exported['onnx'].path)
  fn = jax.jit(export_onnx.pipeline_fn(remover.preseg_fn, remover.matting_fn, size))

  def onnx_alpha(batch):
    return sess.run(None, {'image': batch})[0]

  # Drift ---------------------------------------------------------------------
  rng = np.random.default_rng(0)
  sets = {'synthetic': [export_onnx.synthetic(h, w, rng)
                        for h, w in ((size, size), (480, 360), (300, 533), (512, 512))]}
  paths = sorted(glob.glob(args.photos))[:args.max_photos] if args.photos else []
  sets['real photos'] = [_capped(image_io.read_photo(p).rgb, args.max_side).astype(np.float32)
                         / 255.0 for p in paths]
  sets['demo photos'] = [_capped(rgb, args.max_side).astype(np.float32) / 255.0
                         for _, rgb in _demo_photos()]
  lines += ['', '| images | n | max abs(ONNX - JAX) | mean abs(ONNX - JAX) | '
            'max abs(ONNX - Remover.alpha) | mean abs(ONNX - Remover.alpha) |',
            '|---|---|---|---|---|---|']
  for name, images in sets.items():
    if not images:
      continue
    worst = means = rworst = rmeans = 0.0
    for image in images:
      got = onnx_alpha(image[None])[0, ..., 0]
      want = np.asarray(fn(image[None]))[0, ..., 0]
      worst = max(worst, float(np.max(np.abs(got - want))))
      means += float(np.mean(np.abs(got - want))) / len(images)
      rgb = np.round(image * 255).astype(np.uint8)
      removed = remover.alpha(rgb)
      rworst = max(rworst, float(np.max(np.abs(got - removed))))
      rmeans += float(np.mean(np.abs(got - removed))) / len(images)
    shapes = f'up to {args.max_side} px' if name != 'synthetic' else 'mixed sizes'
    lines.append(f'| {name} ({shapes}) | {len(images)} | {worst:.2e} | {means:.2e} | '
                 f'{rworst:.3f} | {rmeans:.4f} |')
    print(lines[-1], flush=True)

  # Latency ---------------------------------------------------------------------
  lines += ['', '| side | batch | ONNX Runtime ms / batch | JAX ms / batch | ONNX / JAX |',
            '|---|---|---|---|---|']
  for side in sorted({size, 512}):
    for batch in args.batches:
      images = np.stack([export_onnx.synthetic(side, side, rng) for _ in range(batch)])
      # pylint: disable=cell-var-from-loop
      onnx_s = _time(lambda: onnx_alpha(images), args.repeats)
      jax_s = _time(lambda: jax.block_until_ready(fn(images)), args.repeats)
      lines.append(f'| {side} | {batch} | {onnx_s * 1e3:.1f} | {jax_s * 1e3:.1f} | '
                   f'{onnx_s / jax_s:.2f} |')
      print(lines[-1], flush=True)
  lines += ['', 'Both run the full two-stage function on side x side inputs (pre-segmentation '
            f'at {size}, matting at the input size), f32, {args.repeats} timed calls after one '
            'warm-up. JAX: the Remover\'s jitted stages (depthwise convolutions as on CPU); ONNX: '
            'the exported graph (grouped depthwise convolutions).']
  return lines


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', default='/work/runs/demo_out/matting')
  parser.add_argument('--photos', default='', help='glob of real photos (read only)')
  parser.add_argument('--max_photos', type=int, default=10)
  parser.add_argument('--max_side', type=int, default=512)
  parser.add_argument('--batches', type=lambda s: [int(b) for b in s.split(',')], default=[1, 8])
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--out', default='', help='also write the table (markdown) here')
  args = parser.parse_args(argv)
  lines = run(args)
  print('\n'.join(lines))
  if args.out:
    train_step_bench.write_table(args.out, 'bench.onnx', argv, lines)


if __name__ == '__main__':
  main()
