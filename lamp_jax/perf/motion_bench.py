"""LaMP's Motion Expert alone: one-step partial denoising vs the full reconstruction; prints JSON.

  python -m lamp_jax.perf.motion_bench --config=configs/lamp.py:sim
  python -m lamp_jax.perf.motion_bench --config=configs/lamp.py:paper --config.model.dtype=float32 --repeats=3

Only the Motion Expert's parameters are built (random values) and it is fed random VLM features of the prefix's
shape, so the paper size (308 M parameters, 1600 motion + 304 condition tokens) runs on a CPU host where
``lamp_jax.bench --what=inference`` would need the 3 B VLM. The two calls are timed round robin in one run.

``--decompose`` also times, in the same round robin, the partial denoising with ``DECOMPOSE_PARTIAL_STEPS``
Euler steps (s + 1 expert calls) and the reconstruction with ``DECOMPOSE_FULL_STEPS`` steps (n calls), and fits
latency = fixed + per_call x calls to each family by least squares. Where the one-step / full ratio sits above its
FLOP ratio (partial_steps + 1) / n, this says whether the expert calls cost more in one family (per_call_ms) or a
fixed cost per execution does (fixed_ms: argument handling, the noise draw, the runtime's start and end), which
weighs more on the two-call partial denoising than on the n-call reconstruction; ``one_step_over_full_per_call``
is the ratio with the fixed costs left out.
"""

from __future__ import annotations

import copy
import json

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from lamp_jax.models import lamp_config
from lamp_jax.models import prefix_encoder
from lamp_jax.models import registry
from lamp_jax.perf import timing

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with a LaMP `model` section (configs/lamp.py).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per variant.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_DECOMPOSE = flags.DEFINE_boolean("decompose", False, "Also time more step counts and split each family's latency "
                                  "into a fixed cost per execution and a cost per expert call (module doc).")

# --decompose: the partial denoising's Euler steps (s + 1 expert calls each) and the reconstruction's steps (n calls).
DECOMPOSE_PARTIAL_STEPS = (1, 2, 4)
DECOMPOSE_FULL_STEPS = (1, 2, 5)


def _partial_fn(model):
  """One-step partial denoising of the Motion Expert from given VLM features: a function (params, features,
  feature_mask, rng) -> hidden."""
  return lambda p, f, m, r: model.apply({"params": p}, f, m, r, method="motion_representation")


def _full_fn(model, full_steps: int):
  """The full ``full_steps`` reconstruction: (params, features, feature_mask, rng) -> (deltas, hidden)."""
  return lambda p, f, m, r: model.apply({"params": p}, f, m, r,
                                        method=lambda mdl, f, m, r: mdl._reconstruct(f, m, r, full_steps))


def _timed_fns(lib, model_cfg, decompose: bool) -> dict:
  """name -> (function, family 'partial' | 'full', expert calls): 'motion_partial' and 'motion_full', with
  ``decompose`` also the partial denoising at ``DECOMPOSE_PARTIAL_STEPS`` ('partial_s<s>') and the reconstruction
  at ``DECOMPOSE_FULL_STEPS`` ('full_n<n>'), each step count that the two main calls do not already time."""
  full_steps = model_cfg.motion_reconstruction_steps
  model = lib.build(model_cfg)
  fns = {"motion_partial": (_partial_fn(model), "partial", model_cfg.partial_steps + 1),
         "motion_full": (_full_fn(model, full_steps), "full", full_steps)}
  if decompose:
    for steps in DECOMPOSE_PARTIAL_STEPS:
      if steps != model_cfg.partial_steps:
        varied = copy.deepcopy(model_cfg)
        varied.partial_steps = steps
        fns[f"partial_s{steps}"] = (_partial_fn(lib.build(varied)), "partial", steps + 1)
    for steps in DECOMPOSE_FULL_STEPS:
      if steps != full_steps:
        fns[f"full_n{steps}"] = (_full_fn(model, steps), "full", steps)
  return fns


