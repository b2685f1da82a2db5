"""`bgmat serve`: background removal as an HTTP service, with dynamic batching.

  bgmat serve --workdir runs/demo/matting            # or --model model.bgmat
  curl -F file=@photo.jpg http://127.0.0.1:8000/api/remove -o cutout.png
  curl --data-binary @photo.jpg 'http://127.0.0.1:8000/api/remove?format=composite&bg=%2300ff00' -o out.jpg

Endpoints:
  POST /api/remove  the photo as a multipart field (`file`, rembg's name, or
      `image`) or as the raw request body; options as form fields or query
      parameters, the names of `bgmat remove`: `format` (rgba | alpha |
      foreground | composite), `bg` (composite: a colour name or #rrggbb),
      `foreground_method` (blur_fusion | multilevel | none), `keep_transparency`
      (true/false). rembg's fields where they mean the same: `om=true` (only
      mask) is format=alpha, `bgc=r,g,b[,a]` is format=composite on that colour
      (the result is opaque; `a` is not used). rembg's other fields (model, a,
      af, ab, ae, ppm, extras) choose rembg's models and post-processing; they
      are accepted and ignored. -> image/png (rgba, alpha, foreground) or
      image/jpeg (composite).
  GET /healthz      200 {"status": "ok", ...} once the model is loaded.
  GET /metrics      Prometheus text: requests by status, errors by kind, batch
      sizes, latency histogram, queue depth, resident memory.

Errors are JSON `{"error": kind, "detail": message}`: 400 bad_request / empty
(an option or an empty upload), 413 upload_too_large (over --max-upload-bytes,
refused from Content-Length or while reading, before any decoding) and
decompression_bomb (over --max-pixels, refused from the image header), 415
not_an_image, 422 unreadable (truncated, corrupt) or another reason of
`image_io.InputError`, 503 overloaded (more than --max-queue requests in the
server: answered at once), 504 timeout (over --request-timeout), 500 internal.
No file is ever written from a request: the body is read into memory (never
spooled to disk) and parsed there.

Batching: requests are decoded in a thread pool; the decoded photos wait in
one queue that an inference thread drains, taking up to --max-batch-size
photos (waiting at most --batch-timeout seconds for more after the first) and
running them through `Remover.predict_batch`, the code path of `bgmat remove`
and the Python API. A batch is padded to the next power of two, so each shape
bucket compiles at most log2(max batch) + 1 times. --max-batch-size 1 turns
batching off. Outputs (foreground colours, PNG/JPEG encoding) are made in the
thread pool by `render.render`, as `Remover.cutout` does.

Shutdown: on SIGTERM (or Ctrl-C) uvicorn stops accepting connections, lets
the requests in flight finish (up to --request-timeout + 5 s), then the
inference thread stops.

Why Starlette + uvicorn with this small batching layer, not LitServe: LitServe
(0.2.19, the version tried) parses a request only as a form or JSON (raw image
bytes in the body, which rembg's clients and curl --data-binary send, are not
accepted); its queue to the inference workers is unbounded (no 503 when full);
its multipart parsing spools uploads over 1 MB to temporary files; and its
inference runs in worker processes that shutdown terminates (`terminate`, then
`kill`) rather than drains. Each of these would need its request path
replaced. uvicorn and Starlette (FastAPI's base) are the maintained ASGI
server and toolkit; the batching layer (`Batcher`) is ~80 lines below.

Scaling past one machine: one `bgmat serve` per device, behind any HTTP load
balancer (health checks on /healthz, a 503 retried elsewhere); README, "Serving over HTTP".
"""

import asyncio
import bisect
import dataclasses
import io
import logging
import queue
import threading
import time
from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageColor
import psutil

from bgmat import foreground
from bgmat.inference import image_io
from bgmat.inference import remover as remover_lib
from bgmat.inference import render as render_lib

log = logging.getLogger('bgmat.inference.serve')

# Latency histogram bucket bounds (seconds), Prometheus style (cumulative).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_MEDIA_TYPES = {'rgba': 'image/png', 'alpha': 'image/png', 'foreground': 'image/png',
                'composite': 'image/jpeg'}
