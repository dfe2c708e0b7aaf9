"""python -m lamp_jax.perf.aot: TPU facts, the plan's arithmetic, and (``pytest -m tpu``) a real TPU compile of the
trainer's step for a tiny two-stage config on a 'v5e:2x2' topology."""

import json
import os
import subprocess
import sys
import types

import pytest

from lamp_jax.perf import aot
from lamp_jax.perf import tpu_specs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


# ------------------------------------------------------------------------------------ fast (default suite) --


@pytest.mark.parametrize("topology, accel, chips, hosts", [
    ("v5p:4x4x2", "v5p-64", 32, 8), ("v5p:2x2x1", "v5p-8", 4, 1), ("v5e:16x16", "v5litepod-256", 256, 64),
    ("v5e:2x2", "v5litepod-4", 4, 1), ("v6e:8x8", "v6e-64", 64, 16), ("v4:4x4x4", "v4-128", 64, 16)])
def test_topology_names_follow_cloud_accelerator_types(topology, accel, chips, hosts):
  assert tpu_specs.accelerator_type(topology) == accel
  assert tpu_specs.num_chips(topology) == chips
  assert tpu_specs.num_hosts(topology) == hosts


@pytest.mark.parametrize("bad", ["v5p:4x4", "v5e:2x2x2", "v7:2x2", "v5p-64", "v5e:0x4"])
def test_malformed_topologies_are_rejected_by_name(bad):
  with pytest.raises(ValueError, match="topology"):
    tpu_specs.parse_topology(bad)


def test_hbm_per_device_splits_chips_into_their_devices():
  # v4 topologies expose one device per TensorCore (2 per chip); v5p megacore one device per chip.
  v4_core = types.SimpleNamespace(device_kind="TPU v4", num_cores=1)
  v5p_chip = types.SimpleNamespace(device_kind="TPU v5", num_cores=2)
  v5e_chip = types.SimpleNamespace(device_kind="TPU v5 lite", num_cores=1)
  assert tpu_specs.hbm_bytes_per_device(v4_core) == 16 * GIB
  assert tpu_specs.hbm_bytes_per_device(v5p_chip) == 95 * GIB
  assert tpu_specs.hbm_bytes_per_device(v5e_chip) == 16 * GIB
  with pytest.raises(ValueError, match="unknown TPU device kind"):
    tpu_specs.hbm_bytes_per_device(types.SimpleNamespace(device_kind="cpu", num_cores=1))


def test_memory_report_sums_buffers_and_compares_with_hbm():
  stats = types.SimpleNamespace(argument_size_in_bytes=10 * GIB, output_size_in_bytes=9 * GIB,
                                alias_size_in_bytes=9 * GIB, temp_size_in_bytes=5 * GIB,
                                generated_code_size_in_bytes=GIB // 2, peak_memory_in_bytes=15 * GIB)
  compiled = types.SimpleNamespace(memory_analysis=lambda: stats)
  r = aot.memory_report(compiled, 16 * GIB)
  assert r["memory_per_device_gib"]["total"] == pytest.approx(15.5)
  assert r["fits"] and not r["fits_with_margin"]  # 15.5 > 0.95 * 16
  assert r["headroom_gib"] == pytest.approx(0.5)
  assert not aot.memory_report(compiled, 15 * GIB)["fits"]


def test_compiler_out_of_memory_becomes_a_plan_entry():
  err = RuntimeError("RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total memory "
                     "required for HLO temporaries (118.07G) exceeds available HBM (95.73G). HLO module: jit_x.")
  r = aot.compile_oom_report(err, 95 * GIB)
  assert r["fits"] is False
  assert r["oom"]["required_gib"] == pytest.approx(118.07) and r["oom"]["compiler_hbm_limit_gib"] == 95.73
  assert r["headroom_gib"] == pytest.approx(95.73 - 118.07)
  assert aot.compile_oom_report(RuntimeError("INVALID_ARGUMENT: shapes"), GIB) is None


def test_parse_mesh():
  assert aot.parse_mesh("4,64,1") == {"data": 4, "fsdp": 64, "tensor": 1}
  with pytest.raises(ValueError, match="--mesh"):
    aot.parse_mesh("4,64")


# ---------------------------------------------------------------------- libtpu compile (pytest -m tpu) --


@pytest.mark.tpu
def test_tiny_two_stage_config_compiles_for_v5e_2x2():
  """The CLI end to end: compiles both stages of the trainer's toy two-stage config for 4 v5e chips."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  proc = subprocess.run(
      [sys.executable, "-m", "lamp_jax.perf.aot", "--config=tests/toy_train_config.py:two_stage", "--topology=v5e:2x2",
       "--global_batch=12"], cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  plan = json.loads(proc.stdout)
  assert (plan["accelerator_type"], plan["devices"], plan["device_kind"]) == ("v5litepod-4", 4, "TPU v5 lite")
  assert plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and plan["per_device_batch"] == 3
  assert plan["fits"] and set(plan["stages"]) == {"motion", "action"}
  for name, stage in plan["stages"].items():
    mem = stage["memory_per_device_gib"]
    assert mem["arguments"] > 0 and mem["aliased"] > 0  # the state is donated: outputs reuse its buffers
    assert stage["headroom_gib"] < 16 and stage["compile_seconds"] > 0
    counts = stage["param_counts"]
    trained = "motion_" if name == "motion" else "action_"
    for comp, c in counts.items():
      if comp.startswith(trained):
        assert c["frozen"] == 0 and c["trainable"] > 0, (name, comp, c)
      else:
        assert c["trainable"] == 0 and c["frozen"] > 0, (name, comp, c)
    # Optimizer state exists only for the stage's trainable components.
    assert {k for k in stage["state_per_device_gib"]["opt_state"] if k != "<other>"} == \
        {k for k in counts if k.startswith(trained)}
    fsdp_sharded = [e for rows in stage["example_partition_specs"].values() for e in rows if "fsdp" in e["spec"]]
    assert fsdp_sharded and all(e["device_fraction"] == pytest.approx(0.25) for e in fsdp_sharded)
