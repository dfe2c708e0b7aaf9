"""Policy kinds of the PyTorch port, keyed by the model config's ``name`` (config.json field ``kind``).

Adding a kind = one module in lamp_torch/ with a ``torch.nn.Module`` class that provides
``from_export_config(config) -> module`` (config = the whole config.json), ``noise_shapes(batch_size)`` and
``sample_actions(inputs, noise) -> normalised actions float32[B, H, A]`` (see ``lamp_torch.lamp.LaMP``,
``lamp_torch.pi0.Pi0``, ``lamp_torch.lafp.LAFP``), plus one entry here. The JAX side's exporter
(``lamp_jax.export.KINDS``) lists the same keys.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from torch import nn

# kind -> "module:class"
MODEL_KINDS = {
    "lamp": "lamp_torch.lamp:LaMP",
    "pi0": "lamp_torch.pi0:Pi0",
    "lafp": "lamp_torch.lafp:LAFP",
}


def build_model(config: Mapping[str, Any]) -> nn.Module:
  """The (uninitialised) module of ``config['kind']``; an unknown kind raises naming the field."""
  kind = config.get("kind")
  if kind not in MODEL_KINDS:
    raise ValueError(f"config.json field kind={kind!r} is not a known policy kind; known: {sorted(MODEL_KINDS)}")
  name = config["model"].get("name")
  if name != kind:
    raise ValueError(f"config.json field kind={kind!r} but model.name={name!r}: the model config is not of that kind")
  module_name, class_name = MODEL_KINDS[kind].split(":")
  return getattr(importlib.import_module(module_name), class_name).from_export_config(config)
