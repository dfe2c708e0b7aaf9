"""Benchmarks of the LaMP policy; prints JSON.

  python -m lamp_jax.bench --config=configs/lamp.py:sim --what=inference
  python -m lamp_jax.bench --config=configs/lamp.py:sim --what=train_step --batch_size=8

inference: median latency (ms) of the jitted ``sample_actions`` at --batch_size (default 1) after compilation,
  with motion (one-step partial denoising), without motion (use_motion=False, same parameters) and with the full
  ``motion_reconstruction_steps`` reconstruction; the motion representation alone (partial vs full, from given
  VLM features); compile times; analytic FLOPs. Calls are interleaved round-robin so that load on a shared
  host affects all variants alike; ratios are from the same run.
  ``--with_reference`` also times, in the same round robin, the same model with the exact rewrites switched off
  (motion.prune_last_condition=False, action.cache_context_kv=False, scan_unroll=1): a before / after under
  identical load. ``analytic_ratios`` are the FLOP ratios, the floor of the latency ratios at equal efficiency.
motion: the Motion Expert alone: one-step partial denoising vs the full reconstruction from random VLM features of
  the prefix's shape, with only the Motion Expert's parameters built (random values). Feasible at the paper size
  on a CPU host (``--config=configs/lamp.py:paper --config.model.dtype=float32``), where ``inference`` would need
  the 3 B VLM.
train_step: median time of a jitted AdamW step on compute_loss and its fraction of the host's matmul roof
  (lamp_jax.roofline) using analytic FLOPs. ``--op_breakdown`` adds where the step's time goes (lamp_jax.op_profile):
  the share of XLA op time in matmul kernels, layout copies, loop bookkeeping and other ops, the top ops, and
  ``roof_fraction_if_only_matmul_ops`` = fraction_of_roof / share['matmul'], the most this model can reach here
  while its matmul kernels run as they do.

torch_export: the PyTorch export (``lamp_jax.export`` -> ``lamp_torch``) against the JAX policy on this host:
  ``sample_actions`` latency at --batch_size (default 1) of the jitted JAX model and of the exported PyTorch
  model on the same inputs and injected noise (torch with its default intra-op threads and with one thread),
  interleaved round-robin (their max abs difference is reported as a check), export time (cold: including the tracing that gives the layout; warm: mapping + writing) and file size
  at the config's size, and the file size at the paper size computed from abstract shapes
  (``lamp_jax.export.predicted_size``: nothing allocated) in float32 and bfloat16.

Model options are config values, e.g. ``--config.model.motion.scan_unroll=2 --config.model.action.scan_unroll=2``
(unrolled layer scans, same parameters and math).
"""

from __future__ import annotations

import copy
import json
import statistics
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import optax
import tqdm

from lamp_jax import op_profile, roofline, specs
from lamp_jax.models import lamp

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file with a `model` section (configs/lamp.py).")
_WHAT = flags.DEFINE_enum("what", "inference", ["inference", "motion", "train_step", "torch_export"],
                          "What to benchmark.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Batch size (default: 1 for inference, 8 for train_step).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per variant.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")
_OP_BREAKDOWN = flags.DEFINE_bool("op_breakdown", False, "train_step: also profile the step and report the share "
                                   "of XLA op time by kind (matmul / layout / loop / other; lamp_jax.op_profile) "
                                   "and the roof fraction the step would reach with only its matmul ops.")
_WITH_REFERENCE = flags.DEFINE_bool("with_reference", False, "inference: also time the model with the exact "
                                    "rewrites switched off (before / after in one run).")


def reference_config(model_cfg):
  """``model_cfg`` with the exact inference / training rewrites switched off (the plain computation)."""
  ref = copy.deepcopy(model_cfg)
  ref.motion.prune_last_condition = False
  ref.action.cache_context_kv = False
  ref.motion.scan_unroll = ref.action.scan_unroll = 1
  return ref


def _compile(fn, *args):
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def _time_round_robin(calls: dict, repeats: int) -> tuple[dict, dict]:
  """calls: name -> zero-arg callable returning arrays. Returns (name -> median seconds, name -> min seconds)."""
  for fn in calls.values():  # warm-up
    jax.block_until_ready(fn())
  times = {name: [] for name in calls}
  for _ in tqdm.trange(repeats, desc="timing", leave=False):
    for name, fn in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return ({name: statistics.median(t) for name, t in times.items()}, {name: min(t) for name, t in times.items()})


