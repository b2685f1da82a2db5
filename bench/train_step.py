r"""Images/s of bgmat's jitted train steps on this machine's devices.

  python -m bench.train_step --preset demo        # tiny models, 128 px (CPU)
  python -m bench.train_step --preset full        # Xception-65 / r34 at 512 px (GPU)

Prints one table row per stage with the device named. The PyTorch peer
comparison and MFU columns belong to the benchmark issue and are not here yet.
"""

import argparse
import functools
import platform
import time

import jax
import numpy as np

from bgmat import sharding
from bgmat import train
import configs.matting as matting_configs
import configs.preseg as preseg_configs


def _bench(config, steps: int) -> tuple[float, float]:
  mesh = sharding.create_mesh(config.mesh)
  model, tx, disc, disc_tx = train.build_networks(config)
  rng = jax.random.key(0, impl=config.rng_impl)
  init_fn, _, shardings = train.sharded_init(config, mesh, (model, tx, disc, disc_tx), rng)
  state = jax.jit(init_fn, out_shardings=shardings)(rng)
  size, n = config.image_size, config.batch_size
  data_rng = np.random.default_rng(0)
  alpha = (data_rng.random((n, size, size, 1)) > 0.5).astype(np.float32)
  batch = {'image': data_rng.random((n, size, size, 3), np.float32), 'alpha': alpha,
           'fg': data_rng.random((n, size, size, 3), np.float32),
           'bg': data_rng.random((n, size, size, 3), np.float32),
           'trimap': np.full((n, size, size, 1), 0.5, np.float32), 'prior': alpha}
  batch = sharding.to_global(batch, mesh)
  if config.stage == 'preseg':
    step = functools.partial(train.preseg_step, model=model, tx=tx, config=config)
    extra = ()
  else:
    config.prior = 'perturbed_gt'
    step = functools.partial(train.matting_step, model=model, tx=tx, disc=disc,
                             disc_tx=disc_tx, preseg_model=None, config=config)
    extra = (None,)
  jitted = jax.jit(step, donate_argnums=0)
  start = time.perf_counter()
  state, metrics = jitted(state, batch, rng, *extra)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = jitted(state, batch, rng, *extra)
  jax.block_until_ready(metrics)
  return n * steps / (time.perf_counter() - start), compile_s


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--preset', default='demo', choices=['tiny', 'demo', 'full'])
  parser.add_argument('--steps', type=int, default=10)
  args = parser.parse_args()
  device = jax.devices()[0]
  print(f'device: {device.device_kind} x{jax.device_count()} ({platform.processor() or platform.machine()}), '
        f'jax {jax.__version__}')
  print(f'| stage | model | size | batch | images/s | first step (compile) s |')
  print('|---|---|---|---|---|---|')
  for module, arg in ((preseg_configs, args.preset), (matting_configs, args.preset)):
    config = module.get_config(arg)
    ips, compile_s = _bench(config, args.steps)
    print(f'| {config.stage} | {config.model.name} | {config.image_size} | {config.batch_size} '
          f'| {ips:.1f} | {compile_s:.1f} |', flush=True)


if __name__ == '__main__':
  main()
