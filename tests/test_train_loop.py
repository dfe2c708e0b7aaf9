"""Trainer on one device with the toy model: resume is bit-exact, freezing, non-finite stop, config errors."""

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.training import defaults
from lamp_jax.training import pretrained
from lamp_jax.training import state as state_lib
from lamp_jax.training import trainer as trainer_lib
from tests import toy_train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(config, workdir, until=None, data=None, eval_fn=None):
  t = trainer_lib.Trainer(config, str(workdir), data=data, eval_fn=eval_fn)
  try:
    state = t.train(until_step=until)
  finally:
    t.close()
  return jax.device_get(state)


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_is_bit_exact(tmp_path):
  config = toy_train_config.get_config("")
  with config.unlocked():
    config.eval.every_steps = 2
  evaluated = []

  def eval_fn(trainer, state, step):  # The periodic evaluation hook sees the live state.
    evaluated.append((step, int(state.step)))
    return {"mean_success": 0.25}

  straight = _run(config, tmp_path / "straight", eval_fn=eval_fn)
  assert evaluated == [(2, 2)]  # Not at the last step (the experiment evaluates the final state itself).
  first = _run(config, tmp_path / "resumed", until=2)
  assert int(first.step) == 2
  resumed = _run(config, tmp_path / "resumed")  # The same command again: resumes at step 2.
  assert int(straight.step) == int(resumed.step) == 4
  _assert_trees_equal(straight.params, resumed.params)
  _assert_trees_equal(straight.ema_params, resumed.ema_params)
  _assert_trees_equal(straight.opt_state, resumed.opt_state)
  # Training moved the parameters, and the EMA differs from them.
  init = trainer_lib.Trainer(config, str(tmp_path / "init"))
  p0 = jax.device_get(init.initial_state(init.stage(0)).params)
  init.close()
  assert not np.array_equal(p0["motion_in"]["dense"]["kernel"], straight.params["motion_in"]["dense"]["kernel"])
  assert not np.array_equal(straight.ema_params["motion_in"]["dense"]["kernel"],
                            straight.params["motion_in"]["dense"]["kernel"])
  # Metrics were written as JSON lines, TensorBoard events exist.
  lines = open(tmp_path / "straight" / "metrics.jsonl").read().splitlines()
  assert len(lines) == 5 and '"grad_norm"' in lines[0] and '"loss/motion"' in lines[0]
  assert '"split": "eval"' in lines[2] and '"mean_success": 0.25' in lines[2]
  assert os.listdir(tmp_path / "straight" / "tensorboard")


def test_two_stages_freeze_exactly(tmp_path):
  config = toy_train_config.get_config("two_stage")
  with config.unlocked():
    config.checkpoint.max_to_keep = 10
  t = trainer_lib.Trainer(config, str(tmp_path / "run"))
  p0 = jax.device_get(t.initial_state(t.stage(0)).params)
  final = jax.device_get(t.train())
  abstract = state_lib.abstract_with_shardings(jax.eval_shape(lambda: final.params), t.state_shardings.params)
  p3 = jax.device_get(t.checkpointer.restore_params(3, abstract))  # End of stage 1.
  t.close()
  assert int(final.step) == 6
  for name in p0:
    if name.startswith("action_"):  # Frozen in stage 1, trained in stage 2.
      _assert_trees_equal(p0[name], p3[name])
      assert not np.array_equal(p3[name]["dense"]["kernel"] if "dense" in p3[name] else p3[name]["ln"]["scale"],
                                final.params[name]["dense"]["kernel"] if "dense" in p3[name]
                                else final.params[name]["ln"]["scale"])
    else:  # Trained in stage 1, frozen in stage 2.
      assert not np.array_equal(p0[name]["dense"]["kernel"], p3[name]["dense"]["kernel"])
      _assert_trees_equal(p3[name], final.params[name])


class _NanAtStep:
  """Synthetic data whose batch at global step ``bad_step`` (0-based) has a NaN in the proprio."""

  kind = "test"
  norm_stats = None

  def __init__(self, inner, bad_step):
    self.inner, self.bad_step = inner, bad_step

  def batches(self, stage_index, stage_name, offset):
    for i, batch in enumerate(self.inner.batches(stage_index, stage_name, offset), start=offset):
      if i == self.bad_step:
        batch[specs.OBSERVATION][specs.PROPRIO][0, 0, 0] = np.nan
      yield batch

  def position(self, stage_index, offset):
    return self.inner.position(stage_index, offset)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
  config = toy_train_config.get_config("")
  clean = _run(config, tmp_path / "clean", until=2)
  t = trainer_lib.Trainer(config, str(tmp_path / "bad"))
  t.data = _NanAtStep(t.data, bad_step=2)  # The third step (after the step-2 checkpoint) goes non-finite.
  with pytest.raises(trainer_lib.NonFiniteError, match="non-finite loss or gradient at step 3"):
    t.train()
  t.close()
  ckpt_dir = tmp_path / "bad" / "checkpoints"
  assert sorted(os.listdir(ckpt_dir)) == ["2"]
  t2 = trainer_lib.Trainer(config, str(tmp_path / "bad"))
  restored, _ = t2.restore(2)
  t2.close()
  _assert_trees_equal(jax.device_get(restored.params), clean.params)
  _assert_trees_equal(jax.device_get(restored.opt_state), clean.opt_state)


