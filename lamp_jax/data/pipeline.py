"""The training / validation input pipeline: datasets -> mixture -> shuffled frames -> decoded batches.

Per dataset (episode level, threads allocated by mixture weight):
  host-validated episode records (rlds.episode_dataset: this process's files, seeded file order, round-robin)
  -> decode + standardise + normalise + pad (traj_transforms.standard_trajectory)
  -> chunk (windows, action chunks, future frames, pad masks) -> optional subsample -> unbatch to frames
Mixture (frame level, images still encoded):
  sample_from_datasets(weights) -> shuffle(shuffle_buffer_size) -> decode/resize/augment (frame_transforms;
  the train-time crop and colour jitter on the host in OpenCV: augment) -> batch(global batch / process_count,
  drop_remainder; scene-flow placeholders padded to K) -> prefetch
The iterator yields numpy batches in the layout of lamp_jax/specs.py (language as bytes, host only);
:func:`to_global_batch` turns one into global ``jax.Array``s on the mesh's data axes.

Determinism (``data_cfg.deterministic``): all randomness is seeded (file order per epoch, frame shuffle, mixture
sampling, augmentation via per-example stateless seeds) and tf.data keeps element order, so the same config, seed
and process layout give the same stream. Resuming at batch n: ``make_train_iterator(..., start_batch=n)`` with
``data_cfg.resume_mode`` 'skip' (the exact same stream; the first n batches are produced and dropped) or
'reseed' (instant: the seed becomes hash(seed, n); reproducible, but not the uninterrupted stream).
Per-process seeds: every process folds its ``process_index`` into the seed and reads disjoint files.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import weakref

import numpy as np
import tensorflow as tf

from lamp_jax import allocator
from lamp_jax import specs
from lamp_jax.data import code_cache, errors, frame_transforms, normalization, rlds, traj_transforms

log = logging.getLogger("lamp_jax.data")


# Our map functions are plain graph code (tf.cond where data-dependent): skip AutoGraph's slow source conversion.
_graph_fn = tf.autograph.experimental.do_not_convert


def _derive_seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def open_datasets(data_cfg) -> list:
  if not data_cfg.datasets:
    raise errors.DataError("data.datasets is empty: add at least one dataset_entry(...)")
  return [rlds.open_dataset(entry, data_cfg) for entry in data_cfg.datasets]


def _stats_pass(opened, data_cfg, counter):
  """One pass over all train files of a dataset: standardised actions / proprio (no images decoded)."""
  files = rlds.file_instructions(opened, "train", data_cfg.val_fraction)
  ds = rlds.episode_dataset(opened, files, data_cfg=data_cfg, seed=0, shuffle=False, repeat=False, counter=counter)

  @_graph_fn
  def standardize(file_index, episode_index, serialized):
    del file_index, episode_index
    steps, metadata = rlds.decode_episode(opened, serialized)
    traj = opened.standardize(steps, metadata)
    actions = traj["action"]
    if data_cfg.get("hide_actions", False):  # action-free data: no action value enters the statistics
      actions = tf.zeros_like(actions)
    return actions, traj["observation"]["proprio"]

  ds = ds.map(standardize, num_parallel_calls=max(1, int(data_cfg.num_parallel_reads)))
  actions, proprio, count = [], [], 0
  try:
    for action, state in ds.as_numpy_iterator():
      actions.append(action)
      proprio.append(state)
      count += 1
  except tf.errors.OpError as exc:
    errors.reraise_from_tf(exc, f"computing statistics of dataset '{opened.name}'")
  if not count:
    raise errors.DataError("no usable episodes to compute statistics from", dataset=opened.name)
  return np.concatenate(actions), np.concatenate(proprio), count


def dataset_statistics(data_cfg, opened_list=None, counter=None) -> dict:
  """{dataset name: DatasetStatistics} — from stats_path, the cache, or one pass (then cached)."""
  opened_list = opened_list if opened_list is not None else open_datasets(data_cfg)
  counter = counter if counter is not None else errors.SkipCounter()
  out = {}
  for opened in opened_list:
    out[opened.name] = normalization.compute_or_load_stats(
        opened, data_cfg, compute_fn=lambda o=opened: _stats_pass(o, data_cfg, counter))
  return out


def mixture_weights(data_cfg, stats: dict) -> np.ndarray:
  """Normalised sampling weights (times the number of transitions when ``balance_weights``)."""
  weights = np.array([float(e.weight) for e in data_cfg.datasets], np.float64)
  if (weights < 0).any() or weights.sum() <= 0:
    raise errors.DataError(f"data.datasets weights must be >= 0 with a positive sum, got {weights.tolist()}")
  if data_cfg.balance_weights:
    weights = weights * np.array([stats[e.name].num_transitions for e in data_cfg.datasets], np.float64)
  return weights / weights.sum()


# Cut points of make_dataset(stop_after=...) for the per-stage profile (lamp_jax.data.profile), in order.
STAGES = ("read", "parse", "shuffle", "decode", "augment", "batch")
# The batch keys of the action labels (absent with data.hide_actions).
ACTION_KEYS = (specs.ACTION, specs.ACTION_PAD_MASK)


def _code_attacher(opened, data_cfg, which: str):
  """The cached codes' ``attach(frames, episode_key)`` (code_cache.attacher) when ``data.frame_codes`` is set, else
  None. The cache holds the training episodes: it is loaded and verified here (a DataError names the file and the
  field that does not match; ``code_cache_build`` writes it)."""
  source = code_cache.source_of(data_cfg)
  if source is None:
    return None
  if which != "train":
    raise errors.DataError("data.frame_codes is set but the code cache holds the training episodes only: "
                           "validation batches carry no cached codes", dataset=opened.name)
  path, _ = code_cache.path_for(opened, data_cfg, source)
  cache = code_cache.load_for(opened, data_cfg, source, path)
  log.info("cached codes of dataset %s from %s (%d episodes, %d frames)", opened.name, path,
           len(cache.episode_keys), int(cache.lengths.sum()))
  return code_cache.attacher(cache, opened.name)


def _frames(opened, stats, data_cfg, *, which, seed, process_index, process_count, threads, counter, train,
            repeat, stop_after="", shuffle=True):
  files = rlds.file_instructions(opened, which, data_cfg.val_fraction)
  files, record_shard = rlds.shard_for_process(files, process_index, process_count)
  ds = rlds.episode_dataset(opened, files, data_cfg=data_cfg, seed=seed, shuffle=shuffle, repeat=repeat,
                            counter=counter, record_shard=record_shard)
  if stop_after == "read":
    return ds
  # Frame identity (code_cache.episode_key): the file's basename (file_index indexes this process's file list
  # only) and the record index in the file, with the step index of every frame.
  basenames = tf.constant([os.path.basename(f.filename) for f in files], tf.string)
  attach_codes = _code_attacher(opened, data_cfg, which)
  frame_ids = bool(data_cfg.get("frame_ids", False))

  @_graph_fn
  def episode(file_index, episode_index, serialized):
    steps, metadata = rlds.decode_episode(opened, serialized)
    key = tf.strings.join([tf.gather(basenames, file_index), tf.strings.as_string(episode_index)], ":")
    return traj_transforms.standard_trajectory(opened, steps, metadata, data_cfg, stats), key

  ds = ds.map(episode, num_parallel_calls=threads[0])
  future_offsets = tuple(int(k) for k in data_cfg.get("future_offsets", ()))
  future_cameras = tuple(data_cfg.get("future_cameras", ()))

  @_graph_fn
  def chunk(traj, key):
    frames = traj_transforms.chunk(traj, int(data_cfg.window_size), int(data_cfg.action_horizon), future_offsets,
                                   future_cameras)
    if attach_codes is not None:
      frames = attach_codes(frames, key)
    if frame_ids:
      length = tf.shape(frames[specs.OBSERVATION][specs.TIMESTEP_PAD_MASK])[0]
      frames[specs.EPISODE_KEY] = tf.fill([length], key)
      frames[specs.STEP_INDEX] = tf.range(length, dtype=tf.int32)
    return frames

  ds = ds.map(chunk, num_parallel_calls=threads[1])
  if int(data_cfg.subsample_length) > 0 and train:  # after chunking: kept steps keep their true chunks
    ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=_derive_seed(seed, 1)).batch(2))
    ds = ds.map(_graph_fn(lambda frames, s: traj_transforms.subsample(frames, int(data_cfg.subsample_length), s)),
                num_parallel_calls=threads[1])
  if data_cfg.get("hide_actions", False):  # action-free data: the examples carry no action labels
    ds = ds.map(_graph_fn(lambda frames: {k: v for k, v in frames.items() if k not in ACTION_KEYS}),
                num_parallel_calls=threads[1])
  return ds.unbatch()


def training_frames_once(opened, stats, data_cfg, *, batch_size: int, counter) -> tf.data.Dataset:
  """One pass over ``opened``'s training episodes (the statistics' selection), files in order, in batches of up to
  ``batch_size`` frames decoded WITHOUT augmentation, each with its identity (``episode_key``, ``step_index``):
  what a per-frame code cache is built from (``code_cache_build``). ``data_cfg`` gives the cameras, future frames
  and image size; its ``frame_codes`` must be '' (the cache is being built)."""
  if code_cache.source_of(data_cfg) is not None:
    raise errors.DataError("training_frames_once reads frames to build a code cache from: data.frame_codes must be ''",
                           dataset=opened.name)
  cfg = data_cfg.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.frame_ids = True
    cfg.subsample_length = 0
  threads = (max(1, int(cfg.num_parallel_reads)), max(1, int(cfg.num_parallel_calls)))
  ds = _frames(opened, stats, cfg, which="train", seed=0, process_index=0, process_count=1, threads=threads,
               counter=counter, train=False, repeat=False, shuffle=False)
  ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=0).batch(2))
  ds = ds.map(_graph_fn(lambda frame, s: frame_transforms.decode_and_augment(frame, s, cfg, False)),
              num_parallel_calls=threads[1])
  return ds.batch(int(batch_size)).prefetch(2)


def _batch(ds: tf.data.Dataset, batch_size: int, data_cfg) -> tf.data.Dataset:
  """Batch frames; scene-flow placeholders of datasets without labels (K = 1) are padded to K (zeros / False)."""
  if not data_cfg.get("scene_flow", True):
    return ds.batch(batch_size, drop_remainder=True)
  k, t = int(data_cfg.scene_flow_num_points), int(data_cfg.scene_flow_horizon)
  flow_shapes = {specs.SCENE_FLOW: [k, t, 3], specs.SCENE_FLOW_QUERY: [k, 3], specs.SCENE_FLOW_MASK: [k, t],
                 specs.SCENE_FLOW_QUERY_MASK: [k]}
  shapes = {key: flow_shapes.get(key, spec.shape) if not isinstance(spec, dict) else
            tf.nest.map_structure(lambda x: x.shape, spec) for key, spec in ds.element_spec.items()}
  return ds.padded_batch(batch_size, padded_shapes=shapes, drop_remainder=True)


_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
  """Stop every pipeline's threads before the interpreter shuts down: a tf.data thread still calling into Python
  (the host augmentation, the episode reader) while Python finalises aborts the process."""
  for iterator in list(_LIVE_ITERATORS):
    iterator.close()
  gc.collect()


class DataIterator:
  """Iterator of numpy batches (specs layout). Attributes: ``statistics``, ``weights``, ``skips``."""

  def __init__(self, dataset: tf.data.Dataset, *, statistics, weights, skips, names, per_process_batch):
    self.dataset = dataset
    self.statistics = statistics
    self.weights = weights
    self.skips = skips
    self.names = names
    self.per_process_batch = per_process_batch
    self._iterator = dataset.as_numpy_iterator()
    _LIVE_ITERATORS.add(self)

  def close(self) -> None:
    """Stop the pipeline's background threads (the iterator cannot be used afterwards)."""
    self._iterator = None

  def __iter__(self):
    return self

  def __next__(self):
    if self._iterator is None:
      raise StopIteration
    try:
      batch = next(self._iterator)
    except tf.errors.OpError as exc:
      errors.reraise_from_tf(exc, f"reading datasets {self.names}")
    # The episode readers' from_generator iterators, created on tf.data's threads once elements are asked for, let
    # TensorFlow make glibc malloc fault every image buffer in afresh: undo it (allocator.py; a cached call, ~1 µs).
    allocator.undo_tensorflow_malloc_trim()
    return batch

  def skip_counts(self) -> dict:
    return self.skips.as_dict()


