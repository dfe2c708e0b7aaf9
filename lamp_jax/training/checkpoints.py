"""Orbax checkpoints of a training run: state + JSON items (run position, config, normalisation stats, checksums).

Layout: ``<workdir>/checkpoints/<step>/{state, meta, config, norm_stats, integrity}``.
  state       TrainState (params, optimizer state, EMA, step, RNG key), saved sharded and asynchronously
  meta        {'step', 'stage_index', 'stage_name', 'data': {...position / rule...}, 'integrity': 1} (JSON)
  config      the full run config (JSON): what ``CheckpointPolicy`` rebuilds the model from
  norm_stats  the dataset normalisation statistics (JSON) or {} when the data has none
  integrity   per-array checksum, shape, dtype and non-finite count of the state (``training/integrity.py``)

Orbax writes each step into a temporary directory and renames it when complete (atomic), so killing the
process at any moment leaves either the previous complete checkpoint or the new one; ``max_to_keep`` keeps N.
The checksums are computed on the devices before the asynchronous save starts; a state with a NaN / inf is
never written (``NonFiniteStateError``).

Every restore is verified: unreadable items, missing / truncated array files, an array whose bytes no longer
match its checksum, or a non-finite value raise ``CheckpointCorruptError`` naming the step and each array.
Checkpoints written before the checksums existed (no 'integrity' in meta) are checked for finiteness only.
The trainer then falls back to the newest intact step and moves the corrupted ones aside with ``quarantine``
(to ``<workdir>/corrupted_checkpoints/<step>``, with a REASON.txt): nothing is deleted.

A save that fails (a full disk, a file system error), synchronously or in orbax's background thread, raises
``CheckpointWriteError`` naming the step and the newest complete checkpoint, which stays intact; the incomplete
step is left in orbax's temporary directory and removed at the next start. orbax's asyncio tasks log every
failed array write once more as "Task exception was never retrieved"; those duplicates are dropped from the log.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from lamp_jax.training import integrity
from lamp_jax.training import optim

STATE, META, CONFIG, NORM_STATS, INTEGRITY = "state", "meta", "config", "norm_stats", "integrity"
QUARANTINE_DIR = "corrupted_checkpoints"
MAX_LISTED = 12  # problems listed in one error message

log = logging.getLogger(__name__)


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class CheckpointCorruptError(RuntimeError):
  """A checkpoint step that cannot be trusted: ``problems`` names each unreadable item or bad array."""

  def __init__(self, directory: str, step: int, problems: list[str]):
    self.directory, self.step, self.problems = directory, int(step), list(problems)
    listed = self.problems[:MAX_LISTED]
    more = len(self.problems) - len(listed)
    super().__init__(f"checkpoint step {step} in {directory} is corrupted or incomplete: "
                     + "; ".join(listed) + (f"; ... and {more} more" if more > 0 else ""))


class NoIntactCheckpointError(RuntimeError):
  """Every checkpoint step of a directory is corrupted (nothing is moved or trained on)."""


class NonFiniteStateError(ValueError):
  """A state with NaN / inf values was about to be saved."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written; the newest complete one is intact."""


