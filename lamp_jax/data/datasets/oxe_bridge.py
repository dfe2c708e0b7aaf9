"""The Open X-Embodiment copy of Bridge (tfds ``bridge`` 0.1.0).

steps/observation/{image uint8[480,640,3] JPEG, state float32[7], natural_language_instruction string},
steps/action/{world_vector float32[3], rotation_delta float32[3], open_gripper bool, terminate_episode float32}.
Like Octo's released ``bridge_dataset_transform``: the first step (a duplicate of the second in the OXE export)
is dropped, the action is concatenated to (dxyz, drpy, gripper) and relabelled from the reached state.
"""

from __future__ import annotations

import tensorflow as tf

from lamp_jax.data import datasets
from lamp_jax.data.datasets import common


def standardize(steps, metadata, *, drop_first_step: bool = True, relabel_actions: bool = True):
  del metadata
  if drop_first_step:
    steps = common.slice_steps(steps, 1, None)
  act = steps["action"]
  action = tf.concat([tf.cast(act["world_vector"], tf.float32), tf.cast(act["rotation_delta"], tf.float32),
                      tf.cast(act["open_gripper"], tf.float32)[:, None]], axis=-1)
  observation = dict(steps["observation"])
  instruction = observation.pop("natural_language_instruction")
  observation.pop("natural_language_embedding", None)
  observation["proprio"] = tf.cast(observation.pop("state"), tf.float32)
  trajectory = {"observation": observation, "action": action, "language_instruction": instruction}
  if relabel_actions:
    trajectory = common.relabel_from_state(trajectory)
  return trajectory


def requirements(data_cfg, image_keys):
  del data_cfg
  req = {"steps/observation/state": ((7,), "float"), "steps/action/world_vector": ((3,), "float"),
         "steps/action/rotation_delta": ((3,), "float"), "steps/action/open_gripper": ((), "int"),
         "steps/observation/natural_language_instruction": ((), "bytes")}
  for key in image_keys.values():
    if key:
      req[f"steps/observation/{key}"] = ((), "bytes")
  return req


datasets.register(datasets.Standardization(
    name="bridge",
    fn=standardize,
    requirements=requirements,
    image_keys={"image_primary": "image", "image_secondary": "", "image_tertiary": "", "image_wrist": ""},
    action_keys=("steps/action/world_vector", "steps/action/rotation_delta"),
    instruction_key="steps/observation/natural_language_instruction",
    action_normalization_mask=(True,) * 6 + (False,),
    proprio_normalization_mask=(True,) * 6 + (False,),
    min_length=3,  # one step dropped at the start, one by relabelling
    default_kwargs={"drop_first_step": True, "relabel_actions": True},
))
