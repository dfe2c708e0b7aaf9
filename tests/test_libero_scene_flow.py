"""lamp_jax.libero.scene_flow on synthetic frames with known rigid motion (numpy only: runs without LIBERO)."""

import numpy as np

from lamp_jax.libero import scene_flow

H = W = 37


def _camera():
  f = 0.5 * H / np.tan(np.deg2rad(45.0) / 2)
  intrinsics = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
  # Camera at (0, 0, 2) looking straight down (OpenCV: z forward = world -z, x right = world x, y down = world -y).
  pose = np.eye(4)
  pose[:3, :3] = np.diag([1.0, -1.0, -1.0])
  pose[:3, 3] = [0.0, 0.0, 2.0]
  return intrinsics, pose


def test_project_unproject_round_trip():
  intrinsics, pose = _camera()
  rng = np.random.default_rng(0)
  points = rng.uniform([-0.3, -0.3, -0.2], [0.3, 0.3, 0.4], size=(17, 3))
  uvd = scene_flow.project(points, intrinsics, pose, H, W)
  np.testing.assert_allclose(uvd[:, 2], 2.0 - points[:, 2])
  np.testing.assert_allclose(scene_flow.unproject(uvd, intrinsics, pose, H, W), points, atol=1e-12)


def test_rigid_translation_and_occlusion():
  """A floor (body 0, depth 2) and a box top (body 1) at depth 1.5 sliding +x; an occluder appears at the end."""
  intrinsics, pose = _camera()
  n, k, t = 5, 9, 3
  bodies = 2
  body_pos = np.zeros((n, bodies, 3))
  body_pos[:, 1, 0] = 0.05 * np.arange(n)  # body 1 moves 5 cm per step along world x
  body_mat = np.tile(np.eye(3), (n, bodies, 1, 1))
  depth = np.full((n, H, W), 2.0)
  seg = np.zeros((n, H, W), int)  # geom 0 = floor (body 0), geom 1 = box top (body 1)
  seg[:, :, W // 3: 2 * W // 3] = 1  # the box covers the middle column band at every step (coarse)
  depth[:, :, W // 3: 2 * W // 3] = 1.5
  depth[-1] = 0.5  # an occluder right in front of the camera at the last step
  geom_body = np.array([0, 1])
  out = scene_flow.compute(depth, seg, body_pos, body_mat, geom_body, intrinsics, pose, k, t)
  assert out["scene_flow"].shape == (n, k, t, 3) and out["scene_flow_mask"].shape == (n, k, t)
  assert out["scene_flow_query_mask"].all()
  query = out["scene_flow_query"]
  points = scene_flow.unproject(query[0], intrinsics, pose, H, W)
  # Grid points in the middle column are on body 1: after s steps they moved by 0.05 * s in x.
  on_box = np.array([1, 4, 7])
  expected = scene_flow.project(points[on_box][:, None, :] + np.array([0.05, 0, 0]) * np.arange(1, t + 1)[:, None],
                                intrinsics, pose, H, W)
  np.testing.assert_allclose(out["scene_flow"][0, on_box], expected, atol=1e-5)
  # Static floor points stay put.
  floor = np.array([0, 3, 6])
  np.testing.assert_allclose(out["scene_flow"][0, floor], np.repeat(query[0, floor][:, None], t, axis=1), atol=1e-5)
  # Past the last frame the last frame is held, and at the last frame (occluder at 0.5 m) nothing is visible.
  np.testing.assert_allclose(out["scene_flow"][n - 2, :, 1], out["scene_flow"][n - 2, :, 2])
  assert not out["scene_flow_mask"][n - 2, :, 0].any()
  assert out["scene_flow_mask"][0, floor].all()
