"""lamp_jax.perf.op_profile: op kinds, self times of nested trace events, and a real profiled computation."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from lamp_jax.perf import op_profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,kind", [("ynn_fusion.63", "matmul"), ("dot.979", "matmul"), ("dot", "matmul"),
                                       ("convolution.3", "matmul"), ("copy.1887", "layout"),
                                       ("copy_bitcast_fusion.15", "layout"), ("transpose_copy_fusion.69", "layout"),
                                       ("while.764", "loop"), ("multiply_add_fusion.2", "other"),
                                       ("wrapped_broadcast.47", "other"), ("bitcast_dynamic-update-slice_fusion.1",
                                                                          "other")])
def test_op_kind(name, kind):
  assert op_profile.op_kind(name) == kind


def _event(op, ts, dur, tid=1):
  return {"ph": "X", "pid": 1, "tid": tid, "ts": ts, "dur": dur, "name": op, "args": {"hlo_op": op}}


def test_self_times_subtract_nested_ops_per_thread():
  events = [
      _event("while.1", 0.0, 100.0),       # a loop whose body ran a dot (30) and a copy inside a fusion (10 + 5)
      _event("dot.2", 10.0, 30.0),
      _event("fusion.3", 50.0, 10.0),
      _event("copy.4", 52.0, 5.0),
      _event("dot.2", 0.0, 70.0, tid=2),   # another thread: independent, not nested in thread 1's loop
      {"ph": "X", "pid": 1, "tid": 1, "ts": 0.0, "dur": 500.0, "name": "$python frame"},  # no hlo_op: ignored
  ]
  times = op_profile.self_times(events)
  assert times == {"while.1": 60.0, "dot.2": 100.0, "fusion.3": 5.0, "copy.4": 5.0}


def test_op_time_breakdown_of_a_matmul_chain_is_mostly_matmul():
  a = jnp.ones((384, 384), jnp.float32) / 384

  @jax.jit
  def chain(x):
    for _ in range(4):
      x = x @ a
    return x

  jax.block_until_ready(chain(a))
  result = op_profile.op_time_breakdown(lambda: chain(a), repeats=3)
  assert set(result["share"]) == set(op_profile.KINDS)
  assert math.isclose(sum(result["share"].values()), 1.0, abs_tol=1e-3)
  assert result["share"]["matmul"] > 0.5, result
  assert result["top_ops"] and result["top_ops"][0][2] == "matmul"


@pytest.mark.slow  # a bench CLI subprocess with a profile (~115 s on a quiet 2-core box)
def test_bench_train_step_op_breakdown_tiny_cli():
  env = dict(os.environ, JAX_PLATFORMS="cpu", LAMP_JAX_ALLOCATOR="system")
  out = subprocess.run([sys.executable, "-m", "lamp_jax.bench", "--config=configs/lamp.py:tiny", "--what=train_step",
                        "--batch_size=3", "--repeats=2", "--op_breakdown"], cwd=REPO, env=env, capture_output=True,
                       text=True, check=True)
  result = json.loads(out.stdout[out.stdout.index("{"):])
  breakdown = result["op_breakdown"]
  assert math.isclose(sum(breakdown["share"].values()), 1.0, abs_tol=1e-3)
  assert breakdown["share"]["matmul"] > 0 and breakdown["op_ms_per_call"]["matmul"] > 0
  assert math.isclose(result["roof_fraction_if_only_matmul_ops"],
                      result["fraction_of_roof"] / breakdown["share"]["matmul"], rel_tol=1e-6)
