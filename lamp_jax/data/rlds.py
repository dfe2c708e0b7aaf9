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
  round-robin, each episode validated on the host the first time it is read (keys, shapes, NaN / inf in every
  float key, length, every image's header: ``image_headers``) so an error names the dataset, file, episode and
  key, or is counted once with ``skip_bad`` (later passes skip it without reading it again). Corrupt TFRecord
  files, and files holding fewer records than the dataset info promises (a shard cut at a record boundary),
  too.
* :func:`decode_episode` — serialized episode -> (steps dict with a leading step axis, episode metadata); images
  stay JPEG strings so shuffling happens before decode.
"""

from __future__ import annotations

import dataclasses
import hashlib
import concurrent.futures
import inspect
import json
import logging
import os
import threading
import warnings
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lamp_jax.data import datasets, errors, image_headers

log = logging.getLogger("lamp_jax.data")

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
  # Without stored flow images and with data.optical_flow_estimator on: the estimator ('dis' | 'farneback') and the
  # observation key of the primary-camera frames it reads ('' = no estimation).
  optical_flow_estimator: str = ""
  optical_flow_source_key: str = ""
  # Serialized key -> declared (height, width, channels) (None where variable) of the image features read.
  image_features: dict = dataclasses.field(default_factory=dict)
  _content: str = ""

  def standardize(self, steps, metadata):
    return self.standardization.fn(steps, metadata, **self.kwargs)

  def content_fingerprint(self) -> str:
    """Cheap hash of the files' contents (:func:`content_fingerprint`), computed once per opened dataset."""
    if not self._content:
      self._content = content_fingerprint(self.builder)
    return self._content

  def info_hash(self) -> str:
    """Hash of the dataset (name, version, feature spec, split sizes, file contents) and its standardisation
    (code + kwargs): the key of the statistics cache, checked again when statistics are loaded."""
    info = self.builder.info
    splits = {name: [int(n) for n in split.shard_lengths] for name, split in sorted(info.splits.items())}
    payload = {
        "name": info.name, "version": str(info.version),
        "features": {k: [list(v.shape), _dtype(v).name] for k, v in sorted(self.serialized_info.items())},
        "splits": splits,
        "content": self.content_fingerprint(),
        "standardization": self.standardization.name,
        "standardize_code": inspect.getsource(self.standardization.fn),
        "kwargs": {k: self.kwargs[k] for k in sorted(self.kwargs)},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


FINGERPRINT_BYTES = 1 << 16  # bytes hashed at the start and at the end of every file


def _file_fingerprint(path: str) -> str:
  with tf.io.gfile.GFile(path, "rb") as f:
    size = f.size()
    head = f.read(FINGERPRINT_BYTES)
    tail = b""
    if size > 2 * FINGERPRINT_BYTES:
      f.seek(size - FINGERPRINT_BYTES)
      tail = f.read(FINGERPRINT_BYTES)
  return f"{os.path.basename(path)}:{size}:{hashlib.sha256(head + tail).hexdigest()}"


def content_fingerprint(builder) -> str:
  """Hash of every data file's name, size and first and last 64 KiB (all splits).

  Cheap (two reads per file, files in parallel; no full pass over the data), and it changes when a dataset is
  regenerated with the same name, version, features and record counts (another seed writes other bytes at the
  start of every shard: the first episode's images and values).
  """
  paths = []
  for split in builder.info.splits.values():
    for ins in split.file_instructions:
      name = ins.filename
      paths.append(name if os.path.isabs(name) or "://" in name else os.path.join(str(builder.data_dir), name))
  paths = sorted(set(paths))
  with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, max(1, len(paths)))) as pool:
    parts = list(pool.map(_file_fingerprint, paths))
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def finite_keys(requirements) -> tuple[str, ...]:
  """Every float key a standardisation reads: each is checked for NaN / inf in every episode."""
  return tuple(key for key, (_, kind) in requirements.items() if kind == "float")


