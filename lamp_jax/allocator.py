"""Run the CPU entry points under tcmalloc when the system has it (as MaxText and TPU VM images do).

Why: XLA:CPU allocates its temporaries afresh on every execution. Under glibc malloc, blocks of this size are
mmap'ed and unmapped each time, so every train step page-faults its working set in again. Measured on the
2-core box (60 steps of configs/sim.py stage 1):

  - glibc malloc: 18 M minor faults and 38 s of kernel time;
  - tcmalloc (libtcmalloc_minimal.so.4): 1.3 M faults and 5 s of kernel time, 1.75x the steps per second.

glibc tunables (mmap/trim thresholds, hugetlb) recover only part of that.

:func:`reexec_with_tcmalloc` re-executes the current command once, with ``LD_PRELOAD`` naming tcmalloc. This
happens only when a tcmalloc library is installed (Debian/Ubuntu: ``apt install libtcmalloc-minimal4``;
``.ci/run`` installs it) and it is not already loaded. ``LAMP_JAX_ALLOCATOR=system`` keeps the system
allocator. Without tcmalloc everything works as before, only slower.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import sys

ENV_SWITCH = "LAMP_JAX_ALLOCATOR"  # 'tcmalloc' (default: use it if installed) | 'system'
_CANDIDATES = ("tcmalloc_minimal", "tcmalloc")


def find_tcmalloc() -> str | None:
  """The soname of an installed tcmalloc (e.g. ``libtcmalloc_minimal.so.4``), or None."""
  for name in _CANDIDATES:
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def tcmalloc_loaded(env=None) -> bool:
  return "tcmalloc" in (env if env is not None else os.environ).get("LD_PRELOAD", "")


# glibc's mallopt parameters (<malloc.h>) and the values glibc's own dynamic rule ends at on 64-bit Linux: blocks
# up to 32 MiB come from the heap and are reused; the heap top is trimmed above twice that.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
GLIBC_MMAP_THRESHOLD = 32 << 20
GLIBC_TRIM_THRESHOLD = 2 * GLIBC_MMAP_THRESHOLD


def undo_tensorflow_malloc_trim() -> bool:
  """Give glibc malloc back its large-block reuse after TensorFlow took it away. Returns True if it was set.

  The first iterator over a ``tf.data.Dataset.from_generator`` (our episode reader, ``data/rlds.py``) sets glibc's
  ``M_TRIM_THRESHOLD`` to 128 KiB (log line 'Memory patch applied'). Setting any threshold switches off glibc's
  dynamic mmap threshold, so from then on every block of 128 KiB or more — each decoded or augmented image (a 224²
  RGB frame is 147 KiB) — is mmap'ed, page-faulted in and unmapped again. Measured on the input-pipeline bench
  under glibc malloc: 870 minor page faults per frame and 4.6-4.9 CPU-s per 1000 frames; after this call 6 faults
  and 1.9-2.0 CPU-s (interleaved runs). This sets the thresholds to where glibc's dynamic rule would have taken
  them (``GLIBC_MMAP_THRESHOLD``, ``GLIBC_TRIM_THRESHOLD``). A no-op under tcmalloc (which ignores mallopt) and
  off Linux / glibc."""
  mallopt = _glibc_mallopt()
  if mallopt is None:
    return False
  return bool(mallopt(_M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                  GLIBC_TRIM_THRESHOLD))


@functools.lru_cache(maxsize=1)
def _glibc_mallopt():
  """glibc's ``mallopt`` (looked up once), or None under tcmalloc, off Linux or without it."""
  if not sys.platform.startswith("linux") or tcmalloc_loaded():
    return None
  library = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(library) if library else None
  except OSError:
    return None
  return getattr(libc, "mallopt", None)


def with_tcmalloc(env) -> dict | None:
  """A copy of ``env`` with tcmalloc added to ``LD_PRELOAD``, for a child process; None when there is nothing to
  do: tcmalloc already preloaded there, not installed, switched off with ``LAMP_JAX_ALLOCATOR=system`` (read from
  ``env``), or not Linux."""
  choice = env.get(ENV_SWITCH, "tcmalloc")
  if choice not in ("tcmalloc", "system"):
    raise ValueError(f"{ENV_SWITCH}={choice!r}; expected 'tcmalloc' or 'system'")
  if choice == "system" or not sys.platform.startswith("linux") or tcmalloc_loaded(env):
    return None
  library = find_tcmalloc()
  if library is None:
    return None
  env = dict(env)
  env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
  return env


def reexec_with_tcmalloc(module: str) -> None:
  """Replace this process by ``python -m <module> <same args>`` with tcmalloc preloaded, if useful and possible.

  Returns (doing nothing) when tcmalloc is already preloaded, not installed, switched off with
  ``LAMP_JAX_ALLOCATOR=system``, or on a platform other than Linux. Call it first thing in ``__main__``, before
  JAX starts threads."""
  env = with_tcmalloc(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
