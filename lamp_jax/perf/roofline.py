"""The measured matmul roof of the default device: FLOP/s of a large jitted matmul chain (used for utilisation
figures), and the published peak of the accelerators we report against.

The chain's size follows the backend: [1024, 1024] matrices on CPU (a 2-core host reaches its best there), [8192,
8192] on GPU / TPU (smaller products are launch-bound on an H100-class chip and would understate its roof).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from lamp_jax.perf import tpu_specs


# Dense (no structured sparsity) peak matmul rate in TFLOP/s by ``jax.Device.device_kind`` and dtype, from the
# vendors' datasheets: NVIDIA H100 SXM5 / H200 SXM (same Hopper GH100 compute: bf16 989.4, tf32 494.7, plain fp32
# 66.9; the H200 differs in memory only). TPUs: ``tpu_specs.GENERATIONS`` (bf16 per chip). The fp32 figure is the
# plain-fp32 rate; XLA's default precision lets fp32 matmuls run as TF32 on the tensor cores, so an fp32 fraction
# of it can exceed 1. Kinds missing here get no published-peak fraction (reported as null, never guessed).
PUBLISHED_PEAK_TFLOPS = {
    ("NVIDIA H100 80GB HBM3", "bfloat16"): 989.4,
    ("NVIDIA H100 80GB HBM3", "float32"): 66.9,
    ("NVIDIA H200", "bfloat16"): 989.4,
    ("NVIDIA H200", "float32"): 66.9,
}


def published_peak_flops(device: jax.Device, dtype) -> float | None:
  """The vendor's dense peak matmul FLOP/s of ``device`` in ``dtype`` (None when not tabled here)."""
  dtype_name = jnp.dtype(dtype).name
  if device.platform == "tpu":
    if dtype_name != "bfloat16":
      return None
    # Per JAX device: the chip's peak split over the TensorCores that form separate devices (v4: two per chip).
    return (tpu_specs.generation_of_device(device).peak_bf16_tflops_per_chip * 1e12
            / tpu_specs.devices_per_chip(device))
  peak = PUBLISHED_PEAK_TFLOPS.get((device.device_kind, dtype_name))
  return None if peak is None else peak * 1e12


def default_size() -> int:
  """The roof's matrix size for the default backend (see the module docstring)."""
  return 1024 if jax.default_backend() == "cpu" else 8192


def measure_matmul_roof(dtype=jnp.float32, *, size: int | None = None, chain: int = 4, repeats: int = 5) -> float:
  """Best observed FLOP/s of ``chain`` dependent [size, size] x [size, size] matmuls in ``dtype``.

  The maximum over ``repeats`` timed runs is reported (a roof is the best the host achieves; on a shared
  machine the median would mostly measure other load). FLOPs = chain * 2 * size^3.
  """
  return measure_matmul_roofs(dtype, size=size, chain=chain, repeats=repeats)["flop_per_s"]


def measure_matmul_roofs(dtype=jnp.float32, *, size: int | None = None, chain: int = 4, repeats: int = 5) -> dict:
  """``measure_matmul_roof`` and its CPU-time counterpart: dict(flop_per_s=best FLOP per wall second,
  flop_per_cpu_s=best FLOP per CPU second of this process (all threads)).

  The second is the roof of the benchmarks' CPU-time figures: on a host whose cores other processes share, a
  computation's FLOP per CPU second over this roof is its efficiency with the load taken out (mostly; shared
  caches still cost), where the wall-time ratio mostly measures the load.
  """
  size = default_size() if size is None else size
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
