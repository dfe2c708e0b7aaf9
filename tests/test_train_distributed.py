"""Trainer on 8 simulated CPU devices (FSDP) and on 2 processes on localhost (jax.distributed, gloo)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_EIGHT_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh
    from lamp_jax.training import trainer as trainer_lib
    from tests import toy_train_config

    assert jax.device_count() == 8, jax.devices()
    config = toy_train_config.get_config("")
    config.mesh.fsdp = 8
    workdir = sys.argv[1]
    out = {}
    t8 = trainer_lib.Trainer(config, workdir + "/eight")
    assert dict(t8.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}, t8.mesh.shape
    state8 = t8.train(until_step=2)
    rows = []
    for name, tree in (("params", state8.params), ("ema", state8.ema_params), ("opt", state8.opt_state)):
      for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not hasattr(x, "sharding") or x.ndim == 0:
          continue
        spec = str(x.sharding.spec)
        shard_sizes = sorted({s.data.size for s in x.addressable_shards})
        rows.append({"tree": name, "path": jax.tree_util.keystr(path), "shape": list(x.shape), "spec": spec,
                     "fraction": [n / x.size for n in shard_sizes], "devices": len(x.sharding.device_set)})
    out["rows"] = rows
    t8.close()
    mesh1 = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    config.mesh.fsdp = -1
    t1 = trainer_lib.Trainer(config, workdir + "/one", mesh=mesh1)
    state1 = t1.train(until_step=2)
    t1.close()
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params))]
    out["max_param_diff_8_vs_1"] = max(diffs)
    print("RESULT" + json.dumps(out))
""")


def _env(**extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
  env.update(extra)
  return env


def test_eight_devices_shard_every_fsdp_parameter(tmp_path):
  proc = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES, str(tmp_path)], cwd=REPO, capture_output=True,
                        text=True,
                        env=_env(XLA_FLAGS=os.environ.get("XLA_FLAGS", "") +
                                 " --xla_force_host_platform_device_count=8"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT", 1)[1])
  sharded = [r for r in result["rows"] if "fsdp" in r["spec"]]
  # The toy model names its widths ('patch_in', 'embed') / ('embed', 'mlp') / ('mlp', 'embed'); 'embed' maps
  # to 'fsdp', and every 'embed' dimension divisible by 8 is split: the *_in kernels and biases (embed = 16)
  # and the *_mlp kernels; the *_out kernels (embed = 54 and 21) stay replicated by the shape-aware rules.
  expected = {f"['{g}_{layer}']['dense']['{leaf}']" for g in ("motion", "action")
              for layer, leaf in (("in", "kernel"), ("in", "bias"), ("mlp", "kernel"))}
  assert {r["path"] for r in sharded if r["tree"] == "params"} == expected
  # Each device holds 1/8 of every FSDP-sharded parameter, and so of its EMA and Adam moments.
  assert {r["path"] for r in sharded if r["tree"] == "ema"} == expected
  assert len([r for r in sharded if r["tree"] == "opt"]) == 2 * len(expected)  # mu and nu.
  for r in sharded:
    assert r["devices"] == 8 and r["fraction"] == [0.125], r
  # Same training on 1 device (up to float reduction order).
  assert result["max_param_diff_8_vs_1"] < 1e-5


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir, *extra):
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "lamp_jax.train", "--config=tests/toy_train_config.py", f"--workdir={workdir}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}", *extra],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for i in range(2)]
  outs = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=1800)  # a hang guard, not a speed limit
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    outs.append((p.returncode, out, err))
  for rc, out, err in outs:
    assert rc == 0, err[-3000:]
  return outs


def test_two_processes_train_checkpoint_and_resume(tmp_path):
  workdir = tmp_path / "run"
  outs = _two_processes(workdir, "--stop_after_step=2")
  assert json.loads(outs[0][1].strip().splitlines()[-1])["final_step"] == 2
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
  # The same two-process command again resumes from the shared checkpoint and finishes the stage.
  outs = _two_processes(workdir)
  assert "resumed from" in outs[0][1] and "at step 2" in outs[0][1]
  assert json.loads(outs[0][1].strip().splitlines()[-1])["final_step"] == 4
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records] == [1, 2, 3, 4]  # Logged by process 0 only.
  assert records[-1]["loss"] < records[0]["loss"]


@pytest.mark.slow  # Three trainings in subprocesses (~1 min on 2 shared cores).
def test_sigkill_then_same_command_resumes_bit_exact(tmp_path):
  """Kill -9 the training process right after a checkpoint (while later steps run / save asynchronously),
  rerun the same command: the final parameters equal an uninterrupted run's, bit for bit."""
  cmd = [sys.executable, "-m", "lamp_jax.train", "--config=tests/toy_train_config.py",
         "--config.stages.main.steps=12", "--config.checkpoint.every_steps=3"]
  straight = subprocess.run(cmd + [f"--workdir={tmp_path / 'straight'}"], cwd=REPO, env=_env(),
                            capture_output=True, text=True)
  assert straight.returncode == 0, straight.stderr[-3000:]
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(cmd + [f"--workdir={workdir}"], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  while not (workdir / "checkpoints" / "3" / "commit_success.txt").exists():
    assert proc.poll() is None, "the run ended before its first checkpoint"
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (workdir / "checkpoints" / "12").exists()
  resumed = subprocess.run(cmd + [f"--workdir={workdir}"], cwd=REPO, env=_env(), capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from" in resumed.stdout
  import numpy as np
  import orbax.checkpoint as ocp

  def params(run):
    return ocp.PyTreeCheckpointer().restore(str(tmp_path / run / "checkpoints" / "12" / "state"))["params"]

  import jax

  a, b = params("straight"), params("killed")
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # two training processes (~95 s); test_two_processes_train_checkpoint_and_resume stays default
def test_two_processes_read_their_own_files_checkpoint_and_resume(tmp_path):
  """Two processes train on a 4-file RLDS dataset through the real pipeline (each reads its own files),
  stop at step 2 with a checkpoint, and the same command resumes to step 4 (deterministic data skip)."""
  from lamp_jax.data import synthetic

  rng = np.random.default_rng(0)
  episodes = [synthetic.lamp_sim_episode(rng, e, 5 + e % 3, (8, 8), 9, 2) for e in range(8)]
  synthetic.write("lamp_sim_toy", str(tmp_path / "data"), synthetic.lamp_sim_features((8, 8), 9, 2), episodes,
                  num_shards=4)
  env = _env(LAMP_TEST_DATA_DIR=str(tmp_path / "data"), LAMP_JAX_CACHE=str(tmp_path / "cache"))
  workdir = tmp_path / "run"

  def run(*extra):
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "lamp_jax.train", "--config=tests/toy_train_config.py:pipeline",
         f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         f"--process_id={i}", *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env) for i in range(2)]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, outs):
      assert p.returncode == 0, err[-3000:]
    return outs

  outs = run("--stop_after_step=2")
  assert json.loads(outs[0][0].strip().splitlines()[-1])["final_step"] == 2
  outs = run()
  assert "resumed from" in outs[0][0] and json.loads(outs[0][0].strip().splitlines()[-1])["final_step"] == 4
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) for r in records)
