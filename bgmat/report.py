r"""A markdown report of the method's comparisons from trained runs.

  python -m bgmat.report --workdirs runs/demo/preseg runs/demo/preseg_original \
      runs/demo/matting runs/demo/matting_noadv --data_dir ./data --out report/

  # The study (README_report): seeds, segmentation with a peer, alphamatting, cut-outs.
  python -m bgmat.report --workdirs runs/study/preseg_*_s* runs/study/matting_*_s* \
      --data_dir DATA/tfds --cf_config study --seg_dataset matting_sets/portraits_seg \
      --peer_table bench/results/peer_mediapipe.json --alphamatting DATA/alphamatting \
      --cutouts --compare_workdir runs/demo/matting --out bench/results/report_study

Reads each workdir (config.json, metrics.jsonl, the weights through
`bgmat.runs`), and writes `report.md`, `results.json` (matting table rows),
`summary.json` (everything, with the verdicts) and PNGs into --out:

  * Segmentation table (--seg_dataset, --seg_split, default validation): IoU
    and boundary F of alpha >= 0.5 for each preseg run and each matting run's
    alpha, plus peer rows read from --peer_table (`report_stats.read_peer_table`);
    with --tta_flip / --tta_scales, extra rows: each stage-1 run with test-time
    augmentation and each matting run on that augmented prior.
  * Matting table (the matting runs' data set, --split, default test): the
    DIM metrics whole image and in the ground-truth trimap's unknown band, IoU,
    boundary F, for every run; the pre-segmentation used as alpha; closed-form
    matting (pymatting) with a trimap from the pre-segmentation and, as an upper
    bound, from the ground truth. Every metric is computed on the photo region of
    the letterboxed example (`metrics.region_eval_metrics`).
  * alphamatting.com (--alphamatting DIR): matting stage with a prior made from
    each trimap vs closed-form with that trimap (`report_extras`).
  * Cut-outs (--cutouts): the held-out astronaut and Grace Hopper, every seed of the method
    (with --tta_flip / --tta_scales, each seed again on the augmented prior).

Runs with the same label (DeepLabV3+ improved / original; matting adversarial
/ no adversarial) are seeds: the tables add a mean ± spread row per variant
(spread: half the range over the seeds) and the verdicts compare variant
means, a difference within the combined spread being a tie
(`report_stats`). Each matting run is evaluated with its own stage 1
(`preseg_workdir`) unless --preseg is given. No picture of data-set examples
is written unless the data set is synthetic (`data_pictures_allowed`).
"""

import argparse
import datetime
import functools
import os
import sys

import jax
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

from bgmat import atomic  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import baselines  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import evaluate as eval_lib  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import input_pipeline  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import report_extras  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import report_stats as stats  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import runs as runs_lib  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from bgmat import writers  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import configs.closed_form as closed_form_configs  # noqa: E402  pylint: disable=wrong-import-position

METRICS = ('sad', 'mse', 'grad', 'conn')
COLUMNS = ('iou',) + METRICS + tuple(f'{m}_unknown' for m in METRICS)
SEG_COLUMNS = ('iou', 'boundary_f')
SYNTHETIC_DATASETS = ('synthetic_portraits', 'synthetic')


