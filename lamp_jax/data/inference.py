"""One raw robot / simulator observation -> a specs observation batch (B = 1), and actions back to robot units.

Numerically the same as the pipeline at eval time: the same resize (``frame_transforms.resize``: bilinear,
half-pixel centres, rounding to uint8), no augmentation, proprio normalised with the dataset statistics and the
same mask and mode, padded to ``max_proprio_dim``. Used by the closed-loop evaluator; tested against the pipeline.

Example::

    pre = ObservationPreprocessor(data_cfg, stats, standardize="lamp_sim_")
    batch = pre({"image_0": rgb0, "image_2": wrist, "state": state}, "stack the blocks")
    actions = pre.unnormalize_actions(model_actions)   # float32[B, H, 7]
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

from lamp_jax import specs
from lamp_jax.data import datasets, errors, frame_transforms, normalization


class ObservationPreprocessor:
  """Builds model inputs from raw observations, keeping a window of the last W observations.

  Args:
    data_cfg: the data config the policy was trained with (image_size, cameras, window_size, normalisation).
    stats: the ``normalization.DatasetStatistics`` of the dataset whose normalisation to use.
    standardize: registry key of the dataset layout (camera mapping and default masks).
    image_keys / action_mask / proprio_mask: overrides, as in the dataset entry.
    state_key: raw observation key of the proprioceptive state.
  """

  def __init__(self, data_cfg, stats: normalization.DatasetStatistics, *, standardize: str, image_keys=None,
               action_mask=None, proprio_mask=None, state_key: str = "state"):
    standardization = datasets.get(standardize)
    self.cfg = data_cfg
    self.stats = stats
    self.image_keys = dict(standardization.image_keys)
    self.image_keys.update(dict(image_keys or {}))
    self.action_mask = tuple(action_mask or standardization.action_normalization_mask)
    self.proprio_mask = tuple(proprio_mask or standardization.proprio_normalization_mask)
    self.state_key = state_key
    self.size = tuple(int(s) for s in data_cfg.image_size)
    self.history: collections.deque = collections.deque(maxlen=int(data_cfg.window_size))

  def reset(self) -> None:
    """Forget the observation history (call at the start of every episode)."""
    self.history.clear()

  def _single(self, raw: dict) -> dict:
    out = {"images": {}, "masks": {}}
    for camera in self.cfg.cameras:
      key = self.image_keys.get(camera, "")
      image = raw.get(key) if key else None
      if image is None:
        out["images"][camera] = np.zeros(self.size + (3,), np.uint8)
        out["masks"][camera] = False
        continue
      image = np.asarray(image)
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise errors.DataError(f"expected uint8[H, W, 3], got {image.dtype}{list(image.shape)}", key=key)
      out["images"][camera] = frame_transforms.resize(tf.constant(image), self.size).numpy()
      out["masks"][camera] = True
    if self.state_key not in raw:
      raise errors.DataError(f"observation has no '{self.state_key}' (keys: {sorted(raw)})", key=self.state_key)
    out["proprio"] = self.proprio(raw[self.state_key])
    return out

  def proprio(self, state) -> np.ndarray:
    """float32[S'] raw state -> float32[max_proprio_dim] normalised and zero-padded, as in the pipeline."""
    proprio = normalization.normalize_proprio(np.asarray(state, np.float32), self.stats,
                                              self.cfg.proprio_normalization, self.proprio_mask)
    pad = int(self.cfg.max_proprio_dim) - proprio.shape[-1]
    if pad < 0:
      raise errors.DataError(f"state has {proprio.shape[-1]} dims > data.max_proprio_dim", key=self.state_key)
    return np.pad(proprio, (0, pad))

  def __call__(self, observation: dict, instruction: str) -> dict:
    """Append ``observation`` to the window and return the batch (B = 1) in the specs layout."""
    self.history.append(self._single(observation))
    window = int(self.cfg.window_size)
    frames = list(self.history)
    missing = window - len(frames)
    frames = [frames[0]] * missing + frames  # pad by repeating the first frame, like the pipeline
    obs = {specs.IMAGE_MASK: {}}
    for camera in self.cfg.cameras:
      obs[camera] = np.stack([f["images"][camera] for f in frames])[None]
      obs[specs.IMAGE_MASK][camera] = np.array([[f["masks"][camera] for f in frames]])
    obs[specs.PROPRIO] = np.stack([f["proprio"] for f in frames])[None].astype(np.float32)
    obs[specs.TIMESTEP_PAD_MASK] = (np.arange(window) >= missing)[None]
    return {specs.OBSERVATION: obs,
            specs.TASK: {specs.LANGUAGE_INSTRUCTION: np.array([instruction.encode()], dtype=object)}}

  def unnormalize_actions(self, actions) -> np.ndarray:
    """float32[..., A] normalised model actions (padded dims ignored) -> raw actions in dataset units."""
    return normalization.unnormalize_actions(np.asarray(actions), self.stats, self.cfg.action_normalization,
                                             self.action_mask)
