"""Demonstration episodes -> RLDS examples in the ``specs`` layout of ``lamp_sim_<suite>`` datasets.

An episode of M control steps is stored as M RLDS steps: step t holds observation o_t (before the action),
action a_t, and scene flow of the query grid of o_t tracked through o_{t+1} .. o_{t+T}, where o_M is the state
after the last action and is held past the end. ``is_last`` is set on step M - 1, ``is_terminal`` and
``reward`` = 1 there when the episode succeeded. ``camera_extrinsics_2`` (the wrist camera moves) is its pose at
step 0.

Optional extra field (only with ``optical_flow_steps > 0``): ``steps/observation/optical_flow`` Image
uint8[H, W, 3], the flow image (``lamp_jax.flow_image``: hue = direction, saturation = magnitude /
``optical_flow_max_magnitude``, value = 1, zero flow white) of image_0's exact flow from step t to t + k.

Multi-view options (the defaults leave the layout unchanged): ``randomize_cameras`` poses the third-person cameras
(front, side, top) at random around their nominal poses, drawn from the episode seed (``env.camera_poses``), fixed
for the whole episode; the 'top' camera adds ``image_3`` (+ ``has_image_3`` and its metadata intrinsics /
extrinsics); ``camera_params_per_step`` adds ``steps/camera_intrinsics_<k>`` float32[3, 3] and
``steps/camera_extrinsics_<k>`` float32[4, 4] (world_from_camera, OpenCV axes) of every image at that step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lamp_jax import specs
from lamp_jax.sim import cameras as cameras_lib
from lamp_jax.sim import env as env_lib
from lamp_jax.sim import experts as experts_lib
from lamp_jax.sim import optical_flow as optical_flow_lib
from lamp_jax.sim import scene_flow as scene_flow_lib
from lamp_jax.sim import tasks as tasks_lib

VERSION = "1.0.0"


IMAGE_ENCODING = "png"
# Bumped whenever the stored format changes, so cached datasets of an older format are regenerated.
# 3: flow images encode the magnitude as saturation (value 1, zero flow white) instead of value (black).
FORMAT_VERSION = 3


def dataset_name(suite: str) -> str:
  return f"{specs.SIM_DATASET_PREFIX}{suite}"


def num_images(cameras) -> int:
  """Images image_0 .. image_{n-1} an episode stores: 3, or 4 when the 'top' camera is rendered."""
  return 4 if "top" in tuple(cameras) else 3


def features(image_size: int, num_points: int, flow_steps: int, optical_flow: bool = False, images: int = 3,
             camera_params_per_step: bool = False):
  """The tfds FeaturesDict of one episode (see ``lamp_jax.specs``); ``images``: 3, or 4 with the 'top' camera."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  f = tfds.features
  # PNG, not JPEG: lossless, so the stored frames are exactly what the simulator renders at evaluation time.
  # (JPEG's 4:2:0 chroma subsampling smears the colour of 3-4 pixel objects at 64^2 -- the colour the
  # instruction refers to -- and made training frames differ from closed-loop frames; see test_sim_generate.)
  image = lambda: f.Image(shape=(image_size, image_size, 3), dtype=np.uint8, encoding_format=IMAGE_ENCODING)  # noqa: E731
  observation = {f"image_{k}": image() for k in range(images)}
  observation["state"] = f.Tensor(shape=(specs.SIM_STATE_DIM,), dtype=np.float32)
  if optical_flow:
    observation["optical_flow"] = image()
  metadata = {
      "file_path": f.Text(),
      "task_family": f.Text(),
      "seed": f.Scalar(dtype=np.int64),
      "success": f.Scalar(dtype=np.bool_),
      "has_language": f.Scalar(dtype=np.bool_),
  }
  for k in range(images):
    metadata[f"has_image_{k}"] = f.Scalar(dtype=np.bool_)
    metadata[f"camera_intrinsics_{k}"] = f.Tensor(shape=(3, 3), dtype=np.float32)
    metadata[f"camera_extrinsics_{k}"] = f.Tensor(shape=(4, 4), dtype=np.float32)
  per_step = {}
  if camera_params_per_step:
    for k in range(images):
      per_step[f"camera_intrinsics_{k}"] = f.Tensor(shape=(3, 3), dtype=np.float32)
      per_step[f"camera_extrinsics_{k}"] = f.Tensor(shape=(4, 4), dtype=np.float32)
  return f.FeaturesDict({
      "steps": f.Dataset({
          **per_step,
          "observation": f.FeaturesDict(observation),
          "action": f.Tensor(shape=(specs.ACTION_DIM,), dtype=np.float32),
          "language_instruction": f.Text(),
          "scene_flow": f.Tensor(shape=(num_points, flow_steps, 3), dtype=np.float32),
          "scene_flow_query": f.Tensor(shape=(num_points, 3), dtype=np.float32),
          "scene_flow_mask": f.Tensor(shape=(num_points, flow_steps), dtype=np.bool_),
          "scene_flow_query_mask": f.Tensor(shape=(num_points,), dtype=np.bool_),
          "is_first": f.Scalar(dtype=np.bool_),
          "is_last": f.Scalar(dtype=np.bool_),
          "is_terminal": f.Scalar(dtype=np.bool_),
          "reward": f.Scalar(dtype=np.float32),
          "discount": f.Scalar(dtype=np.float32),
      }),
      "episode_metadata": f.FeaturesDict(metadata),
  })


