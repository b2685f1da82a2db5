"""bgmat.atomic: a target appears whole or not at all, and nothing is left behind."""

import os

import pytest

from bgmat import atomic


def test_write_text_and_json_replace_the_target(tmp_path):
  path = tmp_path / 'sub' / 'a.json'
  atomic.write_json(str(path), {'b': 1}, indent=1)
  assert path.read_text() == '{\n "b": 1\n}'
  atomic.write_text(str(path), 'new', fsync=True)
  assert path.read_text() == 'new'
  assert os.listdir(path.parent) == ['a.json']


def test_failed_write_leaves_the_target_and_no_temporary(tmp_path):
  path = tmp_path / 'a.txt'
  path.write_text('old')

  def broken(tmp):
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write('half')
    raise RuntimeError('disk full')

  with pytest.raises(RuntimeError, match='disk full'):
    atomic.write_with(str(path), broken)
  assert path.read_text() == 'old'
  assert os.listdir(tmp_path) == ['a.txt']


def test_suffix_reaches_writers_that_pick_the_format(tmp_path):
  seen = []
  atomic.write_with(str(tmp_path / 'p.png'), lambda tmp: (seen.append(tmp),
                                                          open(tmp, 'wb').close()),
                    suffix='.png')
  assert seen[0].endswith('.png') and os.path.basename(seen[0]).startswith('.p.png.tmp-')
  assert os.listdir(tmp_path) == ['p.png']
