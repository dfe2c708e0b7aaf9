"""Checkpoint integrity: per-array checksums (parity with a numpy reference, every bit flip detected, sharding
independent), verified restores, fallback to the newest intact step, model-mismatch errors, metrics on resume."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lamp_jax.eval.checkpoint_policy import CheckpointPolicy
from lamp_jax.training import checkpoint_compat
from lamp_jax.training import checkpoints as ckpt_lib
from lamp_jax.training import integrity
from lamp_jax.training import metrics as metrics_lib
from lamp_jax.training import trainer as trainer_lib
from tests import checkpoint_faults as faults
from tests import toy_train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------- checksums --


def _fmix32(x: np.ndarray) -> np.ndarray:
  x = x.astype(np.uint64)
  x ^= x >> 16
  x = (x * 0x85EBCA6B) & M32
  x ^= x >> 13
  x = (x * 0xC2B2AE35) & M32
  x ^= x >> 16
  return x


def _reference_hash(a: np.ndarray) -> int:
  """The documented algorithm, in numpy: sum_i fmix32(bits_i ^ fmix32(i)) mod 2^32 over C-order elements."""
  a = np.ascontiguousarray(a)
  if a.dtype == np.bool_:
    bits = a.reshape(-1).astype(np.uint64)
  else:
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[a.dtype.itemsize]
    bits = a.view(width).reshape(-1).astype(np.uint64)
  index = np.arange(bits.size, dtype=np.uint64)
  return int(_fmix32(bits ^ _fmix32(index)).sum() & M32)


def test_checksums_equal_a_numpy_reference_for_every_dtype():
  rng = np.random.default_rng(0)
  normal = rng.normal(size=(7, 3, 5)).astype(np.float32)
  tree = {"f32": normal, "bf16": jnp.asarray(normal[0], jnp.bfloat16), "f16": normal[1].astype(np.float16),
          "i32": rng.integers(-2**31, 2**31, size=(11,), dtype=np.int32),
          "u8": rng.integers(0, 256, size=(13, 3), dtype=np.uint8), "b": rng.random(17) > 0.5,
          "key": jax.random.PRNGKey(3), "scalar": np.float32(2.5), "empty": np.zeros((0, 4), np.float32)}
  records = integrity.records(tree)
  assert set(records) == set(tree)
  for name, value in tree.items():
    host = np.asarray(value)
    if name == "bf16":
      host = np.asarray(jax.lax.bitcast_convert_type(value, jnp.uint16))  # same bits, numpy-viewable
    assert records[name].hash == _reference_hash(host), name
    assert records[name].shape == tuple(np.shape(value)) and records[name].nonfinite == 0
  assert records["bf16"].dtype == "bfloat16" and records["b"].dtype == "bool"
  assert records["empty"].hash == 0
  # The JSON item round-trips.
  assert integrity.from_json(json.loads(json.dumps(integrity.to_json(records)))) == records


def test_every_single_bit_flip_and_any_swap_change_the_checksum_and_non_finite_values_are_counted():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(5, 7)).astype(np.float32)
  base = integrity.records({"w": a})["w"].hash
  flipped = []
  for index in [(0, 0), (2, 3), (4, 6)]:
    for bit in range(32):  # every bit of three elements (sign, exponent, mantissa)
      b = a.copy()
      b.view(np.uint32)[index] ^= np.uint32(1 << bit)
      flipped.append(b)
  hashes = [r["w"].hash for r in map(lambda b: integrity.records({"w": b}), flipped)]
  assert base not in hashes and len(set(hashes)) == len(hashes)
  swapped = a.copy()
  swapped[1, 2], swapped[3, 4] = a[3, 4], a[1, 2]  # same values, other places: a plain sum would not see it
  assert integrity.records({"w": swapped})["w"].hash != base
  bad = a.copy()
  bad[0, 0], bad[1, 1], bad[2, 2] = np.nan, np.inf, 3.4e38  # 3.4e38 is finite: only the checksum sees it
  record = integrity.records({"w": bad})["w"]
  assert record.nonfinite == 2
  problems = integrity.compare({"params/w": integrity.records({"w": a})["w"]}, {"w": record}, prefix="params/")
  assert problems == [f"params/w: checksum {record.hash:#010x} differs from the saved {base:#010x} (the bytes "
                      "changed)", "params/w: 2 non-finite values"]


_SHARDED = textwrap.dedent("""
    import json
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from lamp_jax.training import integrity
    assert jax.device_count() == 4
    rng = np.random.default_rng(2)
    host = {"w": rng.normal(size=(8, 6)).astype(np.float32), "b": rng.normal(size=(12,)).astype(np.float32)}
    mesh = Mesh(np.asarray(jax.devices()).reshape(2, 2), ("x", "y"))
    sharded = {"w": jax.device_put(host["w"], NamedSharding(mesh, P("x", "y"))),
               "b": jax.device_put(host["b"], NamedSharding(mesh, P(("x", "y"))))}
    one = {k: jax.device_put(v, jax.devices()[3]) for k, v in host.items()}
    print("RESULT" + json.dumps([{k: r.to_json() for k, r in integrity.records(t).items()}
                                 for t in (host, sharded, one)]))
