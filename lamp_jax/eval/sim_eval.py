"""Closed-loop evaluation of a policy on the tabletop benchmark.

Each task family of the suite is run for ``episodes_per_task`` episodes on evaluation seeds
``tasks.EVAL_SEED_OFFSET + i`` (demonstrations use seeds below ``tasks.DEMO_SEED_LIMIT``, so the two never
overlap). Action chunking: the policy returns H actions and the first ``execute_steps`` (k <= H, default H) are
executed before it is queried again. An episode succeeds when the task's success predicate holds before its
step limit (``tasks.FAMILIES[f].max_steps``).

Returns (and ``python -m lamp_jax.eval`` prints as JSON) per-task successes with Wilson 95 % intervals, the mean
success over tasks and the interval over all episodes; per task, the count of each outcome (``failure_modes``:
success, the wrong object, a failed grasp, misplaced, ...) and, per episode, its outcome label.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from lamp_jax.eval import failure_modes
from lamp_jax.eval import policies as policies_lib
from lamp_jax.eval import stats
from lamp_jax.eval import video as video_lib
from lamp_jax.sim import env as env_lib
from lamp_jax.sim import tasks as tasks_lib


def run_episode(env: env_lib.TabletopEnv, policy, task: tasks_lib.TaskInstance, execute_steps: int | None = None,
                record_video: bool = False) -> dict[str, Any]:
  """One closed-loop episode.

  Returns dict(success, steps, frames (list of uint8 images if record_video), outcome (``failure_modes``: the
  outcome label and the figures it came from)).
  """
  obs = env.reset(task)
  tracker = failure_modes.EpisodeTracker(task)
  tracker.update(env)
  if hasattr(policy, "attach_env"):
    policy.attach_env(env)
  policy.reset(task.instruction)
  frames, success, done, steps = [], False, False, 0
  while not done:
    chunk = policies_lib.check_chunk(policy(obs), policy)
    k = chunk.shape[0] if execute_steps is None else max(1, min(int(execute_steps), chunk.shape[0]))
    flow = getattr(policy, "last_scene_flow", None)
    for i in range(k):
      if record_video:
        frame = obs["image_0"]
        if flow is not None and i == 0:
          flow_arr = np.asarray(flow)
          frame = video_lib.draw_scene_flow(frame, flow_arr, mask=getattr(policy, "last_scene_flow_mask", None),
                                            query=getattr(policy, "last_scene_flow_query", None))
        else:
          frame = video_lib._upscale(frame, 4)  # pylint: disable=protected-access
        frames.append(frame)
      obs, _, done, info = env.step(chunk[i])
      tracker.update(env)
      steps += 1
      success = info["success"]
      if done:
        break
  if record_video:
    frames.append(video_lib._upscale(obs["image_0"], 4))  # pylint: disable=protected-access
  return {"success": bool(success), "steps": steps, "frames": frames,
          "outcome": tracker.outcome(bool(success), env)}


def evaluate(policy, suite: str = "tabletop4", episodes_per_task: int = 10, execute_steps: int | None = None,
             image_size: int | None = None, seed_offset: int = tasks_lib.EVAL_SEED_OFFSET,
             video_dir: str | None = None, videos_per_task: int = 1, video_format: str = "mp4",
             progress: bool = True, demonstration_seeds: bool = False) -> dict[str, Any]:
  """Evaluate ``policy`` closed loop on every family of ``suite``; returns a JSON-able dict.

  ``image_size`` defaults to ``policy.image_size`` or 64. ``seed_offset`` must be >= EVAL_SEED_OFFSET, unless
  ``demonstration_seeds``: then the episodes are the demonstrations' own task seeds (offset < DEMO_SEED_LIMIT;
  a diagnostic of the train / held-out gap, marked ``"seed_kind": "demonstration"`` in the result).
  """
  if demonstration_seeds:
    if not 0 <= seed_offset < tasks_lib.DEMO_SEED_LIMIT:
      raise ValueError(f"demonstration seeds lie in [0, {tasks_lib.DEMO_SEED_LIMIT}), got seed_offset={seed_offset}")
  elif seed_offset < tasks_lib.EVAL_SEED_OFFSET:
    raise ValueError(f"evaluation seeds must start at >= {tasks_lib.EVAL_SEED_OFFSET} (demonstration seeds are "
                     f"below {tasks_lib.DEMO_SEED_LIMIT}), got seed_offset={seed_offset}")
  if episodes_per_task < 1:
    raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
  families = tasks_lib.suite_families(suite)
  size = int(image_size or getattr(policy, "image_size", 64))
  needs_images = bool(getattr(policy, "needs_images", True))
  env = env_lib.TabletopEnv(image_size=size, render=needs_images)
  start = time.time()
  per_task, total_success, total, episode_outcomes = {}, 0, 0, []
  try:
    for family in families:
      successes, steps, outcomes = 0, [], []
      iterator = range(episodes_per_task)
      if progress:
        from tqdm import tqdm  # pylint: disable=g-import-not-at-top
        iterator = tqdm(iterator, desc=f"eval {family}", file=sys.stderr, leave=False)
      for i in iterator:
        seed = seed_offset + i
        task = tasks_lib.sample_task(family, seed)
        record = video_dir is not None and i < videos_per_task
        env.render_images = needs_images or record
        result = run_episode(env, policy, task, execute_steps, record_video=record)
        successes += int(result["success"])
        steps.append(result["steps"])
        outcomes.append(result["outcome"]["outcome"])
        episode_outcomes.append({"family": family, "seed": seed, **result["outcome"]})
        if record:
          name = f"{family}_{seed}_{'success' if result['success'] else 'failure'}.{video_format}"
          video_lib.write_video(result["frames"], os.path.join(video_dir, name))
      low, high = stats.wilson_interval(successes, episodes_per_task)
      per_task[family] = {"success_rate": successes / episodes_per_task, "successes": successes,
                          "episodes": episodes_per_task, "ci95": [round(low, 4), round(high, 4)],
                          "mean_steps": float(np.mean(steps)), "outcomes": failure_modes.count_outcomes(outcomes)}
      total_success += successes
      total += episodes_per_task
  finally:
    env.close()
  low, high = stats.wilson_interval(total_success, total)
  return {
      "suite": suite,
      "policy": type(policy).__name__,
      "episodes_per_task": episodes_per_task,
      "execute_steps": execute_steps,
      "action_horizon": int(policy.action_horizon),
      "image_size": size,
      "seeds": [seed_offset, seed_offset + episodes_per_task - 1],
      "seed_kind": "demonstration" if demonstration_seeds else "held_out",
      "per_task": per_task,
      "mean_success": float(np.mean([t["success_rate"] for t in per_task.values()])),
      "ci95": [round(low, 4), round(high, 4)],
      "episodes": total,
      "seconds": round(time.time() - start, 1),
      "episode_outcomes": episode_outcomes,
  }
