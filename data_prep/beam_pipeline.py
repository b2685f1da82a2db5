r"""Data preparation as Apache Beam pipelines: the `matting_sets` builder and autolabel.

  python -m data_prep.build matting_sets --data_dir DIR --layout compose ... --beam \
      [--beam_pipeline_options='direct_num_workers=2,direct_running_mode=multi_processing']
  python -m data_prep.autolabel --images DIR --masks DIR --out DIR --beam \
      [--beam_pipeline_options='runner=DataflowRunner,project=P,region=R,...']

One pipeline definition for every runner: the DirectRunner here, Dataflow,
Flink or Spark with the options a user passes. The per-example work is the
single-machine path's own (`compose.records_of`, `matting_sets.review_source`,
`autolabel.label_one`); Beam only changes how it is mapped. Both paths write
the same records and the same report.

matting_sets, per split (the driver lists the sources, as today):
  1. The driver writes the split's sources (paths and ids, one JSON line each)
     and its background paths under `<incomplete data dir>/.beam/`; workers
     read them (`ReadFromText`) and each source's files themselves, so no
     worker holds more than one source's pixels and the pipeline graph stays
     small whatever the data set size.
  2. `_MakeRecords` (a ParDo, parallel): `compose.records_of` -> the encoded
     records (main output, keyed by the source index) and a small review
     summary (side output 'review': report notes, error, quality statistics,
     record count).
  3. `_review_split` (one call per split, over the small summaries in source
     order): `matting_sets.review_source`, i.e. the same quality filter with
     its order-dependent duplicate check, gives the kept sources and the
     split's report lines; those are written as a report part that the
     builder merges into `build_report.jsonl` (as today) after the pipeline.
  4. The kept records, keyed index * stride + k (so TFDS's writer keeps the
     single-machine order), go to TFDS's BeamWriter, which writes each shard
     to a temporary file renamed when complete, inside TFDS's incomplete.*
     directory that is renamed only when the whole build succeeded.

Runner: with no runner named (or 'DirectRunner'), the pipeline runs on Beam's
FnApiRunner, which is what the DirectRunner runs batch pipelines on; naming it
directly skips the DirectRunner's first attempt with the Prism runner, which
downloads a binary from GitHub at run time. It honours `direct_num_workers`
and `direct_running_mode` (in_memory, multi_threading, multi_processing).

Metrics (namespace 'bgmat'), visible in the runner's UI and printed at the end:
counters `sources`, `examples_written`, `examples_written_<split>`,
`skipped: <reason>` / `dropped: <reason>` / `converted: <reason>` (as the
report's by_reason), autolabel's `labelled` / `resumed` / `skipped`; and the
distribution `label_ms` (closed-form labelling time per photo, ms).
"""

import json
import time
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
import tensorflow_datasets as tfds

from data_prep import compose
from data_prep import fileio
from data_prep import report as report_lib

NAMESPACE = 'bgmat'
_REVIEW = 'review'
_LOCAL_RUNNERS = (None, 'DirectRunner', 'SwitchingDirectRunner', 'FnApiRunner')


# ---------------------------------------------------------------------------
# Options and runner.
# ---------------------------------------------------------------------------


def pipeline_options(options) -> PipelineOptions:
  """PipelineOptions of 'key=value,key=value' (TFDS's --beam_pipeline_options
  form), a list of flags ['--runner=DataflowRunner', ...], or PipelineOptions."""
  if isinstance(options, PipelineOptions):
    return options
  if isinstance(options, str):
    flags = [f'--{item.strip()}' for item in options.split(',') if item.strip()]
  else:
    flags = [str(flag) for flag in options]
  return PipelineOptions(flags)


def runner_for(options: PipelineOptions):
  """The runner object for local runs (FnApiRunner, see the module docstring);
  None for any other runner name (then beam.Pipeline uses the options')."""
  if options.view_as(StandardOptions).runner not in _LOCAL_RUNNERS:
    return None
  # pylint: disable=g-import-not-at-top
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.runners.portability.portable_runner import JobServiceHandle
  # pylint: enable=g-import-not-at-top
  # As the DirectRunner does: the options travel to the SDK workers.
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  provision = fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
  return fn_runner.FnApiRunner(provision_info=provision)


def download_config(options) -> tfds.download.DownloadConfig:
  """TFDS download config that builds with Beam under `options` (see
  `pipeline_options`) and never looks for prepared copies on GCS."""
  options = pipeline_options(options)
  return tfds.download.DownloadConfig(try_download_gcs=False, beam_runner=runner_for(options),
                                      beam_options=options)


