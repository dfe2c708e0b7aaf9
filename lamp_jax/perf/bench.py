"""Benchmarks of any model library; prints JSON.

  python -m lamp_jax.bench --config=configs/lamp.py:sim --what=inference [--with_reference]
  python -m lamp_jax.bench --config=configs/lamp.py:sim --what=train_step --batch_size=8 [--op_breakdown]
  python -m lamp_jax.bench --config=configs/lamp.py:openpi_dummy --what=train_step --batch_size=4 --with_reference

inference: median latency (ms) of the jitted ``sample_actions`` at --batch_size (default 1) after compilation, for
  every inference variant the model's library declares (``ModelLibrary.bench_variants``; LaMP: with motion,
  without motion, with the full motion reconstruction), called as deployed policies call it (the parameters of
  ``ModelLibrary.inference_params``: no training-only head or latent action model among the arguments), with
  compile times, analytic FLOPs and the library's named ratios (``bench_ratios``). Calls are interleaved
  round-robin so that load on a shared host affects all variants alike; ratios are from the same run.
  ``analytic_ratios`` are the FLOP ratios, the floor of the latency ratios at equal efficiency.
train_step: median time of a jitted AdamW step (parameters and optimizer state donated) on ``compute_loss``.
  ``--op_breakdown`` adds where the step's time goes (lamp_jax.perf.op_profile): the share of XLA op time in
  matmul kernels, layout copies, loop bookkeeping and other ops, the top ops, and
  ``roof_fraction_if_only_matmul_ops`` = fraction_of_roof / share['matmul'], the most this model can reach here
  while its matmul kernels run as they do.
inference, ``--baseline=CONFIG``: also times the variants of another config's model (any library: the base policy of a
  method, e.g. ``--config=configs/sim.py:lafp --baseline=configs/sim.py:no_motion``) in the same round robin, as
  'baseline/<variant>', and reports 'ratios_to_baseline' (every variant over every baseline variant: latency, CPU
  time, analytic FLOPs), the cost of a method against its base policy measured under one load.
train_step, ``--baseline=CONFIG``: the same for training: the baseline's train step ('baseline/train_step', its own
  parameters, optimizer state and dummy batch; ``--baseline_stage``, default the --stage of that name, picks its
  stage model and frozen parameters) steps in the same round robin; 'ratios_to_baseline' as above, e.g. the
  training cost of the motion-image head on π0 (joint stage) against π0 alone:
    python -m lamp_jax.bench --config=configs/sim.py:pi0_motion_image --stage=joint --baseline=configs/sim.py:pi0 \\
        --baseline_stage=action --what=train_step --batch_size=8
programs: no timing and nothing allocated, any size: the deployed ``sample_actions`` program of every inference
  variant (as ``inference`` calls it), lowered from abstract shapes: a digest of its StableHLO text, the variants
  that lower to one program ('same_program': equal programs with equal arguments run in equal time, the claim of a
  training-only head at a size that cannot be timed here), argument bytes and analytic FLOPs.
    python -m lamp_jax.bench --config=configs/pi0.py:paper_motion_image --what=programs
Both: ``--with_reference`` also times, in the same round robin, the model with its exact rewrites switched off
  (``ModelLibrary.reference_config``): a before / after under identical load ('rewrite_speedup'). Beside every
  wall time the process CPU time per call ('cpu_ms' / 'cpu_step_s', all threads) and the host's load average:
  on a shared host the CPU time is the steadier figure. Efficiency: analytic FLOPs per wall second and per CPU
  second, as fractions of the matmul roofs measured in the same run (lamp_jax.perf.roofline; best of a
  measurement before and after the timing). Memory ('memory_gb'): every compiled executable's buffer plan
  (``timing.executable_memory``: arguments, outputs, temporaries; 'live' is what it holds at once) and the
  process's resident set after each stage and at its peak (the peak includes compilation).
The Motion Expert alone (LaMP's one-step partial denoising vs full reconstruction, feasible at paper size on a
CPU host): ``python -m lamp_jax.perf.motion_bench``.

Training configs: ``--stage=NAME`` with a training config (``configs/bridge.py``) benchmarks that stage's model (its
``model_overrides`` and ``compute_dtype`` applied, as the trainer does) and, for train_step, steps it as the trainer
does: the stage's ``frozen`` parameters are held by ``stop_gradient`` and get no optimizer update or state. The
analytic FLOPs stay 3 x forward of everything (an upper bound for a stage with frozen parts), stated in the JSON.

Accelerators: the roof is measured with [8192, 8192] matrices on GPU / TPU (``roofline.default_size``); 'chip' adds
the device kind, the vendor's published dense peak for the dtype (``roofline.PUBLISHED_PEAK_TFLOPS``; null where
not tabled) and every efficiency as a fraction of it ('fraction_of_published_peak', i.e. MFU), and
'device_memory_gb' the allocator's peak (the process's peak, compilation and initialisation included).

Model options are config values, e.g. ``--config.model.motion.scan_unroll=2 --config.model.action.scan_unroll=2``.
"""

