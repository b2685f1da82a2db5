r"""Scale robustness of the pre-segmentation: people smaller in the frame.

The real-portrait set shows one person filling a 3:4 photo, and stage 1 trains
on crops of it, so it never sees a person whose head is a tenth of the frame
(a full-body or group photo, the astronaut photo's head). This measures what
that costs on a split of the training data set itself, without any held-out
photo: each photo is shrunk so that its long side is `scale` of the working
size, placed at the bottom centre of the square canvas (a person standing
further from the camera), the rest edge-padded as `input_pipeline.zoom_out`
pads; the probability of the run on that canvas is scored against the mask
shrunk the same way, on the photo's box only: IoU and boundary F (DAVIS) of
alpha >= 0.5, `bgmat.metrics`. At scale 1 the photo sits as `bgmat remove`
letterboxes it, centred horizontally.

  python -m bench.preseg_scale --data_dir runs/study/data \
      --dataset matting_sets/portraits_seg --split validation \
      --scales 1 0.75 0.5 --workdirs runs/study/preseg_original_3k_s0 ...

Prints a markdown table (machine and date in its header); `--out` also
writes it, atomically.
"""

import argparse
import datetime
import os
import platform
import sys
from typing import Callable, Sequence

import numpy as np


def shrink(image: np.ndarray, alpha: np.ndarray, size: int, scale: float
           ) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
  """A photo shrunk into the bottom centre of a `size` square.

  Args:
    image: (H, W, 3) uint8 photo.
    alpha: (H, W, 1) uint8 ground-truth alpha (0-255).
    size: the canvas side in pixels (the run's working size).
    scale: the photo's long side as a share of `size`, in (0, 1].

  Returns:
    (size, size, 3) uint8 canvas; the photo's box (top, left, height, width)
    in it; the (height, width) bool ground-truth mask (alpha >= 128) resized to
    the box with the filter `input_pipeline.letterbox` uses.

  Raises:
    ValueError: scale outside (0, 1].
  """
  from bgmat import input_pipeline  # pylint: disable=g-import-not-at-top
  if not 0.0 < scale <= 1.0:
    raise ValueError(f'scale {scale} is not in (0, 1]')
  box = max(8, int(round(scale * size)))
  height, width = input_pipeline._fit(image.shape[:2], box)  # pylint: disable=protected-access
  top, left = size - height, (size - width) // 2
  canvas = input_pipeline.zoom_out(image, size, box, top, left)
  mask = input_pipeline.letterbox(alpha, box)[0][:height, :width, 0] >= 128
  return canvas, (top, left, height, width), mask


def score(predict: Callable[[np.ndarray], np.ndarray], source, size: int,
          scales: Sequence[float], max_examples: int | None = None) -> list[dict]:
  """IoU and boundary F per scale, means over the records of `source`.

  Args:
    predict: (1, size, size, 3) float32 in [0, 1] -> (1, size, size, 1)
      probability in [0, 1].
    source: a random-access sequence of records with 'image' (H, W, 3) and
      'alpha' (H, W, 1) uint8.
    size: canvas side in pixels.
    scales: long side of the shrunk photo as a share of `size`.
    max_examples: score only the first ones.

  Returns:
    one dict per scale: scale, iou, boundary_f, n.

  Raises:
    ValueError: an empty source, or a scale outside (0, 1].
  """
  from bgmat import metrics  # pylint: disable=g-import-not-at-top
  count = len(source) if max_examples is None else min(max_examples, len(source))
  if count == 0:
    raise ValueError('no examples to score')
  rows = []
  for scale in scales:
    ious, bfs = [], []
    for i in range(count):
      record = source[i]
      canvas, (top, left, height, width), mask = shrink(
          record['image'], record['alpha'], size, scale)
      prob = np.asarray(predict(canvas[None].astype(np.float32) / 255.0))[0, ..., 0]
      pred = prob[top:top + height, left:left + width] >= 0.5
      ious.append(metrics.iou(pred, mask))
      bfs.append(metrics.boundary_f(pred, mask))
    rows.append(dict(scale=float(scale), iou=float(np.mean(ious)),
                     boundary_f=float(np.mean(bfs)), n=count))
  return rows


def _table(results: dict[str, list[dict]], args) -> str:
  scales = [f'{s:g}' for s in args.scales]
  lines = [f'# Pre-segmentation at smaller scales, {args.dataset} {args.split}',
           '',
           f'Machine: {platform.node()}, {platform.processor() or platform.machine()}, '
           f'{os.cpu_count()} CPUs; {datetime.date.today().isoformat()}. '
           f'`python -m bench.preseg_scale {" ".join(sys.argv[1:])}`',
           '',
           '| run | ' + ' | '.join(f'IoU @ {s}' for s in scales) + ' | '
           + ' | '.join(f'BF @ {s}' for s in scales) + ' | n |',
           '|---|' + '---|' * (2 * len(scales) + 1)]
  for run, rows in results.items():
    lines.append(f'| {run} | ' + ' | '.join(f"{r['iou']:.4f}" for r in rows) + ' | '
                 + ' | '.join(f"{r['boundary_f']:.4f}" for r in rows) + f" | {rows[0]['n']} |")
  return '\n'.join(lines) + '\n'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdirs', nargs='+', required=True, help='stage-1 (or matting) runs')
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--dataset', default='matting_sets/portraits_seg')
  parser.add_argument('--split', default='validation')
  parser.add_argument('--scales', type=float, nargs='+', default=[1.0, 0.75, 0.5])
  parser.add_argument('--image_size', type=int, default=0,
                      help='canvas side; default: each run\'s config.image_size')
  parser.add_argument('--max_examples', type=int, default=None)
  parser.add_argument('--out', default=None, help='also write the table here')
  args = parser.parse_args(argv)

  from bgmat import atomic, config_defaults, input_pipeline, runs  # pylint: disable=g-import-not-at-top
  source = input_pipeline.open_source(args.dataset, args.split, args.data_dir)
  results = {}
  for workdir in args.workdirs:
    size = args.image_size or int(config_defaults.read_run_config(workdir)['image_size'])
    name = os.path.basename(os.path.abspath(workdir))
    results[name] = score(runs.preseg_prob_fn(workdir), source, size, args.scales,
                          args.max_examples)
    print(name, ' '.join(f"{r['scale']:g}: {r['iou']:.4f}/{r['boundary_f']:.4f}"
                         for r in results[name]), flush=True)
  table = _table(results, args)
  print(table)
  if args.out:
    atomic.write_text(args.out, table)


if __name__ == '__main__':
  main()
