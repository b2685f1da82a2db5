"""Weight import: timm / smp state dicts, file loading, CLI, grafting."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bgmat import convert
from bgmat.models import deeplab as D
from bgmat.models import xception as X


class NotAStateDict:
  """A pickled object that `torch.load(weights_only=True)` must refuse."""


def _abstract(model, size=64):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), False))


def fake_timm_state_dict(arch, seed=0, num_classes=1000):
  """A state dict in timm's naming and layout, built from our variable tree.

  Torch-free stand-in for `timm.create_model(arch).state_dict()` (the real one
  is checked against timm in tests/models/test_xception.py::test_timm_parity).
  """
  abstract = _abstract(X.xception(arch, num_classes=num_classes))
  rng = np.random.default_rng(seed)
  sd, bn_prefixes = {}, set()
  for path, spec in jax.tree_util.tree_leaves_with_path(abstract):
    names = tuple(k.key for k in path)
    coll, mpath, leaf = names[0], names[1:-1], names[-1]
    prefix = convert._timm_xception_prefix(mpath)
    key = prefix + '.' + convert._LEAF_TO_TORCH[(coll, leaf)]
    shape = tuple(spec.shape)
    if leaf == 'kernel' and len(shape) == 4:
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif leaf == 'kernel':
      shape = shape[::-1]
    sd[key] = rng.standard_normal(shape).astype(np.float32)
    if coll == 'batch_stats':
      bn_prefixes.add(prefix)
  for p in bn_prefixes:
    sd[p + '.num_batches_tracked'] = np.array(7, np.int64)
  return sd


@pytest.fixture(scope='module')
def x41_sd():
  return fake_timm_state_dict('xception41')


def test_timm_mapping_layout(x41_sd):
  v = convert.timm_xception(x41_sd, 'xception41')
  p, bs = v['params'], v['batch_stats']
  np.testing.assert_array_equal(p['stem_0']['conv']['kernel'],
                                x41_sd['stem.0.conv.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p['blocks_3']['conv2']['conv_dw']['kernel'][:, :, 0, :],
                                x41_sd['blocks.3.stack.conv2.conv_dw.weight'][:, 0].transpose(1, 2, 0))
  np.testing.assert_array_equal(p['blocks_0']['shortcut']['bn']['scale'],
                                x41_sd['blocks.0.shortcut.bn.weight'])
  np.testing.assert_array_equal(bs['blocks_12']['conv3']['bn_pw']['var'],
                                x41_sd['blocks.12.stack.conv3.bn_pw.running_var'])
  np.testing.assert_array_equal(p['head']['kernel'], x41_sd['head.fc.weight'].T)
  n = sum(a.size for a in jax.tree_util.tree_leaves(p))
  assert n == X.TIMM_PARAM_COUNTS['xception41']


def test_mismatches_are_all_reported(x41_sd):
  sd = dict(x41_sd)
  del sd['blocks.1.stack.conv1.conv_dw.weight']
  del sd['stem.1.bn.running_var']
  sd['blocks.99.extra.weight'] = np.zeros(3, np.float32)
  sd['decoder.foo'] = np.zeros(3, np.float32)
  sd['blocks.2.stack.conv3.conv_pw.weight'] = np.zeros((5, 5, 1, 1), np.float32)
  sd['head.fc.bias'] = np.zeros(7, np.float32)
  with pytest.raises(ValueError) as e:
    convert.timm_xception(sd, 'xception41')
  msg = str(e.value)
  for name in ('blocks.1.stack.conv1.conv_dw.weight', 'stem.1.bn.running_var',
               'blocks.99.extra.weight', 'decoder.foo', 'blocks.2.stack.conv3.conv_pw.weight',
               'head.fc.bias'):
    assert name in msg, name
  assert 'missing keys (2)' in msg and 'unexpected keys (2)' in msg
  assert 'shape mismatches (2)' in msg


def test_wrong_arch_fails(x41_sd):
  with pytest.raises(ValueError, match='missing keys'):
    convert.timm_xception(x41_sd, 'xception65')


def test_load_state_dict_safetensors_and_prefixes(tmp_path, x41_sd):
  from safetensors.numpy import save_file
  f = tmp_path / 'w.safetensors'
  save_file({'module.' + k: v for k, v in x41_sd.items()}, str(f))
  sd = convert.load_state_dict(f)
  assert set(sd) == set(x41_sd)
  np.testing.assert_array_equal(sd['stem.0.conv.weight'], x41_sd['stem.0.conv.weight'])
  with pytest.raises(ValueError, match='unsupported'):
    convert.load_state_dict(tmp_path / 'w.pkl')


def test_load_state_dict_torch_weights_only(tmp_path, x41_sd):
  torch = pytest.importorskip('torch')
  small = {k: torch.from_numpy(v) for k, v in list(x41_sd.items())[:20]}
  for wrap in (lambda d: d, lambda d: {'state_dict': d}, lambda d: {'model': d, 'epoch': 3}):
    f = tmp_path / 'w.pth'
    torch.save(wrap({'module.' + k: v for k, v in small.items()}), f)
    sd = convert.load_state_dict(f)
    assert set(sd) == set(small)
    for k, v in small.items():
      np.testing.assert_array_equal(sd[k], v.numpy())
  # Arbitrary pickled objects are refused (weights_only=True).
  torch.save({'x': NotAStateDict()}, tmp_path / 'evil.pt')
  with pytest.raises(Exception):
    convert.load_state_dict(tmp_path / 'evil.pt')


def test_cli_timm_round_trip(tmp_path, x41_sd):
  from safetensors.numpy import save_file
  ckpt = tmp_path / 'x41.safetensors'
  save_file(x41_sd, str(ckpt))
  out = tmp_path / 'out'
  args = ['timm', '--arch', 'xception41', '--checkpoint', str(ckpt), '--out', str(out)]
  assert convert.main(args) == 0
  restored = convert.restore_variables(out)
  expected = convert.timm_xception(x41_sd, 'xception41')
  flat_r = jax.tree_util.tree_leaves_with_path(restored)
  flat_e = dict(jax.tree_util.tree_leaves_with_path(expected))
  assert len(flat_r) == len(flat_e)
  for path, a in flat_r:
    assert isinstance(a, np.ndarray)
    np.testing.assert_array_equal(a, flat_e[path])
  meta = json.loads((out / 'meta.json').read_text())
  assert meta['source'] == 'timm' and meta['arch'] == 'xception41'
  assert meta['num_params'] == X.TIMM_PARAM_COUNTS['xception41']
  assert convert.read_metadata(out)['arch'] == 'xception41'
  # Existing output directory: refused unless --overwrite.
  assert convert.main(args) == 1
  assert convert.main(args + ['--overwrite']) == 0


def test_graft_encoder(x41_sd):
  pretrained = convert.timm_xception(x41_sd, 'xception41')
  model = D.deeplabv3plus_xception41()
  abstract = _abstract(model)
  variables = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.25, s.dtype), abstract)
  grafted = convert.graft_encoder(variables, pretrained)
  enc = grafted['params']['encoder']
  assert 'head' not in enc
  np.testing.assert_array_equal(enc['blocks_5']['conv1']['conv_pw']['kernel'],
                                pretrained['params']['blocks_5']['conv1']['conv_pw']['kernel'])
  np.testing.assert_array_equal(grafted['batch_stats']['encoder']['stem_0']['bn']['mean'],
                                pretrained['batch_stats']['stem_0']['bn']['mean'])
  # The head of the segmentation model is untouched.
  np.testing.assert_array_equal(grafted['params']['aspp_project']['conv']['kernel'],
                                variables['params']['aspp_project']['conv']['kernel'])
  assert (jax.tree_util.tree_structure(grafted) == jax.tree_util.tree_structure(variables))
  # A full DeepLab tree is accepted as the source too.
  again = convert.graft_encoder(variables, grafted)
  np.testing.assert_array_equal(again['params']['encoder']['stem_1']['conv']['kernel'],
                                enc['stem_1']['conv']['kernel'])
  # Wrong backbone: every difference listed.
  wrong = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                 _abstract(D.deeplabv3plus_tiny()))
  with pytest.raises(ValueError) as e:
    convert.graft_encoder(wrong, pretrained)
  assert 'blocks_12' in str(e.value) and 'stem_0/conv/kernel' in str(e.value)


# --------------------------------------------------------------------------
# smp checkpoints (need torch + timm + segmentation_models_pytorch).


@pytest.fixture(scope='module')
def smp_state_dict():
  smp = pytest.importorskip('segmentation_models_pytorch')
  pytest.importorskip('timm')
  import torch
  torch.manual_seed(0)
  m = smp.DeepLabV3Plus(encoder_name='tu-xception65', encoder_weights=None)
  return m.state_dict()


@pytest.mark.slow
def test_smp_checkpoint_files(tmp_path, smp_state_dict):
  import torch
  from safetensors.torch import save_file
  direct = convert.smp_deeplabv3plus({k: v.numpy() for k, v in smp_state_dict.items()},
                                     'xception65')
  n = sum(a.size for a in jax.tree_util.tree_leaves(direct['params']))
  assert n == 41_036_865
  st = tmp_path / 'smp.safetensors'
  save_file({k: v.contiguous() for k, v in smp_state_dict.items()}, str(st))
  pth = tmp_path / 'smp.pth'
  torch.save(smp_state_dict, pth)
  for f in (st, pth):
    v = convert.smp_deeplabv3plus(convert.load_state_dict(f), 'xception65')
    for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(direct)):
      np.testing.assert_array_equal(a, b)
  out = tmp_path / 'smp_out'
  assert convert.main(['smp', '--arch', 'xception65', '--checkpoint', str(pth),
                       '--out', str(out)]) == 0
  restored = convert.restore_variables(out)
  for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(direct)):
    np.testing.assert_array_equal(a, b)
  meta = convert.read_metadata(out)
  assert meta['model_kwargs'] == dict(backbone='xception65', head='smp', output_stride=16,
                                      num_classes=1)
  # The encoder of an smp checkpoint grafts into the paper-head model.
  target = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                  _abstract(D.deeplabv3plus_xception65()))
  grafted = convert.graft_encoder(target, restored)
  np.testing.assert_array_equal(grafted['params']['encoder']['blocks_7']['conv2']['bn_dw']['bias'],
                                restored['params']['encoder']['blocks_7']['conv2']['bn_dw']['bias'])
