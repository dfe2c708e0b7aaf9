"""lamp_jax.bench (any model library) and lamp_jax.perf.motion_bench (LaMP's Motion Expert alone).

Run as subprocesses: the bench modules define absl flags at import (as train / summary do), which must not be
defined twice in one test process."""

import json
import math
import os
import subprocess
import sys

import jax
import pytest

from lamp_jax.models import lamp_config
from lamp_jax.models import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu", LAMP_JAX_ALLOCATOR="system")


def _run(*args):
  out = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=ENV, capture_output=True, text=True, check=True)
  return json.loads(out.stdout[out.stdout.index("{"):])


def test_bench_programs_shows_a_training_only_head_leaves_the_deployed_program_unchanged():
  """--what=programs (abstract shapes, no timing): the tiny LaMP policy with the motion-image head lowers, as
  deployed, to the very program of the policy without it, with the same argument bytes (bug guarded: the head's
  and the VAE's parameters were arguments of the deployed call)."""
  result = _run("lamp_jax.bench", "--config=configs/lamp.py:tiny", "--config.model.use_motion=False",
                "--config.model.motion_image.enabled=True", "--config.model.loss.weights.motion_image=1.0",
                "--what=programs")
  names = ["with_motion_image_head", "without_motion_image_head"]
  assert result["what"] == "programs" and sorted(result["programs"]) == names
  assert result["same_program"] == [names] and result["programs"][names[0]]["chars"] > 1000
  assert len(set(result["argument_gb"].values())) == 1 and len(set(result["analytic_gflops"].values())) == 1


@pytest.mark.slow  # a bench CLI subprocess (~35 s on a quiet 2-core box)
def test_motion_bench_tiny_cli():
  result = _run("lamp_jax.perf.motion_bench", "--config=configs/lamp.py:tiny", "--repeats=2", "--decompose")
  lamp = registry.get("lamp")
  cfg = lamp.model_config("tiny")
  assert result["what"] == "motion" and result["prefix_tokens"] == lamp_config.prefix_length(cfg)
  n_params = sum(int(x.size) for x in jax.tree.leaves(lamp.abstract_params(cfg)["motion_expert"]))
  assert result["motion_expert_parameters"] == n_params
  # partial_steps + 1 expert calls against motion_reconstruction_steps calls.
  assert math.isclose(result["analytic_one_step_over_full_motion"],
                      (cfg.partial_steps + 1) / cfg.motion_reconstruction_steps)
  assert all(v > 0 for v in result["latency_ms"].values())
  assert math.isclose(result["one_step_over_full_motion"],
                      result["latency_ms"]["motion_partial"] / result["latency_ms"]["motion_full"], rel_tol=1e-2)
  # --decompose: each family timed at several call counts (the main calls among them), a line fitted to each.
  parts = result["decomposition"]
  partial_calls = sorted(int(c) for c in parts["partial"]["calls_ms"])
  full_calls = sorted(int(c) for c in parts["full"]["calls_ms"])
  assert cfg.partial_steps + 1 in partial_calls and len(partial_calls) >= 3
  assert cfg.motion_reconstruction_steps in full_calls and len(full_calls) >= 3
  assert parts["partial"]["calls_ms"][str(cfg.partial_steps + 1)] == pytest.approx(
      result["latency_ms"]["motion_partial"])
  assert parts["full"]["calls_ms"][str(cfg.motion_reconstruction_steps)] == pytest.approx(
      result["latency_ms"]["motion_full"])
  assert parts["one_step_over_full_per_call"] == pytest.approx(
      (result["latency_ms"]["motion_partial"] - parts["partial"]["fixed_ms"])
      / (result["latency_ms"]["motion_full"] - parts["full"]["fixed_ms"]), rel=1e-2)