def _inference_batch(model_cfg, batch_size, seed):
  batch = lamp.dummy_batch(model_cfg, batch_size, seed)
  for key in (specs.ACTION, specs.ACTION_PAD_MASK, specs.SCENE_FLOW, specs.SCENE_FLOW_MASK,
              specs.SCENE_FLOW_QUERY, specs.SCENE_FLOW_QUERY_MASK, specs.HAS_SCENE_FLOW):
    batch.pop(key)
  return batch


def _motion_fns(model, full_steps: int):
  """(one-step partial denoising, full ``full_steps`` reconstruction) of the Motion Expert from given VLM
  features: functions (params, features, feature_mask, rng) -> hidden / (deltas, hidden)."""

  def motion_partial(p, f, m, r):
    return model.apply({"params": p}, f, m, r, method="motion_representation")

  def motion_full(p, f, m, r):
    return model.apply({"params": p}, f, m, r, method=lambda mdl, f, m, r: mdl._reconstruct(f, m, r, full_steps))

  return motion_partial, motion_full


def _inference_calls(model_cfg, params, batch, rng, prefix=""):
  """name -> (function, args) of the timed inference variants of one model config."""
  no_motion_cfg = copy.deepcopy(model_cfg)
  no_motion_cfg.use_motion = False
  no_motion_params = {k: v for k, v in params.items() if k in ("vlm", "action_expert")}
  model, model_nm = lamp.build(model_cfg), lamp.build(no_motion_cfg)
  full_steps = model_cfg.motion_reconstruction_steps

  def with_motion(p, b, r):
    return model.apply({"params": p}, b, r, method="sample_actions")

  def without_motion(p, b, r):
    return model_nm.apply({"params": p}, b, r, method="sample_actions")

  def full_motion(p, b, r):
    return model.apply({"params": p}, b, r, motion_steps=full_steps, method="sample_actions")

  features, mask = jax.jit(lambda p, b: model.apply({"params": p}, b, method="encode"))(params, batch)
  motion_partial, motion_full = _motion_fns(model, full_steps)
  return {prefix + "sample_actions_with_motion": (with_motion, (params, batch, rng)),
          prefix + "sample_actions_without_motion": (without_motion, (no_motion_params, batch, rng)),
          prefix + "sample_actions_full_motion": (full_motion, (params, batch, rng)),
          prefix + "motion_partial": (motion_partial, (params, features, mask, rng)),
          prefix + "motion_full": (motion_full, (params, features, mask, rng))}


def _ratios(latency, prefix=""):
  def get(name):
    return latency[prefix + name]

  return {
      "with_over_without_motion": get("sample_actions_with_motion") / get("sample_actions_without_motion"),
      "one_step_over_full_motion": get("motion_partial") / get("motion_full"),
      "sample_actions_one_step_over_full": get("sample_actions_with_motion") / get("sample_actions_full_motion"),
  }


