"""Runs a run config depends on, trained once and cached: e.g. the VAE of a motion-image policy (``config.prerequisites``).

``config.prerequisites`` holds named entries (``prerequisite_entry``), each a complete run config of its own:

  config         the run config to train (any model library; ``python -m lamp_jax.train`` semantics: simulator
                 data generated when configured, stages, then the library's ``report`` written to report.json)
  init           the name of the ``config.init`` entry (``training/pretrained.py``) whose path becomes the finished
                 run's directory, so that its parameters load into this run (e.g. params['vae'])
  report_fields  ((dotted field of this run config, key of the prerequisite's report.json), ...): values measured
                 by the prerequisite written into this config before it trains (e.g. ('model.vae.scaling_factor',
                 'scaling_factor'): the latent scaling the VAE's report measured on the data)
  out_dir        where the run lives: '' = a shared cache entry keyed by a hash of ``config`` (every seed and
                 variant that depends on the same prerequisite reuses it: trained ONCE), relative paths are
                 relative to the dependent run's workdir

``python -m lamp_jax.train`` (``experiment.ensure_prerequisites``) trains a prerequisite that has no complete
report (resuming its checkpoints when interrupted) and then fills in the dependent config. Two processes training
the same prerequisite at once are not coordinated: run the first dependent run alone.
"""

from __future__ import annotations

import hashlib
import json
import os

import ml_collections

REPORT_FILE = "report.json"


def prerequisite_entry(config: ml_collections.ConfigDict, *, init: str, report_fields=(),
                       out_dir: str = "") -> ml_collections.ConfigDict:
  """One ``config.prerequisites`` entry (module docstring); ``report_fields``: pairs (config field, report key)."""
  pairs = tuple((str(field), str(key)) for field, key in report_fields)
  return ml_collections.ConfigDict(dict(config=config, init=init, report_fields=pairs, out_dir=out_dir))


def active(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{name: entry} of ``config.prerequisites`` (empty when the config has none); malformed entries raise naming
  the field."""
  entries = config.get("prerequisites", None)
  if not entries:
    return {}
  out = {}
  init = config.get("init", None) or {}
  for name, entry in entries.items():
    field = f"prerequisites.{name}"
    if not isinstance(entry, ml_collections.ConfigDict) or "config" not in entry or "init" not in entry:
      raise ValueError(f"config field {field} is not a prerequisite entry (lamp_jax.training.prerequisites."
                       "prerequisite_entry)")
    if entry.init and entry.init not in init:
      raise ValueError(f"config field {field}.init={entry.init!r} names no config.init entry (entries: "
                       f"{sorted(init)})")
    out[name] = entry
  return out


def config_hash(run_config: ml_collections.ConfigDict) -> str:
  """Key of a prerequisite's cache entry: its run config (dataset directories excluded: they are filled in after
  generation and follow from the sim_data settings, which are part of the key)."""
  payload = json.loads(run_config.to_json_best_effort(sort_keys=True))
  for entry in payload.get("data", {}).get("pipeline", {}).get("datasets", []) or []:
    if isinstance(entry, dict):
      entry.pop("data_dir", None)
  return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def run_dir(name: str, entry: ml_collections.ConfigDict, workdir: str) -> str:
  """The directory of a prerequisite's run (module docstring, ``out_dir``)."""
  if entry.get("out_dir", ""):
    out = str(entry.out_dir)
    return out if os.path.isabs(out) else os.path.join(os.path.abspath(workdir), out)
  root = os.environ.get("LAMP_JAX_CACHE", "") or os.path.join(os.path.expanduser("~"), ".cache", "lamp_jax")
  return os.path.join(root, "runs", f"{name}_{config_hash(entry.config)}")


def total_steps(run_config: ml_collections.ConfigDict) -> int:
  return int(sum(int(run_config.stages[s].steps) for s in run_config.stage_order))


def finished_report(directory: str, run_config: ml_collections.ConfigDict) -> dict | None:
  """The run's report.json when it is complete (written at the run's last step), else None."""
  path = os.path.join(directory, REPORT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as fh:
    report = json.load(fh)
  return report if int(report.get("step", -1)) == total_steps(run_config) else None


def apply(config: ml_collections.ConfigDict, name: str, entry: ml_collections.ConfigDict, directory: str,
          report: dict) -> None:
  """Writes a finished prerequisite into ``config``: its directory as the init entry's path, the report's values
  into ``report_fields``. A report without a requested key is an error naming both."""
  field = f"prerequisites.{name}"
  with config.unlocked():
    if entry.init:
      config.init[entry.init].path = directory
    for target, key in entry.report_fields:
      if key not in report:
        raise ValueError(f"config field {field}.report_fields: {os.path.join(directory, REPORT_FILE)} has no "
                         f"{key!r} for {target} (it has {sorted(report)})")
      parent = config
      parts = str(target).split(".")
      for part in parts[:-1]:
        if part not in parent:
          raise ValueError(f"config field {field}.report_fields: {target} is not a field of the run config")
        parent = parent[part]
      if parts[-1] not in parent:
        raise ValueError(f"config field {field}.report_fields: {target} is not a field of the run config")
      parent[parts[-1]] = type(parent[parts[-1]])(report[key]) if parent[parts[-1]] is not None else report[key]
