"""Exact 3D scene-flow labels (UVD tracks in the reference camera) from recorded simulator frames.

For every query step t:
  1. the K grid points of ``specs.grid_query_uv`` are cast as rays from the reference camera into the scene at
     step t (``mj_multiRay`` on the exact collision/visual geometry, not a quantised depth buffer): the hit gives
     the z-depth d and the geom, hence the body the point lies on (object, robot link, drawer, table, floor);
  2. each hit point is expressed in its body's frame and carried with that body's pose to steps t+1 .. t+T
     (past the last recorded frame the last frame is held: the scene is static);
  3. the moved points are projected into the camera at that step (UVD, ``specs`` convention) and marked visible
     when they are in front of the camera, inside the image and not occluded. Occlusion is an exact depth test:
     a ray from the camera towards the point must not hit any surface more than ``DEPTH_TOLERANCE`` in front of
     it (a depth render at the same step gives the same answer up to its pixel quantisation).

Query points whose ray hits nothing get ``scene_flow_query_mask`` False (and d = 0, all steps masked).

Shapes (N recorded frames, K points, T future steps)::

  scene_flow             float32[N, K, T, 3]   UVD at steps t+1 .. t+T
  scene_flow_query       float32[N, K, 3]      UVD at step t
  scene_flow_mask        bool[N, K, T]
  scene_flow_query_mask  bool[N, K]
  query_body             int32[N, K]           MuJoCo body id the point is attached to (-1: no hit)
  points_world           float64[N, K, T, 3]   the tracked 3D points (for tests and visualisation)

Everything after the ray casts is vectorised numpy.
"""

from __future__ import annotations

from typing import Sequence

import mujoco
import numpy as np

from lamp_jax import specs
from lamp_jax.sim import cameras as cameras_lib
from lamp_jax.sim.env import Frame

DEPTH_TOLERANCE = 2e-3  # m; a surface closer than (depth - tolerance) occludes the point
Z_NEAR = 0.02  # m; the camera's near plane