from __future__ import annotations

import hashlib
import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import optax

from lamp_jax.models import registry
from lamp_jax.perf import op_profile, roofline
from lamp_jax.perf import timing
from lamp_jax.training import defaults
from lamp_jax.training import optim

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with a `model` section (configs/lamp.py), or "
                                          "a training config with --stage (configs/bridge.py).")
_WHAT = flags.DEFINE_enum("what", "inference", ["inference", "train_step", "programs"], "What to benchmark.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Batch size (default: 1 for inference, 8 for train_step).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per variant.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_OP_BREAKDOWN = flags.DEFINE_bool("op_breakdown", False, "train_step: also profile the step and report the share "
                                   "of XLA op time by kind (matmul / layout / loop / other; lamp_jax.perf.op_profile) "
                                   "and the roof fraction the step would reach with only its matmul ops.")
_TIMING_LOCK = flags.DEFINE_string("timing_lock", None, "A file to flock around the timed sections (roofs, warm-up "
                                   "and timed calls): several bench processes sharing one accelerator then compile "
                                   "in parallel and time one at a time.")
_STAGE = flags.DEFINE_string("stage", None, "Name of a stage of a training config (config.stages): its model "
                             "overrides and compute dtype apply; train_step freezes its `frozen` parameters as the "
                             "trainer does.")
_BASELINE = config_flags.DEFINE_config_file(
    "baseline", None, "inference / train_step: another config (its `model` section, or its --baseline_stage model) "
    "whose sample_actions variants (train_step: whose train step) are timed in the same round robin: the method's "
    "cost against its base policy.")
_BASELINE_STAGE = flags.DEFINE_string(
    "baseline_stage", None, "A stage of the --baseline training config: its model overrides apply and, for "
    "train_step, its frozen parameters are held (default: --stage when the baseline has a stage of that name).")
_WITH_REFERENCE = flags.DEFINE_bool("with_reference", False, "Also time the model with its exact rewrites switched "
                                    "off (ModelLibrary.reference_config): before / after in one run.")


def _ratios(values: dict, named: dict, prefix: str = "") -> dict:
  return {name: values[prefix + a] / values[prefix + b] for name, (a, b) in named.items()
          if prefix + a in values and prefix + b in values}


def _roofs(dtype) -> dict:
  """The matmul roofs (``roofline.measure_matmul_roofs``) of ``dtype`` in GFLOP per wall / CPU second."""
  roofs = roofline.measure_matmul_roofs(jnp.dtype(dtype))
  return {"gflop_per_s": roofs["flop_per_s"] / 1e9, "gflop_per_cpu_s": roofs["flop_per_cpu_s"] / 1e9}


def _best_roofs(*measured: dict) -> dict:
  """Per field the best of several roof measurements (a roof is the best the host achieves)."""
  return {k: round(max(m[k] for m in measured), 3) for k in measured[0]}


def _chip(dtype) -> dict:
  """The default device's kind and the vendor's published dense peak in ``dtype`` (``roofline``; null if unknown)."""
  device = jax.local_devices()[0]
  peak = roofline.published_peak_flops(device, dtype)
  return {"platform": device.platform, "device_kind": device.device_kind, "dtype": jnp.dtype(dtype).name,
          "published_peak_tflops": None if peak is None else round(peak / 1e12, 1)}


