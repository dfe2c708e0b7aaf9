"""Per-frame codes cached per dataset: the file, its key, its verification, and attaching its codes to the frames.

A frozen encoder (e.g. the latent action model of latent-action pretraining) turns each training frame's pair
(o_t, o_{t+k}) into L_z integer codes. Computed once per dataset (``code_cache_build``), they are stored in one
file per (dataset, episode selection, encoder) and read back by the pipeline, which attaches them to every frame
instead of decoding the future frame and running the encoder in every train step.

Frame identity: an episode is ``<basename of its TFRecord file>:<record index in that file>`` (stable across
processes and file orders, unlike the per-process file index) and a frame is (episode key, step index t).

Key (as the statistics cache's, ``normalization.cache_path``):
  ``<codes_cache_dir>/<dataset>_<info_hash><selection>_<source_sha256[:16]>.npz``
  info_hash: ``OpenedDataset.info_hash`` (dataset info, file contents, standardisation); selection:
  ``normalization.selection_key`` (train / val split, val_fraction, hide_actions); source: the encoder's
  fingerprint (its parameters' and config's, given by the model: ``ModelLibrary.frame_codes``). An explicit file
  per dataset entry: ``codes_path``.

File (numpy .npz, no pickles):
  episode_keys  str[E]           the episodes, sorted
  lengths       int32[E]         steps per episode
  codes         int32[N, L_z]    the codes of every frame, episodes in ``episode_keys`` order, steps in order
                                 (N = sum of lengths)
  valid         bool[N]          False where the pair does not count (t + k past the episode end, camera absent)
  meta          str (JSON)       format, dataset, info_hash, selection, source (the fingerprint fields),
                                 source_sha256, code_length, episodes, frames, checksum (sha256 of the arrays)
Loading checks every meta field against what the run expects and the checksum against the arrays; a mismatch is
a DataError naming the file and the field (a default-location file is then rebuilt, an explicit one is not).
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np

from lamp_jax import specs
from lamp_jax.data import errors
from lamp_jax.data import normalization

FORMAT = 1
SUFFIX = ".npz"


def default_cache_dir() -> str:
  root = os.environ.get("LAMP_JAX_CACHE", "") or os.path.join(os.path.expanduser("~"), ".cache", "lamp_jax")
  return os.path.join(root, "frame_codes")


def source_sha256(source: dict) -> str:
  """sha256 (hex) of an encoder's fingerprint fields (a JSON-able dict)."""
  return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str, dataset: str, info_hash: str, selection: str, source: dict) -> str:
  """``<cache_dir>/<dataset>_<info_hash><selection>_<source_sha256[:16]>.npz`` (module docstring)."""
  return os.path.join(cache_dir or default_cache_dir(),
                      f"{dataset}_{info_hash}{selection}_{source_sha256(source)[:16]}{SUFFIX}")


def source_of(data_cfg) -> dict | None:
  """The encoder fingerprint of ``data.frame_codes`` (a JSON object), None when it is ''."""
  text = str(data_cfg.get("frame_codes", "") or "")
  if not text:
    return None
  try:
    source = json.loads(text)
  except json.JSONDecodeError as exc:
    raise errors.DataError(f"data.frame_codes is not a JSON object of the encoder's fingerprint ({exc})") from exc
  if not isinstance(source, dict) or not source:
    raise errors.DataError(f"data.frame_codes={text!r} is not a non-empty JSON object (the encoder's fingerprint)")
  return source


def path_for(opened, data_cfg, source: dict) -> tuple[str, bool]:
  """(the cache file of ``opened``'s training episodes and ``source``'s codes, whether it is the dataset entry's
  explicit ``codes_path``)."""
  explicit = str(opened.entry.get("codes_path", "") or "")
  if explicit:
    return explicit, True
  selection = normalization.selection_key(opened.entry, data_cfg)
  return cache_path(str(data_cfg.get("codes_cache_dir", "") or ""), opened.name, opened.info_hash(), selection,
                    source), False


def load_for(opened, data_cfg, source: dict, path: str) -> CodeCache:
  """:func:`load` of ``path`` against ``opened``'s dataset, its training selection and ``source``."""
  return load(path, dataset=opened.name, info_hash=opened.info_hash(),
              selection=normalization.selection_key(opened.entry, data_cfg), source=source)


