"""Timing helpers of the benchmarks: compile once, then interleave the timed calls (round robin) so that load on a
shared host affects every variant alike; the inference batch a robot would send."""

from __future__ import annotations

import statistics
import time

import jax
import tqdm

from lamp_jax import specs


def compile_call(fn, *args):
  """(compiled executable, compile seconds)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def time_round_robin(calls: dict, repeats: int) -> tuple[dict, dict]:
  """calls: name -> zero-arg callable returning arrays. Returns (name -> median seconds, name -> min seconds)."""
  for fn in calls.values():  # warm-up
    jax.block_until_ready(fn())
  times = {name: [] for name in calls}
  for _ in tqdm.trange(repeats, desc="timing", leave=False):
    for name, fn in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return ({name: statistics.median(ts) for name, ts in times.items()},
          {name: min(ts) for name, ts in times.items()})


_LABEL_KEYS = (specs.ACTION, specs.ACTION_PAD_MASK, specs.SCENE_FLOW, specs.SCENE_FLOW_MASK, specs.SCENE_FLOW_QUERY,
               specs.SCENE_FLOW_QUERY_MASK, specs.HAS_SCENE_FLOW, specs.OPTICAL_FLOW, specs.HAS_OPTICAL_FLOW)


def inference_batch(lib, model_cfg, batch_size, seed):
  """``dummy_batch`` without the training labels (what a robot sends)."""
  batch = lib.dummy_batch(model_cfg, batch_size, seed)
  return {k: v for k, v in batch.items() if k not in _LABEL_KEYS}
