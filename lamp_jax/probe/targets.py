"""MVP-LAM's probing target: the net relative action over a latent's horizon, and (o_t, o_{t+k}) pair indices.

A latent action explains the transition o_t -> o_{t+k}. Its ground-truth counterpart is the net action over
the k steps in between, made comparable across models with different strides k:

  1. de-normalise the per-step actions a_t .. a_{t+k-1} (dataset z-score: a_raw = a · std + mean);
  2. net = (Σ_τ a_raw[τ, 0:6], a_raw[t+k-1, 6]): the six continuous end-effector deltas summed over the
     horizon (summing keeps the meaning of a cumulative command, averaging would rescale it with k), and the
     LAST gripper command (1 = open, as ``lamp_jax.specs``' action layout);
  3. re-normalise with horizon-aware statistics, the mean and std of the net actions themselves:
     (net − mean_k) / (std_k + ε).
The target stays 7-D for every k (flattening k steps would change the probe's size with k).

This repository normalises actions per dataset (``lamp_jax.data.normalization``, e.g. 'bounds' to [−1, 1]
with the gripper raw). For step 1 pass the statistics of a z-scored dataset, or de-normalise with that
module's inverse yourself and call ``net_action`` on raw actions.

Pairs: ``transition_pairs`` enumerates (t, t + k) within episodes stored back to back (flat arrays with
``episode_lengths``); a pair never crosses an episode end: with explicit ``starts`` such a start is an error
(``on_cross='error'``) or skipped and counted (``on_cross='skip'``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

CONTINUOUS_DIMS = 6  # (dx, dy, dz, droll, dpitch, dyaw); index 6 is the gripper
ACTION_DIM = 7
ON_CROSS = ("error", "skip")


def denormalize(actions: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """Undoes a z-score: ``actions · std + mean`` (float64[..., D]; mean, std float[D])."""
  actions = np.asarray(actions, np.float64)
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  if mean.shape != actions.shape[-1:] or std.shape != actions.shape[-1:]:
    raise ValueError(f"denormalize: actions [..., {actions.shape[-1]}] need mean and std of shape "
                     f"[{actions.shape[-1]}], got {mean.shape} and {std.shape}")
  return actions * std + mean


def net_action(raw_actions: np.ndarray) -> np.ndarray:
  """float[N, k, 7] raw per-step actions -> float64[N, 7]: continuous dims summed over k, last gripper."""
  raw_actions = np.asarray(raw_actions, np.float64)
  if raw_actions.ndim != 3 or raw_actions.shape[-1] != ACTION_DIM or raw_actions.shape[1] < 1:
    raise ValueError(f"net_action: expected actions float[N, k >= 1, {ACTION_DIM}], got {raw_actions.shape}")
  return np.concatenate([raw_actions[:, :, :CONTINUOUS_DIMS].sum(1), raw_actions[:, -1, CONTINUOUS_DIMS:]], -1)


@dataclasses.dataclass(frozen=True)
class HorizonStatistics:
  """Mean and std float64[7] of net actions over one horizon k (computed on the data being probed)."""

  horizon: int
  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def of(cls, net_actions: np.ndarray, horizon: int) -> "HorizonStatistics":
    net_actions = np.asarray(net_actions, np.float64)
    if net_actions.ndim != 2 or net_actions.shape[0] < 2:
      raise ValueError(f"horizon statistics need net actions float[N >= 2, D], got {net_actions.shape}")
    return cls(horizon=int(horizon), mean=net_actions.mean(0), std=net_actions.std(0))

  def normalize(self, net_actions: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """(net − mean) / (std + eps)."""
    return (np.asarray(net_actions, np.float64) - self.mean) / (self.std + eps)

  def varying_dims(self) -> np.ndarray:
    """int[D'] the dimensions that vary on the rows of the statistics. A constant one (e.g. the simulator's roll
    and pitch) carries no information and has no entropy (the neural estimators refuse it): probing targets
    leave it out."""
    return np.flatnonzero(self.std > 1e-12)


def net_relative_action_targets(actions: np.ndarray, mean: np.ndarray, std: np.ndarray,
                                stats: HorizonStatistics | None = None,
                                eps: float = 1e-8) -> tuple[np.ndarray, HorizonStatistics]:
  """MVP-LAM's target from z-scored per-step action windows (steps 1-3 of the module docstring).

  Args:
    actions: float[N, k, 7] normalised actions a_t .. a_{t+k-1} of each pair (see ``action_windows``).
    mean, std: float[7] the dataset statistics the actions were z-scored with.
    stats: horizon statistics to re-normalise with; None: computed from these net actions (pass the train
      split's to normalise another split the same way).
    eps: added to the horizon std.

  Returns:
    (targets float64[N, 7], the horizon statistics used).
  """
  net = net_action(denormalize(actions, mean, std))
  stats = stats if stats is not None else HorizonStatistics.of(net, np.asarray(actions).shape[1])
  return stats.normalize(net, eps), stats


@dataclasses.dataclass(frozen=True)
class TransitionPairs:
  """Flat row indices of (o_t, o_{t+k}) pairs.

  Attributes:
    first: int64[P] row of o_t.
    second: int64[P] row of o_{t+k} (same episode, = first + k).
    episode: int64[P] episode of each pair.
    stride: k.
    skipped: starts dropped because t + k is past their episode's last step.
  """

  first: np.ndarray
  second: np.ndarray
  episode: np.ndarray
  stride: int
  skipped: int


def transition_pairs(episode_lengths: np.ndarray, stride: int, starts: np.ndarray | None = None,
                     on_cross: str = "error") -> TransitionPairs:
  """(t, t + stride) pairs of rows of episodes stored back to back.

  Args:
    episode_lengths: int[E] steps per episode (episode e holds rows offset_e .. offset_e + len_e − 1).
    stride: k >= 1.
    starts: int[P] flat rows t to pair; None: every t whose pair fits (nothing is skipped then).
    on_cross: for a start whose t + k lies past its episode's end: 'error' (the error names the row and the
      episode) or 'skip' (dropped, counted in ``skipped``).
  """
  lengths = np.asarray(episode_lengths, np.int64)
  if lengths.ndim != 1 or lengths.size == 0 or np.any(lengths < 1):
    raise ValueError(f"episode_lengths must be int[E], E >= 1, with every length >= 1, got {episode_lengths}")
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}")
  if on_cross not in ON_CROSS:
    raise ValueError(f"on_cross must be one of {ON_CROSS}, got {on_cross!r}")
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  total = int(offsets[-1])
  if starts is None:
    first = np.concatenate([np.arange(o, o + max(n - stride, 0)) for o, n in zip(offsets[:-1], lengths)])
    first = first.astype(np.int64)
    episode = np.searchsorted(offsets, first, side="right") - 1
    return TransitionPairs(first=first, second=first + stride, episode=episode, stride=stride, skipped=0)
  starts = np.asarray(starts, np.int64).reshape(-1)
  if np.any((starts < 0) | (starts >= total)):
    bad = int(starts[(starts < 0) | (starts >= total)][0])
    raise ValueError(f"start row {bad} is outside the {total} rows of the episodes")
  episode = np.searchsorted(offsets, starts, side="right") - 1
  fits = starts + stride < offsets[episode + 1]
  if on_cross == "error" and not fits.all():
    i = int(np.flatnonzero(~fits)[0])
    raise ValueError(f"pair (row {int(starts[i])}, row {int(starts[i]) + stride}) crosses the end of episode "
                     f"{int(episode[i])} (rows {int(offsets[episode[i]])}..{int(offsets[episode[i] + 1]) - 1}); "
                     "use on_cross='skip' to drop such starts")
  return TransitionPairs(first=starts[fits], second=starts[fits] + stride, episode=episode[fits], stride=stride,
                         skipped=int((~fits).sum()))


def action_windows(actions: np.ndarray, pairs: TransitionPairs) -> np.ndarray:
  """float[rows, 7] flat per-step actions -> float[P, k, 7]: a_t .. a_{t+k-1} of each pair (within its episode)."""
  actions = np.asarray(actions)
  if actions.ndim != 2:
    raise ValueError(f"action_windows: expected flat actions float[rows, D], got {actions.shape}")
  if pairs.first.size and pairs.second.max() > actions.shape[0]:
    raise ValueError(f"action_windows: pairs reach row {int(pairs.second.max())} but actions has "
                     f"{actions.shape[0]} rows")
  return actions[pairs.first[:, None] + np.arange(pairs.stride)[None, :]]