""")


def test_checksums_do_not_depend_on_the_sharding():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
         "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"}
  out = subprocess.run([sys.executable, "-c", _SHARDED], cwd=REPO, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  host, sharded, one = json.loads(out.stdout.split("RESULT", 1)[1])
  assert host == sharded == one


# ------------------------------------------------------------------------------------------- restore path --


def _config(steps=6, **checkpoint):
  config = toy_train_config.get_config("")
  config.stages.main.steps = steps
  config.checkpoint.max_to_keep = 5
  for k, v in checkpoint.items():
    config.checkpoint[k] = v
  return config


def _run(config, workdir, until=None):
  t = trainer_lib.Trainer(config, str(workdir))
  try:
    return jax.device_get(t.train(until_step=until))
  finally:
    t.close()


def _assert_states_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted 6-step run and a run stopped at step 4 (checkpoints 2 and 4) to copy and corrupt."""
  root = tmp_path_factory.mktemp("runs")
  config = _config()
  straight = _run(config, root / "straight")
  _run(config, root / "at4", until=4)
  return config, straight, root


@pytest.mark.parametrize("fault", ["bit_flip", "nan_and_huge", "truncated_file", "deleted_state"])
def test_corrupted_latest_step_falls_back_to_the_previous_one_and_ends_bit_exact(runs, tmp_path, fault, capsys):
  config, straight, root = runs
  workdir = tmp_path / "run"
  shutil.copytree(root / "at4", workdir)
  faults.FAULTS[fault](faults.step_dir(workdir, 4))
  resumed = _run(config, workdir)
  out = capsys.readouterr().out
  assert "checkpoint step 4 in" in out and "is corrupted or incomplete" in out
  named = {"bit_flip": "params/motion_in/dense/kernel: checksum", "nan_and_huge": "ema_params/action_in/dense/"
           "kernel: 1 non-finite values", "truncated_file": "item state unreadable",
           "deleted_state": "item state is missing"}[fault]
  assert named in out
  assert "falling back to step 2" in out and "resumed from" in out and "at step 2" in out
  _assert_states_equal(resumed, straight)  # steps 3..6 replayed from the intact step 2: bit for bit
  moved = workdir / "corrupted_checkpoints" / "4"
  assert moved.is_dir() and "corrupted" in (moved / "REASON.txt").read_text()  # set aside, not deleted
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["2", "4", "6"]
  train_rows = [r for r in metrics_lib.read_jsonl(str(workdir / "metrics.jsonl")) if r["split"] == "train"]
  raw_steps = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
  assert raw_steps == [1, 2, 3, 4, 5, 6] == [r["step"] for r in train_rows]  # replayed rows replaced


