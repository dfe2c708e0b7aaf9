"""Benchmarks of any model library; prints JSON.

  python -m lamp_jax.bench --config=configs/lamp.py:sim --what=inference [--with_reference]
  python -m lamp_jax.bench --config=configs/lamp.py:sim --what=train_step --batch_size=8 [--op_breakdown]

inference: median latency (ms) of the jitted ``sample_actions`` at --batch_size (default 1) after compilation, for
  every inference variant the model's library declares (``ModelLibrary.bench_variants``; LaMP: with motion,
  without motion, with the full motion reconstruction), with compile times, analytic FLOPs and the library's
  named ratios (``bench_ratios``). Calls are interleaved round-robin so that load on a shared host affects all
  variants alike; ratios are from the same run. ``--with_reference`` also times, in the same round robin, the
  model with its exact rewrites switched off (``ModelLibrary.reference_config``): a before / after under identical
  load. ``analytic_ratios`` are the FLOP ratios, the floor of the latency ratios at equal efficiency.
train_step: median time of a jitted AdamW step on ``compute_loss`` and its fraction of the host's matmul roof
  (lamp_jax.perf.roofline, measured in the same run) using analytic FLOPs. ``--op_breakdown`` adds where the
  step's time goes (lamp_jax.perf.op_profile): the share of XLA op time in matmul kernels, layout copies, loop
  bookkeeping and other ops, the top ops, and ``roof_fraction_if_only_matmul_ops`` = fraction_of_roof /
  share['matmul'], the most this model can reach here while its matmul kernels run as they do.
The Motion Expert alone (LaMP's one-step partial denoising vs full reconstruction, feasible at paper size on a
CPU host): ``python -m lamp_jax.perf.motion_bench``.

Model options are config values, e.g. ``--config.model.motion.scan_unroll=2 --config.model.action.scan_unroll=2``.
"""

from __future__ import annotations

import json
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import optax
import tqdm

from lamp_jax.models import registry
from lamp_jax.perf import op_profile, roofline
from lamp_jax.perf import timing

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with a `model` section (configs/lamp.py).")
_WHAT = flags.DEFINE_enum("what", "inference", ["inference", "train_step"], "What to benchmark.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Batch size (default: 1 for inference, 8 for train_step).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per variant.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_OP_BREAKDOWN = flags.DEFINE_bool("op_breakdown", False, "train_step: also profile the step and report the share "
                                   "of XLA op time by kind (matmul / layout / loop / other; lamp_jax.perf.op_profile) "
                                   "and the roof fraction the step would reach with only its matmul ops.")
_WITH_REFERENCE = flags.DEFINE_bool("with_reference", False, "inference: also time the model with the exact "
                                    "rewrites switched off (before / after in one run).")


def _ratios(latency: dict, named: dict, prefix: str = "") -> dict:
  return {name: latency[prefix + a] / latency[prefix + b] for name, (a, b) in named.items()
          if prefix + a in latency and prefix + b in latency}


def bench_inference(model_cfg, batch_size: int, repeats: int, seed: int, with_reference: bool = False) -> dict:
  lib = registry.for_config(model_cfg)
  if "sample_actions" not in lib.methods:
    raise ValueError(f"model {lib.name!r} has no sample_actions to benchmark")
  variants = dict(lib.bench_variants(model_cfg))
  if with_reference:
    reference = lib.reference_config(model_cfg)
    if reference is None:
      raise ValueError(f"--with_reference: model {lib.name!r} has no exact rewrites to switch off")
    variants.update({f"reference/{name}": v for name, v in lib.bench_variants(reference).items()})
  rng = jax.random.key(seed + 1)
  calls, compile_s, flops, params_by_cfg = {}, {}, {}, {}
  for name, variant in variants.items():
    key = json.dumps(variant.cfg.to_dict(), sort_keys=True, default=str)
    if key not in params_by_cfg:  # variants that differ only in their call share one parameter set
      params_by_cfg[key] = lib.init_params(variant.cfg, jax.random.key(seed), lib.dummy_batch(variant.cfg, 1, seed))
    params = params_by_cfg[key]
    model = lib.build(variant.cfg)
    kwargs = dict(variant.sample_kwargs)
    batch = timing.inference_batch(lib, variant.cfg, batch_size, seed)

    def sample(p, b, r, model=model, kwargs=kwargs):
      return model.apply({"params": p}, b, r, method="sample_actions", **kwargs)

    exe, seconds = timing.compile_call(sample, params, batch, rng)
    calls[name] = (lambda e=exe, p=params, b=batch: e(p, b, rng))
    compile_s[name] = round(seconds, 3)
    flops[name] = lib.analytic_flops(variant.cfg, batch_size, variant.flop_mode)
  latency, fastest = timing.time_round_robin(calls, repeats)
  result = {
      "what": "inference", "model": lib.name, "variant": model_cfg.get("variant", ""), "batch_size": batch_size,
      "repeats": repeats,
      "latency_ms": {k: round(v * 1e3, 3) for k, v in latency.items()},
      # Fastest call of each variant: less sensitive than the median to other load on a shared host.
      "min_latency_ms": {k: round(v * 1e3, 3) for k, v in fastest.items()},
      "compile_s": compile_s,
      "analytic_gflops": {k: round(v / 1e9, 4) for k, v in flops.items()},
      "ratios": _ratios(latency, lib.bench_ratios),
      "ratios_of_min_latency": _ratios(fastest, lib.bench_ratios),
      "analytic_ratios": _ratios(flops, lib.bench_ratios),
  }
  if with_reference:
    result["reference_ratios"] = _ratios(latency, lib.bench_ratios, "reference/")
    result["reference_ratios_of_min_latency"] = _ratios(fastest, lib.bench_ratios, "reference/")
    result["rewrite_speedup"] = {name: latency[f"reference/{name}"] / latency[name] for name in lib.bench_variants(
        model_cfg)}
  return result


