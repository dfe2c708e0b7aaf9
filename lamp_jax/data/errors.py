"""Bad data → a clear error or a counted, logged skip; never a silent drop.

Every problem found in the data is described by a :class:`DataError` whose message names the dataset, the file
(where known), the episode and the key. With ``skip_bad=True`` in the data config the same problem is recorded in
a :class:`SkipCounter` (one counter per dataset and kind) and logged instead of raised.

Schema problems (a key missing from the dataset's feature spec, a declared shape or dtype that does not match what
the standardisation needs, an unknown dataset name, a statistics file that belongs to another dataset) are always
raised: skipping cannot repair them.
"""

from __future__ import annotations

import collections
import logging
import threading

log = logging.getLogger("lamp_jax.data")

# Marker used to recover our message from a TensorFlow error raised inside tf.data.
MESSAGE_MARKER = "[lamp_jax.data] "

# Kinds of skip (keys of SkipCounter.counts).
CORRUPT_FILE = "corrupt_file"
MISSING_KEY = "missing_key"
BAD_SHAPE = "bad_shape"
NON_FINITE = "non_finite"
ZERO_LENGTH = "zero_length"
MISSING_RECORDS = "missing_records"  # a file holds fewer records than the dataset info promises
CORRUPT_IMAGE = "corrupt_image"  # an encoded image that cannot be decoded (truncated, bad header, not an image)
SINGLE_FRAME = "single_frame"  # one frame: no o_{t+k} to estimate optical flow to (data.optical_flow_estimator)
EMPTY_INSTRUCTION = "empty_instruction"  # not an error: a configured filter, counted like the others
ACTION_BOUNDS = "action_out_of_bounds"  # not an error: a configured filter


class DataError(ValueError):
  """A problem in a dataset, its files or its statistics. The message names dataset/file/episode/key."""

  def __init__(self, message: str, *, dataset: str = "", file: str = "", episode: str = "", key: str = "",
               kind: str = ""):
    parts = []
    if dataset:
      parts.append(f"dataset '{dataset}'")
    if file:
      parts.append(f"file '{file}'")
    if episode != "":
      parts.append(f"episode {episode}")
    if key:
      parts.append(f"key '{key}'")
    where = ", ".join(parts)
    super().__init__(MESSAGE_MARKER + (f"{where}: {message}" if where else message))
    self.dataset, self.file, self.episode, self.key, self.kind = dataset, file, episode, key, kind


class SkipCounter:
  """Thread-safe counts of skipped episodes / files, per (dataset, kind).

  ``counts`` holds each bad episode or file ONCE per dataset (the first time it is found; logged then), however
  many passes over the data skip it again; ``occurrences()`` counts every skip, pass after pass. A skip is
  identified by its dataset, file and episode (``DataError`` fields), so the same problem seen again in a later
  pass (the reader remembers bad episodes and skips them without re-reading) is not counted twice.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self.counts: collections.Counter = collections.Counter()
    self._occurrences: collections.Counter = collections.Counter()
    self._seen: set = set()

  def record(self, error: DataError) -> None:
    key = (error.dataset, error.kind, error.file, error.episode)
    with self._lock:
      self._occurrences[(error.dataset, error.kind)] += 1
      first = key not in self._seen
      if first:
        self._seen.add(key)
        self.counts[(error.dataset, error.kind)] += 1
    if first:
      log.warning("skipping bad data (%s): %s", error.kind, error)

  def total(self, kind: str | None = None) -> int:
    with self._lock:
      return sum(v for (_, k), v in self.counts.items() if kind is None or k == kind)

  @staticmethod
  def _nested(counter) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (ds, kind), v in sorted(counter.items()):
      out.setdefault(ds, {})[kind] = v
    return out

  def as_dict(self) -> dict[str, dict[str, int]]:
    """{dataset: {kind: distinct bad episodes / files}}."""
    with self._lock:
      return self._nested(self.counts)

  def occurrences(self) -> dict[str, dict[str, int]]:
    """{dataset: {kind: skips over all passes}} (a bad episode counts once per pass that met it)."""
    with self._lock:
      return self._nested(self._occurrences)


def handle(error: DataError, skip_bad: bool, counter: SkipCounter) -> None:
  """Raise ``error`` or, when ``skip_bad``, count and log it."""
  if not skip_bad:
    raise error
  counter.record(error)


def reraise_from_tf(exc: Exception, context: str) -> None:
  """Turn a TensorFlow error that carries one of our messages back into a DataError; else add context."""
  text = str(exc)
  if MESSAGE_MARKER in text:
    msg = text[text.index(MESSAGE_MARKER) + len(MESSAGE_MARKER):].strip()
    msg = msg.split("\n")[0].split("\t")[0]
    raise DataError(msg) from exc
  first = text.splitlines()[0] if text else repr(exc)
  if any(marker in text for marker in ("jpeg", "JPEG", "PNG", "DecodeImage", "DecodeJpeg", "DecodePng")):
    raise DataError(f"{context}: an image failed to decode although its header passed the reader's checks "
                    f"(lamp_jax.data.image_headers), so its file and episode are not known here: {first}",
                    kind=CORRUPT_IMAGE) from exc
  raise DataError(f"{context}: TensorFlow error while reading data: {first}") from exc
