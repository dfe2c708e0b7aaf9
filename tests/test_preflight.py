"""Config checks before any work: every field of every stage, named by its full path, before data generation."""

import os
import subprocess
import sys

import ml_collections
import pytest

from lamp_jax import experiment
from lamp_jax.training import defaults
from lamp_jax.training import preflight
from lamp_jax.training import pretrained
from tests import toy_train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _two_stage():
  return toy_train_config.get_config("two_stage")


def _set(config, field, value):
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  with config.unlocked():
    node[leaf] = value
  return config


def test_shipped_toy_configs_pass():
  # 'pipeline' was rejected (data.pipeline.cameras vs a model that reads no camera) before the check skipped
  # the cameras of models without images.
  for variant in ("", "two_stage", "pipeline"):
    preflight.check_run_config(toy_train_config.get_config(variant))


@pytest.mark.parametrize("field, value, message", [
    # The second stage's problems, found before the first stage could run.
    ("stages.action.frozen", (r"^motion_", r"^vision/"),
     r"config field stages\.action\.frozen: pattern '\^vision/' matches no parameter"),
    ("stages.action.frozen", ("(unclosed",), r"config field stages\.action\.frozen: bad regular expression"),
    ("stages.action.model_overrides", ml_collections.ConfigDict(dict(loss=dict(weights=dict(motoin=1.0)))),
     r"config field stages\.action\.model_overrides\.loss\.weights\.motoin: is not a field of "
     r"config\.model\.loss\.weights"),
    ("stages.action.model_overrides", ml_collections.ConfigDict(dict(loss=dict(weights=dict(action=-1.0)))),
     r"config field model\.loss\.weights\.action must be >= 0, got -1\.0 \(the model of stage 'action'\)"),
    ("stages.action.model_overrides", ml_collections.ConfigDict(dict(loss=dict(weights=dict(action=0.0, motion=0.0)))),
     r"config field model\.loss\.weights: every term of 'tests\.toy_model' weighs 0.*\(the model of stage 'action'\)"),
    ("stages.action.model_overrides", ml_collections.ConfigDict(dict(widht=3)),
     r"config field stages\.action\.model_overrides\.widht: is not a field of config\.model"),
    ("stages.action.optimizer.grad_accum_steps", 2, r"config field stages\.action\.steps: 3 is not a multiple"),
    ("stages.action.optimizer.b2", 1.5, r"config field stages\.action\.optimizer\.b1/b2"),
    # Unknown keys in the closed sections, with their full path.
    ("checkpoint.evry_steps", 3, r"config field checkpoint\.evry_steps: unknown field \(did you mean 'every_steps'\?\)"),
    ("stages.action.optimizer.lrr", 0.1, r"config field stages\.action\.optimizer\.lrr: unknown field"),
    ("stages.action.step", 3, r"config field stages\.action\.step: unknown field"),
    ("model.name", "no_such_model", r"config field model\.name='no_such_model' is not a known model"),
])
def test_problems_of_any_stage_are_named_by_field(field, value, message):
  config = _set(_two_stage(), field, value)
  with pytest.raises(preflight.ConfigError, match=message) as err:
    preflight.check_run_config(config)
  assert "\n" not in str(err.value)


def test_init_target_must_exist_in_the_model():
  config = _two_stage()
  config.init = ml_collections.ConfigDict(dict(
      vlm=pretrained.init_entry("checkpoint", "vlm", "/nonexistent/run")))
  with pytest.raises(preflight.ConfigError, match=r"config field init\.vlm\.target: the model has no parameter "
                     r"subtree 'vlm' \(at 'vlm'; keys there: \['action_in',"):
    preflight.check_run_config(config)


def test_stage_errors_are_found_before_the_simulator_data_is_generated(tmp_path, monkeypatch):
  config = toy_train_config.get_config("pipeline")
  config.stage_order = ("main", "polish")
  config.stages.polish = defaults.stage_config(2, frozen=(r"^no_such_group/",))
  config.sim_data.enabled, config.sim_data.suite, config.sim_data.episodes = True, "tabletop4", 2

  def generate(*args, **kwargs):
    raise AssertionError("data generation started before the config was checked")

  monkeypatch.setattr(experiment, "ensure_sim_dataset", generate)
  with pytest.raises(preflight.ConfigError, match=r"config field stages\.polish\.frozen: pattern "):
    experiment.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_a_passed_config_is_not_checked_again(monkeypatch):
  config = _two_stage()
  config.seed = 101  # a config no other test checked
  traced = []
  check_stage = preflight.check_stage
  monkeypatch.setattr(preflight, "check_stage", lambda c, n, cache=None: traced.append(n) or check_stage(c, n, cache))
  preflight.check_run_config(config)
  preflight.check_run_config(config)  # e.g. the trainer after the experiment: no second trace
  assert traced == ["motion", "action"]
  config.seed = 102
  preflight.check_run_config(config)
  assert traced == ["motion", "action"] * 2


@pytest.mark.parametrize("override, line", [
    ("--config.model.nonexistent=1", "error: config field model.nonexistent: model has no field 'nonexistent'; "
                                     "its fields: ['action_dim', 'action_horizon', 'dtype', 'flow_steps', "),
    ("--config.stages.action.frozen=('^vision/',)", "error: config field stages.action.frozen: pattern '^vision/' "
                                                   "matches no parameter"),
])
def test_cli_config_errors_are_one_line_with_status_2(tmp_path, override, line):
  proc = subprocess.run(
      [sys.executable, "-m", "lamp_jax.train", "--config=tests/toy_train_config.py:two_stage",
       f"--workdir={tmp_path / 'run'}", override],
      cwd=REPO, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = [x for x in proc.stderr.splitlines() if x.strip()]
  assert len(lines) == 1 and lines[0].startswith(line), proc.stderr
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_files_are_checked_before_any_work(tmp_path):
  config = _two_stage()
  config.tokenizer.kind = "sentencepiece"  # without tokenizer.path
  with pytest.raises(preflight.ConfigError, match=r"config field tokenizer: ValueError: tokenizer\.kind="
                     r"'sentencepiece' needs tokenizer\.path"):
    experiment.run(config, str(tmp_path / "a"))
  config = _two_stage()
  config.init = ml_collections.ConfigDict(dict(
      motion=pretrained.init_entry("checkpoint", "motion_in", str(tmp_path / "no_such_run"))))
  with pytest.raises(preflight.ConfigError, match=r"config field init\.motion\.path: .*no_such_run does not exist"):
    experiment.run(config, str(tmp_path / "b"))
  assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
