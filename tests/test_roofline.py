"""lamp_jax.perf.roofline (published peaks, the roof's size) and lamp_jax.perf.timing's helpers (accelerator memory, the
timing lock, the fixed / per-call split)."""

import fcntl
import types

import jax
import jax.numpy as jnp
import pytest

from lamp_jax.perf import roofline
from lamp_jax.perf import timing


def _device(platform, kind, num_cores=None):
  return types.SimpleNamespace(platform=platform, device_kind=kind, num_cores=num_cores)


def test_published_peaks_of_gpus_and_tpus():
  assert roofline.published_peak_flops(_device("gpu", "NVIDIA H200"), jnp.bfloat16) == pytest.approx(989.4e12)
  assert roofline.published_peak_flops(_device("gpu", "NVIDIA H200"), jnp.float32) == pytest.approx(66.9e12)
  assert roofline.published_peak_flops(_device("gpu", "Some GPU"), jnp.bfloat16) is None  # never guessed
  # TPU v5p: one JAX device per chip (megacore); v4: one per TensorCore, i.e. half a chip.
  assert roofline.published_peak_flops(_device("tpu", "TPU v5p", 2), jnp.bfloat16) == pytest.approx(459e12)
  assert roofline.published_peak_flops(_device("tpu", "TPU v4", 1), jnp.bfloat16) == pytest.approx(137.5e12)
  assert roofline.published_peak_flops(_device("tpu", "TPU v5p", 2), jnp.float32) is None
  assert roofline.published_peak_flops(jax.local_devices()[0], jnp.float32) is None  # this CPU


def test_roof_size_follows_the_backend(monkeypatch):
  assert roofline.default_size() == 1024
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert roofline.default_size() == 8192


def test_device_memory_is_empty_on_cpu():
  assert timing.device_memory_gb() == {}
  fake = types.SimpleNamespace(memory_stats=lambda: {"bytes_in_use": 2e9, "peak_bytes_in_use": 3e9,
                                                     "bytes_limit": 8e9})
  assert timing.device_memory_gb(fake) == {"in_use": 2.0, "peak_in_use": 3.0, "limit": 8.0}


def test_timing_lock_lets_one_timed_section_run_at_a_time(tmp_path):
  """While one holder is inside, another cannot take the lock (non-blocking attempt fails); after it, it can."""
  lock = str(tmp_path / "lock")

  def try_lock():
    with open(lock, "a") as f:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        return False
      fcntl.flock(f, fcntl.LOCK_UN)
      return True

  with timing.exclusive(lock):
    assert not try_lock()
  assert try_lock()
  with timing.exclusive(None):  # no lock: a no-op
    assert try_lock()


def test_fixed_and_per_call_split_recovers_a_line_and_refuses_one_call_count():
  # 0.7 ms per execution + 1.3 ms per call, exactly: the least-squares line returns both.
  fixed, per_call = timing.fit_fixed_and_per_call([2, 3, 5, 10], [0.7e-3 + 1.3e-3 * c for c in (2, 3, 5, 10)])
  assert fixed == pytest.approx(0.7e-3, abs=1e-12) and per_call == pytest.approx(1.3e-3, rel=1e-9)
  # Noisy points: the same as numpy's least squares, by its normal equations.
  calls, seconds = [1, 2, 5, 10], [2.1e-3, 3.2e-3, 7.0e-3, 13.9e-3]
  fixed, per_call = timing.fit_fixed_and_per_call(calls, seconds)
  n, sx, sy = len(calls), sum(calls), sum(seconds)
  sxx, sxy = sum(c * c for c in calls), sum(c * s for c, s in zip(calls, seconds))
  assert per_call == pytest.approx((n * sxy - sx * sy) / (n * sxx - sx * sx))
  assert fixed == pytest.approx((sy - per_call * sx) / n)
  with pytest.raises(ValueError, match="distinct call counts"):
    timing.fit_fixed_and_per_call([3, 3], [1e-3, 2e-3])
  with pytest.raises(ValueError, match="distinct call counts"):
    timing.fit_fixed_and_per_call([1, 2, 3], [1e-3, 2e-3])
