"""LIBERO closed-loop evaluation, run inside the LIBERO environment (``launch/libero_env.sh``).

  # terminal 1 (our JAX environment):   python -m lamp_jax.serve --checkpoint=/runs/libero/checkpoints
  # terminal 2 (LIBERO environment):
  .libero_venv/bin/libero-run python -m lamp_jax.eval.libero --suite=libero_spatial --port=8000 \
      --output=/tmp/libero_spatial.json [--episodes-per-task=10] [--video-dir=/tmp/videos]
  # the privileged scripted expert instead of a served policy (no server, no rendering):
  .libero_venv/bin/libero-run python -m lamp_jax.eval.libero --suite=libero_goal --policy=expert

The standard protocol (LIBERO / openpi): each task of the suite starts from its fixed initial states
(``--episodes-per-task`` of the 50, in order), ``--wait-steps`` (10) no-op steps let objects settle, then the
policy acts for at most the suite's episode length (spatial 220, object 280, goal 300, libero_10 520 steps);
success = the BDDL goal holds. The policy sees, every time it is queried, ``image_0`` (agentview) and ``image_2``
(wrist camera), uint8[R, R, 3] upright (the OpenGL read-out flipped vertically,
``raw[::-1]``: the true camera image, which our LIBERO datasets store too; note openpi rotates by 180° instead,
i.e. its images are also mirrored left-right), and ``state`` float32[8] (``lamp_jax.libero.envs.proprio_state``). It returns a chunk
float32[H, 7] in the ``specs`` action convention with LIBERO's controller units: (Δpos, Δaxis-angle) in [-1, 1]
(× 0.05 m, × 0.5 rad) and gripper in [0, 1] (1 = open; > 0.5 is sent as LIBERO's -1 = open); the first
``--execute-steps`` actions (default: all H) are executed before the next query.

LIBERO-PRO perturbations: pass one of its suites (e.g. ``libero_spatial_swap``, ``libero_goal_lan``,
``libero_object_object``; ``--list-suites`` prints them); the episode length is that of the base suite.

Output: JSON with per-task successes, success rates and Wilson 95 % intervals, the suite's success over all
episodes (with its interval) and the mean over tasks, episode lengths, wall-clock time per episode and the policy
round-trip latency. Imports no JAX (only numpy, LIBERO, and the JAX-free policy client).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

from lamp_jax.eval import stats
from lamp_jax.libero import envs as envs_lib

AGENTVIEW, WRIST = "agentview", "robot0_eye_in_hand"


def observation_for_policy(obs: dict[str, Any], gripper_command: float) -> dict[str, np.ndarray]:
  """LIBERO observation -> the served policy's observation (images upright, ``lamp_sim`` state layout)."""
  return {
      "image_0": np.ascontiguousarray(obs[f"{AGENTVIEW}_image"][::-1]).astype(np.uint8),
      "image_2": np.ascontiguousarray(obs[f"{WRIST}_image"][::-1]).astype(np.uint8),
      "state": envs_lib.proprio_state(obs, gripper_command),
  }


def to_libero_action(action: np.ndarray) -> np.ndarray:
  """specs action float[7] (gripper in [0, 1], 1 = open) -> LIBERO action float64[7] (gripper -1 open / +1 close)."""
  action = np.asarray(action, np.float64)
  if action.shape != (7,) or not np.all(np.isfinite(action)):
    raise ValueError(f"policy action must be 7 finite numbers, got shape {action.shape}: {action}")
  out = np.clip(action, -1.0, 1.0)
  out[6] = envs_lib.gripper_to_libero(action[6])
  return out


class ServedPolicy:
  """The policy server behind a ``PolicyClient`` (``lamp_jax.serving.client``)."""

  needs_images = True

  def __init__(self, host: str, port: int, connect_timeout: float):
    from lamp_jax.serving import client as client_lib  # pylint: disable=g-import-not-at-top

    self.client = client_lib.PolicyClient(host, port, connect_timeout=connect_timeout)
    health = self.client.health()
    self.name = str(health.get("policy", "served"))
    self.action_horizon = int(health["action_horizon"])
    self.latencies_ms: list[float] = []

  def start(self, env, instruction: str) -> None:
    del env
    self.client.reset(instruction)

  def chunk(self, obs: dict[str, Any], gripper_command: float) -> np.ndarray:
    actions = self.client.infer(observation_for_policy(obs, gripper_command))
    self.latencies_ms.append(self.client.last_timing["round_trip_ms"])
    if actions.ndim != 2 or actions.shape[1] != 7 or actions.shape[0] < 1:
      raise ValueError(f"the policy server returned actions of shape {actions.shape}, expected [H, 7]")
    return actions