def _efficiency(flops: dict, times: dict, roof: dict, chip: dict) -> dict:
  """Per name: achieved GFLOP/s (median wall) and GFLOP per CPU second, both as fractions of the measured roofs,
  and the wall rate as a fraction of the published peak (MFU; only where ``chip`` has one)."""
  result = {}
  peak = chip["published_peak_tflops"]
  for name, t in times.items():
    per_s, per_cpu_s = flops[name] / t.median_s / 1e9, flops[name] / t.cpu_median_s / 1e9
    result[name] = {"gflop_per_s": round(per_s, 3), "gflop_per_cpu_s": round(per_cpu_s, 3),
                    "fraction_of_roof": round(per_s / roof["gflop_per_s"], 4),
                    "fraction_of_cpu_roof": round(per_cpu_s / roof["gflop_per_cpu_s"], 4)}
    if peak:
      result[name]["fraction_of_published_peak"] = round(per_s / (peak * 1e3), 4)
  return result


BASELINE_PREFIX = "baseline/"


def _sampling_library(model_cfg, what: str):
  lib = registry.for_config(model_cfg)
  if "sample_actions" not in lib.methods:
    raise ValueError(f"{what}: model {lib.name!r} has no sample_actions to benchmark")
  return lib


def _deployed_sample(lib, variant, params):
  """(``sample(params, batch, rng)``: the variant's ``sample_actions`` as a deployed policy calls it, its
  parameters): ``ModelLibrary.inference_params`` applied, as in evaluation, the server and export, so no
  training-only part is among the arguments."""
  params, inference_cfg = lib.inference_params(variant.cfg, params)
  model, kwargs = lib.build(inference_cfg), dict(variant.sample_kwargs)

  def sample(p, b, r):
    return model.apply({"params": p}, b, r, method="sample_actions", **kwargs)

  return sample, params


