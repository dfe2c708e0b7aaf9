"""Action / proprio normalisation statistics: computed once per dataset, cached as JSON, saved with checkpoints.

Modes (``data_cfg.action_normalization`` / ``proprio_normalization``):
  'normal'        z-score: (x - mean) / std
  'bounds'        [p01, p99] -> [-1, 1], clipped (Octo's BOUNDS)
  'bounds_minmax' [min, max] -> [-1, 1], clipped
  'none'          unchanged
Dimensions whose mask entry is False (the gripper by default) are left raw. Near-constant dimensions
(std or range below ``EPS``) are safe: 'normal' only subtracts the mean there, 'bounds' maps them to 0 and the
inverse returns the constant.

The cache file ``<cache_dir>/<dataset>_<hash>.json`` is keyed by :meth:`OpenedDataset.info_hash` (dataset name,
version, features, split sizes, a fingerprint of the files' contents — every file's size and first and last
64 KiB —, standardisation code and kwargs): change any of these, or regenerate the dataset with another seed
under the same name and record counts, and the stats are recomputed. The hash is stored in the file and verified
on load: a cache file that does not match is recomputed and replaced (logged); an explicit ``stats_path`` that
does not match is an error naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os

import numpy as np

from lamp_jax.data import errors

log = logging.getLogger("lamp_jax.data")

EPS = 1e-6
MODES = ("normal", "bounds", "bounds_minmax", "none")


@dataclasses.dataclass
class ArrayStats:
  """Per-dimension statistics of one array (float64 lists in JSON, float32 numpy here)."""

  mean: np.ndarray
  std: np.ndarray
  min: np.ndarray
  max: np.ndarray
  p01: np.ndarray
  p99: np.ndarray

  @classmethod
  def of(cls, values: np.ndarray) -> "ArrayStats":
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
      raise ValueError(f"statistics need a non-empty [N, D] array, got shape {values.shape}")
    return cls(mean=values.mean(0), std=values.std(0), min=values.min(0), max=values.max(0),
               p01=np.quantile(values, 0.01, axis=0), p99=np.quantile(values, 0.99, axis=0))

  @property
  def dim(self) -> int:
    return int(np.asarray(self.mean).shape[0])

  def to_dict(self) -> dict:
    return {f.name: np.asarray(getattr(self, f.name), np.float64).tolist() for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: dict) -> "ArrayStats":
    return cls(**{f.name: np.asarray(d[f.name], np.float32) for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class DatasetStatistics:
  """Statistics of one dataset's standardised actions and proprio."""

  dataset: str
  hash: str
  action: ArrayStats
  proprio: ArrayStats
  num_transitions: int
  num_trajectories: int
  source: str = "computed"  # 'computed' | 'cache' | 'file' (not serialised)

  def to_json(self) -> str:
    return json.dumps({"dataset": self.dataset, "hash": self.hash, "action": self.action.to_dict(),
                       "proprio": self.proprio.to_dict(), "num_transitions": self.num_transitions,
                       "num_trajectories": self.num_trajectories}, indent=1)

  @classmethod
  def from_json(cls, text: str, source: str = "file") -> "DatasetStatistics":
    d = json.loads(text)
    return cls(dataset=d["dataset"], hash=d["hash"], action=ArrayStats.from_dict(d["action"]),
               proprio=ArrayStats.from_dict(d["proprio"]), num_transitions=int(d["num_transitions"]),
               num_trajectories=int(d["num_trajectories"]), source=source)


def _affine(stats: ArrayStats, mode: str, dim: int):
  """(offset, scale, constant) per dim so that normalised = (x - offset) / scale, first ``dim`` entries."""
  take = lambda a: np.asarray(a, np.float32)[:dim]  # noqa: E731
  if mode == "normal":
    return take(stats.mean), take(stats.std), take(stats.std) < EPS
  if mode in ("bounds", "bounds_minmax"):
    low, high = (take(stats.p01), take(stats.p99)) if mode == "bounds" else (take(stats.min), take(stats.max))
    return (low + high) / 2, (high - low) / 2, (high - low) < EPS
  raise ValueError(f"unknown normalisation mode '{mode}' (one of {MODES})")


def _mask(mask, dim: int) -> np.ndarray:
  if mask is None or len(mask) == 0:
    return np.ones(dim, bool)
  mask = np.asarray(mask, bool)
  if mask.shape[0] < dim:
    raise ValueError(f"normalisation mask has {mask.shape[0]} entries for {dim} dims")
  return mask[:dim]


def normalize(x, stats: ArrayStats, mode: str, mask=None, xp=np):
  """Normalise ``x[..., D]`` (D <= stats.dim). ``xp`` = numpy or tf.experimental.numpy (same formula in graph)."""
  if mode == "none":
    return x
  dim = int(x.shape[-1])
  offset, scale, constant = _affine(stats, mode, dim)
  mask = _mask(mask, dim)
  safe_scale = np.where(constant, 1.0, scale).astype(np.float32)
  y = (x - offset) / safe_scale
  if mode == "normal":
    y = xp.where(constant, x - offset, y)
  else:
    y = xp.where(constant, xp.zeros_like(y), xp.clip(y, -1.0, 1.0))
  return xp.where(mask, y, x)


def unnormalize(y, stats: ArrayStats, mode: str, mask=None, xp=np):
  """Inverse of :func:`normalize` (clipped values come back at the bound)."""
  if mode == "none":
    return y
  dim = int(y.shape[-1])
  offset, scale, constant = _affine(stats, mode, dim)
  mask = _mask(mask, dim)
  at_constant = y + offset if mode == "normal" else y * 0 + offset
  x = xp.where(constant, at_constant, y * scale + offset)
  return xp.where(mask, x, y)


