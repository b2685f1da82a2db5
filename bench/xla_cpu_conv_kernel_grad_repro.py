"""XLA:CPU: the kernel gradient of a stride-1 4x4 conv is ~100x slower than its FLOPs.

Stand-alone (jax only); meant to be pasted into an XLA issue as it is:

  python bench/xla_cpu_conv_kernel_grad_repro.py [--size 33] [--repeats 3]

Shapes are those of the PatchGAN's stride-1 layer (pix2pixHD padding 2): x
(2, S, S, 256) NHWC, kernel (4, 4, 256, 512) HWIO, output (2, S+1, S+1, 512).
For each op it prints the best of `repeats` wall times and the GFLOP/s, with
the same contraction as one matmul ((16*256, M) x (M, 512), M = 2*(S+1)^2)
as the reference speed, and the same kernel gradient written as ksize^2
matmuls of the shifted input (the workaround bgmat uses on CPU). The stride-2
and 3x3 variants show which convs are affected.
"""
import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
from jax import lax


def conv(x, k, stride, pad):
  return lax.conv_general_dilated(x, k, (stride, stride), ((pad, pad), (pad, pad)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def kernel_grad_per_tap(x, g, ksize, stride, pad):
  """The same kernel gradient as ksize^2 matmuls of the shifted input and g."""
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  _, oh, ow, cout = g.shape
  g2 = g.reshape(-1, cout)
  return jnp.stack([jnp.stack([
      xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride]
      .reshape(-1, x.shape[-1]).T @ g2 for j in range(ksize)]) for i in range(ksize)])


def best_time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return min(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', type=int, default=33)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  print(f'jax {jax.__version__}, backend {jax.default_backend()}, {platform.machine()}, '
        f'{os.cpu_count()} CPUs, loadavg {os.getloadavg()[0]:.1f}')
  print(f'{"op":44s} {"shape":34s} {"s":>8s} {"GFLOP/s":>8s}')
  n, cin, cout, size = 2, 256, 512, args.size
  for ksize, stride, pad in [(4, 1, 2), (4, 2, 2), (3, 1, 1)]:
    x = jax.random.normal(jax.random.key(0), (n, size, size, cin), jnp.float32)
    k = jax.random.normal(jax.random.key(1), (ksize, ksize, cin, cout), jnp.float32)
    y = jax.eval_shape(lambda x, k: conv(x, k, stride, pad), x, k)
    m = n * y.shape[1] * y.shape[2]
    flops = 2 * m * ksize * ksize * cin * cout
    g = jax.random.normal(jax.random.key(2), y.shape, jnp.float32)
    fwd = jax.jit(lambda x, k: conv(x, k, stride, pad))
    dx = jax.jit(lambda x, k, g: jax.vjp(lambda x: conv(x, k, stride, pad), x)[1](g)[0])
    dk = jax.jit(lambda x, k, g: jax.vjp(lambda k: conv(x, k, stride, pad), k)[1](g)[0])
    tag = f'{ksize}x{ksize} stride {stride} pad {pad}'
    shape = f'x{tuple(x.shape)} -> y{tuple(y.shape)}'
    for name, fn in [('forward', fwd), ('input gradient', dx), ('kernel gradient', dk)]:
      args_ = (x, k) if name == 'forward' else (x, k, g)
      t = best_time(fn, *args_, repeats=args.repeats)
      print(f'{tag + ", " + name:44s} {shape:34s} {t:8.3f} {flops / t / 1e9:8.1f}')
    per_tap = jax.jit(lambda x, g: kernel_grad_per_tap(x, g, ksize, stride, pad))
    t = best_time(per_tap, x, g, repeats=args.repeats)
    err = float(jnp.max(jnp.abs(per_tap(x, g) - dk(x, k, g))) / jnp.max(jnp.abs(dk(x, k, g))))
    print(f'{tag + ", kernel gradient as per-tap matmuls":44s} {"max rel. diff " + format(err, ".1e"):34s} '
          f'{t:8.3f} {flops / t / 1e9:8.1f}')
    a = jax.random.normal(jax.random.key(3), (ksize * ksize * cin, m), jnp.float32)
    b = jax.random.normal(jax.random.key(4), (m, cout), jnp.float32)
    t = best_time(jax.jit(jnp.matmul), a, b, repeats=args.repeats)
    print(f'{tag + ", matmul of the same FLOPs":44s} {str((a.shape, b.shape)):34s} '
          f'{t:8.3f} {flops / t / 1e9:8.1f}')


if __name__ == '__main__':
  main()
