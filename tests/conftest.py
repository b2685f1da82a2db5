"""Test set-up: 4 forced CPU devices so sharded code paths run on any machine,
a persistent compilation cache so repeated identical jits compile once, XLA's
CPU code generation without LLVM's optimisation (FAST_COMPILE_XLA_FLAGS), a
tiny synthetic data set built once per session, tiny trained runs built once
for all tests and workers (SharedRuns), and the `slow` marker.

`slow`: the test trains a model (calls `train.train_and_evaluate` / `bgmat.main`,
or uses a fixture that does: TRAINING_FIXTURES) or otherwise runs for tens of
seconds here. `make test` runs everything; `make test-quick` (pytest -m 'not
slow') the rest. Tests that train in their own body carry `@pytest.mark.slow`
(or a module `pytestmark`); fixture users are marked here, so a new test that
uses a trained run is slow without anyone remembering to say so."""
import logging
import os
import shutil
import subprocess
import sys
import tempfile

# The tests run tiny models for a few steps: compiling is most of their time.
# These flags change only LLVM's optimisation of the generated CPU code (XLA's
# HLO passes, fusion and layouts are the same, and library calls such as
# convolutions and matrix products run the same kernels), so the tests check
# the same programs; LLVM without fast-math does not reorder float operations,
# so results stay within the float-rounding tolerances the tests use.
# Measured on the 2-core box from a cold compilation cache: the whole suite
# 2157 -> 1635 CPU seconds (36 -> 31 min, the two runs side by side),
# tests/test_train.py alone 303 -> 208. Set XLA_FLAGS yourself to test
# optimised code.
FAST_COMPILE_XLA_FLAGS = ('--xla_backend_optimization_level=0 '
                          '--xla_llvm_disable_expensive_passes=true')
# XLA's older loop emitters for fused elementwise ops instead of its MLIR
# fusion emitters: same fusions and same arithmetic, compiled in about 3/4 of
# the time (tests/test_train.py + test_stages.py from a cold cache: 230 -> 174
# CPU s). Only if this XLA knows the flag: XLA aborts on an unknown one, and
# newer releases may drop it (checked once, by the first pytest process; the
# workers inherit the result through BGMAT_TEST_XLA_FLAGS).
OPTIONAL_XLA_FLAGS = ('--xla_cpu_use_fusion_emitters=false',)


def _xla_accepts(flag: str) -> bool:
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'], env=env,
                          capture_output=True, timeout=300, check=False)
  return result.returncode == 0


if 'BGMAT_TEST_XLA_FLAGS' not in os.environ:
  os.environ['BGMAT_TEST_XLA_FLAGS'] = ' '.join(
      [FAST_COMPILE_XLA_FLAGS, *[flag for flag in OPTIONAL_XLA_FLAGS if _xla_accepts(flag)]])


def xla_flags(num_devices: int) -> str:
  """XLA_FLAGS of the tests with `num_devices` forced CPU devices (also for the
  subprocesses of tests: the same flags, so they share compiled programs)."""
  return (f'--xla_force_host_platform_device_count={num_devices} '
          + os.environ['BGMAT_TEST_XLA_FLAGS'])


os.environ.setdefault('XLA_FLAGS', xla_flags(4))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# One compilation cache for the whole run: both pytest-xdist workers (`make
# test` runs two) and the subprocesses of tests (multihost, faults, serve,
# through JAX_TEST_CACHE and the environment), so a program one of them
# compiled is read by the others. JAX writes entries without a lock unless the
# cache has a size bound (jax._src.lru_cache.LRUCache: then every read and
# write holds a file lock in the folder), so a bound far above the suite's
# needs (about 80 MB from a cold start) is set: a worker never reads another's
# half-written entry.
JAX_TEST_CACHE = os.path.join(tempfile.gettempdir(), 'bgmat_test_jax_cache')
JAX_TEST_CACHE_MAX_BYTES = 16 * 2**30
# Set before JAX is imported: this process and every subprocess read it.
os.environ['JAX_COMPILATION_CACHE_MAX_SIZE'] = str(JAX_TEST_CACHE_MAX_BYTES)

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_compilation_cache_dir', JAX_TEST_CACHE)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

# BGMAT_TEST_COMPILE_LOG=FILE: append one tab-separated line per trace, MLIR
# lowering, XLA compilation and persistent-cache hit of this pytest process
# (the running test's id, JAX's message) to FILE, to see which tests compile
# what and for how long (subprocesses of a test are not logged).
_COMPILE_LOG = os.environ.get('BGMAT_TEST_COMPILE_LOG')


