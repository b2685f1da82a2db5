r"""A markdown report of the method's comparisons from trained runs.

  python -m bgmat.report --workdirs runs/demo/preseg runs/demo/preseg_original \
      runs/demo/matting runs/demo/matting_noadv --data_dir ./data --out report/

Reads each workdir (config.json, metrics.jsonl, the last checkpoint through
`checkpointing.restore_state_only`), evaluates every model on the test split
with the DIM metrics (`bgmat/metrics.py`; whole image and the unknown band of
the ground-truth trimap), adds the baselines and writes `report.md` plus PNGs
(training curves, sample mattes) into --out:

  * DeepLabV3+ original vs improved (IoU, SAD, ...): preseg runs, told apart by
    `model.kwargs.improved`;
  * matting with vs without the adversarial loss: matting runs (`adv.weight`);
  * closed-form matting (pymatting) with a trimap from the pre-segmentation and,
    as an upper bound, from the ground truth (`configs/closed_form.py`);
  * the automatic baseline: the pre-segmentation used directly as alpha.

The pre-segmentation behind the matting rows and the baselines is --preseg, else
the matting runs' own `preseg_workdir` when it exists, else the improved preseg
run given.
Verdicts on the method's claims are computed from the table, never assumed.
"""

import argparse
import datetime
import json
import os
import sys

import jax
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from bgmat import baselines  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import checkpointing  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import input_pipeline  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import metrics as metrics_lib  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import train  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import writers  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import configs.closed_form as closed_form_configs  # noqa: E402  pylint: disable=wrong-import-position

METRICS = ('sad', 'mse', 'grad', 'conn')
COLUMNS = ('iou',) + METRICS + tuple(f'{m}_unknown' for m in METRICS)


class Run:
  """One workdir: its config, logged scalars and a role in the comparisons."""

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    path = os.path.join(self.workdir, 'config.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{workdir}: no config.json (not a bgmat run directory)')
    with open(path, encoding='utf-8') as f:
      try:
        self.config = ml_collections.ConfigDict(json.load(f))
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from e
    self.name = os.path.basename(self.workdir.rstrip('/'))
    self.scalars = writers.read_jsonl(os.path.join(self.workdir, 'metrics.jsonl'))
    if self.config.stage == 'preseg':
      improved = self.config.model.get('kwargs', {}).get('improved', False)
      self.label = 'DeepLabV3+ ' + ('improved' if improved else 'original')
    elif self.config.stage == 'matting':
      adv = self.config.adv.weight > 0
      self.label = ('matting, adversarial (weight %g)' % self.config.adv.weight if adv
                    else 'matting, no adversarial loss')
    else:
      raise ValueError(f'{workdir}: stage {self.config.stage!r} is not preseg or matting')

  @property
  def improved(self) -> bool:
    return bool(self.config.model.get('kwargs', {}).get('improved', False))


def _eval_config(run: Run, args) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(run.config.to_dict())
  if args.data_dir:
    config.data_dir = args.data_dir
  config.max_eval_examples = args.max_examples or None
  return config


def _predictor(run: Run, preseg_prob):
  """images (N, H, W, 3) -> alpha (N, H, W, 1) of the run's final checkpoint."""
  state = checkpointing.restore_state_only(run.workdir)
  model = train.build_model(run.config.model)
  if run.config.stage == 'preseg':
    variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
    apply = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)))
    return lambda images: np.asarray(apply(variables, images))
  use_ema = run.config.get('eval_ema', False) and 'ema_params' in state
  variables = {'params': state['ema_params'] if use_ema else state['params'],
               'batch_stats': state['batch_stats']}
  apply = jax.jit(lambda v, x, p: model.apply(v, x, p, train=False))
  return lambda images: np.asarray(apply(variables, images, preseg_prob(images)))


