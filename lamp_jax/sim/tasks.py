"""Language-conditioned task families of the tabletop benchmark, their randomisation and success predicates.

Families (instruction templates; colours and shapes are drawn per episode):

  put_on_plate   "put the {colour} {cube|cylinder} on the {colour} plate"
                 success: object centre within 4 cm (xy) of the plate centre, resting on it, gripper not touching.
  stack          "stack the {colour} cube on the {colour} cube"
                 success: top cube within 2 cm (xy) of the bottom cube, one cube height above it, not touched.
  push           "push the {colour} {cube|cylinder} to the {left|right}"
                 left / right as seen in the primary ('front') camera: left = world -y, right = world +y.
                 success: the object moved >= 8 cm along that direction from its start.
  drawer         "open the drawer" | "close the drawer"
                 success: drawer opening >= 8 cm (open) | <= 1 cm (close).

An episode ends at success or after the family's ``max_steps`` control steps (10 Hz).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

COLORS = {
    "red": (0.85, 0.12, 0.1, 1.0),
    "green": (0.15, 0.7, 0.2, 1.0),
    "blue": (0.12, 0.3, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.2, 0.75, 1.0),
    "orange": (1.0, 0.5, 0.05, 1.0),
    "white": (0.95, 0.95, 0.95, 1.0),
}
CUBES = ("cube_0", "cube_1", "cube_2")
CYLINDERS = ("cylinder_0", "cylinder_1")
PLATES = ("plate_0", "plate_1")
_FOOTPRINT = {"cube": 0.03, "cylinder": 0.025, "plate": 0.065}  # radius used to keep objects apart

# Object spawn area (table top, clear of the drawer cabinet and of the robot base).
SPAWN_LOW = np.array([-0.17, -0.26])
SPAWN_HIGH = np.array([0.17, 0.1])
PUSH_DISTANCE = 0.08
DRAWER_OPEN_SUCCESS = 0.08
DRAWER_CLOSED_SUCCESS = 0.01
# xy distance (m) within which the placed object must rest on its receptacle (success predicates below).
PLACE_XY_TOLERANCE = {"put_on_plate": 0.04, "stack": 0.02}


def shape_of(name: str) -> str:
  return name.split("_")[0]


@dataclasses.dataclass
class TaskInstance:
  """One randomised episode: what to do and how the scene starts."""

  family: str
  instruction: str
  object_poses: dict[str, tuple[float, float, float]]  # body name -> (x, y, yaw); absent = parked off-table
  colors: dict[str, tuple[float, float, float, float]]
  drawer_opening: float
  max_steps: int
  params: dict[str, Any]
  start: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # object positions after reset

  def success(self, env) -> bool:
    return FAMILIES[self.family].success(env, self)


@dataclasses.dataclass(frozen=True)
class TaskFamily:
  name: str
  max_steps: int
  sample: Callable[[np.random.Generator], TaskInstance]
  success: Callable[[Any, TaskInstance], bool]


def _place(rng: np.random.Generator, names: list[str], fixed: dict | None = None, low=SPAWN_LOW,
           high=SPAWN_HIGH, keep_out: Callable[[np.ndarray], bool] | None = None) -> dict:
  """Rejection-sample non-overlapping (x, y, yaw) for ``names``."""
  poses = dict(fixed or {})
  for name in names:
    for _ in range(1000):
      xy = rng.uniform(low, high)
      clear = all(np.hypot(*(xy - np.array(p[:2]))) > _FOOTPRINT[shape_of(name)] + _FOOTPRINT[shape_of(o)] + 0.02
                  for o, p in poses.items())
      if clear and (keep_out is None or not keep_out(xy)):
        break
    else:
      raise RuntimeError(f"could not place {name} without overlap")
    poses[name] = (float(xy[0]), float(xy[1]), float(rng.uniform(-np.pi / 4, np.pi / 4)))
  return poses


def _colours(rng: np.random.Generator, names: list[str]) -> tuple[dict, dict]:
  picked = rng.choice(list(COLORS), size=len(names), replace=False)
  return {n: str(c) for n, c in zip(names, picked)}, {n: COLORS[str(c)] for n, c in zip(names, picked)}


# ------------------------------------------------------------------------------------------- put on plate
def _sample_put_on_plate(rng):
  target = str(rng.choice(CUBES + CYLINDERS))
  plate, other_plate = (str(p) for p in rng.permutation(PLATES))
  distractor = str(rng.choice([o for o in CUBES + CYLINDERS if o != target]))
  names = [plate, other_plate, target, distractor]
  poses = _place(rng, names)
  colour_names, rgba = _colours(rng, names)
  instr = f"put the {colour_names[target]} {shape_of(target)} on the {colour_names[plate]} plate"
  return TaskInstance("put_on_plate", instr, poses, rgba, 0.0, FAMILIES["put_on_plate"].max_steps,
                      {"object": target, "receptacle": plate})


def _on_top(env, top: str, bottom: str, xy_tol: float) -> bool:
  p_top, p_bot = env.body_pos(top), env.body_pos(bottom)
  from lamp_jax.sim.env import OBJECT_HALF_HEIGHT  # pylint: disable=g-import-not-at-top
  height = OBJECT_HALF_HEIGHT[shape_of(top)] + OBJECT_HALF_HEIGHT[shape_of(bottom)]
  dz = p_top[2] - p_bot[2]
  return bool(np.hypot(*(p_top[:2] - p_bot[:2])) < xy_tol and abs(dz - height) < 0.008
              and env.body_z_axis(top)[2] > 0.95 and not env.gripper_touches(top))


def _success_put_on_plate(env, task):
  return _on_top(env, task.params["object"], task.params["receptacle"], PLACE_XY_TOLERANCE["put_on_plate"])


# ------------------------------------------------------------------------------------------------- stack
def _sample_stack(rng):
  top, bottom, third = (str(c) for c in rng.permutation(CUBES))
  distractor = str(rng.choice(CYLINDERS))
  names = [bottom, top, third, distractor]
  poses = _place(rng, names)
  colour_names, rgba = _colours(rng, names)
  instr = f"stack the {colour_names[top]} cube on the {colour_names[bottom]} cube"
  return TaskInstance("stack", instr, poses, rgba, 0.0, FAMILIES["stack"].max_steps,
                      {"object": top, "receptacle": bottom})


def _success_stack(env, task):
  return _on_top(env, task.params["object"], task.params["receptacle"], PLACE_XY_TOLERANCE["stack"])


# -------------------------------------------------------------------------------------------------- push
def _sample_push(rng):
  target = str(rng.choice(CUBES + CYLINDERS))
  direction = str(rng.choice(["left", "right"]))
  sign = -1.0 if direction == "left" else 1.0
  # Start far enough from the goal side; the pushed object ends inside the spawn area +- PUSH_DISTANCE.
  y_low, y_high = (-0.12, 0.08) if sign < 0 else (-0.24, -0.02)
  first = _place(rng, [target], low=np.array([-0.14, y_low]), high=np.array([0.12, y_high]))
  tx, ty, _ = first[target]

  def in_path(xy):  # keep distractors out of the pusher's sweep (x band around the target, both sides in y)
    return abs(xy[0] - tx) < 0.12 and -0.12 < sign * (xy[1] - ty) < 0.2

  others = [str(o) for o in rng.choice([o for o in CUBES + CYLINDERS if o != target], size=2, replace=False)]
  poses = _place(rng, others, fixed=first, keep_out=in_path)
  names = [target] + others
  colour_names, rgba = _colours(rng, names)
  instr = f"push the {colour_names[target]} {shape_of(target)} to the {direction}"
  return TaskInstance("push", instr, poses, rgba, 0.0, FAMILIES["push"].max_steps,
                      {"object": target, "direction": direction, "sign": sign})


def _success_push(env, task):
  obj = task.params["object"]
  moved = task.params["sign"] * (env.body_pos(obj)[1] - task.start[obj][1])
  return bool(moved >= PUSH_DISTANCE)


# ------------------------------------------------------------------------------------------------ drawer
def _sample_drawer(rng):
  verb = str(rng.choice(["open", "close"]))
  opening = 0.0 if verb == "open" else float(rng.uniform(0.085, 0.105))
  names = [str(o) for o in rng.choice(CUBES + CYLINDERS, size=2, replace=False)]
  poses = _place(rng, names, high=np.array([SPAWN_HIGH[0], -0.05]),
                 keep_out=lambda xy: abs(xy[0] - 0.05) < 0.12 and xy[1] > -0.1)
  _, rgba = _colours(rng, names)
  return TaskInstance("drawer", f"{verb} the drawer", poses, rgba, opening, FAMILIES["drawer"].max_steps,
                      {"verb": verb})


def _success_drawer(env, task):
  if task.params["verb"] == "open":
    return env.drawer_opening >= DRAWER_OPEN_SUCCESS
  return env.drawer_opening <= DRAWER_CLOSED_SUCCESS


FAMILIES: dict[str, TaskFamily] = {
    "put_on_plate": TaskFamily("put_on_plate", 70, _sample_put_on_plate, _success_put_on_plate),
    "stack": TaskFamily("stack", 70, _sample_stack, _success_stack),
    "push": TaskFamily("push", 50, _sample_push, _success_push),
    "drawer": TaskFamily("drawer", 50, _sample_drawer, _success_drawer),
}

# Suites: named lists of families. Seeds: demonstrations use seeds [0, 10**6); evaluation uses seeds from
# EVAL_SEED_OFFSET upwards, so the two never overlap.
SUITES: dict[str, tuple[str, ...]] = {
    "tabletop4": ("put_on_plate", "stack", "push", "drawer"),
    "pick_place": ("put_on_plate", "stack"),
    "push": ("push",),
    "drawer": ("drawer",),
}
# Every word the instruction templates above can produce (the vocabulary of configs/sim.py's word tokenizer;
# tests/test_sim_config.py checks that sampled instructions use no other word).
INSTRUCTION_WORDS: tuple[str, ...] = (
    ("put", "stack", "push", "open", "close", "the", "on", "to", "cube", "cylinder", "plate", "drawer", "left",
     "right") + tuple(COLORS))
DEMO_SEED_LIMIT = 10**6
EVAL_SEED_OFFSET = 10**6


def suite_families(suite: str) -> tuple[str, ...]:
  if suite not in SUITES:
    raise ValueError(f"unknown suite '{suite}', expected one of {sorted(SUITES)}")
  return SUITES[suite]


def sample_task(family: str, seed: int) -> TaskInstance:
  """The task instance of ``family`` for ``seed`` (deterministic)."""
  if family not in FAMILIES:
    raise ValueError(f"unknown task family '{family}', expected one of {sorted(FAMILIES)}")
  rng = np.random.default_rng([int(seed), sorted(FAMILIES).index(family)])
  return FAMILIES[family].sample(rng)
