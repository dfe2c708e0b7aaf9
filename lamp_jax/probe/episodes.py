"""Probe rows by episode: repeats by frame identity, per-episode thinning, rows per episode (numpy only).

A row's identity is the frame it was encoded from: its episode key (the pipeline's ``episode_key``, '<TFRecord file
basename>:<record index in the file>', ``data.frame_ids``) and its step index t in that episode. The loader
(``lam_latents.encode_batches``) encodes one view and one future offset per call, so within a call
(episode_key, step_index) identifies the pair (o_t, o_{t+k}) of that view and offset. A row whose identity
occurred earlier is a repeat even when its pixels (and so its latent) differ, as under image augmentation.

Thinning keeps at most N rows per episode, evenly spaced in time: the episode's rows sorted by step index are cut
into N equal parts and the middle row of each part is kept (no seed: the same rows give the same choice).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_keys(episode_key: Any, field: str = "episode_key") -> np.ndarray:
  """Episode keys (bytes or str, shape [N]) as a numpy str array [N]; bytes are decoded as UTF-8."""
  keys = np.asarray(episode_key)
  if keys.ndim != 1:
    raise ValueError(f"{field} must have shape [N]; got {keys.shape}")
  return np.array([k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in keys.tolist()], dtype=str)


def _identity_columns(episode_key: np.ndarray, step_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  keys = as_keys(episode_key)
  steps = np.asarray(step_index)
  if steps.shape != keys.shape:
    raise ValueError(f"step_index has shape {steps.shape}, episode_key {keys.shape}: one of each per row")
  return keys, steps.astype(np.int64)


def first_identities(episode_key: np.ndarray, step_index: np.ndarray) -> np.ndarray:
  """Indices (ascending) of the rows whose (episode_key, step_index) did not occur in an earlier row.

  Args:
    episode_key: bytes or str [N].
    step_index: int [N].

  Returns:
    int64[M], M <= N.
  """
  keys, steps = _identity_columns(episode_key, step_index)
  seen: set[tuple[str, int]] = set()
  keep = []
  for i, identity in enumerate(zip(keys.tolist(), steps.tolist())):
    if identity not in seen:
      seen.add(identity)
      keep.append(i)
  return np.asarray(keep, np.int64)


def thin_per_episode(episode_key: np.ndarray, step_index: np.ndarray, max_rows: int) -> np.ndarray:
  """Indices (ascending) of at most ``max_rows`` rows per episode, evenly spaced in time (module docstring).

  Args:
    episode_key: bytes or str [N].
    step_index: int [N] (rows of one episode with the same step keep their order).
    max_rows: rows kept per episode; 0 keeps every row.

  Returns:
    int64[M], M <= N.
  """
  keys, steps = _identity_columns(episode_key, step_index)
  if int(max_rows) < 0:
    raise ValueError(f"max_rows_per_episode={max_rows}: expected >= 0 (0: no limit)")
  if int(max_rows) == 0:
    return np.arange(keys.shape[0], dtype=np.int64)
  n = int(max_rows)
  _, episode = np.unique(keys, return_inverse=True)
  order = np.lexsort((steps, episode))  # by episode, then by step (stable: equal steps keep their order)
  starts = np.flatnonzero(np.r_[True, episode[order][1:] != episode[order][:-1]]) if order.size else order
  keep = []
  for start, end in zip(starts.tolist(), np.r_[starts[1:], order.size].tolist()):
    rows, m = order[start:end], end - start
    if m <= n:
      keep.append(rows)
    else:  # the middle row of each of n equal parts; distinct because m / n > 1
      keep.append(rows[((np.arange(n) + 0.5) * m / n).astype(np.int64)])
  return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros((0,), np.int64)


def episode_index(episode_key: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
  """(int32[N] index of each row's episode, the episode keys in order of first appearance)."""
  keys = as_keys(episode_key)
  order: dict[str, int] = {}
  index = np.asarray([order.setdefault(k, len(order)) for k in keys.tolist()], np.int32).reshape(keys.shape)
  return index, tuple(order)


def rows_per_episode(episode_key: np.ndarray) -> dict[str, Any]:
  """{'episodes': distinct episodes, 'mean': rows per episode, 'max': the most rows of one episode} (0s when N = 0)."""
  _, counts = np.unique(as_keys(episode_key), return_counts=True)
  if counts.size == 0:
    return {"episodes": 0, "mean": 0.0, "max": 0}
  return {"episodes": int(counts.size), "mean": float(counts.mean()), "max": int(counts.max())}
