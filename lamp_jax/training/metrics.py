"""Training metrics: JSON lines + TensorBoard (tensorboardX) + optional Weights & Biases; process 0 only.

``<workdir>/metrics.jsonl`` holds one JSON object per logged step (``{"step": ..., "split": "train", ...}``),
the source of the loss-curve plots and of ``python -m lamp_jax.compare``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np


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
    self._tb = None
    self._wandb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    if wandb_project:
      try:
        import wandb
      except ImportError as e:
        raise ImportError("config field logging.wandb_project is set but wandb is not installed "
                          "(pip install lamp_jax[wandb])") from e
      self._wandb = wandb.init(project=wandb_project, dir=workdir, config=config_json, resume="allow",
                               id=os.path.basename(os.path.abspath(workdir)))

  def write(self, step: int, scalars: Mapping[str, Any], split: str = "train") -> None:
    if not self.enabled:
      return
    clean = {}
    for k, v in scalars.items():
      f = _to_float(v)
      if f is not None:
        clean[k] = f if math.isfinite(f) else str(f)
    with open(self.path, "a") as fh:
      fh.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
    if self._tb is not None:
      for k, v in clean.items():
        if isinstance(v, float):
          self._tb.add_scalar(f"{split}/{k}", v, int(step))
    if self._wandb is not None:
      self._wandb.log({f"{split}/{k}": v for k, v in clean.items()}, step=int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def read_jsonl(path: str) -> list[dict]:
  """All records of a metrics.jsonl (later records for the same step and split win on resume)."""
  if not os.path.exists(path):
    return []
  with open(path) as fh:
    return [json.loads(line) for line in fh if line.strip()]