class ExpertPolicy:
  """The privileged scripted expert (``lamp_jax.libero.experts``): a reference, not a learned policy."""

  needs_images = False
  action_horizon = 1
  name = "expert"

  def __init__(self, noise: float = 0.0, seed: int = 0):
    self.noise, self.seed = noise, seed
    self.latencies_ms: list[float] = []

  def start(self, env, instruction: str) -> None:
    del instruction
    from lamp_jax.libero import experts  # pylint: disable=g-import-not-at-top

    self.expert = experts.LiberoExpert(env, noise=self.noise, seed=self.seed)
    self.seed += 1

  def chunk(self, obs: dict[str, Any], gripper_command: float) -> np.ndarray:
    del obs, gripper_command
    action = self.expert.act()
    action[6] = envs_lib.gripper_from_libero(action[6])
    return action[None].astype(np.float32)


def run_episode(env, policy, instruction: str, init_state: np.ndarray, max_steps: int, wait_steps: int,
                execute_steps: int | None, record_video: bool) -> dict[str, Any]:
  """One episode from a fixed initial state. Returns dict(success, steps, frames)."""
  obs = envs_lib.reset_to_state(env, init_state)
  for _ in range(wait_steps):
    obs, _, _, _ = env.step(envs_lib.DUMMY_ACTION)
  policy.start(env, instruction)
  frames, queue, gripper_command, success, steps = [], [], -1.0, False, 0
  while steps < max_steps:
    if not queue:
      chunk = policy.chunk(obs, gripper_command)
      k = chunk.shape[0] if execute_steps is None else max(1, min(int(execute_steps), chunk.shape[0]))
      queue = list(chunk[:k])
    if record_video:
      frames.append(np.ascontiguousarray(obs[f"{AGENTVIEW}_image"][::-1]))
    action = to_libero_action(queue.pop(0))
    gripper_command = float(action[6])
    obs, _, _, _ = env.step(action)
    steps += 1
    if env.check_success():
      success = True
      break
  if record_video:
    frames.append(np.ascontiguousarray(obs[f"{AGENTVIEW}_image"][::-1]))
  return {"success": success, "steps": steps, "frames": frames}


