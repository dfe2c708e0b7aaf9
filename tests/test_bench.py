"""lamp_jax.bench: the Motion Expert mode builds only the Motion Expert and reports consistent figures."""

import math

import jax

from lamp_jax import bench
from lamp_jax.models import lamp


def test_bench_motion_tiny():
  cfg = lamp.model_config("tiny")
  result = bench.bench_motion(cfg, batch_size=1, repeats=2, seed=0)
  assert result["what"] == "motion" and result["prefix_tokens"] == lamp.prefix_length(cfg)
  n_params = sum(int(x.size) for x in jax.tree.leaves(lamp.abstract_params(cfg)["motion_expert"]))
  assert result["motion_expert_parameters"] == n_params
  # partial_steps + 1 expert calls against motion_reconstruction_steps calls.
  assert math.isclose(result["analytic_one_step_over_full_motion"],
                      (cfg.partial_steps + 1) / cfg.motion_reconstruction_steps)
  assert all(v > 0 for v in result["latency_ms"].values())
  assert math.isclose(result["one_step_over_full_motion"],
                      result["latency_ms"]["motion_partial"] / result["latency_ms"]["motion_full"], rel_tol=1e-2)
