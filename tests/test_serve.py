"""`bgmat serve` (bgmat.inference.serve): a real server process on 127.0.0.1, a real HTTP client.

One server (tiny random-weight models, seed 0) for the module; the reference
is `Remover` built in this process from the same configs and seed. Requests
that must stay in the server (full queue, SIGTERM) are uploads sent in two
halves: the handler admits a request when its headers arrive, so the test
decides when it ends, without timing assumptions. Timeouts are safety limits.
"""
import concurrent.futures
import http.client
import io
import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
from PIL import Image
import pytest

from bench import serve as serve_bench
from tests import conftest
from bgmat.inference import serve

# Every test here starts server processes (tests/conftest.py: slow).
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_UPLOAD = 300_000
MAX_PIXELS = 1_000_000
MAX_QUEUE = 10
STARTUP_LIMIT = 600  # Seconds; the first start compiles the random init (minutes on a busy CPU).
REQUEST_LIMIT = 300


# conftest.py's compilation cache, so the servers reuse this process's compiles.
SERVER_ENV = {'JAX_COMPILATION_CACHE_DIR': conftest.JAX_TEST_CACHE,
              'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.5', 'JAX_PLATFORMS': 'cpu'}


def start_server(log_dir: str, *flags: str) -> serve_bench.Server:
  """`bgmat serve --random-preset tiny --seed 0 FLAGS`, its log in `log_dir`."""
  return serve_bench.Server(os.path.join(log_dir, f'serve-{uuid.uuid4().hex[:8]}.log'), flags,
                            preset='tiny', seed=0, env=SERVER_ENV, startup_limit=STARTUP_LIMIT)


def get(url: str, timeout: float = REQUEST_LIMIT) -> tuple[int, bytes]:
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      return response.status, response.read()
  except urllib.error.HTTPError as e:
    return e.code, e.read()


def post(url: str, body: bytes, content_type: str = 'application/octet-stream',
         timeout: float = REQUEST_LIMIT) -> tuple[int, str, bytes]:
  """-> (status, content type, body)."""
  request = urllib.request.Request(url, data=body, method='POST',
                                   headers={'Content-Type': content_type})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.status, response.headers['Content-Type'], response.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers['Content-Type'], e.read()


def multipart(fields: dict[str, str], file: bytes, name: str = 'file') -> tuple[bytes, str]:
  boundary = uuid.uuid4().hex
  chunks = []
  for key, value in fields.items():
    chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                  f'{value}\r\n'.encode())
  chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="photo.png"\r\nContent-Type: image/png\r\n\r\n'.encode())
  chunks += [file, f'\r\n--{boundary}--\r\n'.encode()]
  return b''.join(chunks), f'multipart/form-data; boundary={boundary}'


def decode(body: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(body)))


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  srv = start_server(str(tmp_path_factory.mktemp('serve')), '--max-batch-size', '4',
               '--batch-timeout', '0.05', '--max-upload-bytes', str(MAX_UPLOAD),
               '--max-pixels', str(MAX_PIXELS), '--max-queue', str(MAX_QUEUE),
               '--log-level', 'info')
  yield srv
  srv.stop()


@pytest.fixture(scope='module')
def reference():
  return serve.random_remover('tiny', seed=0)


def test_cutout_equals_remover(server, reference):
  photo = serve_bench.photo_bytes(60, 80)
  body, content_type = multipart({'format': 'rgba'}, photo)
  status, media, out = post(server.url + '/api/remove', body, content_type)
  assert (status, media) == (200, 'image/png'), out[:300]
  np.testing.assert_array_equal(decode(out), reference.cutout(photo, format='rgba'))
  # Raw body, options in the query; rembg's om / bgc.
  status, media, out = post(server.url + '/api/remove?om=true', photo)
  assert (status, media) == (200, 'image/png')
  np.testing.assert_array_equal(decode(out), reference.cutout(photo, format='alpha'))
  status, media, out = post(server.url + '/api/remove?bgc=0,255,0,255&foreground_method=none',
                            photo)
  assert (status, media) == (200, 'image/jpeg')
  expected = reference.cutout(photo, format='composite', bg=(0, 255, 0), foreground_method='none')
  buffer = io.BytesIO()
  Image.fromarray(expected).save(buffer, format='JPEG', quality=95, subsampling=0)
  np.testing.assert_array_equal(decode(out), decode(buffer.getvalue()))


def _bomb() -> bytes:
  """A 64-megapixel PNG of a few kilobytes (1 bit per pixel, all zero)."""
  buffer = io.BytesIO()
  Image.new('1', (8000, 8000)).save(buffer, format='PNG', optimize=True)
  return buffer.getvalue()


