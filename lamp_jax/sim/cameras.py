"""Camera models of the MuJoCo scene in the conventions of ``lamp_jax.specs``.

OpenCV camera frame (x right, y down, z forward); intrinsics in pixels for an image of ``height x width``;
extrinsics ``world_from_camera`` (4x4). UVD: u = x_pixel / width, v = y_pixel / height, d = z-depth (m).

MuJoCo cameras look along their local -z with y up, so ``R_opencv = R_mujoco @ diag(1, -1, -1)``; MuJoCo's
``fovy`` is the vertical field of view and pixels are square, so fx = fy = (height / 2) / tan(fovy / 2) and the
principal point is the image centre (pixel ``i`` covers [i, i + 1)).

Viewpoint randomisation (``random_orbit_pose``): a third-person camera keeps looking at the point where its
nominal optical axis meets the table (z = 0), moved by up to ``target_jitter`` m in x / y; its position orbits
that point by a yaw about the vertical of up to ``yaw_deg`` and an elevation change of up to ``pitch_deg``, and
its distance is scaled by a factor in ``distance_scale``; the image x axis stays horizontal (no roll).
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


def look_at_quat(position: np.ndarray, target: np.ndarray) -> np.ndarray:
  """MuJoCo quaternion (w, x, y, z) of a camera at ``position`` looking at ``target`` with a horizontal image x
  axis (MuJoCo camera frame: x right, y up, looking along -z)."""
  forward = np.asarray(target, np.float64) - np.asarray(position, np.float64)
  forward /= np.linalg.norm(forward)
  right = np.cross(forward, [0.0, 0.0, 1.0])
  if np.linalg.norm(right) < 1e-9:
    raise ValueError("look_at_quat: the camera looks straight up or down (its image x axis is undefined)")
  right /= np.linalg.norm(right)
  up = np.cross(right, forward)
  rotation = np.stack([right, up, -forward], axis=1)  # columns: camera x, y, z in world
  quat = np.zeros(4)
  mujoco.mju_mat2Quat(quat, np.ascontiguousarray(rotation).reshape(9))
  return quat


def table_target(position: np.ndarray, quat: np.ndarray) -> np.ndarray:
  """Where the optical axis of a MuJoCo camera (position, quaternion) meets the table plane z = 0."""
  rotation = np.zeros(9)
  mujoco.mju_quat2Mat(rotation, np.asarray(quat, np.float64))
  forward = -rotation.reshape(3, 3)[:, 2]
  if forward[2] >= -1e-9:
    raise ValueError("table_target: the camera does not look down at the table")
  return np.asarray(position, np.float64) + forward * (-position[2] / forward[2])


def random_orbit_pose(position: np.ndarray, quat: np.ndarray, rng: np.random.Generator, *, yaw_deg: float = 25.0,
                      pitch_deg: float = 8.0, distance_scale: tuple[float, float] = (0.9, 1.1),
                      target_jitter: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
  """A random pose (position, MuJoCo quaternion) around a nominal third-person pose (module docstring)."""
  target = table_target(position, quat)
  offset = np.asarray(position, np.float64) - target
  distance = np.linalg.norm(offset)
  yaw = np.arctan2(offset[1], offset[0]) + np.deg2rad(rng.uniform(-yaw_deg, yaw_deg))
  elevation = np.arcsin(offset[2] / distance) + np.deg2rad(rng.uniform(-pitch_deg, pitch_deg))
  elevation = float(np.clip(elevation, np.deg2rad(10.0), np.deg2rad(80.0)))
  distance *= rng.uniform(*distance_scale)
  target = target + np.array([*rng.uniform(-target_jitter, target_jitter, 2), 0.0])
  new_position = target + distance * np.array([np.cos(elevation) * np.cos(yaw), np.cos(elevation) * np.sin(yaw),
                                               np.sin(elevation)])
  return new_position, look_at_quat(new_position, target)


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
