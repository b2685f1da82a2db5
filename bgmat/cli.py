"""The `bgmat` command.

  bgmat remove PHOTO|FOLDER|GLOB... -o OUTDIR (--workdir RUNS/matting | --model FILE)
      [--format rgba|alpha|foreground|composite] [--bg COLOR|IMAGE]
      [--foreground-method blur_fusion|multilevel|none] [--recursive]
      [--skip-existing | --overwrite] [--save-alpha] [--size N]
      [--batch-size N] [--max-side N] [--bucket-sides 256,512,...] [--quiet]
      [--max-pixels N] [--keep-transparency]
      [--video-container webm|mp4|mov|png] [--temporal-smoothing S] [--sequence]
      [--max-compiled 8] [--compilation-cache DIR|none]
      [--preseg-flip] [--preseg-scales 1,1.25,...]
  bgmat export --workdir RUNS/matting --out FILE [--format bgmat|onnx|onnx-rembg]
      [--platforms cpu,cuda] [--size N] [--bucket-sides 256,512,...]
  bgmat serve (--workdir RUNS/matting | --model FILE) [--host 127.0.0.1] [--port 8000]
      [--max-batch-size 8] [--batch-timeout 0.01] [--max-queue 64]
      [--max-upload-bytes N] [--max-pixels N] [--request-timeout 60]
      [--size N] [--max-side N] [--bucket-sides 256,512,...]
      [--max-compiled 8] [--compilation-cache DIR|none]
      [--preseg-flip] [--preseg-scales 1,1.25,...]
  bgmat demo [--out DIR]

Formats: rgba (PNG, default), alpha (greyscale PNG), foreground (RGB PNG of
the estimated foreground colours), composite (JPEG over --bg: a colour such as
white or '#00ff00', or a photo, resized to cover). Outputs are OUTDIR/<name>;
images found in a folder keep their path relative to that folder; `-o NAME.png`
with one input writes that file; `-` reads a photo from stdin. An output never
replaces an input or a file bgmat did not write (it gets the next free name
<name>-2, ...); folders skip bgmat's own outputs and non-images, and say so.

Video (clip.mp4, .mov, .mkv, .webm, ...; needs `pip install bgmat[video]`):
OUTDIR/<name>.webm for rgba (VP9 with alpha), .mp4 for the other formats
(H.264; alpha is the matte in grey), or --video-container mov (ProRes 4444)
or png (a folder of frames); `-o NAME.webm|.mp4|.mov` for one clip. Frame
count, size, timing and audio are kept. --temporal-smoothing S (0 <= S < 1,
default 0, off) averages the pre-segmentation over frames where the picture
does not move (bgmat.inference.video); --sequence applies it to the images of a folder,
taken as the frames of one clip in name order.

Resolution: the pre-segmentation runs at the working size (--size, default
the training size); the matting at the photo's own size (at most --max-side),
padded to a shape bucket (long side in --bucket-sides x aspect 9:16, 3:4, 1:1)
so each bucket compiles once; photos above the largest bucket are matted in
overlapping tiles. --batch-size photos of one bucket run together. At most
--max-compiled shapes stay compiled (flat memory over a folder of any mix of
sizes); XLA's persistent compilation cache makes a shape that comes back, or a
later run, load its compiled code instead of compiling again.
"""

import argparse
import collections
import sys


