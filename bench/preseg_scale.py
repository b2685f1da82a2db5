r"""Scale robustness of the pre-segmentation: people smaller in the frame.

The real-portrait set shows one person filling a 3:4 photo, and stage 1 trains
on crops of it, so it never sees a person whose head is a tenth of the frame
(a full-body or group photo). This measures what
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

The peer (MediaPipe's selfie segmenter, in its own venv: see
`bench/peer_mediapipe.py`) sees the same canvases, in three steps through a
work dir outside the repo (the canvases are made from the research-only photos):

  python -m bench.preseg_scale --data_dir runs/study/data --scales 1 0.75 0.5 \
      --mediapipe_dir /tmp/mp_scale --dump
  for s in 1 0.75 0.5; do ../mpvenv/bin/python bench/peer_mediapipe.py segment \
      --split validation_scale$s --work_dir /tmp/mp_scale --models 0; done
  python -m bench.preseg_scale --data_dir runs/study/data --scales 1 0.75 0.5 \
      --mediapipe_dir /tmp/mp_scale --workdirs RUN ...

Prints a markdown table (machine and date in its header); `--out` also
writes it, atomically. `--held_out PNG` also renders each run's stage-1
cut-out of the two held-out demo photos (scikit-image's astronaut, matplotlib's
Grace Hopper; demo inputs only, never training or tuning) at each scale, to
look at (write it outside the repo: it is made by a model trained on the
research-only photos).
"""

import argparse
import datetime
import os
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
  """IoU and boundary F per scale of a model, means over the records of `source`.

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
  def probability(canvas, index, scale):
    del index, scale
    return np.asarray(predict(canvas[None].astype(np.float32) / 255.0))[0, ..., 0]
  return score_probabilities(probability, source, size, scales, max_examples)


def score_probabilities(probability: Callable[[np.ndarray, int, float], np.ndarray], source,
                        size: int, scales: Sequence[float],
                        max_examples: int | None = None) -> list[dict]:
  """`score` for any (canvas (size, size, 3) uint8, record index, scale) ->
  (size, size) probability, e.g. a peer's saved masks."""
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
      prob = np.asarray(probability(canvas, i, scale))
      pred = prob[top:top + height, left:left + width] >= 0.5
      ious.append(metrics.iou(pred, mask))
      bfs.append(metrics.boundary_f(pred, mask))
    rows.append(dict(scale=float(scale), iou=float(np.mean(ious)),
                     boundary_f=float(np.mean(bfs)), n=count))
  return rows


def scale_split(split: str, scale: float) -> str:
  """The folder name of one scale's canvases under a peer's work dir."""
  return f'{split}_scale{scale:g}'


