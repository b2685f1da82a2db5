r"""Where the DIM gradient error (Grad) of a matting run comes from.

DIM's Grad is sum over a region of (|grad p| - |grad g|)^2 / 1000, the
gradient amplitudes from MATLAB `gaussgradient` (sigma 1.4) of each uint8 matte
after `mat2gray` (`bgmat.metrics`; Rhemann et al., CVPR 2009, and the DIM
evaluation code of Xu et al., CVPR 2017). This splits it, per example, into the
ground truth's unknown band (`batch['trimap']`) and the rest of the photo, and
each of those into the pixels where the prediction's amplitude is below the
truth's ("too soft or misplaced edge") and the rest ("edge where the truth has
none, or sharper"), and reports the mean amplitudes. Rows: the matting run,
its pre-segmentation used as alpha, and closed-form matting with a trimap from
the same pre-segmentation (`configs/closed_form.py:study` thresholds and band),
the three rows of the study report.

  python -m bench.matting_grad_breakdown --workdir runs/study/matting_adv_s0 \
      --data_dir runs/study/data --split test --out /tmp/grad_breakdown.md

Every number is a mean over the split's examples, each scored on its photo
region at the working size (`input_pipeline.Prepare`), as `bgmat.evaluate`
does; the whole-photo and band Grad columns equal the report's Grad and
Grad (unk.) for the same run. Reads the data set from --data_dir; writes only
--out.
"""

import argparse
import datetime
import os
import platform

import jax
import numpy as np

from bgmat import baselines
from bgmat import input_pipeline
from bgmat import metrics
from bgmat import runs as runs_lib
from bgmat import trimap as trimap_lib
from configs import closed_form as closed_form_configs

COLUMNS = ('Grad', 'Grad (unk.)', 'unk., pred softer', 'unk., pred sharper',
           'outside unk.', 'amplitude in unk. (pred / gt)', 'amplitude outside (pred / gt)')


def breakdown(pred_u8: np.ndarray, gt_u8: np.ndarray, band: np.ndarray) -> dict:
  """Grad of one (H, W) uint8 prediction against its (H, W) uint8 truth, split by
  the (H, W) bool unknown band and by the sign of the amplitude difference."""
  amp_p, amp_g = metrics.gradient_amplitude(pred_u8), metrics.gradient_amplitude(gt_u8)
  error = (amp_p - amp_g)**2
  softer = amp_p < amp_g
  total = lambda mask: float(error[mask].sum(dtype=np.float64)) / 1000.0  # As metrics._reduce.
  return {'grad': total(np.ones_like(band)), 'grad_band': total(band),
          'band_softer': total(band & softer), 'band_sharper': total(band & ~softer),
          'outside': total(~band),
          'amp_band_pred': float(amp_p[band].mean()) if band.any() else 0.0,
          'amp_band_gt': float(amp_g[band].mean()) if band.any() else 0.0,
          'amp_out_pred': float(amp_p[~band].mean()) if (~band).any() else 0.0,
          'amp_out_gt': float(amp_g[~band].mean()) if (~band).any() else 0.0}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='matting run')
  parser.add_argument('--preseg_workdir', default='',
                      help="stage 1 (default: the run's own preseg_workdir)")
  parser.add_argument('--data_dir', required=True)
  parser.add_argument('--split', default='test')
  parser.add_argument('--max_examples', type=int, default=0, help='0: the whole split')
  parser.add_argument('--out', required=True, help='markdown table to write')
  args = parser.parse_args(argv)

  config = runs_lib.read_config(args.workdir)
  config.data_dir = args.data_dir
  preseg_workdir = args.preseg_workdir or runs_lib.resolve_preseg_workdir(config, args.workdir)
  stage = runs_lib.load_stage(args.workdir)
  preseg_prob = runs_lib.preseg_prob_fn(preseg_workdir)
  apply = jax.jit(lambda v, x, p: stage.module.apply(v, x, p, train=False))
  cf = closed_form_configs.get_config('study')

  rows = {'matting stage': [], 'pre-segmentation as alpha': [],
          'closed-form, trimap from the same pre-segmentation': []}
  batches = input_pipeline.eval_batches(config, args.split, process_index=0, process_count=1,
                                        per_process_batch=config.batch_size,
                                        max_examples=args.max_examples or None)
  for batch in batches:
    valid = batch['valid'] > 0
    if not valid.any():
      continue
    images = batch['image'][valid]
    prob = np.asarray(preseg_prob(images))
    closed_form = baselines.closed_form_batch(images, baselines.preseg_trimaps(prob, cf),
                                              cf.cg_maxiter)
    preds = dict(zip(rows, (np.asarray(apply(stage.variables, images, prob)), prob, closed_form)))
    for i, (height, width) in enumerate(np.asarray(batch['region'])[valid]):
      gt = metrics.quantize(batch['alpha'][valid][i, :height, :width, 0])
      band = np.asarray(trimap_lib.unknown_mask(batch['trimap'][valid][i, :height, :width, 0]))
      for name, pred in preds.items():
        rows[name].append(breakdown(metrics.quantize(pred[i, :height, :width, 0]), gt, band))

  count = len(next(iter(rows.values())))
  lines = [f'`python -m bench.matting_grad_breakdown --workdir {args.workdir} --split {args.split}`',
           '', f'{platform.machine()}, {os.cpu_count()} CPU cores, jax {jax.__version__} '
           f'({jax.default_backend()}), {datetime.date.today()}; {count} examples of '
           f'{config.dataset} {args.split}; stage 1: `{preseg_workdir}`.', '',
           '| method | ' + ' | '.join(COLUMNS) + ' |', '|---' * (len(COLUMNS) + 1) + '|']
  for name, values in rows.items():
    m = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    lines.append(f"| {name} | {m['grad']:.3f} | {m['grad_band']:.3f} | {m['band_softer']:.3f} | "
                 f"{m['band_sharper']:.3f} | {m['outside']:.3f} | "
                 f"{m['amp_band_pred']:.4f} / {m['amp_band_gt']:.4f} | "
                 f"{m['amp_out_pred']:.4f} / {m['amp_out_gt']:.4f} |")
  text = '\n'.join(lines) + '\n'
  with open(args.out, 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