def evaluate_rows(runs: list[Run], preseg_prob, args, log=print) -> list[dict]:
  """Evaluates every run and the baselines on the test split; one dict per row."""
  rows = []
  template = _eval_config(runs[0], args)
  cf_arg = args.cf_config
  for run in runs:
    config = _eval_config(run, args)
    predict = _predictor(run, preseg_prob)
    rows.append(dict(method=run.label, trimap='none', run=run.name,
                     **_evaluate(config, predict, args.split)))
    log(f'evaluated {run.name}')
  # The automatic baseline: stage 1's probability used directly as alpha.
  rows.append(dict(method='pre-segmentation as alpha (automatic)', trimap='none',
                   run=args.preseg_name, **_evaluate(template, preseg_prob, args.split)))
  for source in ('preseg', 'gt'):
    cf = closed_form_configs.get_config(cf_arg + (',gt_trimap' if source == 'gt' else ''))
    for key in ('dataset', 'data_dir', 'image_size', 'trimap_radius', 'max_eval_examples'):
      cf[key] = template[key]
    cf.eval_metrics = METRICS  # Every row gets all four, whatever the config's size.
    results, _ = baselines.evaluate_closed_form(cf, args.split, preseg_prob)
    trimap = ('pre-segmentation (p>=%g / p<=%g, band %d px)' % (
        cf.fg_threshold, cf.bg_threshold, cf.band_radius) if source == 'preseg'
              else 'ground truth (upper bound)')
    rows.append(dict(method='closed-form matting (pymatting)', trimap=trimap, run='-',
                     **{k.split('/', 1)[1]: v for k, v in results.items()}))
    log(f'evaluated closed-form, trimap from {source}')
  return rows


def _evaluate(config, predict, split: str) -> dict:
  accumulator = metrics_lib.MattingEvalAccumulator()
  for batch in input_pipeline.eval_batches(
      config, split, process_index=0, process_count=1, per_process_batch=config.batch_size,
      max_examples=config.get('max_eval_examples')):
    valid = batch['valid'] > 0
    if valid.any():
      pred = predict(batch['image'])[valid]
      accumulator.update(metrics_lib.batch_eval_metrics(
          pred, batch['alpha'][valid], batch['trimap'][valid], which=METRICS))
  return accumulator.compute()


# ---------------------------------------------------------------------------
# Pictures.
# ---------------------------------------------------------------------------


def plot_curves(runs: list[Run], out_dir: str) -> list[str]:
  """train/loss (and d_loss, test-time IoU) per step, one PNG per stage."""
  written = []
  for stage in ('preseg', 'matting'):
    chosen = [r for r in runs if r.config.stage == stage]
    keys = ['train/loss'] + (['train/train_iou'] if stage == 'preseg' else ['train/d_loss'])
    if not chosen:
      continue
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.0), dpi=80)
    for axis, key in zip(np.atleast_1d(axes), keys):
      for run in chosen:
        points = [(r['step'], r[key]) for r in run.scalars if key in r]
        if points:
          steps, values = zip(*points)
          axis.plot(steps, values, label=run.label, marker='.')
      axis.set_xlabel('step')
      axis.set_title(key)
      axis.grid(alpha=0.3)
      if axis.lines:
        axis.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f'curves_{stage}.png')
    fig.savefig(path + '.tmp.png')
    plt.close(fig)
    os.replace(path + '.tmp.png', path)
    written.append(path)
  return written


def plot_samples(columns: dict[str, np.ndarray], out_dir: str, count: int = 4) -> str:
  """Grid: one test image per row; input, ground truth and each method's alpha."""
  names = list(columns)
  count = min(count, len(columns['input']))
  fig, axes = plt.subplots(count, len(names), figsize=(1.5 * len(names), 1.5 * count), dpi=80,
                           squeeze=False)
  for i in range(count):
    for j, name in enumerate(names):
      picture = columns[name][i]
      axes[i, j].imshow(picture[..., 0] if picture.shape[-1] == 1 else picture,
                        cmap='gray', vmin=0, vmax=1)
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
      if i == 0:
        axes[i, j].set_title(name, fontsize=7)
  fig.tight_layout()
  path = os.path.join(out_dir, 'samples.png')
  fig.savefig(path + '.tmp.png')
  plt.close(fig)
  os.replace(path + '.tmp.png', path)
  return path