def evaluate(policy, suite_name: str, episodes_per_task: int = 50, tasks: list[int] | None = None,
             resolution: int = 256, wait_steps: int = envs_lib.NUM_WAIT_STEPS, max_steps: int | None = None,
             execute_steps: int | None = None, video_dir: str | None = None, videos_per_task: int = 1,
             first_episode: int = 0, progress: bool = True) -> dict[str, Any]:
  """Runs the protocol; returns the result dict (see the module docstring)."""
  suite = envs_lib.get_suite(suite_name)
  max_steps = int(max_steps or envs_lib.max_steps(suite_name))
  tasks = list(range(suite.n_tasks)) if tasks is None else list(tasks)
  per_task, start = [], time.time()
  episode_seconds = []
  for task_id in tasks:
    task = suite.get_task(task_id)
    init_states = suite.get_task_init_states(task_id)
    stop = first_episode + episodes_per_task
    if stop > len(init_states):
      raise ValueError(f"task {task_id} of {suite_name} has {len(init_states)} initial states; asked for episodes "
                       f"{first_episode}..{stop - 1}")
    cameras = (AGENTVIEW, WRIST) if (policy.needs_images or video_dir) else ()
    env = envs_lib.make_env(suite, task_id, cameras=cameras, resolution=resolution)
    successes, lengths = 0, []
    try:
      for i in range(first_episode, stop):
        t0 = time.time()
        record = video_dir is not None and i - first_episode < videos_per_task
        result = run_episode(env, policy, task.language, init_states[i], max_steps, wait_steps, execute_steps,
                             record)
        episode_seconds.append(time.time() - t0)
        successes += int(result["success"])
        lengths.append(result["steps"])
        if record:
          from lamp_jax.eval import video as video_lib  # pylint: disable=g-import-not-at-top

          name = f"{suite_name}_task{task_id:02d}_ep{i:02d}_{'success' if result['success'] else 'failure'}.mp4"
          video_lib.write_video(result["frames"], os.path.join(video_dir, name), fps=envs_lib.CONTROL_HZ)
        if progress:
          print(f"[{suite_name}] task {task_id} episode {i}: {'success' if result['success'] else 'failure'} "
                f"in {result['steps']} steps ({episode_seconds[-1]:.1f} s); task so far {successes}/"
                f"{i - first_episode + 1}", file=sys.stderr, flush=True)
    finally:
      env.close()
    n = stop - first_episode
    low, high = stats.wilson_interval(successes, n)
    per_task.append({"task_id": task_id, "name": task.name, "instruction": task.language, "successes": successes,
                     "episodes": n, "success_rate": successes / n, "ci95": [low, high],
                     "mean_steps": float(np.mean(lengths))})
  total = sum(t["successes"] for t in per_task)
  episodes = sum(t["episodes"] for t in per_task)
  low, high = stats.wilson_interval(total, episodes)
  latencies = np.asarray(policy.latencies_ms) if policy.latencies_ms else None
  return {
      "suite": suite_name, "policy": policy.name, "episodes_per_task": episodes_per_task,
      "first_episode": first_episode, "max_steps": max_steps, "wait_steps": wait_steps,
      "execute_steps": execute_steps, "resolution": resolution,
      "success_rate": total / episodes, "ci95": [low, high], "successes": total, "episodes": episodes,
      "mean_task_success_rate": float(np.mean([t["success_rate"] for t in per_task])),
      "tasks": per_task,
      "seconds_per_episode": float(np.mean(episode_seconds)), "total_seconds": time.time() - start,
      "policy_round_trip_ms": (None if latencies is None else
                               {"mean": float(latencies.mean()), "p50": float(np.median(latencies)),
                                "p95": float(np.percentile(latencies, 95)), "calls": int(latencies.size)}),
  }


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description="LIBERO closed-loop evaluation (standard protocol) of a served policy "
                              "or the scripted expert; prints JSON.")
  p.add_argument("--suite", default="libero_spatial", help="libero_spatial | libero_object | libero_goal | "
                 "libero_10, or a LIBERO-PRO suite (see --list-suites)")
  p.add_argument("--policy", default="server", choices=["server", "expert"])
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for the server")
  p.add_argument("--episodes-per-task", type=int, default=envs_lib.NUM_INIT_STATES)
  p.add_argument("--first-episode", type=int, default=0, help="index of the first fixed initial state")
  p.add_argument("--tasks", default=None, help="comma-separated task ids (default: all)")
  p.add_argument("--execute-steps", type=int, default=None, help="actions executed per chunk (default: all H)")
  p.add_argument("--resolution", type=int, default=256, help="camera resolution (LIBERO's evaluation: 256)")
  p.add_argument("--wait-steps", type=int, default=envs_lib.NUM_WAIT_STEPS)
  p.add_argument("--max-steps", type=int, default=None, help="default: the suite's episode length")
  p.add_argument("--expert-noise", type=float, default=0.0)
  p.add_argument("--video-dir", default=None)
  p.add_argument("--videos-per-task", type=int, default=1)
  p.add_argument("--output", default=None, help="also write the JSON here")
  p.add_argument("--list-suites", action="store_true")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  if args.list_suites:
    from libero.libero import benchmark  # pylint: disable=g-import-not-at-top

    print("\n".join(sorted(benchmark.get_benchmark_dict())))
    return
  if args.episodes_per_task < 1:
    raise SystemExit("--episodes-per-task must be >= 1")
  policy = (ExpertPolicy(noise=args.expert_noise) if args.policy == "expert"
            else ServedPolicy(args.host, args.port, args.connect_timeout))
  tasks = None if args.tasks is None else [int(t) for t in args.tasks.split(",")]
  result = evaluate(policy, args.suite, episodes_per_task=args.episodes_per_task, tasks=tasks,
                    resolution=args.resolution, wait_steps=args.wait_steps, max_steps=args.max_steps,
                    execute_steps=args.execute_steps, video_dir=args.video_dir,
                    videos_per_task=args.videos_per_task, first_episode=args.first_episode,
                    progress=not args.no_progress)
  text = json.dumps(result, indent=1)
  if args.output:
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
      f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