class Run:
  """One workdir: its config, logged scalars and a role in the comparisons.

  Runs with the same `label` are seeds of one variant (module doc).
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.config = runs_lib.read_config(self.workdir)  # Errors name the file.
    self.name = os.path.basename(self.workdir.rstrip('/'))
    self.scalars = writers.read_jsonl(os.path.join(self.workdir, 'metrics.jsonl'))
    if self.config.stage == 'preseg':
      self.label = 'DeepLabV3+ ' + ('improved' if self.improved else 'original')
    elif self.config.stage == 'matting':
      adv = self.config.adv.weight > 0
      self.label = ('matting, adversarial (weight %g)' % self.config.adv.weight if adv
                    else 'matting, no adversarial loss')
    else:
      raise ValueError(f'{workdir}: stage {self.config.stage!r} is not preseg or matting')

  @property
  def improved(self) -> bool:
    return bool(self.config.model.get('kwargs', {}).get('improved', False))


def _sizes(config) -> str:
  """'256 px', or 'trained at 192 px, evaluated at 256 px' when the training
  side differs (`input_pipeline.train_image_size`)."""
  train = input_pipeline.train_image_size(config)
  if train == config.image_size:
    return f'{config.image_size} px'
  return f'trained at {train} px, evaluated at {config.image_size} px'


def _eval_config(config, args, dataset: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  if args.data_dir:
    config.data_dir = args.data_dir
  if dataset:
    config.dataset = dataset
  config.max_eval_examples = args.max_examples or None
  return config


def _predictor(run: Run, preseg_prob):
  """images (N, H, W, 3) -> alpha (N, H, W, 1) of the run (`runs.load_stage`)."""
  if run.config.stage == 'preseg':
    return runs_lib.preseg_prob_fn(run.workdir)
  stage = runs_lib.load_stage(run.workdir)
  variables = jax.device_put(stage.variables)
  apply = jax.jit(lambda v, x, p: stage.module.apply(v, x, p, train=False))
  return lambda images: np.asarray(apply(variables, images, preseg_prob(images)))


def matting_preseg(run: Run, args) -> str:
  """Workdir of the stage 1 behind a matting run's rows: --preseg, else the
  run's own preseg_workdir if it exists, else `args.preseg_dir`."""
  if args.preseg:
    return args.preseg_dir
  own = runs_lib.resolve_preseg_workdir(run.config, run.workdir)
  return own if os.path.isdir(own) else args.preseg_dir


def evaluate_rows(runs: list[Run], args, log=print) -> list[dict]:
  """Every run and the baselines on the matting data set's --split; one dict per row.

  The data set is the matting runs' (else the first run's). Baselines are made
  from each distinct pre-segmentation behind the matting rows (one row each).
  """
  rows = []
  template = _eval_config(_template_config(runs), args)
  presegs = []
  for run in runs:
    preseg = matting_preseg(run, args) if run.config.stage == 'matting' else None
    if preseg and preseg not in presegs:
      presegs.append(preseg)
    predict = _predictor(run, runs_lib.preseg_prob_fn(preseg) if preseg else None)
    rows.append(dict(method=run.label, trimap='none', run=run.name,
                     **_evaluate(template, predict, args.split)))
    log(f'evaluated {run.name}')
  presegs = presegs or [args.preseg_dir]
  fixed = len(presegs) == 1  # All matting rows used this one stage 1: no seed noise.
  # The automatic baseline: stage 1's probability used directly as alpha.
  for preseg in presegs:
    rows.append(dict(method='pre-segmentation as alpha (automatic)', trimap='none',
                     run=_name(preseg), deterministic=fixed,
                     **_evaluate(template, runs_lib.preseg_prob_fn(preseg), args.split)))
  for source in ('preseg', 'gt'):
    cf = closed_form_configs.get_config(args.cf_config + (',gt_trimap' if source == 'gt' else ''))
    for key in ('dataset', 'data_dir', 'image_size', 'trimap_radius', 'max_eval_examples'):
      cf[key] = template[key]
    cf.eval_metrics = METRICS  # Every row gets all four, whatever the config's size.
    trimap = ('pre-segmentation (p>=%g / p<=%g, band %d px)' % (
        cf.fg_threshold, cf.bg_threshold, cf.band_radius) if source == 'preseg'
              else 'ground truth (upper bound)')
    for preseg in presegs if source == 'preseg' else [None]:
      results, _ = baselines.evaluate_closed_form(
          cf, args.split, runs_lib.preseg_prob_fn(preseg) if preseg else None)
      rows.append(dict(method='closed-form matting (pymatting)' + (
          '' if preseg else ', ground-truth trimap'), trimap=trimap,
                       run=_name(preseg) if preseg else '-', deterministic=fixed or not preseg,
                       **{k.split('/', 1)[-1]: v for k, v in results.items()}))
      log(f'evaluated closed-form, trimap from {source}')
  return rows


