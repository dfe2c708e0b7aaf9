"""Dense optical flow between recorded frames, and its HSV colour encoding (flow images for a motion-image head).

The flow is exact, like the scene flow: every pixel centre of frame t is cast as a ray into the scene, the hit
point is carried with its body to frame t + k and reprojected; ``flow = pixel(t + k) - pixel(t)`` in pixels.
Pixels that hit nothing have zero flow.

HSV encoding (the usual optical-flow colour wheel): hue = flow direction, saturation = 1,
value = min(|flow| / max_magnitude, 1). Zero flow is black.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

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


def flow_to_rgb(flow: np.ndarray, max_magnitude: float) -> np.ndarray:
  """float[H, W, 2] flow (pixels) -> uint8[H, W, 3] HSV-encoded RGB image."""
  if max_magnitude <= 0:
    raise ValueError(f"max_magnitude must be positive, got {max_magnitude}")
  dx, dy = flow[..., 0], flow[..., 1]
  hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
  value = np.clip(np.hypot(dx, dy) / max_magnitude, 0.0, 1.0)
  # HSV -> RGB with saturation 1.
  h6 = hue * 6.0
  sector = np.floor(h6).astype(np.int32) % 6
  frac = h6 - np.floor(h6)
  p = np.zeros_like(value)
  q = value * (1.0 - frac)
  t = value * frac
  table = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
  rgb = np.zeros(flow.shape[:-1] + (3,))
  for i, (r, g, b) in enumerate(table):
    sel = sector == i
    rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=-1)
  return np.round(rgb * 255.0).astype(np.uint8)


def flow_images(model, frames: Sequence[Frame], k: int, camera: str, height: int, width: int,
                max_magnitude: float | None = None) -> np.ndarray:
  """uint8[N, H, W, 3]: the flow image from frame t to min(t + k, N - 1) for every frame t.

  ``max_magnitude`` defaults to a quarter of the image width (pixels).
  """
  n = len(frames)
  scale = max_magnitude if max_magnitude is not None else 0.25 * width
  return np.stack([flow_to_rgb(dense_flow(model, frames[t], frames[min(t + k, n - 1)], camera, height, width), scale)
                   for t in range(n)])
