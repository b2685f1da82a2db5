"""Model registry: `get_model(name, **kwargs)` builds a named preset.

Families: aligned Xception (`xception.py`), DeepLabV3+ (`deeplab.py`), the
residual matting generator (`generator.py`) and the multi-scale PatchGAN
(`discriminator.py`). Keyword arguments override the preset's fields.
"""

from typing import Any

from bgmat.models import deeplab
from bgmat.models import discriminator
from bgmat.models import generator
from bgmat.models import xception

MODELS: dict[str, Any] = {
    **xception.PRESETS,
    **deeplab.PRESETS,
    **generator.PRESETS,
    **discriminator.PRESETS,
}


def get_model(name: str, **kwargs):
  """Returns the flax module preset `name`, with fields overridden by kwargs."""
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}. Known models: {", ".join(sorted(MODELS))}')
  return MODELS[name](**kwargs)