def segmentation_rows(runs: list[Run], args, log=print) -> list[dict]:
  """IoU and boundary F (alpha >= 0.5) of every preseg run and every matting
  run's alpha on --seg_dataset's --seg_split (default: the preseg runs' data set)."""
  dataset = seg_dataset(runs, args)
  # (run, make the predictor, method): every run as trained; then, with
  # test-time augmentation asked for (`runs.preseg_probability`), each stage-1
  # run again after the plain rows, and each matting run on its stage 1's
  # augmented prior (what `bgmat remove --preseg-flip --preseg-scales` runs),
  # so the claims keep comparing the plain ones. A run's weights load when its
  # rows are evaluated, one run at a time.
  def predictor(run, **tta):
    if run.config.stage == 'preseg':
      return runs_lib.preseg_prob_fn(run.workdir, **tta)
    return _predictor(run, runs_lib.preseg_prob_fn(matting_preseg(run, args), **tta))

  jobs = [(run, functools.partial(predictor, run), run.label) for run in runs]
  tta = tta_asked(args)
  if tta:
    label = tta_label(**tta)
    for stage, suffix in (('preseg', label), ('matting', f'stage 1 with {label}')):
      jobs += [(run, functools.partial(predictor, run, **tta), f'{run.label}, {suffix}')
               for run in runs if run.config.stage == stage]
  rows = []
  for run, make_predict, method in jobs:
    config = _eval_config(run.config, args, dataset)
    rows.append(dict(method=method, run=run.name, split=args.seg_split,
                     **_evaluate(config, make_predict(), args.seg_split, which=())))
    log(f'segmentation {run.name}' + method[len(run.label):])
  return rows


def tta_asked(args) -> dict:
  """{flip, scales} of `runs.preseg_probability` from --tta_flip / --tta_scales;
  {} when neither asks for test-time augmentation."""
  if not args.tta_flip and tuple(args.tta_scales) == (1.0,):
    return {}
  return dict(flip=args.tta_flip, scales=tuple(args.tta_scales))


def tta_label(flip: bool, scales) -> str:
  """'test-time flip, scales 1/1.25' (the segmentation rows' method suffix)."""
  parts = (['flip'] if flip else []) + (
      ['scales ' + '/'.join(f'{s:g}' for s in scales)] if tuple(scales) != (1.0,) else [])
  return 'test-time ' + ', '.join(parts)


def seg_dataset(runs: list[Run], args) -> str:
  if args.seg_dataset:
    return args.seg_dataset
  preseg = [r for r in runs if r.config.stage == 'preseg']
  return (preseg or runs)[0].config.dataset


def _template_config(runs: list[Run]):
  return next((r for r in runs if r.config.stage == 'matting'), runs[0]).config


def _name(workdir: str) -> str:
  return os.path.basename(os.path.abspath(workdir).rstrip('/'))


def _evaluate(config, predict, split: str, which=METRICS) -> dict:
  """Mean metrics of `predict` (images -> alpha) over `split`, each example
  cropped to its photo region (`evaluate.evaluate`); 'n': the number of examples.

  Raises:
    ValueError: no examples in the split.
  """
  results, _ = eval_lib.evaluate_split(config, split,
                                       lambda batch: {'alpha': predict(batch['image'])}, which)
  return {k.split('/', 1)[-1]: v for k, v in results.items()}


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
          axis.plot(steps, values, label=f'{run.name} ({run.label})', marker='.')
      axis.set_xlabel('step')
      axis.set_title(key)
      axis.grid(alpha=0.3)
      if axis.lines:
        axis.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, f'curves_{stage}.png')
    atomic.write_with(path, fig.savefig, suffix='.png')
    plt.close(fig)
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
  atomic.write_with(path, fig.savefig, suffix='.png')
  plt.close(fig)
  return path


def data_pictures_allowed(dataset: str, no_data_pictures: bool = False) -> bool:
  """Pictures of data-set images go into the report only for generated data
  (`synthetic_portraits`, `synthetic`): real photos (matting_sets, ...) are
  research data and must never be committed."""
  return not no_data_pictures and dataset.split('/')[0] in SYNTHETIC_DATASETS


