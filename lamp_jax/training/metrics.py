"""Training metrics: JSON lines + TensorBoard (tensorboardX) + optional Weights & Biases; process 0 only.

``<workdir>/metrics.jsonl`` holds one JSON object per logged step (``{"step": ..., "split": "train", ...}``),
the source of the loss-curve plots and of ``python -m lamp_jax.compare``.

Resume: a run killed after its last checkpoint replays the steps after it. ``MetricsWriter.start(step)`` (called
by the trainer with the step it starts from) first drops the rows of every later step from ``metrics.jsonl``
(rewritten atomically: a temporary file renamed over it), so the replayed steps replace their rows instead of
duplicating them; a line cut off by a kill mid-write is dropped too. TensorBoard event files are append-only: the
writer reopens with ``purge_step=step + 1``, which tells TensorBoard to hide the older events of the replayed steps,
but the files still hold them (other readers of the raw events see duplicates). Weights & Biases keeps whatever it
received first for a step.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping

import numpy as np


class MetricsWriteError(OSError):
  """metrics.jsonl could not be written (e.g. a full disk); the rows written so far are kept."""


def _to_float(v: Any) -> float | None:
  try:
    f = float(np.asarray(v))
  except (TypeError, ValueError):
    return None
  return f


class MetricsWriter:
  """Writes scalar dicts to JSONL, TensorBoard and (optionally) wandb. No-op on processes other than 0."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True, wandb_project: str = "",
               config_json: dict | None = None):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb_dir = os.path.join(workdir, "tensorboard") if tensorboard else None
    self._tb = None
    self._wandb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if wandb_project:
      try:
        import wandb
      except ImportError as e:
        raise ImportError("config field logging.wandb_project is set but wandb is not installed "
                          "(pip install lamp_jax[wandb])") from e
      self._wandb = wandb.init(project=wandb_project, dir=workdir, config=config_json, resume="allow",
                               id=os.path.basename(os.path.abspath(workdir)))

  def start(self, step: int) -> int:
    """Starts (or resumes) logging at ``step``: rows of later steps are dropped from metrics.jsonl (they are about
    to be replayed) and TensorBoard is told to purge them. Returns the number of rows dropped."""
    if not self.enabled:
      return 0
    dropped = truncate_after(self.path, step)
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._tb_dir is not None:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(self._tb_dir, purge_step=int(step) + 1)
    return dropped

  def write(self, step: int, scalars: Mapping[str, Any], split: str = "train") -> None:
    if not self.enabled:
      return
    if self._tb is None and self._tb_dir is not None:  # write() without start(): a fresh log
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(self._tb_dir)
    clean = {}
    for k, v in scalars.items():
      f = _to_float(v)
      if f is not None:
        clean[k] = f if math.isfinite(f) else str(f)
    try:
      with open(self.path, "a") as fh:
        fh.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
    except OSError as e:
      raise MetricsWriteError(e.errno, f"{self.path} could not be written at step {step}: {e.strerror or e} (a "
                              "cut-off last line is dropped when the run resumes)") from e
    if self._tb is not None:
      for k, v in clean.items():
        if isinstance(v, float):
          self._tb.add_scalar(f"{split}/{k}", v, int(step))
    if self._wandb is not None:
      self._wandb.log({f"{split}/{k}": v for k, v in clean.items()}, step=int(step))

  def flush(self) -> None:
    """Flushes TensorBoard (best effort: a failure is logged; metrics.jsonl is the record)."""
    if self._tb is not None:
      try:
        self._tb.flush()
      except OSError as e:
        logging.warning("TensorBoard events in %s could not be flushed: %s", self._tb_dir, e)

  def close(self) -> None:
    if self._tb is not None:
      try:
        self._tb.close()
      except OSError as e:
        logging.warning("TensorBoard events in %s could not be closed: %s", self._tb_dir, e)
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def _parse_lines(path: str) -> list[dict]:
  """The records of a metrics.jsonl, skipping (with a warning) lines that are not JSON objects: the last line of
  a file whose writer was killed mid-write."""
  out = []
  with open(path) as fh:
    for number, line in enumerate(fh, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None
      if not isinstance(record, dict) or "step" not in record:
        logging.warning("%s line %d is not a metrics record (cut off by a kill?): skipped", path, number)
        continue
      out.append(record)
  return out


def truncate_after(path: str, step: int) -> int:
  """Drops the records of steps > ``step`` (and unreadable lines) from the metrics.jsonl at ``path``, atomically.
  Returns the number of lines dropped."""
  if not os.path.exists(path):
    return 0
  with open(path) as fh:
    total = sum(1 for line in fh if line.strip())
  keep = [r for r in _parse_lines(path) if int(r["step"]) <= int(step)]
  if len(keep) == total:
    return 0
  tmp = path + ".tmp"
  with open(tmp, "w") as fh:
    fh.writelines(json.dumps(r) + "\n" for r in keep)
    fh.flush()
    os.fsync(fh.fileno())
  os.replace(tmp, path)
  return total - len(keep)


def read_jsonl(path: str) -> list[dict]:
  """The records of a metrics.jsonl, one per (step, split) in step order: when a step was logged twice (a file
  written before resumes truncated it) the later record wins."""
  if not os.path.exists(path):
    return []
  latest = {}
  for record in _parse_lines(path):
    latest[(int(record["step"]), str(record.get("split", "train")))] = record
  return [latest[k] for k in sorted(latest, key=lambda k: (k[0], k[1] != "train", k[1]))]
