r"""The real-portrait study, from a data folder to the report (`make study`).

  python -m bgmat.study --data ../shared/data --study runs/study [--seeds 0 1] \
      [--stages data,preseg,matting,report] [--mediapipe_python /path/to/venv/bin/python] \
      [--preseg_override KEY=VALUE ...] [--matting_override KEY=VALUE ...] \
      [--tta_flip] [--tta_scales 1 1.25 1.5 1.75]

Steps (each skipped when its output exists, so an interrupted study resumes;
an interrupted training run resumes from its last checkpoint):
  1. data: two TFDS sets under STUDY/data, both split by the same stable hash
     of the photo id (10% validation, 10% test):
     `matting_sets/portraits_seg`: the portraits with their hand-labelled
     binary masks (stage 1 trains and is scored on these);
     `matting_sets/portraits_study`: the portraits auto-labelled (mask ->
     trimap -> closed-form alpha -> foreground colours), filtered by quality
     and label confidence, each on its own background and composited onto
     real backgrounds, train and eval backgrounds disjoint (stage 2).
  2. preseg: `configs/preseg.py:study` improved and original, one run per seed.
  3. matting: `configs/matting.py:study` with and without the adversarial
     loss, one run per seed, all on the same frozen stage 1 (improved, first
     seed), so that the matting comparisons change one thing.
  4. report: `python -m bgmat.report` over all runs -> STUDY/report.

A recipe other than the `study` configs' (e.g. the longer one of README "The
study": `--preseg_override num_train_steps=3000 --matting_override
num_train_steps=2400 loss.grad_unknown=1.0 --tta_flip --tta_scales 1 1.25 1.5
1.75`) is given as config overrides, passed to every run of that stage as
`--config.KEY=VALUE` (each run's config.json records them); `--tta_*` add the
report's rows of stage 1 with test-time augmentation. Give each recipe its own
--study folder: a run already there (finished, or to be resumed) is checked
against the overrides before anything runs, and the study stops, naming the
run and the keys, when its config.json records other values.

DATA must hold `portraits/{image,mask}`, `backgrounds/` and, for the report's
true-alpha check, `alphamatting/` (see each folder's README). Nothing here is
meant to be committed: STUDY is git-ignored.
"""

import argparse
import ast
import os
import subprocess
import sys

from bgmat import config_defaults
from bgmat.inference import resolution

STAGES = ('data', 'preseg', 'matting', 'peer', 'report')


def _run(command: list[str], log_path: str | None = None) -> None:
  print('+ ' + ' '.join(command), flush=True)
  if log_path is None:
    subprocess.run(command, check=True)
    return
  with open(log_path, 'a', encoding='utf-8') as log:
    subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def _finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, 'eval', 'test_metrics.json'))


def _same_value(recorded, text: str) -> bool:
  """Whether `text` (a --config.KEY=VALUE value) is the value config.json recorded."""
  if isinstance(recorded, bool):
    return text.strip().lower() in (('true', '1') if recorded else ('false', '0'))
  if isinstance(recorded, (int, float)):
    try:
      return float(text) == float(recorded)
    except ValueError:
      return False
  if isinstance(recorded, (list, tuple)):
    try:
      parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return False
    parsed = list(parsed) if isinstance(parsed, (list, tuple)) else [parsed]
    return len(parsed) == len(recorded) and all(
        _same_value(r, str(p)) for r, p in zip(recorded, parsed))
  if recorded is None:
    return text.strip() in ('None', '')
  return str(recorded) == text


def recipe_mismatches(workdir: str, overrides: list[str]) -> list[str]:
  """The overrides that an existing run was not trained with.

  Args:
    workdir: a run folder; nothing is checked when it has no config.json (a
      run not started yet).
    overrides: KEY=VALUE strings (KEY dotted, e.g. loss.grad_unknown).
  Returns:
    one line per override whose KEY config.json lacks or records with another
    value ("KEY: recorded R, asked V"); empty when the run matches.
  Raises:
    ValueError: config.json is not valid JSON (naming the file).
  """
  try:
    config = config_defaults.read_run_config(workdir)
  except FileNotFoundError:
    return []
  mismatches = []
  for override in overrides:
    key, _, text = override.partition('=')
    value = config
    for part in key.split('.'):
      if not isinstance(value, dict) or part not in value:
        mismatches.append(f'{key}: not recorded, asked {text}')
        break
      value = value[part]
    else:
      if not _same_value(value, text):
        mismatches.append(f'{key}: recorded {value!r}, asked {text}')
  return mismatches


