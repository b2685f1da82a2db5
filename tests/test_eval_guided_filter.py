"""The evaluation-time guided filter of a matting run (`runs.inference_model_config`,
`runs.set_eval_guided_filter`): recorded in the run, applied by every loader."""

import shutil

import ml_collections
import numpy as np
import pytest

from bgmat import runs
from bgmat.inference import remover as remover_lib
from bgmat.inference import resolution
from bgmat.models import guided_filter as gf_lib
from configs import matting as matting_configs


def test_inference_model_config_sets_the_layer_only_for_matting_runs():
  config = matting_configs.get_config('tiny')
  assert runs.inference_model_config(config).kwargs.guided_filter_radius == 0
  config.eval_guided_filter = dict(radius=3, eps=1e-2)
  model = runs.inference_model_config(config)
  assert (model.kwargs.guided_filter_radius, model.kwargs.guided_filter_eps) == (3, 1e-2)
  assert config.model.kwargs.guided_filter_radius == 0  # The training config is untouched.
  # A run saved before the field existed: its model as it was.
  old = ml_collections.ConfigDict({'stage': 'matting', 'model': {'name': 'generator_tiny'}})
  assert runs.inference_model_config(old).to_dict() == {'name': 'generator_tiny'}


def test_recorded_filter_is_what_the_run_is_loaded_and_removed_with(matting_workdir, tmp_path):
  # Copies (tests never write into the shared runs); the matting run names its
  # stage 1 relative to its parent.
  parent = tmp_path / 'runs'
  shutil.copytree(matting_workdir, parent / 'matting')
  preseg = runs.resolve_preseg_workdir(runs.read_config(matting_workdir), matting_workdir)
  shutil.copytree(preseg, parent / runs.read_config(matting_workdir).preseg_workdir)
  workdir = str(parent / 'matting')
  plain = runs.load_stage(workdir)
  assert plain.module.guided_filter_radius == 0

  runs.set_eval_guided_filter(workdir, 2, 1e-2)
  filtered = runs.load_stage(workdir)
  assert (filtered.module.guided_filter_radius, filtered.module.guided_filter_eps) == (2, 1e-2)
  rng = np.random.default_rng(0)
  image = rng.random((1, 64, 64, 3), np.float32)
  prior = rng.random((1, 64, 64, 1), np.float32)
  alpha = plain.module.apply(plain.variables, image, prior, train=False)
  np.testing.assert_allclose(
      filtered.module.apply(filtered.variables, image, prior, train=False),
      np.clip(gf_lib.guided_filter(image, alpha, 2, 1e-2), 0.0, 1.0), atol=1e-6)

  # `bgmat remove` loads the run through the same rule.
  photo = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
  small = resolution.Buckets(long_sides=(64,))
  with_filter = remover_lib.Remover.from_workdir(workdir, buckets=small).alpha(photo)
  runs.set_eval_guided_filter(workdir, 0, 1e-2)
  without = remover_lib.Remover.from_workdir(workdir, buckets=small).alpha(photo)
  assert runs.load_stage(workdir).module.guided_filter_radius == 0
  assert with_filter.shape == without.shape == (40, 56)
  assert np.abs(with_filter - without).max() > 1e-3


def test_set_eval_guided_filter_refuses_bad_runs_and_settings(preseg_workdir, matting_workdir):
  with pytest.raises(ValueError, match='not a matting run'):
    runs.set_eval_guided_filter(preseg_workdir, 2, 1e-3)
  with pytest.raises(ValueError, match='radius'):
    runs.set_eval_guided_filter(matting_workdir, -1, 1e-3)
  with pytest.raises(ValueError, match='eps'):
    runs.set_eval_guided_filter(matting_workdir, 2, 0.0)
