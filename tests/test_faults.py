"""Fault injection on the main command (``python -m lamp_jax.train``, in subprocesses): every fault ends in an exact
resume (final arrays equal an uninterrupted run's, bit for bit), a fallback to an intact step, or one clear
``error:`` line, and nothing already written is lost.

  python -m pytest tests/test_faults.py -m slow -q -p no:cacheprovider -s     (-s prints the fault table)

Faults: kill -9 at random moments (several times in a row), a corrupted latest checkpoint (bit flip, NaN / huge
values, truncated or byte-flipped array file, deleted item), a data shard corrupted while training, a full disk
(a small tmpfs when mount works, else orbax's writes fail by patching, in process).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import checkpoint_faults as faults

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24
TABLE: list[str] = []  # one row per fault, printed at the end of the module (-s)


def _env(**extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
  env.update(extra)
  return env


def _cmd(workdir, variant="", steps=STEPS, *extra):
  return [sys.executable, "-m", "lamp_jax.train", f"--config=tests/toy_train_config.py{':' + variant if variant else ''}",
          f"--workdir={workdir}", f"--config.stages.main.steps={steps}", "--config.checkpoint.every_steps=2",
          "--config.checkpoint.max_to_keep=3", *extra]


def _train(workdir, *extra, variant="", env=None, expect=0):
  proc = subprocess.run(_cmd(workdir, variant, STEPS, *extra), cwd=REPO, env=env or _env(), capture_output=True,
                        text=True)
  assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
  return proc


def _error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("error: ")]


def _assert_same_final_arrays(a, b, step=STEPS):
  """Every array of the two runs' final checkpoints (params, optimizer state, EMA, step, RNG), bit for bit."""
  da, db = faults.step_dir(a, step), faults.step_dir(b, step)
  names = faults.array_names(da)
  assert names == faults.array_names(db) and len(names) > 20
  for name in names:
    np.testing.assert_array_equal(faults.read_array(da, name), faults.read_array(db, name), err_msg=name)
  return len(names)


def _train_rows(workdir) -> list[int]:
  """Steps of the train rows of metrics.jsonl as written (a line cut by a kill is not a row)."""
  rows = []
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record["split"] == "train":
      rows.append(record["step"])
  return rows


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight") / "run"
  _train(workdir)
  yield workdir
  if TABLE:
    print("\nfault | outcome\n" + "\n".join(TABLE))