def sample_columns(runs: list[Run], args, count: int = 4) -> dict:
  """The first `count` test images and every method's alpha for them."""
  template = _eval_config(_template_config(runs), args)
  batch = next(input_pipeline.eval_batches(
      template, args.split, process_index=0, process_count=1, per_process_batch=count))
  valid = batch['valid'] > 0
  images = batch['image'][valid]
  prob = runs_lib.preseg_prob_fn(args.preseg_dir)(images)
  cf = closed_form_configs.get_config(args.cf_config)
  columns = {'input': images, 'ground truth': batch['alpha'][valid], 'pre-seg': prob}
  for run in runs:
    if run.config.stage == 'matting':
      prior = runs_lib.preseg_prob_fn(matting_preseg(run, args))
      columns[run.name] = _predictor(run, prior)(images)
  trimaps = baselines.preseg_trimaps(prob, cf)
  columns['trimap (pre-seg)'] = trimaps
  columns['closed-form'] = baselines.closed_form_batch(images, trimaps, cf.cg_maxiter)
  return columns


# ---------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------

_fmt = stats.fmt
_NAMES = {'iou': 'IoU', 'boundary_f': 'boundary F', 'sad': 'SAD', 'mse': 'MSE', 'grad': 'Grad',
          'conn': 'Conn'}


def _title(key: str) -> str:
  base = key.replace('_unknown', '')
  return _NAMES.get(base, base) + (' (unknown)' if key.endswith('_unknown') else '')


def table(rows: list[dict], groups: list[dict], lead: tuple, keys: tuple) -> list[str]:
  """Markdown: one line per run row, then one 'mean ± spread' line per variant
  with more than one seed (spread: half the range over the seeds)."""
  head = '| ' + ' | '.join(list(lead) + ['n'] + [_title(k) for k in keys]) + ' |'
  lines = [head, '|' + '---|' * (len(lead) + 1 + len(keys))]
  for row in rows:
    lines.append('| ' + ' | '.join([str(row.get(c, '')) for c in lead] + [str(row.get('n', ''))]
                                   + [_fmt(row.get(k)) for k in keys]) + ' |')
  for group in groups:
    if group['n'] < 2:
      continue
    cells = [f"**{group['method']}**" if c == 'method' else
             f"**mean ± spread, {group['n']} seeds**" if c == 'run' else '' for c in lead]
    values = [f"**{_fmt(group.get(k))} ± {_fmt(group.get(k + '_spread'))}**" for k in keys]
    lines.append('| ' + ' | '.join(cells + ['']  + values) + ' |')
  return lines


def results_table(rows: list[dict]) -> list[str]:
  return table(rows, stats.group_seeds(rows, COLUMNS), ('method', 'trimap', 'run'), COLUMNS)


def _group(groups, method_prefix):
  return next((g for g in groups if g['method'].startswith(method_prefix)), None)


def _claim(lines, claim, better, worse, keys):
  if better is None or worse is None:
    lines.append(f'- {claim}: not tested (a run is missing).')
    return None
  text, outcomes = stats.verdict(better, worse, keys)
  detail = '; '.join(f'{d} ({o})' for o, d in outcomes)
  lines.append(f"- {claim}: **{text}** ({better['n']} vs {worse['n']} seeds; {detail}).")
  return text


def _prior_group(seg_rows: list[dict], baseline: dict | None) -> dict | None:
  """The segmentation row of the one stage-1 run every matting run refined (the
  automatic baseline's run), as a group without seed noise; None when the
  matting runs used different stage-1 runs (then the variant's seeds are used)."""
  if not baseline or not baseline.get('deterministic') or len(baseline['runs']) != 1:
    return None
  row = next((r for r in seg_rows if r['run'] == baseline['runs'][0]), None)
  if row is None:
    return None
  row = dict(row, method=f"{row['method']} {row['run']} (the matting runs' stage 1)",
             deterministic=True)
  return stats.group_seeds([row], SEG_COLUMNS)[0]


