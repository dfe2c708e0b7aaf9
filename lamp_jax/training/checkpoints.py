"""Orbax checkpoints of a training run: state + JSON items (run position, config, normalisation stats).

Layout: ``<workdir>/checkpoints/<step>/{state, meta, config, norm_stats}``.
  state       TrainState (params, optimizer state, EMA, step, RNG key), saved sharded and asynchronously
  meta        {'step', 'stage_index', 'stage_name', 'data': {...position / rule...}} (JSON)
  config      the full run config (JSON): what ``CheckpointPolicy`` rebuilds the model from
  norm_stats  the dataset normalisation statistics (JSON) or {} when the data has none

Orbax writes each step into a temporary directory and renames it when complete (atomic), so killing the
process at any moment leaves either the previous complete checkpoint or the new one; ``max_to_keep`` keeps N.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

STATE, META, CONFIG, NORM_STATS = "state", "meta", "config", "norm_stats"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for the trainer and the policy loader."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=(STATE, META, CONFIG, NORM_STATS))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, config_json: dict, norm_stats: dict | None) -> None:
    """Starts an asynchronous save (returns once the device arrays are copied)."""
    self.manager.save(int(step), args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state),
        META: ocp.args.JsonSave(meta),
        CONFIG: ocp.args.JsonSave(config_json),
        NORM_STATS: ocp.args.JsonSave(norm_stats or {}),
    }), force=True)

  def restore_json(self, step: int | None = None) -> tuple[dict, dict, dict]:
    """(meta, config, norm_stats) of ``step`` (default latest) without touching the arrays."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self.manager.restore(step, args=ocp.args.Composite(**{
        META: ocp.args.JsonRestore(), CONFIG: ocp.args.JsonRestore(), NORM_STATS: ocp.args.JsonRestore()}))
    return out[META], out[CONFIG], out[NORM_STATS]

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    """Restores the state into the shardings carried by ``abstract_state`` (ShapeDtypeStructs)."""
    out = self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)}))
    return out[STATE]

  def restore_params(self, step: int, abstract_params: Any, key: str = "params") -> Any:
    """Restores only ``state.<key>`` ('params' or 'ema_params') via a partial restore of the state item."""
    handler = ocp.PyTreeCheckpointer()
    path = os.path.join(self.directory, str(step), STATE)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=getattr(x, "sharding", None))
                                if getattr(x, "sharding", None) is not None else ocp.RestoreArgs(),
                                abstract_params)
    tree = handler.restore(path, args=ocp.args.PyTreeRestore(
        item={key: abstract_params}, restore_args={key: restore_args}, partial_restore=True))
    return tree[key]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def config_to_json(config) -> dict:
  """A ConfigDict as plain JSON-able data (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def config_from_json(config_json: dict) -> ml_collections.ConfigDict:
  """The run config from its JSON copy in a checkpoint (lists of dicts, e.g. data.pipeline.datasets, become lists
  of ConfigDicts; other lists become tuples)."""
  def convert(x):
    if isinstance(x, dict):
      return ml_collections.ConfigDict({k: convert(v) for k, v in x.items()})
    if isinstance(x, list):
      return tuple(convert(v) for v in x) if not any(isinstance(v, dict) for v in x) else [convert(v) for v in x]
    return x

  return convert(config_json)
