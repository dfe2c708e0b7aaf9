"""Bridge V2 as released (tfds ``bridge_dataset`` 1.0.0, 5 Hz, 256x256 JPEG cameras image_0..3).

steps/observation/{image_0..3, state float32[7]}, steps/action float32[7] (dxyz, drpy, gripper),
steps/language_instruction; episode_metadata/has_image_k marks cameras that are zero images.
Like Octo's released ``bridge_orig_dataset_transform``: the gripper action is binarised and the first six action
dims are relabelled from the reached state (the last step is dropped). Both are kwargs (default on).
"""

from __future__ import annotations

import tensorflow as tf

from lamp_jax.data import datasets
from lamp_jax.data.datasets import common

STATE_DIM = 7
ACTION_DIM = 7


def standardize(steps, metadata, *, binarize_gripper: bool = True, relabel_actions: bool = True):
  del metadata
  action = tf.cast(steps["action"], tf.float32)
  if binarize_gripper:
    action = tf.concat([action[:, :6], common.binarize_gripper(action[:, 6])[:, None]], axis=-1)
  observation = dict(steps["observation"])
  observation["proprio"] = tf.cast(observation.pop("state"), tf.float32)
  trajectory = {"observation": observation, "action": action,
                "language_instruction": steps["language_instruction"]}
  if relabel_actions:
    trajectory = common.relabel_from_state(trajectory)
  return trajectory


def requirements(data_cfg, image_keys):
  del data_cfg
  req = {"steps/observation/state": ((STATE_DIM,), "float"), "steps/action": ((ACTION_DIM,), "float"),
         "steps/language_instruction": ((), "bytes")}
  for key in image_keys.values():
    if key:
      req[f"steps/observation/{key}"] = ((), "bytes")
  return req


datasets.register(datasets.Standardization(
    name="bridge_dataset",
    fn=standardize,
    requirements=requirements,
    # Octo maps primary=image_0, secondary=image_1; image_2 is the third third-person view (synchronized views:
    # all three show the same step), image_3 is Bridge's wrist camera (mostly missing).
    image_keys={"image_primary": "image_0", "image_secondary": "image_1", "image_tertiary": "image_2",
                "image_wrist": "image_3"},
    action_keys=("steps/action",),
    instruction_key="steps/language_instruction",
    action_normalization_mask=(True,) * 6 + (False,),
    proprio_normalization_mask=(True,) * 6 + (False,),
    min_length=2,  # relabelling drops the last step
    default_kwargs={"binarize_gripper": True, "relabel_actions": True},
))
