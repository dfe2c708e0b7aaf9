"""Why a closed-loop episode failed: one outcome label per episode, from the simulator's privileged state.

Success rates say how often a policy fails, not how. The tracker below watches the movable objects during an
episode (positions from the simulator, gripper contacts) and names the outcome, so that an evaluation can tell a
policy that does not find the named object from one that finds it and places it badly.

Labels (``OUTCOMES``; thresholds in metres, one place, here):

  success             the task's success predicate held.
  pick-and-place families (put_on_plate, stack; ``task.params`` has 'object' and 'receptacle'):
    other_object      another movable object (for stack, the receptacle cube too) was lifted >= LIFT_M and the
                      named one never was: the policy went for the wrong object (a grounding failure).
    no_contact        the gripper never touched the named object and nothing else was lifted.
    not_lifted        it touched the named object but never lifted it >= LIFT_M (a failed grasp).
    off_table         it was lifted and ends off the table (its centre >= OFF_TABLE_DROP_M below its start).
    misplaced         it was lifted and ends on the table, but farther (xy) from the receptacle than the task's
                      tolerance (4 cm plate, 2 cm stack; ``PLACE_TOLERANCE_M``).
    not_released      it ends within that tolerance, but the success predicate is false (still held, tilted or
                      not resting on the receptacle).
  push (``task.params`` has 'object' and 'sign'):
    other_object      another movable object moved >= MOVED_M (xy) and the named one did not.
    no_contact        nothing moved >= MOVED_M.
    wrong_direction   the named object moved >= MOVED_M, but against the instructed direction (net y motion along
                      the sign <= 0).
    too_short         it moved the right way but less than the task's distance.
  any other family:   failed.

Where the gripper first closed (pick-and-place) says more about 'no_contact' and 'not_lifted': the xy distance from
the hand (TCP) to the named object at that moment (``close_xy_to_target_m``), the TCP's height above the object's
centre then (``close_z_above_target_m``), for cubes the hand's yaw error modulo 90 degrees
(``close_yaw_error_deg``), and which object was nearest the hand then
(``closed_nearest``: 'target', 'receptacle' or 'other'; absent when the gripper never closed). For 'misplaced',
``ended_nearest`` says whether the object ends nearest the named receptacle or another object (the other plate: a
receptacle-grounding failure).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lamp_jax.sim import tasks as tasks_lib

LIFT_M = 0.03  # an object counts as lifted when its centre rose this much above its start
OFF_TABLE_DROP_M = 0.1  # an object ended off the table when its centre is this far below its start
GRIPPER_CLOSED = 0.5  # gripper commands below this close the fingers (1 = open, sim.env.TabletopEnv.step)
MOVED_M = 0.02  # an object counts as moved when its centre travelled this far (xy) from its start
PLACE_TOLERANCE_M = tasks_lib.PLACE_XY_TOLERANCE  # the success predicates' xy tolerances, owned by tasks.py
OUTCOMES = ("success", "other_object", "no_contact", "not_lifted", "off_table", "misplaced", "not_released",
            "wrong_direction", "too_short", "failed")
_MOVABLE = tasks_lib.CUBES + tasks_lib.CYLINDERS


class EpisodeTracker:
  """Follows one episode; call ``update(env)`` after reset and after every step, then ``outcome(success)``."""

  def __init__(self, task: tasks_lib.TaskInstance):
    self.task = task
    self.movable = [n for n in task.object_poses if n in _MOVABLE]
    self.start = {n: np.asarray(task.start[n], np.float64) for n in self.movable if n in task.start}
    self.max_lift = {n: 0.0 for n in self.start}
    self.max_moved = {n: 0.0 for n in self.start}
    self.touched_target = False
    self.final: dict[str, np.ndarray] = {}
    self.first_close: dict[str, Any] | None = None

  def update(self, env) -> None:
    """Record the objects' current state (``env``: a ``sim.env.TabletopEnv`` or anything with its accessors)."""
    target = self.task.params.get("object")
    for name, start in self.start.items():
      pos = np.asarray(env.body_pos(name), np.float64)
      self.final[name] = pos
      self.max_lift[name] = max(self.max_lift[name], float(pos[2] - start[2]))
      self.max_moved[name] = max(self.max_moved[name], float(np.hypot(*(pos[:2] - start[:2]))))
    if target is None or target not in self.start:
      return
    if not self.touched_target:
      self.touched_target = bool(env.gripper_touches(target))
    if self.first_close is None and float(env.gripper) < GRIPPER_CLOSED:
      hand, hand_rpy = (np.asarray(v, np.float64) for v in env.measured_tcp())
      hand_xy = hand[:2]
      receptacle = self.task.params.get("receptacle")
      names = list(self.start) + ([receptacle] if receptacle and receptacle not in self.start else [])
      distances = {n: float(np.hypot(*(np.asarray(env.body_pos(n), np.float64)[:2] - hand_xy))) for n in names}
      nearest = min(distances, key=distances.get)
      role = "target" if nearest == target else "receptacle" if nearest == receptacle else "other"
      self.first_close = {"close_xy_to_target_m": round(distances[target], 4), "closed_nearest": role,
                          "close_z_above_target_m": round(float(hand[2] - env.body_pos(target)[2]), 4)}
      if tasks_lib.shape_of(target) == "cube":  # fingers need two parallel faces: yaw matters modulo 90 degrees
        error = (float(hand_rpy[2]) - float(env.body_yaw(target)) + np.pi / 4) % (np.pi / 2) - np.pi / 4
        self.first_close["close_yaw_error_deg"] = round(float(np.degrees(error)), 1)

  def outcome(self, success: bool, env=None) -> dict[str, Any]:
    """``{"outcome": label, ...}`` plus the figures the label came from (JSON-able).

    ``env`` (optional) gives the receptacle's final position for pick-and-place; without it the receptacle's start
    position is used (receptacles rarely move).
    """
    if success:
      return {"outcome": "success", **(self.first_close or {})}
    family, params = self.task.family, self.task.params
    target = params.get("object")
    if target is None or target not in self.start:
      return {"outcome": "failed"}
    others = [n for n in self.start if n != target]
    if family in PLACE_TOLERANCE_M:
      return self._pick_and_place(target, others, env)
    if family == "push":
      return self._push(target, others)
    return {"outcome": "failed"}

  def _pick_and_place(self, target: str, others: list[str], env) -> dict[str, Any]:
    family, receptacle = self.task.family, self.task.params["receptacle"]
    lifted = self.max_lift[target] >= LIFT_M
    info = {"target_max_lift_m": round(self.max_lift[target], 4), **(self.first_close or {})}
    if not lifted:
      if any(self.max_lift[n] >= LIFT_M for n in others):  # stack: lifting the receptacle cube counts too
        return {"outcome": "other_object", **info}
      return {"outcome": "not_lifted" if self.touched_target else "no_contact", **info}
    if self.final[target][2] < self.start[target][2] - OFF_TABLE_DROP_M:
      return {"outcome": "off_table", **info}
    if env is not None:
      receptacle_xy = np.asarray(env.body_pos(receptacle), np.float64)[:2]
    else:
      receptacle_xy = np.asarray(self.task.start[receptacle], np.float64)[:2]
    distance = float(np.hypot(*(self.final[target][:2] - receptacle_xy)))
    info["final_distance_m"] = round(distance, 4)
    if env is not None:  # which object the named one ends nearest to: the other plate means the wrong receptacle
      rest = {n: float(np.hypot(*(np.asarray(env.body_pos(n), np.float64)[:2] - self.final[target][:2])))
              for n in self.task.object_poses if n != target}
      nearest = min(rest, key=rest.get)
      info["ended_nearest"] = "receptacle" if nearest == receptacle else "other"
    return {"outcome": "misplaced" if distance > PLACE_TOLERANCE_M[family] else "not_released", **info}

  def _push(self, target: str, others: list[str]) -> dict[str, Any]:
    along = float(self.task.params["sign"] * (self.final[target][1] - self.start[target][1]))
    info = {"target_moved_along_m": round(along, 4)}
    if self.max_moved[target] < MOVED_M:
      if any(self.max_moved[n] >= MOVED_M for n in others):
        return {"outcome": "other_object", **info}
      return {"outcome": "no_contact", **info}
    return {"outcome": "wrong_direction" if along <= 0.0 else "too_short", **info}


def count_outcomes(labels: list[str]) -> dict[str, int]:
  """Counts per label, in ``OUTCOMES`` order, labels that never occur left out."""
  unknown = sorted(set(labels) - set(OUTCOMES))
  if unknown:
    raise ValueError(f"unknown outcome labels {unknown}; expected those of failure_modes.OUTCOMES")
  return {label: labels.count(label) for label in OUTCOMES if label in labels}


def format_outcomes(result: dict[str, Any]) -> str:
  """One line per task of a ``sim_eval.evaluate`` result: how its episodes ended, e.g.
  ``stack: success 2, no_contact 5, misplaced 6 (of 20)``."""
  lines = []
  for family, r in result["per_task"].items():
    counts = ", ".join(f"{label} {n}" for label, n in r.get("outcomes", {}).items())
    lines.append(f"{family}: {counts} (of {r['episodes']})")
  return "\n".join(lines)
