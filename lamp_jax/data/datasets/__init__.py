"""Standardisation registry: one function per dataset layout turns its RLDS steps into our standard trajectory.

A standardisation receives the decoded episode (``steps``: dict of tensors with a leading step axis, images still
JPEG-encoded strings; ``metadata``: episode_metadata tensors) and returns a trajectory dict::

    observation/<dataset image key>  string[L]   (encoded; mapped to spec cameras by ``image_keys``)
    observation/proprio              float32[L, S]
    action                           float32[L, A]  (specs action convention)
    language_instruction             string[L]
    scene_flow, scene_flow_query, scene_flow_mask, scene_flow_query_mask   (only when the dataset has them)
    observation/<optical_flow_key>   string[L]   (encoded HSV flow images; only for layouts that declare a key)

Adding a dataset = one function in a module here + one ``register(Standardization(...))`` call.
Lookup: exact name first, then registered prefixes (``lamp_sim_`` matches every simulator suite).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

from lamp_jax.data.errors import DataError

# A serialized key (flattened tfds name, e.g. 'steps/observation/state') -> (per-step shape, kind), where kind is
# 'float' | 'int' | 'bytes' (tf.train.Example list kinds; bool and ints are 'int', images and text 'bytes').
Requirement = tuple[tuple[int, ...], str]


@dataclasses.dataclass(frozen=True)
class Standardization:
  """How one dataset layout maps onto the standard trajectory."""

  name: str
  fn: Callable  # fn(steps, metadata, **kwargs) -> trajectory dict (TF graph code)
  # requirements(data_cfg, image_keys) -> {serialized key: Requirement}; only keys this standardisation reads.
  # Every 'float' key of the requirements is checked for NaN / inf in every episode (rlds.finite_keys).
  requirements: Callable[[object, Mapping[str, str]], Mapping[str, Requirement]]
  image_keys: Mapping[str, str]  # spec camera key -> dataset observation key ('' = camera absent)
  action_keys: tuple[str, ...]  # serialized keys holding raw actions (for the |action| bound filter)
  instruction_key: str  # serialized key of the per-step instruction
  action_normalization_mask: tuple[bool, ...]  # default: normalise all but the gripper
  proprio_normalization_mask: tuple[bool, ...]
  min_length: int = 1  # episodes shorter than this have no step left after standardisation
  has_scene_flow: bool = False
  # Observation key of the optional per-step optical-flow image ('' = this layout has none). Read only when
  # data.optical_flow is on and the dataset's features contain steps/observation/<key>.
  optical_flow_key: str = ""
  default_kwargs: Mapping[str, object] = dataclasses.field(default_factory=dict)
  prefix: bool = False  # match every dataset name starting with ``name``


_REGISTRY: dict[str, Standardization] = {}


def register(standardization: Standardization) -> Standardization:
  _REGISTRY[standardization.name] = standardization
  return standardization


def get(name: str) -> Standardization:
  """The standardisation registered for ``name`` (exact, then prefix). Unknown -> DataError listing known ones."""
  if name in _REGISTRY and not _REGISTRY[name].prefix:
    return _REGISTRY[name]
  for key, value in _REGISTRY.items():
    if value.prefix and name.startswith(key):
      return value
  known = sorted(k + ("*" if v.prefix else "") for k, v in _REGISTRY.items())
  raise DataError(f"unknown dataset name (no standardisation registered); known: {known}. Register one in "
                  "lamp_jax/data/datasets/ or set the entry's 'standardize' field.", dataset=name)


def names() -> list[str]:
  return sorted(_REGISTRY)


# Register the built-in layouts (import for side effects).
from lamp_jax.data.datasets import bridge, lamp_sim, oxe_bridge  # noqa: E402,F401
