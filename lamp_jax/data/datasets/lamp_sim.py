"""The built-in simulator datasets ``lamp_sim_<suite>`` (layout in lamp_jax/specs.py, written by lamp_jax.sim),
and the LIBERO demonstrations exported in the same layout (``libero_<suite>_scripted``; lamp_jax.libero).

Actions already follow the specs convention; state float32[8] becomes proprio unchanged. Scene-flow labels are
per step (t+1 .. t+T relative to the step) and pass through; their K and T must match the data config.
The optional ``observation/optical_flow`` image (flow of image_0 from t to t + k) passes through with the other
observations; the pipeline reads it when ``data.optical_flow`` is on.
"""

from __future__ import annotations

import tensorflow as tf

from lamp_jax import specs
from lamp_jax.data import datasets

FLOW_KEYS = (specs.SCENE_FLOW, specs.SCENE_FLOW_QUERY, specs.SCENE_FLOW_MASK, specs.SCENE_FLOW_QUERY_MASK)


def standardize(steps, metadata):
  del metadata
  observation = dict(steps["observation"])
  observation["proprio"] = tf.cast(observation.pop("state"), tf.float32)
  trajectory = {"observation": observation, "action": tf.cast(steps["action"], tf.float32),
                "language_instruction": steps["language_instruction"]}
  for key in FLOW_KEYS:
    trajectory[key] = steps[key]
  return trajectory


def requirements(data_cfg, image_keys):
  k, t = int(data_cfg.scene_flow_num_points), int(data_cfg.scene_flow_horizon)
  req = {"steps/observation/state": ((specs.SIM_STATE_DIM,), "float"),
         "steps/action": ((specs.ACTION_DIM,), "float"), "steps/language_instruction": ((), "bytes"),
         f"steps/{specs.SCENE_FLOW}": ((k, t, 3), "float"), f"steps/{specs.SCENE_FLOW_QUERY}": ((k, 3), "float"),
         f"steps/{specs.SCENE_FLOW_MASK}": ((k, t), "int"), f"steps/{specs.SCENE_FLOW_QUERY_MASK}": ((k,), "int")}
  for camera, key in image_keys.items():
    if key and camera in tuple(data_cfg.cameras):  # image_3 exists only in datasets generated with 'top'
      req[f"steps/observation/{key}"] = ((), "bytes")
  return req


def _register(name: str, proprio_normalization_mask: tuple[bool, ...]) -> None:
  datasets.register(datasets.Standardization(
      name=name,
      prefix=True,
      fn=standardize,
      requirements=requirements,
      # image_3 ('top') exists only in datasets generated with --cameras=...,top.
      image_keys={"image_primary": "image_0", "image_secondary": "image_1", "image_wrist": "image_2",
                  "image_tertiary": "image_3"},
      action_keys=("steps/action",),
      instruction_key="steps/language_instruction",
      action_normalization_mask=(True,) * 6 + (False,),
      proprio_normalization_mask=proprio_normalization_mask,
      has_scene_flow=True,
      optical_flow_key="optical_flow",  # only in datasets generated with --optical-flow-steps=k
  ))


# The built-in simulator: the hand stays vertical, so the measured roll and pitch are contact jitter around 0
# (std ~3e-5 rad); z-scoring them would blow that jitter up to tens of "sigma". They are left raw (~0), as is
# the gripper command; xyz, yaw and finger opening are normalised.
_register(specs.SIM_DATASET_PREFIX, (True, True, True, False, False, True, True, False))
# LIBERO demonstrations exported in the same layout (lamp_jax.libero.rlds_export: libero_<suite>_scripted):
# the eef roll / pitch really vary there, so xyz, rpy and finger opening are normalised, the gripper left raw.
_register("libero_", (True,) * 7 + (False,))