@pytest.mark.slow  # compiles several models in a subprocess: minutes on a 2-core host
def test_bench_inference_times_the_library_variants_and_their_ratios():
  result = _run("lamp_jax.bench", "--config=configs/lamp.py:tiny", "--what=inference", "--repeats=2",
                "--with_reference")
  lamp = registry.get("lamp")
  names = set(lamp.bench_variants(lamp.model_config("tiny")))
  assert set(result["latency_ms"]) == names | {f"reference/{n}" for n in names}
  lat = result["latency_ms"]
  assert math.isclose(result["ratios"]["with_over_without_motion"], lat["with_motion"] / lat["without_motion"],
                      rel_tol=1e-2)
  flops = result["analytic_gflops"]
  # The rewrites save FLOPs; the ablation computes less than the model with motion.
  assert flops["with_motion"] < flops["reference/with_motion"]
  assert flops["without_motion"] < flops["with_motion"] < flops["full_motion"]
  # CPU time, roofs, efficiency and memory beside the wall times.
  assert set(result["cpu_ms"]) == set(lat) and all(v > 0 for v in result["cpu_ms"].values())
  roof = result["matmul_roof"]
  for name, eff in result["efficiency"].items():
    assert math.isclose(eff["gflop_per_s"], flops[name] / (lat[name] / 1e3), rel_tol=1e-2)
    assert math.isclose(eff["fraction_of_roof"], eff["gflop_per_s"] / roof["gflop_per_s"], rel_tol=1e-2)
  assert math.isclose(result["rewrite_speedup"]["with_motion"], lat["reference/with_motion"] / lat["with_motion"],
                      rel_tol=1e-2)
  for name, plan in result["memory_gb"]["executables"].items():
    assert plan["live"] >= plan["arguments"] > 0, name
  assert result["memory_gb"]["peak_rss"] >= result["memory_gb"]["rss_after_timing"] > 0
  assert result["load"]["before"]["cpus"] >= 1


@pytest.mark.slow  # two train-step compilations in a subprocess: minutes on a loaded 2-core host
def test_bench_train_step_with_reference_times_both_and_reports_memory():
  result = _run("lamp_jax.bench", "--config=configs/lamp.py:tiny", "--what=train_step", "--batch_size=3",
                "--repeats=2", "--with_reference")
  reference = result["reference"]
  assert math.isclose(result["rewrite_speedup"], reference["median_step_s"] / result["median_step_s"], rel_tol=1e-2)
  assert math.isclose(result["rewrite_speedup_of_cpu_time"], reference["cpu_step_s"] / result["cpu_step_s"],
                      rel_tol=1e-2)
  assert result["min_step_s"] <= result["median_step_s"] and result["cpu_step_s"] > 0
  assert math.isfinite(result["final_loss"])
  assert math.isclose(result["fraction_of_roof"], result["achieved_gflops_per_s"] / result["matmul_roof_gflops_per_s"],
                      rel_tol=1e-2)
  for name in ("train_step", "reference/train_step"):
    plan = result["memory_gb"]["executables"][name]
    # Parameters and optimizer state are donated: the updated ones are written into their buffers.
    assert plan["aliased"] > 0 and plan["aliased"] <= plan["arguments"], plan
    assert math.isclose(plan["live"], plan["arguments"] + plan["outputs"] - plan["aliased"] + plan["temporaries"],
                        abs_tol=1e-3)
  assert result["memory_gb"]["peak_rss"] >= result["memory_gb"]["rss"]["after_timing"] > 0


@pytest.mark.slow  # compiles several models in a subprocess: minutes on a 2-core host
def test_bench_train_step_of_a_model_with_state():
  """The latent action model (state collection 'vq_state', after_update) is timed as the trainer runs it."""
  result = _run("lamp_jax.bench", "--config=configs/lam.py:tiny", "--what=train_step", "--batch_size=3",
                "--repeats=2")
  lam = registry.get("lam")
  cfg = lam.model_config("tiny")
  assert result["model"] == "lam" and result["median_step_s"] > 0 and math.isfinite(result["final_loss"])
  assert math.isclose(result["analytic_gflops_per_step"], lam.analytic_flops(cfg, 3, "train_step") / 1e9,
                      abs_tol=1e-3)  # printed with 3 decimals


@pytest.mark.slow  # a train-step compilation in a subprocess (~40 s)
def test_bench_train_step_of_a_stage_freezes_its_parameters():
  """--stage: the stage's model overrides apply and its frozen parameters get no update (counted as frozen)."""
  frozen = '("^vlm/","^motion_expert/")'
  result = _run("lamp_jax.bench", "--config=configs/sim.py:smoke", "--stage=action", "--what=train_step",
                f"--config.stages.action.frozen={frozen}", "--batch_size=3", "--repeats=2")
  lamp = registry.get("lamp")
  from configs import sim
  from lamp_jax.training import defaults
  config = sim.get_config("smoke")
  params = lamp.abstract_params(defaults.stage_model_config(config, "action"))
  count = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))
  assert result["stage"] == "action" and result["frozen"] == ["^vlm/", "^motion_expert/"]
  assert result["parameters"] == count(params)
  assert result["trainable_parameters"] == count(params) - count(params["vlm"]) - count(params["motion_expert"])
  assert "upper bound" in result["flops_note"] and math.isfinite(result["final_loss"])
  assert result["chip"]["platform"] == "cpu" and result["chip"]["published_peak_tflops"] is None
  assert result["device_memory_gb"] == {}  # the CPU allocator reports none


