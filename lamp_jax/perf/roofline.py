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
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run(a, b))
    best = min(best, time.perf_counter() - start)
  return chain * 2.0 * size**3 / best


if __name__ == "__main__":
  import json

  print(json.dumps({str(d): measure_matmul_roof(d) for d in ("float32", "bfloat16")}))
