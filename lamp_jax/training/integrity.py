"""Per-array checksums and finiteness of a train state: what a checkpoint was written with, checked on restore.

Orbax guards a checkpoint's directory layout (tmp-dir rename, ``commit_success.txt``) and the crc32c of its
zarr shard *index*, not the array bytes. So every checkpoint also stores, per array of the saved tree, the
record ``{"shape", "dtype", "hash", "nonfinite"}`` (the ``integrity`` item of ``training/checkpoints.py``):

  hash       uint32: sum over elements i of fmix32(bits_i XOR fmix32(i)) mod 2^32, where bits_i is the element's
             bit pattern widened to uint32 (64-bit dtypes: both 32-bit halves, as two elements) and fmix32 is
             murmur3's finaliser (a bijection on uint32). Changing any one element changes the hash; changing
             several cancels with probability ~2^-32. The sum is exact integer arithmetic mod 2^32, so the
             value does not depend on the reduction order, the mesh or the sharding the arrays are restored into.
  nonfinite  int: NaN / inf elements of a floating array (0 for integer arrays).

Both are computed on the devices in one jitted pass over the state (each device reduces its own shards; no
host copy), before the save is handed to orbax. A restored tree is corrupted when an array's hash, shape or
dtype differs from its record, when an array has no record, or when any floating array holds a non-finite
value (the trainer never saves one: a non-finite step stops the run first).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lamp_jax.training import optim

FORMAT = 1
ALGORITHM = "sum_i fmix32(bits_i ^ fmix32(i)) mod 2^32"


@dataclasses.dataclass(frozen=True)
class ArrayRecord:
  """The checksum record of one array."""
  shape: tuple[int, ...]
  dtype: str
  hash: int
  nonfinite: int

  def to_json(self) -> dict:
    return {"shape": list(self.shape), "dtype": self.dtype, "hash": int(self.hash), "nonfinite": int(self.nonfinite)}

  @classmethod
  def from_json(cls, d: dict) -> "ArrayRecord":
    return cls(shape=tuple(int(s) for s in d["shape"]), dtype=str(d["dtype"]), hash=int(d["hash"]),
               nonfinite=int(d["nonfinite"]))


def _fmix32(x: jax.Array) -> jax.Array:
  """murmur3's 32-bit finaliser: a bijection on uint32 with full avalanche."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _bits_u32(x: jax.Array) -> jax.Array:
  """The element bit patterns of ``x`` as uint32, in ``x``'s shape (64-bit elements: a trailing axis of 2, the
  low and high halves). Nothing is flattened, so sharded arrays are reduced where they live."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if size == 1:
    return jax.lax.bitcast_convert_type(x, jnp.uint8).astype(jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  raise TypeError(f"no checksum for arrays of dtype {x.dtype}")


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """uint32 C-order flat index of every element (mod 2^32), built from per-axis iotas."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  return index


def _array_digest(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  bits = _bits_u32(x)
  digest = jnp.sum(_fmix32(bits ^ _fmix32(_flat_index(bits.shape))), dtype=jnp.uint32)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    nonfinite = jnp.sum(~jnp.isfinite(x), dtype=jnp.int32)
  else:
    nonfinite = jnp.zeros((), jnp.int32)
  return digest, nonfinite


@jax.jit
def _digests(leaves: list) -> list:
  return [_array_digest(x) for x in leaves]


def flat_arrays(tree: Any) -> dict[str, Any]:
  """{'/'-joined path: array} of a tree's leaves (``optim.param_path``: 'params/vlm/.../kernel')."""
  return {optim.param_path(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _dtype_name(x) -> str:
  dtype = x.dtype
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return str(dtype)
  return np.dtype(dtype).name


def records(tree: Any) -> dict[str, ArrayRecord]:
  """{path: ArrayRecord} of every array of ``tree`` (jax Arrays, possibly sharded over processes, or numpy)."""
  flat = flat_arrays(tree)
  names = list(flat)
  leaves = [flat[n] if isinstance(flat[n], jax.Array) else jnp.asarray(flat[n]) for n in names]
  digests = jax.device_get(_digests(leaves)) if leaves else []
  return {n: ArrayRecord(shape=tuple(int(s) for s in np.shape(x)), dtype=_dtype_name(x), hash=int(h),
                         nonfinite=int(bad))
          for n, x, (h, bad) in zip(names, leaves, digests)}


def to_json(recs: dict[str, ArrayRecord]) -> dict:
  """The JSON item written beside a checkpoint's state."""
  return {"format": FORMAT, "algorithm": ALGORITHM, "arrays": {n: r.to_json() for n, r in recs.items()}}


def from_json(item: dict) -> dict[str, ArrayRecord]:
  if not isinstance(item, dict) or int(item.get("format", -1)) != FORMAT or not isinstance(item.get("arrays"), dict):
    raise ValueError(f"integrity record has an unknown layout (format {item.get('format') if isinstance(item, dict) else None!r}, "
                     f"expected {FORMAT})")
  return {n: ArrayRecord.from_json(r) for n, r in item["arrays"].items()}


def nonfinite_arrays(recs: dict[str, ArrayRecord]) -> list[str]:
  """'path: N non-finite of M' for every array with a NaN / inf."""
  return [f"{n}: {r.nonfinite} non-finite of {int(np.prod(r.shape, dtype=np.int64))} values"
          for n, r in recs.items() if r.nonfinite]


def compare(expected: dict[str, ArrayRecord], actual: dict[str, ArrayRecord], prefix: str = "") -> list[str]:
  """Problems of a restored tree (``actual``, paths relative to ``prefix``) against the saved records: one line per
  array, naming it. Only the records under ``prefix`` are compared (a partial restore of 'params/')."""
  want = {n[len(prefix):]: r for n, r in expected.items() if n.startswith(prefix)}
  problems = []
  for name in sorted(set(want) | set(actual)):
    full = prefix + name
    if name not in actual:
      problems.append(f"{full}: recorded at save time but not restored")
      continue
    if name not in want:
      problems.append(f"{full}: restored but has no checksum record")
      continue
    w, a = want[name], actual[name]
    if (w.shape, w.dtype) != (a.shape, a.dtype):
      problems.append(f"{full}: restored as {a.dtype}{list(a.shape)}, saved as {w.dtype}{list(w.shape)}")
    elif w.hash != a.hash:
      problems.append(f"{full}: checksum {a.hash:#010x} differs from the saved {w.hash:#010x} (the bytes changed)")
    if a.nonfinite:
      problems.append(f"{full}: {a.nonfinite} non-finite values")
  return problems