def dump(source, size: int, scales: Sequence[float], split: str, work_dir: str,
         max_examples: int | None = None) -> None:
  """Writes every scale's canvases as PNGs in `bench/peer_mediapipe.py`'s
  layout (work_dir/images/<split>_scale<s>/NNNNN.png + index.json), so that
  its `segment` step runs MediaPipe on them (`--split <split>_scale<s>`)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from bench import peer_mediapipe  # pylint: disable=g-import-not-at-top
  count = len(source) if max_examples is None else min(max_examples, len(source))
  for scale in scales:
    folder = os.path.join(work_dir, 'images', scale_split(split, scale))
    index = []
    for i in range(count):
      record = source[i]
      canvas = shrink(record['image'], record['alpha'], size, scale)[0]
      file = f'{i:05d}.png'
      peer_mediapipe._atomic_write(  # pylint: disable=protected-access
          os.path.join(folder, file),
          lambda tmp, canvas=canvas: Image.fromarray(canvas).save(tmp, format='PNG'))
      index.append(dict(index=i, file=file, height=size, width=size, name=str(i)))
    peer_mediapipe._write_json(os.path.join(folder, 'index.json'), index)  # pylint: disable=protected-access
    print(f'dump: {count} canvases at scale {scale:g} -> {folder}')


def mediapipe_probability(work_dir: str, split: str, model: int, size: int):
  """(canvas, index, scale) -> the (size, size) mask MediaPipe's `segment`
  step saved for that canvas.

  Raises:
    ValueError: a mask of another shape.
  """
  def probability(canvas, index, scale):
    del canvas
    path = os.path.join(work_dir, f'masks_model{model}', scale_split(split, scale),
                        f'{index:05d}.npy')
    mask = np.load(path, allow_pickle=False)
    if mask.shape != (size, size):
      raise ValueError(f'{path}: shape {mask.shape}, expected {(size, size)}')
    return mask
  return probability


def held_out_grid(predicts: Sequence[Callable[[np.ndarray], np.ndarray]], size: int,
                  scales: Sequence[float], photos: dict[str, np.ndarray] | None = None,
                  height: int = 160) -> np.ndarray:
  """Stage-1 cut-outs of photos shrunk as `shrink` does: one row per model.

  Args:
    predicts: models as in `score`: (1, size, size, 3) float32 in [0, 1] ->
      (1, size, size, 1) probability in [0, 1].
    size: the canvas side (the runs' working size).
    scales: the photo's long side as a share of `size`, each in (0, 1].
    photos: name -> (H, W, 3) uint8; default the held-out demo photos
      (`bgmat.report_extras.demo_photos`).
    height: the height in pixels of each panel.

  Returns:
    (rows, cols, 3) uint8: per row, for each photo and scale, the photo's box
    over a checkerboard with the probability as alpha; 2 px white gaps.
  """
  from bgmat import report_extras  # pylint: disable=g-import-not-at-top
  photos = report_extras.demo_photos() if photos is None else photos
  rows = []
  for predict in predicts:
    panels = []
    for image in photos.values():
      for scale in scales:
        canvas, (top, left, h, w), _ = shrink(
            image, np.zeros((*image.shape[:2], 1), np.uint8), size, scale)
        prob = np.asarray(predict(canvas[None].astype(np.float32) / 255.0))[0, ..., 0]
        panels.append(report_extras.on_checkerboard(
            canvas[top:top + h, left:left + w], prob[top:top + h, left:left + w], height))
    rows.append(report_extras.side_by_side(panels))
  return report_extras.side_by_side(rows, axis=0)


def _table(results: dict[str, list[dict]], args) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  from bgmat import report_stats  # pylint: disable=g-import-not-at-top
  scales = [f'{s:g}' for s in args.scales]
  lines = [f'# Pre-segmentation at smaller scales, {args.dataset} {args.split}',
           '',
           f'Machine: {report_stats.machine_line()}; jax {jax.__version__} on '
           f'{jax.default_backend()}; {datetime.date.today().isoformat()}. '
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
  parser.add_argument('--workdirs', nargs='*', default=[], help='stage-1 (or matting) runs')
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--dataset', default='matting_sets/portraits_seg')
  parser.add_argument('--split', default='validation')
  parser.add_argument('--scales', type=float, nargs='+', default=[1.0, 0.75, 0.5])
  parser.add_argument('--image_size', type=int, default=0,
                      help="canvas side; default: each run's config.image_size (256 for "
                           'the peer alone)')
  parser.add_argument('--max_examples', type=int, default=None)
  parser.add_argument('--mediapipe_dir', default=None,
                      help='a work dir outside the repo: with --dump, write the canvases '
                           'there for `bench/peer_mediapipe.py segment`; without, also '
                           'score the masks it saved there')
  parser.add_argument('--mediapipe_models', type=int, nargs='+', default=[0])
  parser.add_argument('--dump', action='store_true', help='only write the canvases')
  parser.add_argument('--out', default=None, help='also write the table here')
  parser.add_argument('--held_out', default=None, metavar='PNG',
                      help="also render the runs' stage-1 cut-outs of the held-out demo "
                           'photos at each scale here (outside the repo), one row per run')
  args = parser.parse_args(argv)
  if args.held_out and not args.workdirs:
    parser.error('--held_out renders the stage-1 runs of --workdirs: give --workdirs')

  from bgmat import atomic, config_defaults, input_pipeline, runs  # pylint: disable=g-import-not-at-top
  source = input_pipeline.open_source(args.dataset, args.split, args.data_dir)
  sizes = {w: args.image_size or int(config_defaults.read_run_config(w)['image_size'])
           for w in args.workdirs}
  peer_size = args.image_size or (next(iter(sizes.values())) if sizes else 256)
  if args.dump:
    if not args.mediapipe_dir:
      parser.error('--dump needs --mediapipe_dir')
    dump(source, peer_size, args.scales, args.split, args.mediapipe_dir, args.max_examples)
    return
  results = {}
  for workdir in args.workdirs:
    name = os.path.basename(os.path.abspath(workdir))
    results[name] = score(runs.preseg_prob_fn(workdir), source, sizes[workdir], args.scales,
                          args.max_examples)
  if args.mediapipe_dir:
    from bench import peer_mediapipe  # pylint: disable=g-import-not-at-top
    for model in args.mediapipe_models:
      name = f'MediaPipe selfie segmenter, model {model} {peer_mediapipe.MODELS[model]}'
      results[name] = score_probabilities(
          mediapipe_probability(args.mediapipe_dir, args.split, model, peer_size), source,
          peer_size, args.scales, args.max_examples)
  if args.held_out:
    from bgmat.inference import remover  # pylint: disable=g-import-not-at-top
    sides = set(sizes.values())
    if len(sides) > 1:
      parser.error(f'--held_out needs runs of one working size, got {sorted(sides)}')
    grid = held_out_grid([runs.preseg_prob_fn(w) for w in args.workdirs], sides.pop(),
                         args.scales)
    remover.save_png_atomic(grid, args.held_out)
    print(f'held-out cut-outs, rows {[os.path.basename(w) for w in args.workdirs]}, '
          f'columns the demo photos at scales {args.scales} -> {args.held_out}')
  if not results:
    parser.error('nothing to score: give --workdirs and/or --mediapipe_dir')
  for name, rows in results.items():
    print(name, ' '.join(f"{r['scale']:g}: {r['iou']:.4f}/{r['boundary_f']:.4f}" for r in rows),
          flush=True)
  table = _table(results, args)
  print(table)
  if args.out:
    atomic.write_text(args.out, table)


if __name__ == '__main__':
  main()
