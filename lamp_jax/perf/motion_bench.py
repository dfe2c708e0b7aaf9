"""LaMP's Motion Expert alone: one-step partial denoising vs the full reconstruction; prints JSON.

  python -m lamp_jax.perf.motion_bench --config=configs/lamp.py:sim
  python -m lamp_jax.perf.motion_bench --config=configs/lamp.py:paper --config.model.dtype=float32 --repeats=3

Only the Motion Expert's parameters are built (random values) and it is fed random VLM features of the prefix's
shape, so the paper size (308 M parameters, 1600 motion + 304 condition tokens) runs on a CPU host where
``lamp_jax.bench --what=inference`` would need the 3 B VLM. The two calls are timed round robin in one run.
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


def _motion_fns(model, full_steps: int):
  """(one-step partial denoising, full ``full_steps`` reconstruction) of the Motion Expert from given VLM
  features: functions (params, features, feature_mask, rng) -> hidden / (deltas, hidden)."""

  def motion_partial(p, f, m, r):
    return model.apply({"params": p}, f, m, r, method="motion_representation")

  def motion_full(p, f, m, r):
    return model.apply({"params": p}, f, m, r, method=lambda mdl, f, m, r: mdl._reconstruct(f, m, r, full_steps))

  return motion_partial, motion_full


def bench_motion(model_cfg, batch_size: int, repeats: int, seed: int) -> dict:
  """Median latency of the Motion Expert's one-step partial denoising vs its full reconstruction (see module doc).

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
  model = lib.build(model_cfg)
  prefix = lamp_config.prefix_length(model_cfg)
  width = int(prefix_encoder.width(model_cfg.vlm))
  features = jax.random.normal(jax.random.key(seed + 1), (batch_size, prefix, width), jnp.float32)
  mask = jnp.ones((batch_size, prefix), bool)
  rng = jax.random.key(seed + 2)
  full_steps = model_cfg.motion_reconstruction_steps
  compiled, compile_s = {}, {}
  for name, fn in zip(("motion_partial", "motion_full"), _motion_fns(model, full_steps)):
    compiled[name], seconds = timing.compile_call(fn, params, features, mask, rng)
    compile_s[name] = round(seconds, 3)
  load_before = timing.host_load()
  times = timing.time_round_robin(
      {n: (lambda e=e: e(params, features, mask, rng)) for n, e in compiled.items()}, repeats)
  latency = {k: t.median_s for k, t in times.items()}
  fastest = {k: t.min_s for k, t in times.items()}
  cpu = {k: t.cpu_median_s for k, t in times.items()}
  flops = {k: lib.analytic_flops(model_cfg, batch_size, k) for k in ("motion_partial", "motion_full")}
  return {
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


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/lamp.py:sim")
  print(json.dumps(bench_motion(_CONFIG.value.model, _BATCH.value, _REPEATS.value, _SEED.value), indent=2))


if __name__ == "__main__":
  from lamp_jax import allocator

  allocator.reexec_with_tcmalloc("lamp_jax.perf.motion_bench")  # XLA:CPU runs 1.75x faster on it (allocator.py)
  app.run(main)