def test_bad_uploads_refused_while_good_ones_succeed(server, reference):
  good = [serve_bench.photo_bytes(60, 80, seed=s) for s in range(4)]
  jpeg = serve_bench.photo_bytes(120, 160, fmt='JPEG')
  bad = {
      'decompression_bomb': (_bomb(), 413),
      'unreadable': (jpeg[:len(jpeg) // 2], 422),   # Truncated.
      'not_an_image': (b'%PDF-1.4 this is not a photo\n' * 10, 415),
      'upload_too_large': (os.urandom(MAX_UPLOAD + 1), 413),
  }
  assert len(bad['decompression_bomb'][0]) < MAX_UPLOAD
  url = server.url + '/api/remove'
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    good_futures = [pool.submit(post, url, *multipart({}, photo)) for photo in good]
    bad_futures = {kind: pool.submit(post, url, data) for kind, (data, _) in bad.items()}
    for kind, future in bad_futures.items():
      status, media, out = future.result()
      assert (status, media) == (bad[kind][1], 'application/json'), (kind, out)
      error = json.loads(out)
      assert error['error'] == kind and error['detail'], error
    for photo, future in zip(good, good_futures):
      status, _, out = future.result()
      assert status == 200, out[:300]
      # Batched with others (padded batch of 2 or 4): XLA may sum in another
      # order than at batch 1, so allow one level of 255.
      diff = np.abs(decode(out).astype(int) - reference.cutout(photo).astype(int))
      assert diff.max() <= 1, diff.max()
  # A bad option or no image: 400 with the reason.
  status, _, out = post(url + '?format=jpeg', good[0])
  assert status == 400 and 'format' in json.loads(out)['detail']
  status, _, out = post(url, *multipart({'format': 'alpha'}, b'', name='other'))
  assert status in (400, 422), out


def test_healthz_and_metrics(server):
  status, body = get(server.url + '/healthz')
  assert status == 200 and json.loads(body)['status'] == 'ok'
  status, body = get(server.url + '/metrics')
  text = body.decode()
  assert status == 200
  for line in ('bgmat_requests_total{status="200"}', 'bgmat_errors_total{kind="not_an_image"}',
               'bgmat_errors_total{kind="decompression_bomb"}', 'bgmat_batches_total{size="1"}',
               'bgmat_request_seconds_bucket{le="+Inf"}', 'bgmat_resident_memory_bytes'):
    assert line in text, (line, text)
  status, body = get(server.url + '/nothing-here')
  assert status == 404 and json.loads(body)['error'] == 'not_found'


def _metric(server, name: str) -> float:
  for line in get(server.url + '/metrics')[1].decode().splitlines():
    if line.startswith(name + ' '):
      return float(line.split()[1])
  raise KeyError(name)


def _wait_for(predicate, what: str, limit: float = REQUEST_LIMIT) -> None:
  deadline = time.monotonic() + limit
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError(f'not within {limit} s: {what}')
    time.sleep(0.1)


class HalfSent:
  """A POST of `photo` whose body is sent in two halves: in the server from
  the first until `finish`."""

  def __init__(self, server, photo: bytes):
    self.photo = photo
    self.connection = http.client.HTTPConnection('127.0.0.1', server.port, timeout=REQUEST_LIMIT)
    self.connection.putrequest('POST', '/api/remove')
    self.connection.putheader('Content-Type', 'image/png')
    self.connection.putheader('Content-Length', str(len(photo)))
    self.connection.endheaders()
    self.connection.send(photo[:len(photo) // 2])

  def finish(self) -> tuple[int, bytes]:
    self.connection.send(self.photo[len(self.photo) // 2:])
    response = self.connection.getresponse()
    body = response.read()
    self.connection.close()
    return response.status, body


def test_full_queue_answers_503(server):
  photo = serve_bench.photo_bytes(60, 80, seed=7)
  held = [HalfSent(server, photo) for _ in range(MAX_QUEUE)]
  _wait_for(lambda: _metric(server, 'bgmat_requests_in_server') == MAX_QUEUE,
            f'{MAX_QUEUE} requests in the server')
  status, _, out = post(server.url + '/api/remove', photo)
  assert status == 503 and json.loads(out)['error'] == 'overloaded', out
  for request in held:
    status, out = request.finish()
    assert status == 200 and decode(out).shape == (60, 80, 4)
  status, _, _ = post(server.url + '/api/remove', photo)   # Room again.
  assert status == 200


def test_request_timeout_answers_504(tmp_path):
  """An upload that stops half-way is answered 504 after --request-timeout
  (the time runs from admission, so slow clients cannot hold a slot)."""
  srv = start_server(str(tmp_path), '--request-timeout', '2', '--log-level', 'warning')
  try:
    stalled = HalfSent(srv, serve_bench.photo_bytes(60, 80))
    response = stalled.connection.getresponse()
    assert response.status == 504
    assert json.loads(response.read())['error'] == 'timeout'
    stalled.connection.close()
    assert get(srv.url + '/healthz')[0] == 200
  finally:
    srv.stop()


def test_sigterm_finishes_in_flight_requests(server, reference):
  """Runs last (it stops the module's server)."""
  photo = serve_bench.photo_bytes(60, 80, seed=3)
  held = [HalfSent(server, photo) for _ in range(2)]
  _wait_for(lambda: _metric(server, 'bgmat_requests_in_server') == 2, '2 requests in the server')
  server.process.send_signal(signal.SIGTERM)
  _wait_for(lambda: 'Shutting down' in server.log(), 'the server logs its shutdown', 60)
  for request in held:
    status, out = request.finish()
    assert status == 200
    diff = np.abs(decode(out).astype(int) - reference.cutout(photo).astype(int))
    assert diff.max() <= 1
  server.process.wait(REQUEST_LIMIT)   # It exits once they are answered.
  with pytest.raises(OSError):   # And is no longer listening.
    get(server.url + '/healthz', timeout=5)
