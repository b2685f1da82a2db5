r"""Images/s of the Grain training pipeline per worker, to size `input.worker_count`.

  python -m bench.input_pipeline                       # 512 px, 0/1/2 workers
  python -m bench.input_pipeline --size 64 --num_train 8 --workers 0 --batches 2 \
      --no_step                                        # smoke test, seconds

Builds (or reuses, with --data_dir) a `synthetic_portraits` custom config at
`--size` px with `--num_train` training examples, then iterates
`input_pipeline.create_train_dataset` of `configs/preseg.py:full` (crop at the
alpha edge, flip, re-composite, jitter, trimap; the same transform as
training) with 0 (threads in the trainer process), 1, 2, ... worker processes,
after start-up and enough batches to drain the prefetch buffers. Prints images/s and images/s per
worker.

Against it, what one training step consumes:
  * an ESTIMATE for the reference GPU (H100 SXM, bf16): images/s =
    peak * assumed MFU / (XLA FLOPs per image of the step), for the
    pre-segmentation (Xception-65 DeepLabV3+) and the matting GAN step of the
    `full` configs at `--size`; FLOPs from the cost analysis of the lowered
    step (nothing runs);
  * measured on this machine's first device (the pre-segmentation step, batch
    `--step_batch`, unless --no_step).
Workers needed = consumption / (images/s per worker), rounded up.
"""

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time

import jax

from bench import train_step as train_step_bench
from bgmat import input_pipeline
from bgmat import sharding
from bgmat import stages
from bgmat import train
import configs.matting as matting_configs
import configs.preseg as preseg_configs

REFERENCE_GPU = 'h100'


def pipeline_images_per_s(config, workers: int, batches: int) -> float:
  """Steady-state images/s of the training iterator with `workers` processes.

  The iterator prefetches (`config.input.prefetch` batches, and per worker), so
  the first batches after start-up come from full buffers: the rate is taken
  over the last `batches` of `batches + prefetch + 1` batches.
  """
  config.input.worker_count = workers
  dataset = input_pipeline.create_train_dataset(
      config, process_index=0, process_count=1, per_process_batch=config.batch_size)
  iterator = iter(dataset)
  try:
    skip = config.input.prefetch + 1
    for _ in range(skip):
      batch = next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(iterator)
    elapsed = time.perf_counter() - start
  finally:
    if hasattr(iterator, 'close'):
      iterator.close()
  if batch['image'].shape[1:3] != (config.image_size, config.image_size):
    raise RuntimeError(f'pipeline gave {batch["image"].shape}, expected {config.image_size} px')
  return config.batch_size * batches / elapsed


def step_flops_per_image(config) -> float:
  """XLA FLOPs per image of a stage's train step, from the lowered step (not run)."""
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  if config.stage == 'matting':
    config.prior = 'perturbed_gt'  # No stage-1 model here; its cost is inference only.
  stage = stages.get(config)
  rng = jax.random.key(0, impl=config.rng_impl)
  _, abstract_state, _ = train.sharded_init(mesh, stage, rng)
  size, n = config.image_size, config.batch_size
  batch = {k: jax.ShapeDtypeStruct((n, size, size, v.shape[-1]), v.dtype)
           for k, v in train_step_bench._synthetic_batch(8, 1).items()}  # pylint: disable=protected-access
  analysis = jax.jit(stage.step).lower(abstract_state, batch, rng, None).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0)) / n


def run(args) -> list[str]:
  """Measures and prints the table; returns its lines."""
  temp_dir = None
  data_dir = args.data_dir
  if not data_dir:
    temp_dir = data_dir = tempfile.mkdtemp(prefix='bgmat_bench_data_')
  try:
    from data_prep import synthetic_portraits  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    dataset = synthetic_portraits.build_synthetic(
        data_dir, 'default', image_size=args.size, num_train=args.num_train,
        num_validation=1, num_test=1)
    build_s = time.perf_counter() - start
    config = preseg_configs.get_config(args.config_size)
    config.dataset, config.data_dir = dataset, data_dir
    config.image_size, config.batch_size = args.size, args.batch
    lines = [f'device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()},'
             f' {os.cpu_count()} CPU cores), jax {jax.__version__}; data {dataset} '
             f'({args.num_train} train examples, built in {build_s:.0f} s)',
             f'pipeline of configs/preseg.py:{args.config_size} at {args.size} px, batch {args.batch}, '
             f'{args.batches} timed batches after {config.input.prefetch + 1} (start-up, prefetch)', '',
             '| workers | images/s | images/s per worker |', '|---|---|---|']
    for line in lines:
      print(line, flush=True)
    per_worker = []
    for workers in args.workers:
      ips = pipeline_images_per_s(config, workers, args.batches)
      per_worker.append(ips / max(workers, 1))
      lines.append(f'| {workers} | {ips:.1f} | {ips / max(workers, 1):.1f} |')
      print(lines[-1], flush=True)
  finally:
    if temp_dir:
      shutil.rmtree(temp_dir, ignore_errors=True)
  # The per-worker rate of the multi-process runs (worker 0 = in-process threads).
  worker_rate = min((r for w, r in zip(args.workers, per_worker) if w > 0), default=per_worker[0])
  lines += ['', '| consumer | step images/s | how | workers needed |', '|---|---|---|---|']
  peak = train_step_bench.PEAK_TFLOPS[REFERENCE_GPU]
  for module in (preseg_configs, matting_configs):
    stage_config = module.get_config(args.config_size)
    stage_config.image_size = args.size
    flops = step_flops_per_image(stage_config)
    need = peak * 1e12 * args.assumed_mfu / flops
    lines.append(f'| {stage_config.stage} step, {REFERENCE_GPU.upper()} bf16 | {need:.0f} | '
                 f'ESTIMATE: {peak:.0f} TFLOP/s x assumed MFU {args.assumed_mfu:.0%} / '
                 f'{flops / 1e9:.0f} GFLOP per image (XLA, f32 step) | '
                 f'{math.ceil(need / worker_rate)} |')
    print(lines[-1], flush=True)
  if not args.no_step:
    config = preseg_configs.get_config(args.config_size)
    config.image_size, config.batch_size = args.size, args.step_batch
    measured = train_step_bench.bench_jax(config, steps=1)['images_per_s']
    lines.append(f'| preseg step, this machine ({jax.devices()[0].platform}, f32) | '
                 f'{measured:.2f} | measured, batch {args.step_batch}, 1 step | '
                 f'{math.ceil(measured / worker_rate)} |')
    print(lines[-1], flush=True)
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', type=int, default=512)
  parser.add_argument('--config_size', default='full', choices=['tiny', 'demo', 'full'],
                      help='which configs/*.py size gives the pipeline and the step FLOPs')
  parser.add_argument('--num_train', type=int, default=32)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--batches', type=int, default=8)
  parser.add_argument('--workers', type=lambda s: [int(w) for w in s.split(',')],
                      default=[0, 1, 2])
  parser.add_argument('--data_dir', default='', help='keep the built data here (else a temp dir)')
  parser.add_argument('--assumed_mfu', type=float, default=0.4)
  parser.add_argument('--no_step', action='store_true', help='skip the measured CPU step')
  parser.add_argument('--step_batch', type=int, default=2)
  parser.add_argument('--out', default='')
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parser.parse_args(argv)
  lines = run(args)
  if args.out:
    train_step_bench.write_table(args.out, 'bench.input_pipeline', argv, lines)


if __name__ == '__main__':
  main()
