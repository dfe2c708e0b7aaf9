"""lamp_jax.bench --what=motion: builds only the Motion Expert and reports consistent figures.

Run as a subprocess: the bench module defines absl flags at import (as train / summary do), which must not be
defined twice in one test process."""

import json
import math
import os
import subprocess
import sys

import jax

from lamp_jax.models import lamp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_motion_tiny_cli():
  env = dict(os.environ, JAX_PLATFORMS="cpu", LAMP_JAX_ALLOCATOR="system")
  out = subprocess.run([sys.executable, "-m", "lamp_jax.bench", "--config=configs/lamp.py:tiny", "--what=motion",
                        "--repeats=2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=True)
  result = json.loads(out.stdout[out.stdout.index("{"):])
  cfg = lamp.model_config("tiny")
  assert result["what"] == "motion" and result["prefix_tokens"] == lamp.prefix_length(cfg)
  n_params = sum(int(x.size) for x in jax.tree.leaves(lamp.abstract_params(cfg)["motion_expert"]))
  assert result["motion_expert_parameters"] == n_params
  # partial_steps + 1 expert calls against motion_reconstruction_steps calls.
  assert math.isclose(result["analytic_one_step_over_full_motion"],
                      (cfg.partial_steps + 1) / cfg.motion_reconstruction_steps)
  assert all(v > 0 for v in result["latency_ms"].values())
  assert math.isclose(result["one_step_over_full_motion"],
                      result["latency_ms"]["motion_partial"] / result["latency_ms"]["motion_full"], rel_tol=1e-2)
