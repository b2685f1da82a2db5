"""bench/peer_mediapipe.py's dump and score steps, without MediaPipe: the
`segment` step's output is stood in for by masks made from the ground truth."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from bench import peer_mediapipe
from bgmat import input_pipeline


def _records(count=3, height=40, width=30):
  rng = np.random.default_rng(0)
  records = []
  for i in range(count):
    alpha = np.zeros((height, width, 1), np.uint8)
    alpha[8 + i:, 5:25 - i] = 255  # A person-like block touching the bottom.
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    records.append(dict(image=image, fg=image, bg=image, alpha=alpha,
                        name=f'id{i}'.encode()))
  return records


def _run(tmp_path, monkeypatch, make_mask):
  records = _records()
  monkeypatch.setattr(input_pipeline, 'open_source', lambda *args: records)
  work = str(tmp_path / 'work')
  common = ['--split', 'validation', '--work_dir', work, '--models', '0']
  peer_mediapipe.main(['dump', *common])
  index = json.load(open(os.path.join(work, 'images', 'validation', 'index.json')))
  assert [e['name'] for e in index] == ['id0', 'id1', 'id2']
  for entry, record in zip(index, records):
    mask = make_mask(record['alpha'][..., 0].astype(np.float32) / 255.0)
    folder = os.path.join(work, 'masks_model0', 'validation')
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, entry['file'][:-4] + '.npy'), mask)
  with open(os.path.join(work, 'segment_validation.json'), 'w') as f:
    json.dump(dict(mediapipe='none', python='-', machine='-', loadavg='-',
                   timings={'0': dict(mean_s=0.001, median_s=0.001, n=3)}), f)
  out = str(tmp_path / 'table.md')
  peer_mediapipe.main(['score', *common, '--image_size', '32', '--out', out])
  row = [line for line in open(out) if line.startswith('| 0 ')][0]
  return [float(cell.split()[0]) for cell in row.split('|')[3:7]]


def test_score_of_the_ground_truth_is_perfect(tmp_path, monkeypatch):
  iou, boundary_f, sad, mse = _run(tmp_path, monkeypatch, lambda alpha: alpha)
  # The mask resized from 40x30 to the 32x24 region with the same filter as
  # the letterboxed alpha: equal up to uint8 rounding, so the masks match.
  assert (iou, boundary_f) == (1.0, 1.0)
  assert sad < 0.01 and mse < 1e-4


def test_score_of_the_inverse_is_zero(tmp_path, monkeypatch):
  iou, boundary_f, sad, _ = _run(tmp_path, monkeypatch, lambda alpha: 1.0 - alpha)
  assert iou == 0.0
  assert sad > 0.7  # Every one of the 32 x 24 pixels wrong: 0.768 thousand.


def test_work_dir_inside_the_repo_is_refused():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(peer_mediapipe.__file__)))
  with pytest.raises(SystemExit, match='inside the repository'):
    peer_mediapipe.main(['dump', '--work_dir', os.path.join(repo, 'tmp_mp')])


@pytest.mark.skipif(shutil.which('git') is None, reason='needs git')
def test_work_dir_inside_the_repo_only_where_git_ignores_it(tmp_path):
  # `make study` keeps the peer's files in runs/study/peer (git-ignored).
  repo = tmp_path / 'repo'
  repo.mkdir()
  subprocess.run(['git', 'init', '-q', str(repo)], check=True)
  (repo / '.gitignore').write_text('/runs/\n')
  peer_mediapipe.check_work_dir(str(repo / 'runs' / 'study' / 'peer'), str(repo))
  peer_mediapipe.check_work_dir(str(tmp_path / 'elsewhere'), str(repo))
  with pytest.raises(SystemExit, match='not git-ignored'):
    peer_mediapipe.check_work_dir(str(repo / 'bench' / 'mp'), str(repo))
