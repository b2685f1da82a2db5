"""A trained matting run as one ONNX graph (jax2onnx), checked with ONNX Runtime.

  bgmat export --workdir runs/demo/matting --format onnx --out bgmat.onnx
  bgmat export --workdir runs/demo/matting --format onnx-rembg --out bgmat_rembg.onnx
  cp bgmat_rembg.onnx ~/.rembg/   # rembg 2.0.86 loads custom models from there only
  rembg i -m u2net_custom -x '{"model_path": "~/.rembg/bgmat_rembg.onnx"}' in.jpg out.png

Two graphs, both stages (pre-segmentation and matting) in each, weights as
initializers:

  'onnx'        image (B, H, W, 3) float32 RGB in [0, 1] -> alpha (B, H, W, 1) float32 in
                [0, 1]. B, H and W are dynamic (H, W >= 32, see `pipeline_fn`); the
                pre-segmentation inside runs at the fixed working size S (letterboxed).
  'onnx-rembg'  rembg's custom-model convention (rembg `sessions/u2net_custom.py` and
                `sessions/base.py`): input (B, 3, 320, 320) float32 NCHW, the photo resized
                to 320 x 320, divided by its maximum and standardised with the ImageNet
                mean/std; output[0][:, 0] is the mask, which rembg min-max normalises and
                resizes to the photo. Here output 0 is alpha (B, 1, 320, 320) in [0, 1].

What is static and why: the working size S (DeepLab's bilinear resizes and pooling
are built from numpy interpolation matrices of concrete sizes, `bgmat.models.layers`),
the channel counts, and rembg's 320 (rembg feeds that size). B, H and W are
symbolic: the matting generator is fully convolutional, and the letterbox /
upsampling between the stages are `jax.image.scale_and_translate` with scales
computed in the graph from H and W.

Conversion goes through the program's jaxpr, not through jax2onnx's Flax-module
patches: jax2onnx 0.17.1 replaces `flax.linen.max_pool` by a version that takes
only keyword arguments and string padding, which the generator's explicit
((1, 1), (1, 1)) padding does not fit; and its lax `reduce_window_max` becomes an
N-d MaxPool over all four NHWC axes, which ONNX Runtime rejects ("Unsupported
pooling size"). `_lowered` evaluates the jaxpr primitive by primitive and writes
each NHWC max-pool as a 3-d one over (B*C, H, W); every other primitive is
converted by jax2onnx's own lax plugins.

Every export is validated: the graph runs in ONNX Runtime (CPU) on generated
inputs and the max |alpha difference| against the same function under JAX is
reported and must be below `TOLERANCE`.
"""

import dataclasses
import json
import logging
import os

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np

from bgmat import atomic
from bgmat.inference import resolution

FORMATS = ('onnx', 'onnx-rembg')
# rembg's u2net_custom session feeds this size (sessions/u2net_custom.py).
REMBG_SIZE = 320
REMBG_MEAN = (0.485, 0.456, 0.406)
REMBG_STD = (0.229, 0.224, 0.225)
# Smallest dynamic side: the generator reflect-pads by up to 31 pixels, which
# needs a side of at least 32 (and gives the letterbox a nonzero content size).
MIN_SIDE = resolution.STRIDE
OPSET = 21
# Validation bound on max |alpha difference| ONNX Runtime vs JAX (float32 both),
# the target. Both sides accumulate each convolution in float32 but in
# different orders (XLA vs MLAS kernels; grouped vs shifted depthwise): a sum of
# K products has a relative error of about sqrt(K) * 2^-24 ~ 1e-6 for K ~ 10^3,
# compounded over ~70 layers of the two networks and amplified by trained
# BatchNorm scales, i.e. logit errors of 1e-5 to 1e-4; alpha = sigmoid(logit)
# has slope <= 1/4. Measured on the demo model (bench/results/onnx_cpu.md):
# 5e-6 to 1e-5 on the validation inputs, up to 7.2e-5 on 512 px photos. A
# wrong operator moves alpha by >= 1e-2, far above.
TOLERANCE = 1e-4
METADATA_KEY = 'bgmat'