def verdicts(rows: list[dict], seg_rows: list[dict] | None = None,
             alpha_rows: list[dict] | None = None) -> list[str]:
  """The method's claims, each checked against the variant means (report_stats)."""
  groups = stats.group_seeds(rows, COLUMNS + ('boundary_f',))
  seg = stats.group_seeds(seg_rows or [], SEG_COLUMNS)
  method = _group(groups, 'matting, adversarial') or _group(groups, 'matting, no adv')
  lines = []
  if seg:
    _claim(lines, 'the improved DeepLabV3+ segments better than the original '
           '(segmentation table: IoU, boundary F)',
           _group(seg, 'DeepLabV3+ improved'), _group(seg, 'DeepLabV3+ original'), SEG_COLUMNS)
  else:
    _claim(lines, 'the improved DeepLabV3+ segments better than the original (IoU, SAD)',
           _group(groups, 'DeepLabV3+ improved'), _group(groups, 'DeepLabV3+ original'),
           ('iou', 'sad'))
  _claim(lines, 'the adversarial loss improves the matting stage (all eight matting numbers)',
         _group(groups, 'matting, adversarial'), _group(groups, 'matting, no adversarial'),
         COLUMNS[1:])
  name = f"the matting stage ({method['method']})" if method else 'the matting stage'
  _claim(lines, f'{name} beats the pre-segmentation used as alpha (automatic baseline)',
         method, _group(groups, 'pre-segmentation as alpha'), COLUMNS[1:])
  _claim(lines, f'{name} beats closed-form matting with a trimap from the same '
         'pre-segmentation', method, next(
             (g for g in groups if g['method'] == 'closed-form matting (pymatting)'), None),
         COLUMNS[1:])
  if seg and method:
    seg_method = _group(seg, method['method'])
    seg_preseg = _prior_group(seg_rows, _group(groups, 'pre-segmentation as alpha'))
    seg_preseg = (seg_preseg or _group(seg, 'DeepLabV3+ improved') or
                  _group(seg, 'DeepLabV3+ original'))
    if seg_method and seg_preseg:
      iou, iou_detail = stats.compare(seg_method, seg_preseg, 'iou')
      bf, bf_detail = stats.compare(seg_method, seg_preseg, 'boundary_f')
      ok = iou in ('win', 'tie') and bf == 'win'
      state = ('holds' if ok else '1 seed: spread unknown' if 'unknown' in (iou, bf)
               else 'does not hold')
      lines.append(f"- {name}'s alpha >= 0.5 keeps the IoU of `{seg_preseg['method']}` and "
                   f'raises its boundary F (segmentation table): **{state}** '
                   f'({iou_detail} ({iou}); {bf_detail} ({bf})).')
  for trimap in sorted({r['trimap'] for r in alpha_rows or []}):
    chosen = [r for r in alpha_rows if r['trimap'] == trimap]
    agroups = stats.group_seeds(chosen, COLUMNS[1:])
    _claim(lines, f'alphamatting.com ({trimap}): {name} with a prior from the trimap beats '
           'closed-form matting with the same trimap', method and _group(agroups, method['method']),
           _group(agroups, 'closed-form'), COLUMNS[1:])
  return lines


