"""Policies for closed-loop evaluation, and ``make_policy(spec)`` to build them by name.

The policy interface is small:

  action_horizon: int                      H, the length of the chunks the policy returns
  reset(instruction: str) -> None          start of an episode
  __call__(observation: dict) -> float32[H, 7]   un-normalised env actions (specs action convention)
  last_scene_flow (optional)               float32[K, T, 3] UVD in image_0 predicted at the last call (videos;
                                           with optional last_scene_flow_mask bool[K, T] and
                                           last_scene_flow_query float32[K, 3], the track starts)
  image_size (optional)                    the image size the policy expects (the env renders at it)
  needs_images (optional, default True)    False lets the evaluator skip rendering
  attach_env(env) (optional)               privileged access to the env (only the scripted expert uses it)

Specs: 'expert' (scripted expert, privileged), 'random' (uniform random deltas, random gripper),
'checkpoint:DIR' (a trained checkpoint through ``lamp_jax.eval.checkpoint_policy.CheckpointPolicy``).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from lamp_jax import specs


class Policy(Protocol):
  action_horizon: int

  def reset(self, instruction: str) -> None:
    ...

  def __call__(self, observation: dict[str, Any]) -> np.ndarray:
    ...


class ExpertPolicy:
  """The scripted expert of ``lamp_jax.sim.experts`` behind the policy interface (reads the env state)."""

  action_horizon = 1
  needs_images = False

  def __init__(self, noise: float = 0.0, seed: int = 0):
    self.noise = noise
    self.seed = seed
    self._env = None
    self._expert = None

  def attach_env(self, env) -> None:
    self._env = env

  def reset(self, instruction: str) -> None:
    from lamp_jax.sim import experts  # pylint: disable=g-import-not-at-top

    if self._env is None:
      raise ValueError("ExpertPolicy needs attach_env(env) before reset()")
    if self._env.task is None or self._env.task.instruction != instruction:
      raise ValueError(f"the env is not reset to the task '{instruction}'")
    self._expert = experts.ScriptedExpert(self._env, noise=self.noise, seed=self.seed)
    self.seed += 1

  def __call__(self, observation: dict[str, Any]) -> np.ndarray:
    del observation  # privileged: reads the simulator state
    return self._expert.act()[None]


class RandomPolicy:
  """Uniform random end-effector deltas within the env's limits and a random gripper command."""

  needs_images = False

  def __init__(self, action_horizon: int = 4, seed: int = 0):
    from lamp_jax.sim import env as env_lib  # pylint: disable=g-import-not-at-top

    self.action_horizon = int(action_horizon)
    self.rng = np.random.default_rng(seed)
    self.high = np.array([env_lib.MAX_POS_DELTA] * 3 + [env_lib.MAX_ROT_DELTA] * 3)

  def reset(self, instruction: str) -> None:
    del instruction

  def __call__(self, observation: dict[str, Any]) -> np.ndarray:
    del observation
    deltas = self.rng.uniform(-self.high, self.high, size=(self.action_horizon, 6))
    grip = self.rng.integers(0, 2, size=(self.action_horizon, 1)).astype(np.float64)
    return np.concatenate([deltas, grip], axis=1).astype(np.float32)


def make_policy(spec: str, **kwargs) -> Policy:
  """'expert' | 'random' | 'checkpoint:DIR' -> policy. ``kwargs`` go to the policy's constructor."""
  if spec == "expert":
    return ExpertPolicy(**kwargs)
  if spec == "random":
    return RandomPolicy(**kwargs)
  if spec.startswith("checkpoint:"):
    directory = spec[len("checkpoint:"):]
    if not directory:
      raise ValueError("policy spec 'checkpoint:DIR' needs a directory")
    module = importlib.import_module("lamp_jax.eval.checkpoint_policy")
    return module.CheckpointPolicy(directory, **kwargs)
  raise ValueError(f"unknown policy spec '{spec}': expected 'expert', 'random' or 'checkpoint:DIR'")


def check_chunk(chunk: Any, policy: Policy) -> np.ndarray:
  """Validates a policy output: float32[H, 7] with 1 <= H, finite."""
  chunk = np.asarray(chunk, np.float32)
  if chunk.ndim != 2 or chunk.shape[1] != specs.ACTION_DIM or chunk.shape[0] < 1:
    raise ValueError(f"{type(policy).__name__} returned actions of shape {chunk.shape}, expected [H, "
                     f"{specs.ACTION_DIM}]")
  if not np.all(np.isfinite(chunk)):
    raise ValueError(f"{type(policy).__name__} returned non-finite actions")
  return chunk
