"""Import timm / segmentation_models_pytorch weights into the Flax models.

* `timm_xception(state_dict, arch)`: a timm `xception41/65/71` state dict ->
  `{'params', 'batch_stats'}` of `bgmat.models.xception.xception(arch)`
  (with the 1000-class head, `num_classes=1000`).
* `smp_deeplabv3plus(state_dict, arch)`: an smp
  `DeepLabV3Plus(encoder_name='tu-<arch>')` state dict -> variables of
  `DeepLabV3Plus(backbone=arch, head='smp', num_classes=<from checkpoint>)`.
* `load_state_dict(path)`: `.safetensors` via `safetensors.numpy`;
  `.pth/.pt/.bin` only via `torch.load(..., weights_only=True)`; never plain
  pickle.
* `restore_variables(dir)` / `graft_encoder(variables, pretrained)`: read a
  converted checkpoint and put its encoder into a model's variables.

CLI:
  python -m bgmat.convert timm --arch xception65 --checkpoint FILE --out DIR
  python -m bgmat.convert smp  --arch xception65 --checkpoint FILE --out DIR
writes DIR/variables (an Orbax checkpoint of {'params', 'batch_stats'}) and
DIR/meta.json (source, arch, model constructor arguments).

Weight layout: torch conv OIHW -> HWIO (a depthwise (C, 1, k, k) -> (k, k, 1, C)),
Linear (out, in) -> (in, out); BN weight/bias/running_mean/running_var ->
scale/bias/mean/var; `num_batches_tracked` is ignored.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
from typing import Any, Callable, Mapping

import numpy as np

TORCH_EXTS = ('.pth', '.pt', '.bin')

_LEAF_TO_TORCH = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}
_IGNORED_SUFFIXES = ('num_batches_tracked',)


# ---------------------------------------------------------------------------
# Loading.


def _to_numpy(v):
  if isinstance(v, np.ndarray):
    return v
  if hasattr(v, 'detach'):  # torch tensor
    v = v.detach().cpu()
    if str(v.dtype) == 'torch.bfloat16':
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def _clean_state_dict(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
  for key in ('state_dict', 'model', 'model_state_dict'):
    if key in sd and isinstance(sd[key], Mapping):
      sd = sd[key]
      break
  out = {}
  for k, v in sd.items():
    if k.startswith('module.'):
      k = k[len('module.'):]
    out[k] = _to_numpy(v)
  return out


def load_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a checkpoint file into {name: numpy array}."""
  path = str(path)
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    return _clean_state_dict(load_file(path))
  if path.endswith(TORCH_EXTS):
    try:
      import torch
    except ImportError as e:
      raise ImportError(
          f'reading {path} needs PyTorch (pip install torch); or convert it to .safetensors') from e
    sd = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(sd, Mapping):
      raise ValueError(f'{path}: expected a state dict (mapping), got {type(sd).__name__}')
    return _clean_state_dict(sd)
  raise ValueError(f'{path}: unsupported checkpoint type; use .safetensors, .pth, .pt or .bin')


# ---------------------------------------------------------------------------
# Generic mapping: every Flax leaf <- one torch tensor.


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat):
  tree: dict = {}
  for path, v in flat.items():
    d = tree
    for k in path[:-1]:
      d = d.setdefault(k, {})
    d[path[-1]] = v
  return tree


def _torch_layout(arr: np.ndarray, target_ndim: int, leaf: str) -> np.ndarray:
  if leaf == 'kernel' and arr.ndim == 4:
    return np.transpose(arr, (2, 3, 1, 0))
  if leaf == 'kernel' and arr.ndim == 2:
    return arr.T
  return arr


def _abstract_variables(model, input_shape):
  import jax
  import jax.numpy as jnp
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(input_shape), False))
  return {c: shapes[c] for c in ('params', 'batch_stats') if c in shapes}


