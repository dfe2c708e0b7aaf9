"""lamp_jax.allocator: entry points re-execute themselves once under tcmalloc when it is installed."""

import json
import os
import subprocess
import sys

import pytest

from lamp_jax import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe(**env):
  env = {**{k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV_SWITCH)}, **env}
  proc = subprocess.run([sys.executable, "-m", "tests.allocator_probe", "--some-flag=1"], cwd=REPO, env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc


def test_reexec_loads_tcmalloc_when_installed_and_respects_the_switch():
  installed = allocator.find_tcmalloc()
  got, _ = _probe()
  assert got["mapped"] == (installed is not None)  # .ci/run installs libtcmalloc-minimal4: mapped there
  if installed:
    assert got["ld_preload"].startswith(installed)
  off, _ = _probe(**{allocator.ENV_SWITCH: "system"})
  assert not off["mapped"] and off["ld_preload"] == ""


def test_no_second_reexec_when_preloaded_and_bad_switch_is_an_error(monkeypatch):
  assert allocator.tcmalloc_loaded({"LD_PRELOAD": "/x/libtcmalloc_minimal.so.4:/y/other.so"})
  assert not allocator.tcmalloc_loaded({"LD_PRELOAD": "/y/other.so"})
  monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
  allocator.reexec_with_tcmalloc("tests.allocator_probe")  # returns: already loaded, no exec
  monkeypatch.setenv(allocator.ENV_SWITCH, "jemalloc")
  with pytest.raises(ValueError, match=allocator.ENV_SWITCH):
    allocator.reexec_with_tcmalloc("tests.allocator_probe")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc: Linux only")
def test_the_pipeline_keeps_image_buffers_in_the_glibc_heap():
  """TensorFlow's from_generator sets M_TRIM_THRESHOLD, which makes glibc mmap every 1 MiB buffer afresh (a page
  fault per 4 KiB page each time); the pipeline's iterator undoes it (allocator.undo_tensorflow_malloc_trim)."""
  env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
  faults = {}
  for mode in ("bare", "pipeline"):
    proc = subprocess.run([sys.executable, "-m", "tests.malloc_probe", mode], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    faults[mode] = json.loads(proc.stdout.strip().splitlines()[-1])["faults"]
  assert faults["bare"] > 50 * 200, faults  # 50 buffers x 256 pages, faulted in afresh each time
  assert faults["pipeline"] < 4 * 256, faults  # the first buffer's pages, then reused
