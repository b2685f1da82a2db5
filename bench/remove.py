r"""Latency and memory of `bgmat remove` on this machine (CPU or GPU).

  python -m bench.remove                           # random demo-preset models
  python -m bench.remove --workdir runs/demo/matting
  python -m bench.remove --export bgmat_demo.bgmat --sizes 512,1024 --images 50

Prints, as a markdown table: per square photo size, the first call (compile
of its bucket included) and the median of the next calls of `Remover.alpha`
(pre-segmentation at the working size + matting at the photo's size, or in
tiles above the largest bucket). Then `process_inputs` (decode, matte, blur-
fusion foreground, RGBA PNG write) over a folder of `--images` photos of four
sizes: the peak RSS (psutil, sampled after every photo) and its growth from
photo 20 to the last. With neither --workdir nor --export, the models are the
`demo` configs' presets with random weights (latency does not depend on the
weights).

  python -m bench.remove --sizes '' --images 0 --mixed-sizes 300
  python -m bench.remove --sizes '' --images 0 --large-mp 24

`--mixed-sizes N`: the same folder run over N photos of random sizes (long
side 256-1600 px, aspect 1:2 to 2:1, seeded), the case where every new size
used to compile again: RSS at photo 50 and at photo N and the growth between
them (the bound promised: under 5%), and the peak. `--large-mp M`: one photo
of about M megapixels (3:2), alpha + RGBA write: its wall time and the
process's peak RSS (`ru_maxrss`, so run it in its own invocation).
"""

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time

import jax
import numpy as np
from PIL import Image
import psutil

from bgmat.inference import compile_cache
from bgmat.inference import remover as remover_lib
from bgmat.inference import resolution

# The folder for the memory run: a few sizes, as from a few cameras, so the
# count of compiled functions (buckets, and blur fusion per size) stays bounded.
FOLDER_SIZES = ((480, 640), (640, 480), (600, 600), (300, 400))


def _random_demo_remover(buckets) -> remover_lib.Remover:
  """The demo configs' models with random weights (flax init)."""
  import configs.matting as matting_configs  # pylint: disable=g-import-not-at-top
  import configs.preseg as preseg_configs  # pylint: disable=g-import-not-at-top
  matting_config = matting_configs.get_config('demo')
  return remover_lib.Remover.from_configs(preseg_configs.get_config('demo').model,
                                          matting_config.model, matting_config.image_size,
                                          buckets=buckets)