def _require_onnx():
  # jax2onnx imports every plugin module and logs a warning with a traceback for
  # each one whose library is absent (equinox, dm_pix: not installed with
  # --no-deps, and not used by bgmat's models).
  logging.getLogger('jax2onnx.plugins.plugin_system').setLevel(logging.ERROR)
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'ONNX export needs jax2onnx, onnx and onnxruntime ({e}): pip install '
        "'bgmat[onnx]' && pip install --no-deps jax2onnx==0.17.1 (README, Export to ONNX)"
    ) from e
  return jax2onnx, onnx, onnxruntime


def _edge_index(size: int, valid, dtype=jnp.int32):
  """[0, 1, ..., valid-1, valid-1, ...] of length `size`: edge padding as a gather."""
  return jnp.minimum(jnp.arange(size, dtype=dtype), valid - 1)


def pipeline_fn(preseg_fn, matting_fn, working_size: int):
  """image (B, H, W, 3) float32 in [0, 1] -> alpha (B, H, W, 1) float32 in [0, 1].

  The two stages as `bgmat.Remover` runs them, in one traceable function:
  letterbox into S x S (long side to S, edge-padded; `resolution.letterbox`),
  pre-segmentation, crop of the content and bilinear resize to H x W as the
  prior (`resolution.resize`), then the generator on (image, prior) at H x W.
  The resizes are `jax.image.scale_and_translate` (triangle kernel, widened when
  downsampling) where Remover uses Pillow's BILINEAR (the same kernel; the
  scales differ by Pillow's rounding of the letterbox size, so the two agree to
  about 1e-2 in alpha, not to float precision). H and W may be symbolic
  (`jax.export.symbolic_shape`) but must be >= 32.
  """
  size = int(working_size)

  def fn(image):
    batch, height, width, _ = image.shape
    # Edge-pad to multiples of 32 (as the buckets of `Remover`), so the
    # generator's own padding is zero whatever H and W are.
    stride = resolution.STRIDE
    padded = jnp.take(jnp.take(image, _edge_index((height + stride - 1) // stride * stride,
                                                  height), axis=1),
                      _edge_index((width + stride - 1) // stride * stride, width), axis=2)
    height_v = jnp.asarray(height, jnp.float32)
    width_v = jnp.asarray(width, jnp.float32)
    scale = size / jnp.maximum(height_v, width_v)
    # Python's round, as resolution.letterbox: half to even, like jnp.round.
    new_h = jnp.maximum(1.0, jnp.round(height_v * scale))
    new_w = jnp.maximum(1.0, jnp.round(width_v * scale))
    zero = jnp.zeros((2,), jnp.float32)
    content = jax.image.scale_and_translate(
        image, (batch, size, size, 3), (1, 2), jnp.stack([new_h / height_v, new_w / width_v]),
        zero, method='linear', antialias=True)
    rows = _edge_index(size, new_h.astype(jnp.int32))
    cols = _edge_index(size, new_w.astype(jnp.int32))
    boxed = jnp.take(jnp.take(content, rows, axis=1), cols, axis=2)
    prob = preseg_fn(boxed)
    prob = jnp.take(jnp.take(prob, rows, axis=1), cols, axis=2)  # Clamp at the content edge.
    prior = jax.image.scale_and_translate(
        prob, (batch, height, width, 1), (1, 2), jnp.stack([height_v / new_h, width_v / new_w]),
        zero, method='linear', antialias=True)
    prior = jnp.take(jnp.take(jnp.clip(prior, 0.0, 1.0), _edge_index(
        padded.shape[1], height), axis=1), _edge_index(padded.shape[2], width), axis=2)
    return matting_fn(padded, prior)[:, :height, :width]
  return fn


def rembg_fn(preseg_fn, matting_fn, working_size: int):
  """rembg's input (B, 3, 320, 320) float32, ImageNet-standardised -> alpha (B, 1, 320, 320).

  rembg divides the photo by its own maximum (not 255) before standardising
  (`BaseSession.normalize`); that is undone up to this factor only.
  """
  pipeline = pipeline_fn(preseg_fn, matting_fn, working_size)
  mean = jnp.asarray(REMBG_MEAN, jnp.float32)
  std = jnp.asarray(REMBG_STD, jnp.float32)

  def fn(standardised):
    image = jnp.transpose(standardised, (0, 2, 3, 1)) * std + mean
    alpha = pipeline(jnp.clip(image, 0.0, 1.0))
    return jnp.transpose(alpha, (0, 3, 1, 2))
  return fn


# ---------------------------------------------------------------------------
# Conversion


def _max_pool_3d(x, params):
  """reduce_window_max over NHWC with window (1, kh, kw, 1) as a 3-d max over (B*C, H, W),
  which jax2onnx turns into a MaxPool that ONNX Runtime runs; None if not that shape."""
  window = tuple(params['window_dimensions'])
  strides = tuple(params['window_strides'])
  padding = tuple(tuple(p) for p in params['padding'])
  dilated = any(d != 1 for d in (*params['base_dilation'], *params['window_dilation']))
  if (x.ndim != 4 or dilated or window[0] != 1 or window[3] != 1 or strides[0] != 1
      or strides[3] != 1 or padding[0] != (0, 0) or padding[3] != (0, 0)):
    return None
  batch, height, width, channels = x.shape
  planes = jnp.transpose(x, (0, 3, 1, 2)).reshape(batch * channels, height, width)
  pooled = jax.lax.reduce_window(planes, -jnp.inf, jax.lax.max, (1, *window[1:3]),
                                 (1, *strides[1:3]), ((0, 0), *padding[1:3]))
  pooled = pooled.reshape(batch, channels, *pooled.shape[1:])
  return jnp.transpose(pooled, (0, 2, 3, 1))


# Call-like primitives whose body is inlined (their jaxpr param).
_INLINE = {'pjit': 'jaxpr', 'jit': 'jaxpr', 'closed_call': 'call_jaxpr',
           'custom_jvp_call': 'call_jaxpr', 'custom_vjp_call': 'call_jaxpr',
           'custom_vjp_call_jaxpr': 'fun_jaxpr', 'remat': 'jaxpr', 'checkpoint': 'jaxpr'}


def _pad(x, value, params):
  """lax.pad as jnp.pad, whose jax2onnx plugin handles symbolic shapes (the lax one
  does not in 0.17.1); None unless the value is a constant and nothing is interior."""
  config = params['padding_config']
  if isinstance(value, jax.core.Tracer) or any(
      interior or low < 0 or high < 0 for low, high, interior in config):
    return None
  return jnp.pad(x, [(int(low), int(high)) for low, high, _ in config],
                 constant_values=np.asarray(value).item())


def _static(eqn) -> bool:
  return all(isinstance(d, int) for v in eqn.outvars for d in getattr(v.aval, 'shape', ()))


def _eval_jaxpr(jaxpr, consts, *args):
  """jax.core.eval_jaxpr with calls inlined, constant inputs folded and the
  rewrites above (module doc)."""
  env = {}

  def read(var):
    return var.val if isinstance(var, jex_core.Literal) else env[var]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    outs = None
    if name in _INLINE and _INLINE[name] in eqn.params:
      closed = eqn.params[_INLINE[name]]
      body, body_consts = (closed.jaxpr, closed.consts) if hasattr(closed, 'consts') else (
          closed, ())
      outs = _eval_jaxpr(body, body_consts, *invals)
    elif invals and not any(isinstance(v, jax.core.Tracer) for v in invals) and _static(eqn):
      with jax.ensure_compile_time_eval():  # Weights-only arithmetic: folded here.
        outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      outs = outs if eqn.primitive.multiple_results else [outs]
    elif name == 'reduce_window_max':
      pooled = _max_pool_3d(invals[0], eqn.params)
      outs = None if pooled is None else [pooled]
    elif name == 'pad':
      padded = _pad(*invals, eqn.params)
      outs = None if padded is None else [padded]
    if outs is None:
      outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outs = [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def _lowered(fn, specs):
  """fn as a function of its jaxpr (traced once, outside jax2onnx's patches)."""
  closed = jax.make_jaxpr(fn)(*specs)

  def lowered(*args):
    outs = _eval_jaxpr(closed.jaxpr, closed.consts, *args)
    return outs[0] if len(outs) == 1 else tuple(outs)
  return lowered


def convert(fn, specs, input_names, output_names, model_name: str = 'bgmat'):
  """`fn` at `specs` (jax.ShapeDtypeStruct, symbolic dims allowed) -> onnx.ModelProto.

  jax2onnx writes value_info shapes for intermediate values; some are in the
  wrong layout (ONNX Runtime warns and ignores them), so they are dropped and
  ONNX Runtime infers its own.
  """
  jax2onnx, onnx, _ = _require_onnx()
  model = jax2onnx.to_onnx(_lowered(fn, specs), specs, model_name=model_name, opset=OPSET,
                           input_names=list(input_names), output_names=list(output_names))
  del model.graph.value_info[:]
  onnx.checker.check_model(model)
  return model


def session(model_or_path, threads: int | None = None):
  """onnxruntime.InferenceSession on the CPU of a ModelProto, bytes or a file path."""
  _, _, ort = _require_onnx()
  options = ort.SessionOptions()
  options.log_severity_level = 3  # Errors only.
  if threads:
    options.intra_op_num_threads = threads
  if hasattr(model_or_path, 'SerializeToString'):
    model_or_path = model_or_path.SerializeToString()
  return ort.InferenceSession(model_or_path, options, providers=['CPUExecutionProvider'])


def max_abs_diff(sess, fn, inputs: list[np.ndarray]) -> float:
  """max |ONNX Runtime output - jax.jit(fn) output| over `inputs` (each one batch)."""
  name = sess.get_inputs()[0].name
  worst = 0.0
  for batch in inputs:
    got = sess.run(None, {name: batch})[0]
    want = np.asarray(jax.jit(fn)(batch))
    if got.shape != want.shape:
      raise ValueError(f'ONNX output shape {got.shape} != JAX {want.shape}')
    worst = max(worst, float(np.max(np.abs(got - want))))
  return worst


# pylint: disable-next=redefined-builtin
def validation_inputs(format: str, seed: int = 0) -> list[np.ndarray]:
  """Generated batches the export is checked on: smooth ramps plus noise (`synthetic`),
  several batch sizes and, for 'onnx', sides that are and are not multiples of 32."""
  rng = np.random.default_rng(seed)
  if format == 'onnx-rembg':
    shapes = [(1, REMBG_SIZE, REMBG_SIZE), (2, REMBG_SIZE, REMBG_SIZE)]
  else:
    shapes = [(1, 96, 64), (2, 80, 120), (1, 160, 160)]
  batches = []
  for batch, height, width in shapes:
    images = np.stack([synthetic(height, width, rng) for _ in range(batch)])
    if format == 'onnx-rembg':
      images = (images - np.float32(REMBG_MEAN)) / np.float32(REMBG_STD)
      images = images.transpose(0, 3, 1, 2)
    batches.append(images.astype(np.float32))
  return batches


def synthetic(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
  """(height, width, 3) float32 in [0, 1]: a bright disc on colour ramps, plus noise."""
  yy, xx = np.mgrid[:height, :width] / np.float32(max(height, width))
  centre = rng.uniform(0.3, 0.7, size=2)
  disc = ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < 0.08).astype(np.float32)
  ramps = np.stack([yy, xx, (yy + xx) / 2], axis=-1)
  image = 0.6 * ramps + 0.4 * disc[..., None] + rng.normal(0, 0.05, (height, width, 3))
  return np.clip(image, 0, 1).astype(np.float32)


@dataclasses.dataclass
class Exported:
  """What `export_onnx` wrote: the file, its I/O, the validation result."""
  path: str
  format: str
  inputs: list[tuple[str, list]]
  outputs: list[tuple[str, list]]
  max_abs_diff: float
  metadata: dict


def _dims(values) -> list[tuple[str, list]]:
  return [(v.name, list(v.shape)) for v in values]


def export_onnx(preseg_fn, matting_fn, working_size: int, out: str,
                format: str = 'onnx',  # pylint: disable=redefined-builtin
                extra: dict | None = None, tolerance: float = TOLERANCE,
                reference=None) -> Exported:
  """Converts both stages to one ONNX graph, validates it with ONNX Runtime, writes `out`.

  preseg_fn (B, S, S, 3) -> (B, S, S, 1) probability and matting_fn(image, prior)
  -> alpha are the stages as JAX functions with their weights closed over (as
  `stage_fns`); `reference`: another (preseg_fn, matting_fn) of the same model
  that the graph is validated against (default: the converted ones).

  Raises:
    ValueError: unknown format, or the graph differs from JAX by more than
      `tolerance` in alpha (nothing is written then).
    ImportError: jax2onnx, onnx or onnxruntime missing (the `onnx` extra).
  """
  if format not in FORMATS:
    raise ValueError(f'Unknown ONNX format {format!r}; known: {list(FORMATS)}')
  _, onnx, _ = _require_onnx()
  if format == 'onnx':
    fn = pipeline_fn(preseg_fn, matting_fn, working_size)
    batch, height, width = jax.export.symbolic_shape(
        'B, H, W', constraints=(f'H >= {MIN_SIDE}', f'W >= {MIN_SIDE}'))
    specs = [jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)]
    names = (['image'], ['alpha'])
  else:
    fn = rembg_fn(preseg_fn, matting_fn, working_size)
    batch, = jax.export.symbolic_shape('B')
    specs = [jax.ShapeDtypeStruct((batch, 3, REMBG_SIZE, REMBG_SIZE), jnp.float32)]
    names = (['input'], ['alpha'])
  model = convert(fn, specs, *names)
  make = pipeline_fn if format == 'onnx' else rembg_fn
  reference_fn = make(*reference, working_size) if reference else fn
  metadata = {'format': format, 'working_size': int(working_size), 'opset': OPSET,
              'jax_version': jax.__version__, **(extra or {})}
  if format == 'onnx':
    metadata['input'] = ('image (B, H, W, 3) float32 RGB in [0, 1], H, W >= 32; '
                         'output alpha (B, H, W, 1) float32 in [0, 1]')
  else:
    metadata['input'] = (f'rembg u2net_custom: (B, 3, {REMBG_SIZE}, {REMBG_SIZE}) float32, '
                         'ImageNet-standardised; output alpha (B, 1, 320, 320) in [0, 1]')
  entry = model.metadata_props.add()
  entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
  sess = session(model)
  diff = max_abs_diff(sess, reference_fn, validation_inputs(format))
  if not diff < tolerance:
    raise ValueError(f'ONNX graph for {out} differs from the JAX model by {diff:.3g} in '
                     f'alpha (tolerance {tolerance:g}); not written')
  metadata['max_abs_diff'] = diff
  model.metadata_props[-1].value = json.dumps(metadata)
  # One self-contained file (weights inline; the protobuf limit is 2 GiB).
  atomic.write_with(out, lambda tmp: onnx.save_model(model, tmp))
  return Exported(out, format, _dims(sess.get_inputs()), _dims(sess.get_outputs()), diff,
                  metadata)


def stage_fns(stages: dict, for_onnx: bool = True):
  """(preseg_fn, matting_fn) closures over `Remover.stages` ({name: (module, variables)}).

  for_onnx: depthwise convolutions as grouped convolutions (`layers`, 'grouped'):
  one ONNX Conv with `group` instead of k*k shifted multiply-adds (same
  parameters, same function; fewer nodes, and ONNX Runtime has a depthwise kernel).
  """
  preseg, preseg_vars = stages['preseg']
  matting, matting_vars = stages['matting']
  if for_onnx and hasattr(preseg, 'depthwise_impl'):
    preseg = preseg.clone(depthwise_impl='grouped')

  def preseg_fn(image):
    return jax.nn.sigmoid(preseg.apply(preseg_vars, image, train=False))

  def matting_fn(image, prior):
    return matting.apply(matting_vars, image, prior, train=False)
  return preseg_fn, matting_fn


def export_remover(remover, out: str, format: str = 'onnx',  # pylint: disable=redefined-builtin
                   extra: dict | None = None) -> Exported:
  """`export_onnx` of a live `bgmat.Remover` (from_workdir / from_configs / its
  constructor, not from_export: that one has no modules), validated against its
  own JAX functions.

  Raises:
    ValueError: a Remover loaded from a `.bgmat` export.
  """
  if not hasattr(remover, 'stages'):
    raise ValueError('ONNX export needs the models: load the Remover from a workdir, not '
                     'from a .bgmat export')
  preseg_fn, matting_fn = stage_fns(remover.stages)
  return export_onnx(preseg_fn, matting_fn, remover.working_size, out, format=format,
                     extra=extra, reference=(remover.preseg_fn, remover.matting_fn))


# pylint: disable-next=redefined-builtin
def export_workdir(workdir: str, out: str, format: str = 'onnx',
                   working_size: int | None = None) -> Exported:
  """`export_onnx` of a matting run's workdir (and the stage-1 run it names)."""
  from bgmat.inference import remover as remover_lib  # pylint: disable=g-import-not-at-top
  remover = remover_lib.Remover.from_workdir(workdir, working_size=working_size)
  return export_remover(remover, out, format,
                        extra={'source_workdir': os.path.abspath(workdir)})
