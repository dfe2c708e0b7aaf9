"""Closed-loop evaluation: expert ~100 %, random ~0 %, action chunking, statistics, videos, policy specs."""

import json
import os

import numpy as np
import pytest

from lamp_jax.eval import __main__ as eval_main
from lamp_jax.eval import policies, sim_eval, stats, video
from lamp_jax.sim import tasks


def test_expert_policy_succeeds():
  result = sim_eval.evaluate(policies.make_policy("expert"), suite="tabletop4", episodes_per_task=3,
                             progress=False)
  assert set(result["per_task"]) == set(tasks.SUITES["tabletop4"])
  assert result["mean_success"] >= 0.95
  assert result["seeds"] == [tasks.EVAL_SEED_OFFSET, tasks.EVAL_SEED_OFFSET + 2]
  assert result["ci95"][0] > 0.7 and result["ci95"][1] == pytest.approx(1.0)
  for r in result["per_task"].values():  # every episode gets one outcome label; successes are labelled so
    assert sum(r["outcomes"].values()) == 3 and r["outcomes"].get("success", 0) == r["successes"]
  assert len(result["episode_outcomes"]) == 3 * len(result["per_task"])
  json.dumps(result)


def test_random_policy_fails():
  result = sim_eval.evaluate(policies.make_policy("random", seed=1), suite="tabletop4", episodes_per_task=1,
                             progress=False)
  assert result["mean_success"] <= 0.25
  for family, r in result["per_task"].items():
    assert r["mean_steps"] == tasks.FAMILIES[family].max_steps or r["successes"] > 0
    assert sum(r["outcomes"].values()) == 1 and r["outcomes"].get("success", 0) == r["successes"]


class _ChunkedExpert:
  """The expert repeated as a chunk of H identical actions, counting calls (tests k-of-H execution)."""

  needs_images = False

  def __init__(self, horizon):
    self.inner = policies.ExpertPolicy()
    self.action_horizon = horizon
    self.calls = 0

  def attach_env(self, env):
    self.inner.attach_env(env)

  def reset(self, instruction):
    self.inner.reset(instruction)

  def __call__(self, obs):
    self.calls += 1
    return np.repeat(self.inner(obs), self.action_horizon, axis=0)


def test_action_chunking_executes_k_of_h():
  from lamp_jax.sim import env as env_lib

  env = env_lib.TabletopEnv(render=False)
  task = tasks.sample_task("drawer", tasks.EVAL_SEED_OFFSET)
  policy = _ChunkedExpert(horizon=5)
  out = sim_eval.run_episode(env, policy, task, execute_steps=2)
  assert policy.calls == -(-out["steps"] // 2)
  policy_all = _ChunkedExpert(horizon=3)
  out_all = sim_eval.run_episode(env, policy_all, task, execute_steps=None)
  assert policy_all.calls == -(-out_all["steps"] // 3)


def test_wilson_interval():
  low, high = stats.wilson_interval(0, 10)
  assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
  low, high = stats.wilson_interval(10, 10)
  assert low == pytest.approx(0.7225, abs=1e-4) and high == pytest.approx(1.0)
  low, high = stats.wilson_interval(50, 100)
  assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
  with pytest.raises(ValueError):
    stats.wilson_interval(3, 2)


def test_policy_specs():
  assert isinstance(policies.make_policy("expert"), policies.ExpertPolicy)
  assert policies.make_policy("random", action_horizon=3)({}).shape == (3, 7)
  with pytest.raises(ValueError, match="unknown policy spec"):
    policies.make_policy("oracle")
  with pytest.raises(ValueError, match="needs a directory"):
    policies.make_policy("checkpoint:")
  with pytest.raises(ValueError, match="seed_offset"):
    sim_eval.evaluate(policies.make_policy("random"), episodes_per_task=1, seed_offset=0)
  with pytest.raises(ValueError, match="demonstration seeds"):
    sim_eval.evaluate(policies.make_policy("random"), episodes_per_task=1, seed_offset=tasks.EVAL_SEED_OFFSET,
                      demonstration_seeds=True)
  with pytest.raises(ValueError, match="expected \\[H, 7\\]"):
    policies.check_chunk(np.zeros((7,)), policies.RandomPolicy())


class _FlowExpert(_ChunkedExpert):
  """Expert actions plus a scene-flow prediction (straight tracks) to exercise the video overlay."""

  def __call__(self, obs):
    grid = np.tile(np.linspace(0.2, 0.8, 4)[:, None], (1, 2))
    self.last_scene_flow = np.stack([np.concatenate([grid + 0.02 * s, np.ones((4, 1))], 1) for s in range(3)], 1)
    return super().__call__(obs)


def test_cli_and_videos(tmp_path, capsys):
  eval_main.main(["--policy=expert", "--suite=drawer", "--episodes-per-task=1", f"--video-dir={tmp_path}",
                  "--video-format=gif", "--no-progress", "--image-size=24"])
  result = json.loads(capsys.readouterr().out)
  assert result["per_task"]["drawer"]["successes"] == 1
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].endswith("_success.gif")
  assert result["seed_kind"] == "held_out" and result["seeds"] == [tasks.EVAL_SEED_OFFSET] * 2
  eval_main.main(["--policy=random", "--suite=drawer", "--episodes-per-task=1", "--no-progress",
                  "--image-size=16", "--demonstration-seeds"])
  result = json.loads(capsys.readouterr().out)
  assert result["seed_kind"] == "demonstration" and result["seeds"] == [0, 0]
  policy = _FlowExpert(horizon=1)
  result = sim_eval.evaluate(policy, suite="push", episodes_per_task=1, image_size=16,
                             video_dir=str(tmp_path / "flow"), progress=False)
  assert result["mean_success"] == 1.0
  assert len(os.listdir(tmp_path / "flow")) == 1
  frame = video.draw_scene_flow(np.zeros((16, 16, 3), np.uint8), policy.last_scene_flow)
  assert frame.shape == (64, 64, 3) and frame.max() == 255  # tracks drawn


def test_tasks_of_keeps_first_seen_order_across_runs():
  results = {"a": {"per_task": {"push": {}, "drawer": {}}}, "b": {"per_task": {"stack": {}, "push": {}}}}
  assert stats.tasks_of(results) == ["push", "drawer", "stack"]
