"""Loading a trained run: one place for its config, its model and the weights
to use, so removal, export, the report, the baselines and autolabel agree.

A run's workdir holds `config.json` and `checkpoints/` (`bgmat.main`). This
module imports no training code (no optax, grain or clu): only the models and
the checkpoint reader.

The rule for which weights a run is used with (`eval_variables`): a run (matting,
or pre-segmentation trained with `config.ema_decay`) with `config.eval_ema` uses its exponential moving averages of the parameters
AND of the BatchNorm statistics (`ema_params`, `ema_batch_stats`, both
bias-corrected, see `stages.ema_update`); everything else uses the live
parameters and statistics.
"""

import dataclasses
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bgmat import atomic
from bgmat import checkpointing
from bgmat import config_defaults
from bgmat import models
from bgmat.inference import resolution


def build_model(model_config, dtype: str | None = None):
  """The config's model (`config.model` / `config.disc`: name + kwargs);
  `dtype` (e.g. 'bfloat16') sets its compute dtype (parameters stay float32)."""
  kwargs = dict(model_config.get('kwargs', {}))
  if dtype is not None and jnp.dtype(dtype) != jnp.float32:
    kwargs['dtype'] = jnp.dtype(dtype)
  return models.get_model(model_config.name, **kwargs)


def inference_model_config(config) -> ml_collections.ConfigDict:
  """`config.model` as a run is evaluated and used: for a matting run with
  `config.eval_guided_filter.radius` > 0, the generator's guided-filter layer
  (`models/guided_filter.py`) set to that radius and eps, whether or not it was
  on in training (the layer has no parameters). Other runs: `config.model`."""
  model = ml_collections.ConfigDict(config.model.to_dict())
  guided = config.get('eval_guided_filter') if config.get('stage') == 'matting' else None
  if guided and guided.get('radius', 0) > 0:
    kwargs = dict(model.get('kwargs', {}))
    kwargs.update(guided_filter_radius=int(guided.radius), guided_filter_eps=float(guided.eps))
    model.kwargs = kwargs
  return model


def set_eval_guided_filter(workdir: str, radius: int, eps: float) -> None:
  """Records the evaluation-time guided filter in a matting run's config.json
  (atomically): every later `load_stage` of the run (report, remove, export,
  serve) applies it. radius 0 turns it off.

  Raises:
    FileNotFoundError: not a run directory. ValueError: not a matting run,
      radius < 0 or eps <= 0.
  """
  config = read_config(workdir)
  if config.stage != 'matting':
    raise ValueError(f'{workdir} is a {config.stage!r} run, not a matting run')
  if radius < 0 or not eps > 0:
    raise ValueError(f'need radius >= 0 and eps > 0, got {radius} and {eps}')
  data = config.to_dict()
  data['eval_guided_filter'] = {'radius': int(radius), 'eps': float(eps)}
  atomic.write_json(os.path.join(workdir, 'config.json'), data, indent=1)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's `config.json` (`config_defaults.read_run_config`).

  Raises:
    FileNotFoundError: `workdir` has no config.json (not a run directory).
    ValueError: config.json is not a JSON object (naming the file).
  """
  return ml_collections.ConfigDict(config_defaults.read_run_config(workdir))


def eval_variables(state: dict[str, Any], config) -> dict[str, Any]:
  """{'params', 'batch_stats'} a run is evaluated and used with (module doc)."""
  if config.get('eval_ema', False) and 'ema_params' in state:
    return {'params': state['ema_params'],
            'batch_stats': state.get('ema_batch_stats', state['batch_stats'])}
  return {'params': state['params'], 'batch_stats': state['batch_stats']}


def resolve_preseg_workdir(config, workdir: str) -> str:
  """A matting run's stage-1 workdir (a relative `preseg_workdir` is relative
  to the parent directory of the matting run's workdir)."""
  path = config.preseg_workdir
  if not os.path.isabs(path):
    path = os.path.join(os.path.dirname(os.path.abspath(workdir)), path)
  return path