# image_io.InputError reasons -> HTTP status.
_INPUT_STATUS = {'empty': 400, 'decompression_bomb': 413, 'not_an_image': 415}


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one server accepts.

  Attributes:
    max_upload_bytes: largest request body, bytes (413 above).
    max_pixels: largest photo, pixels (width x height; 413 above), checked on
      the image header before the pixels are decoded.
    request_timeout: seconds from admission to the response (504 after).
    max_queue: requests in the server at once (reading, waiting, running);
      one more is answered 503 at once.
    max_batch_size: photos run through the model together (1: no batching).
    batch_timeout: seconds the inference thread waits for more photos after
      the first of a batch.
  """
  max_upload_bytes: int = 20 * 1024 * 1024
  max_pixels: int = 40_000_000
  request_timeout: float = 60.0
  max_queue: int = 64
  max_batch_size: int = 8
  batch_timeout: float = 0.01

  def __post_init__(self):
    for name in ('max_upload_bytes', 'max_pixels', 'max_queue', 'max_batch_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
    if self.request_timeout <= 0 or self.batch_timeout < 0:
      raise ValueError('request_timeout must be positive and batch_timeout >= 0')


class RequestError(Exception):
  """An error answered as JSON {"error": kind, "detail": message} with `status`."""

  def __init__(self, status: int, kind: str, detail: str):
    super().__init__(detail)
    self.status, self.kind, self.detail = status, kind, detail


class Metrics:
  """Counters behind GET /metrics (thread-safe)."""

  def __init__(self):
    self._lock = threading.Lock()
    self.requests = {}       # HTTP status -> count (POST /api/remove).
    self.errors = {}         # error kind -> count.
    self.batches = {}        # photos in a batch -> batches run.
    self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
    self.latency_sum = 0.0
    self.in_server = 0       # Requests admitted and not answered.
    self.waiting = 0         # Decoded photos waiting for the model.

  def count_request(self, status: int, seconds: float, kind: str | None = None) -> None:
    with self._lock:
      self.requests[status] = self.requests.get(status, 0) + 1
      if kind:
        self.errors[kind] = self.errors.get(kind, 0) + 1
      self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
      self.latency_sum += seconds

  def count_batch(self, size: int) -> None:
    with self._lock:
      self.batches[size] = self.batches.get(size, 0) + 1

  def prometheus(self) -> str:
    """The counters in Prometheus text format (0.0.4); memory is the RSS of this
    process (bytes), read now."""
    with self._lock:
      lines = ['# TYPE bgmat_requests_total counter']
      lines += [f'bgmat_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.requests.items())]
      lines.append('# TYPE bgmat_errors_total counter')
      lines += [f'bgmat_errors_total{{kind="{k}"}} {n}' for k, n in sorted(self.errors.items())]
      lines.append('# TYPE bgmat_batches_total counter')
      lines += [f'bgmat_batches_total{{size="{s}"}} {n}' for s, n in sorted(self.batches.items())]
      lines.append('# TYPE bgmat_request_seconds histogram')
      total = 0
      for bound, count in zip(LATENCY_BUCKETS + (float('inf'),), self.latency_counts):
        total += count
        le = '+Inf' if bound == float('inf') else repr(bound)
        lines.append(f'bgmat_request_seconds_bucket{{le="{le}"}} {total}')
      lines.append(f'bgmat_request_seconds_sum {self.latency_sum:.6f}')
      lines.append(f'bgmat_request_seconds_count {total}')
      lines += ['# TYPE bgmat_requests_in_server gauge', f'bgmat_requests_in_server {self.in_server}',
                '# TYPE bgmat_photos_waiting gauge', f'bgmat_photos_waiting {self.waiting}']
    lines += ['# TYPE bgmat_resident_memory_bytes gauge',
              f'bgmat_resident_memory_bytes {psutil.Process().memory_info().rss}']
    return '\n'.join(lines) + '\n'


@dataclasses.dataclass
class _Job:
  rgb: np.ndarray                      # (H, W, 3) uint8.
  future: asyncio.Future               # -> (H, W) float32 alpha in [0, 1].
  loop: asyncio.AbstractEventLoop


class Batcher:
  """One inference thread running `remover.predict_batch` on batches of queued photos.

  `submit` (from the event loop) -> awaitable (H, W) float32 alpha in [0, 1];
  an exception of the model is set on every future of its batch.
  """

  def __init__(self, remover: remover_lib.Remover, max_batch_size: int, batch_timeout: float,
               metrics: Metrics):
    self.remover, self.max_batch_size, self.batch_timeout = remover, max_batch_size, batch_timeout
    self.metrics = metrics
    self._queue: queue.Queue = queue.Queue()   # Bounded by admission (Limits.max_queue).
    self._thread = threading.Thread(target=self._run, name='bgmat-inference', daemon=True)
    self._thread.start()

  def submit(self, rgb: np.ndarray) -> asyncio.Future:
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    with self.metrics._lock:  # pylint: disable=protected-access
      self.metrics.waiting += 1
    self._queue.put(_Job(rgb, future, loop))
    return future

  def close(self) -> None:
    """Stops the thread after the photos already queued (blocks until then)."""
    self._queue.put(None)
    self._thread.join()

  def _take(self) -> list[_Job] | None:
    first = self._queue.get()
    if first is None:
      return None
    jobs = [first]
    deadline = time.monotonic() + self.batch_timeout
    while len(jobs) < self.max_batch_size:
      try:
        job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        break
      if job is None:
        self._queue.put(None)  # Stop after this batch.
        break
      jobs.append(job)
    return jobs

  def _run(self) -> None:
    while True:
      jobs = self._take()
      if jobs is None:
        return
      with self.metrics._lock:  # pylint: disable=protected-access
        self.metrics.waiting -= len(jobs)
      jobs = [j for j in jobs if not j.future.cancelled()]  # Timed out while waiting.
      if not jobs:
        continue
      self.metrics.count_batch(len(jobs))
      # Padded to a power of two: at most log2(max) + 1 compiles per bucket.
      padded = min(1 << (len(jobs) - 1).bit_length(), self.max_batch_size)
      try:
        results = self.remover.predict_batch([j.rgb for j in jobs], batch_size=padded,
                                             with_preseg=False)
      except Exception as e:  # pylint: disable=broad-except
        log.exception('batch of %d failed', len(jobs))
        for job in jobs:
          job.loop.call_soon_threadsafe(_set, job.future, None, e)
        continue
      for job, result in zip(jobs, results):
        job.loop.call_soon_threadsafe(_set, job.future, result['alpha'], None)


def _set(future: asyncio.Future, value, error) -> None:
  if future.done():  # Cancelled by a timeout meanwhile.
    return
  if error is not None:
    future.set_exception(error)
  else:
    future.set_result(value)


@dataclasses.dataclass
class Options:
  """The output a request asks for (names and meaning of `bgmat remove`)."""
  format: str = 'rgba'
  bg: tuple[int, int, int] = (255, 255, 255)
  foreground_method: str = foreground.DEFAULT_METHOD
  keep_transparency: bool = False


def _bool(name: str, value: str) -> bool:
  lowered = value.strip().lower()
  if lowered in ('1', 'true', 'yes', 'on'):
    return True
  if lowered in ('0', 'false', 'no', 'off', ''):
    return False
  raise RequestError(400, 'bad_request', f'{name}={value!r}: expected true or false')


def parse_options(fields: dict[str, str]) -> Options:
  """Request fields (query + form, text) -> Options; raises RequestError (400).

  A background image (`bgmat remove --bg PHOTO`) is not taken from a request:
  a server path would let clients read the server's files.
  """
  options = Options()
  if _bool('om', fields.get('om', '')):
    options.format = 'alpha'
  if fields.get('bgc'):
    try:
      values = [int(v) for v in fields['bgc'].split(',')]
    except ValueError:
      values = []
    if len(values) not in (3, 4) or not all(0 <= v <= 255 for v in values):
      raise RequestError(400, 'bad_request',
                         f'bgc={fields["bgc"]!r}: expected r,g,b or r,g,b,a in 0-255')
    options.format, options.bg = 'composite', tuple(values[:3])
  if 'format' in fields:
    if fields['format'] not in render_lib.FORMATS:
      raise RequestError(400, 'bad_request', f'format={fields["format"]!r}: expected one of '
                         f'{", ".join(render_lib.FORMATS)}')
    options.format = fields['format']
  if 'bg' in fields:
    try:
      options.bg = tuple(ImageColor.getrgb(fields['bg'])[:3])
    except ValueError:
      raise RequestError(400, 'bad_request', f'bg={fields["bg"]!r}: expected a colour name '
                         '(white) or #rrggbb; background images are not taken by the '
                         'server') from None
  method = fields.get('foreground_method', options.foreground_method)
  if method not in foreground.METHODS:
    raise RequestError(400, 'bad_request', f'foreground_method={method!r}: expected one of '
                       f'{", ".join(foreground.METHODS)}')
  options.foreground_method = method
  options.keep_transparency = _bool('keep_transparency', fields.get('keep_transparency', ''))
  return options


def parse_multipart(body: bytes, content_type: str) -> tuple[bytes | None, dict[str, str]]:
  """A multipart/form-data body, in memory -> (the image part's bytes or None, text fields).

  The image part is the one named `file` (rembg's name) or `image`, else the
  first part with a filename. Raises RequestError (400) if it is malformed.
  """
  from python_multipart import multipart  # pylint: disable=g-import-not-at-top
  _, params = multipart.parse_options_header(content_type)
  boundary = params.get(b'boundary')
  if not boundary:
    raise RequestError(400, 'bad_request', 'multipart/form-data without a boundary')
  parts: list[dict[str, Any]] = []
  header = {}

  def on_part_begin():
    parts.append({'headers': {}, 'data': []})

  def on_header_field(data, start, end):
    header['field'] = header.get('field', b'') + data[start:end]

  def on_header_value(data, start, end):
    header['value'] = header.get('value', b'') + data[start:end]

  def on_header_end():
    parts[-1]['headers'][header.pop('field', b'').lower()] = header.pop('value', b'')

  def on_part_data(data, start, end):
    parts[-1]['data'].append(data[start:end])

  parser = multipart.MultipartParser(boundary, {
      'on_part_begin': on_part_begin, 'on_header_field': on_header_field,
      'on_header_value': on_header_value, 'on_header_end': on_header_end,
      'on_part_data': on_part_data})
  try:
    parser.write(body)
    parser.finalize()
  except Exception as e:  # pylint: disable=broad-except  # python_multipart's own errors.
    raise RequestError(400, 'bad_request', f'malformed multipart body: {e}') from e
  image, first_file, fields = None, None, {}
  for part in parts:
    _, disposition = multipart.parse_options_header(part['headers'].get(b'content-disposition', b''))
    name = disposition.get(b'name', b'').decode('utf-8', 'replace')
    data = b''.join(part['data'])
    if name in ('file', 'image'):
      image = data
    elif b'filename' in disposition:
      first_file = data if first_file is None else first_file
    else:
      fields[name] = data.decode('utf-8', 'replace')
  return (image if image is not None else first_file), fields


def encode(array: np.ndarray, format: str, icc_profile: bytes | None = None) -> bytes:  # pylint: disable=redefined-builtin
  """A `render.render` output (uint8) -> PNG bytes, or JPEG (quality 95, 4:4:4) for
  composite, as `bgmat remove` writes them; `icc_profile` kept for colour outputs."""
  options: dict[str, Any] = {}
  if icc_profile and array.ndim == 3:
    options['icc_profile'] = icc_profile
  buffer = io.BytesIO()
  if format == 'composite':
    Image.fromarray(array).save(buffer, format='JPEG', quality=95, subsampling=0, **options)
  else:
    Image.fromarray(array).save(buffer, format='PNG', **options)
  return buffer.getvalue()


def build_app(remover: remover_lib.Remover, limits: Limits = Limits(),
              describe: str = 'model'):
  """The Starlette app of the service (routes in the module docstring).

  The inference thread starts with the app's lifespan and stops (after the
  queued photos) when it ends.
  """
  import contextlib  # pylint: disable=g-import-not-at-top
  from starlette.applications import Starlette  # pylint: disable=g-import-not-at-top
  from starlette.concurrency import run_in_threadpool  # pylint: disable=g-import-not-at-top
  from starlette.responses import JSONResponse, PlainTextResponse, Response  # pylint: disable=g-import-not-at-top
  from starlette.routing import Route  # pylint: disable=g-import-not-at-top

  metrics = Metrics()
  state: dict[str, Any] = {}

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    state['batcher'] = Batcher(remover, limits.max_batch_size, limits.batch_timeout, metrics)
    log.info('ready: %s, limits %s', describe, limits)
    try:
      yield
    finally:
      await run_in_threadpool(state['batcher'].close)

  async def read_body(request) -> bytes:
    length = request.headers.get('content-length')
    if length is not None and length.isdigit() and int(length) > limits.max_upload_bytes:
      raise RequestError(413, 'upload_too_large', f'request body of {length} bytes is over '
                         f'the limit of {limits.max_upload_bytes}')
    chunks, size = [], 0
    async for chunk in request.stream():
      size += len(chunk)
      if size > limits.max_upload_bytes:
        raise RequestError(413, 'upload_too_large', 'request body is over the limit of '
                           f'{limits.max_upload_bytes} bytes')
      chunks.append(chunk)
    return b''.join(chunks)

  async def process(request) -> Response:
    body = await read_body(request)
    fields = dict(request.query_params)
    content_type = request.headers.get('content-type', '')
    if content_type.startswith('multipart/form-data'):
      data, form = parse_multipart(body, content_type)
      fields.update(form)
      if data is None:
        raise RequestError(400, 'bad_request', 'no image in the form: send it as the field '
                           '"file" (or "image"), or as the raw request body')
    else:
      data = body
    options = parse_options(fields)
    try:
      photo = await run_in_threadpool(image_io.read_photo, data, limits.max_pixels, 'upload')
    except image_io.InputError as e:
      raise RequestError(_INPUT_STATUS.get(e.reason, 422), e.reason, str(e)) from e
    alpha = await state['batcher'].submit(photo.rgb)

    def output() -> bytes:
      matte = render_lib.constrain_alpha(
          alpha, photo.alpha if options.keep_transparency else None)
      array = render_lib.render(photo.rgb, matte, options.format, bg=options.bg,
                                 foreground_method=options.foreground_method)
      return encode(array, options.format, photo.icc_profile)

    return Response(await run_in_threadpool(output), media_type=_MEDIA_TYPES[options.format])

  async def remove(request) -> Response:
    start = time.monotonic()
    with metrics._lock:  # pylint: disable=protected-access
      admitted = metrics.in_server < limits.max_queue
      metrics.in_server += admitted
    try:
      if not admitted:
        raise RequestError(503, 'overloaded', f'{limits.max_queue} requests are in the server '
                           '(--max-queue); retry later')
      try:
        response = await asyncio.wait_for(process(request), limits.request_timeout)
      except asyncio.TimeoutError:
        raise RequestError(504, 'timeout', f'not answered within {limits.request_timeout:g} s '
                           '(--request-timeout)') from None
      except RequestError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        log.exception('request failed')
        raise RequestError(500, 'internal', f'{type(e).__name__}: {e}') from e
      metrics.count_request(200, time.monotonic() - start)
      return response
    except RequestError as e:
      metrics.count_request(e.status, time.monotonic() - start, e.kind)
      headers = {'Retry-After': '1'} if e.status == 503 else None
      return JSONResponse({'error': e.kind, 'detail': e.detail}, e.status, headers=headers)
    finally:
      if admitted:
        with metrics._lock:  # pylint: disable=protected-access
          metrics.in_server -= 1

  async def healthz(request) -> Response:
    del request
    return JSONResponse({'status': 'ok', 'model': describe,
                         'working_size': remover.working_size,
                         'max_batch_size': limits.max_batch_size,
                         'requests_in_server': metrics.in_server})

  async def metrics_endpoint(request) -> Response:
    del request
    return PlainTextResponse(metrics.prometheus(), media_type='text/plain; version=0.0.4')

  async def not_found(request, exc) -> Response:
    return JSONResponse({'error': 'not_found' if exc.status_code == 404 else 'bad_request',
                         'detail': f'{request.method} {request.url.path}: {exc.detail}'},
                        exc.status_code)

  app = Starlette(routes=[Route('/api/remove', remove, methods=['POST']),
                          Route('/healthz', healthz, methods=['GET']),
                          Route('/metrics', metrics_endpoint, methods=['GET'])],
                  exception_handlers={404: not_found, 405: not_found}, lifespan=lifespan)
  app.state.metrics = metrics
  return app


def random_remover(preset: str, seed: int = 0, **kwargs) -> remover_lib.Remover:
  """Both stages of the `preset` configs ('tiny', 'demo') with random weights
  (`Remover.from_configs`, `seed`): for tests and benchmarks only."""
  import configs.matting as matting_configs  # pylint: disable=g-import-not-at-top
  import configs.preseg as preseg_configs  # pylint: disable=g-import-not-at-top
  matting = matting_configs.get_config(f'{preset},noadv')
  return remover_lib.Remover.from_configs(preseg_configs.get_config(preset).model,
                                          matting.model, matting.image_size, seed=seed,
                                          **kwargs)


def run(remover: remover_lib.Remover, host: str = '127.0.0.1', port: int = 8000,
        limits: Limits = Limits(), describe: str = 'model', log_level: str = 'info') -> None:
  """Serves until SIGTERM / SIGINT (blocking); in-flight requests finish first."""
  import uvicorn  # pylint: disable=g-import-not-at-top
  logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO))
  config = uvicorn.Config(build_app(remover, limits, describe), host=host, port=port,
                          log_level=log_level, lifespan='on',
                          timeout_graceful_shutdown=limits.request_timeout + 5,
                          timeout_keep_alive=5)
  uvicorn.Server(config).run()

