"""Viewpoint variation in the simulator: random third-person camera poses per episode (fixed within it), the 'top'
camera, per-step intrinsics / extrinsics that project world points where they render, and the generator flags."""

import mujoco
import numpy as np
import pytest

from lamp_jax.sim import cameras, generate, rlds_export, tasks
from lamp_jax.sim import env as env_lib

SIZE = 41


def test_look_at_reproduces_the_nominal_cameras_and_orbits_stay_aimed():
  model = env_lib.TabletopEnv(render=False).model
  for name in env_lib.THIRD_PERSON_CAMERAS:
    i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
    target = cameras.table_target(model.cam_pos[i], model.cam_quat[i])
    assert abs(target[2]) < 1e-9 and np.all(np.abs(target[:2]) < 0.15)  # aimed at the table's middle
    quat = cameras.look_at_quat(model.cam_pos[i], target)
    np.testing.assert_allclose(np.abs(quat @ model.cam_quat[i]), 1.0, atol=1e-6)  # same rotation
    rng = np.random.default_rng(0)
    for _ in range(5):
      position, q = cameras.random_orbit_pose(model.cam_pos[i], model.cam_quat[i], rng)
      new_target = cameras.table_target(position, q)
      assert np.linalg.norm(new_target[:2] - target[:2]) <= 0.03 * np.sqrt(2) + 1e-9
      assert position[2] > 0.2 and not np.allclose(position, model.cam_pos[i])


def test_poses_are_drawn_from_the_episode_seed():
  env = env_lib.TabletopEnv(render=False)
  a, b, a_again = env.camera_poses(3), env.camera_poses(4), env.camera_poses(3)
  nominal = env.camera_poses(None)
  for name in env_lib.THIRD_PERSON_CAMERAS:
    np.testing.assert_array_equal(a[name][0], a_again[name][0])
    assert not np.allclose(a[name][0], b[name][0]) and not np.allclose(a[name][0], nominal[name][0])
  with pytest.raises(ValueError, match="only .* are fixed to the world"):
    env.set_camera_poses({"wrist": nominal["front"]})


@pytest.fixture(scope="module")
def episodes():
  """Two recorded episodes with random viewpoints, the 'top' camera and per-step camera parameters, plus the
  environment (its cameras left at the second episode's poses)."""
  env = env_lib.TabletopEnv(image_size=SIZE, cameras=("front", "side", "wrist", "top"))
  recorded = [rlds_export.record_episode(env, "tabletop4", "stack", seed, 4, 2, randomize_cameras=True,
                                         camera_params_per_step=True) for seed in (5, 6)]
  yield env, recorded
  env.close()


def test_third_person_poses_differ_across_episodes_and_stay_fixed_within_one(episodes):
  env, (first, second) = episodes
  for k, name in enumerate(env_lib.CAMERA_NAMES):
    poses = np.stack([s[f"camera_extrinsics_{k}"] for s in first["steps"]])
    np.testing.assert_allclose(poses[0], first["episode_metadata"][f"camera_extrinsics_{k}"])
    if name in env_lib.THIRD_PERSON_CAMERAS:
      np.testing.assert_array_equal(poses, np.broadcast_to(poses[0], poses.shape))  # fixed within the episode
      assert not np.allclose(poses[0], second["steps"][0][f"camera_extrinsics_{k}"], atol=1e-3)
    else:  # the wrist camera moves with the hand
      assert np.abs(poses - poses[0]).max() > 1e-2
    k_first = first["steps"][0][f"camera_intrinsics_{k}"]
    np.testing.assert_array_equal(k_first, first["steps"][-1][f"camera_intrinsics_{k}"])
  assert first["steps"][0]["observation"]["image_3"].shape == (SIZE, SIZE, 3)
  assert first["episode_metadata"]["has_image_3"]
  # Nominal poses come back when an episode is recorded without randomisation.
  plain = rlds_export.record_episode(env, "tabletop4", "push", 5, 4, 2)
  fresh = env_lib.TabletopEnv(render=False)
  fresh.set_camera_poses(fresh.camera_poses(None))  # computes the camera frames of the MJCF poses
  nominal = cameras.camera_from_data(fresh.model, fresh.data, "front", SIZE, SIZE).world_from_camera
  np.testing.assert_allclose(plain["episode_metadata"]["camera_extrinsics_0"], nominal, atol=1e-6)
  assert "camera_extrinsics_0" not in plain["steps"][0]


def test_recorded_cameras_project_a_known_point_where_it_renders(episodes):
  """With the second episode's random poses set, each object's top centre, projected with the *recorded*
  intrinsics / extrinsics of every third-person camera, lands on a pixel the renderer labels with that object."""
  env, (_, second) = episodes
  env.set_camera_poses(env.camera_poses(6))
  task = tasks.sample_task("stack", 6)
  env.reset(task)  # the same initial scene as the recorded episode's first step
  meta = second["episode_metadata"]
  checked = 0
  for k, name in enumerate(env_lib.CAMERA_NAMES):
    if name not in env_lib.THIRD_PERSON_CAMERAS:
      continue
    cam = cameras.PinholeCamera(meta[f"camera_intrinsics_{k}"].astype(np.float64),
                                meta[f"camera_extrinsics_{k}"].astype(np.float64), SIZE, SIZE)
    seg = env.render(name, segmentation=True)
    for obj in task.object_poses:
      top = env.body_pos(obj) + np.array([0, 0, env_lib.OBJECT_HALF_HEIGHT[tasks.shape_of(obj)]])
      u, v, depth = cam.project(top)
      assert 0 < u < 1 and 0 < v < 1 and depth > 0, (name, obj)
      gid = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_GEOM, obj)
      px, py = int(u * SIZE), int(v * SIZE)
      window = seg[max(py - 1, 0):py + 2, max(px - 1, 0):px + 2]  # a float32 pose: allow a pixel
      assert np.any(window == gid), (name, obj)
      checked += 1
  assert checked == 3 * len(task.object_poses)


def test_generate_flags_write_the_multi_view_layout(tmp_path):
  import tensorflow_datasets as tfds

  generate.main(["--suite=push", "--episodes=2", f"--out={tmp_path}", "--image-size=16", "--num-points=4",
                 "--flow-steps=2", "--workers=1", "--seed=1", "--randomize-cameras", "--cameras=front,side,top"])
  builder = tfds.builder_from_directory(str(tmp_path / "lamp_sim_push" / "1.0.0"))
  episodes = list(tfds.as_numpy(builder.as_dataset(split="train")))
  assert len(episodes) == 2
  fronts = []
  for episode in episodes:
    meta = episode["episode_metadata"]
    assert meta["has_image_3"] and not meta["has_image_2"]  # no wrist camera asked for
    steps = list(episode["steps"])
    assert steps[0]["observation"]["image_3"].shape == (16, 16, 3) and steps[0]["observation"]["image_3"].std() > 0
    assert steps[0]["camera_extrinsics_3"].shape == (4, 4)
    fronts.append(steps[0]["camera_extrinsics_0"])
  assert not np.allclose(fronts[0], fronts[1], atol=1e-3)
  with pytest.raises(SystemExit):
    generate.parse_args(["--out=/tmp/x", "--cameras=front,ceiling"])
