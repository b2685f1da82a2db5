r"""Images/s of building composites with the `matting_sets` builder, per worker count.

  python -m bench.data_prep [--size 512 --num_fg 16 --num_bg 2 --workers 1,2]

Generates `num_fg` foregrounds (synthetic portraits at `size`, the foreground's
soft pixels carrying an old green-screen colour) and background photos-to-be
(smooth random images, 4:3, larger than `size`), then builds the `compose`
layout (multi-level fg estimation, cover-crop of a seeded background, JPEG q95)
once per worker count into a temporary directory, and prints a table of
composites per second (wall time of the whole build: pool start, decode,
estimation, compositing, encoding and the TFDS write). Also checks that every
worker count wrote the same records.
"""
import argparse
import glob
import os
import tempfile
import time

import numpy as np
from PIL import Image

from data_prep import matting_sets
from data_prep import synthetic


def make_inputs(root: str, size: int, num_fg: int, num_backgrounds: int) -> None:
  """Foregrounds + alphas (size x size PNG) and backgrounds (JPEG) under `root`."""
  for folder in ('fg', 'alpha', 'bg'):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  green = np.array([0, 255, 0], np.uint8)
  for index in range(num_fg):
    # Rendered at half size and upscaled: the content does not matter here.
    example = synthetic.generate_example(index, 'train', image_size=size // 2, supersample=2)
    fg = np.asarray(Image.fromarray(example['fg']).resize((size, size), Image.BILINEAR))
    alpha = np.asarray(Image.fromarray(example['alpha']).resize((size, size), Image.BILINEAR))
    released = synthetic.composite(fg, alpha, np.broadcast_to(green, fg.shape))
    Image.fromarray(released).save(os.path.join(root, 'fg', f'fg{index:04d}.png'))
    Image.fromarray(alpha).save(os.path.join(root, 'alpha', f'fg{index:04d}.png'))
  rng = np.random.default_rng(0)
  for index in range(num_backgrounds):
    corners = rng.integers(0, 256, size=(3, 4, 3)).astype(np.uint8)
    bg = Image.fromarray(corners).resize((size * 5 // 4, size * 15 // 16), Image.BICUBIC)
    bg.save(os.path.join(root, 'bg', f'bg{index:04d}.jpg'), quality=95)


def _records(directory: str) -> list[bytes]:
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(glob.glob(os.path.join(directory, '*.array_record*'))):
    reader = array_record_module.ArrayRecordReader(path)
    out += [tf_example_pb2.Example.FromString(raw).SerializeToString(deterministic=True)
            for raw in reader.read_all()]
    reader.close()
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--num_fg', type=int, default=16)
  parser.add_argument('--num_bg', type=int, default=2, help='composites per foreground')
  parser.add_argument('--backgrounds', type=int, default=8)
  parser.add_argument('--workers', default='1,2')
  args = parser.parse_args()
  counts = [int(w) for w in args.workers.split(',')]
  with tempfile.TemporaryDirectory(prefix='bench_data_prep_') as root:
    make_inputs(root, args.size, args.num_fg, args.backgrounds)
    rows, records = [], {}
    for workers in counts:
      start = time.perf_counter()
      _, directory = matting_sets.build_matting_set(
          os.path.join(root, f'data_{workers}'), 'compose', fg_dir=os.path.join(root, 'fg'),
          alpha_dir=os.path.join(root, 'alpha'), bg_dir=os.path.join(root, 'bg'),
          num_bg=args.num_bg, num_workers=workers, progress=False)
      seconds = time.perf_counter() - start
      records[workers] = _records(directory)
      rows.append((workers, len(records[workers]), seconds))
  same = all(records[w] == records[counts[0]] for w in counts)
  print(f'\nmatting_sets compose build, {args.size}x{args.size}, {args.num_fg} foregrounds x '
        f'{args.num_bg} backgrounds, multilevel fg estimation, JPEG q95 '
        f'({os.cpu_count()} CPUs)\n')
  print('| processes | composites | seconds | composites/s | speed-up |')
  print('|---|---|---|---|---|')
  for workers, count, seconds in rows:
    print(f'| {workers} | {count} | {seconds:.1f} | {count / seconds:.2f} | '
          f'{rows[0][2] / seconds:.2f}x |')
  print(f'\nSame records for every process count: {same}')


if __name__ == '__main__':
  main()