class _DropOrbaxWriteTaskErrors(logging.Filter):
  """asyncio logs each failed array write of an orbax save as an unretrieved task exception (hundreds of
  tracebacks for one full disk); ``CheckpointWriteError`` reports the failure once."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Task exception was never retrieved") and "orbax" in message)


logging.getLogger("asyncio").addFilter(_DropOrbaxWriteTaskErrors())


def describe_exception(e: BaseException, limit: int = 400) -> str:
  """'Type: message' on one line, at most ``limit`` characters (the middle of a longer one is cut); orbax's
  advice to restore non-strictly (which would hide the problem) is removed."""
  text = " ".join(str(e).split())
  text = text.split(" See full TensorStore details")[0]  # a repr of the whole spec follows
  text = re.sub(r"[^.;]*\bstrict\s*=\s*False\b[^.;]*[.;]?", "", text).strip()
  text = f"{type(e).__name__}: {text}" if text else type(e).__name__
  if len(text) <= limit:
    return text
  half = (limit - 5) // 2  # keep both ends: the operation at the start, the OS reason at the end
  return f"{text[:half]} ... {text[-half:]}"


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` for the trainer and the policy loader."""

  def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=(STATE, META, CONFIG, NORM_STATS, INTEGRITY))
    self._pending: int | None = None  # the step an asynchronous save is writing

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, config_json: dict, norm_stats: dict | None) -> None:
    """Checksums the state on its devices, then starts an asynchronous save (returns once the device arrays are
    copied). A state holding NaN / inf raises ``NonFiniteStateError`` and nothing is written."""
    records = integrity.records(state)
    bad = integrity.nonfinite_arrays(records)
    if bad:
      raise NonFiniteStateError(f"refusing to write checkpoint step {step} in {self.directory}: the state has "
                                f"non-finite values ({'; '.join(bad[:MAX_LISTED])})")
    try:
      self.manager.save(int(step), args=ocp.args.Composite(**{
          STATE: ocp.args.StandardSave(state),
          META: ocp.args.JsonSave(dict(meta, integrity=integrity.FORMAT)),
          CONFIG: ocp.args.JsonSave(config_json),
          NORM_STATS: ocp.args.JsonSave(norm_stats or {}),
          INTEGRITY: ocp.args.JsonSave(integrity.to_json(records)),
      }), force=True)
    except Exception as e:  # pylint: disable=broad-except  (this save, or the previous one in the background)
      raise self._write_error(e, int(step)) from e
    self._pending = int(step)

  def _write_error(self, e: BaseException, step: int | None) -> CheckpointWriteError:
    """The error of a failed save: the step whose write failed (the pending asynchronous one when it never
    completed, else ``step``) and the newest complete checkpoint."""
    pending, self._pending = self._pending, None
    try:
      self.manager.wait_until_finished()  # let a pending save settle (it may have completed after all)
    except Exception:  # pylint: disable=broad-except
      pass
    try:
      self.manager.reload()
      steps, latest = self.all_steps(), self.manager.latest_step()
    except Exception:  # pylint: disable=broad-except
      steps, latest = [], None
    failed = pending if pending is not None and (step is None or pending not in steps) else step
    kept = (f"the newest complete checkpoint is step {latest} (intact)" if latest is not None
            else "there is no complete checkpoint yet")
    root = e
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
      root = root.__cause__ or root.__context__
    why = describe_exception(e) if root is e else f"{describe_exception(e, 200)}, caused by {describe_exception(root)}"
    return CheckpointWriteError(
        f"checkpoint step {failed} could not be written to {self.directory} ({why}); {kept}: "
        "free space or fix the file system, then rerun the same command to resume")

  def _corrupt(self, step: int, problems: list[str]) -> CheckpointCorruptError:
    return CheckpointCorruptError(self.directory, step, problems)

  def _require_items(self, step: int, items: tuple[str, ...]) -> None:
    missing = [i for i in items if not os.path.isdir(os.path.join(self.directory, str(step), i))]
    if missing:
      raise self._corrupt(step, [f"item {i} is missing (no directory {os.path.join(str(step), i)})"
                                 for i in missing])

  def restore_json(self, step: int | None = None) -> tuple[dict, dict, dict]:
    """(meta, config, norm_stats) of ``step`` (default latest) without touching the arrays; an unreadable item
    raises ``CheckpointCorruptError``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    self._require_items(step, (META, CONFIG, NORM_STATS))
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**{
          META: ocp.args.JsonRestore(), CONFIG: ocp.args.JsonRestore(), NORM_STATS: ocp.args.JsonRestore()}))
      meta, config, norm_stats = out[META], out[CONFIG], out[NORM_STATS]
    except Exception as e:  # pylint: disable=broad-except  (any failure to read it is the checkpoint's)
      raise self._corrupt(step, [f"items meta / config / norm_stats unreadable ({describe_exception(e)})"]) from e
    for name, item in ((META, meta), (CONFIG, config), (NORM_STATS, norm_stats)):
      if not isinstance(item, dict):
        raise self._corrupt(step, [f"item {name} is {type(item).__name__}, not a JSON object"])
    return meta, config, norm_stats

  def integrity_records(self, step: int, meta: dict) -> dict[str, integrity.ArrayRecord] | None:
    """The checksum records of ``step``; None for a checkpoint written before checksums existed."""
    if not meta.get(INTEGRITY):
      return None
    self._require_items(step, (INTEGRITY,))
    try:
      item = self.manager.restore(step, args=ocp.args.Composite(**{INTEGRITY: ocp.args.JsonRestore()}))[INTEGRITY]
      return integrity.from_json(item)
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, [f"item {INTEGRITY} unreadable ({describe_exception(e)})"]) from e

  def state_layout(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """{'/'-joined path: (shape, dtype)} of every array in ``step``'s state item, from orbax's metadata (no array
    is read): what ``checkpoint_compat`` compares a model against."""
    self._require_items(step, (STATE,))
    path = epath.Path(os.path.join(self.directory, str(step), STATE))
    try:
      tree = ocp.PyTreeCheckpointHandler().metadata(path).tree
      flat = jax.tree_util.tree_flatten_with_path(tree)[0]
      return {optim.param_path(p): (tuple(int(d) for d in x.shape), str(x.dtype)) for p, x in flat}
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupt(step, [f"item {STATE} unreadable ({describe_exception(e)})"]) from e

  def _verify(self, step: int, tree: Any, records: dict | None, prefix: str) -> None:
    actual = integrity.records(tree)
    if records is None:
      problems = [prefix + p for p in integrity.nonfinite_arrays(actual)]
      if not problems:
        log.warning("checkpoint step %d in %s has no checksums (written before they existed): only checked "
                    "for non-finite values", step, self.directory)
    else:
      problems = integrity.compare(records, actual, prefix=prefix)
    if problems:
      raise self._corrupt(step, problems)

  def restore_state(self, step: int, abstract_state: Any) -> Any:
    """Restores the state into the shardings carried by ``abstract_state`` (ShapeDtypeStructs) and verifies it
    against the step's checksums (``CheckpointCorruptError`` naming every bad array)."""
    meta, _, _ = self.restore_json(step)
    records = self.integrity_records(step, meta)
    self._require_items(step, (STATE,))
    state, error = None, None
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)}))
      state = out[STATE]
    except Exception as e:  # pylint: disable=broad-except
      error = e
    self._agree_readable(step, error, f"item {STATE}")
    self._verify(step, state, records, prefix="")
    return state

  def _agree_readable(self, step: int, error: BaseException | None, what: str) -> None:
    """Raises ``CheckpointCorruptError`` when the read failed here or, with several processes (each reads its own
    shards), on any of them: all processes then take the same fallback, before the verification's collectives."""
    ok = error is None
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      ok = bool(np.all(multihost_utils.process_allgather(np.array([ok]))))
    if not ok:
      why = describe_exception(error) if error is not None else "unreadable on another process"
      raise self._corrupt(step, [f"{what} unreadable ({why})"]) from error

  def restore_params(self, step: int, abstract_params: Any, key: str = "params") -> Any:
    """Restores only ``state.<key>`` ('params' or 'ema_params') via a partial restore of the state item, verified
    against the step's checksums of those arrays."""
    meta, _, _ = self.restore_json(step)
    records = self.integrity_records(step, meta)
    self._require_items(step, (STATE,))
    handler = ocp.PyTreeCheckpointer()
    path = os.path.join(self.directory, str(step), STATE)
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=getattr(x, "sharding", None))
                                if getattr(x, "sharding", None) is not None else ocp.RestoreArgs(),
                                abstract_params)
    tree, error = None, None
    try:
      tree = handler.restore(path, args=ocp.args.PyTreeRestore(
          item={key: abstract_params}, restore_args={key: restore_args}, partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      error = e
    self._agree_readable(step, error, f"{key} of item {STATE}")
    self._verify(step, tree[key], records, prefix=f"{key}/")
    return tree[key]

  def quarantine(self, error: CheckpointCorruptError) -> str:
    """Moves a corrupted step out of the checkpoint directory (so the run can write that step again) into
    ``<parent>/corrupted_checkpoints/<step>[-n]`` with a REASON.txt. Returns the new path."""
    source = os.path.join(self.directory, str(error.step))
    root = os.path.join(os.path.dirname(self.directory), QUARANTINE_DIR)
    os.makedirs(root, exist_ok=True)
    target, n = os.path.join(root, str(error.step)), 0
    while os.path.exists(target):
      n += 1
      target = os.path.join(root, f"{error.step}-{n}")
    os.rename(source, target)
    with open(os.path.join(target, "REASON.txt"), "w") as fh:
      fh.write(f"moved out of {self.directory}: " + "\n".join([str(error)] + error.problems) + "\n")
    self.manager.reload()
    return target

  def wait(self) -> None:
    """Waits for the asynchronous save; its failure raises ``CheckpointWriteError``."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(e, None) from e
    self._pending = None

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
