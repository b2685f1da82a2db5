"""bgmat.report from tiny runs: every row of the table, finite numbers, PNGs."""

import json
import os

import numpy as np
import pytest

from bgmat import baselines
from bgmat import report
from bgmat import train
import configs.matting as matting_configs
import configs.preseg as preseg_configs


def _train(config, tiny_data, workdir):
  config.dataset, config.data_dir = tiny_data
  config.eval_test = False
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def tiny_runs(tiny_data, tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  preseg = _train(preseg_configs.get_config('tiny'), tiny_data, str(root / 'preseg'))
  _train(preseg_configs.get_config('tiny,original'), tiny_data, str(root / 'preseg_original'))
  matting = matting_configs.get_config('tiny')
  matting.preseg_workdir = 'preseg'
  _train(matting, tiny_data, str(root / 'matting'))
  return root


def test_trimap_from_prob_bands():
  prob = np.zeros((20, 20), np.float32)
  prob[5:15, 5:15] = 1.0
  trimap = baselines.trimap_from_prob(prob, 0.9, 0.1, radius=2)
  assert trimap[10, 10] == 1.0 and trimap[0, 0] == 0.0
  assert trimap[5, 10] == 0.5 and trimap[3, 10] == 0.5 and trimap[2, 10] == 0.0
  assert trimap[7, 10] == 1.0 and trimap[6, 10] == 0.5


def test_closed_form_recovers_a_clean_matte_from_the_gt_trimap():
  rng = np.random.default_rng(0)
  alpha = np.zeros((24, 24, 1), np.float32)
  alpha[:, 12:] = 1.0
  alpha[:, 11] = 0.5
  fg, bg = np.array([0.9, 0.2, 0.1]), np.array([0.1, 0.3, 0.8])
  image = alpha * fg + (1 - alpha) * bg + rng.normal(0, 0.005, (24, 24, 3))
  pred = baselines.closed_form_alpha(np.clip(image, 0, 1), baselines.gt_trimap(alpha, 2))
  assert np.abs(pred - alpha).max() < 0.1


def test_report_from_tiny_runs(tiny_runs, tiny_data, tmp_path):
  out = tmp_path / 'report'
  path = report.main(['--workdirs', *(str(tiny_runs / n) for n in
                                      ('preseg', 'preseg_original', 'matting')),
                      '--data_dir', tiny_data[1], '--max_examples', '4', '--cf_config', 'tiny',
                      '--out', str(out)])
  text = open(path, encoding='utf-8').read()
  rows = json.loads((out / 'results.json').read_text())
  methods = [r['method'] for r in rows]
  assert methods[:3] == ['DeepLabV3+ original', 'DeepLabV3+ improved',
                         'matting, adversarial (weight 0.05)']
  assert methods[3] == 'pre-segmentation as alpha (automatic)'
  assert [r['trimap'].split(' ')[0] for r in rows[4:]] == ['pre-segmentation', 'ground']
  for row in rows:
    for key in report.COLUMNS:
      assert np.isfinite(row[key]), (row['method'], key)
    assert f"| {row['method']} |" in text
  assert 'not tested (a run is missing)' in text  # no noadv run given
  for name in ('curves_preseg.png', 'curves_matting.png', 'samples.png'):
    assert os.path.getsize(out / name) > 1000


def test_report_rejects_a_directory_that_is_not_a_run(tmp_path):
  with pytest.raises(FileNotFoundError, match='no config.json'):
    report.Run(str(tmp_path))