def bench_inference(model_cfg, batch_size: int, repeats: int, seed: int, with_reference: bool = False) -> dict:
  model_cfg = copy.deepcopy(model_cfg)
  model_cfg.use_motion = True
  batch = _inference_batch(model_cfg, batch_size, seed)
  params = lamp.init_params(model_cfg, jax.random.key(seed), lamp.dummy_batch(model_cfg, batch_size, seed))
  no_motion_cfg = copy.deepcopy(model_cfg)
  no_motion_cfg.use_motion = False
  full_steps = model_cfg.motion_reconstruction_steps
  rng = jax.random.key(seed + 1)
  variants = _inference_calls(model_cfg, params, batch, rng)
  if with_reference:
    variants.update(_inference_calls(reference_config(model_cfg), params, batch, rng, prefix="reference/"))

  compiled, compile_s = {}, {}
  for name, (fn, args) in variants.items():
    exe, seconds = _compile(fn, *args)
    compiled[name] = (exe, args)
    compile_s[name] = round(seconds, 3)
  latency, fastest = _time_round_robin({n: (lambda e=e, a=a: e(*a)) for n, (e, a) in compiled.items()}, repeats)
  flops = {
      "sample_actions_with_motion": lamp.analytic_flops(model_cfg, batch_size, "sample_actions"),
      "sample_actions_without_motion": lamp.analytic_flops(no_motion_cfg, batch_size, "sample_actions"),
      "sample_actions_full_motion": lamp.analytic_flops(model_cfg, batch_size, "sample_actions_full_motion"),
      "motion_partial": lamp.analytic_flops(model_cfg, batch_size, "motion_partial"),
      "motion_full": lamp.analytic_flops(model_cfg, batch_size, "motion_full"),
  }
  result = {
      "what": "inference", "variant": model_cfg.variant, "batch_size": batch_size, "repeats": repeats,
      "partial_steps": model_cfg.partial_steps, "tau_infer": model_cfg.tau_infer,
      "motion_reconstruction_steps": full_steps, "num_inference_steps": model_cfg.num_inference_steps,
      "latency_ms": {k: round(v * 1e3, 3) for k, v in latency.items()},
      # Fastest call of each variant: less sensitive than the median to other load on a shared host.
      "min_latency_ms": {k: round(v * 1e3, 3) for k, v in fastest.items()},
      "compile_s": compile_s,
      "analytic_gflops": {k: round(v / 1e9, 4) for k, v in flops.items()},
      "ratios": _ratios(latency),
      "ratios_of_min_latency": _ratios(fastest),
      "analytic_ratios": {
          "with_over_without_motion": flops["sample_actions_with_motion"] / flops["sample_actions_without_motion"],
          "one_step_over_full_motion": flops["motion_partial"] / flops["motion_full"],
      },
  }
  if with_reference:
    result["reference_ratios"] = _ratios(latency, "reference/")
    result["reference_ratios_of_min_latency"] = _ratios(fastest, "reference/")
  return result


def bench_motion(model_cfg, batch_size: int, repeats: int, seed: int) -> dict:
  """Median latency of the Motion Expert's one-step partial denoising vs its full reconstruction (see module doc).

  Only ``params['motion_expert']`` exists (random normal values, std 0.02): the LaMP methods that are timed
  touch no other component."""
  model_cfg = copy.deepcopy(model_cfg)
  model_cfg.use_motion = True
  abstract = lamp.abstract_params(model_cfg)["motion_expert"]
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  motion_params = jax.tree.unflatten(treedef, [0.02 * jax.random.normal(k, x.shape, x.dtype)
                                               for k, x in zip(keys, leaves)])
  params = {"motion_expert": motion_params}
  model = lamp.build(model_cfg)
  prefix = lamp.prefix_length(model_cfg)
  width = _vlm_width(model_cfg)
  features = jax.random.normal(jax.random.key(seed + 1), (batch_size, prefix, width), jnp.float32)
  mask = jnp.ones((batch_size, prefix), bool)
  rng = jax.random.key(seed + 2)
  full_steps = model_cfg.motion_reconstruction_steps
  compiled, compile_s = {}, {}
  for name, fn in zip(("motion_partial", "motion_full"), _motion_fns(model, full_steps)):
    compiled[name], seconds = _compile(fn, params, features, mask, rng)
    compile_s[name] = round(seconds, 3)
  latency, fastest = _time_round_robin(
      {n: (lambda e=e: e(params, features, mask, rng)) for n, e in compiled.items()}, repeats)
  flops = {k: lamp.analytic_flops(model_cfg, batch_size, k) for k in ("motion_partial", "motion_full")}
  return {
      "what": "motion", "variant": model_cfg.variant, "dtype": str(model_cfg.dtype), "batch_size": batch_size,
      "repeats": repeats, "prefix_tokens": prefix, "partial_steps": model_cfg.partial_steps,
      "motion_reconstruction_steps": full_steps,
      "motion_expert_parameters": sum(int(x.size) for x in leaves),
      "latency_ms": {k: round(v * 1e3, 3) for k, v in latency.items()},
      "min_latency_ms": {k: round(v * 1e3, 3) for k, v in fastest.items()},
      "compile_s": compile_s,
      "analytic_gflops": {k: round(v / 1e9, 4) for k, v in flops.items()},
      "one_step_over_full_motion": latency["motion_partial"] / latency["motion_full"],
      "one_step_over_full_motion_of_min_latency": fastest["motion_partial"] / fastest["motion_full"],
      "analytic_one_step_over_full_motion": flops["motion_partial"] / flops["motion_full"],
  }


