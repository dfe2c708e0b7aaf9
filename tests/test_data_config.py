"""data.config.from_requirements / check_requirements: the data fields a model fixes, from specs.DataRequirements."""

from lamp_jax import specs
from lamp_jax.data import config as data_config
from lamp_jax.models import registry

lamp = registry.get("lamp")



def test_from_requirements_gives_what_a_lamp_model_reads():
  model_cfg = lamp.model_config("sim")
  requirements = lamp.data_requirements(model_cfg)
  d = data_config.from_requirements(requirements, 24)
  assert data_config.check_requirements(d, requirements) == []
  assert d.batch_size == 24 and d.window_size == 1 and tuple(d.cameras) == tuple(model_cfg.image_keys)
  assert (d.action_horizon, d.max_action_dim, d.max_proprio_dim) == (8, 7, 8)
  assert d.image_size == (64, 64) and d.scene_flow
  assert (d.scene_flow_num_points, d.scene_flow_horizon) == (64, 8)
  ablation = lamp.model_config("sim")
  ablation.use_motion = False
  assert not data_config.from_requirements(lamp.data_requirements(ablation), 24).scene_flow


def test_check_requirements_names_each_field_and_the_models_value():
  model_cfg = lamp.model_config("sim")
  requirements = lamp.data_requirements(model_cfg)
  d = data_config.from_requirements(requirements, 24)
  d.image_size = (96, 96)
  d.action_horizon = 7
  d.scene_flow = False
  d.cameras = ("image_primary",)
  problems = data_config.check_requirements(d, requirements)
  assert len(problems) == 4, problems
  text = "\n".join(problems)
  assert f"data.image_size=(96, 96) but the model reads square images of size ({model_cfg.image_size}, " in text
  assert f"data.action_horizon=7 but the model predicts action chunks of {model_cfg.action_horizon}" in text
  assert "data.scene_flow=False" in text and "'image_wrist'" in text


def test_latent_pretraining_requirements_round_trip():
  """An action-free latent model reading future frames of two views: from_requirements satisfies it."""
  requirements = specs.DataRequirements(cameras=("image_primary", "image_secondary"), image_size=37, window=2,
                                        future_offsets=(3, 5), future_cameras=("image_primary", "image_secondary"),
                                        actions_optional=True)
  d = data_config.from_requirements(requirements, 13)
  assert data_config.check_requirements(d, requirements) == []
  assert (d.scene_flow, d.future_offsets, d.window_size, d.image_size) == (False, (3, 5), 2, (37, 37))
  d.future_offsets = (3,)
  assert data_config.check_requirements(d, requirements) == [
      "data.future_offsets=(3,) but the model reads future frames at offsets (3, 5)"]
