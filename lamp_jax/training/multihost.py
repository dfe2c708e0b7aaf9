"""Multi-host helpers: start the JAX distributed runtime and check that every host runs the same config.

On a TPU pod slice every worker VM runs the same ``python -m lamp_jax.train ...`` command (see ``launch/``).
``initialize_distributed`` starts ``jax.distributed`` once per process:
  * explicit arguments (``coordinator_address``, ``num_processes``, ``process_id``) — two processes on
    localhost in tests, or any cluster without auto-detection;
  * otherwise, when a supported cluster is detected (Cloud TPU VM slices through the GCE metadata server, GKE,
    SLURM, Open MPI) or ``JAX_COORDINATOR_ADDRESS`` is set, ``jax.distributed.initialize()`` with no arguments;
  * otherwise (a laptop, one CPU process) nothing happens.

``check_same_config_across_hosts`` all-gathers every process's serialized config and raises a ``ValueError``
naming the differing fields and processes, so a host launched with a stale checkout or a different
``--config.x=`` override fails at start instead of silently diverging (or hanging in a collective).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import jax
import numpy as np

# Environment variables that mean "this process is one of several" (cluster schedulers JAX auto-detects).
_CLUSTER_ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                     "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri")


def _on_cloud_tpu_vm() -> bool:
  """True on a Cloud TPU VM (TPU chips attached), checked without initialising any JAX backend."""
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    num_chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except Exception:  # noqa: BLE001 - layout of a future jax, or no PCI sysfs: treat as not a TPU VM.
    return False
  return num_chips > 0


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Starts ``jax.distributed`` when running as one of several processes. Returns True if it did.

  Must run before any other JAX call that touches devices. Calling it twice is harmless.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("multi-process flags: coordinator_address, num_processes and process_id must be given "
                       f"together, got {explicit}")
    if num_processes == 1:
      return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=int(num_processes),
                               process_id=int(process_id))
    return True
  if any(os.environ.get(k) for k in _CLUSTER_ENV_VARS) or _on_cloud_tpu_vm():
    jax.distributed.initialize()
    return True
  return False


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out
  return {prefix: tree}


def config_to_json(config: Any) -> str:
  """Canonical JSON of an ``ml_collections.ConfigDict`` (or dict): sorted keys, repr for non-JSON values."""
  as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.dumps(as_dict, sort_keys=True, default=repr)


def diff_configs(a: str, b: str) -> list[str]:
  """Dotted names of the fields whose values differ between two config JSON strings (or exist in one only)."""
  fa, fb = _flatten(json.loads(a)), _flatten(json.loads(b))
  return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<missing>") != fb.get(k, "<missing>"))


def check_same_config_across_hosts(config: Any, ignore: Iterable[str] = ()) -> None:
  """Raises ValueError on every process if any process's config differs from process 0's.

  Args:
    config: this process's final config (after command-line overrides).
    ignore: dotted field names allowed to differ between hosts (none by default).
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  ignore = set(ignore)
  as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  flat = {k: v for k, v in _flatten(json.loads(json.dumps(as_dict, default=repr))).items() if k not in ignore}
  payload = np.frombuffer(json.dumps(flat, sort_keys=True).encode(), dtype=np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(payload.size))).reshape(-1)
  padded = np.zeros((int(lengths.max()),), np.uint8)
  padded[:payload.size] = payload
  gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
  texts = [bytes(gathered[i, :int(n)]).decode() for i, n in enumerate(lengths)]
  problems = []
  for i, text in enumerate(texts[1:], start=1):
    fields = diff_configs(texts[0], text)
    if fields:
      ref, other = json.loads(texts[0]), json.loads(text)
      shown = ", ".join(f"{f}: {ref.get(f, '<missing>')!r} vs {other.get(f, '<missing>')!r}" for f in fields[:8])
      more = f" (+{len(fields) - 8} more)" if len(fields) > 8 else ""
      problems.append(f"process {i} differs from process 0 in config fields {shown}{more}")
  if problems:
    raise ValueError("hosts disagree on the config (every host must run the same command and checkout):\n  "
                     + "\n  ".join(problems))
