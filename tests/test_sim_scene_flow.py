"""Scene-flow labels are exact: unprojection, rigid tracking with live body poses, static points, occlusion."""

import copy

import numpy as np
import pytest

from lamp_jax import flow_image, specs
from lamp_jax.sim import env as env_lib
from lamp_jax.sim import experts, optical_flow, scene_flow, tasks

SIZE = 63  # 9 x 9 grid cells of 7 pixels: grid points fall on pixel centres
K = 81
T = 5


@pytest.fixture(scope="module")
def episode():
  """An expert pick-and-place episode with live body poses and per-step renders of the reference camera."""
  env = env_lib.TabletopEnv(image_size=SIZE, render=False)
  task = tasks.sample_task("put_on_plate", 5)
  env.reset(task)
  expert = experts.ScriptedExpert(env)
  frames, xpos, xmat, seg, depth = [], [], [], [], []

  def record():
    frames.append(env.frame())
    xpos.append(env.data.xpos.copy())
    xmat.append(env.data.xmat.reshape(-1, 3, 3).copy())
    s, d = env.render_many([("front", "segmentation"), ("front", "depth")])
    seg.append(s)
    depth.append(d)

  record()
  done = False
  while not done:
    _, _, done, info = env.step(expert.act())
    record()
  assert info["success"]
  flow = scene_flow.compute_scene_flow(env.model, frames, K, T, image_size=(SIZE, SIZE))
  cam = env.camera("front")
  yield dict(env=env, task=task, frames=frames, xpos=np.stack(xpos), xmat=np.stack(xmat), seg=np.stack(seg),
             depth=np.stack(depth), flow=flow, cam=cam)
  env.close()


def test_shapes_and_query_grid(episode):
  flow, n = episode["flow"], len(episode["frames"])
  assert flow["scene_flow"].shape == (n, K, T, 3) and flow["scene_flow"].dtype == np.float32
  assert flow["scene_flow_query"].shape == (n, K, 3)
  assert flow["scene_flow_mask"].shape == (n, K, T) and flow["scene_flow_mask"].dtype == bool
  assert flow["scene_flow_query_mask"].shape == (n, K)
  np.testing.assert_array_equal(flow["scene_flow_query"][..., :2],
                                np.broadcast_to(specs.grid_query_uv(K), (n, K, 2)))
  assert flow["scene_flow_query_mask"].mean() > 0.9


def test_query_depth_matches_rendered_depth(episode):
  """Grid points sit on pixel centres, where the rendered z-buffer must agree with the exact ray depth."""
  flow = episode["flow"]
  px = np.floor(specs.grid_query_uv(K) * SIZE).astype(int)
  rendered = episode["depth"][:, px[:, 1], px[:, 0]]
  exact = flow["scene_flow_query"][..., 2]
  ok = flow["scene_flow_query_mask"]
  rel = np.abs(rendered[ok] - exact[ok]) / exact[ok]
  assert np.median(rel) < 1e-3
  assert np.mean(rel < 5e-3) > 0.95  # cylinders / capsules are tessellated in the render


def test_unprojected_uvd_gives_tracked_points(episode):
  flow, cam = episode["flow"], episode["cam"]
  valid = flow["scene_flow_query_mask"][:, :, None] & (flow["scene_flow"][..., 2] > scene_flow.Z_NEAR)
  world = cam.unproject(flow["scene_flow"])
  err = np.abs(world - flow["points_world"])[valid]
  assert err.max() <= 1e-5
  query_world = cam.unproject(flow["scene_flow_query"])
  ok = flow["scene_flow_query_mask"]
  # The query point moved zero steps: tracking it to the same frame is the identity.
  np.testing.assert_allclose(cam.project(query_world)[ok][:, :2], specs.grid_query_uv(K)[np.nonzero(ok)[1]],
                             atol=1e-6)


def test_tracks_follow_live_body_poses(episode):
  """Independent check against the poses the live simulation produced (not the replay)."""
  flow, cam = episode["flow"], episode["cam"]
  xpos, xmat = episode["xpos"], episode["xmat"]
  n = xpos.shape[0]
  body = flow["query_body"]
  p0 = cam.unproject(flow["scene_flow_query"].astype(np.float64))
  moving = 0
  for t in range(n):
    for k in np.nonzero(flow["scene_flow_query_mask"][t])[0]:
      b = body[t, k]
      local = xmat[t, b].T @ (p0[t, k] - xpos[t, b])
      for s in range(T):
        f = min(t + s + 1, n - 1)
        expected = xpos[f, b] + xmat[f, b] @ local
        np.testing.assert_allclose(flow["points_world"][t, k, s], expected, atol=2e-5)
        moving += int(np.linalg.norm(expected - p0[t, k]) > 1e-3)
  assert moving > 50  # the test covers moving points (robot and the carried object), not just static ones


def test_static_points_have_zero_flow(episode):
  flow, env = episode["flow"], episode["env"]
  static = [env.body_id(n) for n in ("world", "table", "robot_base", "cabinet")]
  is_static = np.isin(flow["query_body"], static)
  assert is_static.sum() > 100
  diff = flow["scene_flow"] - flow["scene_flow_query"][:, :, None, :]
  assert np.abs(diff[is_static]).max() < 1e-6
  dynamic = ~is_static & flow["scene_flow_query_mask"]
  assert dynamic.any() and np.abs(diff[dynamic]).max() > 0.01  # while robot / object points do move


