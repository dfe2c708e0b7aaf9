"""Camera models of the MuJoCo scene in the conventions of ``lamp_jax.specs``.

OpenCV camera frame (x right, y down, z forward); intrinsics in pixels for an image of ``height x width``;
extrinsics ``world_from_camera`` (4x4). UVD: u = x_pixel / width, v = y_pixel / height, d = z-depth (m).

MuJoCo cameras look along their local -z with y up, so ``R_opencv = R_mujoco @ diag(1, -1, -1)``; MuJoCo's
``fovy`` is the vertical field of view and pixels are square, so fx = fy = (height / 2) / tan(fovy / 2) and the
principal point is the image centre (pixel ``i`` covers [i, i + 1)).
"""

from __future__ import annotations

import dataclasses

import mujoco
import numpy as np

_MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


@dataclasses.dataclass(frozen=True)
class PinholeCamera:
  """A posed pinhole camera. ``intrinsics`` float64[3, 3] (pixels); ``world_from_camera`` float64[4, 4]."""

  intrinsics: np.ndarray
  world_from_camera: np.ndarray
  height: int
  width: int

  @property
  def centre(self) -> np.ndarray:
    return self.world_from_camera[:3, 3]

  @property
  def rotation(self) -> np.ndarray:
    """world_from_camera rotation float64[3, 3] (columns: camera x, y, z axes in world)."""
    return self.world_from_camera[:3, :3]

  def project(self, points_world: np.ndarray) -> np.ndarray:
    """World points float[..., 3] -> UVD float64[..., 3] (normalised u, v; metric z-depth)."""
    p_cam = (np.asarray(points_world, np.float64) - self.centre) @ self.rotation
    z = p_cam[..., 2]
    safe_z = np.where(np.abs(z) < 1e-12, 1e-12, z)
    k = self.intrinsics
    u = (k[0, 0] * p_cam[..., 0] / safe_z + k[0, 2]) / self.width
    v = (k[1, 1] * p_cam[..., 1] / safe_z + k[1, 2]) / self.height
    return np.stack([u, v, z], axis=-1)

  def ray_directions(self, uv: np.ndarray) -> np.ndarray:
    """Normalised (u, v) float[..., 2] -> world ray directions float64[..., 3] with unit camera-z component.

    ``centre + d * direction`` is the point at z-depth ``d`` on the pixel ray, so ray-cast distances along these
    directions are z-depths.
    """
    uv = np.asarray(uv, np.float64)
    k = self.intrinsics
    x = (uv[..., 0] * self.width - k[0, 2]) / k[0, 0]
    y = (uv[..., 1] * self.height - k[1, 2]) / k[1, 1]
    d_cam = np.stack([x, y, np.ones_like(x)], axis=-1)
    return d_cam @ self.rotation.T

  def unproject(self, uvd: np.ndarray) -> np.ndarray:
    """UVD float[..., 3] -> world points float64[..., 3]."""
    uvd = np.asarray(uvd, np.float64)
    return self.centre + uvd[..., 2:3] * self.ray_directions(uvd[..., :2])


def intrinsics_matrix(fovy_deg: float, height: int, width: int) -> np.ndarray:
  """float64[3, 3] pinhole intrinsics of a MuJoCo camera rendered at ``height x width``."""
  f = 0.5 * height / np.tan(np.deg2rad(fovy_deg) / 2.0)
  return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def camera_from_data(model: mujoco.MjModel, data: mujoco.MjData, name: str, height: int,
                     width: int) -> PinholeCamera:
  """The current pose of MuJoCo camera ``name`` (needs kinematics computed in ``data``)."""
  cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
  if cam_id < 0:
    raise ValueError(f"camera '{name}' is not in the MuJoCo model")
  world_from_camera = np.eye(4)
  world_from_camera[:3, :3] = data.cam_xmat[cam_id].reshape(3, 3) @ _MUJOCO_TO_OPENCV
  world_from_camera[:3, 3] = data.cam_xpos[cam_id]
  return PinholeCamera(intrinsics_matrix(float(model.cam_fovy[cam_id]), height, width), world_from_camera,
                       height, width)
