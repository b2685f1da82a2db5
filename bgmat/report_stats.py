"""Seeds, spreads and verdicts for `bgmat.report`; peer tables; the machine.

Pure host code (no jax): rows are dicts of metric name -> float with a
'method' (the variant) and a 'run' (the workdir name).

Seeds: rows with the same 'method' are seeds of one variant. A variant's
summary is the mean over its seeds and the spread, **half the range**
((max - min) / 2) over the seeds: with two seeds the means of the variants lie
within [mean - spread, mean + spread]. A variant computed once from fixed
inputs (closed-form with the ground-truth trimap; a baseline made from the
single pre-segmentation all matting runs used) is `deterministic`: spread 0.

A claim "A beats B on metric m" is decided on the variant means: a difference
no larger than the combined spread (spread_A + spread_B) is a TIE, never a win;
if either side is a single, non-deterministic seed its spread is unknown and
the verdict says so ("1 seed: spread unknown").
"""

import json
import os
import platform
import re

import numpy as np

# Metrics where larger is better; every other one is an error (smaller is better).
HIGHER_IS_BETTER = ('iou', 'boundary_f')


def group_seeds(rows: list[dict], keys) -> list[dict]:
  """One summary per variant ('method'), in first-seen order.

  Returns dicts: method, runs (names), n (seeds), deterministic, and for each
  key in `keys` present in all seeds: key -> mean, key + '_spread' -> half the
  range (0 for one seed of a deterministic variant, None for one seed otherwise).
  """
  groups: dict[str, list[dict]] = {}
  for row in rows:
    groups.setdefault(row['method'], []).append(row)
  out = []
  for method, members in groups.items():
    deterministic = all(m.get('deterministic', False) for m in members)
    summary = dict(method=method, runs=[m['run'] for m in members], n=len(members),
                   deterministic=deterministic)
    for key in keys:
      values = [m.get(key) for m in members]
      if any(v is None or not np.isfinite(v) for v in values):
        continue
      summary[key] = float(np.mean(values))
      if len(values) > 1:
        summary[key + '_spread'] = float((max(values) - min(values)) / 2)
      else:
        summary[key + '_spread'] = 0.0 if deterministic else None
    out.append(summary)
  return out


def compare(better: dict, worse: dict, key: str) -> tuple[str, str]:
  """('win' | 'tie' | 'loss' | 'unknown', detail) for "`better` beats `worse` on `key`".

  `better` and `worse` are `group_seeds` summaries. 'unknown': a side has one
  non-deterministic seed, so a difference cannot be told from seed noise.
  """
  a, b = better.get(key), worse.get(key)
  if a is None or b is None:
    return 'missing', f'{key}: missing'
  sa, sb = better.get(key + '_spread'), worse.get(key + '_spread')
  sign = 1.0 if key in HIGHER_IS_BETTER else -1.0
  margin = sign * (a - b)
  detail = f'{key} {_fmt_pm(a, sa)} vs {_fmt_pm(b, sb)}'
  if sa is None or sb is None:
    return 'unknown', detail
  if abs(a - b) <= sa + sb:
    return 'tie', detail
  return ('win' if margin > 0 else 'loss'), detail


def verdict(better: dict, worse: dict, keys) -> tuple[str, list[tuple[str, str]]]:
  """Overall verdict of "`better` beats `worse` on every one of `keys`".

  Returns (text, [(outcome, detail) per key]). The text is 'holds' (a win on
  every key), 'does not hold' (no win, or a loss), 'tie' (no loss, some ties),
  or, when a side is a single non-deterministic seed, '1 seed: spread unknown'
  with the raw comparison.
  """
  outcomes = [compare(better, worse, k) for k in keys]
  outcomes = [o for o in outcomes if o[0] != 'missing']
  if not outcomes:
    return 'not tested (no common metric)', []
  kinds = [o for o, _ in outcomes]
  if 'unknown' in kinds:
    ahead = sum(_ahead(better, worse, k) for k in keys if k in better and k in worse)
    return (f'1 seed: spread unknown (ahead on {ahead} of {len(outcomes)} numbers, '
            'not counted as a win)'), outcomes
  wins, ties, losses = kinds.count('win'), kinds.count('tie'), kinds.count('loss')
  if wins == len(kinds):
    text = 'holds'
  elif losses:
    text = 'does not hold'
  else:  # Ties (and perhaps wins) but no loss: not a win.
    text = 'tie'
  return f'{text} ({wins} wins, {ties} ties, {losses} losses)', outcomes


def _ahead(better: dict, worse: dict, key: str) -> bool:
  a, b = better[key], worse[key]
  return a > b if key in HIGHER_IS_BETTER else a < b


def _fmt_pm(value, spread) -> str:
  text = fmt(value)
  if spread is None:
    return text + ' (1 seed)'
  return text if spread == 0 else f'{text} ± {fmt(spread)}'


def fmt(value) -> str:
  return '-' if value is None or not np.isfinite(value) else f'{value:.4g}'