def episode_key(basename: str, record: int) -> str:
  return f"{basename}:{int(record)}"


def _checksum(keys: np.ndarray, lengths: np.ndarray, codes: np.ndarray, valid: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update("\n".join(str(k) for k in keys).encode())
  for array in (lengths.astype("<i4"), codes.astype("<i4"), valid.astype(np.uint8)):
    h.update(str(array.shape).encode())
    h.update(np.ascontiguousarray(array).tobytes())
  return h.hexdigest()


class CodeCache:
  """The codes of one dataset's training frames (the arrays of the file, module docstring)."""

  def __init__(self, episode_keys, lengths, codes, valid, meta: dict, path: str = ""):
    self.path = path  # the file it was read from ('' for one not read from a file)
    self.episode_keys = np.asarray(episode_keys).astype(str)
    self.lengths = np.asarray(lengths, np.int32)
    self.codes = np.asarray(codes, np.int32)
    self.valid = np.asarray(valid, bool)
    self.meta = meta

  @property
  def code_length(self) -> int:
    return int(self.codes.shape[1])

  def offsets(self) -> np.ndarray:
    """int64[E] row of each episode's first frame in ``codes``."""
    return np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)[:-1]]).astype(np.int64)

  def episode(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes int32[L, L_z], valid bool[L]) of one episode."""
    index = int(np.searchsorted(self.episode_keys, key))
    if index >= len(self.episode_keys) or self.episode_keys[index] != key:
      raise KeyError(key)
    start = int(self.offsets()[index])
    stop = start + int(self.lengths[index])
    return self.codes[start:stop], self.valid[start:stop]


def make(per_episode: dict, *, dataset: str, info_hash: str, selection: str, source: dict) -> CodeCache:
  """A cache from {episode key: (codes int32[L, L_z], valid bool[L])}."""
  if not per_episode:
    raise errors.DataError("no frames to cache codes of", dataset=dataset)
  keys = np.array(sorted(per_episode), dtype=str)
  lengths = np.array([len(per_episode[k][1]) for k in keys], np.int32)
  codes = np.concatenate([np.asarray(per_episode[k][0], np.int32) for k in keys])
  valid = np.concatenate([np.asarray(per_episode[k][1], bool) for k in keys])
  meta = dict(format=FORMAT, dataset=dataset, info_hash=info_hash, selection=selection, source=source,
              source_sha256=source_sha256(source), code_length=int(codes.shape[1]), episodes=int(len(keys)),
              frames=int(codes.shape[0]), checksum=_checksum(keys, lengths, codes, valid))
  return CodeCache(keys, lengths, codes, valid, meta)


def write(cache: CodeCache, path: str) -> None:
  """Atomic write (``<path>.tmp<pid>`` then rename), local or cloud paths (gfile)."""
  import tensorflow as tf  # gfile writes local and cloud paths

  buffer = io.BytesIO()
  np.savez_compressed(buffer, episode_keys=cache.episode_keys, lengths=cache.lengths, codes=cache.codes,
                      valid=cache.valid, meta=np.array(json.dumps(cache.meta, sort_keys=True)))
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  tmp = path + f".tmp{os.getpid()}"
  with tf.io.gfile.GFile(tmp, "wb") as f:
    f.write(buffer.getvalue())
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _mismatch(field: str, stored, expected, why: str, *, dataset: str, path: str) -> errors.DataError:
  return errors.DataError(f"code cache does not match: field '{field}' is {stored!r} in the file, this run "
                          f"expects {expected!r} ({why})", dataset=dataset, file=path, key=field)


def load(path: str, *, dataset: str, info_hash: str, selection: str, source: dict) -> CodeCache:
  """The cache at ``path``, verified against the dataset, the episode selection and the encoder's fingerprint.

  Raises:
    DataError naming the file and the field that does not match (or why the file is unreadable / corrupt).
  """
  import tensorflow as tf

  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      arrays = {name: npz[name] for name in ("episode_keys", "lengths", "codes", "valid", "meta")}
    meta = json.loads(str(arrays["meta"]))
  except Exception as exc:  # pylint: disable=broad-except  (zip, npz, JSON and I/O errors all mean unreadable)
    raise errors.DataError(f"unreadable code cache ({type(exc).__name__}: {exc})", dataset=dataset,
                           file=path) from exc
  if not isinstance(meta, dict):
    raise errors.DataError("unreadable code cache (its meta is not a JSON object)", dataset=dataset, file=path)
  where = dict(dataset=dataset, path=path)
  for field, expected, why in (
      ("format", FORMAT, "written by another version of lamp_jax.data.code_cache"),
      ("dataset", dataset, "codes of another dataset"),
      ("info_hash", info_hash, "the dataset's info, files or standardisation changed"),
      ("selection", selection, "another episode selection: train_split / val_split / val_fraction / hide_actions")):
    if meta.get(field) != expected:
      raise _mismatch(field, meta.get(field), expected, why, **where)
  stored_source = meta.get("source")
  if not isinstance(stored_source, dict):
    raise _mismatch("source", stored_source, source, "no encoder fingerprint", **where)
  for field in sorted(set(source) | set(stored_source)):
    if stored_source.get(field) != source.get(field):
      raise _mismatch(f"source.{field}", stored_source.get(field), source.get(field),
                      "codes of another encoder: its parameters or the config fields that change its codes differ",
                      **where)
  keys, lengths, codes, valid = (arrays[k] for k in ("episode_keys", "lengths", "codes", "valid"))
  if codes.ndim != 2 or lengths.ndim != 1 or keys.shape != lengths.shape or valid.shape != codes.shape[:1] or \
      int(lengths.sum()) != codes.shape[0] or codes.shape[1] != meta.get("code_length"):
    raise errors.DataError(f"corrupt code cache: inconsistent shapes (episode_keys {keys.shape}, lengths "
                           f"{lengths.shape} summing to {int(lengths.sum())}, codes {codes.shape}, valid "
                           f"{valid.shape}, code_length {meta.get('code_length')})", dataset=dataset, file=path,
                           key="codes")
  checksum = _checksum(keys, lengths, codes, valid)
  if meta.get("checksum") != checksum:
    raise _mismatch("checksum", meta.get("checksum"), checksum, "the arrays changed after they were written: a "
                    "corrupt file", **where)
  return CodeCache(keys, lengths, codes, valid, meta, path=path)


def attacher(cache: CodeCache, dataset: str):
  """``attach(frames, key) -> frames`` for the pipeline's per-episode map: ``frames`` (one episode's chunked
  examples, [L, ...] tensors) with ``frame_codes`` int32[L, L_z] and ``frame_codes_valid`` bool[L] of the episode
  ``key`` (tf string scalar, :func:`episode_key`). The lookup tables are built here, once (outside tf.data's
  functions). An episode the cache lacks, or one of another length, fails an assertion that names the dataset,
  the cache file and the episode."""
  import tensorflow as tf

  index = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant([str(k) for k in cache.episode_keys], tf.string),
                                          tf.range(len(cache.episode_keys), dtype=tf.int64)), default_value=-1)
  lengths, offsets = tf.constant(cache.lengths), tf.constant(cache.offsets())
  codes, valid = tf.constant(cache.codes), tf.constant(cache.valid)
  # (no quotes: TensorFlow escapes them in an assertion's message)
  message = (f"{errors.MESSAGE_MARKER}dataset {dataset}, code cache file {cache.path}: the cache has no episode of "
             "this length (rebuild it); the episode (file:record), its steps and the cache steps (-1: absent):")

  def attach(frames: dict, key) -> dict:
    length = tf.shape(frames[specs.OBSERVATION][specs.TIMESTEP_PAD_MASK])[0]
    row = index.lookup(key)
    safe = tf.maximum(row, 0)
    stored = tf.where(row >= 0, tf.gather(lengths, safe), -1)
    check = tf.debugging.Assert(tf.equal(stored, length), [message, key, length, stored])
    with tf.control_dependencies([check]):
      rows = tf.gather(offsets, safe) + tf.range(tf.cast(length, tf.int64), dtype=tf.int64)
    out = dict(frames)
    out[specs.FRAME_CODES] = tf.gather(codes, rows)
    out[specs.FRAME_CODES_VALID] = tf.gather(valid, rows)
    return out

  return attach