def sample_columns(runs: list[Run], preseg_prob, args, count: int = 4) -> dict:
  """The first `count` test images and every method's alpha for them."""
  template = _eval_config(runs[0], args)
  batch = next(input_pipeline.eval_batches(
      template, args.split, process_index=0, process_count=1, per_process_batch=count))
  valid = batch['valid'] > 0
  images = batch['image'][valid]
  prob = preseg_prob(images)
  cf = closed_form_configs.get_config(args.cf_config)
  columns = {'input': images, 'ground truth': batch['alpha'][valid], 'pre-seg': prob}
  for run in runs:
    if run.config.stage == 'matting':
      columns[run.name] = _predictor(run, preseg_prob)(images)
  trimaps = np.stack([baselines.trimap_from_prob(p, cf.fg_threshold, cf.bg_threshold,
                                                 cf.band_radius) for p in prob])
  columns['trimap (pre-seg)'] = trimaps
  columns['closed-form'] = baselines.closed_form_batch(images, trimaps, cf.cg_maxiter)
  return columns


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------


def _fmt(value) -> str:
  return '-' if value is None or not np.isfinite(value) else f'{value:.4g}'


def results_table(rows: list[dict]) -> list[str]:
  head = ('| method | trimap | run | IoU | SAD | MSE | Grad | Conn | SAD (unknown) | '
          'MSE (unknown) | Grad (unknown) | Conn (unknown) |')
  lines = [head, '|' + '---|' * 12]
  for row in rows:
    lines.append(f"| {row['method']} | {row['trimap']} | {row['run']} | " +
                 ' | '.join(_fmt(row.get(c)) for c in COLUMNS) + ' |')
  return lines


def _compare(first: dict, second: dict, keys) -> tuple[int, int, str]:
  """(wins of row `first` over `second`, metrics compared, detail); IoU up, errors down."""
  wins, parts = 0, []
  for key in [k for k in keys if first.get(k) is not None and second.get(k) is not None]:
    a, b = first[key], second[key]
    win = a > b if key == 'iou' else a < b
    wins += int(win)
    parts.append(f'{key} {_fmt(a)} vs {_fmt(b)}')
  return wins, len(parts), '; '.join(parts)


def verdicts(rows: list[dict]) -> list[str]:
  """The method's claims, each checked against the table."""
  methods = {r['method'] for r in rows}
  claims = [
      ('the improved DeepLabV3+ segments better than the original (IoU, SAD)',
       'DeepLabV3+ improved', 'DeepLabV3+ original', ('iou', 'sad')),
      ('the adversarial loss improves the matting stage (all eight matting numbers)',
       next((m for m in methods if m.startswith('matting, adversarial')), None),
       'matting, no adversarial loss', COLUMNS[1:]),
      ('the matting stage beats the pre-segmentation used as alpha (automatic baseline)',
       next((m for m in methods if m.startswith('matting, adversarial')), None),
       'pre-segmentation as alpha (automatic)', COLUMNS[1:]),
  ]
  cf_preseg = next((r for r in rows if r['method'].startswith('closed-form') and
                    r['trimap'].startswith('pre-seg')), None)
  lines = []
  for claim, better, worse, keys in claims:
    if better not in methods or worse not in methods:
      lines.append(f'- {claim}: not tested (a run is missing).')
      continue
    for first in (r for r in rows if r['method'] == better):
      wins, total, detail = _compare(first, next(r for r in rows if r['method'] == worse), keys)
      verdict = ('reproduced' if wins == total else 'NOT reproduced' if wins == 0 else
                 f'partly reproduced ({wins} of {total})')
      lines.append(f"- {claim} (`{first['run']}`): **{verdict}** at this size ({detail}).")
  adv = next((m for m in methods if m.startswith('matting, adversarial')), None)
  if cf_preseg and adv:
    adv_row = next(r for r in rows if r['method'] == adv)
    wins, total, _ = _compare(adv_row, cf_preseg, COLUMNS[1:])
    lines.append(f'- the automatic method vs closed-form matting with a trimap from the same '
                 f'pre-segmentation: the matting stage is better on {wins} of {total} numbers.')
  return lines


