"""Wire format of the policy server: msgpack maps whose numpy arrays travel as ``{dtype, shape, bytes}``.

An array is encoded as the msgpack map ``{"__ndarray__": True, "dtype": "<f4", "shape": [H, 7], "data": <raw
bytes, C order>}``; numpy scalars become Python scalars. Only the dtypes in ``ALLOWED_DTYPES`` cross the wire
(no object arrays, no pickle): anything else raises ``CodecError`` on either side. Imports only numpy and msgpack.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

ARRAY_TAG = "__ndarray__"
# Little-endian numeric types and bool; byte order is made explicit so both ends agree.
ALLOWED_DTYPES = frozenset(np.dtype(t).str for t in (
    np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.int64, np.uint64,
    np.float16, np.float32, np.float64))


class CodecError(ValueError):
  """A message that is not valid msgpack of the wire format."""


def _encode_default(obj: Any) -> Any:
  if isinstance(obj, np.ndarray):
    dtype = obj.dtype.newbyteorder("<") if obj.dtype.byteorder == ">" else obj.dtype
    if dtype.str not in ALLOWED_DTYPES:
      raise CodecError(f"array dtype {obj.dtype} cannot be sent (allowed: {sorted(ALLOWED_DTYPES)})")
    arr = np.ascontiguousarray(obj, dtype=dtype)
    return {ARRAY_TAG: True, "dtype": dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}
  if isinstance(obj, np.generic):
    return obj.item()
  raise CodecError(f"cannot encode an object of type {type(obj).__name__}")


def _decode_hook(obj: dict) -> Any:
  if obj.get(ARRAY_TAG) is not True:
    return obj
  if set(obj) != {ARRAY_TAG, "dtype", "shape", "data"}:
    raise CodecError(f"array entry has keys {sorted(obj)}, expected {sorted([ARRAY_TAG, 'dtype', 'shape', 'data'])}")
  dtype_str, shape, data = obj["dtype"], obj["shape"], obj["data"]
  if not isinstance(dtype_str, str) or dtype_str not in ALLOWED_DTYPES:
    raise CodecError(f"array dtype {dtype_str!r} is not allowed (allowed: {sorted(ALLOWED_DTYPES)})")
  if (not isinstance(shape, (list, tuple)) or len(shape) > 8
      or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
    raise CodecError(f"array shape {shape!r} is not a list of at most 8 non-negative ints")
  if not isinstance(data, bytes):
    raise CodecError("array data is not a byte string")
  dtype = np.dtype(dtype_str)
  expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    raise CodecError(f"array of dtype {dtype_str} and shape {list(shape)} needs {expected} bytes, got {len(data)}")
  return np.frombuffer(data, dtype=dtype).reshape(shape)


def packb(message: Any) -> bytes:
  """Python / numpy structure -> msgpack bytes."""
  try:
    return msgpack.packb(message, default=_encode_default, use_bin_type=True)
  except CodecError:
    raise
  except (TypeError, ValueError, OverflowError) as e:
    raise CodecError(f"cannot encode message: {e}") from e


def _invalid_text(tree: Any, path: str = "") -> str | None:
  """Where the first string of ``tree`` (decoded with ``surrogateescape``) holds bytes that are not UTF-8: the
  field's path and the offending byte."""
  def bad(text: str) -> str | None:
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as e:
      return f"byte {ord(text[e.start]) - 0xDC00:#04x} at offset {e.start}"
    return None

  if isinstance(tree, dict):
    for key, value in tree.items():
      if isinstance(key, str) and bad(key):
        return f"a key at {path or 'the top level'} ({bad(key)})"
      found = _invalid_text(value, f"{path}[{key!r}]" if path else repr(key))
      if found:
        return found
  elif isinstance(tree, (list, tuple)):
    for i, value in enumerate(tree):
      found = _invalid_text(value, f"{path}[{i}]")
      if found:
        return found
  elif isinstance(tree, str) and bad(tree):
    return f"{path or 'the message'} ({bad(tree)})"
  return None


def unpackb(payload: bytes) -> Any:
  """msgpack bytes -> Python structure with numpy arrays (read-only views of the payload). A text field that is
  not valid UTF-8 raises ``CodecError`` naming the field."""
  if not isinstance(payload, (bytes, bytearray, memoryview)):
    raise CodecError(f"expected a binary message, got {type(payload).__name__}")
  try:
    return msgpack.unpackb(payload, object_hook=_decode_hook, raw=False, strict_map_key=True)
  except CodecError:
    raise
  except UnicodeDecodeError as e:
    try:  # Find the field: decode again keeping the bad bytes as surrogates (binary fields stay bytes).
      where = _invalid_text(msgpack.unpackb(payload, raw=False, strict_map_key=False,
                                            unicode_errors="surrogateescape"))
    except Exception:  # pylint: disable=broad-except
      where = None
    raise CodecError(f"text field {where or '(unknown)'} is not valid UTF-8; send text as UTF-8 strings") from e
  except Exception as e:  # msgpack raises several unrelated types on garbage input.
    raise CodecError(f"message is not valid msgpack: {type(e).__name__}: {e}") from e
