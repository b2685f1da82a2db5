r"""Throughput, latency and memory of `bgmat serve` on this machine.

  python -m bench.serve                                  # tiny random models, 96x128 photos
  python -m bench.serve --preset demo --side 256 --requests 400
  python -m bench.serve --out bench/results/serve_cpu.md

Starts `bgmat serve --random-preset PRESET` (random weights: times do not
depend on them) twice, with dynamic batching on (--max-batch-size 8) and off
(1). For each, at concurrency 1, 8 and 32 (client threads, one keep-alive
connection each, raw PNG bodies, format rgba): requests/s over `--requests`
requests, and p50 / p99 latency of one request as the client sees it. The
batch sizes the server ran (from its /metrics) are shown. Every bucket and
batch size is compiled by a warm-up first.

Memory: on the batching server, the resident memory of the server process
(its /metrics) after 1,000 and after `--memory-requests` (10,000) requests at
concurrency 8, and the growth between them (the target: under 5%).

The client runs on the same machine as the server and competes with it for
the CPUs; the load average before and after is printed with the table.
"""

import argparse
import concurrent.futures
import http.client
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from PIL import Image

from bench import remove as remove_bench
from bgmat import report_stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The benchmark's servers share one JAX compilation cache across runs.
BENCH_ENV = {key: os.environ.get(key, default) for key, default in (
    ('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'bgmat_bench_jax_cache')),
    ('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5'))}


def _loadavg() -> str:
  return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def photo_bytes(height: int, width: int, seed: int = 0, fmt: str = 'PNG') -> bytes:
  """`bench.remove.synthetic_photo`, encoded as `fmt`."""
  buffer = io.BytesIO()
  Image.fromarray(remove_bench.synthetic_photo(height, width, seed)).save(buffer, format=fmt)
  return buffer.getvalue()


class Server:
  """`bgmat serve --random-preset PRESET --seed SEED FLAGS` in a subprocess on a free
  port of 127.0.0.1, its output in `log_path`; stopped by SIGTERM.

  Used by this benchmark and by tests/test_serve.py. `env`: variables added to
  this process's environment (e.g. a JAX compilation cache to share).

  Raises:
    RuntimeError: the server exited, or did not answer /healthz within
      `startup_limit` seconds (the message holds the end of its log).
  """

  def __init__(self, log_path: str, flags=(), preset: str = 'tiny', seed: int = 0,
               env: dict[str, str] | None = None, startup_limit: float = 900):
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      self.port = s.getsockname()[1]
    self.url = f'http://127.0.0.1:{self.port}'
    self.log_path = log_path
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
               **(env or {}))
    self._log = open(log_path, 'wb')
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'bgmat.cli', 'serve', '--random-preset', preset,
         '--seed', str(seed), '--port', str(self.port), *flags],
        cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + startup_limit
    while time.monotonic() < deadline:
      if self.process.poll() is not None:
        raise RuntimeError(f'server exited ({self.process.returncode}): {self.log()}')
      try:
        with urllib.request.urlopen(self.url + '/healthz', timeout=5):
          return
      except OSError:
        time.sleep(0.5)
    self.stop()
    raise RuntimeError(f'server not up within {startup_limit} s: {self.log()}')

  def log(self) -> str:
    """The last 4000 characters of the server's output."""
    with open(self.log_path, 'rb') as f:
      return f.read().decode('utf-8', 'replace')[-4000:]

  def metrics(self) -> dict[str, float]:
    with urllib.request.urlopen(self.url + '/metrics', timeout=60) as response:
      lines = response.read().decode().splitlines()
    return {line.rsplit(' ', 1)[0]: float(line.rsplit(' ', 1)[1])
            for line in lines if line and not line.startswith('#')}

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.send_signal(signal.SIGTERM)
      try:
        self.process.wait(120)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self._log.close()


def _client(port: int, photos: list[bytes], count: int, start: int) -> list[float]:
  """`count` POSTs on one keep-alive connection -> latencies (s); raises on a non-200."""
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=600)
  latencies = []
  try:
    for i in range(count):
      body = photos[(start + i) % len(photos)]
      begin = time.perf_counter()
      connection.request('POST', '/api/remove', body, {'Content-Type': 'image/png'})
      response = connection.getresponse()
      data = response.read()
      latencies.append(time.perf_counter() - begin)
      if response.status != 200:
        raise RuntimeError(f'HTTP {response.status}: {data[:300]!r}')
  finally:
    connection.close()
  return latencies


def load(server: Server, photos: list[bytes], concurrency: int, requests: int):
  """-> (requests/s, latencies in s) of `requests` POSTs from `concurrency` clients."""
  shares = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
  begin = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    futures = [pool.submit(_client, server.port, photos, n, i * 7) for i, n in enumerate(shares)]
    latencies = [t for f in futures for t in f.result()]
  return len(latencies) / (time.perf_counter() - begin), latencies


