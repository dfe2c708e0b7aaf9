"""Fault injection into a written checkpoint step (``<workdir>/checkpoints/<step>``), for the integrity tests.

Arrays are rewritten in place through tensorstore, inside orbax's OCDBT store, leaving every other file (orbax's
metadata, the ``integrity`` checksums) as written: the on-disk effect of a bit flip in one tensor.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import tensorstore as ts


def step_dir(workdir, step: int) -> str:
  return os.path.join(str(workdir), "checkpoints", str(step))


def _array_store(directory: str, array: str):
  """The tensorstore of one saved array; ``array`` is its '/'-path in the state ('params/motion_in/dense/kernel')."""
  state = os.path.join(directory, "state")
  spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{state}/",
                                        "path": array.replace("/", ".") + "/"}}
  return ts.open(spec).result()


def read_array(directory: str, array: str) -> np.ndarray:
  return np.asarray(_array_store(directory, array).read().result())


def rewrite_array(directory: str, array: str, mutate) -> None:
  """Reads the array, applies ``mutate(np.ndarray) -> None`` to a copy and writes it back in place."""
  store = _array_store(directory, array)
  values = np.array(store.read().result())
  mutate(values)
  store.write(values).result()


def flip_bit(directory: str, array: str, index=(0, 0), bit: int = 30) -> None:
  """Flips one bit of one float32 element (bit 30: the exponent's top bit, 0.5 -> 1.7e38)."""
  def mutate(v):
    v.view(np.uint32)[index] ^= np.uint32(1 << bit)
  rewrite_array(directory, array, mutate)


def poison(directory: str, array: str) -> None:
  """A NaN and a 3.4e38 in the first two elements (the issue's corrupted embedding)."""
  def mutate(v):
    flat = v.reshape(-1)
    flat[0], flat[1] = np.nan, 3.4e38
  rewrite_array(directory, array, mutate)


def data_files(directory: str) -> list[str]:
  """The array data files of the state item, largest first."""
  out = []
  for root, _, files in os.walk(os.path.join(directory, "state")):
    if os.path.basename(root) == "d":
      out += [os.path.join(root, f) for f in files]
  return sorted(out, key=os.path.getsize, reverse=True)


def truncate_data_file(directory: str) -> str:
  """Cuts the largest array data file of the state item to half its size; returns its path."""
  path = data_files(directory)[0]
  with open(path, "r+b") as fh:
    fh.truncate(os.path.getsize(path) // 2)
  return path


def array_names(directory: str) -> list[str]:
  """'/'-paths of every array stored in the state item."""
  kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{os.path.join(directory, 'state')}/"}).result()
  return sorted({k.decode().split("/")[0].replace(".", "/") for k in kv.list().result()})


def _read_all(directory: str, names: list[str]) -> dict | None:
  try:
    return {n: read_array(directory, n) for n in names}
  except Exception:  # pylint: disable=broad-except  (an unreadable store is a visible corruption)
    return None


def flip_byte_in_data_file(directory: str, seed: int = 0, visible: bool = True) -> tuple[str, int]:
  """XORs one random byte of the largest data file with 0xFF; returns (file, offset). The bytes are zstd frames,
  mostly stored raw (floats do not compress), so most flips silently change a value. With ``visible`` the flip is
  moved to the next random offset until it changes an array or makes the store unreadable (some bytes are
  unused)."""
  path = data_files(directory)[0]
  names = array_names(directory) if visible else []
  before = _read_all(directory, names) if visible else None
  rng = np.random.default_rng(seed)
  with open(path, "rb") as fh:
    data = bytearray(fh.read())
  for _ in range(64):
    offset = int(rng.integers(len(data)))
    data[offset] ^= 0xFF
    with open(path, "wb") as fh:
      fh.write(bytes(data))
    if not visible:
      return path, offset
    after = _read_all(directory, names)
    if after is None or any(not np.array_equal(after[n], before[n], equal_nan=True) for n in names):
      return path, offset
    data[offset] ^= 0xFF  # no visible effect: undo and try another byte
  raise RuntimeError(f"no byte of {path} changed an array")


def delete_item(directory: str, item: str = "state") -> None:
  shutil.rmtree(os.path.join(directory, item))


FAULTS = {
    "bit_flip": lambda d: flip_bit(d, "params/motion_in/dense/kernel"),
    "nan_and_huge": lambda d: poison(d, "ema_params/action_in/dense/kernel"),
    "truncated_file": truncate_data_file,
    "flipped_file_byte": lambda d: flip_byte_in_data_file(d, seed=1),
    "deleted_state": lambda d: delete_item(d, "state"),
    "deleted_meta": lambda d: delete_item(d, "meta"),
}