def test_visibility_agrees_with_rendered_segmentation(episode):
  """Visible points land on a pixel that shows their own body at that future step; occluded ones do not."""
  flow, env, seg = episode["flow"], episode["env"], episode["seg"]
  n = seg.shape[0]
  future = np.minimum(np.arange(n)[:, None] + np.arange(1, T + 1)[None], n - 1)
  uv = flow["scene_flow"][..., :2]
  inside = np.all((uv >= 0) & (uv < 1), axis=-1) & flow["scene_flow_query_mask"][:, :, None]
  px = np.clip(np.floor(uv * SIZE).astype(int), 0, SIZE - 1)
  f_idx = np.broadcast_to(future[:, None, :], px.shape[:-1])
  seg_geom = seg[f_idx, px[..., 1], px[..., 0]]
  seg_body = np.where(seg_geom >= 0, env.model.geom_bodyid[np.maximum(seg_geom, 0)], -1)
  own = seg_body == flow["query_body"][:, :, None]
  visible = flow["scene_flow_mask"]
  occluded = inside & ~visible
  assert visible.sum() > 1000 and occluded.sum() > 20
  assert own[visible].mean() > 0.95
  assert (~own[occluded]).mean() > 0.8


def test_occluded_and_out_of_view_points_are_masked():
  env = env_lib.TabletopEnv(render=False)
  task = tasks.sample_task("put_on_plate", 1)
  env.reset(task)
  frame_a = env.frame()
  cam = env.camera("front")
  k_points = 196
  base = scene_flow.compute_scene_flow(env.model, [frame_a, frame_a], k_points, 1)
  table = env.body_id("table")
  table_ks = np.nonzero(base["query_body"][0] == table)[0]
  assert base["scene_flow_mask"][0, table_ks, 0].all()
  # Frame B: put a free cube on the camera ray of one table point, half-way; move another object far away.
  k_hidden = int(table_ks[len(table_ks) // 2])
  point = cam.unproject(base["scene_flow_query"][0, k_hidden].astype(np.float64))
  blocker = [c for c in tasks.CUBES if c not in task.object_poses][0]  # a parked cube
  frame_b = copy.deepcopy(frame_a)
  adr = env._obj_qadr[blocker]  # pylint: disable=protected-access
  frame_b.qpos[adr:adr + 3] = 0.5 * (cam.centre + point)
  leaving = task.params["receptacle"]  # a plate: large enough to hold several grid points
  leaving_ks = np.nonzero(base["query_body"][0] == env.body_id(leaving))[0]
  assert leaving_ks.size > 0
  adr = env._obj_qadr[leaving]  # pylint: disable=protected-access
  frame_b.qpos[adr:adr + 3] = [0.0, 3.0, 0.02]  # far outside the camera's field of view
  flow = scene_flow.compute_scene_flow(env.model, [frame_a, frame_b], k_points, 3)
  mask = flow["scene_flow_mask"][0]
  assert not mask[k_hidden].any()  # occluded at step 1 and held afterwards
  others = [k for k in table_ks if k != k_hidden]
  assert mask[others].mean() > 0.8  # the blocker hides only a few neighbours
  uv = flow["scene_flow"][0, leaving_ks, 0, :2]
  assert np.any((uv < 0) | (uv > 1), axis=-1).all() and not mask[leaving_ks].any()
  # Past the last frame the last frame is held.
  np.testing.assert_array_equal(flow["scene_flow"][0, :, 1], flow["scene_flow"][0, :, 2])


def test_optical_flow_matches_scene_flow_and_encodes_flow_images():
  env = env_lib.TabletopEnv(render=False)
  env.reset(tasks.sample_task("drawer", 2))
  frames = [env.frame()]
  for _ in range(2):
    env.step(np.array([0.04, 0.0, -0.03, 0, 0, 0, 1.0]))
    frames.append(env.frame())
  size = 30  # a 10 x 10 grid has 3-pixel cells: every grid point is a pixel centre
  dense = optical_flow.dense_flow(env.model, frames[0], frames[2], "front", size, size)
  assert dense.shape == (size, size, 2)
  sf = scene_flow.compute_scene_flow(env.model, frames, 100, 2, image_size=(size, size))
  uv = specs.grid_query_uv(100)
  px = np.floor(uv * size).astype(int)
  np.testing.assert_allclose(uv * size - px, 0.5, atol=1e-5)
  ok = sf["scene_flow_query_mask"][0]
  expected = (sf["scene_flow"][0, :, 1, :2] - uv) * size  # step t+2
  np.testing.assert_allclose(dense[px[ok, 1], px[ok, 0]], expected[ok], atol=1e-3)
  assert np.abs(dense).max() > 0.5  # the hand moved
  # The episode's flow images are the shared encoding (lamp_jax.flow_image) of exactly this flow.
  images = optical_flow.flow_images(env.model, frames, 2, "front", size, size, max_magnitude=0.25 * size)
  assert images.dtype == np.uint8 and images.shape == (3, size, size, 3)
  np.testing.assert_array_equal(images[0], flow_image.flow_to_rgb(dense, 0.25 * size))
  np.testing.assert_array_equal(images[2], 255)  # the last frame's flow is to itself: zero flow is white
  np.testing.assert_array_equal(images[0][np.hypot(dense[..., 0], dense[..., 1]) == 0], 255)
  # Decoding recovers the exact flow up to quantisation where it is below max_magnitude.
  inside = np.hypot(dense[..., 0], dense[..., 1]) < 0.25 * size
  decoded = flow_image.rgb_to_flow(images[0], 0.25 * size)
  assert np.abs(decoded - dense)[inside].max() <= 1.2 * 0.25 * size / 255
  # The default normaliser is the paper's 64 px at 224 px width, scaled to this width.
  np.testing.assert_array_equal(optical_flow.flow_images(env.model, frames[:1] + frames[2:], 1, "front", size, size)[0],
                                flow_image.flow_to_rgb(dense, 64.0 * size / 224))
