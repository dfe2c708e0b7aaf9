"""Published facts about Cloud TPU generations, used by the ahead-of-time plan (``python -m lamp_jax.perf.aot``).

Sources (Google Cloud TPU documentation, "System architecture" pages, as of 2025):
  v4   https://cloud.google.com/tpu/docs/v4     32 GiB HBM2 per chip, 2 TensorCores per chip, 4 chips per host,
                                                275 TFLOP/s bf16 per chip, 3D torus.
  v5e  https://cloud.google.com/tpu/docs/v5e    16 GB HBM2 per chip, 1 TensorCore per chip, 197 TFLOP/s bf16;
                                                single-host VMs hold 1, 4 or 8 chips, multi-host slices use
                                                4-chip hosts (v5litepod-256 = 64 hosts); 2D torus, <= 256 chips.
  v5p  https://cloud.google.com/tpu/docs/v5p    95 GB HBM2e per chip, 2 TensorCores per chip (megacore),
                                                4 chips per host, 459 TFLOP/s bf16, 3D torus.
  v6e  https://cloud.google.com/tpu/docs/v6e    32 GB HBM per chip, 1 TensorCore per chip, 918 TFLOP/s bf16;
                                                single-host VMs hold 1, 4 or 8 chips, multi-host slices use
                                                4-chip hosts (v6e-256 = 64 hosts); 2D torus, <= 256 chips.

Units: Google's tables write "GB" for v5e / v5p / v6e and "GiB" for v4. HBM is built from power-of-two stacks and
the runtime's ``memory_stats()['bytes_limit']`` is reported in binary units, so we read every figure as GiB. The
runtime reserves a little of it, so the AOT plan also reports the headroom left and flags plans above
``SAFE_FRACTION`` of HBM. Measured with libtpu 0.0.52 on this project's AOT runs: the v5p compiler refuses
programs above 95.73 GiB per chip ("exceeds available HBM (95.73G)"), slightly above the 95 GiB used here.

Devices versus chips: ``jax.experimental.topologies.get_topology_desc`` returns one JAX device per chip for v5e,
v5p (megacore: ``device.num_cores == 2``) and v6e, but one device per TensorCore for v4 (``num_cores == 1``, two
devices per chip). ``hbm_bytes_per_device`` accounts for that.

Topology strings (``'v5p:4x4x2'``) give the chip grid; Cloud accelerator types name v4 / v5p slices by
TensorCores (``v5p-64`` = 32 chips = 4x4x2) and v5e / v6e slices by chips (``v5litepod-256`` = 16x16).
"""

from __future__ import annotations

import dataclasses
import math
import re

GIB = 2**30
# Fraction of HBM a plan may use before it is flagged as too tight (the runtime and collectives keep some).
SAFE_FRACTION = 0.95


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  """Per-chip facts of one TPU generation (see the module docstring for sources)."""

  name: str                      # topology prefix: 'v4', 'v5e', 'v5p', 'v6e'
  device_kinds: tuple[str, ...]  # ``jax.Device.device_kind`` strings of this generation
  hbm_gib_per_chip: float
  tensorcores_per_chip: int
  chips_per_host: int            # chips per VM in multi-host slices
  peak_bf16_tflops_per_chip: float
  accelerator_type_prefix: str   # gcloud accelerator type prefix
  accelerator_type_counts: str   # 'cores' or 'chips': what the number in the accelerator type counts
  runtime_version: str           # a TPU VM software version for ``gcloud compute tpus``
  source: str

  @property
  def hbm_bytes_per_chip(self) -> int:
    return int(self.hbm_gib_per_chip * GIB)


GENERATIONS: dict[str, TpuGeneration] = {
    "v4": TpuGeneration("v4", ("TPU v4",), 32.0, 2, 4, 275.0, "v4", "cores", "tpu-ubuntu2204-base",
                        "https://cloud.google.com/tpu/docs/v4"),
    "v5e": TpuGeneration("v5e", ("TPU v5 lite", "TPU v5e"), 16.0, 1, 4, 197.0, "v5litepod", "chips",
                         "v2-alpha-tpuv5-lite", "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": TpuGeneration("v5p", ("TPU v5", "TPU v5p"), 95.0, 2, 4, 459.0, "v5p", "cores", "v2-alpha-tpuv5",
                         "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": TpuGeneration("v6e", ("TPU v6 lite", "TPU v6e"), 32.0, 1, 4, 918.0, "v6e", "chips",
                         "v2-alpha-tpuv6e", "https://cloud.google.com/tpu/docs/v6e"),
}

_TOPOLOGY_RE = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)+)$")


def parse_topology(topology: str) -> tuple[TpuGeneration, tuple[int, ...]]:
  """``'v5p:4x4x2'`` -> (v5p facts, (4, 4, 2)). Raises ValueError naming the string on bad input."""
  m = _TOPOLOGY_RE.match(topology.strip())
  if not m:
    raise ValueError(f"--topology={topology!r}: expected '<generation>:<AxB[xC]>' with generation in "
                     f"{sorted(GENERATIONS)}, e.g. 'v5p:4x4x2' or 'v5e:16x16'")
  gen = GENERATIONS[m.group(1)]
  dims = tuple(int(d) for d in m.group(2).split("x"))
  if any(d <= 0 for d in dims):
    raise ValueError(f"--topology={topology!r}: every dimension must be positive")
  want = 3 if gen.name in ("v4", "v5p") else 2
  if len(dims) != want:
    raise ValueError(f"--topology={topology!r}: {gen.name} slices have {want}-D chip grids")
  return gen, dims


def num_chips(topology: str) -> int:
  return math.prod(parse_topology(topology)[1])


def accelerator_type(topology: str) -> str:
  """gcloud accelerator type of a topology: 'v5p:4x4x2' -> 'v5p-64', 'v5e:16x16' -> 'v5litepod-256'."""
  gen, dims = parse_topology(topology)
  chips = math.prod(dims)
  count = chips * gen.tensorcores_per_chip if gen.accelerator_type_counts == "cores" else chips
  return f"{gen.accelerator_type_prefix}-{count}"


def num_hosts(topology: str) -> int:
  gen, dims = parse_topology(topology)
  return max(1, math.prod(dims) // gen.chips_per_host)


def generation_of_device(device) -> TpuGeneration:
  """The generation of a (real or topology-description) TPU ``jax.Device``."""
  kind = device.device_kind
  for gen in GENERATIONS.values():
    if kind in gen.device_kinds:
      return gen
  raise ValueError(f"unknown TPU device kind {kind!r}; known: "
                   f"{[k for g in GENERATIONS.values() for k in g.device_kinds]}")


def devices_per_chip(device) -> int:
  """JAX devices per chip: 2 where each TensorCore is its own device (v4), else 1."""
  gen = generation_of_device(device)
  cores_per_device = int(getattr(device, "num_cores", gen.tensorcores_per_chip) or 1)
  return max(1, gen.tensorcores_per_chip // cores_per_device)


def hbm_bytes_per_device(device) -> int:
  """HBM one JAX device can address: the chip's HBM split over the TensorCores that form separate devices."""
  return generation_of_device(device).hbm_bytes_per_chip // devices_per_chip(device)
