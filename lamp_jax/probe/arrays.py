"""Input checks shared by the probes: per-sample flattening, row pairing, z-scoring (numpy, float64)."""

from __future__ import annotations

import numpy as np


def flatten_latents(x: np.ndarray, name: str = "z") -> np.ndarray:
  """float[N, ...] -> float64[N, D]: every per-sample axis (codes, code dims) flattened into one; float[N] -> [N, 1]."""
  x = np.asarray(x, np.float64)
  if x.ndim < 1 or x.shape[0] == 0:
    raise ValueError(f"{name}: expected an array [N, ...] with N > 0, got shape {x.shape}")
  return x.reshape(x.shape[0], -1)


def paired_inputs(x: np.ndarray, y: np.ndarray, names: tuple[str, str] = ("z", "a")) -> tuple[np.ndarray, ...]:
  """float64[N, Dx], float64[N, Dy] from two row-aligned arrays (flattened per row); errors use ``names``."""
  x, y = flatten_latents(x, names[0]), flatten_latents(y, names[1])
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"{names[0]} has {x.shape[0]} samples but {names[1]} has {y.shape[0]}: they must be paired "
                     "row by row")
  return x, y


def standardize(x: np.ndarray, name: str) -> np.ndarray:
  """Per-dimension z-score of float[N, D] on its own statistics; constant dimensions become 0 (not NaN).

  Non-finite entries are an error naming ``name`` and the first bad index.
  """
  if not np.all(np.isfinite(x)):
    bad = np.argwhere(~np.isfinite(x))[0]
    raise ValueError(f"{name}: non-finite value at index {tuple(int(i) for i in bad)}")
  std = x.std(0)
  return (x - x.mean(0)) / np.where(std > 0, std, 1.0)