def _remove(args) -> int:
  from bgmat.inference import remover as remove  # pylint: disable=g-import-not-at-top
  if args.format == 'composite':
    try:
      bg = remove.parse_background(args.bg)
    except (ValueError, remove.InputError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
  else:
    bg = args.bg
  if args.inputs.count('-') > 1:
    print('error: - (stdin) can be given once', file=sys.stderr)
    return 2
  try:  # The output location is checked before the model loads.
    remove.prepare_output(args.output, args.inputs, args.format)
  except remove.OutputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  _compilation_options(args)
  options = dict(buckets=_buckets(args.bucket_sides), max_side=args.max_side,
                 max_pixels=args.max_pixels or remove.MAX_PIXELS)
  tta = _tta_options(args)
  if tta is None:
    return 2
  if args.model:
    remover = remove.Remover.from_export(args.model, **options)
  else:
    remover = remove.Remover.from_workdir(args.workdir, working_size=args.size, **options,
                                          **tta)
  summary = remove.process_inputs(
      remover, args.inputs, args.output, format=args.format, bg=bg,
      foreground_method=args.foreground_method, recursive=args.recursive,
      skip_existing=args.skip_existing, save_alpha=args.save_alpha,
      batch_size=args.batch_size, workers=args.workers,
      keep_transparency=args.keep_transparency, max_pixels=args.max_pixels or remove.MAX_PIXELS,
      progress=False if args.quiet else None, log_written=not args.quiet,
      video_container=args.video_container, video_batch_size=args.video_batch_size,
      temporal_smoothing=args.temporal_smoothing, sequence=args.sequence)
  skipped = f', {len(summary.skipped)} skipped (exist)' if summary.skipped else ''
  ignored = ''
  if summary.ignored:
    reasons = collections.Counter(why for _, why in summary.ignored)
    ignored = ', {} not taken ({})'.format(
        len(summary.ignored), '; '.join(f'{n} {why}' for why, n in reasons.most_common()))
  print(f'{len(summary.written)} written to {args.output}{skipped}, '
        f'{len(summary.failures)} failed{ignored}')
  for path, error in summary.failures:
    print(f'  failed: {path}: {error}', file=sys.stderr)
  return 1 if summary.failures else 0


def _export(args) -> int:
  if args.format != 'bgmat':
    from bgmat import export_onnx  # pylint: disable=g-import-not-at-top
    try:
      done = export_onnx.export_workdir(args.workdir, args.out, format=args.format,
                                        working_size=args.size)
    except (ImportError, ValueError) as e:
      print(f'error: {e}', file=sys.stderr)
      return 1
    shapes = lambda values: ', '.join(f'{n} {tuple(d)}' for n, d in values)
    print(f'{args.out}: {args.format}, working size {done.metadata["working_size"]}; '
          f'inputs {shapes(done.inputs)}; outputs {shapes(done.outputs)}; '
          f'max |alpha - JAX| {done.max_abs_diff:.2e} (ONNX Runtime CPU, tolerance '
          f'{export_onnx.TOLERANCE:g})')
    return 0
  from bgmat import export  # pylint: disable=g-import-not-at-top
  platforms = tuple(p.strip() for p in args.platforms.split(',') if p.strip())
  header = export.export_workdir(args.workdir, args.out, working_size=args.size,
                                 platforms=platforms, buckets=_buckets(args.bucket_sides))
  print(f'{args.out}: working size {header["working_size"]}, '
        f'{len(header["bucket_shapes"])} matting buckets up to '
        f'{header["buckets"]["long_sides"][-1]} px, platforms {",".join(header["platforms"])}')
  return 0


def _buckets(sides: str | None):
  from bgmat.inference import resolution  # pylint: disable=g-import-not-at-top
  if not sides:
    return None
  return resolution.Buckets(
      long_sides=tuple(sorted(int(s) for s in sides.split(',') if s.strip())))


def _sides(text: str) -> str:
  """argparse type of --bucket-sides: positive multiples of 32, comma separated."""
  try:
    sides = [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    sides = []
  if not sides or any(s <= 0 or s % 32 for s in sides):
    raise argparse.ArgumentTypeError(f'{text!r}: expected multiples of 32 such as 512,1024,2048')
  return text


def _scales(text: str) -> tuple[float, ...]:
  """argparse type of --preseg-scales: numbers > 0, comma separated."""
  from bgmat.inference import resolution  # pylint: disable=g-import-not-at-top  (no jax)
  try:
    return resolution.check_scales([s for s in text.split(',') if s.strip()])
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'{text!r}: expected scales > 0 such as 1,1.25,1.5') from None


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f'{text!r}: expected a positive integer')
  return value