@pytest.mark.slow  # a bench CLI subprocess on the toy model (~20 s)
def test_bench_inference_times_a_baseline_in_the_same_run_and_reports_the_ratios():
  """--baseline: another config's sample_actions in the same round robin (here the toy model at another width)."""
  result = _run("lamp_jax.bench", "--config=tests/toy_train_config.py", "--baseline=tests/toy_train_config.py",
                "--baseline.model.width=11", "--what=inference", "--repeats=3")
  assert set(result["latency_ms"]) == {"sample_actions", "baseline/sample_actions"}
  assert result["baseline"] == {"model": "tests.toy_model", "variant": "tiny"}
  pair = "sample_actions / baseline/sample_actions"
  ratios = result["ratios_to_baseline"]
  for ratio, times in ((ratios["latency"][pair], result["latency_ms"]), (ratios["cpu_time"][pair], result["cpu_ms"])):
    # Printed rounded to 1 µs, and the toy's calls take tens of µs: the ratio lies within the rounding's bounds
    # (bug guarded: a 1 % relative tolerance failed whenever a call took under ~0.1 ms).
    own, theirs = times["sample_actions"], times["baseline/sample_actions"]
    assert (own - 5e-4) / (theirs + 5e-4) <= ratio <= (own + 5e-4) / (theirs - 5e-4), (ratio, own, theirs)
  from tests import toy_model
  toy = registry.get(toy_model.NAME)
  cfg, baseline = toy_model.model_config("tiny"), toy_model.model_config("tiny")
  baseline.width = 11
  expected = toy.analytic_flops(cfg, 1, "sample_actions") / toy.analytic_flops(baseline, 1, "sample_actions")
  assert expected != 1.0 and math.isclose(ratios["analytic_flops"][pair], expected, rel_tol=1e-6)


@pytest.mark.slow  # a bench CLI subprocess on the toy model (~20 s)
def test_bench_train_step_times_a_baseline_stage_in_the_same_run_and_reports_the_ratios():
  """train_step --baseline: another config's stage steps in the same round robin on its own parameters, with its
  own frozen parameters (--baseline_stage), and the ratios are the two timings' (bug guarded: --baseline was refused
  for train_step, so a method's training cost came from separate processes under different loads)."""
  result = _run("lamp_jax.bench", "--config=tests/toy_train_config.py",
                "--baseline=tests/toy_train_config.py:two_stage",
                "--baseline_stage=action", "--baseline.model.width=11", "--what=train_step", "--batch_size=3",
                "--repeats=3")
  base = result["baseline"]
  assert base["model"] == "tests.toy_model" and base["frozen"] == ["^motion_"]
  assert math.isfinite(base["final_loss"]) and base["median_step_s"] > 0
  ratios = result["ratios_to_baseline"]
  for ratio, key in ((ratios["latency"], "median_step_s"), (ratios["cpu_time"], "cpu_step_s")):
    own, theirs = result[key], base[key]  # printed rounded to 0.1 ms: the ratio lies within the rounding's bounds
    assert (own - 5e-5) / (theirs + 5e-5) <= ratio <= (own + 5e-5) / (theirs - 5e-5), (key, ratio, own, theirs)
  from tests import toy_model
  toy = registry.get(toy_model.NAME)
  cfg, baseline = toy_model.model_config("tiny"), toy_model.model_config("tiny")
  baseline.width = 11
  expected = toy.analytic_flops(cfg, 3, "train_step") / toy.analytic_flops(baseline, 3, "train_step")
  assert expected != 1.0 and math.isclose(ratios["analytic_flops"], expected, rel_tol=1e-6)
  out = subprocess.run([sys.executable, "-m", "lamp_jax.bench", "--config=tests/toy_train_config.py",
                        "--baseline=tests/toy_train_config.py:two_stage", "--baseline_stage=joint",
                        "--what=train_step"], cwd=REPO, env=ENV, capture_output=True, text=True)
  assert out.returncode != 0 and "--baseline_stage=joint" in out.stderr and "'action', 'motion'" in out.stderr


def test_bench_stage_names_a_missing_stage():
  out = subprocess.run([sys.executable, "-m", "lamp_jax.bench", "--config=configs/lamp.py:tiny", "--stage=stage2"],
                       cwd=REPO, env=ENV, capture_output=True, text=True)
  assert out.returncode != 0 and "--stage=stage2" in out.stderr and "no such stage" in out.stderr
