"""python -m lamp_jax.ablate: pooled success over seeds, differences with Newcombe intervals, missing methods."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from lamp_jax import ablate
from lamp_jax.eval import stats

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_difference_interval_matches_newcombe():
  # Newcombe (1998), Statistics in Medicine 17:873, Table II example (a): 56/70 - 48/80 = 0.2, [0.0524, 0.3339].
  low, high = stats.difference_interval(56, 70, 48, 80)
  assert low == pytest.approx(0.0524, abs=1e-4) and high == pytest.approx(0.3339, abs=1e-4)
  low, high = stats.difference_interval(5, 10, 5, 10)
  assert low == pytest.approx(-high) and low < 0 < high


def _fake_run(directory, successes: dict, episodes: int, losses: dict, outcomes: bool = False):
  os.makedirs(directory, exist_ok=True)
  per_task = {t: {"success_rate": s / episodes, "successes": s, "episodes": episodes,
                  "ci95": list(stats.wilson_interval(s, episodes))} for t, s in successes.items()}
  if outcomes:  # results written since failure_modes: every episode's outcome counted
    for t, s in successes.items():
      per_task[t]["outcomes"] = {"success": s, "misplaced": episodes - s}
  result = {"per_task": per_task, "episodes_per_task": episodes,
            "mean_success": sum(s / episodes for s in successes.values()) / len(successes)}
  with open(os.path.join(directory, "eval_results.json"), "w") as fh:
    json.dump(result, fh)
  with open(os.path.join(directory, "metrics.jsonl"), "w") as fh:
    fh.write(json.dumps({"step": 1, "split": "train", **losses, "loss/unused": 0.0}) + "\n")


def test_collects_finished_runs_into_one_table(tmp_path):
  suite = tmp_path / "suite.py"
  suite.write_text("ABLATION_METHODS = {'lamp': ('', 'smoke'), 'no_motion': ('no_motion', 'smoke_no_motion'),"
                   " 'pi0': ('pi0', 'smoke_pi0')}\n")
  work = tmp_path / "runs"
  _fake_run(ablate.run_dir(str(work), "lamp", 0), {"drawer": 9, "push": 3}, 10, {"loss": 0.5}, outcomes=True)
  _fake_run(ablate.run_dir(str(work), "lamp", 1), {"drawer": 10, "push": 5}, 10, {"loss": 0.3}, outcomes=True)
  _fake_run(ablate.run_dir(str(work), "no_motion", 0), {"drawer": 8, "push": 1}, 10, {"loss": 0.7})
  _fake_run(ablate.run_dir(str(work), "no_motion", 1), {"drawer": 7, "push": 2}, 10, {"loss": 0.9})
  _fake_run(ablate.run_dir(str(work), "pi0", 0), {"drawer": 7, "push": 2}, 10, {"loss": 0.9})
  summary = ablate.ablate(["lamp", "no_motion", "pi0", "lara"], 2, str(work), str(suite), "default", [],
                          collect_only=True)
  lamp, no_motion = summary["methods"]["lamp"], summary["methods"]["no_motion"]
  assert lamp["pooled"]["per_task"]["drawer"]["successes"] == 19 and lamp["pooled"]["episodes"] == 40
  assert lamp["pooled"]["seed_means"] == [0.6, 0.75]
  assert lamp["final_losses"] == {"loss": pytest.approx(0.4)}
  diff = no_motion["difference_to_first"]
  assert diff["difference"] == pytest.approx(18 / 40 - 27 / 40)
  assert diff["ci95"] == [round(v, 4) for v in stats.difference_interval(18, 40, 27, 40)]
  assert summary["methods"]["pi0"]["status"].startswith("incomplete: 1 of 2")
  assert summary["methods"]["lara"]["status"].startswith("missing")
  table = ablate.format_table(summary)
  assert "lamp" in table and "lara: missing" in table and "vs lamp" in table
  assert (work / "ablation.json").exists() and (work / "ablation_success.png").stat().st_size > 1000
  # Outcome counts are summed over seeds where every run recorded them, and left out where one did not.
  assert lamp["pooled"]["per_task"]["drawer"]["outcomes"] == {"success": 19, "misplaced": 1}
  assert "outcomes" not in no_motion["pooled"]["per_task"]["drawer"]
  assert "ended: drawer: success 19, misplaced 1 (of 20)" in table
  assert (work / "ablation_outcomes.png").stat().st_size > 1000


@pytest.mark.parametrize("suite", ["sim.py", "sim_film_cnn.py", "sim_film_cnn_short.py", "sim_film_cnn_trunk.py",
                                   "sim_film_cnn_latent.py"])
def test_every_declared_variant_of_the_builtin_suites_exists(suite):
  declared, _ = ablate.load_suite(str(REPO / "configs" / suite))
  assert set(declared) <= set(ablate.FAMILY)
  from configs import sim

  for method, variants in declared.items():
    for variant in variants:
      assert sim.get_config(variant).stage_order, (method, variant)


@pytest.mark.parametrize("suite,long", [("sim_film_cnn.py", True), ("sim_film_cnn_short.py", False)])
def test_the_grounded_suite_compares_every_method_on_one_frozen_encoder_at_one_budget(suite, long):
  """configs/sim_film_cnn.py: every method on the FiLM-CNN prefix encoder with stage 0, the encoder frozen in every
  stage, the same total steps, data and evaluation as the ':film_cnn_long' LaMP policy; configs/sim_film_cnn_short.py
  the same at the ':film_cnn' budget."""
  from configs import sim

  declared, _ = ablate.load_suite(str(REPO / "configs" / suite))
  reference = sim.get_config(declared["lamp"][0])
  budget = sum(int(reference.stages[s].steps) for s in reference.stage_order)
  assert budget == 600 + 2400 + (sim.LONG_EXTRA_ACTION_STEPS if long else 0)
  for method, (variant, smoke) in declared.items():
    c = sim.get_config(variant)
    assert c.model.vlm.kind == "film_cnn" and c.grounding.enabled, method
    assert all("^vlm/" in c.stages[s].frozen for s in c.stage_order), method
    assert sum(int(c.stages[s].steps) for s in c.stage_order) == budget, method
    assert c.data.pipeline.datasets[0].name == reference.data.pipeline.datasets[0].name
    assert c.eval.to_dict() == reference.eval.to_dict() and c.grounding.to_dict() == reference.grounding.to_dict()
    assert sim.get_config(smoke).model.vlm.kind == "film_cnn", method


def test_the_trunk_suite_lets_the_encoder_past_the_keypoint_trunk_learn_in_every_arm():
  """configs/sim_film_cnn_trunk.py: the motion-image head acts on the policy only through shared parameters that
  learn, so every arm freezes only stage 0's keypoint trunk (the whole encoder only in the head's warm-up, where
  only the head trains), at one step budget, with the same data and evaluation."""
  from configs import sim
  from lamp_jax.models import film_cnn

  declared, _ = ablate.load_suite(str(REPO / "configs" / "sim_film_cnn_trunk.py"))
  assert set(declared) == {"lamp", "no_motion", "motion_image"}
  configs = {m: sim.get_config(v) for m, (v, _) in declared.items()}
  budget = sum(int(configs["lamp"].stages[s].steps) for s in configs["lamp"].stage_order)
  assert budget == 600 + 2400 + sim.LONG_EXTRA_ACTION_STEPS
  for method, c in configs.items():
    trunk = film_cnn.keypoint_trunk_pattern(
        film_cnn.config_from_dict(c.model.vlm, int(c.model.max_token_len), len(c.model.image_keys)))
    assert c.model.vlm.kind == "film_cnn" and c.grounding.enabled, method
    for name in c.stage_order:
      assert trunk in c.stages[name].frozen, (method, name)
      assert ("^vlm/" in c.stages[name].frozen) == (name == "warmup"), (method, name)
    assert sum(int(c.stages[s].steps) for s in c.stage_order) == budget, method
    assert c.eval.to_dict() == configs["lamp"].eval.to_dict(), method
    assert c.grounding.to_dict() == configs["lamp"].grounding.to_dict(), method
  assert configs["motion_image"].stage_order == ("warmup", "joint")
  assert configs["motion_image"].model.motion_image.enabled and not configs["no_motion"].model.use_motion


def test_overrides_reach_the_methods_whose_config_has_the_field():
  """One ablate command for the whole family: an override goes where the field exists (the LAM path only to the
  methods that load a LAM), and one that no method has is an error before anything trains."""
  suite = str(REPO / "configs" / "sim_film_cnn.py")
  declared, _ = ablate.load_suite(suite)
  variants = {m: v for m, (v, _) in declared.items()}
  lam_path, episodes = "--config.init.lam.path=/runs/lam", "--config.eval.episodes_per_task=3"
  routed = ablate.overrides_per_method(suite, variants, [lam_path, episodes])
  assert {m for m, r in routed.items() if lam_path in r} == {"lara_frozen_lam", "lafp", "lafp_bc"}
  assert all(r[-1] == episodes for r in routed.values())
  assert ablate.overrides_per_method(suite, variants, []) == {m: [] for m in variants}
  with pytest.raises(ValueError, match=r"init\.lam\.path"):
    ablate.overrides_per_method(suite, {"lamp": variants["lamp"]}, [lam_path])
  with pytest.raises(ValueError, match="eval.episodes_per_taks"):
    ablate.overrides_per_method(suite, variants, ["--config.eval.episodes_per_taks=3"])


@pytest.mark.slow
def test_smoke_budget_trains_evaluates_and_tabulates(tmp_path):
  out = subprocess.run([sys.executable, "-m", "lamp_jax.ablate", "--methods=lamp,no_motion", "--seeds=1",
                        f"--workdir={tmp_path}", "--budget=smoke"], cwd=REPO, capture_output=True, text=True,
                       check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert "no_motion" in out.stdout and "vs lamp" in out.stdout