def test_every_step_corrupted_stops_the_run_and_moves_nothing(runs, tmp_path):
  config, _, root = runs
  workdir = tmp_path / "run"
  shutil.copytree(root / "at4", workdir)
  faults.flip_bit(faults.step_dir(workdir, 2), "params/action_out/dense/kernel", index=(1, 2), bit=3)
  faults.delete_item(faults.step_dir(workdir, 4), "state")
  t = trainer_lib.Trainer(config, str(workdir))
  try:
    with pytest.raises(ckpt_lib.NoIntactCheckpointError) as err:
      t.train()
  finally:
    t.close()
  assert "step 4" in str(err.value) and "step 2" in str(err.value)
  assert "params/action_out/dense/kernel: checksum" in str(err.value)
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["2", "4"]
  assert not (workdir / "corrupted_checkpoints").exists()


def test_a_non_finite_state_is_never_written(tmp_path):
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), async_save=True)
  state = {"params": {"w": jnp.array([[1.0, jnp.nan], [0.5, 2.0]]), "b": jnp.ones(3)}}
  with pytest.raises(ckpt_lib.NonFiniteStateError, match=r"step 7 .*params/w: 1 non-finite"):
    checkpointer.save(7, state, {"step": 7}, {}, {})
  checkpointer.wait()
  assert checkpointer.all_steps() == []
  checkpointer.close()


def test_a_checkpoint_without_checksums_restores_and_is_still_checked_for_non_finite_values(runs, tmp_path):
  """Checkpoints written before the checksums existed: meta has no 'integrity' flag and there is no item."""
  config, _, root = runs
  workdir = tmp_path / "run"
  shutil.copytree(root / "at4", workdir)
  for step in (2, 4):
    directory = faults.step_dir(workdir, step)
    faults.delete_item(directory, "integrity")
    meta_file = os.path.join(directory, "meta", "metadata")
    meta = json.load(open(meta_file))
    del meta["integrity"]
    json.dump(meta, open(meta_file, "w"))
  t = trainer_lib.Trainer(config, str(workdir))
  try:
    state, _ = t.restore(4)
    assert int(state.step) == 4
    faults.poison(faults.step_dir(workdir, 4), "params/motion_mlp/dense/kernel")
    with pytest.raises(ckpt_lib.CheckpointCorruptError, match="params/motion_mlp/dense/kernel: 1 non-finite"):
      t.restore(4)
  finally:
    t.close()


def test_checkpoint_policy_serves_the_newest_intact_step(runs, tmp_path):
  _, straight, root = runs
  workdir = tmp_path / "run"
  shutil.copytree(root / "at4", workdir)
  faults.flip_bit(faults.step_dir(workdir, 4), "ema_params/action_out/dense/kernel")
  policy = CheckpointPolicy(str(workdir))
  assert policy.step == 2 and len(policy.skipped_corrupted) == 1 and "step 4" in policy.skipped_corrupted[0]
  with pytest.raises(ckpt_lib.CheckpointCorruptError, match="ema_params/action_out/dense/kernel: checksum"):
    CheckpointPolicy(str(workdir), step=4)  # an explicit step is served or refused, never swapped
  assert int(straight.step) == 6


def test_resuming_with_another_model_lists_the_arrays_and_config_fields(runs, tmp_path):
  _, _, root = runs
  workdir = tmp_path / "run"
  shutil.copytree(root / "at4", workdir)
  config = _config()
  config.model.width = 24
  t = trainer_lib.Trainer(config, str(workdir))
  try:
    with pytest.raises(checkpoint_compat.CheckpointMismatchError) as err:
      t.train()
  finally:
    t.close()
  msg = str(err.value)
  assert "checkpoint step 4 in" in msg and "holds another model than the config builds" in msg
  assert ("other shape: params/motion_in/dense/kernel is float32[10, 16] in the checkpoint, float32[10, 24] in the "
          "model") in msg
  assert "model.width: 16 -> 24" in msg and "model.mlp" not in msg  # only the fields that differ
  assert "strict" not in msg.lower()  # never the advice to restore non-strictly
  assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["2", "4"]  # a mismatch is not corruption


