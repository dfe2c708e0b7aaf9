"""Multi-host guards: hosts launched with different configs stop at start with the differing fields named."""

import os
import socket
import subprocess
import sys

import ml_collections

from lamp_jax.training import multihost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_diff_configs_names_changed_added_and_removed_fields():
  a = ml_collections.ConfigDict(dict(seed=0, data=dict(data_dir="gs://a", batch=8), mesh=dict(fsdp=-1)))
  b = ml_collections.ConfigDict(dict(seed=0, data=dict(data_dir="gs://b", batch=8), extra=1))
  assert multihost.diff_configs(multihost.config_to_json(a), multihost.config_to_json(b)) == \
      ["data.data_dir", "extra", "mesh.fsdp"]
  assert multihost.diff_configs(multihost.config_to_json(a), multihost.config_to_json(a)) == []


def test_single_process_needs_no_distributed_runtime(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
              "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(var, raising=False)
  assert multihost.initialize_distributed() is False
  assert multihost.initialize_distributed("127.0.0.1:1", 1, 0) is False  # one process: nothing to start
  multihost.check_same_config_across_hosts(ml_collections.ConfigDict(dict(seed=1)))  # no-op with one process


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_hosts_with_different_configs_stop_at_start(tmp_path):
  """Process 1 gets another --config.seed: both processes exit with an error naming 'seed', before training."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "lamp_jax.train", "--config=tests/toy_train_config.py", f"--workdir={tmp_path}",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       f"--config.seed={3 + i}"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  results = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=1800)  # a hang guard, not a speed limit
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    results.append((p.returncode, out, err))
  for rc, _, err in results:
    assert rc != 0
    assert "hosts disagree on the config" in err and "process 1 differs from process 0" in err, err[-2000:]
    assert "seed: 3 vs 4" in err, err[-2000:]
  assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")
