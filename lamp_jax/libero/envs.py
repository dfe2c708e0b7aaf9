"""LIBERO's benchmark protocol and environments (imports LIBERO lazily; runs in the LIBERO venv).

Protocol constants follow LIBERO's / openpi's evaluation: every episode starts from one of the task's 50 fixed
initial states, the first ``NUM_WAIT_STEPS`` steps send a no-op (gripper open) so objects settle, then the policy
acts for at most ``MAX_STEPS[suite]`` steps (the longest demonstration of the suite, rounded up); an episode
succeeds as soon as the goal holds.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
NUM_WAIT_STEPS = 10
NUM_INIT_STATES = 50
CONTROL_HZ = 20
# The no-op: zero deltas, gripper open (-1).
DUMMY_ACTION = np.array([0.0] * 6 + [-1.0], np.float64)


def max_steps(suite: str) -> int:
  for name, steps in MAX_STEPS.items():
    if suite == name or suite.startswith(name + "_"):
      return steps
  raise ValueError(f"no maximum episode length known for suite {suite!r}; known: {sorted(MAX_STEPS)}")


def get_suite(name: str):
  """LIBERO's benchmark object for a suite name (e.g. 'libero_spatial', or a LIBERO-PRO variant)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from libero.libero import benchmark  # pylint: disable=g-import-not-at-top

  suites = benchmark.get_benchmark_dict()
  if name not in suites:
    raise ValueError(f"unknown LIBERO suite {name!r}; known: {sorted(suites)}")
  with contextlib.redirect_stdout(sys.stderr):  # LIBERO prints its task order: keep stdout for JSON
    return suites[name]()


def make_env(suite, task_id: int, cameras: tuple[str, ...] = (), resolution: int = 256, depth: bool = False,
             seed: int = 0):
  """A LIBERO env for one task. No cameras -> no renderer at all (fast, for demonstrations and experts)."""
  from libero.libero.envs import env_wrapper  # pylint: disable=g-import-not-at-top

  bddl = suite.get_task_bddl_file_path(task_id)
  if cameras:
    env = env_wrapper.OffScreenRenderEnv(bddl_file_name=bddl, camera_names=list(cameras),
                                         camera_heights=resolution, camera_widths=resolution,
                                         camera_depths=depth)
  else:
    env = env_wrapper.ControlEnv(bddl_file_name=bddl, has_offscreen_renderer=False, use_camera_obs=False)
  env.seed(seed)
  return env


def reset_to_state(env, state: np.ndarray) -> dict[str, Any]:
  env.reset()
  return env.set_init_state(np.asarray(state, np.float64))


def proprio_state(obs: dict[str, Any], gripper_command: float) -> np.ndarray:
  """float32[8]: eef xyz (m, world), eef roll/pitch/yaw (rad), finger opening (m), gripper command in [0, 1]
  (1 = open) — the ``lamp_sim`` state layout of ``lamp_jax/specs.py``.

  ``gripper_command`` is the LIBERO command (-1 open, +1 close) last sent.
  """
  quat = np.asarray(obs["robot0_eef_quat"], np.float64)  # xyzw
  x, y, z, w = quat / (np.linalg.norm(quat) + 1e-12)
  roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
  pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
  yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
  opening = float(np.abs(np.asarray(obs["robot0_gripper_qpos"])).sum())
  return np.array([*obs["robot0_eef_pos"], roll, pitch, yaw, opening, (1.0 - gripper_command) / 2.0], np.float32)


def gripper_to_libero(gripper01: float) -> float:
  """specs gripper in [0, 1] (1 = open) -> LIBERO command in {-1 (open), +1 (close)}."""
  return -1.0 if float(gripper01) > 0.5 else 1.0


def gripper_from_libero(command: float) -> float:
  """LIBERO command (-1 open, +1 close) -> specs gripper in [0, 1] (1 = open)."""
  return float(np.clip((1.0 - float(command)) / 2.0, 0.0, 1.0))


def set_quiet() -> None:
  """Silences robosuite's macro warnings (import-time logging)."""
  os.environ.setdefault("MUJOCO_GL", "egl")
