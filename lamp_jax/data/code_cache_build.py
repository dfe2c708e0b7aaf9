"""Building the per-frame code caches (lamp_jax/data/code_cache.py) of a stage's datasets, once per dataset.

For every dataset of the stage's data config, :func:`ensure`:
  1. resolves the cache file: the entry's explicit ``codes_path``, else ``<data.codes_cache_dir>/<dataset>_<info
     hash><selection>_<encoder fingerprint>.npz`` (``code_cache.path_for``);
  2. reads and verifies it when it exists (dataset, info hash, selection, the encoder's fingerprint field by
     field, checksum); a default-location file that does not verify is logged and rebuilt, an explicit one
     raises the DataError naming the file and the field;
  3. else builds it: one pass over the dataset's training episodes (the statistics' selection; files in order,
     no shuffle, no subsampling), frames decoded WITHOUT augmentation with the encoder's cameras and future
     frames (``pipeline.training_frames_once``), ``encode`` in batches of a fixed size (the last one padded, so one
     compilation), then written atomically; a tqdm bar counts the frames and a log line names the file.
It returns the data config with ``frame_codes`` set to the encoder's fingerprint: the pipeline then loads the
verified files and attaches ``frame_codes`` / ``frame_codes_valid`` to every training frame.

Cached codes are those of the un-augmented frames; codes computed on the fly in the train step see the augmented
(cropped, colour-jittered) frames. The encoder is given by the model (``ModelLibrary.frame_codes``); this module
knows nothing of it but its fingerprint, the frames it reads and its ``encode``.
"""

from __future__ import annotations

import json
import logging
from typing import Callable

import numpy as np
import tensorflow as tf

from lamp_jax import specs
from lamp_jax.data import code_cache, errors, normalization, pipeline

log = logging.getLogger("lamp_jax.data")

# Builds run by this process (tests and logs read it: a second run reads the cache instead).
BUILDS: list[str] = []


def build_config(data_cfg, requirements: specs.DataRequirements):
  """``data_cfg`` (its datasets, selection, image size and reading options) set to read the encoder's frames:
  its cameras at window 1 with its future frames, no scene flow, optical flow or augmentation, no cached codes."""
  cfg = data_cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.cameras = tuple(requirements.cameras)
    cfg.window_size = 1
    cfg.future_offsets = tuple(int(k) for k in requirements.future_offsets)
    cfg.future_cameras = tuple(requirements.future_cameras)
    cfg.scene_flow = False
    cfg.optical_flow = False
    cfg.augment = False
    cfg.frame_codes = ""
    cfg.image_size = (int(requirements.image_size),) * 2
  return cfg


def _numeric(tree):
  if isinstance(tree, dict):
    return {k: v for k, v in ((k, _numeric(v)) for k, v in tree.items()) if v is not None}
  return tree if np.asarray(tree).dtype.kind in "biuf" else None


def _pad(tree, size: int):
  """Every leaf's leading axis padded to ``size`` by repeating its last row."""
  def pad(x):
    x = np.asarray(x)
    return x if x.shape[0] == size else np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)])
  return {k: _pad(v, size) if isinstance(v, dict) else pad(v) for k, v in tree.items()}