def write_report(runs, rows, seg_rows, peers, alpha_rows, cutouts, curves, samples_path,
                 args, out_dir) -> str:
  """report.md in out_dir (atomically); returns its path."""
  by_stage = {s: [r for r in runs if r.config.stage == s] for s in ('preseg', 'matting')}
  template = _eval_config(_template_config(runs), args)
  lines = [
      '# bgmat: the method\'s comparisons', '',
      f'Built by `python -m bgmat.report {" ".join(args.argv)}` on '
      f'{datetime.date.today().isoformat()}; machine: {stats.machine_line()}; '
      f'jax {jax.__version__} on {jax.devices()[0].device_kind}.', '',
      'Runs (a variant with several runs: seeds): ' + '; '.join(
          f'`{r.name}` ({r.label}, `{r.config.model.name}`, seed {r.config.get("seed", "?")}, '
          f'{_last_step(r)} steps, batch {r.config.batch_size}, {_sizes(r.config)})'
          for r in runs) + '.', '',
      f'Pre-segmentation behind the matting rows and the baselines: '
      f'{", ".join(sorted({"`%s`" % _name(matting_preseg(r, args)) for r in by_stage["matting"]}) or ["`%s`" % _name(args.preseg_dir)])}.', '',
      'Seeds: rows of one method are seeds; **mean ± spread** rows give their mean and '
      'spread = half the range ((max - min) / 2) over the seeds. A claim compares variant '
      'means; a difference no larger than the sum of the two spreads is a **tie**, never a '
      'win; with a single seed the spread is unknown and no win is counted. Baselines computed '
      'once from the one pre-segmentation every matting run used (or from the ground truth) '
      'have no seed noise (spread 0).', '']
  if seg_rows is not None:
    seg_groups = stats.group_seeds(seg_rows, SEG_COLUMNS)
    lines += [f'## Segmentation ({seg_dataset(runs, args)}, {args.seg_split} split)', '',
              'IoU and boundary F (DAVIS contour accuracy, `metrics.boundary_f`) of alpha >= 0.5 '
              'against the data set\'s mask, on the photo region of each letterboxed example.', '',
              *table(seg_rows, seg_groups, ('method', 'run', 'split'), SEG_COLUMNS)]
    for peer in peers:
      lines.append(f"| {peer['method']} (peer, {peer['source']}) | - | {peer['split'] or '?'} | "
                   f"{peer['n'] if peer['n'] is not None else '?'} | {_fmt(peer['iou'])} | "
                   f"{_fmt(peer['boundary_f'])} |")
    mismatch = [p for p in peers if p['split'] and p['split'] != args.seg_split]
    if mismatch:
      lines += ['', '**Peer rows measured on another split:** ' + ', '.join(
          f"{p['method']} ({p['split']})" for p in mismatch) + '; not comparable.']
    lines.append('')
  lines += [
      f'## Matting ({template.dataset}, {args.split} split)', '',
      f'Data: `{template.dataset}`, {args.split} split'
      + (f' (first {args.max_examples} examples)' if args.max_examples else '') +
      f', evaluated at {template.image_size} px on the photo region of each letterboxed example. '
      'Metrics: DIM conventions (`bgmat/metrics.py`: SAD/1000, MSE, Grad/1000, Conn/1000) on '
      'uint8-quantised mattes, whole image and the unknown band of the ground-truth trimap '
      f'(radius {template.trimap_radius} px); IoU of alpha >= 0.5.', '',
      *results_table(rows), '',
      'Closed-form matting: Levin et al. 2008 via pymatting `estimate_alpha_cf` '
      '(`bgmat/baselines.py`, `configs/closed_form.py`); its pre-segmentation trimap is '
      'sure foreground where no pixel within the band has p < the upper threshold, sure '
      'background where none has p > the lower one, unknown elsewhere.', '']
  if alpha_rows:
    lines += ['## alphamatting.com (true soft alpha)', '',
              f'{alpha_rows[0]["n"]} photos of `{args.alphamatting}`, '
              + (f'downscaled to a long side of at most {args.alphamatting_max_side} px '
                 '(image and alpha bilinear, trimap nearest)' if args.alphamatting_max_side
                 else 'at full size') +
              '. The matting stage gets the prior made from the trimap (foreground 1, '
              'background 0, unknown ' + ('0.5' if args.alphamatting_prior == 'flat' else
                                          'd_bg / (d_bg + d_fg), the distances to the known '
                                          'regions') + ', ' +
              (f'Gaussian blur sigma {args.alphamatting_blur} px' if args.alphamatting_blur
               else 'not blurred') + '); closed-form matting gets the same trimap. '
              + ('The matting stage\'s alpha is evaluated with the trimap\'s known regions '
                 'pasted in. ' if args.alphamatting_paste_known else '') +
              '"(unknown)": over the trimap\'s unknown region.', '']
    for trimap in sorted({r['trimap'] for r in alpha_rows}):
      chosen = [r for r in alpha_rows if r['trimap'] == trimap]
      lines += [f'### {trimap}', '', *table(chosen, stats.group_seeds(chosen, COLUMNS[1:]),
                                            ('method', 'trimap', 'run'), COLUMNS[1:]), '']
  lines += ['## The method\'s claims, checked', '', *verdicts(rows, seg_rows, alpha_rows), '']
  if cutouts:
    lines += ['## Cut-outs of held-out photos', '',
              'scikit-image\'s astronaut and matplotlib\'s Grace Hopper (never used for '
              'training or tuning), `bgmat.Remover.from_workdir` (as `bgmat remove`); columns: '
              'input, ' + ', '.join(f'`{entry[0]}`' for entry in args.cutout_runs) +
              ', on a checkerboard.', '']
    lines += [f'![{photo}]({os.path.basename(path)})' for photo, path in cutouts] + ['']
  lines += ['## Training curves', '']
  for path in curves:
    lines.append(f'![{os.path.basename(path)}]({os.path.basename(path)})')
  if samples_path:
    lines += ['', '## Sample test mattes', '', f'![samples]({os.path.basename(samples_path)})', '']
  else:
    lines += ['', f'No pictures of `{template.dataset}` examples: real photos are research '
              'data and stay out of the report.', '']
  if by_stage['matting'] and not by_stage['preseg']:
    lines.append('No preseg run was given: the original-vs-improved row is missing.')
  path = os.path.join(out_dir, 'report.md')
  atomic.write_text(path, '\n'.join(lines) + '\n')
  return path


