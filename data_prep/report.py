"""The build report: one JSON line per skipped, converted or dropped input file.

  report = Report()
  report.add('/data/fg/x.png', 'unreadable', 'image file is truncated')
  report.add('/data/fg/y.jpg', 'cmyk', 'CMYK converted to RGB', action='converted')
  report.write('build_report.jsonl')    # atomic: a reader sees all of it or none

Each line is {"file", "reason", "detail", "action"} (+ "split" when known);
`action` is 'skipped' (the file or pair is not in the data set), 'converted'
(it is, after the conversion named in `reason`) or 'dropped' (readable, but
the quality filter refused it). The last line is a summary,
{"summary": {"skipped": n, "converted": n, "dropped": n, "examples": {...},
"by_reason": {action: {reason: n}}}}.
"""

import collections
import json
from typing import Any, Iterable

from data_prep import fileio

ACTIONS = ('skipped', 'converted', 'dropped')


class Report:
  """Collects report entries in the order they arrive; exact repeats are kept once
  (a bad background file chosen by several foregrounds is one line)."""

  def __init__(self):
    self._entries: list[dict[str, Any]] = []
    self._seen: set[tuple] = set()
    self.examples: dict[str, int] = {}  # split -> records written

  def add(self, file: str, reason: str, detail: str, action: str = 'skipped',
          split: str | None = None) -> None:
    if action not in ACTIONS:
      raise ValueError(f'Unknown report action {action!r}; known: {ACTIONS}')
    entry = {'file': str(file), 'reason': reason, 'detail': detail, 'action': action}
    if split is not None:
      entry['split'] = split
    key = tuple(sorted(entry.items()))
    if key not in self._seen:
      self._seen.add(key)
      self._entries.append(entry)

  def extend(self, entries: Iterable[dict[str, Any]]) -> None:
    for entry in entries:
      self.add(**entry)

  @property
  def entries(self) -> list[dict[str, Any]]:
    return list(self._entries)

  def summary(self) -> dict[str, Any]:
    """Counts per action, records per split, and 'by_reason': {action: {reason:
    n}} (quality drops as 'quality: <check>', e.g. 'quality: confidence')."""
    counts = collections.Counter(entry['action'] for entry in self._entries)
    by_reason: dict[str, collections.Counter] = {}
    for entry in self._entries:
      reason = entry['reason']
      if reason == 'quality':
        reason = 'quality: ' + entry['detail'].split(':', 1)[0]
      by_reason.setdefault(entry['action'], collections.Counter())[reason] += 1
    return {**{action: counts.get(action, 0) for action in ACTIONS},
            'examples': dict(self.examples),
            'by_reason': {action: dict(sorted(c.items())) for action, c in by_reason.items()}}

  def write(self, path: str) -> str:
    """Writes the entries and a summary line to `path` atomically; returns the path."""
    lines = [json.dumps(entry, ensure_ascii=False) for entry in self._entries]
    lines.append(json.dumps({'summary': self.summary()}))
    write_text_atomic(path, '\n'.join(lines) + '\n')
    return path


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` atomically, flushed to disk (`bgmat.atomic`; a URI
  such as gs://... in one object write, `data_prep.fileio`)."""
  fileio.write_text(path, text)


def read_report(path: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """(entries, summary) of a report written by `Report.write`."""
  entries, summary = [], None
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        item = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{number}: not a JSON line ({e})') from e
      if 'summary' in item:
        summary = item['summary']
      else:
        entries.append(item)
  if summary is None:
    raise ValueError(f'{path}: no summary line; the report is incomplete')
  return entries, summary