def _variants(stage: str) -> dict[str, str]:
  """Variant name -> config argument (`configs/STAGE.py:ARG`)."""
  if stage == 'preseg':
    return {'improved': 'study', 'original': 'study,original'}
  return {'adv': 'study', 'noadv': 'study,noadv'}


def _workdir(args, stage: str, name: str, seed: int) -> str:
  return os.path.join(args.study, f'{stage}_{name}_s{seed}')


def build_data(args, data_dir: str) -> None:
  py = sys.executable
  portraits = os.path.join(args.data, 'portraits')
  common = ['--data_dir', data_dir, '--max_side', '320', '--val_fraction', '0.1',
            '--test_fraction', '0.1']
  _run([py, '-m', 'data_prep.build', 'matting_sets', '--layout', 'natural',
        '--image', os.path.join(portraits, 'image'), '--alpha', os.path.join(portraits, 'mask'),
        '--fg_method', 'none', '--name', 'portraits_seg', *common])
  _run([py, '-m', 'data_prep.build', 'matting_sets', '--layout', 'autolabel',
        '--image', os.path.join(portraits, 'image'), '--mask', os.path.join(portraits, 'mask'),
        '--bg', os.path.join(args.data, 'backgrounds'), '--num_bg', '2', '--eval_num_bg', '1',
        '--name', 'portraits_study', '--workers', str(args.workers), *common])


def train_runs(args, data_dir: str, stage: str) -> list[str]:
  """Trains (or resumes) every run of `stage`; returns their workdirs."""
  workdirs = []
  for seed in args.seeds:
    for name, arg in _variants(stage).items():
      workdir = _workdir(args, stage, name, seed)
      workdirs.append(workdir)
      if _finished(workdir) or stage not in args.stages:
        continue
      command = [sys.executable, '-m', 'bgmat.main', '--config', f'configs/{stage}.py:{arg}',
                 '--workdir', workdir, f'--config.data_dir={data_dir}',
                 f'--config.seed={seed}']
      if stage == 'matting':
        command.append(f'--config.preseg_workdir=preseg_improved_s{args.seeds[0]}')
      command += [f'--config.{override}' for override in getattr(args, f'{stage}_override')]
      os.makedirs(args.study, exist_ok=True)
      _run(command, workdir + '.log')
  return workdirs


