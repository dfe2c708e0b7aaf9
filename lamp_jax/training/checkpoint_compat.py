"""Can a checkpoint be restored into the model a config describes? Compared before any array is read.

A workdir resumed with another model (``--config.model.width=24`` on a run trained at 16, a renamed module, a
stage whose frozen patterns changed the optimizer state) cannot be restored. Instead of orbax's shape error,
``check_restorable`` compares the arrays of the checkpoint (``Checkpointer.state_layout``: orbax's metadata) with
the state the current config builds (``jax.eval_shape``: nothing allocated) and raises
``CheckpointMismatchError`` listing

  * the parameter paths missing from the checkpoint, extra in it, or of another shape / dtype (parameters first,
    then EMA and optimizer state), and
  * the config fields whose values differ between the checkpoint's stored config and the current one.

Restores stay strict: a mismatch is never papered over by restoring part of a state.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from lamp_jax.training import optim

MAX_LISTED = 12
_ORDER = ("params/", "ema_params/", "opt_state/")


class CheckpointMismatchError(ValueError):
  """The checkpoint holds another model (or optimizer state) than the config builds."""


def flatten_config(config_json: Any, prefix: str = "") -> dict[str, Any]:
  """{'a.b.c': leaf value} of a JSON config (lists of objects are indexed: 'data.pipeline.datasets[0].name')."""
  out = {}
  if isinstance(config_json, dict):
    for key, value in config_json.items():
      out.update(flatten_config(value, f"{prefix}.{key}" if prefix else str(key)))
  elif isinstance(config_json, (list, tuple)) and any(isinstance(v, dict) for v in config_json):
    for i, value in enumerate(config_json):
      out.update(flatten_config(value, f"{prefix}[{i}]"))
  else:
    out[prefix] = list(config_json) if isinstance(config_json, tuple) else config_json
  return out


_ABSENT = object()


def _show(value: Any) -> str:
  return "(absent)" if value is _ABSENT else json.dumps(value)


def config_diff(stored_json: dict, current_json: dict) -> list[str]:
  """'field: stored -> current' for every config field whose value differs (absent on one side included)."""
  a, b = flatten_config(stored_json), flatten_config(current_json)
  lines = []
  for key in sorted(set(a) | set(b)):
    x, y = a.get(key, _ABSENT), b.get(key, _ABSENT)
    if x is _ABSENT or y is _ABSENT or x != y:
      lines.append(f"{key}: {_show(x)} -> {_show(y)}")
  return lines


def abstract_layout(abstract_state: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'/'-joined path: (shape, dtype)} of an abstract state (ShapeDtypeStructs)."""
  return {optim.param_path(path): (tuple(int(d) for d in x.shape), np.dtype(x.dtype).name)
          for path, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}


def _sort_key(path: str) -> tuple[int, str]:
  for i, prefix in enumerate(_ORDER):
    if path.startswith(prefix):
      return i, path
  return len(_ORDER), path


def _fmt(layout: tuple[tuple[int, ...], str]) -> str:
  shape, dtype = layout
  return f"{dtype}{list(shape)}"


def layout_diff(stored: dict, wanted: dict) -> list[str]:
  """One line per array that differs: 'missing' (the model has it, the checkpoint not), 'extra' (the other
  way), 'shape' (both, different shape or dtype); parameters first."""
  lines = []
  for path in sorted(set(stored) | set(wanted), key=_sort_key):
    if path not in stored:
      lines.append(f"missing in the checkpoint: {path} {_fmt(wanted[path])}")
    elif path not in wanted:
      lines.append(f"extra in the checkpoint: {path} {_fmt(stored[path])}")
    elif tuple(stored[path][0]) != tuple(wanted[path][0]) or np.dtype(stored[path][1]) != np.dtype(wanted[path][1]):
      lines.append(f"other shape: {path} is {_fmt(stored[path])} in the checkpoint, {_fmt(wanted[path])} in the model")
  return lines


def _listed(lines: list[str]) -> str:
  shown = lines[:MAX_LISTED]
  more = len(lines) - len(shown)
  return "\n    " + "\n    ".join(shown) + (f"\n    ... and {more} more" if more > 0 else "")


def check_restorable(directory: str, step: int, stored_layout: dict, wanted_layout: dict, stored_config: dict,
                     current_config: dict) -> list[str]:
  """Raises ``CheckpointMismatchError`` when the arrays differ; else returns the differing config fields (the
  caller warns about them: e.g. more steps or another learning rate are legitimate on resume)."""
  fields = config_diff(stored_config, current_config)
  arrays = layout_diff(stored_layout, wanted_layout)
  if not arrays:
    return fields
  msg = (f"checkpoint step {step} in {directory} holds another model than the config builds "
         f"({len(arrays)} arrays differ):{_listed(arrays)}")
  if fields:
    msg += f"\n  config fields that differ (checkpoint -> now):{_listed(fields)}"
  else:
    msg += "\n  the stored config equals the current one: the model code changed since the checkpoint was written"
  msg += ("\n  Resume with the checkpoint's config (undo the changes above), or train the new model in a new "
          "--workdir; to start it from these weights, add a config.init entry of kind 'checkpoint' naming this run "
          "(training/pretrained.py: loads a parameter subtree, checking every tensor).")
  raise CheckpointMismatchError(msg)
