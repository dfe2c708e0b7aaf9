"""The README main command in its shortened mode (configs/sim.py:smoke), end to end on a fresh cache:
generate demonstrations -> stage 1 motion -> stage 2 action -> closed-loop eval -> table + plots; then the
side-by-side comparison command and the checkpoint policy on the result."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# In the default suite on purpose: CI proves the README main command works on a fresh machine (~2-4 min on two
# CPU cores: three XLA compilations of the LaMP model + simulation).
def test_main_command_smoke_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "MUJOCO_GL": "egl",
         "LAMP_JAX_CACHE": str(tmp_path / "cache")}
  proc = subprocess.run([sys.executable, "-m", "lamp_jax.train", "--config=configs/sim.py:smoke",
                         f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["final_step"] == 6
  assert "mean" in proc.stdout and "put_on_plate" in proc.stdout  # The printed success table.

  # The dataset was generated into the cache, once.
  datasets = os.listdir(tmp_path / "cache" / "sim_data")
  assert len(datasets) == 1 and not datasets[0].endswith(".partial")

  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(r["loss/motion"] > 0 and r["loss/action"] == 0 for r in train[:3])  # stage 1: motion
  assert all(r["loss/motion"] == 0 and r["loss/action"] > 0 for r in train[3:])  # stage 2: action
  assert all(0.0 < r["guidance/gate"] < 1.0 for r in train)

  result = json.load(open(workdir / "eval_results.json"))
  assert set(result["per_task"]) == {"put_on_plate", "stack", "push", "drawer"}
  assert all(t["episodes"] == 1 for t in result["per_task"].values())
  assert 0.0 <= result["mean_success"] <= 1.0 and result["step"] == 6
  for name in ("loss_curves.png", "success_per_task.png", "outcomes_per_task.png"):
    assert os.path.getsize(workdir / "plots" / name) > 1000
  assert all(sum(t["outcomes"].values()) == 1 for t in result["per_task"].values())
  assert "[eval] outcomes per task:" in proc.stdout

  # Side-by-side table of two runs (here the same run twice).
  cmp = subprocess.run([sys.executable, "-m", "lamp_jax.compare", f"--workdirs={workdir},{workdir}",
                        "--names=LaMP,copy", f"--out={tmp_path / 'cmp.png'}"], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert cmp.returncode == 0, cmp.stderr[-2000:]
  assert "LaMP" in cmp.stdout and "copy" in cmp.stdout and os.path.exists(tmp_path / "cmp.png")
  assert "how the episodes of copy ended" in cmp.stdout and os.path.exists(tmp_path / "compare_outcomes.png")

  # The checkpoint behind the evaluator's policy interface: un-normalised float32[H, 7] actions.
  sys.path.insert(0, REPO)
  from lamp_jax.eval.checkpoint_policy import CheckpointPolicy
  from lamp_jax.sim import env as env_lib
  from lamp_jax.sim import tasks

  policy = CheckpointPolicy(str(workdir))
  assert policy.step == 6
  sim = env_lib.TabletopEnv(image_size=policy.image_size, render=True)
  try:
    task = tasks.sample_task("push", tasks.EVAL_SEED_OFFSET)
    obs = sim.reset(task)
    policy.reset(task.instruction)
    # What the served model reads, from its config: its two cameras (dataset keys) and the 8-dim state.
    spec = policy.observation_spec()
    assert sorted(spec) == ["image_0", "image_2", "state"] and spec["state"].shape == (8,)
    with pytest.raises(ValueError, match=r"missing observation keys \['image_2'\]"):
      policy({k: v for k, v in obs.items() if k != "image_2"})
    with pytest.raises(ValueError, match=r"observation\['state'\] has shape \[7\], expected \[8\]"):
      policy(dict(obs, state=obs["state"][:7]))
    actions = policy(obs)
  finally:
    sim.close()
  assert actions.shape == (policy.action_horizon, 7) and actions.dtype == np.float32
  assert np.all(np.isfinite(actions))
