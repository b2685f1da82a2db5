r"""A trained matting run's alpha, plain and through a colour guided filter.

The guided filter (`bgmat.models.guided_filter`; He et al., TPAMI 2013) makes
the output locally affine in the photo's colour, the model closed-form matting
rests on. Applied here after training, to a run trained without it, over a grid
of (radius, eps): whether it moves the matte's edges towards the truth (DIM
Grad), as an alternative to training the layer in
(`--config.model.kwargs.guided_filter_radius`). Choose the setting on the
validation split, measure the test split once with it, and record it in the run
(`--record RADIUS EPS`: config.json `eval_guided_filter`, which `bgmat remove`,
the report and export then apply; `runs.inference_model_config`).

  python -m bench.matting_guided_filter --workdir runs/study/ab_base_s0 \
      --data_dir runs/study/data --split validation --radii 1 2 4 --eps 1e-4 1e-3 1e-2 \
      --out /tmp/gf_validation.md

Every number is a mean over the split's examples, each scored on its photo
region at the working size, by `bgmat.evaluate` (the report's numbers for the
'plain' row). Reads the data set from --data_dir; writes --out and, with
--record, the run's config.json.
"""

import argparse
import datetime
import itertools
import os
import platform

import jax
import jax.numpy as jnp

from bgmat import evaluate as eval_lib
from bgmat import runs as runs_lib
from bgmat.models import guided_filter as gf_lib

METRICS = ('sad', 'mse', 'grad', 'conn')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='matting run')
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--split', default='validation')
  parser.add_argument('--radii', type=int, nargs='+', default=[1, 2, 4])
  parser.add_argument('--eps', type=float, nargs='+', default=[1e-4, 1e-3, 1e-2])
  parser.add_argument('--max_examples', type=int, default=0, help='0: the whole split')
  parser.add_argument('--out', required=True, help='markdown table to write')
  parser.add_argument('--record', nargs=2, metavar=('RADIUS', 'EPS'), default=None,
                      help="then record this setting as the run's evaluation-time guided "
                           'filter (config.json eval_guided_filter; radius 0: off)')
  args = parser.parse_args(argv)

  config = runs_lib.read_config(args.workdir)
  config.data_dir = args.data_dir
  if args.max_examples:
    config.max_eval_examples = args.max_examples
  stage = runs_lib.load_stage(args.workdir)
  module = runs_lib.build_model(config.model)  # As trained: no evaluation-time filter.
  preseg_prob = runs_lib.preseg_prob_fn(runs_lib.resolve_preseg_workdir(config, args.workdir))
  settings = list(itertools.product(args.radii, args.eps))

  @jax.jit
  def outputs(images, prob):
    alpha = module.apply(stage.variables, images, prob, train=False)
    out = {'plain': alpha}
    for i, (radius, eps) in enumerate(settings):
      out[f'gf{i}'] = jnp.clip(
          gf_lib.guided_filter(images, alpha, radius, eps), 0.0, 1.0)
    return out

  def predict(batch):
    images = jnp.asarray(batch['image'])
    return jax.device_get(outputs(images, preseg_prob(images)))

  results, _ = eval_lib.evaluate_split(config, args.split, predict, which=METRICS)
  # DIM metrics whole photo and unknown band, then IoU / boundary F of alpha >= 0.5.
  columns = list(METRICS) + [f'{m}_unknown' for m in METRICS] + ['iou', 'boundary_f']
  lines = [f'`python -m bench.matting_guided_filter --workdir {args.workdir} --split '
           f'{args.split}`', '',
           f'{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} '
           f'({jax.default_backend()}), {datetime.date.today()}; {results["n"]} examples of '
           f'{config.dataset} {args.split}.', '',
           '| alpha | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  names = {'plain': 'plain'}
  names.update({f'gf{i}': f'guided filter r={r}, eps={e:g}' for i, (r, e) in enumerate(settings)})
  for key, name in names.items():
    lines.append(f'| {name} | ' + ' | '.join(f'{results[f"{key}/{c}"]:.4g}' for c in columns)
                 + ' |')
  text = '\n'.join(lines) + '\n'
  with open(args.out, 'w') as f:
    f.write(text)
  print(text)
  if args.record:
    runs_lib.set_eval_guided_filter(args.workdir, int(args.record[0]), float(args.record[1]))
    print(f'{args.workdir}: eval_guided_filter radius {args.record[0]}, eps {args.record[1]}')


if __name__ == '__main__':
  main()
