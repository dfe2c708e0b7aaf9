"""Timing and memory helpers of the benchmarks: compile once, then interleave the timed calls (round robin) so
that load on a shared host affects every variant alike; per call the wall time and the process CPU time (all
threads) are recorded, and the host's load beside them. Memory: the peak / current resident set of the process
and each compiled executable's own buffer plan (``executable_memory``). The inference batch a robot would send."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import resource
import statistics
import time

import jax
import numpy as np
import tqdm

from lamp_jax import specs


@dataclasses.dataclass(frozen=True)
class CallTimes:
  """Seconds per call of one timed function.

  Attributes:
    median_s: median wall time.
    min_s: fastest wall time (less sensitive than the median to other load on a shared host).
    cpu_median_s: median CPU time of this process (every thread) during the call: the work done, which other
      processes on the host inflate less than the wall time (they still slow it through shared caches).
  """

  median_s: float
  min_s: float
  cpu_median_s: float


def compile_call(fn, *args):
  """(compiled executable, compile seconds)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - start


def fit_fixed_and_per_call(calls, seconds) -> tuple[float, float]:
  """Least-squares line seconds = fixed + per_call * calls: (fixed, per_call). Needs >= 2 distinct call counts.

  Splits the latency of a family of executables that repeat one call a different number of times (e.g. Euler
  steps) into a fixed cost per execution and a cost per call."""
  calls, seconds = np.asarray(calls, np.float64), np.asarray(seconds, np.float64)
  if calls.shape != seconds.shape or len(set(calls.tolist())) < 2:
    raise ValueError(f"need >= 2 distinct call counts with one time each, got calls={calls.tolist()}, "
                     f"seconds={seconds.tolist()}")
  per_call, fixed = np.polyfit(calls, seconds, 1)
  return float(fixed), float(per_call)


def time_round_robin(calls: dict, repeats: int) -> dict[str, CallTimes]:
  """calls: name -> zero-arg callable returning arrays (blocked on). Returns name -> ``CallTimes``."""
  for fn in calls.values():  # warm-up
    jax.block_until_ready(fn())
  wall = {name: [] for name in calls}
  cpu = {name: [] for name in calls}
  for _ in tqdm.trange(repeats, desc="timing", leave=False):
    for name, fn in calls.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn())
      wall[name].append(time.perf_counter() - start)
      cpu[name].append(time.process_time() - start_cpu)
  return {name: CallTimes(statistics.median(wall[name]), min(wall[name]), statistics.median(cpu[name]))
          for name in calls}


@contextlib.contextmanager
def exclusive(lock_path: str | None):
  """Holds an exclusive ``flock`` on ``lock_path`` (created if missing) for the block; no-op for None / ''.

  Several benchmark processes that share one accelerator then compile and initialise in parallel but time one at
  a time (each timed section is entered only while no other process times)."""
  if not lock_path:
    yield
    return
  with open(lock_path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def host_load() -> dict:
  """The host's 1-minute load average and CPU count (a load above the CPU count means shared cores)."""
  return {"load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}


def peak_rss_gb() -> float:
  """Peak resident set size of this process so far, GB (Linux ``ru_maxrss`` is in KiB); never below the current
  RSS read from ``/proc`` (the two counters are sampled differently)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
  try:
    with open("/proc/self/statm") as f:
      return max(peak, int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9)
  except OSError:
    return peak


def current_rss_gb() -> float:
  """Resident set size of this process now, GB (``/proc/self/statm``; the peak where that is unavailable)."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
  except OSError:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def executable_memory(compiled) -> dict:
  """A compiled executable's buffer plan in GB: 'arguments', 'outputs', 'temporaries', 'aliased' (outputs
  written into donated arguments) and 'live' = arguments + outputs - aliased + temporaries, the most it holds
  at once (XLA:CPU allocates its temporaries at every call). Empty when the backend reports nothing."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  gb = lambda name: getattr(analysis, name, 0) / 1e9
  result = {"arguments": gb("argument_size_in_bytes"), "outputs": gb("output_size_in_bytes"),
            "temporaries": gb("temp_size_in_bytes"), "aliased": gb("alias_size_in_bytes")}
  result["live"] = result["arguments"] + result["outputs"] - result["aliased"] + result["temporaries"]
  return {k: round(v, 4) for k, v in result.items()}


def device_memory_gb(device=None) -> dict:
  """The accelerator allocator's figures for ``device`` (default: the first local device) in GB: 'in_use',
  'peak_in_use' (since the process started) and 'limit'. Empty on backends that report none (CPU)."""
  stats = (device or jax.local_devices()[0]).memory_stats()
  if not stats:
    return {}
  fields = {"in_use": "bytes_in_use", "peak_in_use": "peak_bytes_in_use", "limit": "bytes_limit"}
  return {name: round(stats[key] / 1e9, 3) for name, key in fields.items() if key in stats}


_LABEL_KEYS = (specs.ACTION, specs.ACTION_PAD_MASK, specs.SCENE_FLOW, specs.SCENE_FLOW_MASK, specs.SCENE_FLOW_QUERY,
               specs.SCENE_FLOW_QUERY_MASK, specs.HAS_SCENE_FLOW, specs.OPTICAL_FLOW, specs.HAS_OPTICAL_FLOW)


def inference_batch(lib, model_cfg, batch_size, seed):
  """``dummy_batch`` without the training labels (what a robot sends)."""
  batch = lib.dummy_batch(model_cfg, batch_size, seed)
  return {k: v for k, v in batch.items() if k not in _LABEL_KEYS}