def convert_state_dict(state_dict: Mapping[str, np.ndarray], abstract_vars,
                       module_prefix: Callable[[tuple], str], what: str) -> dict:
  """Maps `state_dict` onto the abstract variable tree; raises on any mismatch."""
  flat = _flatten(abstract_vars)
  used, missing, bad_shape, out = set(), [], [], {}
  for path, spec in flat.items():
    coll, leaf = path[0], path[-1]
    key = module_prefix(path[1:-1]) + '.' + _LEAF_TO_TORCH[(coll, leaf)]
    if key not in state_dict:
      missing.append(f'{key} (for {"/".join(path)}, shape {tuple(spec.shape)})')
      continue
    used.add(key)
    arr = _torch_layout(np.asarray(state_dict[key]), len(spec.shape), leaf)
    if tuple(arr.shape) != tuple(spec.shape):
      bad_shape.append(f'{key}: checkpoint {tuple(state_dict[key].shape)} -> {tuple(arr.shape)}, '
                       f'model {"/".join(path)} {tuple(spec.shape)}')
      continue
    out[path] = np.ascontiguousarray(arr, dtype=np.float32)
  unexpected = sorted(k for k in state_dict
                      if k not in used and not k.endswith(_IGNORED_SUFFIXES))
  if missing or bad_shape or unexpected:
    msg = [f'{what}: checkpoint does not match the model.']
    if missing:
      msg.append(f'missing keys ({len(missing)}):\n  ' + '\n  '.join(missing))
    if unexpected:
      msg.append(f'unexpected keys ({len(unexpected)}):\n  ' + '\n  '.join(unexpected))
    if bad_shape:
      msg.append(f'shape mismatches ({len(bad_shape)}):\n  ' + '\n  '.join(bad_shape))
    raise ValueError('\n'.join(msg))
  return _unflatten(out)


# ---------------------------------------------------------------------------
# timm aligned Xception.


def _timm_xception_prefix(mpath: tuple) -> str:
  """Flax module path (under the Xception) -> timm module name."""
  parts = []
  for i, name in enumerate(mpath):
    m = re.fullmatch(r'(stem|blocks)_(\d+)', name)
    if m:
      parts.append(f'{m.group(1)}.{m.group(2)}')
    elif re.fullmatch(r'conv\d', name) and i > 0 and mpath[i - 1].startswith('blocks_'):
      parts.append(f'stack.{name}')
    elif name == 'head' and i == 0:
      parts.append('head.fc')
    else:
      parts.append(name)
  return '.'.join(parts)


def timm_xception(state_dict: Mapping[str, np.ndarray], arch: str, num_classes: int | None = None):
  """timm `xception41/65/71` state dict -> {'params', 'batch_stats'} for `xception(arch)`."""
  from bgmat.models import xception as xlib
  state_dict = _clean_state_dict(state_dict)
  if num_classes is None:
    w = state_dict.get('head.fc.weight')
    num_classes = 0 if w is None else int(w.shape[0])
  model = xlib.xception(arch, num_classes=num_classes)
  abstract = _abstract_variables(model, (1, 64, 64, 3))
  return convert_state_dict(state_dict, abstract, _timm_xception_prefix, f'timm {arch}')


# ---------------------------------------------------------------------------
# smp DeepLabV3Plus(encoder_name='tu-<arch>').