def _image_features(features, prefix="") -> dict:
  """Serialized key -> declared (height, width, channels) of every tfds Image feature."""
  out = {}
  if isinstance(features, tfds.features.Image):
    shape = tuple(features.shape)
    return {prefix.rstrip("/"): (shape + (None,) * 3)[:3]}
  if isinstance(features, tfds.features.Dataset):
    return _image_features(features.feature, prefix)
  if isinstance(features, tfds.features.FeaturesDict):
    for key, value in features.items():
      out.update(_image_features(value, f"{prefix}{key}/"))
  return out


_LOGGED_GEOMETRY: set = set()
_LOGGED_LOCK = threading.Lock()


def check_image_geometry(opened_name: str, key: str, height, width, channels, data_cfg, *, where=None) -> None:
  """Images whose aspect ratio differs from ``data.image_size`` (they get distorted by the resize) or that do not
  have 3 channels (converted: grey replicated, alpha dropped): a DataError when ``data.image_mismatch='error'``,
  else logged once per (dataset, key, stored geometry). Same-aspect resizes are the normal case and silent."""
  out_h, out_w = (int(s) for s in data_cfg.image_size)
  problems = []
  if height and width and abs(height / width - out_h / out_w) > 0.01 * (out_h / out_w):
    problems.append(f"aspect ratio {width / height:.3f} (width / height) differs from data.image_size "
                    f"{out_h}x{out_w} ({out_w / out_h:.3f}): resized with distortion")
  if channels and channels != 3:
    problems.append(f"{channels} channel{'s' if channels != 1 else ''}, converted to RGB "
                    f"({'grey replicated' if channels == 1 else 'alpha dropped' if channels == 4 else 'converted'})")
  if not problems:
    return
  stored = f"{height or '?'}x{width or '?'}x{channels or '?'}"
  message = f"stored images {stored}: " + "; ".join(problems)
  mode = str(data_cfg.get("image_mismatch", "log"))
  if mode == "error":
    raise errors.DataError(message + " (data.image_mismatch='error'; 'log' accepts it with a warning)",
                           dataset=opened_name, key=key, kind=errors.BAD_SHAPE, **(where or {}))
  if mode != "log":
    raise errors.DataError(f"data.image_mismatch='{mode}' is not 'log' or 'error'")
  token = (opened_name, key, stored, out_h, out_w)
  with _LOGGED_LOCK:
    if token in _LOGGED_GEOMETRY:
      return
    _LOGGED_GEOMETRY.add(token)
  log.warning("dataset '%s', key '%s': %s (data.image_mismatch='log'; 'error' refuses it)", opened_name, key,
              message)


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
  # Only the cameras the pipeline emits are read (and checked): data.cameras.
  read_keys = {camera: key for camera, key in image_keys.items() if camera in tuple(data_cfg.cameras)}
  requirements = dict(standardization.requirements(data_cfg, read_keys))
  optical_flow_key = ""
  if data_cfg.get("optical_flow", False) and standardization.optical_flow_key:
    flow_key = f"steps/observation/{standardization.optical_flow_key}"
    if flow_key in serialized:  # optional field: read (and validated per episode) only where it exists
      requirements[flow_key] = ((), "bytes")
      optical_flow_key = standardization.optical_flow_key
  estimator, source_key = _flow_estimation(entry, data_cfg, image_keys, optical_flow_key, directory)
  if source_key:
    requirements[f"steps/observation/{source_key}"] = ((), "bytes")
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
  declared = _image_features(builder.info.features)
  image_features = {key: declared[key] for key in requirements if key in declared}
  camera_keys = {f"steps/observation/{k}" for k in image_keys.values() if k}
  for key, (height, width, channels) in image_features.items():
    if key in camera_keys:
      check_image_geometry(entry.name, key, height, width, channels, data_cfg, where={"file": directory})
  return OpenedDataset(name=entry.name, directory=directory, builder=builder, standardization=standardization,
                       image_keys=image_keys, kwargs=kwargs, requirements=requirements, serialized_info=serialized,
                       action_mask=action_mask, proprio_mask=proprio_mask, entry=entry,
                       optical_flow_key=optical_flow_key, optical_flow_estimator=estimator,
                       optical_flow_source_key=source_key, image_features=image_features)


