"""Defaults shared by the experiment configs in `configs/`.

Configs stay one file per experiment; this only holds the fields every stage
has, so that a new experiment states just what it changes.
"""

import json
import os

import ml_collections


def read_run_config(workdir: str) -> dict:
  """A run's `config.json` as plain dicts (no jax: the study's driver reads it).

  Args:
    workdir: a run folder (`python -m bgmat.main --workdir`, `bgmat.baselines`).
  Returns:
    the config as `bgmat.main` / `bgmat.baselines` recorded it (JSON object).
  Raises:
    FileNotFoundError: `workdir` has no config.json (not a run directory).
    ValueError: config.json is not a JSON object (naming the file and the error).
  """
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{workdir}: no config.json (not a bgmat run directory; '
                            'python -m bgmat.main --config ... --workdir DIR makes one)')
  with open(path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e
  if not isinstance(data, dict):
    raise ValueError(f'{path}: not a JSON object (a {type(data).__name__})')
  return data


def parse_arg(arg: str | None, sizes: tuple[str, ...], options: tuple[str, ...] = (),
              default: str = 'demo') -> tuple[str, set[str]]:
  """(size, options) of a config argument such as 'study,original', strictly.

  Args:
    arg: comma-separated words: at most one of `sizes`, any of `options`.
    sizes: the valid size words; `default` is used when none is given.
    options: the valid option words.
  Raises:
    ValueError: an unknown word, or more than one size, naming the valid words.
  """
  words = [w.strip() for w in (arg or '').split(',') if w.strip()]
  unknown = [w for w in words if w not in sizes and w not in options]
  if unknown:
    raise ValueError(f'Unknown config argument word(s) {unknown} in {arg!r}; valid sizes: '
                     f'{list(sizes)}, options: {list(options)}')
  chosen = [w for w in words if w in sizes]
  if len(chosen) > 1:
    raise ValueError(f'More than one size in config argument {arg!r}: {chosen}; '
                     f'choose one of {list(sizes)}')
  return (chosen[0] if chosen else default), set(words) - set(chosen)


def base(stage: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.stage = stage
  config.seed = 0
  # 'rbg' compiles parameter initialisation far faster than threefry on CPU.
  config.rng_impl = 'rbg'
  config.mesh = [('data', -1)]
  # Compute dtype of the models ('float32' | 'bfloat16'). Parameters, optimizer
  # state and losses stay float32.
  config.dtype = 'float32'

  # Data: a TFDS data set, 'name/config' (built by `python -m data_prep.build`).
  config.dataset = 'synthetic_portraits/demo'
  config.data_dir = './data'
  config.train_split = 'train'
  config.image_size = 128
  # Side of the training examples in pixels; 0: image_size. Evaluation and
  # inference always letterbox into image_size. Crops stay shares of the
  # photo's short side (aug.crop_scale), so a smaller training side shows the
  # person nearer the scale of the letterboxed evaluation input (crops are
  # otherwise upsampled past it), at less compute per example.
  config.train_image_size = 0
  config.trimap_radius = 5
  # Training augmentation (`input_pipeline.Augment`): crop (side a share of the
  # short side, centred on the alpha edge with probability edge_bias) or, with
  # probability letterbox_prob, the whole record letterboxed into the square
  # as `bgmat remove` feeds the pre-segmentation, or, with probability
  # zoom_out_prob (checked first), letterboxed into a smaller square (side a
  # share zoom_out_scale of image_size) at a random place, edge-padded
  # around (people smaller in the frame than the data set shows); flips; with probability
  # use_photo_prob the stored photo as it is, else the composite
  # alpha * fg + (1 - alpha) * bg of the record's fg and bg, whose bg is with
  # probability recomposite_prob another record's; colour jitter; with
  # probability grayscale_prob the example in black and white (BT.601 luma in
  # all three channels).
  config.aug = ml_collections.ConfigDict(dict(
      crop_scale=(0.5, 1.0), edge_bias=0.5, flip=True, recomposite_prob=0.5, jitter=0.1,
      use_photo_prob=0.0, letterbox_prob=0.0, zoom_out_prob=0.0, zoom_out_scale=(0.5, 1.0),
      grayscale_prob=0.0))
  # A second training source mixed in at a fixed share of the examples (0: off,
  # the default keeps every config's stream; 1: only it), augmented as above
  # with its own seeds: `split` of `dataset` ('' : config.dataset). E.g. real
  # photos (config.dataset) with their auto-labelled composites onto other
  # real backgrounds (`matting_sets/portraits_study`, split train).
  config.train_mix = ml_collections.ConfigDict(dict(dataset='', split='train', share=0.0))
  config.input = ml_collections.ConfigDict(dict(worker_count=0, num_threads=4, prefetch=8))

  # Optimisation.
  config.batch_size = 8
  config.num_train_steps = 1000
  config.opt = ml_collections.ConfigDict(dict(
      lr=1e-3, warmup_steps=50, final_lr_ratio=0.01, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=1e-4, grad_clip=1.0))

  # Logging, checkpoints, evaluation.
  config.log_every = 20
  config.checkpoint_every = 200
  config.keep_checkpoints = 3
  config.async_checkpoints = True
  config.eval_every = 0  # 0: only at the end.
  config.eval_metrics = ('sad', 'mse', 'grad', 'conn')
  config.max_eval_examples = ml_collections.config_dict.placeholder(int)
  config.eval_test = True
  config.stop_at_step = ml_collections.config_dict.placeholder(int)
  # Profile (clu Profile, process 0) this many steps from step 10 into
  # WORKDIR/plugins/profile; 0: off.
  config.profile_steps = 0

  # Faults. 'stop': a non-finite loss stops the run before any save; 'skip':
  # the step's update is dropped and counted (train/skipped_steps).
  config.nonfinite = 'stop'
  # Fault injection for tests (0: off): a NaN image in that step; block the loop
  # after that step (its checkpoint finished) until SIGTERM or kill.
  config.debug = ml_collections.ConfigDict(dict(nan_at_step=0, hang_at_step=0))
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks everything for tests: a few steps on the `tiny` synthetic set."""
  config.dataset = 'synthetic_portraits/tiny'
  config.image_size = 32
  config.batch_size = 4
  config.num_train_steps = 4
  config.log_every = 2
  config.checkpoint_every = 2
  config.async_checkpoints = False
  config.opt.warmup_steps = 1
  config.max_eval_examples = 4
  config.eval_metrics = ('sad', 'mse')
  return config