def _decomposition(latency: dict, fns: dict) -> dict:
  """Per family the fitted fixed and per-call milliseconds, and the one-step / full ratio without fixed costs.
  latency: name -> median seconds; fns: ``_timed_fns``'s name -> (function, family, calls)."""
  out, fixed_s = {}, {}
  for family in ("partial", "full"):
    names = [n for n, (_, fam, _) in fns.items() if fam == family]
    calls = [fns[n][2] for n in names]
    fixed_s[family], per_call = timing.fit_fixed_and_per_call(calls, [latency[n] for n in names])
    out[family] = {"fixed_ms": round(fixed_s[family] * 1e3, 3), "per_call_ms": round(per_call * 1e3, 3),
                   "calls_ms": {str(c): round(latency[n] * 1e3, 3) for n, c in zip(names, calls)}}
  out["one_step_over_full_per_call"] = ((latency["motion_partial"] - fixed_s["partial"])
                                        / (latency["motion_full"] - fixed_s["full"]))
  return out


def bench_motion(model_cfg, batch_size: int, repeats: int, seed: int, decompose: bool = False) -> dict:
  """Median latency of the Motion Expert's one-step partial denoising vs its full reconstruction (see module doc;
  ``decompose`` adds the 'decomposition' entry).

  Only ``params['motion_expert']`` exists (random normal values, std 0.02): the LaMP methods that are timed
  touch no other component."""
  model_cfg = copy.deepcopy(model_cfg)
  model_cfg.use_motion = True
  lib = registry.get(lamp_config.NAME)
  lib.check_config(model_cfg)
  abstract = lib.abstract_params(model_cfg)["motion_expert"]
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  motion_params = jax.tree.unflatten(treedef, [0.02 * jax.random.normal(k, x.shape, x.dtype)
                                               for k, x in zip(keys, leaves)])
  params = {"motion_expert": motion_params}
  prefix = lamp_config.prefix_length(model_cfg)
  width = int(prefix_encoder.width(model_cfg.vlm))
  features = jax.random.normal(jax.random.key(seed + 1), (batch_size, prefix, width), jnp.float32)
  mask = jnp.ones((batch_size, prefix), bool)
  rng = jax.random.key(seed + 2)
  full_steps = model_cfg.motion_reconstruction_steps
  fns = _timed_fns(lib, model_cfg, decompose)
  compiled, compile_s = {}, {}
  for name, (fn, _, _) in fns.items():
    compiled[name], seconds = timing.compile_call(fn, params, features, mask, rng)
    compile_s[name] = round(seconds, 3)
  load_before = timing.host_load()
  times = timing.time_round_robin(
      {n: (lambda e=e: e(params, features, mask, rng)) for n, e in compiled.items()}, repeats)
  all_latency = {k: t.median_s for k, t in times.items()}
  main = ("motion_partial", "motion_full")
  latency = {k: all_latency[k] for k in main}
  fastest = {k: times[k].min_s for k in main}
  cpu = {k: times[k].cpu_median_s for k in main}
  flops = {k: lib.analytic_flops(model_cfg, batch_size, k) for k in main}
  result = {
      "what": "motion", "variant": model_cfg.variant, "dtype": str(model_cfg.dtype), "batch_size": batch_size,
      "repeats": repeats, "prefix_tokens": prefix, "partial_steps": model_cfg.partial_steps,
      "motion_reconstruction_steps": full_steps,
      "motion_expert_parameters": sum(int(x.size) for x in leaves),
      "latency_ms": {k: round(v * 1e3, 3) for k, v in latency.items()},
      "min_latency_ms": {k: round(v * 1e3, 3) for k, v in fastest.items()},
      "cpu_ms": {k: round(v * 1e3, 3) for k, v in cpu.items()},
      "compile_s": compile_s,
      "analytic_gflops": {k: round(v / 1e9, 4) for k, v in flops.items()},
      "one_step_over_full_motion": latency["motion_partial"] / latency["motion_full"],
      "one_step_over_full_motion_of_min_latency": fastest["motion_partial"] / fastest["motion_full"],
      "one_step_over_full_motion_of_cpu_time": cpu["motion_partial"] / cpu["motion_full"],
      "analytic_one_step_over_full_motion": flops["motion_partial"] / flops["motion_full"],
      "load": {"before": load_before, "after": timing.host_load()},
  }
  if decompose:
    result["decomposition"] = _decomposition(all_latency, fns)
  return result


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/lamp.py:sim")
  print(json.dumps(bench_motion(_CONFIG.value.model, _BATCH.value, _REPEATS.value, _SEED.value,
                                _DECOMPOSE.value), indent=2))


if __name__ == "__main__":
  from lamp_jax import allocator

  allocator.reexec_with_tcmalloc("lamp_jax.perf.motion_bench")  # XLA:CPU runs 1.75x faster on it (allocator.py)
  app.run(main)