def test_config_and_layout_diffs():
  stored = {"model": {"width": 16, "loss": {"weights": {"a": 1.0}}}, "data": {"datasets": [{"name": "x"}]},
            "stage_order": ["main"]}
  now = {"model": {"width": 16, "loss": {"weights": {"a": 0.5, "b": 1.0}}}, "data": {"datasets": [{"name": "y"}]},
         "stage_order": ["main"]}
  assert checkpoint_compat.config_diff(stored, now) == [
      'data.datasets[0].name: "x" -> "y"', "model.loss.weights.a: 1.0 -> 0.5", "model.loss.weights.b: (absent) -> 1.0"]
  lines = checkpoint_compat.layout_diff(
      {"opt_state/0/mu/w": ((3,), "float32"), "params/w": ((3,), "float32"), "params/old": ((2,), "float32")},
      {"opt_state/0/mu/w": ((4,), "float32"), "params/w": ((4,), "float32"), "params/new": ((2,), "float32")})
  assert lines == ["missing in the checkpoint: params/new float32[2]", "extra in the checkpoint: params/old float32[2]",
                   "other shape: params/w is float32[3] in the checkpoint, float32[4] in the model",
                   "other shape: opt_state/0/mu/w is float32[3] in the checkpoint, float32[4] in the model"]


def test_describe_exception_drops_non_strict_advice():
  e = ValueError("Requested shape (3,) does not match stored (4,). If you want to restore anyway, set "
                 "`strict=False` in `ArrayRestoreArgs` for any array in v0 API. Path: params.w")
  text = ckpt_lib.describe_exception(e)
  assert "strict" not in text and text.startswith("ValueError: Requested shape (3,)") and "params.w" in text


# ------------------------------------------------------------------------------------------------ metrics --


def test_metrics_rows_of_replayed_steps_are_replaced(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 7)]
  rows.insert(4, {"step": 4, "split": "eval", "mean_success": 0.5})
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 7, "split": "tr')  # cut by a kill
  assert metrics_lib.truncate_after(str(path), 4) == 3  # steps 5, 6 and the cut line
  assert [(r["step"], r["split"]) for r in metrics_lib.read_jsonl(str(path))] == [
      (1, "train"), (2, "train"), (3, "train"), (4, "train"), (4, "eval")]
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=True)
  assert writer.start(4) == 0
  writer.write(5, {"loss": 0.25})
  writer.close()
  assert [r["step"] for r in metrics_lib.read_jsonl(str(path)) if r["split"] == "train"] == [1, 2, 3, 4, 5]
  # Files written before truncation existed: the later row of a step wins.
  with open(path, "a") as fh:
    fh.write(json.dumps({"step": 5, "split": "train", "loss": 0.125}) + "\n")
  assert metrics_lib.read_jsonl(str(path))[-1] == {"step": 5, "split": "train", "loss": 0.125}


def test_config_from_json_round_trip_keeps_fields():  # the stored config the mismatch report compares against
  config = _config()
  back = ckpt_lib.config_from_json(ckpt_lib.config_to_json(config))
  assert checkpoint_compat.config_diff(ckpt_lib.config_to_json(config), ckpt_lib.config_to_json(back)) == []
  assert isinstance(back.stages.main, ml_collections.ConfigDict)


def test_a_failed_write_names_the_step_keeps_the_previous_one_and_the_rerun_is_exact(runs, tmp_path, monkeypatch):
  """A full disk while step 4 is saved (simulated: orbax's save raises ENOSPC): CheckpointWriteError names step 4
  and the intact step 2; rerunning resumes from step 2 and ends bit for bit like the uninterrupted run."""
  import errno

  import orbax.checkpoint as ocp

  config, straight, _ = runs
  workdir = tmp_path / "run"
  real_save = ocp.CheckpointManager.save

  def save(manager, step, *args, **kwargs):
    if step == 4:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(manager, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  t = trainer_lib.Trainer(config, str(workdir))
  with pytest.raises(ckpt_lib.CheckpointWriteError, match=r"checkpoint step 4 could not be written to .*No space "
                     r"left on device.*the newest complete checkpoint is step 2 \(intact\)"):
    t.train()
  t.close()  # no second error from the cleanup
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
  _assert_states_equal(_run(config, workdir), straight)
  assert [r["step"] for r in metrics_lib.read_jsonl(str(workdir / "metrics.jsonl"))] == [1, 2, 3, 4, 5, 6]
