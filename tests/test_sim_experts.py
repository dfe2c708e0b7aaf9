"""Each scripted expert solves its task family (>= 95 %), with the demonstration noise switched on."""

import numpy as np
import pytest

from lamp_jax.eval import stats
from lamp_jax.sim import env as env_lib
from lamp_jax.sim import experts, tasks


def _success_rate(family, seeds, noise=0.003):
  env = env_lib.TabletopEnv(render=False)
  results = [experts.run_expert_episode(env, tasks.sample_task(family, s), noise=noise, seed=s) for s in seeds]
  for r in results:
    assert r["steps"] <= tasks.FAMILIES[family].max_steps
  return np.mean([r["success"] for r in results]), results


@pytest.mark.parametrize("family", sorted(tasks.FAMILIES))
def test_expert_solves_family(family):
  rate, results = _success_rate(family, range(100, 106))
  assert rate == 1.0, [r["steps"] for r in results]


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(tasks.FAMILIES))
def test_expert_success_at_least_95_percent(family):
  """60 seeds per family; the Wilson lower bound must exclude rates below 85 %."""
  rate, _ = _success_rate(family, range(1000, 1060))
  assert rate >= 0.95
  assert stats.wilson_interval(int(round(rate * 60)), 60)[0] > 0.85


def test_tasks_are_randomised_and_named_by_language():
  for family in tasks.FAMILIES:
    instructions = {tasks.sample_task(family, s).instruction for s in range(12)}
    assert len(instructions) >= 2, family
  task = tasks.sample_task("push", 7)
  assert task.instruction.endswith(("to the left", "to the right"))
  with pytest.raises(ValueError, match="unknown task family"):
    tasks.sample_task("fold_laundry", 0)
  with pytest.raises(ValueError, match="unknown suite"):
    tasks.suite_families("nope")


def test_success_predicates_are_not_trivially_true():
  env = env_lib.TabletopEnv(render=False)
  for family in tasks.FAMILIES:
    for seed in range(4):
      task = tasks.sample_task(family, seed)
      env.reset(task)
      assert not task.success(env), (family, seed)


def test_explorer_records_fixed_length_episodes_whose_actions_the_frame_does_not_determine():
  """Exploration data (``policy='explore'``): exactly ``explore_steps`` steps, deterministic per seed, the hand
  kept near the exploration box, and from the same start frame other seeds act differently (the property a
  latent action model needs); the recorded actions are what the env executed."""
  env = env_lib.TabletopEnv(render=False)
  task = tasks.sample_task("stack", 3)
  runs = {seed: experts.run_expert_episode(env, task, seed=seed, record=True, policy="explore", explore_steps=19)
          for seed in (0, 1)}
  again = experts.run_expert_episode(env, task, seed=0, record=True, policy="explore", explore_steps=19)
  assert runs[0]["steps"] == 19 and len(runs[0]["observations"]) == 20
  np.testing.assert_array_equal(np.stack(again["actions"]), np.stack(runs[0]["actions"]))
  first = [np.stack(r["actions"]) for r in runs.values()]
  np.testing.assert_array_equal(runs[0]["observations"][0]["state"], runs[1]["observations"][0]["state"])
  assert np.abs(first[0][:, :3] - first[1][:, :3]).max() > 0.01  # same frame, different actions
  for actions in first:
    assert np.all(np.abs(actions[:, :3]) <= env_lib.MAX_POS_DELTA) and set(np.unique(actions[:, 6])) <= {0.0, 1.0}
  # The measured hand (state[:3]) stays within one step (and ~1 cm of tracking) of the exploration box.
  tcps = np.stack([o["state"][:3] for r in runs.values() for o in r["observations"]])
  assert np.all(tcps >= experts.EXPLORE_LOW - env_lib.MAX_POS_DELTA - 0.01)
  assert np.all(tcps <= experts.EXPLORE_HIGH + env_lib.MAX_POS_DELTA + 0.01)
  with pytest.raises(ValueError, match="policy='random'"):
    experts.run_expert_episode(env, task, policy="random")
