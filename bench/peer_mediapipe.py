r"""The peer of the pre-segmentation on real portraits: MediaPipe's selfie segmenter.

MediaPipe (`mediapipe==0.10.21`, whose wheel bundles the selfie segmentation
models) is what a user would otherwise pick for portrait segmentation. It is
not a bgmat dependency and pins its own numpy/protobuf, so it runs in a venv of
its own and the three steps exchange files through a folder outside the repo:

  # 1. our venv: each record's photo as a PNG at the record's own size
  python -m bench.peer_mediapipe dump --dataset matting_sets/portraits_seg \
      --data_dir /work/data --split validation --work_dir /work/tmp/mp
  # 2. MediaPipe's venv (imports only numpy, PIL and mediapipe): confidence masks
  /work/mpvenv/bin/python bench/peer_mediapipe.py segment \
      --split validation --work_dir /work/tmp/mp
  # 3. our venv: metrics against the ground truth of our evaluation
  python -m bench.peer_mediapipe score --dataset matting_sets/portraits_seg \
      --data_dir /work/data --split validation --work_dir /work/tmp/mp

Ground truth is exactly our evaluation's (`bgmat.evaluate` on
`input_pipeline.Prepare` examples): the record letterboxed into the working
size (`--image_size`, long side to it) and cropped to the photo's region;
MediaPipe's mask, made at the record's own size, is resized bilinearly to that
region (PIL's bilinear filter, the one `letterbox` uses for the alpha), and
`bgmat.metrics.batch_eval_metrics` (uint8-quantised, as a saved PNG) gives IoU
and boundary F of alpha >= 0.5 and the whole-image SAD / MSE.

Rows: model_selection 0 ('general', 256x256 input) and 1 ('landscape',
144x256 input), the legacy `mediapipe.solutions.selfie_segmentation` API, whose
.tflite files ship inside the wheel (nothing is downloaded). Seconds per image
are the `process` call alone (no PNG decoding), single process, after one
warm-up image.

Nothing here is written inside the repository except the result table (a
--work_dir inside it must be git-ignored, as `make study`'s runs/study/peer is).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

MODELS = {0: 'general (256x256)', 1: 'landscape (144x256)'}
_INDEX = 'index.json'


def _atomic_write(path: str, write) -> None:
  """Calls write(tmp_path) and renames the result onto `path`."""
  folder = os.path.dirname(path) or '.'
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp_', suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _write_json(path: str, value) -> None:
  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(value, f, indent=1)
  _atomic_write(path, write)


def _read_index(split_dir: str) -> list[dict]:
  path = os.path.join(split_dir, _INDEX)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing: run the `dump` step for this split first.')
  with open(path) as f:
    return json.load(f)


def _machine() -> str:
  return f'{platform.node()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs'


def _loadavg() -> str:
  try:
    with open('/proc/loadavg') as f:
      return ' '.join(f.read().split()[:3])
  except OSError:
    return 'n/a'


# ---------------------------------------------------------------------------
# 1. dump (our venv).
# ---------------------------------------------------------------------------


def dump(args) -> None:
  from bgmat import input_pipeline  # pylint: disable=g-import-not-at-top
  source = input_pipeline.open_source(args.dataset, args.split, args.data_dir)
  split_dir = os.path.join(args.work_dir, 'images', args.split)
  index = []
  count = len(source) if args.max_examples is None else min(len(source), args.max_examples)
  for i in range(count):
    record = source[i]
    image = np.asarray(record['image'], np.uint8)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'{args.dataset} {args.split} record {i}: image has shape '
                       f'{image.shape}, expected (H, W, 3).')
    file = f'{i:05d}.png'
    _atomic_write(os.path.join(split_dir, file),
                  lambda tmp, image=image: Image.fromarray(image).save(tmp, format='PNG'))
    name = record.get('name', b'')
    index.append(dict(index=i, file=file, height=int(image.shape[0]),
                      width=int(image.shape[1]),
                      name=name.decode() if isinstance(name, bytes) else str(name)))
  _write_json(os.path.join(split_dir, _INDEX), index)
  print(f'dump: {count} images of {args.dataset} {args.split} -> {split_dir}')


# ---------------------------------------------------------------------------
# 2. segment (MediaPipe's venv: numpy, PIL, mediapipe only).
# ---------------------------------------------------------------------------


def segment(args) -> None:
  import mediapipe as mp  # pylint: disable=g-import-not-at-top
  image_dir = os.path.join(args.work_dir, 'images', args.split)
  index = _read_index(image_dir)
  timings = {}
  for model in args.models:
    mask_dir = os.path.join(args.work_dir, f'masks_model{model}', args.split)
    seconds = []
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model) as segmenter:
      for n, entry in enumerate(index):
        path = os.path.join(image_dir, entry['file'])
        with Image.open(path) as opened:
          image = np.ascontiguousarray(np.asarray(opened.convert('RGB')))
        if image.shape[:2] != (entry['height'], entry['width']):
          raise ValueError(f'{path}: size {image.shape[:2]} differs from the index.')
        if n == 0:  # Warm-up: the first call builds the graph.
          segmenter.process(image)
        start = time.perf_counter()
        result = segmenter.process(image)
        seconds.append(time.perf_counter() - start)
        mask = np.asarray(result.segmentation_mask, np.float32)
        if mask.shape != image.shape[:2]:
          raise ValueError(f'{path}: MediaPipe mask shape {mask.shape} != image {image.shape[:2]}.')
        _atomic_write(os.path.join(mask_dir, entry['file'][:-4] + '.npy'),
                      lambda tmp, mask=mask: np.save(tmp, mask))
    timings[str(model)] = dict(
        mean_s=float(np.mean(seconds)), median_s=float(np.median(seconds)), n=len(seconds))
    print(f'segment: model_selection={model} {len(seconds)} images, '
          f'{np.mean(seconds) * 1e3:.2f} ms/image mean')
  _write_json(os.path.join(args.work_dir, f'segment_{args.split}.json'), dict(
      mediapipe=mp.__version__, python=platform.python_version(),
      machine=_machine(), loadavg=_loadavg(), timings=timings))


# ---------------------------------------------------------------------------
# 3. score (our venv).
# ---------------------------------------------------------------------------


def resize_confidence(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(H, W) float32 confidence -> (height, width) float32, PIL bilinear."""
  resized = Image.fromarray(np.asarray(mask, np.float32), mode='F').resize(
      (size[1], size[0]), Image.BILINEAR)
  return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def score(args) -> None:
  from bgmat import input_pipeline  # pylint: disable=g-import-not-at-top
  from bgmat import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  source = input_pipeline.open_source(args.dataset, args.split, args.data_dir)
  prepare = input_pipeline.Prepare(image_size=args.image_size, trimap_radius=args.trimap_radius)
  index = _read_index(os.path.join(args.work_dir, 'images', args.split))
  info_path = os.path.join(args.work_dir, f'segment_{args.split}.json')
  with open(info_path) as f:
    info = json.load(f)
  metric_names = ('iou', 'boundary_f', 'sad', 'mse')
  rows = []
  for model in args.models:
    per_example = {k: [] for k in metric_names}
    for entry in index:
      record = source[entry['index']]
      if tuple(record['image'].shape[:2]) != (entry['height'], entry['width']):
        raise ValueError(f'record {entry["index"]} no longer matches the dumped image.')
      example = prepare(record)
      height, width = (int(v) for v in example['region'])
      gt = example['alpha'][:height, :width, 0]
      mask_path = os.path.join(args.work_dir, f'masks_model{model}', args.split,
                               entry['file'][:-4] + '.npy')
      mask = np.load(mask_path, allow_pickle=False)
      if mask.shape != (entry['height'], entry['width']):
        raise ValueError(f'{mask_path}: shape {mask.shape}, expected '
                         f'{(entry["height"], entry["width"])}.')
      pred = resize_confidence(mask, (height, width))
      values = metrics_lib.batch_eval_metrics(pred[None], gt[None], which=('sad', 'mse'))
      for k in metric_names:
        per_example[k].append(float(values[k][0]))
    timing = info['timings'][str(model)]
    rows.append(dict(model=model, n=len(index), ms=timing['mean_s'] * 1e3,
                     **{k: float(np.mean(v)) for k, v in per_example.items()},
                     **{k + '_std': float(np.std(v)) for k, v in per_example.items()}))
  table = _table(rows, args, info)
  print(table)
  out = args.out or os.path.join('bench', 'results', f'peer_mediapipe_{args.split}.md')

  def write(tmp):
    with open(tmp, 'w') as f:
      f.write(table)
  _atomic_write(out, write)
  print(f'wrote {out}')
  # The same rows for `bgmat.report --peer_table` (its JSON format).
  peers = [dict(method=f'MediaPipe selfie segmenter, model {row["model"]} '
                       f'{MODELS[row["model"]]}', split=args.split, n=row['n'],
                iou=row['iou'], boundary_f=row['boundary_f']) for row in rows]

  def write_json(tmp):
    with open(tmp, 'w') as f:
      json.dump(peers, f, indent=1)
  _atomic_write(os.path.splitext(out)[0] + '.json', write_json)