class _CompileLogHandler(logging.Handler):

  def emit(self, record):
    message = record.getMessage()
    if message.startswith(('Finished', 'Persistent compilation cache hit')):
      test = os.environ.get('PYTEST_CURRENT_TEST', '')
      with open(_COMPILE_LOG, 'a', encoding='utf-8') as f:
        f.write(f'{test}\t{message[:300]}\n')


if _COMPILE_LOG:
  jax.config.update('jax_log_compiles', True)
  logging.getLogger('jax').addHandler(_CompileLogHandler())


# Module- or session-scoped fixtures that train a run.
TRAINING_FIXTURES = frozenset({'shared_runs', 'matting_workdir', 'loaded_remover',
                               'tiny_runs', 'preseg_workdir', 'autolabel_runs'})


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: trains a model or runs for tens of seconds '
                          "(deselect with -m 'not slow'; conftest.py)")


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if TRAINING_FIXTURES & set(getattr(item, 'fixturenames', ())):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_compile_eviction():
  """Tests count compiles per shape; `bgmat remove`'s bound on compiled shapes
  (bgmat.inference.compile_cache, process-wide, set by every CLI run) would make those
  counts depend on which tests ran before. tests/test_compile_cache.py sets
  its own budgets."""
  from bgmat.inference import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.set_budget(10**9)
  yield


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  """(dataset name, data_dir) of the `tiny` synthetic portraits (64 px, 16/4/4)."""
  from data_prep import synthetic_portraits  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp('data'))
  return synthetic_portraits.build_synthetic(data_dir, 'tiny'), data_dir


class SharedRuns:
  """Tiny trained runs under one root, built on first use and shared by every
  test of the session and by both pytest-xdist workers (`make test`): a run is
  built by whichever worker asks first, under a file lock, and read by the
  other; so each is trained once per `make test`, not once per worker and
  fixture. Tests read them and never write into them (copy first).

  `preseg`: stage 1, tiny, improved; `preseg_original`: the same, original
  head; `matting`: stage 2, tiny, adversarial, on `preseg` (its config says
  `preseg_workdir='preseg'`, relative to its parent, as `bgmat remove
  --workdir` sees a trained run). Each trains the tiny configs' 4 steps."""

  def __init__(self, root, tiny_data):
    self.root, self.tiny_data = root, tiny_data

  def _config(self, name):
    import configs.matting as matting_configs  # pylint: disable=g-import-not-at-top
    import configs.preseg as preseg_configs  # pylint: disable=g-import-not-at-top
    if name == 'matting':
      config = matting_configs.get_config('tiny')
      config.preseg_workdir = 'preseg'  # Relative to the workdir's parent.
    else:
      config = preseg_configs.get_config('tiny,original' if name == 'preseg_original' else 'tiny')
    config.dataset, config.data_dir = self.tiny_data
    config.eval_test = False
    return config

  def get(self, name: str) -> str:
    """The path of run `name`, trained first if no worker has done so yet."""
    import filelock  # pylint: disable=g-import-not-at-top
    from bgmat import train  # pylint: disable=g-import-not-at-top
    if name == 'matting':
      self.get('preseg')
    workdir, done = self.root / name, self.root / f'{name}.done'
    with filelock.FileLock(str(self.root / f'{name}.lock')):
      if not done.exists():
        if workdir.exists():  # A worker that failed half way.
          shutil.rmtree(workdir)
        train.train_and_evaluate(self._config(name), str(workdir))
        done.touch()
    return str(workdir)


@pytest.fixture(scope='session')
def shared_runs(tiny_data, tmp_path_factory):
  """SharedRuns in a folder both xdist workers see (the session's base
  temporary folder's parent is per run, shared by its workers)."""
  if os.environ.get('PYTEST_XDIST_WORKER'):
    root = tmp_path_factory.getbasetemp().parent / 'shared_runs'
    root.mkdir(exist_ok=True)
  else:
    root = tmp_path_factory.mktemp('shared_runs')
  return SharedRuns(root, tiny_data)


@pytest.fixture(scope='session')
def matting_workdir(shared_runs):
  """The tiny matting run (SharedRuns): the removal, video and export tests'
  trained run."""
  return shared_runs.get('matting')


@pytest.fixture(scope='session')
def preseg_workdir(shared_runs):
  """The tiny pre-segmentation run (SharedRuns)."""
  return shared_runs.get('preseg')


@pytest.fixture(scope='session')
def tiny_runs(shared_runs):
  """The root of all SharedRuns, each trained (the report's inputs)."""
  for name in ('preseg', 'preseg_original', 'matting'):
    shared_runs.get(name)
  return shared_runs.root
