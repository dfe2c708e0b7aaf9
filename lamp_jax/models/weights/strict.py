"""Shared helpers for strict checkpoint mapping: flat names, dtype rules, one error that lists every problem."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import flax
import flax.linen as nn
import numpy as np

# Source dtypes accepted for float32 parameters: the conversion to float32 is exact for all of them.
EXACT_TO_FLOAT32 = ("float32", "float16", "bfloat16")


class StrictLoadError(ValueError):
  """A checkpoint does not match the model: lists every missing, unexpected and mismatched tensor by name."""

  def __init__(self, source: str, *, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
               mismatched: Iterable[str] = (), notes: Iterable[str] = ()):
    self.source = source
    self.notes = list(notes)
    self.missing = sorted(missing)
    self.unexpected = sorted(unexpected)
    self.mismatched = sorted(mismatched)
    lines = [f"checkpoint {source} does not match the model config:"]
    if self.missing:
      lines.append(f"  {len(self.missing)} missing tensor(s): " + ", ".join(self.missing))
    if self.unexpected:
      lines.append(f"  {len(self.unexpected)} unexpected tensor(s): " + ", ".join(self.unexpected))
    if self.mismatched:
      lines.append(f"  {len(self.mismatched)} mismatched tensor(s): " + "; ".join(self.mismatched))
    lines += [f"  {note}" for note in self.notes]
    super().__init__("\n".join(lines))


def flatten(tree: Any, sep: str = "/") -> dict[str, Any]:
  """Nested dict (boxed or plain) -> {'a/b/c': leaf}."""
  tree = nn.unbox(tree)
  if isinstance(tree, flax.core.FrozenDict):
    tree = tree.unfreeze()
  return {sep.join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  return flax.traverse_util.unflatten_dict({tuple(k.split(sep)): v for k, v in flat.items()})


def dtype_name(x: Any) -> str:
  return np.dtype(x.dtype).name


def check_names(source: str, expected: Iterable[str], provided: Iterable[str], optional: Iterable[str] = ()):
  """Raises StrictLoadError if names differ (``optional`` names may be absent)."""
  expected, provided, optional = set(expected), set(provided), set(optional)
  missing = expected - provided - optional
  unexpected = provided - expected - optional
  if missing or unexpected:
    raise StrictLoadError(source, missing=missing, unexpected=unexpected)


def check_tensor(name: str, value: Any, shape: tuple[int, ...]) -> str | None:
  """A problem description for one source tensor, or None if its shape and dtype are acceptable."""
  problems = []
  if tuple(value.shape) != tuple(shape):
    problems.append(f"shape {tuple(value.shape)} != expected {tuple(shape)}")
  if dtype_name(value) not in EXACT_TO_FLOAT32:
    problems.append(f"dtype {dtype_name(value)} is not one of {EXACT_TO_FLOAT32}")
  return f"{name}: " + ", ".join(problems) if problems else None


def to_float32(value: Any) -> np.ndarray:
  return np.asarray(value).astype(np.float32)
