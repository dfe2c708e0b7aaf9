"""Diffusion-transformer pieces of the experts in PyTorch (mirrors ``lamp_jax/models/dit.py``).

Module names follow the JAX parameter tree with its ``dense`` / ``ln`` wrappers dropped: ``fc1.weight`` for JAX
``fc1/dense/kernel``. Shapes: tokens float[B, T, D]; conditioning vectors float[B, D_c]; heads N, head dim H.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from lamp_torch import layers


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  """adaLN modulation ``x * (1 + scale) + shift`` in x's dtype; shift / scale float[B, 1, D]."""
  return x * (1.0 + scale.to(x.dtype)) + shift.to(x.dtype)


class TimestepEmbedder(nn.Module):
  """tau in [0, 1] float[B] -> float[B, width]: sinusoidal (tau * 1000) -> fc1 -> SiLU -> fc2."""

  def __init__(self, width: int, frequency_dim: int, dtype: torch.dtype):
    super().__init__()
    self.frequency_dim, self.dtype = frequency_dim, dtype
    self.fc1 = layers.Linear(frequency_dim, width, dtype)
    self.fc2 = layers.Linear(width, width, dtype)

  def forward(self, tau: torch.Tensor) -> torch.Tensor:
    emb = layers.timestep_embedding(tau, self.frequency_dim).to(self.dtype)
    return self.fc2(F.silu(self.fc1(emb)))


class Modulation(nn.Module):
  """SiLU -> ``proj`` (weight float[count * width, D_c]) -> ``count`` vectors float[B, 1, width]."""

  def __init__(self, count: int, width: int, cond_width: int, dtype: torch.dtype):
    super().__init__()
    self.count, self.width = count, width
    self.proj = layers.Linear(cond_width, count * width, dtype)

  def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
    out = self.proj(F.silu(cond)).reshape(cond.shape[0], self.count, self.width)
    return tuple(out[:, None, i, :] for i in range(self.count))


class Mlp(nn.Module):
  """fc1 -> GELU (tanh) -> fc2."""

  def __init__(self, width: int, mlp_dim: int, dtype: torch.dtype):
    super().__init__()
    self.fc1 = layers.Linear(width, mlp_dim, dtype)
    self.fc2 = layers.Linear(mlp_dim, width, dtype)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(layers.gelu_tanh(self.fc1(x)))


class Attention(nn.Module):
  """Multi-head self- or cross-attention with optional QK LayerNorm over the head dim (``dit.Attention``).

  ``forward(x float[B, T, D], context float[B, S, Dc] | None, mask bool[B, T, S] | None, q_transform,
  k_transform, kv)``: ``kv=(keys, values)`` float[B, S, N, H] from :meth:`project_kv` replaces the projection of
  ``context``. Output float[B, T, out_features or D].
  """

  def __init__(self, width: int, num_heads: int, head_dim: int, dtype: torch.dtype, *,
               context_width: int | None = None, qk_norm: bool = False, out_features: int | None = None):
    super().__init__()
    self.num_heads, self.head_dim, self.qk_norm = num_heads, head_dim, qk_norm
    inner = num_heads * head_dim
    context_width = context_width or width
    self.query = layers.Linear(width, inner, dtype)
    self.key = layers.Linear(context_width, inner, dtype)
    self.value = layers.Linear(context_width, inner, dtype)
    if qk_norm:
      self.query_norm = layers.LayerNorm(head_dim, 1e-6, dtype)
      self.key_norm = layers.LayerNorm(head_dim, 1e-6, dtype)
    self.out = layers.Linear(inner, out_features or width, dtype)

  def _heads(self, x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim)

  def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (after the key norm) and values float[B, S, N, H] of ``context``, as ``forward`` computes them."""
    k = self._heads(self.key(context))
    if self.qk_norm:
      k = self.key_norm(k)
    return k, self._heads(self.value(context))

  def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
              q_transform: Callable | None = None, k_transform: Callable | None = None,
              kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    q = self._heads(self.query(x))
    k, v = self.project_kv(x if context is None else context) if kv is None else kv
    if self.qk_norm:
      q = self.query_norm(q)
    if q_transform is not None:
      q = q_transform(q)
    if k_transform is not None:
      k = k_transform(k)
    out = layers.dot_product_attention(q, k, v, mask)
    return self.out(out.reshape(out.shape[0], out.shape[1], -1))