FLOW_ESTIMATORS = ("off", "dis", "farneback")


def _flow_estimation(entry, data_cfg, image_keys: dict, optical_flow_key: str, directory: str) -> tuple[str, str]:
  """(estimator, primary-camera observation key) when this dataset's flow images are to be estimated, else
  ('', '') (data.optical_flow off, the estimator off, or the dataset stores exact flow images)."""
  method = str(data_cfg.get("optical_flow_estimator", "off") or "off")
  if method not in FLOW_ESTIMATORS:
    raise errors.DataError(f"data.optical_flow_estimator='{method}' is not one of {FLOW_ESTIMATORS}")
  if not data_cfg.get("optical_flow", False) or method == "off" or optical_flow_key:
    return "", ""
  source = image_keys.get("image_primary", "")
  if not source:
    raise errors.DataError("data.optical_flow_estimator estimates flow on the primary camera, but this dataset has "
                           "no image_primary (set the entry's image_keys.image_primary)", dataset=entry.name,
                           file=directory, key="image_primary")
  return method, source


@dataclasses.dataclass(frozen=True)
class FileSlice:
  filename: str
  skip: int
  take: int  # -1 = to the end
  num_records: int = -1  # records the dataset info promises in the whole file (-1 = unknown)

  def expected_end(self) -> int:
    """Index one past the last record this slice must find (-1 = unknown)."""
    if self.take >= 0:
      return self.skip + self.take
    return self.num_records


def _train_count(splits, split: str, val_fraction: float, opened) -> int:
  """Episodes of ``split`` kept for training when the last ``val_fraction`` of them is used for validation."""
  if split not in splits:
    if "[" in split:
      raise errors.DataError(f"train_split '{split}' is a slice and the dataset has no 'val' split: give the "
                             "dataset entry's val_split too (the val_fraction carve-out applies to whole splits)",
                             dataset=opened.name, file=opened.directory)
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
    in_shard = getattr(ins, "examples_in_shard", None)
    out.append(FileSlice(filename, int(ins.skip), int(ins.take), int(in_shard) if in_shard is not None else -1))
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
  if opened.optical_flow_estimator and length < 2:
    raise errors.DataError(f"an episode of {length} frame has no frame t + k to estimate optical flow to "
                           f"(data.optical_flow_estimator='{opened.optical_flow_estimator}')",
                           key=f"steps/observation/{opened.optical_flow_source_key}", kind=errors.SINGLE_FRAME,
                           **where)
  for key in finite_keys(opened.requirements):
    if key in features:
      values = np.asarray(features[key].float_list.value, np.float32)
      bad = ~np.isfinite(values)
      if bad.any():
        shape = opened.requirements[key][0]
        step = int(np.argmax(bad)) // (int(np.prod(shape)) if shape else 1)
        raise errors.DataError(f"NaN/inf values (first at step {step})", key=key, kind=errors.NON_FINITE, **where)
  for key, declared in opened.image_features.items():
    if key not in features:
      continue
    seen = set()
    for step, data in enumerate(features[key].bytes_list.value):
      if not data:
        continue  # an empty string is a missing image (zeros), not a corrupt one
      try:
        geometry = image_headers.image_size(data)
      except image_headers.ImageHeaderError as exc:
        raise errors.DataError(f"undecodable image at step {step}: {exc}", key=key, kind=errors.CORRUPT_IMAGE,
                               **where) from exc
      if geometry not in seen:
        seen.add(geometry)
        height, width, channels = geometry
        if any(d is not None and g and d != g for d, g in zip(declared, geometry)):
          raise errors.DataError(f"image at step {step} is {height}x{width}x{channels}, the dataset's features "
                                 f"declare {declared}", key=key, kind=errors.BAD_SHAPE, **where)
        if key == f"steps/observation/{opened.optical_flow_key}" or None in declared:
          check_image_geometry(opened.name, key, height, width, channels, data_cfg, where=where)
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