def _vlm_width(model_cfg) -> int:
  from lamp_jax.models import paligemma  # pylint: disable=g-import-not-at-top

  return int(paligemma.config_from_dict(model_cfg.vlm).llm.width)


def bench_train_step(model_cfg, batch_size: int, repeats: int, seed: int, op_breakdown: bool = False) -> dict:
  batch = lamp.dummy_batch(model_cfg, batch_size, seed)
  params = lamp.init_params(model_cfg, jax.random.key(seed), batch)
  model = lamp.build(model_cfg)
  optimizer = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=1e-4)
  opt_state = optimizer.init(params)

  def step(params, opt_state, batch, rng):
    def loss_fn(p):
      return model.apply({"params": p}, batch, rng, method="compute_loss")

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, batch, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  params, opt_state, _ = compiled(params, opt_state, batch, jax.random.key(0))  # warm-up
  jax.block_until_ready(params)
  times = []
  for i in tqdm.trange(repeats, desc="train steps", leave=False):
    start = time.perf_counter()
    params, opt_state, metrics = compiled(params, opt_state, batch, jax.random.key(i + 1))
    jax.block_until_ready((params, metrics))
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  flops = lamp.analytic_flops(model_cfg, batch_size, "train_step")
  roof = roofline.measure_matmul_roof(jnp.dtype(model_cfg.dtype))
  result = {
      "what": "train_step", "variant": model_cfg.variant, "batch_size": batch_size, "repeats": repeats,
      "median_step_s": round(median, 4), "compile_s": round(compile_s, 3),
      "analytic_gflops_per_step": round(flops / 1e9, 3), "achieved_gflops_per_s": round(flops / median / 1e9, 3),
      "matmul_roof_gflops_per_s": round(roof / 1e9, 3), "fraction_of_roof": flops / median / roof,
      "final_loss": float(metrics["loss"]),
  }
  if op_breakdown:
    state = {"params": params, "opt_state": opt_state}

    def call():
      state["params"], state["opt_state"], step_metrics = compiled(state["params"], state["opt_state"], batch,
                                                                   jax.random.key(0))
      return step_metrics

    breakdown = op_profile.op_time_breakdown(call, repeats=min(repeats, 5))
    result["op_breakdown"] = breakdown
    if breakdown["share"]["matmul"] > 0:
      result["roof_fraction_if_only_matmul_ops"] = result["fraction_of_roof"] / breakdown["share"]["matmul"]
  return result