def write_report(runs, rows, curves, samples_path, args, out_dir) -> str:
  by_stage = {s: [r for r in runs if r.config.stage == s] for s in ('preseg', 'matting')}
  template = runs[0].config
  lines = [
      '# bgmat: the method\'s comparisons', '',
      f'Built by `python -m bgmat.report {" ".join(args.argv)}` on '
      f'{datetime.date.today().isoformat()} (jax {jax.__version__}, '
      f'{jax.devices()[0].device_kind}).', '',
      f'Data: `{template.dataset}`, {args.split} split'
      + (f' (first {args.max_examples} examples)' if args.max_examples else '') +
      f', evaluated at {template.image_size} px. Metrics: DIM conventions '
      '(`bgmat/metrics.py`: SAD/1000, MSE, Grad/1000, Conn/1000) on uint8-quantised mattes, '
      'whole image and the unknown band of the ground-truth trimap '
      f'(radius {template.trimap_radius} px); IoU of alpha >= 0.5.', '',
      'Runs: ' + '; '.join(
          f'`{r.name}` ({r.label}, `{r.config.model.name}`, {_last_step(r)} steps, '
          f'batch {r.config.batch_size})' for r in runs) + '.', '',
      f'Pre-segmentation behind the matting rows and the baselines: `{args.preseg_name}`.', '',
      '## Results', '', *results_table(rows), '',
      '## The method\'s claims, checked', '', *verdicts(rows), '',
      'Closed-form matting: Levin et al. 2008 via pymatting `estimate_alpha_cf` '
      '(`bgmat/baselines.py`, `configs/closed_form.py`); its pre-segmentation trimap is '
      'sure foreground where no pixel within the band has p < the upper threshold, sure '
      'background where none has p > the lower one, unknown elsewhere.', '',
      '## Training curves', '']
  for path in curves:
    lines.append(f'![{os.path.basename(path)}]({os.path.basename(path)})')
  lines += ['', '## Sample test mattes', '', f'![samples]({os.path.basename(samples_path)})', '']
  if by_stage['matting'] and not by_stage['preseg']:
    lines.append('No preseg run was given: the original-vs-improved row is missing.')
  path = os.path.join(out_dir, 'report.md')
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(path + '.tmp', path)
  return path


def _last_step(run: Run) -> int:
  steps = [r['step'] for r in run.scalars]
  return max(steps) if steps else 0


def choose_preseg(runs: list[Run], given: str = '') -> str:
  """Workdir of the stage-1 model for matting and baselines (see module doc)."""
  if given:
    if not os.path.isdir(given):
      raise FileNotFoundError(f'--preseg {given}: no such directory')
    return os.path.abspath(given)
  for run in runs:
    if run.config.stage == 'matting':
      path = train.resolve_preseg_workdir(run.config, run.workdir)
      if os.path.isdir(path):
        return path
  improved = [r for r in runs if r.config.stage == 'preseg' and r.improved]
  fallback = improved or [r for r in runs if r.config.stage == 'preseg']
  if not fallback:
    raise ValueError('No pre-segmentation: give a preseg workdir or a matting run whose '
                     'preseg_workdir exists.')
  return fallback[0].workdir


def main(argv=None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdirs', nargs='+', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--data_dir', default='', help='override the runs\' data_dir')
  parser.add_argument('--split', default='test')
  parser.add_argument('--max_examples', type=int, default=0, help='0: the whole split')
  parser.add_argument('--preseg', default='', help='stage-1 workdir for the matting rows '
                      'and baselines (default: the matting runs\' preseg_workdir)')
  parser.add_argument('--cf_config', default='demo', help='configs/closed_form.py argument')
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  args.argv = argv
  runs = [Run(w) for w in args.workdirs]
  runs.sort(key=lambda r: (r.config.stage != 'preseg', r.improved, r.label))
  preseg_dir = choose_preseg(runs, args.preseg)
  args.preseg_name = os.path.basename(preseg_dir.rstrip('/'))
  preseg_prob = baselines.preseg_prob_fn(preseg_dir)
  out_dir = os.path.abspath(args.out)
  os.makedirs(out_dir, exist_ok=True)
  rows = evaluate_rows(runs, preseg_prob, args)
  curves = plot_curves(runs, out_dir)
  samples = plot_samples(sample_columns(runs, preseg_prob, args), out_dir)
  path = write_report(runs, rows, curves, samples, args, out_dir)
  with open(os.path.join(out_dir, 'results.json.tmp'), 'w', encoding='utf-8') as f:
    json.dump(rows, f, indent=1)
  os.replace(os.path.join(out_dir, 'results.json.tmp'), os.path.join(out_dir, 'results.json'))
  print(f'wrote {path}')
  return path


if __name__ == '__main__':
  main()
