"""The `bgmat` command.

  bgmat remove PHOTO... -o OUTDIR --workdir RUNS/matting [--save-alpha]
  bgmat demo [--out DIR]
"""

import argparse
import sys


def _remove(args) -> int:
  from bgmat import remover as remove  # pylint: disable=g-import-not-at-top
  remover = remove.Remover.from_workdir(args.workdir, working_size=args.size)
  failures = remove.remove_files(remover, args.inputs, args.output, save_alpha=args.save_alpha)
  written = len(args.inputs) - len(failures)
  print(f'{written} written to {args.output}, {len(failures)} failed')
  for path, error in failures:
    print(f'  failed: {path}: {error}', file=sys.stderr)
  return 1 if failures else 0


def _demo(args) -> int:
  from bgmat import demo  # pylint: disable=g-import-not-at-top
  demo.run(args.out, data_dir=args.data_dir)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='bgmat', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('remove', help='Cut the background out of photos (RGBA PNG).')
  p.add_argument('inputs', nargs='+', help='Image files.')
  p.add_argument('-o', '--output', required=True, help='Output directory.')
  p.add_argument('--workdir', required=True, help='A trained matting run.')
  p.add_argument('--save-alpha', action='store_true', help='Also write <stem>_alpha.png.')
  p.add_argument('--size', type=int, default=None, help='Working size (default: training size).')
  p.set_defaults(fn=_remove)
  p = sub.add_parser('demo', help='Build data, train both stages, evaluate, cut out a photo.')
  p.add_argument('--out', default='demo_out', help='Where everything goes.')
  p.add_argument('--data_dir', default=None, help='Data directory (default: OUT/data).')
  p.set_defaults(fn=_demo)
  args = parser.parse_args(argv)
  return args.fn(args)


if __name__ == '__main__':
  sys.exit(main())
