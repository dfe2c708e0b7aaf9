"""config.json of an export as nested read-only sections whose missing fields raise naming the dotted field."""

from __future__ import annotations

from typing import Any

from lamp_jax import export_format


class Section(dict):
  """A dict whose ``section['x']`` on a missing key raises ``ExportFormatError`` naming ``<path>.x`` and the
  file (``.get`` keeps its default)."""

  def __init__(self, values: dict, path: str, source: str):
    super().__init__({k: wrap(v, f"{path}.{k}" if path else str(k), source) for k, v in values.items()})
    self.path, self.source = path, source

  def __missing__(self, key):
    name = f"{self.path}.{key}" if self.path else str(key)
    raise export_format.ExportFormatError(f"{self.source} has no field {name!r}")


def wrap(value: Any, path: str, source: str) -> Any:
  if isinstance(value, dict):
    return Section(value, path, source)
  if isinstance(value, list):
    return [wrap(v, f"{path}[{i}]", source) for i, v in enumerate(value)]
  return value