def normalize_actions(actions: np.ndarray, stats: DatasetStatistics, mode: str, mask=None) -> np.ndarray:
  """float32[..., A'] raw actions (A' <= stats dim) -> normalised."""
  return np.asarray(normalize(np.asarray(actions, np.float32), stats.action, mode, mask), np.float32)


def unnormalize_actions(actions: np.ndarray, stats: DatasetStatistics, mode: str, mask=None) -> np.ndarray:
  """float32[..., A] normalised (possibly padded to max_action_dim) -> raw float32[..., stats action dim]."""
  actions = np.asarray(actions, np.float32)[..., :stats.action.dim]
  return np.asarray(unnormalize(actions, stats.action, mode, mask), np.float32)


def normalize_proprio(proprio: np.ndarray, stats: DatasetStatistics, mode: str, mask=None) -> np.ndarray:
  return np.asarray(normalize(np.asarray(proprio, np.float32), stats.proprio, mode, mask), np.float32)


def default_cache_dir() -> str:
  return os.environ.get("LAMP_JAX_CACHE", "") or os.path.join(os.path.expanduser("~"), ".cache", "lamp_jax",
                                                               "dataset_statistics")


def cache_path(cache_dir: str, dataset: str, info_hash: str, selection: str = "") -> str:
  """``<cache_dir>/<dataset>_<info_hash><selection>.json`` (``selection``: ``selection_key``)."""
  return os.path.join(cache_dir or default_cache_dir(), f"{dataset}_{info_hash}{selection}.json")


def selection_key(entry, data_cfg) -> str:
  """'' for the default selection of a dataset's training episodes (split 'train', the default validation
  carve-out, actions read); else '_' + a hash of (train_split, val_split, val_fraction, hide_actions), so that
  statistics of another episode subset (e.g. a small labelled 'train[:60]') or of action-free data never come
  from the cache entry of the whole split."""
  train_split = str(entry.get("train_split", "train") or "train")
  val_split = str(entry.get("val_split", "") or "")
  hide = bool(data_cfg.get("hide_actions", False))
  if train_split == "train" and not val_split and not hide:
    return ""
  payload = json.dumps([train_split, val_split, float(data_cfg.get("val_fraction", 0.0)), hide])
  return "_" + hashlib.sha256(payload.encode()).hexdigest()[:10]


def load_stats_file(path: str, *, dataset: str, info_hash: str, action_dim: int | None = None,
                    proprio_dim: int | None = None, source: str = "file") -> DatasetStatistics:
  """Load statistics JSON and check it belongs to this dataset (hash and dims); DataError names the file."""
  import tensorflow as tf  # gfile reads local and cloud paths

  try:
    with tf.io.gfile.GFile(path, "r") as f:
      stats = DatasetStatistics.from_json(f.read(), source=source)
  except (json.JSONDecodeError, KeyError, TypeError) as exc:
    raise errors.DataError(f"unreadable statistics file ({exc!r})", dataset=dataset, file=path) from exc
  if stats.dataset != dataset or stats.hash != info_hash:
    raise errors.DataError(f"statistics file does not match the dataset: it is for '{stats.dataset}' with hash "
                           f"{stats.hash}, the dataset has hash {info_hash} (dataset info or standardisation "
                           "changed: delete the file or point stats_path elsewhere)", dataset=dataset, file=path)
  for what, got, want in (("action", stats.action.dim, action_dim), ("proprio", stats.proprio.dim, proprio_dim)):
    if want is not None and got != want:
      raise errors.DataError(f"statistics file has {what} dim {got}, the dataset has {want}", dataset=dataset,
                             file=path)
  return stats


def compute_or_load_stats(opened, data_cfg, *, compute_fn, action_dim=None, proprio_dim=None) -> DatasetStatistics:
  """Statistics of one opened dataset: explicit ``stats_path``, else the cache, else one pass (then cached).

  Args:
    opened: ``rlds.OpenedDataset``.
    data_cfg: the data config (``stats_cache_dir``).
    compute_fn: ``compute_fn() -> (actions float[N, A], proprio float[N, S], num_trajectories)``: the one pass.
  """
  import tensorflow as tf

  info_hash = opened.info_hash()
  explicit = str(opened.entry.get("stats_path", "") or "")
  if explicit:
    return load_stats_file(explicit, dataset=opened.name, info_hash=info_hash, action_dim=action_dim,
                           proprio_dim=proprio_dim, source="file")
  path = cache_path(str(data_cfg.stats_cache_dir), opened.name, info_hash, selection_key(opened.entry, data_cfg))
  if tf.io.gfile.exists(path):
    try:
      stats = load_stats_file(path, dataset=opened.name, info_hash=info_hash, action_dim=action_dim,
                              proprio_dim=proprio_dim, source="cache")
    except errors.DataError as exc:
      log.warning("dataset statistics cache %s does not verify (%s): recomputing", path, exc)
    else:
      log.info("dataset statistics for %s from cache %s", opened.name, path)
      return stats
  actions, proprio, num_trajectories = compute_fn()
  stats = DatasetStatistics(dataset=opened.name, hash=info_hash, action=ArrayStats.of(actions),
                            proprio=ArrayStats.of(proprio), num_transitions=int(actions.shape[0]),
                            num_trajectories=int(num_trajectories), source="computed")
  tf.io.gfile.makedirs(os.path.dirname(path))
  tmp = path + f".tmp{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(stats.to_json())
  tf.io.gfile.rename(tmp, path, overwrite=True)
  log.info("dataset statistics for %s written to %s", opened.name, path)
  return stats