def run_peer(args, data_dir: str) -> None:
  """MediaPipe's selfie segmenter on the segmentation validation split
  (bench/peer_mediapipe.py; mediapipe lives in its own venv)."""
  work = os.path.abspath(os.path.join(args.study, 'peer'))
  out = os.path.join(work, 'mediapipe_validation.md')
  if os.path.exists(os.path.splitext(out)[0] + '.json'):
    return
  common = ['--dataset', 'matting_sets/portraits_seg', '--data_dir', data_dir,
            '--split', 'validation', '--work_dir', os.path.join(work, 'mp')]
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench',
                        'peer_mediapipe.py')
  # dump / score import bgmat (run as a module from the repository root);
  # segment runs in mediapipe's venv and imports only numpy, PIL, mediapipe.
  _run([sys.executable, '-m', 'bench.peer_mediapipe', 'dump', *common])
  _run([args.mediapipe_python, script, 'segment', *common])
  _run([sys.executable, '-m', 'bench.peer_mediapipe', 'score', *common, '--out', out])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  parser.add_argument('--data', required=True, help='folder with portraits/, backgrounds/, '
                      'alphamatting/')
  parser.add_argument('--study', default='runs/study', help='output folder')
  parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
  parser.add_argument('--stages', default=','.join(STAGES),
                      help=f'comma-separated subset of {STAGES}')
  parser.add_argument('--workers', type=int, default=2, help='data build processes')
  parser.add_argument('--compare_workdir', default='',
                      help='another matting run (e.g. the demo model) for the cut-outs')
  parser.add_argument('--mediapipe_python', default='',
                      help='python of a venv with mediapipe==0.10.21 (bench/peer_mediapipe.py)')
  parser.add_argument('--preseg_override', nargs='+', default=[], metavar='KEY=VALUE',
                      help='config overrides of every stage-1 run, e.g. num_train_steps=3000')
  parser.add_argument('--matting_override', nargs='+', default=[], metavar='KEY=VALUE',
                      help='config overrides of every matting run, e.g. loss.grad_unknown=1.0')
  parser.add_argument('--tta_flip', action='store_true',
                      help="the report's stage-1 rows again with test-time flipping")
  parser.add_argument('--tta_scales', type=float, nargs='+', default=[1.0],
                      help="... and over these input scales (bgmat.report's --tta_scales)")
  args = parser.parse_args(argv)
  for override in args.preseg_override + args.matting_override:
    key, sep, _ = override.partition('=')
    if not sep or not key or not all(part.isidentifier() for part in key.split('.')):
      parser.error(f'override {override!r}: expected KEY=VALUE, KEY a config field such as '
                   'num_train_steps or loss.grad_unknown')
  try:
    resolution.check_scales(args.tta_scales, '--tta_scales')
  except ValueError as e:
    parser.error(str(e))
  args.stages = set(args.stages.split(','))
  unknown = args.stages - set(STAGES)
  if unknown:
    parser.error(f'unknown stages {sorted(unknown)}; valid: {STAGES}')
  for folder in ('portraits/image', 'portraits/mask', 'backgrounds'):
    if not os.path.isdir(os.path.join(args.data, folder)):
      parser.error(f'{os.path.join(args.data, folder)}: no such folder (--data must hold '
                   'portraits/image, portraits/mask and backgrounds/)')
  # Runs already there must be of the recipe asked for: refuse before anything runs.
  problems = []
  for stage in ('preseg', 'matting'):
    for seed in args.seeds:
      for name in _variants(stage):
        workdir = _workdir(args, stage, name, seed)
        try:
          mismatches = recipe_mismatches(workdir, getattr(args, f'{stage}_override'))
        except ValueError as e:
          mismatches = [str(e)]
        problems += [f'{workdir}: {m}' for m in mismatches]
  if problems:
    parser.error('runs already in --study were trained with another recipe (give this one '
                 'its own --study folder):\n  ' + '\n  '.join(problems))
  data_dir = os.path.abspath(os.path.join(args.study, 'data'))
  if 'data' in args.stages:
    build_data(args, data_dir)
  if 'peer' in args.stages and args.mediapipe_python:
    run_peer(args, data_dir)
  preseg = train_runs(args, data_dir, 'preseg')
  matting = train_runs(args, data_dir, 'matting')
  if 'report' in args.stages:
    done = [w for w in preseg + matting if _finished(w)]
    command = [sys.executable, '-m', 'bgmat.report', '--workdirs', *done,
               '--data_dir', data_dir, '--cf_config', 'study',
               '--seg_dataset', 'matting_sets/portraits_seg', '--seg_split', 'validation',
               '--cutouts', '--out', os.path.join(args.study, 'report')]
    if args.compare_workdir:
      command += ['--compare_workdir', args.compare_workdir]
    if args.tta_flip:
      command.append('--tta_flip')
    if tuple(args.tta_scales) != (1.0,):
      command += ['--tta_scales', *(f'{s:g}' for s in args.tta_scales)]
    peers = [os.path.join(args.study, 'peer', 'mediapipe_validation.json')]
    peers = [p for p in peers if os.path.exists(p)]
    if peers:
      command += ['--peer_table', *peers]
    alphamatting = os.path.join(args.data, 'alphamatting')
    if os.path.isdir(alphamatting):
      command += ['--alphamatting', alphamatting]
    _run(command)


if __name__ == '__main__':
  main()