def metrics_of(result) -> dict[str, float]:
  """{name: value} of the 'bgmat' metrics of a finished pipeline: counters as
  ints, distributions as '<name>_count', '_sum', '_mean', '_min', '_max'."""
  query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
  out: dict[str, float] = {}
  for counter in query['counters']:
    name = counter.key.metric.name
    out[name] = out.get(name, 0) + counter.committed
  for dist in query['distributions']:
    name, value = dist.key.metric.name, dist.committed
    if value is None or not value.count:
      continue
    out[f'{name}_count'] = out.get(f'{name}_count', 0) + value.count
    out[f'{name}_sum'] = out.get(f'{name}_sum', 0) + value.sum
    out[f'{name}_min'] = min(out.get(f'{name}_min', value.min), value.min)
    out[f'{name}_max'] = max(out.get(f'{name}_max', value.max), value.max)
  for name in [k[:-len('_count')] for k in out if k.endswith('_count')]:
    out[f'{name}_mean'] = out[f'{name}_sum'] / out[f'{name}_count']
  return out


def format_metrics(metrics: dict[str, float], title: str) -> str:
  lines = [f'Beam metrics of {title}:']
  lines += [f'  {name}: {value:.1f}' if isinstance(value, float) else f'  {name}: {value}'
            for name, value in sorted(metrics.items())]
  return '\n'.join(lines)


def _counter(name: str):
  return beam.metrics.Metrics.counter(NAMESPACE, name)


# ---------------------------------------------------------------------------
# matting_sets.
# ---------------------------------------------------------------------------


def _task_line(index: int, source: compose.Source) -> str:
  return json.dumps({'index': index, 'id': source.id, 'kind': source.kind,
                     'image': source.image, 'alpha': source.alpha})


def _parse_task(line: str) -> tuple[int, compose.Source]:
  item = json.loads(line)
  return item['index'], compose.Source(id=item['id'], kind=item['kind'], image=item['image'],
                                       alpha=item['alpha'])


class _MakeRecords(beam.DoFn):
  """(index, source) -> (index, records); side output 'review': (index, summary)."""

  def __init__(self, split: str, settings: compose.Settings):
    super().__init__()
    self._split, self._settings = split, settings
    self._label_ms = beam.metrics.Metrics.distribution(NAMESPACE, 'label_ms')
    self._sources = _counter('sources')

  def process(self, task, backgrounds):
    index, source = task
    result = compose.records_of((self._split, index, source), self._settings,
                                {self._split: backgrounds})
    self._sources.inc()
    if 'label_seconds' in result:
      self._label_ms.update(int(round(result['label_seconds'] * 1000)))
    summary = {'id': source.id, 'image': source.image, 'kind': source.kind,
               'alpha': source.alpha, 'notes': result['notes'], 'error': result['error'],
               'stats': result['stats'], 'num_records': len(result['records'])}
    yield beam.pvalue.TaggedOutput(_REVIEW, (index, summary))
    if result['records']:
      yield index, result['records']


def _part_path(beam_dir: str, split: str) -> str:
  return fileio.join(beam_dir, f'report.{split}.json')


def _review_split(summaries: list, split: str, thresholds_json: str,
                  beam_dir: str) -> dict[str, Any]:
  """The single-machine review loop over one split's summaries in source order.
  Writes the split's report part; returns {'kept': set of indices, 'count'}."""
  from data_prep import matting_sets  # pylint: disable=g-import-not-at-top
  quality_filter = matting_sets.make_quality_filter(thresholds_json)
  report = report_lib.Report()
  kept, count = set(), 0
  for index, summary in sorted(summaries, key=lambda item: item[0]):
    source = compose.Source(id=summary['id'], kind=summary['kind'], image=summary['image'],
                            alpha=summary['alpha'])
    if matting_sets.review_source(split, source, summary, quality_filter, report):
      kept.add(index)
      count += summary['num_records']
  for action, reasons in report.summary()['by_reason'].items():
    for reason, number in reasons.items():
      _counter(f'{action}: {reason}').inc(number)
  fileio.write_text(_part_path(beam_dir, split),
                    json.dumps({'entries': report.entries, 'count': count}))
  matting_sets.check_split_count(split, count, len(summaries))
  return {'kept': kept, 'count': count}


def _kept_examples(element, review: dict, stride: int, split: str):
  index, records = element
  if index not in review['kept']:
    return
  for k, record in enumerate(records):
    _counter('examples_written').inc()
    _counter(f'examples_written_{split}').inc()
    yield index * stride + k, record


class _BuildSplit(beam.PTransform):
  """Pipeline root -> (int key, record) of one split (see the module docstring)."""

  def __init__(self, split: str, beam_dir: str, settings: compose.Settings,
               thresholds_json: str, stride: int):
    super().__init__()
    self._split, self._beam_dir, self._settings = split, beam_dir, settings
    self._thresholds_json, self._stride = thresholds_json, stride

  def expand(self, root):
    split = self._split
    tasks_path = fileio.join(self._beam_dir, f'sources.{split}.jsonl')
    backgrounds_path = fileio.join(self._beam_dir, f'backgrounds.{split}.json')
    backgrounds = beam.pvalue.AsSingleton(
        root | 'ReadBackgrounds' >> beam.io.ReadFromText(backgrounds_path)
        | 'ParseBackgrounds' >> beam.Map(json.loads))
    made = (root
            | 'ReadSources' >> beam.io.ReadFromText(tasks_path)
            | 'ParseSources' >> beam.Map(_parse_task)
            # Spreads the sources over the workers (and stops fusion with the read).
            | 'Spread' >> beam.Reshuffle()
            | 'MakeRecords' >> beam.ParDo(_MakeRecords(split, self._settings), backgrounds)
            .with_outputs(_REVIEW, main='records'))
    review = beam.pvalue.AsSingleton(
        made[_REVIEW]
        | 'CollectSummaries' >> beam.combiners.ToList()
        | 'Review' >> beam.Map(_review_split, split=split,
                               thresholds_json=self._thresholds_json,
                               beam_dir=self._beam_dir))
    return made.records | 'Kept' >> beam.FlatMap(_kept_examples, review=review,
                                                  stride=self._stride, split=split)