def _last_step(run: Run) -> int:
  steps = [r['step'] for r in run.scalars]
  return max(steps) if steps else 0


def choose_preseg(runs: list[Run], given: str = '') -> str:
  """Workdir of the stage-1 model for the baselines (see module doc)."""
  if given:
    if not os.path.isdir(given):
      raise FileNotFoundError(f'--preseg {given}: no such directory')
    return os.path.abspath(given)
  for run in runs:
    if run.config.stage == 'matting':
      path = runs_lib.resolve_preseg_workdir(run.config, run.workdir)
      if os.path.isdir(path):
        return path
  improved = [r for r in runs if r.config.stage == 'preseg' and r.improved]
  fallback = improved or [r for r in runs if r.config.stage == 'preseg']
  if not fallback:
    raise ValueError('No pre-segmentation: give a preseg workdir or a matting run whose '
                     'preseg_workdir exists.')
  return fallback[0].workdir


def _write_json(path: str, data) -> None:
  atomic.write_json(path, data, indent=1)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdirs', nargs='+', required=True,
                      help='preseg and matting runs; runs of one variant are seeds')
  parser.add_argument('--out', required=True)
  parser.add_argument('--data_dir', default='', help='override the runs\' data_dir')
  parser.add_argument('--split', default='test', help='matting table split')
  parser.add_argument('--max_examples', type=int, default=0, help='0: the whole split')
  parser.add_argument('--preseg', default='', help='stage-1 workdir for the matting rows '
                      'and baselines (default: each matting run\'s preseg_workdir)')
  parser.add_argument('--cf_config', default='demo', help='configs/closed_form.py argument')
  parser.add_argument('--seg_split', default='validation',
                      help='segmentation table split; "none" skips the table')
  parser.add_argument('--seg_dataset', default='', help='segmentation table data set '
                      '(default: the preseg runs\', e.g. matting_sets/portraits_seg)')
  parser.add_argument('--peer_table', nargs='*', default=[],
                      help='peer segmentation results: .json or markdown (report_stats)')
  parser.add_argument('--tta_flip', action='store_true',
                      help='segmentation table: also each stage-1 run with test-time flip '
                      'averaging, and each matting run on that prior (extra rows; the claims '
                      'compare the plain rows)')
  parser.add_argument('--tta_scales', type=float, nargs='+', default=[1.0],
                      help='segmentation table: also each stage-1 run with its logits averaged '
                      'over these input scales (with --tta_flip: and their mirrors)')
  parser.add_argument('--alphamatting', default='', help='alphamatting.com directory')
  parser.add_argument('--alphamatting_trimaps', nargs='+', default=['trimap1'])
  parser.add_argument('--alphamatting_max_side', type=int, default=400,
                      help='downscale photos to this long side (0: full size)')
  parser.add_argument('--alphamatting_blur', type=float, default=0.0,
                      help='Gaussian sigma (px) of the prior made from the trimap')
  parser.add_argument('--alphamatting_prior', choices=report_extras.PRIOR_FILLS, default='flat',
                      help="the prior's unknown region: 0.5 (flat) or a distance ramp")
  parser.add_argument('--alphamatting_paste_known', action='store_true',
                      help="evaluate the matting stage's alpha with the trimap's known regions "
                           'pasted in (as trimap-based matting is evaluated)')
  parser.add_argument('--cutouts', action='store_true',
                      help='cut-outs of the held-out astronaut and Grace Hopper, one column '
                           'per seed of the method (the adversarial matting runs, else all)')
  parser.add_argument('--compare_workdir', default='',
                      help='a second matting run for the cut-outs (e.g. the demo model)')
  parser.add_argument('--no_data_pictures', action='store_true',
                      help='no sample grid (always off for data sets that are not synthetic)')
  args = parser.parse_args(argv)
  args.argv = list(argv)
  return args


