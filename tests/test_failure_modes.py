"""failure_modes: each outcome label from a scripted object trajectory (a fake environment), and the counts."""

import numpy as np
import pytest

from lamp_jax.eval import failure_modes
from lamp_jax.sim import tasks


class _FakeEnv:
  """The accessors EpisodeTracker reads: body positions, gripper command / contacts, the hand position."""

  def __init__(self, task):
    self.pos = {n: np.array([p[0], p[1], 0.02]) for n, p in task.object_poses.items()}
    self.gripper, self.touching, self.hand = 1.0, set(), np.array([-0.12, 0.0, 0.22])
    self.hand_yaw, self.yaw = 0.0, {}

  def body_pos(self, name):
    return self.pos[name].copy()

  def gripper_touches(self, name):
    return name in self.touching

  def measured_tcp(self):
    return self.hand.copy(), np.array([0.0, 0.0, self.hand_yaw])

  def body_yaw(self, name):
    return self.yaw.get(name, 0.0)


def _start(family, seed=7):
  task = tasks.sample_task(family, seed)
  env = _FakeEnv(task)
  task.start = {n: env.body_pos(n) for n in task.object_poses}
  tracker = failure_modes.EpisodeTracker(task)
  tracker.update(env)
  return task, env, tracker


def _close_over(env, tracker, name, offset=(0.0, 0.0)):
  env.hand = env.pos[name] + np.array([offset[0], offset[1], 0.0])
  env.gripper = 0.0
  tracker.update(env)


def _lift(env, tracker, name, dz=0.08):
  env.touching.add(name)
  env.pos[name] = env.pos[name] + np.array([0.0, 0.0, dz])
  tracker.update(env)


def test_success_wins_and_unknown_families_fail():
  task, env, tracker = _start("put_on_plate")
  assert tracker.outcome(True, env) == {"outcome": "success"}
  _, env, tracker = _start("drawer")
  assert tracker.outcome(False, env) == {"outcome": "failed"}


def test_pick_and_place_labels():
  task, env, tracker = _start("put_on_plate")
  target, plate = task.params["object"], task.params["receptacle"]
  other = next(n for n in task.object_poses if n in tasks.CUBES + tasks.CYLINDERS and n != target)
  other_plate = next(n for n in task.object_poses if n in tasks.PLATES and n != plate)

  assert tracker.outcome(False, env)["outcome"] == "no_contact"  # nothing happened

  _, env, tracker = _start("put_on_plate")
  _close_over(env, tracker, other, offset=(0.005, 0.0))
  _lift(env, tracker, other)
  out = tracker.outcome(False, env)
  assert out["outcome"] == "other_object" and out["closed_nearest"] == "other"

  _, env, tracker = _start("put_on_plate")
  env.yaw[target], env.hand_yaw = 0.1, 0.1 + np.pi / 2 + np.radians(20.0)  # 20 degrees off two parallel faces
  _close_over(env, tracker, target, offset=(0.03, 0.0))
  env.touching.add(target)
  tracker.update(env)
  out = tracker.outcome(False, env)
  assert out["outcome"] == "not_lifted" and out["closed_nearest"] == "target"
  assert out["close_xy_to_target_m"] == pytest.approx(0.03, abs=1e-4)
  assert out["close_z_above_target_m"] == pytest.approx(0.0, abs=1e-4)
  if tasks.shape_of(target) == "cube":
    assert out["close_yaw_error_deg"] == pytest.approx(20.0, abs=0.1)
  else:
    assert "close_yaw_error_deg" not in out

  _, env, tracker = _start("put_on_plate")
  _lift(env, tracker, target)
  env.pos[target] = env.pos[plate] + np.array([0.01, 0.0, 0.04])  # over the plate, still held
  tracker.update(env)
  assert tracker.outcome(False, env)["outcome"] == "not_released"

  _, env, tracker = _start("put_on_plate")
  _lift(env, tracker, target)
  env.pos[target] = env.pos[other_plate] + np.array([0.0, 0.0, 0.02])  # on the other plate
  tracker.update(env)
  out = tracker.outcome(False, env)
  assert out["outcome"] == "misplaced" and out["ended_nearest"] == "other"
  assert out["final_distance_m"] > failure_modes.PLACE_TOLERANCE_M["put_on_plate"]

  _, env, tracker = _start("put_on_plate")
  _lift(env, tracker, target)
  env.pos[target] = np.array([0.9, 0.0, -0.7])  # thrown off the table
  tracker.update(env)
  assert tracker.outcome(False, env)["outcome"] == "off_table"


def test_stack_lifting_the_receptacle_is_the_wrong_object():
  task, env, tracker = _start("stack")
  _lift(env, tracker, task.params["receptacle"])
  assert tracker.outcome(False, env)["outcome"] == "other_object"


def test_push_labels():
  task, env, tracker = _start("push")
  target, sign = task.params["object"], task.params["sign"]
  other = next(n for n in task.object_poses if n != target)
  env.pos[other] = env.pos[other] + np.array([0.05, 0.0, 0.0])
  tracker.update(env)
  assert tracker.outcome(False, env)["outcome"] == "other_object"

  for along, label in ((-0.05, "wrong_direction"), (0.05, "too_short"), (0.005, "no_contact")):
    _, env, tracker = _start("push")
    env.pos[target] = env.pos[target] + np.array([0.0, sign * along, 0.0])
    tracker.update(env)
    out = tracker.outcome(False, env)
    assert out["outcome"] == label, (along, out)
    assert out["target_moved_along_m"] == pytest.approx(along, abs=1e-4)


def test_count_outcomes_keeps_the_label_order_and_rejects_unknown_labels():
  assert list(failure_modes.count_outcomes(["misplaced", "success", "misplaced"]).items()) == [
      ("success", 1), ("misplaced", 2)]
  with pytest.raises(ValueError, match="unknown outcome labels"):
    failure_modes.count_outcomes(["success", "lost"])


def test_periodic_evaluation_logs_outcome_shares(monkeypatch):
  from types import SimpleNamespace

  from lamp_jax import experiment

  result = {"mean_success": 0.25, "per_task": {"stack": {"success_rate": 0.25, "episodes": 4,
                                                         "outcomes": {"success": 1, "misplaced": 3}}}}
  monkeypatch.setattr(experiment, "evaluate_state", lambda trainer, state, episodes_per_task: result)
  trainer = SimpleNamespace(config=SimpleNamespace(eval=SimpleNamespace(periodic_episodes_per_task=4)))
  scalars = experiment.periodic_eval(trainer, state=None, step=10)
  assert scalars["outcome/stack/misplaced"] == 0.75 and scalars["outcome/stack/success"] == 0.25
  assert scalars["success/stack"] == 0.25
