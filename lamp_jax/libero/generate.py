r"""Scripted LIBERO demonstrations, in two resumable stages (run in the LIBERO environment).

  libero-run python -m lamp_jax.libero.generate --suite=libero_spatial --out=/data/libero_demos \
      --episodes-per-task=50 --resolution=128 [--stage=all|record|render] [--tasks=0,3]

Stage ``record`` (no rendering): for demonstration ``i`` of task ``j`` the scene is reset with seed
``--seed + 1000 * j + i`` — LIBERO samples the objects' placements from the task's BDDL regions, so these initial
states are drawn from the task's distribution and are checked to differ from all 50 fixed evaluation states —
then LIBERO's wait steps (10 no-ops), then the scripted expert (``lamp_jax.libero.experts``) until success or the
suite's episode length. Actions and flattened simulator states are saved to
``<out>/<suite>/record/task<j>_ep<i>.npz`` (failures too, flagged, so a resumed run does not redo them).

Stage ``render``: every successful recording is replayed state by state in an off-screen env (replaying states
reproduces the episode exactly) to render agentview + wrist RGB at ``--resolution``² and the agentview's depth and
geom segmentation, from which exact scene flow (``lamp_jax.libero.scene_flow``) is computed. The result,
``<out>/<suite>/render/task<j>_ep<i>.npz``, holds one RLDS episode in the ``lamp_sim`` layout of
``lamp_jax/specs.py`` (``lamp_jax.libero.rlds_export`` turns the directory into a tfds dataset in our JAX
environment): image_0 agentview, image_1 absent (zeros), image_2 wrist, all upright; state float32[8]; action
float32[7] = LIBERO's controller input (Δpos, Δaxis-angle in [-1, 1]) with the gripper in [0, 1] (1 = open).

Files are written atomically (temporary name + rename): a killed run resumes where it stopped. ``--workers``
processes split the episode list (the default 1).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

import numpy as np

from lamp_jax.libero import envs as envs_lib

AGENTVIEW, WRIST = "agentview", "robot0_eye_in_hand"
SEED_STRIDE = 1000


def _save_npz(path: str, **arrays) -> None:
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def demo_seed(base: int, task_id: int, index: int) -> int:
  return base + SEED_STRIDE * task_id + index


def record_episode(env, suite_name: str, eval_states: np.ndarray, seed: int, noise: float) -> dict:
  """One scripted demonstration from a sampled initial state. Returns arrays for the record file."""
  from lamp_jax.libero import experts  # pylint: disable=g-import-not-at-top

  np.random.seed(seed)
  env.seed(seed)
  env.reset()
  init_state = env.get_sim_state().copy()
  if len(eval_states) and np.min(np.max(np.abs(eval_states[:, :len(init_state)] - init_state), axis=1)) < 1e-6:
    raise RuntimeError(f"seed {seed} reproduced a fixed evaluation initial state")
  for _ in range(envs_lib.NUM_WAIT_STEPS):
    env.step(envs_lib.DUMMY_ACTION)
  expert = experts.LiberoExpert(env, noise=noise, seed=seed)
  states, actions, success = [env.get_sim_state().copy()], [], False
  for _ in range(envs_lib.max_steps(suite_name)):
    action = expert.act()
    env.step(action)
    actions.append(action)
    states.append(env.get_sim_state().copy())
    if env.check_success():
      success = True
      break
  return {"states": np.asarray(states), "actions": np.asarray(actions, np.float64), "success": np.bool_(success),
          "seed": np.int64(seed), "init_state": init_state}


def _depth_to_metric(model, depth: np.ndarray) -> np.ndarray:
  extent = float(model.stat.extent)
  near, far = float(model.vis.map.znear) * extent, float(model.vis.map.zfar) * extent
  return near / (1.0 - depth * (1.0 - near / far))


def render_episode(env, record: dict, instruction: str, num_points: int, horizon: int) -> dict:
  """Replays a recording to images, proprio and scene flow (one RLDS episode as numpy arrays)."""
  from lamp_jax.libero import scene_flow  # pylint: disable=g-import-not-at-top

  states, actions = record["states"], record["actions"]
  env.reset()  # (robosuite's hard reset builds a new simulator: read model / data after it)
  inner = env.env
  model, data = inner.sim.model._model, inner.sim.data._data  # pylint: disable=protected-access
  rgb0, rgb2, depth, seg, body_pos, body_mat, proprio = [], [], [], [], [], [], []
  command = -1.0
  for t, state in enumerate(states):
    obs = env.regenerate_obs_from_state(state)
    rgb0.append(obs[f"{AGENTVIEW}_image"][::-1])
    rgb2.append(obs[f"{WRIST}_image"][::-1])
    depth.append(_depth_to_metric(model, obs[f"{AGENTVIEW}_depth"][::-1, :, 0]))
    seg.append(obs[f"{AGENTVIEW}_segmentation_element"][::-1, :, 0])
    body_pos.append(data.xpos.copy())
    body_mat.append(data.xmat.reshape(-1, 3, 3).copy())
    proprio.append(envs_lib.proprio_state(obs, command))
    if t < len(actions):
      command = float(actions[t][6])
  height, width = rgb0[0].shape[:2]
  intrinsics, pose = scene_flow.camera_matrices(model, data, AGENTVIEW, height, width)
  wrist_k, wrist_pose = scene_flow.camera_matrices(model, data, WRIST, height, width)
  flow = scene_flow.compute(np.asarray(depth), np.asarray(seg), np.asarray(body_pos), np.asarray(body_mat),
                            np.asarray(model.geom_bodyid), intrinsics, pose, num_points, horizon)
  m = len(actions)  # RLDS step t: observation o_t, action a_t; o_m (after the last action) only feeds the flow
  spec_actions = np.asarray(actions, np.float32).copy()
  spec_actions[:, 6] = (1.0 - spec_actions[:, 6]) / 2.0
  return {
      "image_0": np.asarray(rgb0[:m], np.uint8), "image_2": np.asarray(rgb2[:m], np.uint8),
      "state": np.asarray(proprio[:m], np.float32), "action": spec_actions,
      "scene_flow": flow["scene_flow"][:m], "scene_flow_query": flow["scene_flow_query"][:m],
      "scene_flow_mask": flow["scene_flow_mask"][:m], "scene_flow_query_mask": flow["scene_flow_query_mask"][:m],
      "language_instruction": np.str_(instruction), "seed": record["seed"], "success": record["success"],
      "camera_intrinsics_0": intrinsics.astype(np.float32), "camera_extrinsics_0": pose.astype(np.float32),
      "camera_intrinsics_2": wrist_k.astype(np.float32), "camera_extrinsics_2": wrist_pose.astype(np.float32),
  }


def _paths(out: str, suite: str, stage: str, task_id: int, index: int) -> str:
  return os.path.join(out, suite, stage, f"task{task_id:02d}_ep{index:04d}.npz")


def _work(job: tuple) -> dict:
  """Runs the jobs of one task (one env per task and stage). Returns per-task counts and timings."""
  cfg, task_id, indices = job
  suite = envs_lib.get_suite(cfg["suite"])
  task = suite.get_task(task_id)
  summary = {"task_id": task_id, "instruction": task.language, "recorded": 0, "successes": 0, "rendered": 0,
             "record_seconds": [], "render_seconds": []}
  if cfg["stage"] in ("all", "record"):
    env = None
    eval_states = suite.get_task_init_states(task_id)
    for i in indices:
      path = _paths(cfg["out"], cfg["suite"], "record", task_id, i)
      if os.path.exists(path):
        continue
      env = env or envs_lib.make_env(suite, task_id)
      t0 = time.time()
      rec = record_episode(env, cfg["suite"], eval_states, demo_seed(cfg["seed"], task_id, i), cfg["noise"])
      summary["record_seconds"].append(time.time() - t0)
      _save_npz(path, **rec)
      summary["recorded"] += 1
      summary["successes"] += int(rec["success"])
      print(f"[record] {cfg['suite']} task {task_id} demo {i}: {'success' if rec['success'] else 'FAILURE'} "
            f"{len(rec['actions'])} steps {summary['record_seconds'][-1]:.1f} s", file=sys.stderr, flush=True)
    if env is not None:
      env.close()
  if cfg["stage"] in ("all", "render"):
    env = None
    for i in indices:
      src = _paths(cfg["out"], cfg["suite"], "record", task_id, i)
      dst = _paths(cfg["out"], cfg["suite"], "render", task_id, i)
      if os.path.exists(dst) or not os.path.exists(src):
        continue
      with np.load(src) as f:
        rec = {k: f[k] for k in f.files}
      if not bool(rec["success"]):
        continue
      if env is None:
        from libero.libero.envs import env_wrapper  # pylint: disable=g-import-not-at-top

        env = env_wrapper.OffScreenRenderEnv(
            bddl_file_name=suite.get_task_bddl_file_path(task_id), camera_names=[AGENTVIEW, WRIST],
            camera_heights=cfg["resolution"], camera_widths=cfg["resolution"], camera_depths=True,
            camera_segmentations=["element", None])
      t0 = time.time()
      episode = render_episode(env, rec, task.language, cfg["num_points"], cfg["flow_horizon"])
      _save_npz(dst, **episode)
      summary["render_seconds"].append(time.time() - t0)
      summary["rendered"] += 1
      print(f"[render] {cfg['suite']} task {task_id} demo {i}: {len(episode['action'])} steps "
            f"{summary['render_seconds'][-1]:.1f} s", file=sys.stderr, flush=True)
    if env is not None:
      env.close()
  return summary


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--suite", default="libero_spatial", choices=envs_lib.SUITES)
  p.add_argument("--out", required=True)
  p.add_argument("--episodes-per-task", type=int, default=50)
  p.add_argument("--first-episode", type=int, default=0)
  p.add_argument("--tasks", default=None, help="comma-separated task ids (default: all)")
  p.add_argument("--stage", default="all", choices=["all", "record", "render"])
  p.add_argument("--resolution", type=int, default=128)
  p.add_argument("--num-points", type=int, default=400, help="scene-flow query points K (a square)")
  p.add_argument("--flow-horizon", type=int, default=32, help="scene-flow future steps T")
  p.add_argument("--noise", type=float, default=0.0, help="expert action noise std (controller units)")
  p.add_argument("--seed", type=int, default=100_000, help="base seed of the demonstrations' initial states")
  p.add_argument("--workers", type=int, default=1)
  args = p.parse_args(argv)
  suite = envs_lib.get_suite(args.suite)
  tasks = list(range(suite.n_tasks)) if args.tasks is None else [int(t) for t in args.tasks.split(",")]
  for stage in ("record", "render"):
    os.makedirs(os.path.join(args.out, args.suite, stage), exist_ok=True)
  cfg = {k: getattr(args, k) for k in ("suite", "out", "stage", "resolution", "num_points", "flow_horizon",
                                          "noise", "seed")}
  indices = list(range(args.first_episode, args.first_episode + args.episodes_per_task))
  jobs = [(cfg, t, indices) for t in tasks]
  start = time.time()
  if args.workers > 1:
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
      summaries = pool.map(_work, jobs, chunksize=1)
  else:
    summaries = [_work(job) for job in jobs]
  for s in summaries:
    for key in ("record_seconds", "render_seconds"):
      values = s.pop(key)
      s[key.replace("seconds", "seconds_per_episode")] = float(np.mean(values)) if values else None
  print(json.dumps({"suite": args.suite, "out": os.path.join(args.out, args.suite), "tasks": summaries,
                    "seconds": round(time.time() - start, 1)}, indent=1))


if __name__ == "__main__":
  main()