def make_dataset(data_cfg, *, seed: int, process_index=None, process_count=None, train=True, repeat=True,
                 start_batch: int = 0, stop_after: str = ""):
  """Build the tf.data pipeline. Returns (dataset, statistics, weights, skip counter, per-process batch).

  ``stop_after`` (one of :data:`STAGES`, '' = the whole pipeline) cuts it after that stage for the per-stage
  profile: 'read' yields serialized episodes, 'parse' / 'shuffle' encoded frames, 'decode' decoded but not
  augmented frames, 'augment' finished frames, 'batch' batches (no prefetch).
  """
  if stop_after and stop_after not in STAGES:
    raise ValueError(f"stop_after='{stop_after}' is not one of {STAGES}")
  if process_index is None or process_count is None:
    import jax

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if data_cfg.batch_size % process_count:
    raise errors.DataError(f"data.batch_size={data_cfg.batch_size} is not divisible by process_count="
                           f"{process_count}")
  unknown = set(data_cfg.cameras) - set(specs.IMAGE_KEYS)
  if unknown:
    raise errors.DataError(f"data.cameras has unknown keys {sorted(unknown)} (allowed: {specs.IMAGE_KEYS})")
  not_read = set(data_cfg.get("future_cameras", ())) - set(data_cfg.cameras)
  if not_read:
    raise errors.DataError(f"data.future_cameras has {sorted(not_read)}, not in data.cameras {tuple(data_cfg.cameras)}"
                           " (future frames get the augmentation of the camera's current frame)")
  if any(int(k) < 1 for k in data_cfg.get("future_offsets", ())):
    raise errors.DataError(f"data.future_offsets={tuple(data_cfg.future_offsets)}: every offset must be >= 1")
  for field in ("action_normalization", "proprio_normalization"):
    if data_cfg[field] not in normalization.MODES:
      raise errors.DataError(f"data.{field}='{data_cfg[field]}' is not one of {normalization.MODES}")
  if start_batch and data_cfg.resume_mode == "reseed":
    seed = _derive_seed(seed, start_batch, 7)
  per_process_batch = data_cfg.batch_size // process_count
  counter = errors.SkipCounter()
  opened_list = open_datasets(data_cfg)
  statistics = dataset_statistics(data_cfg, opened_list, counter)
  weights = mixture_weights(data_cfg, statistics)
  base = _derive_seed(seed, process_index, 0 if train else 1)
  # Threads by mixture weight: (episode parsing, trajectory transforms) per dataset.
  threads = [(max(1, round(int(data_cfg.num_parallel_reads) * w)),
              max(1, round(int(data_cfg.num_parallel_calls) * w))) for w in weights]
  frames = [
      _frames(opened, statistics[opened.name], data_cfg, which="train" if train else "val",
              seed=_derive_seed(base, i), process_index=process_index, process_count=process_count,
              threads=threads[i], counter=counter, train=train, repeat=repeat, stop_after=stop_after)
      for i, opened in enumerate(opened_list)
  ]
  if len(frames) == 1:
    ds = frames[0]
  else:
    keep = [i for i, w in enumerate(weights) if w > 0]
    ds = tf.data.Dataset.sample_from_datasets([frames[i] for i in keep], [float(weights[i]) for i in keep],
                                              seed=_derive_seed(base, 2), stop_on_empty_dataset=False)
  if stop_after in ("read", "parse"):
    return ds, statistics, weights, counter, per_process_batch
  if train and data_cfg.shuffle_buffer_size > 1:
    ds = ds.shuffle(int(data_cfg.shuffle_buffer_size), seed=_derive_seed(base, 3),
                    reshuffle_each_iteration=True)
  if stop_after == "shuffle":
    return ds, statistics, weights, counter, per_process_batch
  ds = tf.data.Dataset.zip(ds, tf.data.Dataset.random(seed=_derive_seed(base, 4)).batch(2))
  augment = train and stop_after != "decode"
  ds = ds.map(_graph_fn(lambda frame, s: frame_transforms.decode_and_augment(frame, s, data_cfg, augment)),
              num_parallel_calls=max(1, int(data_cfg.num_parallel_calls)))
  if stop_after in ("decode", "augment"):
    return ds, statistics, weights, counter, per_process_batch
  ds = _batch(ds, per_process_batch, data_cfg)
  if stop_after == "batch":
    return ds, statistics, weights, counter, per_process_batch
  if start_batch and data_cfg.resume_mode == "skip":
    ds = ds.skip(int(start_batch))
  elif data_cfg.resume_mode not in ("skip", "reseed"):
    raise errors.DataError(f"data.resume_mode='{data_cfg.resume_mode}' is not 'skip' or 'reseed'")
  ds = ds.prefetch(int(data_cfg.prefetch) if data_cfg.prefetch > 0 else tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = bool(data_cfg.deterministic)
  if data_cfg.ram_budget_gb > 0:
    options.autotune.ram_budget = int(data_cfg.ram_budget_gb * 2**30)
  ds = ds.with_options(options)
  return ds, statistics, weights, counter, per_process_batch


def make_train_iterator(data_cfg, *, seed: int, process_index=None, process_count=None,
                        start_batch: int = 0) -> DataIterator:
  """Endless iterator of this process's training batches (global batch / process_count examples each).

  ``start_batch``: batches this process already consumed (the training step when one batch is used per step);
  how the stream continues is ``data_cfg.resume_mode`` (module docstring).
  """
  ds, stats, weights, counter, per_process = make_dataset(
      data_cfg, seed=seed, process_index=process_index, process_count=process_count, train=True, repeat=True,
      start_batch=start_batch)
  return DataIterator(ds, statistics=stats, weights=weights, skips=counter,
                      names=[e.name for e in data_cfg.datasets], per_process_batch=per_process)


def make_val_iterator(data_cfg, *, seed: int = 0, process_index=None, process_count=None,
                      repeat: bool = True) -> DataIterator:
  """Validation batches: the 'val' split (or the last val_fraction), no augmentation, no frame shuffle.

  ``repeat=True`` (default) is endless so every process can take the same number of batches; with
  ``repeat=False`` one pass (the last partial batch is dropped).
  """
  ds, stats, weights, counter, per_process = make_dataset(
      data_cfg, seed=seed, process_index=process_index, process_count=process_count, train=False, repeat=repeat)
  return DataIterator(ds, statistics=stats, weights=weights, skips=counter,
                      names=[e.name for e in data_cfg.datasets], per_process_batch=per_process)


def host_only(batch: dict) -> dict:
  """The entries that stay on the host (text): task/language_instruction."""
  return {specs.TASK: {specs.LANGUAGE_INSTRUCTION: batch[specs.TASK][specs.LANGUAGE_INSTRUCTION]}}


def to_global_batch(batch: dict, mesh, data_axes=("data",)) -> dict:
  """Host batch (numpy, per-process slice) -> global jax.Arrays sharded on the mesh's ``data_axes`` (batch dim).

  String / object arrays (the instruction text) are dropped: tokenise them on the host first (the trainer adds
  task/tokens and task/token_mask as int/bool arrays, which are converted here like everything else).
  """
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  axes = tuple(data_axes) if isinstance(data_axes, (tuple, list)) else (data_axes,)
  sharding = NamedSharding(mesh, PartitionSpec(axes))

  def convert(tree):
    out = {}
    for key, value in tree.items():
      if isinstance(value, dict):
        out[key] = convert(value)
      elif isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        continue
      else:
        out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(value))
    return out

  return convert(batch)


def num_batches_per_epoch(stats: dict, data_cfg) -> float:
  """Approximate train batches per epoch (all datasets, all processes)."""
  return sum(s.num_transitions for s in stats.values()) / max(1, data_cfg.batch_size)


__all__ = ["make_train_iterator", "make_val_iterator", "make_dataset", "to_global_batch", "dataset_statistics",
           "open_datasets", "mixture_weights", "host_only", "DataIterator", "num_batches_per_epoch"]