def _compilation_options(args) -> None:
  """--max-compiled and --compilation-cache (bgmat.inference.compile_cache)."""
  from bgmat.inference import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.set_budget(args.max_compiled or compile_cache.DEFAULT_BUDGET)
  path = args.compilation_cache
  try:
    compile_cache.use_persistent_cache(compile_cache.default_cache_dir() if path is None
                                       else path)
  except OSError as e:  # A read-only home: run without the cache.
    print(f'warning: no persistent compilation cache ({e})', file=sys.stderr)


def _add_tta_flags(p) -> None:
  p.add_argument('--preseg-flip', action='store_true',
                 help='Test-time augmentation of the pre-segmentation: also its mirror '
                 '(2x its cost; README "The study"; --workdir only).')
  p.add_argument('--preseg-scales', type=_scales, default=(1.0,),
                 help='Test-time augmentation of the pre-segmentation: average over the '
                 'working size times each scale (default 1; --workdir only); the best set '
                 'depends on the training side: 0.75,0.875,1 for the study stage 1 trained at '
                 '192 px, 1,1.25,1.5,1.75 for one trained at the working size (README "The '
                 'study").')


def _tta_options(args) -> dict | None:
  """Remover.from_workdir's test-time augmentation; None (after saying why on
  stderr) where it was asked for without --workdir."""
  tta = dict(preseg_flip=args.preseg_flip, preseg_scales=args.preseg_scales)
  if not args.workdir and (args.preseg_flip or args.preseg_scales != (1.0,)):
    print('error: --preseg-flip / --preseg-scales need --workdir (an exported model '
          'keeps the test-time augmentation it was exported with)', file=sys.stderr)
    return None
  return tta


def _add_compilation_flags(p) -> None:
  p.add_argument('--max-compiled', type=_positive, default=None,
                 help='Distinct photo shapes kept compiled (memory: about 7 MiB each for '
                 'the demo model on CPU); more empties the compiled cache '
                 '(default: compile_cache.DEFAULT_BUDGET, 8).')
  p.add_argument('--compilation-cache', default=None,
                 help='Folder of XLA\'s persistent compilation cache, so a shape compiles '
                 'once across runs (default ~/.cache/bgmat/xla/<jax version, CPU>; '
                 'none: off).')


