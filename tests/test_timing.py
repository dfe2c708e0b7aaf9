"""lamp_jax.perf.timing: round-robin timing with CPU time, and the memory figures of the benchmarks."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from lamp_jax.perf import timing


def test_time_round_robin_records_wall_and_cpu_time_per_call():
  x = jnp.ones((67, 67), jnp.float32)
  calls = {"matmul": jax.jit(lambda: x @ x), "add": jax.jit(lambda: x + 1.0)}
  times = timing.time_round_robin(calls, repeats=3)
  assert set(times) == set(calls)
  for t in times.values():
    assert 0 < t.min_s <= t.median_s
    assert t.cpu_median_s >= 0


def test_executable_memory_counts_donated_arguments_once():
  n = 2_000_003  # 8 MB: the plan is reported in GB to 4 decimals
  x = jnp.zeros((n,), jnp.float32)

  def update(a, b):
    return a * 2.0 + b, jnp.sum(b)

  donated = jax.jit(update, donate_argnums=0).lower(x, x).compile()
  kept = jax.jit(update).lower(x, x).compile()
  plan_donated, plan_kept = timing.executable_memory(donated), timing.executable_memory(kept)
  if not plan_donated:  # a backend without a buffer plan reports nothing
    return
  vector_gb = n * 4 / 1e9
  assert math.isclose(plan_donated["arguments"], 2 * vector_gb, abs_tol=2e-4)
  assert math.isclose(plan_donated["aliased"], vector_gb, abs_tol=1e-4) and plan_kept["aliased"] == 0
  for plan in (plan_donated, plan_kept):
    assert math.isclose(plan["live"], plan["arguments"] + plan["outputs"] - plan["aliased"] + plan["temporaries"],
                        abs_tol=2e-4)
  assert plan_donated["live"] < plan_kept["live"]


def test_rss_and_load():
  big = np.ones((1 << 24,), np.float32)  # 67 MB resident
  big += 1
  assert timing.peak_rss_gb() >= timing.current_rss_gb() * 0.99 > 0.06
  load = timing.host_load()
  assert load["cpus"] >= 1 and load["load_average_1min"] >= 0
