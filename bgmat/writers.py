"""clu metric writers without TensorFlow.

`clu.metric_writers` (and `clu.periodic_actions`, which imports it) pulls in
`clu.metric_writers.summary_writer`, whose only implementation imports
TensorFlow at import time. bgmat does not depend on TensorFlow, so before clu's
writers are first imported we register a TensorFlow-free `summary_writer`
module whose `SummaryWriter` writes TensorBoard event files through
tensorboardX when that is installed (`pip install bgmat[tensorboard]`) and
writes nothing otherwise. When TensorFlow *is* installed, clu's own writer is
used untouched.

Every run also gets a `JsonlWriter`: scalars as one JSON object per line in
`WORKDIR/metrics.jsonl`, which the demo, the report and the tests read back.

Import clu's writers through this module (`from bgmat.writers import
metric_writers, periodic_actions`) so the shim is always in place first.
"""

import importlib.util
import json
import os
import sys
import types
from typing import Any, Mapping

from absl import logging
import numpy as np


class TensorBoardXWriter:
  """clu `MetricWriter` interface on top of tensorboardX (no TensorFlow)."""

  def __init__(self, logdir: str):
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
    except ImportError:
      self._writer = None
      logging.info('tensorboardX is not installed: no TensorBoard event files '
                   'in %s (pip install "bgmat[tensorboard]").', logdir)
      return
    self._writer = tensorboardX.SummaryWriter(logdir)

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    if self._writer is None:
      return
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(value), global_step=int(step))

  def write_images(self, step: int, images: Mapping[str, Any]):
    if self._writer is None:
      return
    for key, value in images.items():
      value = np.asarray(value)
      if value.ndim == 3:
        value = value[None]
      self._writer.add_images(key, value, global_step=int(step), dataformats='NHWC')

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step: int, texts: Mapping[str, str]):
    if self._writer is None:
      return
    for key, value in texts.items():
      self._writer.add_text(key, value, global_step=int(step))

  def write_histograms(self, step, arrays, num_buckets=None):
    if self._writer is None:
      return
    for key, value in arrays.items():
      self._writer.add_histogram(key, np.asarray(value), global_step=int(step))

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    del step, point_clouds, point_colors, configs

  def write_hparams(self, hparams: Mapping[str, Any]):
    if self._writer is None:
      return
    self._writer.add_text('hparams', json.dumps(
        {k: str(v) for k, v in hparams.items()}, indent=1))

  def flush(self):
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


def _install_summary_writer_shim():
  name = 'clu.metric_writers.summary_writer'
  if name in sys.modules or importlib.util.find_spec('tensorflow') is not None:
    return
  module = types.ModuleType(name)
  module.SummaryWriter = TensorBoardXWriter
  module.__doc__ = 'TensorFlow-free stand-in installed by bgmat.writers.'
  sys.modules[name] = module


_install_summary_writer_shim()

# pylint: disable=g-import-not-at-top,wrong-import-position
from clu import metric_writers  # noqa: E402
from clu import periodic_actions  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position


class JsonlWriter(metric_writers.MetricWriter):
  """Appends scalars as JSON lines: {"step": s, "key": value, ...}."""

  def __init__(self, path: str):
    self._path = path
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    self._file = open(path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def write_summaries(self, step, values, metadata=None):
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.ndim(v) == 0})

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + '\n')
    # One line per log step: flushed at once so that a killed run's log holds
    # every step it reported.
    self._file.flush()

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class ReportProgress(periodic_actions.ReportProgress):
  """clu's ReportProgress (steps/s; progress and ETA in the log) that also
  writes images_per_sec and eta_seconds."""

  def __init__(self, *, batch_size: int, **kwargs):
    super().__init__(**kwargs)
    self._batch_size = batch_size

  def _apply(self, step: int, t: float):
    steps_per_sec = (step - self._previous_step) / (t - self._previous_time)
    super()._apply(step, t)
    if self._writer is not None:
      scalars = {'images_per_sec': steps_per_sec * self._batch_size}
      if self._num_train_steps:
        scalars['eta_seconds'] = (self._num_train_steps - step) / steps_per_sec
      self._writer.write_scalars(step, scalars)


def create_writer(workdir: str, *, is_main: bool) -> metric_writers.MetricWriter:
  """Logging + TensorBoard (if available) + metrics.jsonl on the main process."""
  if not is_main:
    return metric_writers.create_default_writer(just_logging=True, asynchronous=False)
  default = metric_writers.create_default_writer(workdir, asynchronous=False)
  return metric_writers.MultiWriter(
      [default, JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))])


def read_jsonl(path: str) -> list[dict[str, float]]:
  """Reads back what `JsonlWriter` wrote."""
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]
