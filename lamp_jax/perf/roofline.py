"""The host's measured matmul roof: FLOP/s of a large jitted matmul chain (used for utilisation figures)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def measure_matmul_roof(dtype=jnp.float32, *, size: int = 1024, chain: int = 4, repeats: int = 5) -> float:
  """Best observed FLOP/s of ``chain`` dependent [size, size] x [size, size] matmuls in ``dtype``.

  The maximum over ``repeats`` timed runs is reported (a roof is the best the host achieves; on a shared
  machine the median would mostly measure other load). FLOPs = chain * 2 * size^3.
  """
  return measure_matmul_roofs(dtype, size=size, chain=chain, repeats=repeats)["flop_per_s"]


def measure_matmul_roofs(dtype=jnp.float32, *, size: int = 1024, chain: int = 4, repeats: int = 5) -> dict:
  """``measure_matmul_roof`` and its CPU-time counterpart: dict(flop_per_s=best FLOP per wall second,
  flop_per_cpu_s=best FLOP per CPU second of this process (all threads)).

  The second is the roof of the benchmarks' CPU-time figures: on a host whose cores other processes share, a
  computation's FLOP per CPU second over this roof is its efficiency with the load taken out (mostly; shared
  caches still cost), where the wall-time ratio mostly measures the load.
  """
  dtype = jnp.dtype(dtype)
  keys = jax.random.split(jax.random.key(0), 2)
  a = (jax.random.normal(keys[0], (size, size), jnp.float32) / size**0.5).astype(dtype)
  b = (jax.random.normal(keys[1], (size, size), jnp.float32) / size**0.5).astype(dtype)

  @jax.jit
  def run(a, b):
    x = a
    for _ in range(chain):
      x = jnp.dot(x, b, preferred_element_type=dtype)
    return x

  jax.block_until_ready(run(a, b))
  best, best_cpu = float("inf"), float("inf")
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(run(a, b))
    best = min(best, time.perf_counter() - start)
    best_cpu = min(best_cpu, time.process_time() - start_cpu)
  flops = chain * 2.0 * size**3
  return {"flop_per_s": flops / best, "flop_per_cpu_s": flops / max(best_cpu, 1e-9)}


if __name__ == "__main__":
  import json

  print(json.dumps({str(d): measure_matmul_roofs(d) for d in ("float32", "bfloat16")}))