def _batches(metrics: dict[str, float]) -> dict[int, float]:
  return {int(key.split('"')[1]): value for key, value in metrics.items()
          if key.startswith('bgmat_batches_total')}


def _mean_batch(before: dict[int, float], after: dict[int, float]) -> str:
  runs = {size: after.get(size, 0) - before.get(size, 0) for size in after}
  batches = sum(runs.values())
  return f'{sum(s * n for s, n in runs.items()) / batches:.2f}' if batches else 'n/a'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--preset', default='tiny', choices=('tiny', 'demo'))
  parser.add_argument('--side', type=int, default=128, help='Photo long side (3:4), px.')
  parser.add_argument('--requests', type=int, default=300, help='Requests per concurrency level.')
  parser.add_argument('--concurrency', default='1,8,32')
  parser.add_argument('--memory-requests', type=int, default=10_000,
                      help='Requests of the memory run (RSS after 1,000 and after these).')
  parser.add_argument('--out', default=None, help='Also write the table here (markdown).')
  args = parser.parse_args(argv)
  levels = [int(c) for c in args.concurrency.split(',')]
  photos = [photo_bytes(args.side * 3 // 4, args.side, seed) for seed in range(8)]
  load_before = _loadavg()
  lines = [f'Machine: {report_stats.machine_name()}; load average (1, 5, 15 min) {load_before} before.', '',
           f'`bgmat serve --random-preset {args.preset}` (random weights), '
           f'{args.side * 3 // 4}x{args.side} PNG photos, format rgba (blur-fusion '
           f'foreground, PNG encode), {args.requests} requests per row; client threads on '
           'the same machine.', '',
           '| batching | concurrency | requests/s | p50 ms | p99 ms | mean batch |',
           '|---|---|---|---|---|---|']
  memory = None
  with tempfile.TemporaryDirectory() as logs:
    for batching, flags in (('on (max 8)', ['--max-batch-size', '8', '--batch-timeout', '0.005']),
                            ('off', ['--max-batch-size', '1'])):
      server = Server(os.path.join(logs, f'serve-{len(lines)}.log'),
                      ['--log-level', 'warning', *flags, '--max-queue', '256'],
                      preset=args.preset, env=BENCH_ENV)
      try:
        # Warm-up: every padded batch size (1, 2, 4, 8) compiles here, not in a row.
        for concurrency in sorted({1, 2, 3, 4, 6, 8} | set(levels)):
          load(server, photos, concurrency, concurrency * 4)
        for concurrency in levels:
          before = _batches(server.metrics())
          rate, latencies = load(server, photos, concurrency, args.requests)
          after = _batches(server.metrics())
          q = statistics.quantiles(latencies, n=100)
          lines.append(f'| {batching} | {concurrency} | {rate:.1f} | {q[49] * 1e3:.0f} | '
                       f'{q[98] * 1e3:.0f} | {_mean_batch(before, after)} |')
          print(lines[-1], flush=True)
        if memory is None and args.memory_requests:
          # Counted from the server's start (warm-up and the rows above included).
          done = int(server.metrics().get('bgmat_requests_total{status="200"}', 0))
          load(server, photos, 8, max(0, 1000 - done))
          metrics = server.metrics()
          first = (int(metrics['bgmat_requests_total{status="200"}']),
                   metrics['bgmat_resident_memory_bytes'])
          start = time.perf_counter()
          load(server, photos, 8, max(0, args.memory_requests - first[0]))
          seconds = time.perf_counter() - start
          metrics = server.metrics()
          memory = (first, (int(metrics['bgmat_requests_total{status="200"}']),
                            metrics['bgmat_resident_memory_bytes']), seconds)
      finally:
        server.stop()
  if memory:
    (n1, rss1), (n2, rss2), seconds = memory
    lines += ['', f'| server RSS after {n1:,} requests | after {n2:,} | growth |',
              '|---|---|---|',
              f'| {rss1 / 2**20:.1f} MiB | {rss2 / 2**20:.1f} MiB | '
              f'{(rss2 - rss1) / rss1 * 100:+.2f}% |', '',
              f'(batching on, concurrency 8, requests counted from the server\'s start, '
              f'warm-up included; the last {n2 - n1:,} took {seconds:.0f} s)']
  lines += ['', f'Load average after: {_loadavg()}.']
  print('\n'.join(lines))
  if args.out:
    from bench import train_step  # pylint: disable=g-import-not-at-top
    train_step.write_table(args.out, 'bench.serve', list(argv or sys.argv[1:]), lines)


if __name__ == '__main__':
  main()
