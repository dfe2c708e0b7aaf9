"""Trajectory transforms (TF graph, one episode at a time): standard layout, normalisation, subsampling, chunks.

Axis letters: L episode steps · W observation window · H action horizon · A action dim (padded) · S proprio dim
(padded) · K scene-flow points · T future flow steps.

Chunk indexing (checked against hand-computed trajectories in tests/test_data_traj.py), for step t of L:
  observation window   indices t - W + 1 .. t, clamped to >= 0; timestep_pad_mask = index >= 0
  action chunk         indices t .. t + H - 1, clamped to <= L - 1 (the last action is repeated);
                       action_pad_mask = index <= L - 1 (and False on padded action dims)
Octo's chunk indexing has a reported off-by-two; ours is checked step by step against
hand-computed trajectories: the chunk of step 0 holds the episode's first min(H, L) real actions, the chunk of
step L - 1 is [a_{L-1}] followed by H - 1 padded repeats.
Future frames (``data.future_offsets`` k_1..k_F, cameras ``data.future_cameras``), for step t:
  frame indices t + k_f, clamped to <= L - 1 (past the episode end the image is the episode's LAST frame);
  future_pad_mask = t + k_f <= L - 1. With k = H (the action horizon) the frame is the one right after the chunk.
Scene flow: the labels of the current step t (points tracked from t to t+1 .. t+T). Datasets without labels carry
one-point zero placeholders (K = 1) through the shuffle; the batch pads them to K with zeros / False (not
K x T x 3 zeros per frame: 170 KB at K = 400, T = 32). ``data.scene_flow=False``: no scene-flow keys at all.
Optical flow (``data.optical_flow``): the encoded flow image of the current step t (flow from t to t + k), the
same time index as the scene flow; an empty string and has_optical_flow=False where the dataset has none, or,
with ``data.optical_flow_estimator``, flow images estimated here per episode from the primary camera's stored
frames with k = H (``flow_estimation.encoded_episode_flow_images``).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from lamp_jax import specs
from lamp_jax.data import flow_estimation
from lamp_jax.data import normalization

FLOW_KEYS = (specs.SCENE_FLOW, specs.SCENE_FLOW_QUERY, specs.SCENE_FLOW_MASK, specs.SCENE_FLOW_QUERY_MASK)


def _pad_last(x: tf.Tensor, size: int, name: str) -> tf.Tensor:
  dim = x.shape[-1]
  if dim is not None and dim > size:
    raise ValueError(f"{name} has {dim} dims but the data config allows {size}: raise "
                     f"data.max_{name}_dim")
  return tf.pad(x, [[0, 0]] * (len(x.shape) - 1) + [[0, size - dim]])


def standard_trajectory(opened, steps, metadata, data_cfg, stats) -> dict:
  """Standardise, normalise and pad one episode. Returns flat dict of per-step tensors [L, ...]."""
  traj = opened.standardize(steps, metadata)
  length = tf.shape(traj["action"])[0]
  out = {}
  for camera in data_cfg.cameras:
    key = opened.image_keys.get(camera, "")
    if key:
      images = traj["observation"][key]
      has = metadata.get(f"has_{key}", tf.constant(True)) if isinstance(metadata, dict) else tf.constant(True)
      mask = tf.fill([length], tf.cast(has, tf.bool))
    else:
      images = tf.fill([length], "")
      mask = tf.zeros([length], tf.bool)
    out[f"image/{camera}"] = images
    out[f"image_mask/{camera}"] = mask
  action = traj["action"]
  proprio = traj["observation"]["proprio"]
  action = normalization.normalize(action, stats.action, data_cfg.action_normalization, opened.action_mask,
                                   xp=tnp)
  proprio = normalization.normalize(proprio, stats.proprio, data_cfg.proprio_normalization, opened.proprio_mask,
                                    xp=tnp)
  action_dim = action.shape[-1]
  out["action"] = _pad_last(tf.cast(action, tf.float32), int(data_cfg.max_action_dim), "action")
  out["action_dim_mask"] = tf.tile(tf.range(int(data_cfg.max_action_dim))[None] < action_dim, [length, 1])
  out["proprio"] = _pad_last(tf.cast(proprio, tf.float32), int(data_cfg.max_proprio_dim), "proprio")
  out["language_instruction"] = traj["language_instruction"]
  t = int(data_cfg.scene_flow_horizon)
  for camera in data_cfg.get("future_cameras", ()):
    if f"image/{camera}" not in out:
      raise ValueError(f"data.future_cameras has '{camera}', which is not in data.cameras {tuple(data_cfg.cameras)}: "
                       "future frames get the augmentation of the camera's current frame, so it must be read")
  if not data_cfg.get("scene_flow", True):
    pass
  elif opened.standardization.has_scene_flow:
    out[specs.SCENE_FLOW] = tf.cast(traj[specs.SCENE_FLOW], tf.float32)
    out[specs.SCENE_FLOW_QUERY] = tf.cast(traj[specs.SCENE_FLOW_QUERY], tf.float32)
    out[specs.SCENE_FLOW_MASK] = tf.cast(traj[specs.SCENE_FLOW_MASK], tf.bool)
    out[specs.SCENE_FLOW_QUERY_MASK] = tf.cast(traj[specs.SCENE_FLOW_QUERY_MASK], tf.bool)
    out[specs.HAS_SCENE_FLOW] = tf.ones([length], tf.bool)
  else:  # one-point placeholders (K = 1; zero-size ones crash tf.data's unbatch): padded to K by the batch
    out[specs.SCENE_FLOW] = tf.zeros([length, 1, t, 3], tf.float32)
    out[specs.SCENE_FLOW_QUERY] = tf.zeros([length, 1, 3], tf.float32)
    out[specs.SCENE_FLOW_MASK] = tf.zeros([length, 1, t], tf.bool)
    out[specs.SCENE_FLOW_QUERY_MASK] = tf.zeros([length, 1], tf.bool)
    out[specs.HAS_SCENE_FLOW] = tf.zeros([length], tf.bool)
  if data_cfg.get("optical_flow", False):
    if opened.optical_flow_key:
      out[specs.OPTICAL_FLOW] = traj["observation"][opened.optical_flow_key]  # string[L], still encoded
      out[specs.HAS_OPTICAL_FLOW] = tf.ones([length], tf.bool)
    elif opened.optical_flow_estimator:
      out[specs.OPTICAL_FLOW] = flow_estimation.encoded_episode_flow_images(
          traj["observation"][opened.optical_flow_source_key], k=int(data_cfg.action_horizon),
          method=opened.optical_flow_estimator, max_magnitude=float(data_cfg.get("optical_flow_max_magnitude", 0.0)),
          dataset=opened.name, key=f"steps/observation/{opened.optical_flow_source_key}")
      out[specs.HAS_OPTICAL_FLOW] = tf.ones([length], tf.bool)
    else:
      out[specs.OPTICAL_FLOW] = tf.fill([length], "")
      out[specs.HAS_OPTICAL_FLOW] = tf.zeros([length], tf.bool)
  return out


def subsample(frames: dict, max_length: int, seed: tf.Tensor) -> dict:
  """Keep a seeded random subset of ``max_length`` steps (in order) of a longer episode (Octo).

  Applied to the CHUNKED per-step examples (nested dict of [L, ...] tensors), as Octo does, so every kept step
  keeps its true action chunk, window and future frames (subsampling before chunking would build chunks from
  non-consecutive steps).
  """
  length = tf.shape(frames[specs.ACTION])[0]

  def pick():
    keys = tf.random.stateless_uniform([length], seed=seed)
    keep = tf.sort(tf.math.top_k(keys, k=max_length).indices)
    return tf.nest.map_structure(lambda v: tf.gather(v, keep), frames)

  return tf.cond(length > max_length, pick, lambda: tf.nest.map_structure(tf.identity, frames))


def chunk_indices(length: tf.Tensor, window: int, horizon: int):
  """Indices and pad masks of the observation windows and action chunks of every step.

  Returns (obs_index int32[L, W], obs_valid bool[L, W], action_index int32[L, H], action_valid bool[L, H]).
  """
  t = tf.range(length)[:, None]
  obs = t + tf.range(-window + 1, 1)[None]
  act = t + tf.range(horizon)[None]
  return (tf.maximum(obs, 0), obs >= 0, tf.minimum(act, length - 1), act <= length - 1)


def future_indices(length: tf.Tensor, offsets) -> tuple[tf.Tensor, tf.Tensor]:
  """Frame indices t + k (clamped to L - 1) and pad mask (t + k <= L - 1) of every step t and offset k.

  Returns (index int32[L, F], valid bool[L, F]), F = len(offsets).
  """
  wanted = tf.range(length)[:, None] + tf.constant(list(offsets), tf.int32)[None]
  return tf.minimum(wanted, length - 1), wanted <= length - 1


def chunk(traj: dict, window: int, horizon: int, future_offsets=(), future_cameras=()) -> dict:
  """Per-step training examples [L, ...] in the specs layout (images still encoded strings).

  ``future_offsets`` / ``future_cameras``: also observation/future/<camera> string[L, F] (the encoded frames
  t + k) and observation/future_pad_mask bool[L, F] (module docstring).
  """
  length = tf.shape(traj["action"])[0]
  obs_index, obs_valid, act_index, act_valid = chunk_indices(length, window, horizon)
  frame = {"observation": {specs.IMAGE_MASK: {}}, "task": {}}
  for key, value in traj.items():
    if key.startswith("image/"):
      frame["observation"][key.split("/", 1)[1]] = tf.gather(value, obs_index)
    elif key.startswith("image_mask/"):
      frame["observation"][specs.IMAGE_MASK][key.split("/", 1)[1]] = tf.gather(value, obs_index)
  if future_offsets and future_cameras:
    future_index, future_valid = future_indices(length, future_offsets)
    frame["observation"][specs.FUTURE] = {camera: tf.gather(traj[f"image/{camera}"], future_index)
                                          for camera in future_cameras}
    frame["observation"][specs.FUTURE_PAD_MASK] = future_valid
  frame["observation"][specs.PROPRIO] = tf.gather(traj["proprio"], obs_index)
  frame["observation"][specs.TIMESTEP_PAD_MASK] = obs_valid
  frame["task"][specs.LANGUAGE_INSTRUCTION] = traj["language_instruction"]
  frame[specs.ACTION] = tf.gather(traj["action"], act_index)
  frame[specs.ACTION_PAD_MASK] = tf.logical_and(act_valid[:, :, None], traj["action_dim_mask"][:, None, :])
  for key in FLOW_KEYS + (specs.HAS_SCENE_FLOW, specs.OPTICAL_FLOW, specs.HAS_OPTICAL_FLOW):
    if key in traj:  # (optical flow only when data.optical_flow is on)
      frame[key] = traj[key]
  return frame
