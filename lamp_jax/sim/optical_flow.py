"""Exact dense optical flow between recorded frames, and the flow images of an episode (for a motion-image head).

The flow is exact, like the scene flow: every pixel centre of frame t is cast as a ray into the scene, the hit
point is carried with its body to frame t + k and reprojected; ``flow = pixel(t + k) - pixel(t)`` in pixels.
Pixels that hit nothing have zero flow.

Flow images use the one shared encoding of ``lamp_jax.flow_image`` (hue = direction, saturation = magnitude /
max_magnitude, value = 1; zero flow is white), the same as flow estimated for datasets without exact flow.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lamp_jax import flow_image
from lamp_jax.sim import scene_flow as scene_flow_lib
from lamp_jax.sim.env import Frame


def dense_flow(model, frame_a: Frame, frame_b: Frame, camera: str, height: int, width: int) -> np.ndarray:
  """float32[H, W, 2] pixel displacement (dx, dy) of every pixel centre of ``frame_a`` at ``frame_b``."""
  replayer = scene_flow_lib.FrameReplayer(model)
  poses = scene_flow_lib._gather_poses(replayer, [frame_a, frame_b], camera, height, width)  # pylint: disable=protected-access
  xpos, xmat, cams = poses
  ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  uv = np.stack([xs / width, ys / height], axis=-1).reshape(-1, 2)
  replayer.set(frame_a)
  dirs = cams[0].ray_directions(uv)
  depth, geom = replayer.cast(cams[0].centre, dirs)
  hit = geom >= 0
  body = np.maximum(np.where(hit, model.geom_bodyid[np.maximum(geom, 0)], 0), 0)
  points = cams[0].centre + depth[:, None] * dirs
  local = np.einsum("nji,nj->ni", xmat[0, body], points - xpos[0, body])
  moved = xpos[1, body] + np.einsum("nij,nj->ni", xmat[1, body], local)
  uv_b = cams[1].project(moved)[:, :2]
  flow = (uv_b - uv) * np.array([width, height])
  flow[~hit] = 0.0
  return flow.reshape(height, width, 2).astype(np.float32)


def flow_images(model, frames: Sequence[Frame], k: int, camera: str, height: int, width: int,
                max_magnitude: float | None = None) -> np.ndarray:
  """uint8[N, H, W, 3]: the flow image (``flow_image.flow_to_rgb``) from frame t to min(t + k, N - 1) for every t.

  ``max_magnitude`` (pixels) defaults to ``flow_image.default_max_magnitude(width)``: the paper's 64 px at 224 px
  width, scaled to this width.
  """
  n = len(frames)
  scale = max_magnitude if max_magnitude is not None else flow_image.default_max_magnitude(width)
  return np.stack([
      flow_image.flow_to_rgb(dense_flow(model, frames[t], frames[min(t + k, n - 1)], camera, height, width), scale)
      for t in range(n)])
