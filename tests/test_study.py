"""`bgmat.study`: the commands it runs (captured, nothing trained or built)."""

import json
import os
import re
import subprocess
import sys

import pytest

from bgmat import runs
from bgmat import study


@pytest.fixture
def data(tmp_path):
  for folder in ('portraits/image', 'portraits/mask', 'backgrounds'):
    os.makedirs(tmp_path / 'data' / folder)
  return str(tmp_path / 'data')


@pytest.fixture
def commands(monkeypatch):
  ran = []
  monkeypatch.setattr(study, '_run', lambda command, log_path=None: ran.append(command))
  return ran


def _train_commands(ran, stage):
  return [c for c in ran if 'bgmat.main' in c and any(f'configs/{stage}.py' in a for a in c)]


def test_overrides_reach_every_run_of_their_stage_only(tmp_path, data, commands):
  study.main(['--data', data, '--study', str(tmp_path / 'study'), '--seeds', '0', '1',
              '--stages', 'preseg,matting', '--preseg_override', 'num_train_steps=3000',
              '--matting_override', 'num_train_steps=2400', 'loss.grad_unknown=1.0'])
  preseg, matting = _train_commands(commands, 'preseg'), _train_commands(commands, 'matting')
  assert len(preseg) == 4 and len(matting) == 4  # 2 variants x 2 seeds each.
  for command in preseg:
    assert '--config.num_train_steps=3000' in command
    assert not any('grad_unknown' in a or '=2400' in a for a in command)
  for command in matting:
    assert command[-2:] == ['--config.num_train_steps=2400', '--config.loss.grad_unknown=1.0']
    assert '--config.preseg_workdir=preseg_improved_s0' in command
  # Nothing built, nothing reported: only the asked-for stages ran.
  assert len(commands) == 8


def test_finished_runs_are_skipped_and_report_gets_tta(tmp_path, data, commands):
  root = tmp_path / 'study'
  os.makedirs(root / 'preseg_improved_s0' / 'eval')
  (root / 'preseg_improved_s0' / 'eval' / 'test_metrics.json').write_text(json.dumps({}))
  study.main(['--data', data, '--study', str(root), '--seeds', '0',
              '--stages', 'preseg,report', '--tta_flip', '--tta_scales', '1', '1.25'])
  preseg = _train_commands(commands, 'preseg')
  assert [c[c.index('--workdir') + 1] for c in preseg] == [str(root / 'preseg_original_s0')]
  report = [c for c in commands if 'bgmat.report' in c]
  assert len(report) == 1
  (command,) = report
  assert '--tta_flip' in command
  at = command.index('--tta_scales')
  assert command[at + 1:at + 3] == ['1', '1.25']
  # Only the finished run is reported.
  workdirs = command[command.index('--workdirs') + 1:command.index('--data_dir')]
  assert workdirs == [str(root / 'preseg_improved_s0')]


@pytest.mark.parametrize('argv, message', [
    (['--matting_override', 'num_train_steps'], 'expected KEY=VALUE'),
    (['--preseg_override', '=3'], 'expected KEY=VALUE'),
    (['--preseg_override', 'opt lr=3'], 'expected KEY=VALUE'),
    (['--tta_scales', '0'], 'tta_scales must be a non-empty list of numbers > 0'),
    (['--stages', 'preseg,trian'], "unknown stages \\['trian'\\]"),
])
def test_bad_arguments_are_refused_before_anything_runs(data, commands, capsys, argv, message):
  with pytest.raises(SystemExit):
    study.main(['--data', data, *argv])
  assert commands == []
  assert re.search('error: .*' + message, capsys.readouterr().err)


def test_missing_data_folder_is_named(tmp_path, commands, capsys):
  with pytest.raises(SystemExit):
    study.main(['--data', str(tmp_path / 'nowhere')])
  assert 'portraits/image: no such folder' in capsys.readouterr().err
  assert commands == []


def _record(root, run, config):
  os.makedirs(root / run, exist_ok=True)
  (root / run / 'config.json').write_text(json.dumps(config))


def test_a_run_of_another_recipe_is_refused_before_anything_runs(tmp_path, data, commands,
                                                                   capsys):
  root = tmp_path / 'study'
  _record(root, 'matting_adv_s0', {'num_train_steps': 1200, 'loss': {'grad_unknown': 1.0}})
  with pytest.raises(SystemExit):
    study.main(['--data', data, '--study', str(root), '--seeds', '0', '--stages', 'matting',
                '--matting_override', 'num_train_steps=2400', 'loss.grad_unknown=1.0'])
  err = capsys.readouterr().err
  assert 'matting_adv_s0: num_train_steps: recorded 1200, asked 2400' in err
  assert 'grad_unknown' not in err  # 1.0 == 1.0: only the differing key is named.
  assert commands == []


def test_a_run_of_the_same_recipe_resumes(tmp_path, data, commands):
  root = tmp_path / 'study'
  _record(root, 'matting_adv_s0', {'num_train_steps': 2400, 'loss': {'grad_unknown': 1.0},
                                   'prior_scales': [0.5, 1.0], 'adversarial': True})
  study.main(['--data', data, '--study', str(root), '--seeds', '0', '--stages', 'matting',
              '--matting_override', 'num_train_steps=2400', 'loss.grad_unknown=1',
              'prior_scales=(0.5, 1)', 'adversarial=True'])
  assert len(_train_commands(commands, 'matting')) == 2


@pytest.mark.parametrize('recorded, text, same', [
    (1200, '1200', True), (1.0, '1', True), (1e-4, '0.0001', True), (1200, '2400', False),
    (True, 'true', True), (True, 'False', False), (False, '0', True),
    ([0.5, 1.0], '(0.5, 1.0)', True), ([0.5, 1.0], '(0.5,)', False), ('adamw', 'adamw', True),
    ('adamw', 'sgd', False), (None, 'None', True), (3, 'three', False),
])
def test_recorded_values_compare_as_the_config_parses_them(recorded, text, same):
  assert study._same_value(recorded, text) is same


def test_missing_key_and_bad_config_json_are_named(tmp_path):
  _record(tmp_path, 'run', {'num_train_steps': 10})
  assert study.recipe_mismatches(str(tmp_path / 'run'), ['loss.grad_unknown=1']) == [
      'loss.grad_unknown: not recorded, asked 1']
  assert study.recipe_mismatches(str(tmp_path / 'absent'), ['num_train_steps=3']) == []
  (tmp_path / 'run' / 'config.json').write_text('{not json')
  with pytest.raises(ValueError, match='config.json: not valid JSON'):
    study.recipe_mismatches(str(tmp_path / 'run'), ['num_train_steps=3'])


def test_the_study_driver_reads_configs_without_jax(tmp_path):
  # The driver (`python -m bgmat.study`) only starts subprocesses; reading a
  # run's config.json must not import jax (config_defaults.read_run_config).
  code = ('import sys; from bgmat import study; '
          f'print(study.recipe_mismatches({str(tmp_path)!r}, ["a=1"])); '
          'print(sorted(m for m in ("jax", "flax", "optax") if m in sys.modules))')
  (tmp_path / 'config.json').write_text('{"a": 2}')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.stdout.split('\n')[:2] == ["['a: recorded 2, asked 1']", '[]']


def test_run_config_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='no config.json'):
    runs.read_config(str(tmp_path))
  for text, match in (('{"a": ', 'not valid JSON'), ('[1, 2]', 'not a JSON object')):
    (tmp_path / 'config.json').write_text(text)
    with pytest.raises(ValueError, match=f'{tmp_path}/config.json: {match}'):
      runs.read_config(str(tmp_path))
