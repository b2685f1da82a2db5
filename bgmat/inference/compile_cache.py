"""A bound on the compiled executables an inference process keeps.

`jax.jit` compiles once per input shape and keeps every executable. Removal
pads photos to a bounded set of shapes (`bgmat.inference.resolution` buckets
for the matting generator, `bgmat.foreground.padded_shape` for blur fusion), but a
folder of photos of many sizes still grows until it has met every shape:
+28% RSS from photo 50 to photo 300 of a random-size folder, about 7 MiB per
matting bucket of the demo model on CPU (bench/results/remove_memory_cpu.md).

`admit(key)` is called before an inference function runs on a new shape
`key`. While at most `budget()` distinct keys have run since the last reset,
nothing happens; a key beyond that empties every JAX cache first
(`jax.clear_caches()`), so the process keeps at most `budget()` shapes'
executables. An evicted shape compiles again when it comes back; with XLA's
persistent compilation cache on (`use_persistent_cache`, which `bgmat remove`
and `bgmat serve` turn on) that is a load from disk: a demo-model photo of
about 1000x700 took 2-4 s after an eviction, against 7-16 s for its first
compile and 1.2-1.7 s warm (2-core CPU box, loaded). A folder of photos of one
or a few sizes (one camera) never evicts.

Threads: `bgmat serve` renders (blur fusion) in a thread pool while its
inference thread runs the model, so an eviction can happen while another
thread calls a jitted function. `jax.clear_caches()` runs under the GIL, which
JAX's internal caches rely on (a JAX maintainer's answer in jax-ml/jax#19590);
the bookkeeping here is under one lock.
"""

import hashlib
import os
import platform
import threading

import jax

# Distinct shapes (matting buckets, blur fusion shapes, the pre-segmentation)
# kept compiled. 8: the pre-segmentation plus a matting bucket and a blur-fusion
# shape for each of 3 photo shapes (one camera, both orientations, a crop).
DEFAULT_BUDGET = 8

_lock = threading.Lock()
_live: set = set()
_state = {'budget': DEFAULT_BUDGET, 'clears': 0}


def budget() -> int:
  """The number of distinct shapes kept compiled."""
  return _state['budget']


def set_budget(value: int) -> None:
  """Sets the number of distinct shapes kept compiled (>= 1).

  Raises:
    ValueError: value < 1.
  """
  if value < 1:
    raise ValueError(f'the compiled-shape budget must be >= 1, got {value}')
  with _lock:
    _state['budget'] = int(value)


def clears() -> int:
  """How many times `admit` has emptied JAX's caches in this process."""
  return _state['clears']


def reset() -> None:
  """Empties JAX's caches and forgets every admitted shape."""
  with _lock:
    jax.clear_caches()
    _live.clear()


def admit(key) -> bool:
  """Call before running a jitted inference function on shape `key` (hashable).

  Returns True when JAX's caches were emptied to make room (the function will
  compile again, or load from the persistent cache).
  """
  with _lock:
    if key in _live:
      return False
    cleared = len(_live) >= _state['budget']
    if cleared:
      jax.clear_caches()
      _live.clear()
      _state['clears'] += 1
    _live.add(key)
    return cleared


def _host_tag() -> str:
  """A short digest of what a CPU executable depends on: the machine type, the
  CPU model and its instruction-set flags (Linux), and the jax version. XLA:CPU
  compiles for the host's instruction set, so a cache shared between different
  CPUs (a network home folder) keeps one subfolder per kind."""
  parts = [platform.machine(), platform.processor(), jax.__version__]
  try:
    with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
      for line in f:
        if line.startswith(('model name', 'flags')):
          parts.append(line.strip())
        if line.strip() == '':  # The first processor is enough.
          break
  except OSError:
    pass
  return hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:12]


def default_cache_dir() -> str:
  """`$XDG_CACHE_HOME/bgmat/xla/<host tag>` (default `~/.cache/bgmat/xla/...`)."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'bgmat', 'xla', f'jax-{jax.__version__}-{_host_tag()}')


def use_persistent_cache(path: str | None) -> str | None:
  """Turns on XLA's persistent compilation cache in folder `path` for this process.

  Leaves an already configured cache (`jax_compilation_cache_dir` set by the
  user or a test harness) as it is. `path` None or 'none': off. Returns the
  folder in use, or None.

  Raises:
    OSError: the folder cannot be created.
  """
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  if path is None or path == 'none':
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', path)
  # Entries compiled in under half a second are not worth a disk read.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  return path