_SMP_DECODER = {
    'aspp_conv1x1/conv': 'decoder.aspp.0.convs.0.0',
    'aspp_conv1x1/bn': 'decoder.aspp.0.convs.0.1',
    'aspp_image_pool/conv': 'decoder.aspp.0.convs.4.1',
    'aspp_image_pool/bn': 'decoder.aspp.0.convs.4.2',
    'aspp_project/conv': 'decoder.aspp.0.project.0',
    'aspp_project/bn': 'decoder.aspp.0.project.1',
    'aspp_sep/conv_dw': 'decoder.aspp.1.0',
    'aspp_sep/conv_pw': 'decoder.aspp.1.1',
    'aspp_sep/bn_pw': 'decoder.aspp.2',
    'low_level/conv': 'decoder.block1.0',
    'low_level/bn': 'decoder.block1.1',
    'decoder_conv_0/conv_dw': 'decoder.block2.0.0',
    'decoder_conv_0/conv_pw': 'decoder.block2.0.1',
    'decoder_conv_0/bn_pw': 'decoder.block2.1',
    'logits': 'segmentation_head.0',
}
for _i in range(3):
  _SMP_DECODER[f'aspp_atrous_{_i}/conv_dw'] = f'decoder.aspp.0.convs.{_i + 1}.0.0'
  _SMP_DECODER[f'aspp_atrous_{_i}/conv_pw'] = f'decoder.aspp.0.convs.{_i + 1}.0.1'
  _SMP_DECODER[f'aspp_atrous_{_i}/bn_pw'] = f'decoder.aspp.0.convs.{_i + 1}.1'


def _smp_prefix(mpath: tuple) -> str:
  if mpath[0] == 'encoder':
    # smp wraps the timm model in a FeatureHookNet with flattened names.
    return 'encoder.model.' + _timm_xception_prefix(mpath[1:]).replace(
        'stem.', 'stem_').replace('blocks.', 'blocks_')
  key = '/'.join(mpath)
  if key not in _SMP_DECODER:
    return 'bgmat_unmapped.' + '.'.join(mpath)  # reported as missing
  return _SMP_DECODER[key]


def smp_deeplabv3plus(state_dict: Mapping[str, np.ndarray], arch: str = 'xception65',
                      output_stride: int = 16, **model_kwargs):
  """smp `DeepLabV3Plus(encoder_name='tu-<arch>')` state dict -> our head='smp' variables."""
  from bgmat.models.deeplab import DeepLabV3Plus
  state_dict = _clean_state_dict(state_dict)
  w = state_dict.get('segmentation_head.0.weight')
  num_classes = 1 if w is None else int(w.shape[0])
  model = DeepLabV3Plus(backbone=arch, head='smp', output_stride=output_stride,
                        num_classes=num_classes, **model_kwargs)
  abstract = _abstract_variables(model, (1, 64, 64, 3))
  return convert_state_dict(state_dict, abstract, _smp_prefix, f'smp DeepLabV3Plus tu-{arch}')


# ---------------------------------------------------------------------------
# Orbax checkpoints.


def save_variables(variables, out_dir, meta: dict, overwrite: bool = False) -> pathlib.Path:
  import orbax.checkpoint as ocp
  out = pathlib.Path(out_dir).absolute()
  if out.exists():
    if not overwrite:
      raise FileExistsError(f'{out} exists; pass --overwrite to replace it')
    import shutil
    shutil.rmtree(out)
  out.mkdir(parents=True)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(out / 'variables', variables)
  ckptr.wait_until_finished()
  (out / 'meta.json').write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
  return out


def _ckpt_dir(path) -> pathlib.Path:
  p = pathlib.Path(path).absolute()
  return p / 'variables' if (p / 'variables').is_dir() else p


def read_metadata(path) -> dict:
  p = pathlib.Path(path) / 'meta.json'
  return json.loads(p.read_text()) if p.exists() else {}


def restore_variables(path) -> dict:
  """Reads DIR (or DIR/variables) written by the converter -> nested dict of numpy arrays."""
  import jax
  import orbax.checkpoint as ocp
  ckpt = _ckpt_dir(path)
  if not ckpt.exists():
    raise FileNotFoundError(f'no checkpoint at {ckpt}')
  restored = ocp.StandardCheckpointer().restore(ckpt)
  return jax.tree_util.tree_map(lambda a: np.asarray(jax.device_get(a)), dict(restored))