@dataclasses.dataclass(frozen=True)
class Stage:
  """A trained stage: its config, flax module and the variables to apply it with."""
  workdir: str
  config: ml_collections.ConfigDict
  module: Any
  variables: dict[str, Any]


def load_stage(workdir: str) -> Stage:
  """The run in `workdir` with its evaluation variables (host arrays).

  Raises:
    FileNotFoundError: no config.json or no finished checkpoint.
  """
  config = read_config(workdir)
  state = checkpointing.restore_state_only(workdir)
  return Stage(workdir, config, build_model(inference_model_config(config)),
               eval_variables(state, config))


def load_preseg(workdir: str) -> Stage:
  """The pre-segmentation of `workdir`: the run itself if it is a stage-1 run,
  else the stage-1 run a matting run was trained on."""
  config = read_config(workdir)
  if config.stage == 'matting':
    workdir = resolve_preseg_workdir(config, workdir)
  stage = load_stage(workdir)
  if stage.config.stage != 'preseg':
    raise ValueError(f'{workdir} is a {stage.config.stage!r} run, not a pre-segmentation run')
  return stage


# Test-time scales are rounded to a multiple of this, so every stride of the
# encoder divides the scaled input.
TTA_STRIDE = 32


def preseg_probability(module, variables, image: jax.Array, flip: bool = False,
                       scales: Sequence[float] = (1.0,)) -> jax.Array:
  """Foreground probability of the pre-segmentation (jit-able).

  With test-time augmentation, the logits are averaged over the input scaled
  by each of `scales` (bilinear; sides rounded to a multiple of TTA_STRIDE;
  logits resized back bilinearly) and, with `flip`, over its left-right mirror
  too: DeepLabV3+'s multi-scale and flipped evaluation (Chen et al. 2018,
  "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
  Segmentation", Sec. 4.1). Costs 2 (flip) x sum(s^2) plain passes.

  Args:
    image: (N, H, W, 3) float in [0, 1].
    flip: also average over the mirrored input (mirrored back).
    scales: input scales, each > 0; (1.0,) and no flip is one plain pass.
  Returns:
    (N, H, W, 1) float32 in [0, 1]: sigmoid of the (averaged) logits, no gradient.
  Raises:
    ValueError: an empty `scales` or a scale <= 0.
  """
  scales = resolution.check_scales(scales)
  n, h, w, c = image.shape

  def logits(x):
    out = module.apply(variables, x, train=False).astype(jnp.float32)
    if flip:
      mirrored = module.apply(variables, x[:, :, ::-1], train=False).astype(jnp.float32)
      out = 0.5 * (out + mirrored[:, :, ::-1])
    return out

  total = 0.0
  for scale in scales:
    if scale == 1:
      total = total + logits(image)
      continue
    size = tuple(max(TTA_STRIDE, int(round(side * scale / TTA_STRIDE)) * TTA_STRIDE)
                 for side in (h, w))
    scaled = jax.image.resize(image, (n, *size, c), 'linear')
    total = total + jax.image.resize(logits(scaled), (n, h, w, 1), 'linear')
  return jax.lax.stop_gradient(jax.nn.sigmoid(total / len(scales)))


_PRESEG_FNS: dict = {}


def preseg_prob_fn(workdir: str, flip: bool = False, scales: Sequence[float] = (1.0,)):
  """images (N, H, W, 3) float in [0, 1] -> (N, H, W, 1) float32 numpy
  probability of a stage-1 run (`load_preseg`: the run itself, or a matting
  run's stage 1), with the test-time augmentation of `preseg_probability`;
  jitted, loaded once per workdir and augmentation per process."""
  key = (os.path.abspath(workdir), bool(flip), resolution.check_scales(scales))
  if key not in _PRESEG_FNS:
    stage = load_preseg(key[0])
    variables = jax.device_put(stage.variables)
    apply = jax.jit(lambda v, x: preseg_probability(stage.module, v, x, flip=key[1],
                                                    scales=key[2]))
    _PRESEG_FNS[key] = lambda images: np.asarray(apply(variables, images))
  return _PRESEG_FNS[key]
