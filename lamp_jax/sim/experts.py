"""Scripted experts: privileged closed-loop waypoint controllers, one per task family.

Each expert reads the true object / drawer state from the env and servoes the TCP through a list of phases
(approach -> descend -> grasp -> lift -> carry -> lower -> release, or approach -> descend -> push / pull). Every
phase is a target (TCP position, hand yaw, gripper command) recomputed each step from the current state, and it
ends when the target is reached (and, for gripper phases, after a fixed number of steps). Optional Gaussian noise
on the position deltas (``noise`` = std in metres) diversifies demonstrations; the targets stay closed-loop, so
the noisy expert still succeeds.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from lamp_jax.sim import env as env_lib
from lamp_jax.sim import tasks as tasks_lib

CARRY_HEIGHT = 0.12
_REACH_TOL = 0.006
_YAW_TOL = 0.06


def _wrap(angle: float) -> float:
  return float((angle + np.pi) % (2 * np.pi) - np.pi)


def _grasp_yaw(env, name: str) -> float:
  """Hand yaw that puts the fingers on two parallel faces (cubes) or anything (cylinders): in [-pi/4, pi/4]."""
  if tasks_lib.shape_of(name) != "cube":
    return 0.0
  return float((env.body_yaw(name) + np.pi / 4) % (np.pi / 2) - np.pi / 4)


@dataclasses.dataclass
class Phase:
  name: str
  target: Callable[[], tuple[np.ndarray, float, float]]  # -> (tcp xyz, hand yaw, gripper command)
  min_steps: int = 0  # steps to stay even when the target is reached (gripper motions)
  until: Callable[[], bool] | None = None  # ends when true (instead of when the target is reached)
  max_steps: int = 40


class ScriptedExpert:
  """Closed-loop expert for the task the env was reset with. ``act()`` returns float32[7] env actions."""

  def __init__(self, env: env_lib.TabletopEnv, noise: float = 0.0, seed: int = 0):
    if env.task is None:
      raise ValueError("reset the env before building its expert")
    self.env = env
    self.task = env.task
    self.noise = float(noise)
    self.rng = np.random.default_rng(seed)
    self.phases = _PLANNERS[self.task.family](env, self.task)
    self.index = 0
    self.steps_in_phase = 0
    self.reach_tol = max(_REACH_TOL, 2.5 * self.noise)  # noisy steps cannot land closer than the noise

  @property
  def phase(self) -> str:
    return self.phases[min(self.index, len(self.phases) - 1)].name

  def act(self) -> np.ndarray:
    env = self.env
    while self.index < len(self.phases):
      phase = self.phases[self.index]
      tcp, yaw, grip = phase.target()
      reached = (np.linalg.norm(tcp - env.tcp) < self.reach_tol and abs(_wrap(yaw - env.rpy[2])) < _YAW_TOL)
      finished = phase.until() if phase.until is not None else reached and self.steps_in_phase >= phase.min_steps
      if finished or self.steps_in_phase >= phase.max_steps:
        self.index += 1
        self.steps_in_phase = 0
        continue
      break
    else:  # all phases done: hold still
      tcp, yaw, grip = env.tcp.copy(), float(env.rpy[2]), env.gripper
    self.steps_in_phase += 1
    dpos = np.clip(tcp - env.tcp, -env_lib.MAX_POS_DELTA, env_lib.MAX_POS_DELTA)
    if self.noise > 0:
      dpos = dpos + self.rng.normal(0.0, self.noise, 3)
    drot = np.array([-env.rpy[0], -env.rpy[1], _wrap(yaw - env.rpy[2])])
    drot = np.clip(drot, -env_lib.MAX_ROT_DELTA, env_lib.MAX_ROT_DELTA)
    return np.concatenate([dpos, drot, [grip]]).astype(np.float32)


def _pick_and_place_phases(env, obj: str, place_xy: Callable[[], np.ndarray], place_z: Callable[[], float]):
  half = env_lib.OBJECT_HALF_HEIGHT[tasks_lib.shape_of(obj)]
  grasp_yaw = _grasp_yaw(env, obj)

  def above_object():
    p = env.body_pos(obj)
    return np.array([p[0], p[1], CARRY_HEIGHT]), grasp_yaw, 1.0

  def at_object(grip):
    def target():
      p = env.body_pos(obj)
      return np.array([p[0], p[1], max(p[2], 0.016)]), grasp_yaw, grip
    return target

  def lifted():
    return np.array([env.tcp[0], env.tcp[1], CARRY_HEIGHT]), grasp_yaw, 0.0

  def above_place():
    # Carry so that the object (not the TCP) ends above the goal: correct for the in-hand offset.
    offset = env.body_pos(obj)[:2] - env.tcp[:2]
    xy = place_xy() - offset
    return np.array([xy[0], xy[1], CARRY_HEIGHT]), grasp_yaw, 0.0

  def lowered():
    offset = env.body_pos(obj)[:2] - env.tcp[:2]
    xy = place_xy() - offset
    z_off = env.body_pos(obj)[2] - env.tcp[2]
    return np.array([xy[0], xy[1], place_z() + half + 0.006 - z_off]), grasp_yaw, 0.0

  def released():
    return env.tcp.copy(), grasp_yaw, 1.0

  def retreat():
    return np.array([env.tcp[0], env.tcp[1], CARRY_HEIGHT]), grasp_yaw, 1.0

  return [
      Phase("approach", above_object),
      Phase("descend", at_object(1.0)),
      Phase("grasp", at_object(0.0), min_steps=3),
      Phase("lift", lifted),
      Phase("carry", above_place),
      Phase("lower", lowered),
      Phase("release", released, min_steps=2),
      Phase("retreat", retreat),
  ]


def _plan_put_on_plate(env, task):
  plate = task.params["receptacle"]
  top = env_lib.OBJECT_HALF_HEIGHT["plate"]
  return _pick_and_place_phases(env, task.params["object"], lambda: env.body_pos(plate)[:2],
                                lambda: env.body_pos(plate)[2] + top)


def _plan_stack(env, task):
  base = task.params["receptacle"]
  top = env_lib.OBJECT_HALF_HEIGHT["cube"]
  return _pick_and_place_phases(env, task.params["object"], lambda: env.body_pos(base)[:2],
                                lambda: env.body_pos(base)[2] + top)


def _plan_push(env, task):
  obj, sign = task.params["object"], task.params["sign"]
  # Hand yawed by 90 degrees with the gripper a quarter open: the two fingers form a pusher across x whose gap
  # (2 cm) is narrower than any object.
  yaw = -sign * np.pi / 2
  grip = 0.25
  contact = 0.01 + 0.022  # finger half-thickness + object radius
  start_y = float(task.start[obj][1])

  def behind(z):
    def target():
      p = env.body_pos(obj)
      return np.array([p[0], p[1] - sign * (contact + 0.03), z]), yaw, grip
    return target

  def pushing():
    p = env.body_pos(obj)
    goal_y = start_y + sign * (tasks_lib.PUSH_DISTANCE + 0.02)
    y = min(p[1] - sign * contact + sign * 0.04, goal_y) if sign > 0 else max(p[1] - sign * contact + sign * 0.04,
                                                                              goal_y)
    return np.array([p[0], y, 0.018]), yaw, grip

  return [
      Phase("approach", behind(0.09)),
      Phase("descend", behind(0.018)),
      Phase("push", pushing, until=lambda: task.success(env)),
  ]


def _plan_drawer(env, task):
  cabinet = np.array([0.05, 0.33])
  handle_y = lambda: cabinet[1] - env.drawer_opening - 0.125  # noqa: E731

  if task.params["verb"] == "open":
    hook_y = lambda: handle_y() + 0.024  # noqa: E731  (between the handle and the drawer front)

    def over_hook(z):
      return lambda: (np.array([cabinet[0], hook_y(), z]), 0.0, 0.0)

    def pull():
      return np.array([cabinet[0], handle_y() - 0.02, 0.06]), 0.0, 0.0

    return [
        Phase("approach", over_hook(0.15)),
        Phase("descend", over_hook(0.06)),
        Phase("pull", pull, until=lambda: task.success(env)),
    ]

  def before_handle(z):
    return lambda: (np.array([cabinet[0], handle_y() - 0.035, z]), 0.0, 0.0)

  def push():
    return np.array([cabinet[0], handle_y() + 0.03, 0.065]), 0.0, 0.0

  return [
      Phase("approach", before_handle(0.15)),
      Phase("descend", before_handle(0.065)),
      Phase("push", push, until=lambda: task.success(env)),
  ]


_PLANNERS = {
    "put_on_plate": _plan_put_on_plate,
    "stack": _plan_stack,
    "push": _plan_push,
    "drawer": _plan_drawer,
}


# Exploration ("play") data: the box over the table that the explorer's hand keeps to (m), and its defaults.
EXPLORE_LOW = np.array([-0.22, -0.26, 0.03])
EXPLORE_HIGH = np.array([0.22, 0.26, 0.22])
EXPLORE_STEPS = 24
EXPLORE_HOLD = 3
EXPLORE_TOGGLE_PROB = 0.25


class Explorer:
  """Random exploration policy: the actions are random GIVEN the frame (what a latent action model needs to
  learn codes that carry the action; the scripted expert's are nearly determined by the frame).

  Every ``hold`` steps it draws a new TCP velocity (uniform in +-0.75 MAX_POS_DELTA per axis, pointed back inward
  on an axis where the hand is at the edge of ``EXPLORE_LOW`` / ``EXPLORE_HIGH``), a yaw rate (uniform in
  +-0.5 MAX_ROT_DELTA) and, with ``toggle_prob``, flips the gripper; roll and pitch are held level as the expert
  does. ``act()`` returns float32[7] env actions (the recorded labels are exactly these)."""

  def __init__(self, env: env_lib.TabletopEnv, seed: int = 0, hold: int = EXPLORE_HOLD,
               toggle_prob: float = EXPLORE_TOGGLE_PROB):
    if hold < 1:
      raise ValueError(f"Explorer hold={hold} must be >= 1")
    self.env = env
    self.rng = np.random.default_rng(seed)
    self.hold, self.toggle_prob = int(hold), float(toggle_prob)
    self.steps = 0
    self.velocity, self.yaw_rate, self.grip = np.zeros(3), 0.0, 1.0

  def act(self) -> np.ndarray:
    env = self.env
    if self.steps % self.hold == 0:
      self.velocity = self.rng.uniform(-0.75, 0.75, 3) * env_lib.MAX_POS_DELTA
      self.yaw_rate = float(self.rng.uniform(-0.5, 0.5) * env_lib.MAX_ROT_DELTA)
      if self.rng.random() < self.toggle_prob:
        self.grip = 1.0 - self.grip
    # Keep to the box: on an axis where the next step would leave it, move back inward.
    ahead = env.tcp + self.velocity
    self.velocity = np.where(ahead < EXPLORE_LOW, np.abs(self.velocity), self.velocity)
    self.velocity = np.where(ahead > EXPLORE_HIGH, -np.abs(self.velocity), self.velocity)
    self.steps += 1
    drot = np.array([-env.rpy[0], -env.rpy[1], self.yaw_rate])
    drot = np.clip(drot, -env_lib.MAX_ROT_DELTA, env_lib.MAX_ROT_DELTA)
    return np.concatenate([self.velocity, drot, [self.grip]]).astype(np.float32)


def run_expert_episode(env: env_lib.TabletopEnv, task: tasks_lib.TaskInstance, noise: float = 0.0,
                       seed: int = 0, record: bool = False, policy: str = "expert",
                       explore_steps: int = EXPLORE_STEPS):
  """Roll out the expert on ``task`` (``policy='expert'``: until success or the task's step limit) or the
  ``Explorer`` (``policy='explore'``: exactly ``explore_steps`` steps, success only recorded). Returns
  dict(success, steps, observations, actions, frames)."""
  if policy not in ("expert", "explore"):
    raise ValueError(f"policy={policy!r}: choose 'expert' or 'explore'")
  obs = env.reset(task)
  actor = ScriptedExpert(env, noise=noise, seed=seed) if policy == "expert" else Explorer(env, seed=seed)
  observations, actions, frames = [obs], [], [env.frame()]
  success, done = False, False
  while len(actions) < explore_steps if policy == "explore" else not done:
    action = actor.act()
    obs, _, done, info = env.step(action)
    success = success or info["success"]
    actions.append(action)
    if record:
      observations.append(obs)
      frames.append(env.frame())
  return {"success": success, "steps": len(actions), "observations": observations, "actions": actions,
          "frames": frames}