def graft_encoder(variables, pretrained, drop_head: bool = True):
  """Returns `variables` with params/batch_stats['encoder'] replaced by `pretrained`'s.

  `pretrained` is an Xception variable dict ({'params', 'batch_stats'}, e.g. from
  `timm_xception` / `restore_variables`), or a full DeepLabV3+ one (then its
  'encoder' subtree is used). The classifier `head` is dropped when `drop_head`.
  Every encoder leaf must be present with the same shape, in both directions;
  otherwise a ValueError lists all differences. Leaves are cast to the target
  leaf's dtype; nothing outside the encoder changes.
  """
  import flax
  import jax.numpy as jnp
  variables = flax.core.unfreeze(variables)
  pretrained = flax.core.unfreeze(pretrained)
  new_vars = dict(variables)
  problems = []
  for coll in ('params', 'batch_stats'):
    if coll not in variables or 'encoder' not in variables[coll]:
      problems.append(f"target variables have no {coll}['encoder']")
      continue
    src = pretrained.get(coll, {})
    if 'encoder' in src:
      src = src['encoder']
    src = dict(src)
    if drop_head:
      src.pop('head', None)
    tgt_flat = _flatten(variables[coll]['encoder'])
    src_flat = _flatten(src)
    for p in sorted(set(tgt_flat) - set(src_flat)):
      problems.append(f'{coll}/encoder/{"/".join(p)}: missing in pretrained')
    for p in sorted(set(src_flat) - set(tgt_flat)):
      problems.append(f'{coll}/encoder/{"/".join(p)}: not in the model')
    merged = {}
    for p, t in tgt_flat.items():
      if p not in src_flat:
        continue
      s = src_flat[p]
      if tuple(np.shape(s)) != tuple(np.shape(t)):
        problems.append(f'{coll}/encoder/{"/".join(p)}: pretrained {tuple(np.shape(s))} '
                        f'vs model {tuple(np.shape(t))}')
        continue
      merged[p] = jnp.asarray(s, dtype=t.dtype)
    new_coll = dict(variables[coll])
    new_coll['encoder'] = _unflatten(merged)
    new_vars[coll] = new_coll
  if problems:
    raise ValueError('graft_encoder: pretrained encoder does not fit the model:\n  '
                     + '\n  '.join(problems))
  return new_vars


# ---------------------------------------------------------------------------
# CLI.


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bgmat.convert', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='source', required=True)
  for name, help_ in (('timm', 'timm aligned Xception checkpoint'),
                      ('smp', "smp DeepLabV3Plus(encoder_name='tu-<arch>') checkpoint")):
    p = sub.add_parser(name, help=help_)
    p.add_argument('--arch', default='xception65',
                   choices=('xception41', 'xception65', 'xception71'))
    p.add_argument('--checkpoint', required=True, help='.safetensors, .pth, .pt or .bin')
    p.add_argument('--out', required=True, help='output directory (must not exist)')
    p.add_argument('--overwrite', action='store_true')
    if name == 'smp':
      p.add_argument('--output-stride', type=int, default=16, choices=(8, 16))
  args = parser.parse_args(argv)

  sd = load_state_dict(args.checkpoint)
  if args.source == 'timm':
    variables = timm_xception(sd, args.arch)
    model_kwargs = dict(arch=args.arch, num_classes=int(
        variables['params']['head']['kernel'].shape[-1]) if 'head' in variables['params'] else 0)
    model = 'bgmat.models.xception.Xception'
  else:
    variables = smp_deeplabv3plus(sd, args.arch, output_stride=args.output_stride)
    model_kwargs = dict(backbone=args.arch, head='smp', output_stride=args.output_stride,
                        num_classes=int(variables['params']['logits']['kernel'].shape[-1]))
    model = 'bgmat.models.deeplab.DeepLabV3Plus'
  meta = dict(source=args.source, arch=args.arch, checkpoint=os.path.abspath(args.checkpoint),
              model=model, model_kwargs=model_kwargs,
              num_params=int(sum(np.size(v) for v in _flatten(variables['params']).values())))
  try:
    out = save_variables(variables, args.out, meta, overwrite=args.overwrite)
  except FileExistsError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {out} ({meta["num_params"]:,} params)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