# ---------------------------------------------------------------------------
# Peer tables (e.g. bench/peer_mediapipe.py).
# ---------------------------------------------------------------------------

PEER_KEYS = ('method', 'split', 'n', 'iou', 'boundary_f')


def read_peer_table(path: str) -> list[dict]:
  """Segmentation rows of another method measured elsewhere.

  Two formats:
    * JSON (`.json`): one object or a list of objects with keys method (str),
      split (str), n (int, photos), iou and boundary_f (floats in [0, 1]).
    * Markdown: the first table whose header has columns named `IoU` and
      `boundary F` (case and spaces ignored); one row per method, named by
      its `method` column or, without one, by its first column (header and
      cell: `bench/peer_mediapipe.py`'s `model_selection` tables). `n` and
      `split` columns are optional; without a `split` column, a line before
      the table ending in `split NAME` (the peer script's title) gives it.
      A cell may carry a bracketed spread after its value, `0.9666 (0.036)`.
      Other tables and text are skipped.
  Returns dicts with PEER_KEYS (split '' / n None when absent).

  Raises:
    FileNotFoundError: no such file.
    ValueError: naming the file: no table with those columns, or a value that
      is not a number in [0, 1].
  """
  with open(path, encoding='utf-8') as f:
    text = f.read()
  if path.endswith('.json'):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e
    items = data if isinstance(data, list) else [data]
    rows = []
    for item in items:
      if not isinstance(item, dict) or not {'method', 'iou', 'boundary_f'} <= set(item):
        raise ValueError(f'{path}: each entry needs method, iou, boundary_f; got {item!r}')
      rows.append(_peer_row(path, item))
    return rows
  return _parse_markdown_peer(path, text)


def _peer_row(path: str, item: dict) -> dict:
  row = {'method': str(item['method']).strip(), 'split': str(item.get('split', '')).strip(),
         'n': None if item.get('n') in (None, '') else int(item['n'])}
  for key in ('iou', 'boundary_f'):
    try:
      value = float(item[key])
    except (TypeError, ValueError) as e:
      raise ValueError(f'{path}: {row["method"]}: {key} {item[key]!r} is not a number') from e
    if not 0.0 <= value <= 1.0:
      raise ValueError(f'{path}: {row["method"]}: {key} {value} is outside [0, 1]')
    row[key] = value
  return row


def _norm(name: str) -> str:
  return re.sub(r'[^a-z0-9]', '', name.lower())


def _parse_markdown_peer(path: str, text: str) -> list[dict]:
  wanted = {'method': 'method', 'iou': 'iou', 'boundaryf': 'boundary_f', 'n': 'n',
            'split': 'split'}
  lines = [l.strip() for l in text.splitlines()]
  split = ''
  for i, line in enumerate(lines):
    if not line.startswith('|'):
      title = re.search(r'\bsplit\s+([A-Za-z0-9_.\[\]:%-]+)\s*$', line)
      split = title.group(1) if title else split
      continue
    names = [c.strip() for c in line.strip('|').split('|')]
    header = [_norm(c) for c in names]
    if not {'iou', 'boundaryf'} <= set(header):
      continue
    columns = {wanted[h]: j for j, h in enumerate(header) if h in wanted}
    rows = []
    for body in lines[i + 1:]:
      if not body.startswith('|'):
        break
      cells = [c.strip() for c in body.strip('|').split('|')]
      if all(re.fullmatch(r':?-+:?', c) for c in cells if c):
        continue  # The |---| separator.
      if len(cells) < len(header):
        raise ValueError(f'{path}: row {body!r} has {len(cells)} cells, header {len(header)}')
      item = {k: _strip_spread(cells[j]) if k in ('iou', 'boundary_f', 'n') else cells[j]
              for k, j in columns.items()}
      if 'method' not in columns:
        item['method'] = f'{names[0]} {cells[0]}'.strip()
      item.setdefault('split', split)
      rows.append(_peer_row(path, item))
    if rows:
      return rows
  raise ValueError(f'{path}: no markdown table with columns IoU | boundary F '
                   '(or give a .json file, see bgmat/report_stats.py)')


def _strip_spread(cell: str) -> str:
  """'0.9666 (0.036)' -> '0.9666': a value with its spread in brackets."""
  return re.sub(r'\s*\([^()]*\)\s*$', '', cell)


# ---------------------------------------------------------------------------
# The machine.
# ---------------------------------------------------------------------------


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.lower().startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or 'unknown CPU'


def machine_name() -> str:
  """'CPU model, N CPUs, OS release' of this machine (benchmark tables)."""
  return f'{cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}'


def machine_line() -> str:
  """'CPU model, N cores (os.cpu_count), load average a b c' of this machine."""
  load = ''
  try:
    load = ', load average ' + ' '.join(f'{x:.2f}' for x in os.getloadavg())
  except OSError:
    pass
  return f'{cpu_model()}, {os.cpu_count()} cores (os.cpu_count){load}'
