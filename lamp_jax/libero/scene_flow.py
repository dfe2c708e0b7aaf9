"""Exact 3D scene flow in LIBERO's agentview camera from rendered depth + geom segmentation and body poses.

For every query step t, the K grid points of ``specs.grid_query_uv`` are looked up in the depth and segmentation
images of step t: the depth gives the 3D point (unprojection, z-depth in metres), the segmentation the geom and
hence the MuJoCo body the point lies on. Each point is carried rigidly with its body's pose to steps t+1 .. t+T
(the last frame is held past the end), projected into the camera (UVD, ``lamp_jax.specs`` convention) and marked
visible when it is in front of the camera, inside the image and not occluded: its depth is at most
``DEPTH_TOLERANCE`` behind the rendered depth at its pixel of that step. Pixels on no geom (background) give
``scene_flow_query_mask`` False.

Images are used upright (the OpenGL read-out flipped vertically: ``raw[::-1]``), so (u, v) are the OpenCV
pinhole coordinates of the real camera; ``camera_intrinsics`` / ``camera_extrinsics`` describe that camera.

Shapes: N frames · K points · T future steps · B bodies.
"""

from __future__ import annotations

import numpy as np

from lamp_jax import specs

DEPTH_TOLERANCE = 0.01  # m
_MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def camera_matrices(model, data, camera: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """(intrinsics float64[3, 3] in pixels, world_from_camera float64[4, 4] with OpenCV axes)."""
  import mujoco  # pylint: disable=g-import-not-at-top

  cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
  if cam_id < 0:
    raise ValueError(f"camera {camera!r} is not in the MuJoCo model")
  f = 0.5 * height / np.tan(np.deg2rad(float(model.cam_fovy[cam_id])) / 2.0)
  intrinsics = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
  pose = np.eye(4)
  pose[:3, :3] = data.cam_xmat[cam_id].reshape(3, 3) @ _MUJOCO_TO_OPENCV
  pose[:3, 3] = data.cam_xpos[cam_id]
  return intrinsics, pose


def project(points: np.ndarray, intrinsics: np.ndarray, world_from_camera: np.ndarray,
            height: int, width: int) -> np.ndarray:
  """World points float[..., 3] -> UVD float64[..., 3] (normalised u, v; metric z-depth)."""
  rot, centre = world_from_camera[:3, :3], world_from_camera[:3, 3]
  cam = (np.asarray(points, np.float64) - centre) @ rot  # camera-frame coordinates
  z = cam[..., 2]
  safe = np.where(np.abs(z) < 1e-9, 1e-9, z)
  u = (intrinsics[0, 0] * cam[..., 0] / safe + intrinsics[0, 2]) / width
  v = (intrinsics[1, 1] * cam[..., 1] / safe + intrinsics[1, 2]) / height
  return np.stack([u, v, z], axis=-1)


def unproject(uvd: np.ndarray, intrinsics: np.ndarray, world_from_camera: np.ndarray, height: int,
              width: int) -> np.ndarray:
  """UVD float[..., 3] -> world points float64[..., 3]."""
  uvd = np.asarray(uvd, np.float64)
  x = (uvd[..., 0] * width - intrinsics[0, 2]) / intrinsics[0, 0] * uvd[..., 2]
  y = (uvd[..., 1] * height - intrinsics[1, 2]) / intrinsics[1, 1] * uvd[..., 2]
  cam = np.stack([x, y, uvd[..., 2]], axis=-1)
  return cam @ world_from_camera[:3, :3].T + world_from_camera[:3, 3]


def compute(depth: np.ndarray, geom_seg: np.ndarray, body_pos: np.ndarray, body_mat: np.ndarray,
            geom_body: np.ndarray, intrinsics: np.ndarray, world_from_camera: np.ndarray, num_points: int,
            horizon: int) -> dict[str, np.ndarray]:
  """Scene flow of the query grid for every frame.

  Args:
    depth: float[N, H, W] metric z-depth of the upright agentview image.
    geom_seg: int[N, H, W] geom id per pixel (-1: background).
    body_pos, body_mat: float[N, B, 3], float[N, B, 3, 3] world poses of every body.
    geom_body: int[G] body of each geom.
    intrinsics, world_from_camera: the (static) agentview camera.
  Returns:
    scene_flow float32[N, K, T, 3], scene_flow_query float32[N, K, 3], scene_flow_mask bool[N, K, T],
    scene_flow_query_mask bool[N, K].
  """
  n, height, width = depth.shape
  uv = specs.grid_query_uv(num_points).astype(np.float64)  # [K, 2]
  cols = np.clip(np.floor(uv[:, 0] * width).astype(int), 0, width - 1)
  rows = np.clip(np.floor(uv[:, 1] * height).astype(int), 0, height - 1)
  d_query = depth[:, rows, cols]  # [N, K]
  g_query = geom_seg[:, rows, cols]
  query_ok = (g_query >= 0) & np.isfinite(d_query) & (d_query > 0)
  uvd_query = np.concatenate([np.broadcast_to(uv, (n, num_points, 2)), np.where(query_ok, d_query, 0.0)[..., None]],
                             axis=-1)
  points = unproject(uvd_query, intrinsics, world_from_camera, height, width)  # [N, K, 3]
  bodies = np.where(query_ok, geom_body[np.clip(g_query, 0, len(geom_body) - 1)], 0)  # [N, K]
  steps = np.minimum(np.arange(n)[:, None] + np.arange(1, horizon + 1)[None], n - 1)  # [N, T]
  frame_idx = np.arange(n)[:, None]
  # Body frame coordinates at the query step, then world at the future steps.
  r0 = body_mat[frame_idx, bodies]  # [N, K, 3, 3]
  p0 = body_pos[frame_idx, bodies]  # [N, K, 3]
  local = np.einsum("nkji,nkj->nki", r0, points - p0)
  rt = body_mat[steps[:, None, :], bodies[:, :, None]]  # [N, K, T, 3, 3]
  pt = body_pos[steps[:, None, :], bodies[:, :, None]]  # [N, K, T, 3]
  future = np.einsum("nktij,nkj->nkti", rt, local) + pt
  uvd = project(future, intrinsics, world_from_camera, height, width)  # [N, K, T, 3]
  inside = (uvd[..., 2] > 1e-3) & (uvd[..., 0] >= 0) & (uvd[..., 0] < 1) & (uvd[..., 1] >= 0) & (uvd[..., 1] < 1)
  c = np.clip(np.floor(uvd[..., 0] * width).astype(int), 0, width - 1)
  r = np.clip(np.floor(uvd[..., 1] * height).astype(int), 0, height - 1)
  rendered = depth[steps[:, None, :], r, c]  # [N, K, T]
  visible = inside & (uvd[..., 2] <= rendered + DEPTH_TOLERANCE) & query_ok[..., None]
  uvd = np.where(query_ok[..., None, None], uvd, 0.0)
  return {"scene_flow": uvd.astype(np.float32), "scene_flow_query": uvd_query.astype(np.float32),
          "scene_flow_mask": visible, "scene_flow_query_mask": query_ok}