def bench_train_step(model_cfg, batch_size: int, repeats: int, seed: int, op_breakdown: bool = False) -> dict:
  """Models with state collections (``ModelLibrary.state_collections``) are timed as the trainer runs them: the
  loss with the state mutable, then ``after_update``. Frozen parts are not frozen here (AdamW on everything)."""
  lib = registry.for_config(model_cfg)
  batch = lib.dummy_batch(model_cfg, batch_size, seed)
  params = lib.init_params(model_cfg, jax.random.key(seed), batch)
  model_state = lib.init_model_state(model_cfg, jax.random.key(seed), batch) or {}
  collections = list(lib.state_collections)
  model = lib.build(model_cfg)
  optimizer = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=1e-4)
  opt_state = optimizer.init(params)

  def step(params, opt_state, model_state, batch, rng):
    def loss_fn(p):
      if not collections:
        loss, metrics = model.apply({"params": p}, batch, rng, method="compute_loss")
        return loss, (metrics, model_state)
      (loss, metrics), written = model.apply({"params": p, **model_state}, batch, rng, method="compute_loss",
                                             mutable=collections)
      return loss, (metrics, written)

    (_, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if collections:
      params, model_state, _ = lib.after_update(model_cfg, params, model_state, jax.random.fold_in(rng, 1))
    return params, opt_state, model_state, metrics

  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1, 2)).lower(params, opt_state, model_state, batch,
                                                            jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  params, opt_state, model_state, _ = compiled(params, opt_state, model_state, batch, jax.random.key(0))  # warm-up
  jax.block_until_ready(params)
  times = []
  for i in tqdm.trange(repeats, desc="train steps", leave=False):
    start = time.perf_counter()
    params, opt_state, model_state, metrics = compiled(params, opt_state, model_state, batch, jax.random.key(i + 1))
    jax.block_until_ready((params, metrics))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  flops = lib.analytic_flops(model_cfg, batch_size, "train_step")
  roof = roofline.measure_matmul_roof(jnp.dtype(model_cfg.get("dtype", "float32")))
  result = {
      "what": "train_step", "model": lib.name, "variant": model_cfg.get("variant", ""), "batch_size": batch_size, "repeats": repeats,
      "median_step_s": round(median, 4), "compile_s": round(compile_s, 3),
      "analytic_gflops_per_step": round(flops / 1e9, 3), "achieved_gflops_per_s": round(flops / median / 1e9, 3),
      "matmul_roof_gflops_per_s": round(roof / 1e9, 3), "fraction_of_roof": flops / median / roof,
      "final_loss": float(metrics["loss"]),
  }
  if op_breakdown:
    state = {"params": params, "opt_state": opt_state, "model_state": model_state}

    def call():
      state["params"], state["opt_state"], state["model_state"], step_metrics = compiled(
          state["params"], state["opt_state"], state["model_state"], batch, jax.random.key(0))
      return step_metrics

    breakdown = op_profile.op_time_breakdown(call, repeats=min(repeats, 5))
    result["op_breakdown"] = breakdown
    if breakdown["share"]["matmul"] > 0:
      result["roof_fraction_if_only_matmul_ops"] = result["fraction_of_roof"] / breakdown["share"]["matmul"]
  return result


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/lamp.py:sim")
  model_cfg = _CONFIG.value.model
  if _WHAT.value == "inference":
    result = bench_inference(model_cfg, _BATCH.value or 1, _REPEATS.value, _SEED.value, _WITH_REFERENCE.value)
  else:
    result = bench_train_step(model_cfg, _BATCH.value or 8, _REPEATS.value, _SEED.value, _OP_BREAKDOWN.value)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  from lamp_jax import allocator

  allocator.reexec_with_tcmalloc("lamp_jax.perf.bench")  # XLA:CPU runs 1.75x faster on it (allocator.py)
  app.run(main)