def synthetic_photo(height: int, width: int, seed: int) -> np.ndarray:
  """(height, width, 3) uint8: a gradient with seeded noise (times do not depend on content)."""
  yy, xx = np.mgrid[:height, :width]
  base = np.stack([yy * 255 // height, xx * 255 // width, (yy + xx) % 256], axis=-1)
  noise = np.random.default_rng(seed).integers(0, 40, size=(height, width, 3))
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def _latency(remover, size: int, repeats: int) -> tuple[float, float, str]:
  image = synthetic_photo(size, size, size)
  start = time.perf_counter()
  remover.alpha(image)
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    remover.alpha(image)
    times.append(time.perf_counter() - start)
  p = resolution.plan(size, size, remover.buckets, remover.max_side)
  how = (f'bucket {p.bucket[0]}x{p.bucket[1]}' if p.bucket else
         f'{len(resolution.tiles(*p.size, p.tile, remover.tile_overlap))} tiles of '
         f'{p.tile[0]}x{p.tile[1]}')
  return first, statistics.median(times), how


def mixed_sizes(count: int, seed: int = 0) -> list[tuple[int, int]]:
  """`count` random (height, width): long side 256-1600 px, aspect 1:2 to 2:1."""
  rng = np.random.default_rng(seed)
  sizes = []
  for _ in range(count):
    long_side = int(rng.integers(256, 1601))
    short_side = int(rng.integers(long_side // 2, long_side + 1))
    sizes.append((long_side, short_side) if rng.random() < 0.5 else (short_side, long_side))
  return sizes


def _memory(remover, count: int, batch_size: int,
            sizes: list[tuple[int, int]] | None = None) -> dict:
  process = psutil.Process()
  rss = []
  sizes = sizes or [FOLDER_SIZES[i % len(FOLDER_SIZES)] for i in range(count)]
  with tempfile.TemporaryDirectory() as tmp:
    src, out = os.path.join(tmp, 'photos'), os.path.join(tmp, 'out')
    os.makedirs(src)
    for i in range(count):
      height, width = sizes[i]
      Image.fromarray(synthetic_photo(height, width, i)).save(os.path.join(src, f'{i:05d}.jpg'),
                                                     quality=90)

    def sample(line):
      if ' -> ' in line:
        rss.append(process.memory_info().rss)
      elif line.startswith('error'):
        print(line)

    start = time.perf_counter()
    summary = remover_lib.process_inputs(remover, [src], out, batch_size=batch_size,
                                         log=sample)
    seconds = time.perf_counter() - start
  assert len(summary.written) == count, summary.failures
  mib = lambda b: b / 2**20
  return {'rss_mib': [mib(r) for r in rss],
          'peak_mib': mib(max(rss)), 'at20_mib': mib(rss[min(19, len(rss) - 1)]),
          'mid_mib': mib(rss[len(rss) // 2 - 1]),
          'last_mib': mib(rss[-1]), 'growth_mib': mib(rss[-1] - rss[min(19, len(rss) - 1)]),
          'images_per_s': count / seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  model = parser.add_mutually_exclusive_group()
  model.add_argument('--workdir', help='A trained matting run.')
  model.add_argument('--export', help='A `bgmat export` file.')
  parser.add_argument('--sizes', default='512,1024,2048', help='Square photo sides.')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--images', type=int, default=200, help='Photos in the memory run.')
  parser.add_argument('--batch-size', type=int, default=1)
  parser.add_argument('--mixed-sizes', type=int, default=0,
                      help='Photos of random sizes in a second folder run (0: none).')
  parser.add_argument('--large-mp', type=float, default=0,
                      help='Megapixels of one large photo to time (0: none).')
  parser.add_argument('--max-compiled', type=int, default=compile_cache.DEFAULT_BUDGET,
                      help='Distinct shapes kept compiled, as `bgmat remove --max-compiled`.')
  parser.add_argument('--compilation-cache', default=None,
                      help='Persistent compilation cache folder (default: a new empty one, '
                      "a first run's cold cache; none: off).")
  args = parser.parse_args()
  compile_cache.set_budget(args.max_compiled)
  cache_tmp = None
  if args.compilation_cache is None:
    cache_tmp = tempfile.TemporaryDirectory()
    args.compilation_cache = cache_tmp.name
  compile_cache.use_persistent_cache(args.compilation_cache)
  buckets = resolution.Buckets()
  if args.workdir:
    remover, source = remover_lib.Remover.from_workdir(args.workdir, buckets=buckets), args.workdir
  elif args.export:
    remover, source = remover_lib.Remover.from_export(args.export, buckets=buckets), args.export
  else:
    remover = _random_demo_remover(buckets)
    source = 'demo presets (deeplabv3plus_tiny + generator_tiny), random weights'
  cache_note = ('off' if args.compilation_cache == 'none' else
                'on, empty at the start' if cache_tmp else f'in {args.compilation_cache}')
  device = jax.devices()[0]
  print(f'bgmat remove benchmark: {source}; working size {remover.working_size}; '
        f'device {device.platform} ({device.device_kind}), {os.cpu_count()} CPUs, '
        f'{platform.machine()}, jax {jax.__version__}; at most {compile_cache.budget()} '
        f'shapes kept compiled, persistent compilation cache {cache_note}\n')
  latency_sizes = [int(s) for s in args.sizes.split(',') if s.strip()]
  if latency_sizes:
    print('| photo | matting | first call (s, compile incl.) | median (s) | images/s |')
    print('|---|---|---|---|---|')
  for size in latency_sizes:
    first, median, how = _latency(remover, size, args.repeats)
    print(f'| {size}x{size} | {how} | {first:.2f} | {median:.3f} | {1 / median:.2f} |',
          flush=True)
  if args.images:
    mem = _memory(remover, args.images, args.batch_size)
    print(f'\n{args.images} photos ({", ".join(f"{h}x{w}" for h, w in FOLDER_SIZES)}), '
          f'batch size {args.batch_size}, RGBA + blur fusion: {mem["images_per_s"]:.2f} '
          f'images/s; RSS peak {mem["peak_mib"]:.0f} MiB, at photo 20 '
          f'{mem["at20_mib"]:.0f} MiB, at photo {args.images // 2} {mem["mid_mib"]:.0f} MiB, '
          f'at photo {args.images} {mem["last_mib"]:.0f} MiB '
          f'(growth {mem["growth_mib"]:+.0f} MiB)')
  if args.mixed_sizes:
    sizes = mixed_sizes(args.mixed_sizes)
    mem = _memory(remover, args.mixed_sizes, args.batch_size, sizes)
    rss = mem['rss_mib']
    at50 = rss[min(49, len(rss) - 1)]
    pixels = [h * w for h, w in sizes]
    print(f'\n{args.mixed_sizes} photos of random sizes ({min(pixels) / 1e6:.2f}-'
          f'{max(pixels) / 1e6:.2f} MP, long side 256-1600 px, seed 0), batch size '
          f'{args.batch_size}, RGBA + blur fusion: {mem["images_per_s"]:.2f} images/s\n')
    print('| photo | 1 | 10 | 50 | 100 | 200 | last | peak |')
    print('|---|---|---|---|---|---|---|---|')
    marks = [rss[min(i, len(rss) - 1)] for i in (0, 9, 49, 99, 199)]
    print('| RSS MiB | ' + ' | '.join(f'{m:.0f}' for m in marks) +
          f' | {rss[-1]:.0f} | {mem["peak_mib"]:.0f} |')
    print(f'\nGrowth from photo 50 to photo {len(rss)}: {rss[-1] - at50:+.0f} MiB '
          f'({100 * (rss[-1] - at50) / at50:+.1f}%); RSS over photos 50-{len(rss)}: '
          f'{min(rss[49:]):.0f}-{max(rss[49:]):.0f} MiB; JAX caches emptied '
          f'{compile_cache.clears()} times.')
  if args.large_mp:
    width = int(round((args.large_mp * 1e6 * 1.5) ** 0.5))
    height = int(round(width / 1.5))
    with tempfile.TemporaryDirectory() as tmp:
      src, out = os.path.join(tmp, 'photos'), os.path.join(tmp, 'out')
      os.makedirs(src)
      # uint8 throughout (no int64 temporaries), so the photo itself adds
      # about 2 x 3 bytes per pixel to the peak before the run starts.
      rows = (np.arange(height) * 255 // height).astype(np.uint8)
      cols = (np.arange(width) * 255 // width).astype(np.uint8)
      photo = np.empty((height, width, 3), np.uint8)
      photo[..., 0], photo[..., 1] = rows[:, None], cols[None, :]
      photo[..., 2] = rows[:, None] + cols[None, :]  # uint8 wraps: (y + x) mod 256.
      Image.fromarray(photo).save(os.path.join(src, 'large.jpg'), quality=90)
      del photo
      before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.
      start = time.perf_counter()
      summary = remover_lib.process_inputs(remover, [src], out, log=lambda line: None)
      seconds = time.perf_counter() - start
      assert len(summary.written) == 1, summary.failures
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'\nOne {width}x{height} JPEG ({width * height / 1e6:.1f} MP) through '
          f'`process_inputs` (decode, alpha in tiles, blur fusion, RGBA PNG), first call '
          f'(compiles included): {seconds:.1f} s; process peak RSS {peak:.0f} MiB '
          f'(ru_maxrss; {before:.0f} MiB before the run).')

if __name__ == '__main__':
  main()