def _serve(args) -> int:
  from bgmat.inference import serve  # pylint: disable=g-import-not-at-top
  from bgmat.inference import remover as remove  # pylint: disable=g-import-not-at-top
  limits = serve.Limits(max_upload_bytes=args.max_upload_bytes, max_pixels=args.max_pixels,
                        request_timeout=args.request_timeout, max_queue=args.max_queue,
                        max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
  tta = _tta_options(args)
  if tta is None:
    return 2
  _compilation_options(args)
  options = dict(buckets=_buckets(args.bucket_sides), max_side=args.max_side,
                 max_pixels=args.max_pixels)
  if args.random_preset:
    remover = serve.random_remover(args.random_preset, seed=args.seed, **options)
    describe = f'random {args.random_preset} (seed {args.seed}; tests only)'
  elif args.model:
    remover = remove.Remover.from_export(args.model, **options)
    describe = args.model
  else:
    remover = remove.Remover.from_workdir(args.workdir, working_size=args.size, **options,
                                          **tta)
    describe = args.workdir
  serve.run(remover, args.host, args.port, limits, describe, log_level=args.log_level)
  return 0


def _smoothing(text: str) -> float:
  """argparse type of --temporal-smoothing: a number in [0, 1)."""
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if not 0.0 <= value < 1.0:
    raise argparse.ArgumentTypeError(f'{text!r}: expected a number in [0, 1), e.g. 0.6')
  return value


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = 0.0
  if not value > 0:
    raise argparse.ArgumentTypeError(f'{text!r}: expected a positive number of seconds')
  return value


def _demo(args) -> int:
  from bgmat import demo  # pylint: disable=g-import-not-at-top
  demo.run(args.out, data_dir=args.data_dir)
  return 0


def main(argv=None) -> int:
  from bgmat import foreground  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog='bgmat', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('remove', help='Cut the background out of photos.')
  p.add_argument('inputs', nargs='+',
                 help='Image files, folders or glob patterns; - reads one photo from stdin.')
  p.add_argument('-o', '--output', required=True,
                 help='Output folder, or a file name (.png, .jpg) for one input.')
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument('--workdir', help='A trained matting run.')
  model.add_argument('--model', help='A `bgmat export` file.')
  p.add_argument('--format', default='rgba', choices=('rgba', 'alpha', 'foreground',
                                                      'composite'), help='What to write.')
  p.add_argument('--bg', default='white',
                 help='composite background: a colour (white, #00ff00) or an image path.')
  p.add_argument('--foreground-method', default=foreground.DEFAULT_METHOD,
                 choices=foreground.METHODS,
                 help='Colours of soft edges (rgba, foreground, composite); none = photo.')
  p.add_argument('--recursive', action='store_true', help='Descend into subfolders / **.')
  existing = p.add_mutually_exclusive_group()
  existing.add_argument('--skip-existing', action='store_true',
                        help='Leave outputs that already exist untouched.')
  existing.add_argument('--overwrite', dest='skip_existing', action='store_false',
                        help='Replace existing outputs (default).')
  p.add_argument('--save-alpha', action='store_true', help='Also write <stem>_alpha.png.')
  p.add_argument('--size', type=int, default=None,
                 help='Working size (default: training size; not with --model).')
  p.add_argument('--batch-size', '--batch_size', type=_positive, default=1,
                 help='Photos of one bucket matted together (default 1).')
  p.add_argument('--max-side', '--max_side', type=_positive, default=None,
                 help='Cap on the matting long side; the alpha is resized back.')
  p.add_argument('--bucket-sides', '--bucket_sides', type=_sides, default=None,
                 help='Long sides of the matting shape buckets (default '
                 '256,512,768,1024,1536,2048; larger photos are tiled).')
  _add_tta_flags(p)
  p.add_argument('--workers', type=_positive, default=2, help='Decoding threads.')
  p.add_argument('--max-pixels', '--max_pixels', type=_positive, default=None,
                 help='Photos with more pixels are refused as possible decompression '
                 'bombs (default 100000000).')
  p.add_argument('--keep-transparency', action='store_true',
                 help="An input's own alpha (RGBA, LA, transparent GIF/PNG) bounds the "
                 'matte: transparent pixels stay transparent.')
  p.add_argument('--video-container', choices=('webm', 'mp4', 'mov', 'png'), default=None,
                 help='Videos: webm (VP9, default for rgba), mp4 (H.264, default for the '
                 'others; no alpha), mov (ProRes 4444) or png (a folder of frames).')
  p.add_argument('--video-batch-size', type=_positive, default=None,
                 help='Video frames per model call (default: max(--batch-size, 4)).')
  p.add_argument('--temporal-smoothing', type=_smoothing, default=0.0,
                 help='0 <= S < 1: average the pre-segmentation over video frames where '
                 'the picture is still (damps flicker; 0 = off, the default).')
  p.add_argument('--sequence', action='store_true',
                 help='The images are frames of one clip (name order): smooth across them '
                 '(needs --temporal-smoothing).')
  _add_compilation_flags(p)
  p.add_argument('-q', '--quiet', action='store_true',
                 help='No progress bar and no per-photo lines (errors still shown).')
  p.set_defaults(fn=_remove)
  p = sub.add_parser('export', help='Write a trained run as one self-contained file.')
  p.add_argument('--workdir', required=True, help='A trained matting run.')
  p.add_argument('--out', required=True, help='The file to write.')
  p.add_argument('--format', default='bgmat', choices=('bgmat', 'onnx', 'onnx-rembg'),
                 help='bgmat: jax.export zip (default); onnx: both stages in one ONNX graph, '
                 "dynamic batch and sides; onnx-rembg: rembg's u2net_custom convention "
                 '(bgmat.export_onnx). ONNX files are checked with ONNX Runtime.')
  p.add_argument('--platforms', default='cpu,cuda',
                 help='Comma separated (cpu, cuda, tpu); --format bgmat only.')
  p.add_argument('--size', type=int, default=None, help='Working size (default: training).')
  p.add_argument('--bucket-sides', '--bucket_sides', type=_sides, default=None,
                 help='Default matting buckets named in the file (the model itself '
                 'takes any multiple of 32).')
  p.set_defaults(fn=_export)
  p = sub.add_parser('serve', help='Serve background removal over HTTP (bgmat.inference.serve).')
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument('--workdir', help='A trained matting run.')
  model.add_argument('--model', help='A `bgmat export` file.')
  # Random weights of a config preset: for tests and benchmarks, not for users.
  model.add_argument('--random-preset', choices=('tiny', 'demo'), help=argparse.SUPPRESS)
  p.add_argument('--seed', type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument('--host', default='127.0.0.1',
                 help='Address to listen on (0.0.0.0: all interfaces).')
  p.add_argument('--port', type=int, default=8000)
  p.add_argument('--max-batch-size', type=_positive, default=8,
                 help='Photos run through the model together (1: no batching).')
  p.add_argument('--batch-timeout', type=float, default=0.01,
                 help='Seconds to wait for more photos after the first of a batch.')
  p.add_argument('--max-queue', type=_positive, default=64,
                 help='Requests in the server at once; more are answered 503.')
  p.add_argument('--max-upload-bytes', type=_positive, default=20 * 1024 * 1024,
                 help='Largest request body (413 above; default 20 MiB).')
  p.add_argument('--max-pixels', type=_positive, default=40_000_000,
                 help='Largest photo in pixels, checked on its header (413 above, as a '
                 'possible decompression bomb; default 40000000).')
  p.add_argument('--request-timeout', type=_positive_float, default=60.0,
                 help='Seconds to answer a request (504 after).')
  p.add_argument('--size', type=int, default=None,
                 help='Working size (default: training size; not with --model).')
  p.add_argument('--max-side', type=_positive, default=None,
                 help='Cap on the matting long side; the alpha is resized back.')
  p.add_argument('--bucket-sides', type=_sides, default=None,
                 help='Long sides of the matting shape buckets (as bgmat remove).')
  _add_tta_flags(p)
  _add_compilation_flags(p)
  p.add_argument('--log-level', default='info', choices=('debug', 'info', 'warning', 'error'))
  p.set_defaults(fn=_serve)
  p = sub.add_parser('demo', help='Build data, train both stages, evaluate, cut out a photo.')
  p.add_argument('--out', default='demo_out', help='Where everything goes.')
  p.add_argument('--data_dir', default=None, help='Data directory (default: OUT/data).')
  p.set_defaults(fn=_demo)
  args = parser.parse_args(argv)
  if args.command in ('remove', 'serve') and args.model and args.size:
    parser.error('--size is fixed by the exported model; leave it out with --model')
  if args.command == 'remove':
    if args.format == 'rgba' and args.video_container == 'mp4':
      parser.error('mp4 (H.264) has no alpha channel; for --format rgba use '
                   '--video-container webm, mov or png')
    if args.sequence and not args.temporal_smoothing:
      parser.error('--sequence smooths across frames; give --temporal-smoothing S (0 < S < 1)')
  return args.fn(args)


if __name__ == '__main__':
  sys.exit(main())