def _table(rows: list[dict], args, info: dict) -> str:
  lines = [
      f'# MediaPipe selfie segmenter on {args.dataset}, split {args.split}', '',
      f'mediapipe {info["mediapipe"]} (legacy `solutions.selfie_segmentation`, models bundled '
      f'in the wheel), Python {info["python"]}, CPU, single process.',
      f'Segmented on {info["machine"]}, load average {info["loadavg"]}; '
      f'scored on {_machine()}, {datetime.date.today().isoformat()}.', '',
      f'Ground truth as bgmat\'s evaluation: `input_pipeline.Prepare(image_size={args.image_size}, '
      f'trimap_radius={args.trimap_radius})` alpha cropped to the photo region; MediaPipe\'s '
      'confidence (made at the record\'s own size) resized bilinearly to that region; '
      'uint8-quantised; IoU and boundary F (DAVIS F, bound_th 0.008) of alpha >= 0.5; '
      'SAD (/1000) and MSE over the whole region. Mean over the split (std in brackets). '
      'ms / image: the mean `process` call, measured under the load average above (a '
      'shared machine), so a rough figure, not a speed claim.', '',
      '| model_selection | n | IoU | boundary F | SAD | MSE | ms / image |',
      '|---|---|---|---|---|---|---|',
  ]
  for row in rows:
    lines.append(
        f'| {row["model"]} {MODELS[row["model"]]} | {row["n"]} '
        f'| {row["iou"]:.4f} ({row["iou_std"]:.3f}) '
        f'| {row["boundary_f"]:.4f} ({row["boundary_f_std"]:.3f}) '
        f'| {row["sad"]:.3f} ({row["sad_std"]:.3f}) '
        f'| {row["mse"]:.5f} ({row["mse_std"]:.4f}) | {row["ms"]:.2f} |')
  return '\n'.join(lines) + '\n'