def bench_inference(model_cfg, batch_size: int, repeats: int, seed: int, with_reference: bool = False,
                    timing_lock: str | None = None, baseline_cfg=None) -> dict:
  """Median ``sample_actions`` latency of every variant (see the module doc); ``baseline_cfg``: another model config
  whose variants are timed in the same round robin ('baseline/<name>', 'ratios_to_baseline')."""
  lib = _sampling_library(model_cfg, "--config")
  load_before = timing.host_load()
  variants = {name: (lib, v) for name, v in lib.bench_variants(model_cfg).items()}
  if with_reference:
    reference = lib.reference_config(model_cfg)
    if reference is None:
      raise ValueError(f"--with_reference: model {lib.name!r} has no exact rewrites to switch off")
    variants.update({f"reference/{name}": (lib, v) for name, v in lib.bench_variants(reference).items()})
  baseline_lib = None
  if baseline_cfg is not None:
    baseline_lib = _sampling_library(baseline_cfg, "--baseline")
    variants.update({BASELINE_PREFIX + name: (baseline_lib, v)
                     for name, v in baseline_lib.bench_variants(baseline_cfg).items()})
  rng = jax.random.key(seed + 1)
  calls, compile_s, flops, params_by_cfg, memory = {}, {}, {}, {}, {}
  for name, (variant_lib, variant) in variants.items():
    key = json.dumps(variant.cfg.to_dict(), sort_keys=True, default=str)
    if key not in params_by_cfg:  # variants that differ only in their call share one parameter set
      params_by_cfg[key] = variant_lib.init_params(variant.cfg, jax.random.key(seed),
                                                   variant_lib.dummy_batch(variant.cfg, 1, seed))
    sample, params = _deployed_sample(variant_lib, variant, params_by_cfg[key])
    batch = jax.device_put(timing.inference_batch(variant_lib, variant.cfg, batch_size, seed))
    exe, seconds = timing.compile_call(sample, params, batch, rng)
    calls[name] = (lambda e=exe, p=params, b=batch: e(p, b, rng))
    compile_s[name] = round(seconds, 3)
    flops[name] = variant_lib.analytic_flops(variant.cfg, batch_size, variant.flop_mode)
    memory[name] = timing.executable_memory(exe)
  dtype = model_cfg.get("dtype", "float32")
  with timing.exclusive(timing_lock):
    roof_before = _roofs(dtype)
    times = timing.time_round_robin(calls, repeats)
    roof = _best_roofs(roof_before, _roofs(dtype))
  chip = _chip(dtype)
  latency = {k: t.median_s for k, t in times.items()}
  fastest = {k: t.min_s for k, t in times.items()}
  cpu = {k: t.cpu_median_s for k, t in times.items()}
  result = {
      "what": "inference", "model": lib.name, "variant": model_cfg.get("variant", ""), "batch_size": batch_size,
      "repeats": repeats,
      "latency_ms": {k: round(v * 1e3, 3) for k, v in latency.items()},
      # Fastest call of each variant: less sensitive than the median to other load on a shared host.
      "min_latency_ms": {k: round(v * 1e3, 3) for k, v in fastest.items()},
      # CPU time of the process per call (all threads): the work done, less inflated by other load.
      "cpu_ms": {k: round(v * 1e3, 3) for k, v in cpu.items()},
      "compile_s": compile_s,
      "analytic_gflops": {k: round(v / 1e9, 4) for k, v in flops.items()},
      "matmul_roof": roof, "chip": chip,
      "efficiency": _efficiency(flops, times, roof, chip),
      "ratios": _ratios(latency, lib.bench_ratios),
      "ratios_of_min_latency": _ratios(fastest, lib.bench_ratios),
      "ratios_of_cpu_time": _ratios(cpu, lib.bench_ratios),
      "analytic_ratios": _ratios(flops, lib.bench_ratios),
      "memory_gb": {"executables": memory, "peak_rss": round(timing.peak_rss_gb(), 3),
                    "rss_after_timing": round(timing.current_rss_gb(), 3)},
      "device_memory_gb": timing.device_memory_gb(),
      "load": {"before": load_before, "after": timing.host_load()},
  }
  if with_reference:
    result["reference_ratios"] = _ratios(latency, lib.bench_ratios, "reference/")
    result["reference_ratios_of_min_latency"] = _ratios(fastest, lib.bench_ratios, "reference/")
    names = lib.bench_variants(model_cfg)
    result["rewrite_speedup"] = {name: latency[f"reference/{name}"] / latency[name] for name in names}
    result["rewrite_speedup_of_cpu_time"] = {name: cpu[f"reference/{name}"] / cpu[name] for name in names}
  if baseline_lib is not None:
    own = [n for n in variants if not n.startswith((BASELINE_PREFIX, "reference/"))]
    base = [n for n in variants if n.startswith(BASELINE_PREFIX)]
    pairs = {f"{a} / {b}": (a, b) for a in own for b in base}
    result["baseline"] = {"model": baseline_lib.name, "variant": baseline_cfg.get("variant", "")}
    result["ratios_to_baseline"] = {"latency": _ratios(latency, pairs), "min_latency": _ratios(fastest, pairs),
                                    "cpu_time": _ratios(cpu, pairs), "analytic_flops": _ratios(flops, pairs)}
  return result


def inference_programs(model_cfg, batch_size: int, seed: int) -> dict:
  """The deployed ``sample_actions`` program of every inference variant, lowered from abstract parameters (nothing
  allocated; see the module doc): {'programs': {variant: {'sha256', 'chars'}}, 'same_program': [[variants], ...],
  'argument_gb', 'analytic_gflops'}."""
  lib = _sampling_library(model_cfg, "--config")
  rng = jax.random.key(seed + 1)
  programs, arguments, flops = {}, {}, {}
  for name, variant in lib.bench_variants(model_cfg).items():
    sample, params = _deployed_sample(lib, variant, lib.abstract_params(variant.cfg))
    batch = timing.inference_batch(lib, variant.cfg, batch_size, seed)
    text = jax.jit(sample).lower(params, batch, rng).as_text()
    programs[name] = {"sha256": hashlib.sha256(text.encode()).hexdigest(), "chars": len(text)}
    arguments[name] = round(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((params, batch))) / 1e9, 6)
    flops[name] = round(lib.analytic_flops(variant.cfg, batch_size, variant.flop_mode) / 1e9, 4)
  groups: dict[str, list[str]] = {}
  for name, program in programs.items():
    groups.setdefault(program["sha256"], []).append(name)
  return {"what": "programs", "model": lib.name, "variant": model_cfg.get("variant", ""), "batch_size": batch_size,
          "programs": programs, "same_program": [names for names in groups.values() if len(names) > 1],
          "argument_gb": arguments, "analytic_gflops": flops}