@pytest.mark.parametrize("field,value,match", [
    ("stages.main.optimizer.grad_accum_steps", 3, "stages.main.steps"),
    ("data.kind", "csv", "data.kind"),
    ("mesh.fsdp", 0, "mesh.fsdp"),
    ("stage_order", ("main", "polish"), "stage_order"),
])
def test_inconsistent_config_is_rejected_by_name(field, value, match):
  config = toy_train_config.get_config("")
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  with config.unlocked():
    node[leaf] = value
  with pytest.raises(ValueError, match=match.replace(".", r"\.")):
    defaults.validate(config)


def test_frozen_pattern_matching_nothing_is_rejected(tmp_path):
  config = toy_train_config.get_config("")
  config.stages.main.frozen = ("^vlm/",)
  with pytest.raises(ValueError, match=r"stages\.main\.frozen.*'\^vlm/' matches no parameter"):
    trainer_lib.Trainer(config, str(tmp_path))  # checked before any work (training/preflight.py)
  assert not os.path.exists(tmp_path / "checkpoints")


def test_unknown_config_field_is_rejected_by_the_cli(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "lamp_jax.train", "--config=tests/toy_train_config.py", f"--workdir={tmp_path}",
       "--config.stages.main.optimizer.lrr=0.1"],
      cwd=REPO, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr  # one line, no traceback chain
  assert lines[0].startswith("error: config field stages.main.optimizer.lrr: ")
  assert "did you mean config.stages.main.optimizer.lr?" in lines[0]
  assert not os.path.exists(tmp_path / "checkpoints")


def _lamp_npz_config(npz_path):
  """Tiny LaMP run (synthetic data, 1 step) whose VLM starts from a big_vision .npz and stays frozen."""
  from lamp_jax.models import registry

  lamp = registry.get("lamp")

  config = defaults.base_config()
  config.model = lamp.model_config("tiny")
  config.data.global_batch_size = 2
  config.ema.decay = 0.5
  config.logging.tensorboard = False
  config.logging.progress_bar = False
  config.checkpoint.async_save = False
  config.stages.main = defaults.stage_config(1, frozen=(r"^vlm/",), optimizer=defaults.optimizer_config(lr=1e-2))
  config.init = ml_collections.ConfigDict(dict(  # as configs/bridge.py
      vlm=pretrained.init_entry("big_vision_npz", "vlm", str(npz_path))))
  return config


def _npz_run(tmp_path, train: bool):
  """(npz tensors by name, step-0 state, trained state or None) of a tiny LaMP run initialised from an npz."""
  from lamp_jax.models import paligemma, registry

  lamp = registry.get("lamp")
  from lamp_jax.models.weights import big_vision_npz, strict

  rs = np.random.RandomState(11)
  vlm = jax.tree.map(lambda a: rs.standard_normal(a.shape).astype(np.float32),
                     paligemma.abstract_params(lamp.model_config("tiny").vlm))
  big_vision_npz.save(vlm, tmp_path / "pt.npz")
  t = trainer_lib.Trainer(_lamp_npz_config(tmp_path / "pt.npz"), str(tmp_path / "run"))
  try:
    start = jax.device_get(t.initial_state(t.stage(0)))
    final = jax.device_get(t.train()) if train else None  # A fresh run starts from initial_state.
  finally:
    t.close()
  return strict.flatten(vlm), start, final


def _assert_vlm_is(want, tree, name):
  from lamp_jax.models.weights import strict

  got = strict.flatten(tree)
  assert got.keys() == want.keys(), name
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=f"{name}: {k}")


def test_paligemma_npz_initialises_the_vlm_of_a_fresh_state(tmp_path):
  want, start, _ = _npz_run(tmp_path, train=False)
  _assert_vlm_is(want, start.params["vlm"], "step-0 params")
  _assert_vlm_is(want, start.ema_params["vlm"], "step-0 EMA")


@pytest.mark.slow
def test_paligemma_npz_run_trains_from_the_loaded_vlm(tmp_path):
  want, start, final = _npz_run(tmp_path, train=True)
  assert int(final.step) == 1
  _assert_vlm_is(want, final.params["vlm"], "trained (frozen) params")
  _assert_vlm_is(want, final.ema_params["vlm"], "trained EMA")
  # The trainable parts did train (the step was real).
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(start.params["action_expert"]),
                                                       jax.tree.leaves(final.params["action_expert"])))


def test_missing_paligemma_npz_is_an_error_naming_the_file(tmp_path):
  missing = tmp_path / "no_such_weights.npz"
  t = trainer_lib.Trainer(_lamp_npz_config(missing), str(tmp_path / "run"))
  try:
    with pytest.raises(FileNotFoundError, match=r"init\.vlm\.path: .*no_such_weights\.npz"):
      t.train()
  finally:
    t.close()
  assert t.checkpointer.latest_step() is None  # Nothing was trained or saved.