def main(argv=None) -> str:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  runs = [Run(w) for w in args.workdirs]
  runs.sort(key=lambda r: (r.config.stage != 'preseg', r.improved, r.label, r.name))
  args.preseg_dir = choose_preseg(runs, args.preseg)
  args.preseg_name = _name(args.preseg_dir)
  peers = [dict(p, source=os.path.basename(path)) for path in args.peer_table
           for p in stats.read_peer_table(path)]
  out_dir = os.path.abspath(args.out)
  os.makedirs(out_dir, exist_ok=True)
  seg_rows = None if args.seg_split == 'none' else segmentation_rows(runs, args)
  rows = evaluate_rows(runs, args)
  matting = [r for r in runs if r.config.stage == 'matting']
  method_runs = ([r for r in matting if r.config.adv.weight > 0] or matting)
  alpha_rows = None
  if args.alphamatting:
    if not matting:
      raise ValueError('--alphamatting needs a matting run in --workdirs')
    alpha_rows = report_extras.alphamatting_rows(
        args.alphamatting, [(r.label, r.name, r.workdir) for r in matting],
        trimaps=args.alphamatting_trimaps, max_side=args.alphamatting_max_side,
        blur_sigma=args.alphamatting_blur, prior_fill=args.alphamatting_prior,
        paste_known=args.alphamatting_paste_known,
        cg_maxiter=closed_form_configs.get_config(args.cf_config).cg_maxiter)
  cutouts = []
  if args.cutouts:
    if not matting:
      raise ValueError('--cutouts needs a matting run in --workdirs')
    # Every seed of the method: a failure one seed shows and another does not is seed noise.
    args.cutout_runs = [(r.name, r.workdir) for r in method_runs]
    tta = tta_asked(args)
    if tta:
      # The same seeds again on the stage 1's test-time-augmented prior.
      kwargs = dict(preseg_flip=tta['flip'], preseg_scales=tta['scales'])
      args.cutout_runs += [(f'{r.name}, stage 1 with {tta_label(**tta)}', r.workdir, kwargs)
                           for r in method_runs]
    if args.compare_workdir:
      args.cutout_runs.append((_name(args.compare_workdir), args.compare_workdir))
    cutouts = report_extras.render_cutouts(args.cutout_runs, out_dir)
  curves = plot_curves(runs, out_dir)
  samples = None
  dataset = _eval_config(_template_config(runs), args).dataset
  if data_pictures_allowed(dataset, args.no_data_pictures):
    samples = plot_samples(sample_columns(runs, args), out_dir)
  path = write_report(runs, rows, seg_rows, peers, alpha_rows, cutouts, curves, samples,
                      args, out_dir)
  _write_json(os.path.join(out_dir, 'results.json'), rows)
  _write_json(os.path.join(out_dir, 'summary.json'), dict(
      command='python -m bgmat.report ' + ' '.join(argv), machine=stats.machine_line(),
      jax=jax.__version__, date=datetime.date.today().isoformat(),
      matting_groups=stats.group_seeds(rows, COLUMNS + ('boundary_f',)),
      segmentation=seg_rows, segmentation_groups=stats.group_seeds(seg_rows or [], SEG_COLUMNS),
      peers=peers, alphamatting=alpha_rows,
      verdicts=verdicts(rows, seg_rows, alpha_rows)))
  print(f'wrote {path}')
  return path


if __name__ == '__main__':
  main()