def test_random_kills_then_the_same_command_resumes_bit_exact(straight, tmp_path):
  """Five kill -9, each once the run (resumed from its newest checkpoint) has logged a random target step at most 8
  steps on, plus a random sub-step delay: the kill lands mid-step, mid-save or mid-metrics-write."""
  rng = np.random.default_rng(20261203)
  workdir = tmp_path / "run"
  metrics = workdir / "metrics.jsonl"
  kills = []
  for _ in range(5):
    ckpts = workdir / "checkpoints"
    start = max([int(s) for s in os.listdir(ckpts) if s.isdigit()] or [0]) if ckpts.exists() else 0
    if start >= STEPS - 1:
      break  # nothing left to interrupt
    target = int(rng.integers(start + 1, min(start + 8, STEPS - 1) + 1))  # a step this run has not logged yet
    started = time.time_ns()
    proc = subprocess.Popen(_cmd(workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Rows this process wrote (it first drops the stale rows after its checkpoint), up to the target step.
    while (not metrics.exists() or os.stat(metrics).st_mtime_ns <= started
           or max(_train_rows(workdir) or [0]) < target):
      assert proc.poll() is None, f"the run ended before step {target}"
      time.sleep(0.002)
    time.sleep(float(rng.uniform(0.0, 0.05)))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [int(s) for s in os.listdir(ckpts) if s.isdigit()]
    kills.append((target, max(_train_rows(workdir) or [0]), max(done) if done else None))
  final = _train(workdir)
  assert "resumed from" in final.stdout
  n = _assert_same_final_arrays(straight, workdir)
  assert _train_rows(workdir) == list(range(1, STEPS + 1))  # replayed steps replaced their rows
  TABLE.append(f"kill -9 x{len(kills)} at (target step, last logged step, newest checkpoint) {kills} | each rerun "
               f"resumed; final {n} arrays bit-exact; metrics rows 1..{STEPS} once each")


@pytest.mark.parametrize("fault", sorted(faults.FAULTS))
def test_corrupted_latest_checkpoint_falls_back(straight, tmp_path, fault):
  workdir = tmp_path / "run"
  _train(workdir, "--stop_after_step=8")
  faults.FAULTS[fault](faults.step_dir(workdir, 8))
  out = _train(workdir)
  assert "checkpoint step 8 is corrupted and was moved to" in out.stdout and "falling back to step 6" in out.stdout
  reason = (workdir / "corrupted_checkpoints" / "8" / "REASON.txt").read_text()
  n = _assert_same_final_arrays(straight, workdir)
  assert _train_rows(workdir) == list(range(1, STEPS + 1))
  TABLE.append(f"latest checkpoint (8): {fault} | fallback to step 6, {n} arrays bit-exact; reported: "
               f"{reason.splitlines()[0][-120:]}")


def test_data_shard_corrupted_mid_run_is_a_clear_error_and_resumes_after_repair(tmp_path):
  from lamp_jax.data import synthetic

  rng = np.random.default_rng(0)
  episodes = [synthetic.lamp_sim_episode(rng, e, 5 + e % 3, (8, 8), 9, 2) for e in range(8)]
  data = tmp_path / "data"
  synthetic.write("lamp_sim_toy", str(data), synthetic.lamp_sim_features((8, 8), 9, 2), episodes, num_shards=4)
  env = _env(LAMP_TEST_DATA_DIR=str(data), LAMP_JAX_CACHE=str(tmp_path / "cache"))
  _train(tmp_path / "straight", variant="pipeline", env=env)
  shard = next((data / "lamp_sim_toy" / "1.0.0").glob("*tfrecord-00002-of-00004"))
  backup = shard.read_bytes()
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cmd(workdir, "pipeline"), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  while not (workdir / "checkpoints" / "2" / "commit_success.txt").exists():
    assert proc.poll() is None, "the run ended before its first checkpoint"
    time.sleep(0.01)
  with open(shard, "r+b") as fh:  # mid-run: the next epoch rereads the file
    fh.truncate(len(backup) // 2)
  _, stderr = proc.communicate()
  assert proc.returncode == 1, stderr[-3000:]
  [line] = _error_lines(stderr)
  assert str(shard) in line and "corrupt or truncated TFRecord" in line and "checkpoints written so far are intact" in line
  kept = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
  from lamp_jax.eval.checkpoint_policy import CheckpointPolicy

  for step in kept:  # nothing written was lost: every checkpoint restores and verifies
    assert CheckpointPolicy(str(workdir), step=step).step == step
  shard.write_bytes(backup)  # repaired
  out = _train(workdir, variant="pipeline", env=env)
  assert f"at step {kept[-1]}" in out.stdout
  n = _assert_same_final_arrays(tmp_path / "straight", workdir)
  TABLE.append(f"data shard truncated mid-run (after step 2) | error naming {shard.name}, checkpoints {kept} intact; "
               f"after repair resumed at {kept[-1]}, {n} arrays bit-exact")


def _mount_tmpfs(path, size: str) -> bool:
  os.makedirs(path, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0


def test_full_disk_is_a_clear_error_and_the_rerun_resumes_exactly(straight, tmp_path):
  root = tmp_path / "disk"
  if _mount_tmpfs(root, "600k"):  # room for two checkpoints of the toy run (~230 KiB each), not three
    try:
      workdir = root / "run"
      full = _train(workdir, expect=1)
      [line] = _error_lines(full.stderr)
      assert "No space left on device" in line
      kept = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
      assert kept and kept[-1] < STEPS
      subprocess.run(["mount", "-o", "remount,size=16m", str(root)], check=True)  # space freed
      out = _train(workdir)
      assert f"at step {kept[-1]}" in out.stdout
      n = _assert_same_final_arrays(straight, workdir)
      assert _train_rows(workdir) == list(range(1, STEPS + 1))
      outcome = (f"600 KiB tmpfs: {line[7:90]}... ; checkpoints {kept} kept; after remount resumed at {kept[-1]}, "
                 f"{n} arrays bit-exact")
    finally:
      subprocess.run(["umount", "-l", str(root)], check=False)
  else:  # no mount permission: orbax's save fails with ENOSPC (in process), then the same command resumes
    outcome = _simulated_full_disk(straight, tmp_path)
  TABLE.append(f"disk full | {outcome}")


def _simulated_full_disk(straight, tmp_path) -> str:
  import orbax.checkpoint as ocp

  from lamp_jax.training import checkpoints as ckpt_lib
  from lamp_jax.training import trainer as trainer_lib
  from tests import toy_train_config

  config = toy_train_config.get_config("")
  config.stages.main.steps, config.checkpoint.every_steps, config.checkpoint.max_to_keep = STEPS, 2, 3
  real_save = ocp.CheckpointManager.save

  def save(manager, step, *args, **kwargs):
    if step >= 10:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(manager, step, *args, **kwargs)

  workdir = tmp_path / "run"
  ocp.CheckpointManager.save = save
  try:
    t = trainer_lib.Trainer(config, str(workdir))
    with pytest.raises(ckpt_lib.CheckpointWriteError, match="step 10 could not be written"):
      t.train()
    t.close()
  finally:
    ocp.CheckpointManager.save = real_save
  _train(workdir)
  n = _assert_same_final_arrays(straight, workdir)
  return f"simulated ENOSPC from step 10 (no mount permission) | CheckpointWriteError, resumed at 8, {n} arrays bit-exact"