def compute(opened, data_cfg, *, encode: Callable, batch_size: int, progress: bool = True) -> dict:
  """{episode key: (codes int32[L, L_z], valid bool[L])} of one pass over ``opened``'s training episodes, read
  with ``data_cfg`` (:func:`build_config`)."""
  counter = errors.SkipCounter()
  stats = pipeline.dataset_statistics(data_cfg, [opened], counter)[opened.name]
  ds = pipeline.training_frames_once(opened, stats, data_cfg, batch_size=batch_size, counter=counter)
  steps: dict = {}
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top

    bar = tqdm(desc=f"codes[{opened.name}]", unit="frame", dynamic_ncols=True)
  try:
    for batch in ds.as_numpy_iterator():
      keys = [k.decode() if isinstance(k, bytes) else str(k) for k in batch[specs.EPISODE_KEY]]
      index = np.asarray(batch[specs.STEP_INDEX])
      n = len(keys)
      codes, valid = encode(_pad(_numeric(batch), batch_size))
      codes, valid = np.asarray(codes, np.int32)[:n], np.asarray(valid, bool)[:n]
      if codes.ndim != 2 or codes.shape[0] != n or valid.shape != (n,):
        raise errors.DataError(f"the encoder gave codes of shape {codes.shape} and valid flags of shape "
                               f"{valid.shape} for {n} frames (expected int32[{n}, L_z] and bool[{n}])",
                               dataset=opened.name)
      for key, t, c, v in zip(keys, index, codes, valid):
        steps.setdefault(key, []).append((int(t), c, bool(v)))
      if bar is not None:
        bar.update(n)
  except tf.errors.OpError as exc:
    errors.reraise_from_tf(exc, f"building the code cache of dataset '{opened.name}'")
  finally:
    if bar is not None:
      bar.close()
  out = {}
  for key, rows in steps.items():
    rows.sort(key=lambda row: row[0])
    order = [row[0] for row in rows]
    if order != list(range(len(rows))):
      raise errors.DataError(f"the pass gave steps {order[:8]}... of this episode, not 0..{len(rows) - 1} once each",
                             dataset=opened.name, episode=key)
    out[key] = (np.stack([row[1] for row in rows]), np.array([row[2] for row in rows], bool))
  return out


def ensure(data_cfg, *, requirements: specs.DataRequirements, source: dict, encode: Callable, batch_size: int,
           progress: bool = True):
  """``data_cfg`` with ``frame_codes`` set, after every dataset's code cache was read and verified or built
  (module docstring).

  Args:
    data_cfg: the stage's data config.
    requirements: the frames the encoder reads (cameras, image size, future offsets and cameras).
    source: the encoder's fingerprint (JSON-able named fields; a cache of another fingerprint is not used).
    encode: numpy batch (specs layout, numeric leaves, ``batch_size`` frames) -> (codes int32[B, L_z],
      valid bool[B]).
    batch_size: frames per ``encode`` call.
    progress: a tqdm bar per dataset while building.
  Raises:
    DataError: an explicit ``codes_path`` that does not verify (naming the file and the field), or a pass that
      fails.
  """
  source = json.loads(json.dumps(source, sort_keys=True))  # the JSON form the file stores (lists, not tuples)
  read_cfg = build_config(data_cfg, requirements)
  for opened in pipeline.open_datasets(read_cfg):
    path, explicit = code_cache.path_for(opened, read_cfg, source)
    if tf.io.gfile.exists(path):
      try:
        cache = code_cache.load_for(opened, read_cfg, source, path)
      except errors.DataError as exc:
        if explicit:
          raise
        log.warning("code cache %s does not verify (%s): rebuilding it", path, exc)
      else:
        log.info("codes of dataset %s read from cache %s (%d episodes, %d frames)", opened.name, path,
                 len(cache.episode_keys), int(cache.lengths.sum()))
        continue
    log.info("building the code cache of dataset %s: %s", opened.name, path)
    per_episode = compute(opened, read_cfg, encode=encode, batch_size=batch_size, progress=progress)
    cache = code_cache.make(per_episode, dataset=opened.name, info_hash=opened.info_hash(),
                            selection=normalization.selection_key(opened.entry, read_cfg), source=source)
    code_cache.write(cache, path)
    BUILDS.append(path)
    log.info("code cache of dataset %s written to %s (%d episodes, %d frames)", opened.name, path,
             len(cache.episode_keys), int(cache.lengths.sum()))
  return with_source(data_cfg, source)


def with_source(data_cfg, source: dict):
  """A copy of ``data_cfg`` whose training frames carry the cached codes of the encoder ``source``
  (``data.frame_codes``; the caches must exist: :func:`ensure`)."""
  out = data_cfg.copy_and_resolve_references()
  with out.unlocked():
    out.frame_codes = json.dumps(source, sort_keys=True)
  return out
