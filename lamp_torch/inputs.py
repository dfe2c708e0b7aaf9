"""Checks of what a PyTorch policy's ``sample_actions`` receives, shared by every model kind of the port.

Imports torch and the standard library only.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

FLOAT32 = torch.float32


def checked_noise(noise: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], device,
                  fields: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
  """``noise`` as float32 tensors on ``device``, with exactly the entries and shapes of ``expected``.

  ``fields``: per entry, the config fields its shape comes from (named in the error).
  """
  if set(noise) != set(expected):
    raise ValueError(f"sample_actions noise has entries {sorted(noise)}; expected {sorted(expected)}")
  out = {}
  for name, value in noise.items():
    tensor = torch.as_tensor(value, dtype=FLOAT32, device=device)
    if tuple(tensor.shape) != tuple(expected[name]):
      hint = f" ({fields[name]})" if fields and name in fields else ""
      raise ValueError(f"sample_actions noise[{name!r}] has shape {tuple(tensor.shape)}; expected "
                       f"{tuple(expected[name])}{hint}")
    out[name] = tensor
  return out


def checked_proprio(inputs: Mapping[str, torch.Tensor], cfg: Mapping[str, Any]) -> torch.Tensor:
  """The normalised proprio float32[B, S] of ``inputs``, checked against config.json's ``model.proprio_dim``;
  zeros when the model was trained without it (``use_proprio`` False)."""
  proprio = inputs["proprio"].to(FLOAT32)
  if proprio.shape[-1] != cfg["proprio_dim"]:
    raise ValueError(f"proprio has {proprio.shape[-1]} dims; config.json field model.proprio_dim="
                     f"{cfg['proprio_dim']}")
  if not cfg.get("use_proprio", True):
    proprio = torch.zeros_like(proprio)
  return proprio