class FrameReplayer:
  """Sets recorded kinematic frames into a scratch ``MjData`` and reads poses / casts rays there."""

  def __init__(self, model: mujoco.MjModel):
    self.model = model
    self.data = mujoco.MjData(model)

  def set(self, frame: Frame) -> mujoco.MjData:
    self.data.qpos[:] = frame.qpos
    self.data.mocap_pos[:] = frame.mocap_pos
    self.data.mocap_quat[:] = frame.mocap_quat
    mujoco.mj_kinematics(self.model, self.data)
    mujoco.mj_camlight(self.model, self.data)
    return self.data

  def cast(self, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays ``origin + s * directions[i]``: returns (s of the first hit float64[n], geom id int32[n]; -1, -1
    where nothing is hit). Uses the current frame."""
    n = directions.shape[0]
    dist = np.full(n, -1.0)
    geom = np.full(n, -1, np.int32)
    if n:
      mujoco.mj_multiRay(self.model, self.data, np.asarray(origin, np.float64),
                         np.ascontiguousarray(directions, np.float64).reshape(-1), None, 1, -1, geom, dist, None, n,
                         1e6)
    return dist, geom


def _gather_poses(replayer: FrameReplayer, frames: Sequence[Frame], camera: str, height: int, width: int):
  xpos, xmat, cams = [], [], []
  for frame in frames:
    d = replayer.set(frame)
    xpos.append(d.xpos.copy())
    xmat.append(d.xmat.reshape(-1, 3, 3).copy())
    cams.append(cameras_lib.camera_from_data(replayer.model, d, camera, height, width))
  return np.stack(xpos), np.stack(xmat), cams


def compute_scene_flow(model: mujoco.MjModel, frames: Sequence[Frame], num_points: int, flow_steps: int,
                       camera: str = "front", image_size: tuple[int, int] = (64, 64)) -> dict[str, np.ndarray]:
  """Scene-flow labels for every recorded frame (see module docstring). ``image_size`` = (height, width)."""
  if len(frames) == 0:
    raise ValueError("compute_scene_flow needs at least one frame")
  if flow_steps < 1:
    raise ValueError(f"flow_steps must be >= 1, got {flow_steps}")
  height, width = image_size
  n, t_steps = len(frames), int(flow_steps)
  grid_uv = specs.grid_query_uv(num_points).astype(np.float64)  # [K, 2]
  replayer = FrameReplayer(model)
  xpos, xmat, cams = _gather_poses(replayer, frames, camera, height, width)

  # 1. Query points at every step t.
  query_uvd = np.zeros((n, num_points, 3))
  query_body = np.full((n, num_points), -1, np.int32)
  local = np.zeros((n, num_points, 3))
  for t, frame in enumerate(frames):
    replayer.set(frame)
    cam = cams[t]
    dirs = cam.ray_directions(grid_uv)  # unit camera-z: ray parameter == z-depth
    depth, geom = replayer.cast(cam.centre, dirs)
    hit = geom >= 0
    body = np.where(hit, model.geom_bodyid[np.maximum(geom, 0)], -1)
    points = cam.centre + depth[:, None] * dirs
    b = np.maximum(body, 0)
    local[t] = np.where(hit[:, None], np.einsum("kji,kj->ki", xmat[t, b], points - xpos[t, b]), 0.0)
    query_uvd[t, :, :2] = grid_uv
    query_uvd[t, :, 2] = np.where(hit, depth, 0.0)
    query_body[t] = body
  query_mask = query_body >= 0

  # 2. Carry every point with its body to frames min(t + s, n - 1), s = 1 .. T.
  future = np.minimum(np.arange(n)[:, None] + np.arange(1, t_steps + 1)[None, :], n - 1)  # [N, T]
  b = np.maximum(query_body, 0)  # [N, K]
  pos_f = xpos[future[:, None, :], b[:, :, None]]  # [N, K, T, 3]
  mat_f = xmat[future[:, None, :], b[:, :, None]]  # [N, K, T, 3, 3]
  points_world = pos_f + np.einsum("nktij,nkj->nkti", mat_f, local)

  # 3. Project into the camera at each future frame; visibility = in front, in view, not occluded.
  centres = np.stack([c.centre for c in cams])[future][:, None]  # [N, 1, T, 3]
  rots = np.stack([c.rotation for c in cams])[future][:, None]  # [N, 1, T, 3, 3]
  p_cam = np.einsum("nktji,nktj->nkti", rots, points_world - centres)
  z = p_cam[..., 2]
  intr = cams[0].intrinsics
  safe_z = np.where(np.abs(z) < 1e-12, 1e-12, z)
  u = (intr[0, 0] * p_cam[..., 0] / safe_z + intr[0, 2]) / width
  v = (intr[1, 1] * p_cam[..., 1] / safe_z + intr[1, 2]) / height
  flow = np.stack([u, v, z], axis=-1)
  visible = query_mask[:, :, None] & (z > Z_NEAR) & (u >= 0) & (u < 1) & (v >= 0) & (v < 1)

  for f in range(n):  # occlusion test: one batch of rays per frame
    sel = np.nonzero(visible & (future[:, None, :] == f))
    if sel[0].size == 0:
      continue
    replayer.set(frames[f])
    target = points_world[sel]
    dirs = (target - cams[f].centre) / z[sel][:, None]  # unit camera-z again
    hit_depth, geom = replayer.cast(cams[f].centre, dirs)
    occluded = (geom >= 0) & (hit_depth < z[sel] - DEPTH_TOLERANCE)
    visible[sel] = ~occluded

  # Invalid queries: keep their grid (u, v) and d = 0 everywhere, fully masked.
  invalid = ~query_mask
  flow[invalid] = query_uvd[invalid][:, None, :]
  return {
      "scene_flow": flow.astype(np.float32),
      "scene_flow_query": query_uvd.astype(np.float32),
      "scene_flow_mask": visible,
      "scene_flow_query_mask": query_mask,
      "query_body": query_body,
      "points_world": points_world,
  }
