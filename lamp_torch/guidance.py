"""Gated motion guidance in PyTorch (mirrors ``lamp_jax/models/guidance.py``).

  q   = LayerNorm(vlm)                         vlm    float[B, P, Dv]
  kv  = LayerNorm(Linear_Dv(motion))           motion float[B, N, Dm]
  out = vlm + sigmoid(gate_logit) * MHA(q, kv, kv)

Modules: ``query_norm``, ``motion_proj``, ``motion_norm``, ``attn.{query,key,value,out}``, ``gate_logit`` (a
0-d parameter).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lamp_torch import dit, layers


class GatedMotionGuidance(nn.Module):
  """``forward(vlm float[B, P, Dv], motion float[B, N, Dm], gate_override=None) -> (guided float[B, P, Dv],
  gate float32[])``."""

  def __init__(self, cfg: Mapping[str, Any], width: int, motion_width: int, dtype: torch.dtype):
    super().__init__()
    if width % cfg["num_heads"]:
      raise ValueError(f"guidance.num_heads={cfg['num_heads']} does not divide the VLM width {width}")
    self.width = width
    self.query_norm = layers.LayerNorm(width, 1e-6, dtype)
    self.motion_proj = layers.Linear(motion_width, width, dtype)
    self.motion_norm = layers.LayerNorm(width, 1e-6, dtype)
    self.attn = dit.Attention(width, cfg["num_heads"], width // cfg["num_heads"], dtype)
    self.gate_logit = nn.Parameter(torch.zeros(()))

  def gate(self) -> torch.Tensor:
    return torch.sigmoid(self.gate_logit.to(layers.FLOAT32))

  def forward(self, vlm: torch.Tensor, motion: torch.Tensor, gate_override: float | None = None):
    if vlm.shape[-1] != self.width:
      raise ValueError(f"guidance built for VLM width {self.width}, got features of shape {tuple(vlm.shape)}")
    kv = self.motion_norm(self.motion_proj(motion))
    attn = self.attn(self.query_norm(vlm), kv)
    gate = self.gate()
    applied = gate if gate_override is None else torch.tensor(gate_override, dtype=layers.FLOAT32)
    return vlm + (applied * attn.to(layers.FLOAT32)).to(vlm.dtype), gate