def record_episode(env: env_lib.TabletopEnv, suite: str, family: str, seed: int, num_points: int,
                   flow_steps: int, noise: float = 0.0, optical_flow_steps: int = 0,
                   optical_flow_max_magnitude: float | None = None, randomize_cameras: bool = False,
                   camera_params_per_step: bool = False, policy: str = "expert",
                   explore_steps: int = experts_lib.EXPLORE_STEPS) -> dict[str, Any]:
  """Run the scripted expert (or, with ``policy='explore'``, the random ``experts.Explorer`` for
  ``explore_steps`` steps) on ``(family, seed)`` and build the RLDS example (numpy; images uint8). The
  third-person cameras take their nominal poses, or random ones from ``seed`` with ``randomize_cameras``.

  ``optical_flow_max_magnitude``: flow-image normaliser in pixels (None: ``flow_image.default_max_magnitude``).
  """
  env.set_camera_poses(env.camera_poses(seed if randomize_cameras else None))
  task = tasks_lib.sample_task(family, seed)
  out = experts_lib.run_expert_episode(env, task, noise=noise, seed=seed, record=True, policy=policy,
                                       explore_steps=explore_steps)
  frames, observations, actions = out["frames"], out["observations"], out["actions"]
  m = len(actions)
  size = env.image_size
  flow = scene_flow_lib.compute_scene_flow(env.model, frames, num_points, flow_steps,
                                           camera=env_lib.REFERENCE_CAMERA, image_size=(size, size))
  flow_rgb = (optical_flow_lib.flow_images(env.model, frames, optical_flow_steps, env_lib.REFERENCE_CAMERA, size,
                                           size, optical_flow_max_magnitude) if optical_flow_steps > 0 else None)
  images = num_images(env.cameras)
  names = env_lib.CAMERA_NAMES[:images]
  replayer = scene_flow_lib.FrameReplayer(env.model)
  steps = []
  for t in range(m):
    obs = observations[t]
    observation = {f"image_{k}": obs[f"image_{k}"] for k in range(images)}
    observation["state"] = obs["state"]
    if flow_rgb is not None:
      observation["optical_flow"] = flow_rgb[t]
    last = t == m - 1
    step = {}
    if camera_params_per_step:
      data_t = replayer.set(frames[t])
      for k, name in enumerate(names):
        cam = cameras_lib.camera_from_data(env.model, data_t, name, size, size)
        step[f"camera_intrinsics_{k}"] = cam.intrinsics.astype(np.float32)
        step[f"camera_extrinsics_{k}"] = cam.world_from_camera.astype(np.float32)
    steps.append({
        **step,
        "observation": observation,
        "action": np.asarray(actions[t], np.float32),
        "language_instruction": task.instruction,
        "scene_flow": flow["scene_flow"][t],
        "scene_flow_query": flow["scene_flow_query"][t],
        "scene_flow_mask": flow["scene_flow_mask"][t],
        "scene_flow_query_mask": flow["scene_flow_query_mask"][t],
        "is_first": t == 0,
        "is_last": last,
        "is_terminal": bool(last and out["success"]),
        "reward": np.float32(1.0 if (last and out["success"]) else 0.0),
        "discount": np.float32(1.0),
    })
  # Camera poses at step 0 (the third-person cameras are fixed in an episode; the wrist camera moves).
  data0 = scene_flow_lib.FrameReplayer(env.model).set(frames[0])
  metadata = {
      "file_path": f"lamp_sim/{suite}/{family}/{seed}",
      "task_family": family,
      "seed": np.int64(seed),
      "success": bool(out["success"]),
      "has_language": True,
  }
  for k, name in enumerate(names):
    metadata[f"has_image_{k}"] = name in env.cameras and env.render_images
    cam = cameras_lib.camera_from_data(env.model, data0, name, size, size)
    metadata[f"camera_intrinsics_{k}"] = cam.intrinsics.astype(np.float32)
    metadata[f"camera_extrinsics_{k}"] = cam.world_from_camera.astype(np.float32)
  return {"steps": steps, "episode_metadata": metadata}
