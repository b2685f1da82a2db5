"""Config arguments are parsed strictly; every experiment config builds."""

import pytest

from bgmat import config_defaults
from configs import closed_form as closed_form_configs
from configs import matting as matting_configs
from configs import preseg as preseg_configs


@pytest.mark.parametrize('arg, message', [
    ('full,noadvv', "'noadvv'"), ('demo,full', 'More than one size'), ('orignal', "'orignal'")])
def test_unknown_or_conflicting_words_are_errors(arg, message):
  module = matting_configs if 'noadv' in arg else preseg_configs
  with pytest.raises(ValueError, match=message):
    module.get_config(arg)


def test_error_lists_valid_words():
  with pytest.raises(ValueError, match=r"valid sizes: \['tiny', 'demo', 'study', 'full'\]"):
    preseg_configs.get_config('big')


@pytest.mark.parametrize('module', [preseg_configs, matting_configs, closed_form_configs])
@pytest.mark.parametrize('size', ['tiny', 'demo', 'study', 'full'])
def test_every_size_builds(module, size):
  config = module.get_config(size)
  assert config.image_size >= 32


def test_options_take_effect():
  assert preseg_configs.get_config('study,original').model.kwargs.improved is False
  assert preseg_configs.get_config('study').model.kwargs.improved is True
  assert matting_configs.get_config('study,noadv').adv.weight == 0.0
  assert matting_configs.get_config('study').adv.weight > 0
  assert closed_form_configs.get_config('study,gt_trimap').trimap_source == 'gt'


def test_parse_arg_default_size():
  assert config_defaults.parse_arg('', ('a', 'b'), ('x',), default='b') == ('b', set())
  assert config_defaults.parse_arg('x, a', ('a', 'b'), ('x',)) == ('a', {'x'})