def check_work_dir(work_dir: str, repo: str) -> None:
  """Exits unless `work_dir` is outside the repository `repo` or git-ignored in it.

  The PNGs and masks written there are derived from research-only data and
  must never be committed: a folder inside the work tree is accepted only where
  `git check-ignore` says git ignores it (e.g. `runs/study/peer`, where `make
  study` keeps everything it makes); without git, inside is refused.

  Raises:
    SystemExit: the message names the folder and the reason.
  """
  path = os.path.abspath(work_dir)
  if not path.startswith(os.path.abspath(repo) + os.sep):
    return
  try:
    ignored = subprocess.run(['git', '-C', repo, 'check-ignore', '-q', '--', path],
                             capture_output=True, check=False).returncode == 0
  except OSError:  # No git: cannot tell.
    ignored = False
  if not ignored:
    sys.exit(f'--work_dir {work_dir} is inside the repository and not git-ignored; the photos '
             'and masks are derived from research-only data and must stay out of git (use a '
             'folder outside the repository or an ignored one such as runs/).')


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('step', choices=('dump', 'segment', 'score'))
  parser.add_argument('--dataset', default='matting_sets/portraits_seg')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--split', default='validation')
  parser.add_argument('--work_dir', required=True,
                      help='folder (outside the repo) for the PNGs, masks and timings')
  parser.add_argument('--models', type=int, nargs='+', default=[0, 1], choices=sorted(MODELS))
  parser.add_argument('--image_size', type=int, default=256)
  parser.add_argument('--trimap_radius', type=int, default=6)
  parser.add_argument('--max_examples', type=int, default=None)
  parser.add_argument('--out', default=None,
                      help='result table (default bench/results/peer_mediapipe_<split>.md)')
  args = parser.parse_args(argv)
  check_work_dir(args.work_dir, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  {'dump': dump, 'segment': segment, 'score': score}[args.step](args)


if __name__ == '__main__':
  main()
