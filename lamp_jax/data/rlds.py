"""Opening RLDS datasets and reading their episodes: our small dlimp, as plain functions over tf.data.

dlimp (Octo's trajectory-level tf.data layer) is not on PyPI; this module re-implements the part we need with
plain functions:

* :func:`open_dataset` — ``tfds.builder_from_directory`` (or name + data_dir), the standardisation from the
  registry, and a schema check of the feature spec against what the standardisation reads (missing key, wrong
  shape or dtype -> DataError naming dataset, directory and key).
* :func:`file_instructions` — the files (with skip/take) of a split; 'val' falls back to the last
  ``val_fraction`` of 'train' when the dataset has no 'val' split.
* :func:`shard_for_process` — each process reads its own files (``files[process_index::process_count]``).
* :func:`episode_records` — a Python generator over serialized episodes: seeded file order per epoch, files read
  round-robin, each episode validated on the host (keys, shapes, finite values, length) so an error names the
  dataset, file, episode and key, or is counted with ``skip_bad``. Corrupt / truncated TFRecord files too.
* :func:`decode_episode` — serialized episode -> (steps dict with a leading step axis, episode metadata); images
  stay JPEG strings so shuffling happens before decode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import warnings
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lamp_jax.data import datasets, errors

_KIND_OF_DTYPE = {tf.string: "bytes", tf.float32: "float", tf.float64: "float", tf.float16: "float",
                  tf.bfloat16: "float"}


def _dtype(info):
  return getattr(info, "tf_dtype", None) or tf.as_dtype(info.np_dtype)


def _kind(dtype) -> str:
  dtype = tf.as_dtype(dtype)
  if dtype in _KIND_OF_DTYPE:
    return _KIND_OF_DTYPE[dtype]
  return "int"  # bool and every integer type are stored as int64 lists


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "/"))
    else:
      out[name] = value
  return out


@dataclasses.dataclass
class OpenedDataset:
  """A dataset of the mixture, opened and checked. Everything the pipeline needs to read it."""

  name: str
  directory: str
  builder: object
  standardization: datasets.Standardization
  image_keys: dict  # spec camera key -> dataset observation key ('' = absent)
  kwargs: dict  # standardisation kwargs
  requirements: dict  # serialized key -> (per-step shape, kind)
  serialized_info: dict  # flattened serialized key -> tfds TensorInfo
  action_mask: tuple
  proprio_mask: tuple
  entry: object
  # Observation key of the optical-flow images this pipeline reads ('' = none: data.optical_flow is off, the
  # layout has none, or this dataset was written without them).
  optical_flow_key: str = ""

  def standardize(self, steps, metadata):
    return self.standardization.fn(steps, metadata, **self.kwargs)

  def info_hash(self) -> str:
    """Hash of the dataset (name, version, feature spec, split sizes) and its standardisation (code + kwargs)."""
    info = self.builder.info
    splits = {name: [int(n) for n in split.shard_lengths] for name, split in sorted(info.splits.items())}
    payload = {
        "name": info.name, "version": str(info.version),
        "features": {k: [list(v.shape), _dtype(v).name] for k, v in sorted(self.serialized_info.items())},
        "splits": splits,
        "standardization": self.standardization.name,
        "standardize_code": inspect.getsource(self.standardization.fn),
        "kwargs": {k: self.kwargs[k] for k in sorted(self.kwargs)},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _builder(entry):
  """tfds builder for an entry: a version directory, or a data_dir containing <name>/<version>."""
  path = os.path.expanduser(str(entry.data_dir))
  if not path:
    return tfds.builder(entry.name)
  if tf.io.gfile.exists(os.path.join(path, "dataset_info.json")):
    return tfds.builder_from_directory(path)
  named = os.path.join(path, entry.name)
  if tf.io.gfile.isdir(named):
    versions = sorted(v for v in tf.io.gfile.listdir(named)
                      if tf.io.gfile.exists(os.path.join(named, v.rstrip("/"), "dataset_info.json")))
    if versions:
      return tfds.builder_from_directory(os.path.join(named, versions[-1].rstrip("/")))
  raise errors.DataError(f"no tfds dataset found (expected dataset_info.json in '{path}' or in "
                         f"'{named}/<version>/')", dataset=entry.name, file=path)


def open_dataset(entry, data_cfg) -> OpenedDataset:
  """Open one dataset entry of ``data_cfg.datasets`` and check its schema against its standardisation."""
  standardization = datasets.get(entry.standardize or entry.name)
  builder = _builder(entry)
  directory = str(builder.data_dir)
  image_keys = dict(standardization.image_keys)
  image_keys.update({k: v for k, v in dict(entry.get("image_keys", {})).items()})
  kwargs = dict(standardization.default_kwargs)
  kwargs.update(dict(entry.get("standardize_kwargs", {})))
  unknown = set(kwargs) - set(inspect.signature(standardization.fn).parameters)
  if unknown:
    raise errors.DataError(f"unknown standardize_kwargs {sorted(unknown)} for standardisation "
                           f"'{standardization.name}'", dataset=entry.name)
  serialized = _flatten(builder.info.features.get_serialized_info())
  requirements = dict(standardization.requirements(data_cfg, image_keys))
  optical_flow_key = ""
  if data_cfg.get("optical_flow", False) and standardization.optical_flow_key:
    flow_key = f"steps/observation/{standardization.optical_flow_key}"
    if flow_key in serialized:  # optional field: read (and validated per episode) only where it exists
      requirements[flow_key] = ((), "bytes")
      optical_flow_key = standardization.optical_flow_key
  for key, (shape, kind) in requirements.items():
    if key not in serialized:
      field = ""
      raise errors.DataError(f"missing key in the dataset's features (needed by standardisation "
                             f"'{standardization.name}'); available: {sorted(serialized)}{field}",
                             dataset=entry.name, file=directory, key=key, kind=errors.MISSING_KEY)
    info = serialized[key]
    got_shape = tuple(info.shape[1:]) if key.startswith("steps/") else tuple(info.shape)
    if _kind(_dtype(info)) != kind:
      raise errors.DataError(f"wrong dtype {_dtype(info).name} (expected a {kind} feature)",
                             dataset=entry.name, file=directory, key=key, kind=errors.BAD_SHAPE)
    if got_shape != tuple(shape):
      hint = ""
      if "scene_flow" in key:
        hint = (f" — data config scene_flow_num_points={data_cfg.scene_flow_num_points}, "
                f"scene_flow_horizon={data_cfg.scene_flow_horizon} must match the dataset's K and T")
      raise errors.DataError(f"wrong shape {got_shape} per step (expected {tuple(shape)}){hint}",
                             dataset=entry.name, file=directory, key=key, kind=errors.BAD_SHAPE)
  action_mask = tuple(entry.get("action_normalization_mask", ()) or standardization.action_normalization_mask)
  proprio_mask = tuple(entry.get("proprio_normalization_mask", ()) or standardization.proprio_normalization_mask)
  return OpenedDataset(name=entry.name, directory=directory, builder=builder, standardization=standardization,
                       image_keys=image_keys, kwargs=kwargs, requirements=requirements, serialized_info=serialized,
                       action_mask=action_mask, proprio_mask=proprio_mask, entry=entry,
                       optical_flow_key=optical_flow_key)


@dataclasses.dataclass(frozen=True)
class FileSlice:
  filename: str
  skip: int
  take: int  # -1 = to the end


def _train_count(splits, split: str, val_fraction: float, opened) -> int:
  """Episodes of ``split`` kept for training when the last ``val_fraction`` of them is used for validation."""
  if split not in splits:
    raise errors.DataError(f"unknown split '{split}' (available: {sorted(splits)})", dataset=opened.name,
                           file=opened.directory)
  total = int(splits[split].num_examples)
  return max(1, min(total - 1, int(round(total * (1.0 - val_fraction))))) if total > 1 else total


def file_instructions(opened: OpenedDataset, which: str, val_fraction: float) -> list[FileSlice]:
  """Files (with record skip/take) of the 'train' or 'val' part of a dataset."""
  splits = opened.builder.info.splits
  entry = opened.entry
  if which == "train":
    split = entry.get("train_split", "train") or "train"
    if not entry.get("val_split", "") and "val" not in splits and val_fraction > 0:
      split = f"{split}[:{_train_count(splits, split, val_fraction, opened)}]"
  else:
    split = entry.get("val_split", "") or ("val" if "val" in splits else "")
    if not split:
      if val_fraction <= 0:
        raise errors.DataError("no 'val' split and val_fraction is 0: no validation data", dataset=opened.name)
      base = entry.get("train_split", "train") or "train"
      split = f"{base}[{_train_count(splits, base, val_fraction, opened)}:]"
  try:
    instructions = splits[split].file_instructions
  except (KeyError, ValueError) as exc:
    raise errors.DataError(f"unknown split '{split}' (available: {sorted(splits)})", dataset=opened.name,
                           file=opened.directory) from exc
  out = []
  for ins in instructions:
    filename = ins.filename if os.path.isabs(ins.filename) or "://" in ins.filename else \
        os.path.join(opened.directory, ins.filename)
    if ins.take == 0:
      continue
    out.append(FileSlice(filename, int(ins.skip), int(ins.take)))
  if not out:
    raise errors.DataError(f"split '{split}' has no episodes", dataset=opened.name, file=opened.directory)
  return out


def shard_for_process(files: list[FileSlice], process_index: int, process_count: int):
  """Files this process reads, and the record-level shard (index, count) to apply inside them, if any.

  With at least as many files as processes each process reads ``files[process_index::process_count]`` (disjoint
  files). With fewer files every process reads every file but keeps every ``process_count``-th episode.
  """
  if process_count <= 1:
    return files, None
  if len(files) >= process_count:
    return files[process_index::process_count], None
  return files, (process_index, process_count)


def _tf_record_iterator(path):
  """Raw records of one TFRecord file (C++ reader with CRC checks; raises DataLossError on corruption)."""
  try:  # the v1 iterator logs a deprecation notice; it is the one reader that yields per file in Python
    from tensorflow.python.util import deprecation

    silence = deprecation.silence()
  except (ImportError, AttributeError):  # pragma: no cover
    silence = warnings.catch_warnings()
  with silence:
    return tf.compat.v1.io.tf_record_iterator(path)


def _episode_label(index: int, features) -> str:
  label = str(index)
  if "episode_metadata/file_path" in features:
    values = features["episode_metadata/file_path"].bytes_list.value
    if values:
      label += f" ({values[0].decode('utf-8', 'replace')})"
  return label


def validate_episode(opened: OpenedDataset, raw: bytes, *, filename: str, index: int, data_cfg) -> str | None:
  """Check one serialized episode. Returns None if fine, the kind of a *filter* skip, or raises DataError."""
  features = tf.train.Example.FromString(raw).features.feature
  episode = _episode_label(index, features)
  where = dict(dataset=opened.name, file=filename, episode=episode)
  lengths = {}
  missing = []
  for key, (shape, kind) in opened.requirements.items():
    if key not in features:
      missing.append(key)
      continue
    feature = features[key]
    which = feature.WhichOneof("kind")
    values = getattr(feature, which).value if which else []
    expected = {"float": "float_list", "int": "int64_list", "bytes": "bytes_list"}[kind]
    if which is not None and which != expected and len(values):
      raise errors.DataError(f"stored as {which}, expected {expected}", key=key, kind=errors.BAD_SHAPE, **where)
    per_step = int(np.prod(shape)) if shape else 1
    if len(values) % per_step:
      raise errors.DataError(f"{len(values)} values are not a whole number of steps of shape {tuple(shape)}",
                             key=key, kind=errors.BAD_SHAPE, **where)
    if key.startswith("steps/"):
      lengths[key] = len(values) // per_step
  step_missing = [k for k in missing if k.startswith("steps/")]
  if missing and not (step_missing == missing and not any(lengths.values())):
    raise errors.DataError(f"missing key (episode has {sorted(features)})", key=missing[0],
                           kind=errors.MISSING_KEY, **where)
  distinct = set(lengths.values())
  if len(distinct) > 1:
    raise errors.DataError(f"keys have different numbers of steps: {lengths}", key=min(lengths, key=lengths.get),
                           kind=errors.BAD_SHAPE, **where)
  length = distinct.pop() if distinct else 0
  if length < max(1, opened.standardization.min_length):
    raise errors.DataError(f"episode has {length} steps; standardisation '{opened.standardization.name}' needs "
                           f"at least {max(1, opened.standardization.min_length)}", kind=errors.ZERO_LENGTH,
                           key="steps", **where)
  for key in opened.standardization.finite_keys:
    if key in features:
      values = np.asarray(features[key].float_list.value, np.float32)
      bad = ~np.isfinite(values)
      if bad.any():
        shape = opened.requirements[key][0]
        step = int(np.argmax(bad)) // (int(np.prod(shape)) if shape else 1)
        raise errors.DataError(f"NaN/inf values (first at step {step})", key=key, kind=errors.NON_FINITE, **where)
  if data_cfg.empty_instruction == "skip":
    values = features[opened.standardization.instruction_key].bytes_list.value
    if not values or not values[0].strip():
      return errors.EMPTY_INSTRUCTION
  if data_cfg.max_abs_action > 0:
    for key in opened.standardization.action_keys:
      values = np.asarray(features[key].float_list.value, np.float32)
      if values.size and np.abs(values).max() > data_cfg.max_abs_action:
        return errors.ACTION_BOUNDS
  return None


def episode_records(opened: OpenedDataset, files: list[FileSlice], *, data_cfg, seed: int, shuffle: bool,
                    repeat: bool, counter: errors.SkipCounter, record_shard=None):
  """A generator function yielding ``(file_index, episode_index, serialized_episode)``.

  Epoch ``e`` reads the files in the order ``rng([seed, e]).permutation`` (when ``shuffle``), ``cycle_length``
  files round-robin. Bad episodes / files raise DataError or are counted (``data_cfg.skip_bad``); files found
  corrupt are not read again in later epochs.
  """
  cycle_length = max(1, int(data_cfg.file_cycle_length))
  skip_bad = bool(data_cfg.skip_bad)
  validate = bool(data_cfg.validate_episodes)

  def file_stream(file_index: int):
    piece = files[file_index]
    stop = None if piece.take < 0 else piece.skip + piece.take
    index = -1
    try:
      for index, raw in enumerate(_tf_record_iterator(piece.filename)):
        if index < piece.skip:
          continue
        if stop is not None and index >= stop:
          break
        if record_shard is not None and index % record_shard[1] != record_shard[0]:
          continue
        yield index, raw
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError) as exc:
      raise errors.DataError(f"corrupt or truncated TFRecord file after record {index}: "
                             f"{str(exc).splitlines()[0]}", dataset=opened.name, file=piece.filename,
                             kind=errors.CORRUPT_FILE) from exc
    except tf.errors.NotFoundError as exc:
      raise errors.DataError("file not found", dataset=opened.name, file=piece.filename,
                             kind=errors.CORRUPT_FILE) from exc

  def generator() -> Iterator:
    bad_files: set[int] = set()
    epoch = 0
    while True:
      order = np.arange(len(files))
      if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(files))
      order = [int(i) for i in order if int(i) not in bad_files]
      if not order:
        raise errors.DataError("no readable files left (all were corrupt)", dataset=opened.name)
      pending = list(order)
      active: list = []
      yielded = 0
      while pending or active:
        while pending and len(active) < cycle_length:
          file_index = pending.pop(0)
          active.append((file_index, file_stream(file_index)))
        for slot in list(active):
          file_index, stream = slot
          try:
            index, raw = next(stream)
          except StopIteration:
            active.remove(slot)
            continue
          except errors.DataError as error:
            active.remove(slot)
            bad_files.add(file_index)
            errors.handle(error, skip_bad, counter)
            continue
          if validate:
            try:
              filtered = validate_episode(opened, raw, filename=files[file_index].filename, index=index,
                                          data_cfg=data_cfg)
            except errors.DataError as error:
              errors.handle(error, skip_bad, counter)
              continue
            if filtered is not None:
              counter.record(errors.DataError(f"filtered ({filtered})", dataset=opened.name, episode=str(index),
                                              file=files[file_index].filename, kind=filtered))
              continue
          yielded += 1
          yield np.int32(file_index), np.int32(index), raw
      if not repeat:
        return
      if yielded == 0:
        raise errors.DataError("no usable episode in a whole pass over the files (all skipped or filtered: "
                               f"{counter.as_dict().get(opened.name, {})})", dataset=opened.name)
      epoch += 1

  return generator


def episode_dataset(opened: OpenedDataset, files: list[FileSlice], **kwargs) -> tf.data.Dataset:
  """tf.data.Dataset of (file_index int32, episode_index int32, serialized string) from episode_records."""
  generator = episode_records(opened, files, **kwargs)
  signature = (tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.int32), tf.TensorSpec((), tf.string))
  return tf.data.Dataset.from_generator(generator, output_signature=signature)


def _skip_image_decoding(features):
  """tfds decoders that keep every Image feature as its encoded string (decode later, after shuffling)."""
  def build(feature):
    if isinstance(feature, tfds.features.Image):
      return tfds.decode.SkipDecoding()
    if isinstance(feature, tfds.features.Dataset):
      inner = build(feature.feature)
      return inner
    if isinstance(feature, tfds.features.FeaturesDict):
      out = {}
      for key, value in feature.items():
        sub = build(value)
        if sub is not None:
          out[key] = sub
      return out or None
    return None

  return build(features) or {}


def decode_episode(opened: OpenedDataset, serialized: tf.Tensor):
  """Serialized episode -> (steps: dict of tensors with a leading step axis, metadata dict). Images stay encoded."""
  features = opened.builder.info.features
  decoded = features.deserialize_example(serialized, decoders=_skip_image_decoding(features))
  steps = decoded["steps"]
  if isinstance(steps, tf.data.Dataset):
    steps = steps.batch(2**31 - 1).get_single_element()
  metadata = decoded.get("episode_metadata", {})
  return steps, metadata
