"""``python -m lamp_jax.bench``: the benchmark command (speed, FLOPs, roofline); implemented in ``lamp_jax.perf.bench``."""

if __name__ == "__main__":
  from absl import app

  from lamp_jax import allocator
  from lamp_jax.perf import bench

  allocator.reexec_with_tcmalloc("lamp_jax.perf.bench")  # XLA:CPU runs 1.75x faster on it (allocator.py)
  app.run(bench.main)