# Per-episode states kept by the reader (one byte per record of every file it reads).
_UNKNOWN, _GOOD, _BAD = 0, 1, 2


def episode_records(opened: OpenedDataset, files: list[FileSlice], *, data_cfg, seed: int, shuffle: bool,
                    repeat: bool, counter: errors.SkipCounter, record_shard=None):
  """A generator function yielding ``(file_index, episode_index, serialized_episode)``.

  Epoch ``e`` reads the files in the order ``rng([seed, e]).permutation`` (when ``shuffle``), ``cycle_length``
  files round-robin. Bad episodes / files raise DataError or are counted (``data_cfg.skip_bad``). Each episode is
  validated the first time it is read; the verdict is remembered (one byte per record), so later passes neither
  validate a good episode again nor count a bad one again (``SkipCounter.occurrences`` counts every pass).
  Files found corrupt are not read again. A file that ends before the record count its dataset info promises
  (e.g. a shard rewritten or cut at a record boundary: valid framing, whole episodes missing) is an error naming
  it (kind ``missing_records``), or a counted skip of what is missing.
  """
  cycle_length = max(1, int(data_cfg.file_cycle_length))
  skip_bad = bool(data_cfg.skip_bad)
  validate = bool(data_cfg.validate_episodes)
  states = [np.zeros(max(0, f.expected_end()), np.uint8) if f.expected_end() >= 0 else None for f in files]
  errors_of: dict = {}  # (file_index, record index) -> the DataError of a bad episode (re-recorded each pass)

  def file_stream(file_index: int):
    piece = files[file_index]
    stop = piece.expected_end()
    index = -1
    try:
      for index, raw in enumerate(_tf_record_iterator(piece.filename)):
        if index < piece.skip:
          continue
        if stop >= 0 and index >= stop:
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
    if stop >= 0 and index + 1 < stop:
      promised = piece.num_records if piece.num_records >= 0 else stop
      raise errors.DataError(f"the file ends after {index + 1} records; the dataset info promises {promised} "
                             f"(records {index + 1}..{stop - 1} of this split are missing: a shard cut or "
                             "rewritten at a record boundary)", dataset=opened.name, file=piece.filename,
                             kind=errors.MISSING_RECORDS)

  def check(file_index: int, index: int, raw: bytes) -> bool:
    """True if the episode is to be yielded; records / raises its error otherwise."""
    state = states[file_index]
    known = state[index] if state is not None and index < state.size else _UNKNOWN
    if known == _GOOD or not validate:
      return True
    if known == _BAD:
      counter.record(errors_of[(file_index, index)])  # counted once per dataset; occurrences per pass
      return False
    filename = files[file_index].filename
    try:
      filtered = validate_episode(opened, raw, filename=filename, index=index, data_cfg=data_cfg)
    except errors.DataError as error:
      errors.handle(error, skip_bad, counter)
      filtered, error_of = error.kind, error
    else:
      error_of = None if filtered is None else errors.DataError(
          f"filtered ({filtered})", dataset=opened.name, episode=str(index), file=filename, kind=filtered)
      if error_of is not None:
        counter.record(error_of)
    if state is not None and index < state.size:
      state[index] = _GOOD if filtered is None else _BAD
      if error_of is not None:
        errors_of[(file_index, index)] = error_of
    return filtered is None

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
            if error.kind != errors.MISSING_RECORDS:
              bad_files.add(file_index)  # (a short file's records are still read, and the shortfall counted)
            errors.handle(error, skip_bad, counter)
            continue
          if not check(file_index, index, raw):
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
