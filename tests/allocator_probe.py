"""Entry point for tests/test_allocator.py: re-executes under tcmalloc like lamp_jax.train, then reports."""

import json
import os

from lamp_jax import allocator

if __name__ == "__main__":
  allocator.reexec_with_tcmalloc("tests.allocator_probe")
  with open("/proc/self/maps") as maps:
    mapped = "tcmalloc" in maps.read()
  print(json.dumps({"mapped": mapped, "ld_preload": os.environ.get("LD_PRELOAD", ""), "pid": os.getpid()}))
