"""data.config.from_requirements / check_requirements: the data fields a model fixes, from specs.DataRequirements."""

from lamp_jax import specs
from lamp_jax.data import config as data_config
from lamp_jax.models import lamp


def lamp_requirements(model_cfg) -> specs.DataRequirements:
  """What a LaMP model reads (what models/lamp.data_requirements is to return)."""
  return specs.DataRequirements(
      cameras=tuple(model_cfg.image_keys), image_size=int(model_cfg.image_size), window=1,
      action_horizon=int(model_cfg.action_horizon), action_dim=int(model_cfg.action_dim),
      proprio_dim=int(model_cfg.proprio_dim),
      scene_flow=(int(model_cfg.motion.num_keypoints), int(model_cfg.motion.num_steps)))


def test_from_requirements_is_for_model_for_lamp():
  model_cfg = lamp.model_config("sim")
  requirements = lamp_requirements(model_cfg)
  expected = data_config.for_model(model_cfg, 24).to_dict()
  assert data_config.from_requirements(requirements, 24).to_dict() == expected
  assert data_config.check_requirements(data_config.for_model(model_cfg, 24), requirements) == []


def test_check_requirements_names_each_field_and_the_models_value():
  model_cfg = lamp.model_config("sim")
  requirements = lamp_requirements(model_cfg)
  d = data_config.for_model(model_cfg, 24)
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
