"""The model registry: every name builds its module; unknown names list the known ones."""

import flax.linen as nn
import pytest

from bgmat import models


def test_every_registered_name_builds_a_module():
  for name in models.MODELS:
    assert isinstance(models.get_model(name), nn.Module), name


def test_kwargs_override_preset_fields():
  model = models.get_model('deeplabv3plus_tiny', improved=True, num_classes=3)
  assert model.improved and model.num_classes == 3


def test_unknown_name_lists_known_models():
  with pytest.raises(ValueError) as error:
    models.get_model('deeplabv4')
  message = str(error.value)
  assert 'deeplabv4' in message
  for name in ('xception65', 'deeplabv3plus_xception65_improved', 'generator_r34', 'patchgan_ms'):
    assert name in message