def split_transforms(beam_dir: str, sources: dict[str, list[compose.Source]],
                     backgrounds: dict[str, list[str]], settings: compose.Settings,
                     thresholds_json: str) -> dict[str, beam.PTransform]:
  """{split: PTransform} for `MattingSets._split_generators` (Beam builds).

  Writes each split's source list and background list under `beam_dir` (read
  by the workers); the report parts land there too (`read_report_part`).
  """
  fileio.makedirs(beam_dir)
  # Records per source: the photo itself (autolabel) and its composites.
  stride = max([n for _, n in settings.num_bg] + [1]) + 1
  out = {}
  for split, split_sources in sources.items():
    fileio.write_text(fileio.join(beam_dir, f'sources.{split}.jsonl'),
                      ''.join(_task_line(i, s) + '\n' for i, s in enumerate(split_sources)))
    fileio.write_text(fileio.join(beam_dir, f'backgrounds.{split}.json'),
                      json.dumps(backgrounds.get(split, [])) + '\n')
    out[split] = _BuildSplit(split, beam_dir, settings, thresholds_json, stride)
  return out


def read_report_part(beam_dir: str, split: str, must_exist: bool) -> dict | None:
  """{'entries', 'count'} of a split's review, or None if it was not written
  (only allowed with must_exist=False: a failed pipeline)."""
  path = _part_path(beam_dir, split)
  if not fileio.exists(path):
    if must_exist:
      raise FileNotFoundError(f'{path}: the pipeline finished without writing the report '
                              f'part of split {split!r}')
    return None
  return json.loads(fileio.read_text(path))


# ---------------------------------------------------------------------------
# autolabel.
# ---------------------------------------------------------------------------


class _LabelPhotos(beam.DoFn):
  """(position, task) -> (position, report record); writes the label files."""

  def __init__(self, out_dir: str, settings: dict):
    super().__init__()
    self._out_dir, self._settings = out_dir, settings
    self._label_ms = beam.metrics.Metrics.distribution(NAMESPACE, 'label_ms')

  def process(self, line: str):
    from data_prep import autolabel  # pylint: disable=g-import-not-at-top
    task = json.loads(line)
    record, solve_seconds = autolabel.label_one(self._out_dir, task, **self._settings)
    if solve_seconds is not None:
      self._label_ms.update(int(round(solve_seconds * 1000)))
    _counter(record['status']).inc()
    yield task['position'], record


def _write_autolabel_report(records: list, path: str, start: float) -> dict:
  from data_prep import autolabel  # pylint: disable=g-import-not-at-top
  lines = [record for _, record in sorted(records, key=lambda item: item[0])]
  summary = autolabel.summarize(lines, time.time() - start)
  fileio.write_text(path, ''.join(json.dumps(record) + '\n' for record in lines)
                    + json.dumps({'summary': summary}) + '\n')
  return summary


def run_autolabel(tasks: list[dict], out_dir: str, report_path: str, options, *,
                  settings: dict) -> tuple[dict, dict[str, float]]:
  """Labels `tasks` (autolabel.plan_tasks) with Beam; returns (summary, metrics).

  The task list goes to `out_dir/.beam_tasks.jsonl` (read by the workers and
  removed at the end); every worker writes its labels itself
  (`autolabel.label_one`); one step writes the report in the photos' order.
  """
  options = pipeline_options(options)
  tasks_path = fileio.join(out_dir, '.beam_tasks.jsonl')
  fileio.write_text(tasks_path, ''.join(json.dumps(task) + '\n' for task in tasks))
  start = time.time()
  try:
    pipeline = beam.Pipeline(runner=runner_for(options), options=options)
    with pipeline:
      _ = (pipeline
           | 'ReadTasks' >> beam.io.ReadFromText(tasks_path)
           | 'Spread' >> beam.Reshuffle()
           | 'Label' >> beam.ParDo(_LabelPhotos(out_dir, settings))
           | 'Collect' >> beam.combiners.ToList()
           | 'WriteReport' >> beam.Map(_write_autolabel_report, path=report_path, start=start))
    metrics = metrics_of(pipeline.result)
  finally:
    fileio.remove_file(tasks_path)
  text = fileio.read_text(report_path).splitlines()
  return json.loads(text[-1])['summary'], metrics
