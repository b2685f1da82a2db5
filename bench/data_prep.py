r"""Images/s of building composites with the `matting_sets` builder, per worker count.

  python -m bench.data_prep [--size 512 --num_fg 16 --num_bg 2 --workers 1,2]
  python -m bench.data_prep --beam [--size 256 --num_photos 24 --out FILE.md]

`--beam`: the process pool against Beam's DirectRunner (data_prep/beam_pipeline.py),
1 and 2 worker processes each, on generated photos + segmenter-like masks:
labels/s of `data_prep.autolabel` on a folder, and labels/s and records/s of the
`matting_sets` autolabel layout (label, quality filter, 2 composites per photo).
Wall time of each whole run, start-up included; every variant must write the same
records / alphas (checked).

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

from bgmat import report_stats
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


def make_photos(root: str, size: int, num_photos: int, num_backgrounds: int) -> None:
  """Photos (JPEG), binary segmenter-like masks (PNG) and backgrounds under `root`."""
  from data_prep import autolabel  # pylint: disable=g-import-not-at-top
  for folder in ('image', 'mask'):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  for index in range(num_photos):
    example = synthetic.generate_example(index, 'train', image_size=size)
    mask = autolabel.simulate_segmenter_mask(example['alpha'], np.random.default_rng(index))
    Image.fromarray(example['image']).save(os.path.join(root, 'image', f'p{index:04d}.jpg'),
                                           quality=95)
    Image.fromarray(mask).save(os.path.join(root, 'mask', f'p{index:04d}.png'))
  make_inputs(root, size, 0, num_backgrounds)


def _alphas(out_dir: str) -> list[bytes]:
  folder = os.path.join(out_dir, 'alpha')
  return [np.asarray(Image.open(os.path.join(folder, name))).tobytes()
          for name in sorted(os.listdir(folder))]


def beam_main(args) -> str:
  """Runs the --beam comparison; returns the markdown table."""
  # pylint: disable=g-import-not-at-top
  import platform
  from data_prep import autolabel
  from data_prep import quality
  # pylint: enable=g-import-not-at-top
  counts = [int(w) for w in args.workers.split(',')]
  open_filter = quality.Thresholds(min_side=0, min_sharpness=0.0, min_coverage=0.0,
                                   max_coverage=1.0, min_mean_luma=0.0, max_mean_luma=1.0,
                                   max_clipped=1.0, min_confidence=0.0)
  variants = [(f'process pool, {w} process{"es" if w > 1 else ""}', w, None) for w in counts]
  variants += [(f'Beam DirectRunner, {w} worker{"s" if w > 1 else ""}', w,
                f'direct_num_workers={w},direct_running_mode=multi_processing') for w in counts]
  rows, alphas, records = [], {}, {}
  with tempfile.TemporaryDirectory(prefix='bench_data_prep_beam_') as root:
    make_photos(root, args.size, args.num_photos, args.backgrounds)
    images, masks = os.path.join(root, 'image'), autolabel.FolderMasks(os.path.join(root, 'mask'))
    for index, (label, workers, options) in enumerate(variants):
      out = os.path.join(root, f'labels_{index}')
      start = time.perf_counter()
      if options is None:
        summary = autolabel.run(images, masks, out, workers=workers, progress=False)
      else:
        summary = autolabel.run_beam(images, masks, out, beam_options=options)
      label_seconds = time.perf_counter() - start
      alphas[label] = _alphas(out)
      start = time.perf_counter()
      _, directory = matting_sets.build_matting_set(
          os.path.join(root, f'data_{index}'), 'autolabel', image_dir=images,
          alpha_dir=os.path.join(root, 'mask'), bg_dir=os.path.join(root, 'bg'),
          num_bg=args.num_bg, min_bg_side=0, quality_filter=open_filter,
          num_workers=workers, progress=False, beam_options=options)
      build_seconds = time.perf_counter() - start
      records[label] = _records(directory)
      rows.append((label, summary['labelled'], label_seconds, len(records[label]),
                   build_seconds))
  first = variants[0][0]
  same_alphas = all(alphas[v[0]] == alphas[first] for v in variants)
  same_records = all(records[v[0]] == records[first] for v in variants)
  lines = [
      f'`python -m bench.data_prep --beam --size {args.size} --num_photos {args.num_photos} '
      f'--num_bg {args.num_bg} --workers {args.workers}`', '',
      f'machine: {platform.machine()}, {os.cpu_count()} CPU cores '
      f'({report_stats.cpu_model()}), shared with a running training job (load average '
      f'{os.getloadavg()[0]:.1f} at the end): absolute numbers are low and noisy, compare '
      'rows of one run', '',
      f'{args.num_photos} synthetic photos {args.size}x{args.size} with segmenter-like masks; '
      f'autolabel folder = data_prep.autolabel (closed-form label + fg, PNG files); '
      f'matting_sets = autolabel layout (label, quality filter, photo + {args.num_bg} '
      'composites per photo, JPEG q95, TFDS array_record). Wall time of each whole run, '
      'worker start-up included.', '',
      '| runner | autolabel labels | s | labels/s | matting_sets records | s | records/s '
      '| labels/s |',
      '|---|---|---|---|---|---|---|---|']
  for label, labelled, label_seconds, count, build_seconds in rows:
    lines.append(f'| {label} | {labelled} | {label_seconds:.1f} | '
                 f'{labelled / label_seconds:.2f} | {count} | {build_seconds:.1f} | '
                 f'{count / build_seconds:.2f} | '
                 f'{args.num_photos / build_seconds:.2f} |')
  lines += ['', f'Same alphas for every runner: {same_alphas}; same records (canonical '
            f'form): {same_records}']
  return '\n'.join(lines) + '\n'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--size', type=int, default=None,
                      help='image side (default 512; --beam 256)')
  parser.add_argument('--num_fg', type=int, default=16)
  parser.add_argument('--num_bg', type=int, default=2, help='composites per foreground')
  parser.add_argument('--backgrounds', type=int, default=8)
  parser.add_argument('--workers', default='1,2')
  parser.add_argument('--beam', action='store_true', help='process pool vs Beam DirectRunner')
  parser.add_argument('--num_photos', type=int, default=24, help='--beam: photos to label')
  parser.add_argument('--out', default=None, help='--beam: also write the table here')
  args = parser.parse_args()
  if args.beam:
    args.size = args.size or 256
    table = beam_main(args)
    print(table)
    if args.out:
      with open(args.out, 'w', encoding='utf-8') as f:
        f.write(table)
    return
  args.size = args.size or 512
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
