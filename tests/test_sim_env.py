"""Tabletop env: determinism, action contract, camera model vs MuJoCo's renderer."""

import mujoco
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.sim import cameras, experts, scene_flow, tasks
from lamp_jax.sim import env as env_lib


def _rollout(family, seed, image_size=None, steps=None):
  env = env_lib.TabletopEnv(image_size=image_size or 24, render=image_size is not None)
  task = tasks.sample_task(family, seed)
  obs = env.reset(task)
  expert = experts.ScriptedExpert(env, noise=0.003, seed=seed)
  states, images, qpos = [obs["state"]], [obs["image_0"]], [env.data.qpos.copy()]
  done, n = False, 0
  while not done and (steps is None or n < steps):
    obs, _, done, _ = env.step(expert.act())
    states.append(obs["state"])
    images.append(obs["image_0"])
    qpos.append(env.data.qpos.copy())
    n += 1
  return task, np.stack(states), np.stack(images), np.stack(qpos)


def test_same_seed_same_trajectory():
  task_a, states_a, images_a, qpos_a = _rollout("stack", 11, image_size=23, steps=6)
  task_b, states_b, images_b, qpos_b = _rollout("stack", 11, image_size=23, steps=6)
  assert task_a.instruction == task_b.instruction
  np.testing.assert_array_equal(states_a, states_b)
  np.testing.assert_array_equal(qpos_a, qpos_b)
  np.testing.assert_array_equal(images_a, images_b)
  task_c, _, _, qpos_c = _rollout("stack", 12, steps=6)
  assert task_c.object_poses != task_a.object_poses
  assert not np.allclose(qpos_c, qpos_a)


def test_observation_contract():
  env = env_lib.TabletopEnv(image_size=17, render=True, render_depth=True)
  obs = env.reset(tasks.sample_task("push", 3))
  for k in range(3):
    assert obs[f"image_{k}"].shape == (17, 17, 3) and obs[f"image_{k}"].dtype == np.uint8
    assert obs[f"image_{k}"].std() > 0  # a real render, not zeros
  assert obs["depth_0"].shape == (17, 17) and obs["depth_0"].dtype == np.float32
  assert obs["state"].shape == (specs.SIM_STATE_DIM,) and obs["state"].dtype == np.float32
  assert obs["language_instruction"].startswith("push the ")
  np.testing.assert_allclose(obs["state"][:3], env_lib.HOME_TCP, atol=2e-3)  # measured TCP tracks the command
  assert obs["state"][7] == 1.0
  with pytest.raises(ValueError, match="action must be 7"):
    env.step(np.zeros(6))
  assert "image_3" not in obs  # the 'top' camera only when asked for
  with pytest.raises(ValueError, match="unknown camera"):
    env_lib.TabletopEnv(cameras=("ceiling",))


def test_action_moves_tcp_and_is_clipped():
  env = env_lib.TabletopEnv(render=False)
  env.reset(tasks.sample_task("drawer", 0))
  start = env.tcp.copy()
  obs, *_ = env.step(np.array([0.01, -0.02, 0.5, 0, 0, 0.1, 1.0]))
  np.testing.assert_allclose(env.tcp - start, [0.01, -0.02, env_lib.MAX_POS_DELTA], atol=1e-12)
  assert env.rpy[2] == pytest.approx(0.1)
  np.testing.assert_allclose(obs["state"][:3], env.tcp, atol=3e-3)
  assert obs["state"][5] == pytest.approx(0.1, abs=0.01)  # the welded hand lags the command slightly


def test_known_point_projects_to_its_pixel():
  """A cube's top-centre, projected with our camera model, lands on a pixel the renderer labels with that cube."""
  size = 61
  env = env_lib.TabletopEnv(image_size=size, render=True)
  task = tasks.sample_task("stack", 4)
  env.reset(task)
  seg = env.render("front", segmentation=True)
  cam = env.camera("front")
  checked = 0
  for name in task.object_poses:
    top = env.body_pos(name) + np.array([0, 0, env_lib.OBJECT_HALF_HEIGHT[tasks.shape_of(name)]])
    u, v, d = cam.project(top)
    px, py = int(u * size), int(v * size)
    gid = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_GEOM, name)
    assert seg[py, px] == gid, name
    assert d == pytest.approx(np.dot(top - cam.centre, cam.rotation[:, 2]))
    np.testing.assert_allclose(cam.unproject(np.array([u, v, d])), top, atol=1e-9)
    checked += 1
  assert checked == 4


def test_ray_depth_matches_rendered_depth_at_pixel_centres():
  """Intrinsics/extrinsics agree with the renderer: exact ray depth == depth buffer at pixel centres."""
  size = 33
  env = env_lib.TabletopEnv(image_size=size, render=True)
  env.reset(tasks.sample_task("put_on_plate", 2))
  depth = env.render("front", depth=True)
  seg = env.render("front", segmentation=True)
  cam = env.camera("front")
  ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
  uv = np.stack([xs / size, ys / size], -1).reshape(-1, 2)
  replayer = scene_flow.FrameReplayer(env.model)
  replayer.set(env.frame())
  ray_depth, geom = replayer.cast(cam.centre, cam.ray_directions(uv))
  same = geom == seg.reshape(-1)
  assert same.mean() > 0.97
  # Boxes and planes render exactly; compare there (cylinders/capsules are tessellated by the renderer).
  flat = same & (geom >= 0) & np.isin(env.model.geom_type[np.maximum(geom, 0)], [mujoco.mjtGeom.mjGEOM_BOX,
                                                                   mujoco.mjtGeom.mjGEOM_PLANE])
  assert flat.sum() > 0.5 * size * size
  np.testing.assert_allclose(ray_depth[flat], depth.reshape(-1)[flat], rtol=2e-3)


def test_camera_conventions():
  k = cameras.intrinsics_matrix(90.0, 10, 20)
  np.testing.assert_allclose(k, [[5, 0, 10], [0, 5, 5], [0, 0, 1]])
  env = env_lib.TabletopEnv(render=False)
  env.reset(tasks.sample_task("drawer", 1))
  cam = env.camera("front")
  r = cam.rotation
  np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
  assert np.linalg.det(r) == pytest.approx(1.0)
  # OpenCV: z looks at the table (down and towards -x), y points down in the image (world -z component).
  assert r[0, 2] < 0 and r[2, 2] < 0 and r[2, 1] < 0
  # Image right is world +y ('right' in the push instructions).
  assert r[1, 0] > 0.99
