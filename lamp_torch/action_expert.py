"""LaMP Action Expert (``action.kind='dit'``) in PyTorch (mirrors ``lamp_jax/models/action_expert.py``).

A DiT over [state token; H action tokens] with adaLN-zero time conditioning; layer pairs alternate
cross-attention to the guided VLM features and self-attention over the chunk, each with a gated MLP.
Axis letters: B batch · H horizon · A action dim · S proprio dim · P context tokens · D width.

Modules: ``action_in``, ``state_in``, ``time_embed.{fc1,fc2}``, ``blocks.{i}.{cross,self}.{mod.proj,
attn.{query,key,value,query_norm,key_norm,out}, mlp.{fc1,fc2}}`` (parameter-free norms), ``out_mod.proj``,
``action_out``. Another ``action.kind`` is one more class here and one more entry in ``ACTION_EXPERTS``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lamp_torch import dit, layers


class DiTLayer(nn.Module):
  """adaLN-zero layer: (cross- or self-) attention + MLP, both with gated residuals."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, context_width: int, cross: bool,
               dtype: torch.dtype):
    super().__init__()
    self.cross, self.dtype = cross, dtype
    self.mod = dit.Modulation(6, width, width, dtype)
    self.norm1 = layers.LayerNorm(width, 1e-6, dtype, affine=False)
    self.attn = dit.Attention(width, num_heads, width // num_heads, dtype,
                              context_width=context_width if cross else width, qk_norm=True)
    self.norm2 = layers.LayerNorm(width, 1e-6, dtype, affine=False)
    self.mlp = dit.Mlp(width, mlp_dim, dtype)

  def forward(self, x, temb, context_kv, context_mask):
    shift, scale, gate, m_shift, m_scale, m_gate = self.mod(temb)
    h = dit.modulate(self.norm1(x), shift, scale)
    if self.cross:
      mask = context_mask[:, None, :].expand(x.shape[0], x.shape[1], context_mask.shape[1])
      h = self.attn(h, mask=mask, kv=context_kv)
    else:
      h = self.attn(h)
    x = x + gate.to(self.dtype) * h
    h = dit.modulate(self.norm2(x), m_shift, m_scale)
    return x + m_gate.to(self.dtype) * self.mlp(h)


class CrossSelfPair(nn.Module):
  def __init__(self, width: int, num_heads: int, mlp_dim: int, context_width: int, dtype: torch.dtype):
    super().__init__()
    self.cross = DiTLayer(width, num_heads, mlp_dim, context_width, True, dtype)
    self.self = DiTLayer(width, num_heads, mlp_dim, context_width, False, dtype)


class DiTActionExpert(nn.Module):
  """``forward(x_tau float[B, H, A], tau float[B], proprio float[B, S], context_kv, context_mask bool[B, P])
  -> velocity float32[B, H, A]``, where ``context_kv = context_kv(context float[B, P, Dc])`` holds every cross
  layer's keys / values (computed once per sample: the context is fixed during integration)."""

  def __init__(self, cfg: Mapping[str, Any], action_dim: int, proprio_dim: int, context_width: int,
               dtype: torch.dtype):
    super().__init__()
    if cfg["depth"] % 2:
      raise ValueError(f"action.depth={cfg['depth']} must be even (alternating cross/self-attention layers)")
    if cfg["width"] % cfg["num_heads"]:
      raise ValueError(f"action.num_heads={cfg['num_heads']} does not divide action.width={cfg['width']}")
    width = cfg["width"]
    self.width, self.dtype = width, dtype
    self.action_in = layers.Linear(action_dim, width, dtype)
    self.state_in = layers.Linear(proprio_dim, width, dtype)
    self.time_embed = dit.TimestepEmbedder(width, cfg["time_frequency_dim"], dtype)
    self.blocks = nn.ModuleList([CrossSelfPair(width, cfg["num_heads"], cfg["mlp_ratio"] * width, context_width,
                                               dtype) for _ in range(cfg["depth"] // 2)])
    self.out_mod = dit.Modulation(2, width, width, dtype)
    self.norm_out = layers.LayerNorm(width, 1e-6, dtype, affine=False)
    self.action_out = layers.Linear(width, action_dim, dtype)

  def context_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per pair i, the cross layer's (keys, values) float[B, P, N, H] of ``context``."""
    context = context.to(self.dtype)
    return [pair.cross.attn.project_kv(context) for pair in self.blocks]

  def forward(self, x_tau, tau, proprio, context_kv, context_mask):
    b, horizon, _ = x_tau.shape
    actions = self.action_in(x_tau)
    positions = torch.arange(horizon, device=x_tau.device)
    actions = actions + layers.sincos_1d(positions, self.width)[None].to(self.dtype)
    state = self.state_in(proprio)
    x = torch.cat([state[:, None], actions], dim=1)
    temb = self.time_embed(tau.to(layers.FLOAT32).expand(b))
    for pair, kv in zip(self.blocks, context_kv):
      x = pair.cross(x, temb, kv, context_mask)
      x = pair.self(x, temb, None, context_mask)
    shift, scale = self.out_mod(temb)
    out = dit.modulate(self.norm_out(x[:, 1:]), shift, scale)
    return self.action_out(out).to(layers.FLOAT32)


ACTION_EXPERTS = {"dit": DiTActionExpert}


def build_action_expert(cfg: Mapping[str, Any], **kwargs) -> nn.Module:
  """The expert of ``cfg['kind']`` (config.json field model.action.kind)."""
  if cfg["kind"] not in ACTION_EXPERTS:
    raise ValueError(f"config.json field model.action.kind={cfg['kind']!r} is unknown; choose one of "
                     f"{sorted(ACTION_EXPERTS)}")
  return ACTION_EXPERTS[cfg["kind"]](cfg, **kwargs)