def _optimizer(frozen: tuple[str, ...]) -> optax.GradientTransformation:
  """AdamW (0.9 / 0.95, weight decay 1e-4); with ``frozen`` patterns the frozen parameters get no update and no
  optimizer state, as in the trainer (``optim.make_optimizer``)."""
  adamw = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=1e-4)
  if not frozen:
    return adamw
  return optax.multi_transform({optim.TRAINABLE: adamw, optim.FROZEN: optax.set_to_zero()},
                               lambda params: optim.freeze_labels(params, frozen))


def _train_step_fn(lib, model_cfg, optimizer, frozen: tuple[str, ...] = ()):
  """One AdamW step on ``compute_loss``. Models with state collections (``ModelLibrary.state_collections``) are
  stepped as the trainer steps them: the loss with the state mutable, then ``after_update``. ``frozen``
  parameters are held by ``stop_gradient`` (no backward through them), as in the trainer's step."""
  model = lib.build(model_cfg)
  collections = list(lib.state_collections)

  def step(params, opt_state, model_state, batch, rng):
    def loss_fn(p):
      if frozen:
        p = optim.hold_frozen(p, optim.freeze_labels(p, frozen))
      if not collections:
        loss, metrics = model.apply({"params": p}, batch, rng, method="compute_loss")
        return loss, (metrics, model_state)
      (loss, metrics), written = model.apply({"params": p, **model_state}, batch, rng, method="compute_loss",
                                             mutable=collections)
      return loss, (metrics, written)

    (_, (metrics, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if collections:
      params, new_state, _ = lib.after_update(model_cfg, params, new_state, jax.random.fold_in(rng, 1))
    return params, opt_state, new_state, metrics

  return step


def bench_train_step(model_cfg, batch_size: int, repeats: int, seed: int, op_breakdown: bool = False,
                     with_reference: bool = False, frozen: tuple[str, ...] = (),
                     timing_lock: str | None = None, baseline_cfg=None,
                     baseline_frozen: tuple[str, ...] = ()) -> dict:
  """Median AdamW step on ``compute_loss`` (see the module doc). With ``with_reference`` the model with its exact
  rewrites off (``reference_config``) steps in the same round robin (its own parameters and optimizer state).
  ``frozen``: regular expressions of parameters held fixed, as a training stage's ``frozen``. ``baseline_cfg``
  (with its own ``baseline_frozen``): another model config, any library, stepped in the same round robin as
  'baseline/train_step' on its own dummy batch: 'ratios_to_baseline' is the method's training cost against its
  base policy under one load."""
  lib = registry.for_config(model_cfg)
  load_before = timing.host_load()
  # name -> (library, model config, frozen patterns)
  entries = {"train_step": (lib, model_cfg, tuple(frozen))}
  if with_reference:
    reference = lib.reference_config(model_cfg)
    if reference is None:
      raise ValueError(f"--with_reference: model {lib.name!r} has no exact rewrites to switch off")
    entries["reference/train_step"] = (lib, reference, tuple(frozen))
  if baseline_cfg is not None:
    entries[BASELINE_PREFIX + "train_step"] = (registry.for_config(baseline_cfg), baseline_cfg,
                                               tuple(baseline_frozen))
  batches, states, compiled, compile_s, memory, rss_gb, metrics = {}, {}, {}, {}, {}, {}, {}
  for name, (entry_lib, cfg, entry_frozen) in entries.items():
    batches[name] = jax.device_put(entry_lib.dummy_batch(cfg, batch_size, seed))
    optimizer = _optimizer(entry_frozen)
    params = entry_lib.init_params(cfg, jax.random.key(seed), batches[name])
    if entry_frozen:
      optim.check_frozen_patterns(params, entry_frozen, "--baseline_stage frozen" if name.startswith(
          BASELINE_PREFIX) else "--stage frozen")
    if name == "train_step":
      labels = jax.tree.leaves(optim.freeze_labels(params, frozen))
      sizes = [int(x.size) for x in jax.tree.leaves(params)]
      parameter_counts = {"parameters": sum(sizes),
                          "trainable_parameters": sum(n for n, lab in zip(sizes, labels) if lab == optim.TRAINABLE)}
    model_state = entry_lib.init_model_state(cfg, jax.random.key(seed), batches[name]) or {}
    states[name] = [params, optimizer.init(params), model_state]
    start = time.perf_counter()
    compiled[name] = jax.jit(_train_step_fn(entry_lib, cfg, optimizer, entry_frozen),
                             donate_argnums=(0, 1, 2)).lower(*states[name], batches[name], jax.random.key(0)).compile()
    compile_s[name] = round(time.perf_counter() - start, 3)
    memory[name] = timing.executable_memory(compiled[name])
    rss_gb[f"after_compile/{name}"] = round(timing.current_rss_gb(), 3)

  def call(name):
    counter = {"step": 0}

    def run():
      counter["step"] += 1
      state = states[name]
      state[0], state[1], state[2], metrics[name] = compiled[name](*state, batches[name],
                                                                   jax.random.key(counter["step"]))
      return state[0], metrics[name]

    return run

  calls = {name: call(name) for name in entries}
  dtype = model_cfg.get("dtype", "float32")
  breakdown = None
  with timing.exclusive(timing_lock):
    for name, run in calls.items():  # the first step (its temporaries are allocated for the first time)
      jax.block_until_ready(run())
      rss_gb[f"after_first_step/{name}"] = round(timing.current_rss_gb(), 3)
    roof_before = _roofs(dtype)
    times = timing.time_round_robin(calls, repeats)
    roof = _best_roofs(roof_before, _roofs(dtype))
    rss_gb["after_timing"] = round(timing.current_rss_gb(), 3)
    if op_breakdown:
      breakdown = op_profile.op_time_breakdown(calls["train_step"], repeats=min(repeats, 5))
      rss_gb["after_op_breakdown"] = round(timing.current_rss_gb(), 3)
  flops = {name: entry_lib.analytic_flops(cfg, batch_size, "train_step")
           for name, (entry_lib, cfg, _) in entries.items()}
  main = times["train_step"]
  chip = _chip(dtype)
  efficiency = _efficiency(flops, times, roof, chip)
  result = {
      "what": "train_step", "model": lib.name, "variant": model_cfg.get("variant", ""), "batch_size": batch_size,
      "repeats": repeats,
      "median_step_s": round(main.median_s, 4), "min_step_s": round(main.min_s, 4),
      "cpu_step_s": round(main.cpu_median_s, 4), "compile_s": compile_s["train_step"],
      "analytic_gflops_per_step": round(flops["train_step"] / 1e9, 3),
      "achieved_gflops_per_s": efficiency["train_step"]["gflop_per_s"],
      "matmul_roof_gflops_per_s": roof["gflop_per_s"], "matmul_roof": roof, "chip": chip,
      "fraction_of_roof": flops["train_step"] / main.median_s / 1e9 / roof["gflop_per_s"],
      "fraction_of_cpu_roof": efficiency["train_step"]["fraction_of_cpu_roof"],
      "fraction_of_published_peak": efficiency["train_step"].get("fraction_of_published_peak"),
      "frozen": list(frozen), **parameter_counts,
      "flops_note": ("3 x forward of every term, frozen parts included: an upper bound of the step's FLOPs"
                     if frozen else "3 x forward of every term"),
      "final_loss": float(metrics["train_step"]["loss"]),
  }
  if with_reference:
    ref = times["reference/train_step"]
    result["reference"] = {"median_step_s": round(ref.median_s, 4), "cpu_step_s": round(ref.cpu_median_s, 4),
                           "compile_s": compile_s["reference/train_step"],
                           **efficiency["reference/train_step"]}
    result["rewrite_speedup"] = ref.median_s / main.median_s
    result["rewrite_speedup_of_cpu_time"] = ref.cpu_median_s / main.cpu_median_s
  if baseline_cfg is not None:
    name = BASELINE_PREFIX + "train_step"
    base = times[name]
    result["baseline"] = {"model": entries[name][0].name, "variant": baseline_cfg.get("variant", ""),
                          "frozen": list(baseline_frozen), "median_step_s": round(base.median_s, 4),
                          "min_step_s": round(base.min_s, 4), "cpu_step_s": round(base.cpu_median_s, 4),
                          "compile_s": compile_s[name], "analytic_gflops_per_step": round(flops[name] / 1e9, 3),
                          "final_loss": float(metrics[name]["loss"]), **efficiency[name]}
    result["ratios_to_baseline"] = {"latency": main.median_s / base.median_s, "min_latency": main.min_s / base.min_s,
                                    "cpu_time": main.cpu_median_s / base.cpu_median_s,
                                    "analytic_flops": flops["train_step"] / flops[name]}
  if breakdown is not None:
    result["op_breakdown"] = breakdown
    if breakdown["share"]["matmul"] > 0:
      result["roof_fraction_if_only_matmul_ops"] = result["fraction_of_roof"] / breakdown["share"]["matmul"]
  result["memory_gb"] = {"executables": memory, "rss": rss_gb, "peak_rss": round(timing.peak_rss_gb(), 3)}
  result["device_memory_gb"] = timing.device_memory_gb()
  result["load"] = {"before": load_before, "after": timing.host_load()}
  return result


def _stage_model(config, stage: str | None, flag: str):
  """(model config, frozen patterns): the model of ``config``'s stage ``stage`` (its overrides applied, as the
  trainer does) and that stage's frozen parameters, or the ``model`` section with nothing frozen (``stage`` None)."""
  if stage is None:
    return config.model, ()
  stages = config.stages if "stages" in config else {}
  if stage not in stages:
    raise app.UsageError(f"{flag}={stage}: the config has no such stage (stages: "
                         f"{sorted(stages.keys()) if stages else 'none'})")
  return defaults.stage_model_config(config, stage), tuple(stages[stage].frozen)


def _baseline_model():
  """(model config, frozen patterns) of --baseline, or (None, ()): its stage --baseline_stage (default: --stage when
  the baseline has a stage of that name), else its ``model`` section."""
  baseline = _BASELINE.value
  if baseline is None:
    if _BASELINE_STAGE.value is not None:
      raise app.UsageError("--baseline_stage needs --baseline")
    return None, ()
  stage = _BASELINE_STAGE.value
  if stage is None and "stages" in baseline and _STAGE.value in baseline.stages:
    stage = _STAGE.value
  return _stage_model(baseline, stage, "--baseline_stage")


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/lamp.py:sim")
  model_cfg, frozen = _stage_model(_CONFIG.value, _STAGE.value, "--stage")
  if _WHAT.value == "programs":
    if _BASELINE.value is not None or _WITH_REFERENCE.value:
      raise app.UsageError("--what=programs lowers the config's own variants: no --baseline or --with_reference")
    result = inference_programs(model_cfg, _BATCH.value or 1, _SEED.value)
  elif _WHAT.value == "inference":
    baseline_cfg, _ = _baseline_model()
    result = bench_inference(model_cfg, _BATCH.value or 1, _REPEATS.value, _SEED.value, _WITH_REFERENCE.value,
                             _TIMING_LOCK.value, baseline_cfg)
  else:
    baseline_cfg, baseline_frozen = _baseline_model()
    result = bench_train_step(model_cfg, _BATCH.value or 8, _REPEATS.value, _SEED.value, _OP_BREAKDOWN.value,
                              _WITH_REFERENCE.value, frozen, _TIMING_LOCK.value, baseline_cfg, baseline_frozen)
  if _STAGE.value is not None:
    result["stage"] = _STAGE.value
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  from lamp_jax import allocator

  allocator.reexec_with_tcmalloc("lamp_jax.perf.bench")  # XLA:CPU runs 1.75x faster on it (allocator.py)
  app.run(main)