def bench_torch_export(model_cfg, batch_size: int, repeats: int, seed: int) -> dict:
  """JAX vs exported PyTorch ``sample_actions`` latency and export figures (see the module docstring)."""
  import os  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  import lamp_torch  # pylint: disable=g-import-not-at-top
  from lamp_jax import export  # pylint: disable=g-import-not-at-top

  model_cfg = copy.deepcopy(model_cfg)
  batch = _inference_batch(model_cfg, batch_size, seed)
  params = jax.device_get(lamp.init_params(model_cfg, jax.random.key(seed),
                                           lamp.dummy_batch(model_cfg, batch_size, seed)))
  cameras = list(model_cfg.image_keys)
  inputs = {"cameras": cameras, "camera_keys": {c: c for c in cameras}, "image_size": [model_cfg.image_size] * 2,
            "resize": False, "state_key": "state", "proprio_dim": int(model_cfg.proprio_dim), "state_dim": None}
  tokenizer = {"kind": "bytes", "words": "", "path": "", "max_len": int(model_cfg.max_token_len), "truncate": True}
  with tempfile.TemporaryDirectory() as tmp:
    export_s = {}
    for name in ("cold", "warm"):
      start = time.perf_counter()
      info = export.export_params(params, model_cfg, os.path.join(tmp, name), inputs=inputs, normalization=None,
                                  tokenizer=tokenizer, source={"bench": True})
      export_s[name] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    policy = lamp_torch.from_pretrained(os.path.join(tmp, "warm"))
    load_s = time.perf_counter() - start

  model = lamp.build(model_cfg)
  rs = np.random.RandomState(seed + 1)
  noise = {k: rs.normal(size=v).astype(np.float32) for k, v in policy.model.noise_shapes(batch_size).items()}
  obs = batch[specs.OBSERVATION]
  images = np.stack([obs[k][:, -1].astype(np.float32) / 127.5 - 1.0 for k in cameras], axis=1)
  torch_inputs = {"images": torch.from_numpy(images),
                  "image_mask": torch.from_numpy(np.stack([obs[specs.IMAGE_MASK][k][:, -1] for k in cameras], 1)),
                  "tokens": torch.from_numpy(batch[specs.TASK][specs.TOKENS]),
                  "token_mask": torch.from_numpy(batch[specs.TASK][specs.TOKEN_MASK]),
                  "proprio": torch.from_numpy(np.array(obs[specs.PROPRIO][:, -1]))}
  torch_noise = {k: torch.from_numpy(v) for k, v in noise.items()}
  jax_params = jax.tree.map(jnp.asarray, params)
  fn = lambda p, b, n: model.apply({"params": p}, b, jax.random.key(0), noise=n, method="sample_actions")  # noqa
  compiled, compile_s = _compile(fn, jax_params, batch, noise)

  default_threads = torch.get_num_threads()

  def torch_call(threads):
    def call():
      torch.set_num_threads(threads)
      with torch.inference_mode():
        return policy.model.sample_actions(torch_inputs, torch_noise).numpy()
    return call

  # torch's intra-op threads (OpenMP) on a host shared with other jobs: one thread can beat all of them.
  calls = {"jax": lambda: compiled(jax_params, batch, noise), "torch": torch_call(default_threads),
           "torch_1_thread": torch_call(1)}
  latency, fastest = _time_round_robin(calls, repeats)
  torch.set_num_threads(default_threads)
  max_abs_diff = float(np.abs(np.asarray(calls["jax"]()) - calls["torch"]()).max())
  paper = lamp.model_config("paper")
  return {
      "what": "torch_export", "variant": model_cfg.variant, "use_motion": bool(model_cfg.use_motion),
      "batch_size": batch_size, "repeats": repeats, "torch_threads": default_threads,
      "latency_ms": {k: round(v * 1e3, 3) for k, v in latency.items()},
      "min_latency_ms": {k: round(v * 1e3, 3) for k, v in fastest.items()},
      "torch_over_jax": {k: latency[k] / latency["jax"] for k in ("torch", "torch_1_thread")},
      "torch_over_jax_of_min_latency": {k: fastest[k] / fastest["jax"] for k in ("torch", "torch_1_thread")},
      "max_abs_diff_torch_vs_jax": max_abs_diff, "jax_compile_s": round(compile_s, 3),
      "export_s": export_s, "torch_load_s": round(load_s, 3), "file_bytes": info["bytes"],
      "tensors": info["tensors"], "predicted_bytes": export.predicted_size(model_cfg)["bytes"],
      "paper": {"float32": export.predicted_size(paper), "bfloat16": export.predicted_size(paper, "bfloat16")},
  }


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/lamp.py:sim")
  model_cfg = _CONFIG.value.model
  if _WHAT.value == "inference":
    result = bench_inference(model_cfg, _BATCH.value or 1, _REPEATS.value, _SEED.value, _WITH_REFERENCE.value)
  elif _WHAT.value == "motion":
    result = bench_motion(model_cfg, _BATCH.value or 1, _REPEATS.value, _SEED.value)
  elif _WHAT.value == "torch_export":
    result = bench_torch_export(model_cfg, _BATCH.value or 1, _REPEATS.value, _SEED.value)
  else:
    result = bench_train_step(model_cfg, _BATCH.value or 8, _REPEATS.value, _SEED.value, _OP_BREAKDOWN.value)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  from lamp_jax import allocator

  allocator.reexec_with_tcmalloc("lamp_jax.bench")  # XLA:CPU runs 1.75x faster on it (allocator.py)
  app.run(main)
