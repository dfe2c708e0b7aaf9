"""Shared building blocks of the PyTorch port (mirrors ``lamp_jax/models/layers.py`` and ``dit.py``'s helpers).

Numerics follow the JAX code exactly where it is specified: parameters keep their stored dtype and are cast to
the activation dtype at use (as flax's ``DenseGeneral(dtype=...)``); LayerNorm, RMSNorm, softmax, RoPE and the
sin-cos tables are computed in float32 and cast back; attention logits are float32 and fully masked query rows
give zeros, not NaN.

Parameter layout is PyTorch's: ``Linear.weight`` float[out, in] where JAX kernels are float[in..., out...] with
the in / out axes flattened row-major (e.g. a query kernel float[D, N, H] is weight float[N * H, D]).
Imports torch and the standard library only.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

FLOAT32 = torch.float32
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def activation_dtype(name: str, field: str) -> torch.dtype:
  """'float32' | 'bfloat16' -> torch dtype; anything else raises naming the config ``field``."""
  if name not in DTYPES:
    raise ValueError(f"config.json field {field}={name!r} is not one of {sorted(DTYPES)}")
  return DTYPES[name]


class Linear(nn.Module):
  """``y = x W^T + b`` computed in ``dtype`` (weight float[out, in], bias float[out]); flax DenseGeneral's math."""

  def __init__(self, in_features: int, out_features: int, dtype: torch.dtype = FLOAT32, bias: bool = True):
    super().__init__()
    self.weight = nn.Parameter(torch.zeros(out_features, in_features))
    self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
    self.dtype = dtype

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    bias = None if self.bias is None else self.bias.to(self.dtype)
    return F.linear(x.to(self.dtype), self.weight.to(self.dtype), bias)


class LayerNorm(nn.Module):
  """LayerNorm computed in float32, cast to ``dtype``; ``affine=False`` has no parameters (adaLN blocks)."""

  def __init__(self, width: int, eps: float = 1e-6, dtype: torch.dtype = FLOAT32, affine: bool = True):
    super().__init__()
    self.width, self.eps, self.dtype = width, eps, dtype
    self.weight = nn.Parameter(torch.ones(width)) if affine else None
    self.bias = nn.Parameter(torch.zeros(width)) if affine else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    weight = None if self.weight is None else self.weight.to(FLOAT32)
    bias = None if self.bias is None else self.bias.to(FLOAT32)
    return F.layer_norm(x.to(FLOAT32), (self.width,), weight, bias, self.eps).to(self.dtype)


class RMSNorm(nn.Module):
  """Gemma RMSNorm ``x / rms(x) * (1 + weight)`` in float32 (weight stored as the offset from 1, as Gemma)."""

  def __init__(self, width: int, eps: float = 1e-6, dtype: torch.dtype = FLOAT32):
    super().__init__()
    self.eps, self.dtype = eps, dtype
    self.weight = nn.Parameter(torch.zeros(width))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x32 = x.to(FLOAT32)
    var = torch.mean(x32 * x32, dim=-1, keepdim=True)
    return (x32 * torch.rsqrt(var + self.eps) * (1.0 + self.weight.to(FLOAT32))).to(self.dtype)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
  return F.gelu(x, approximate="tanh")


def apply_rope(x: torch.Tensor, positions: torch.Tensor, max_wavelength: float = 10_000.0) -> torch.Tensor:
  """Rotary embedding, half-split layout, in float32. x float[B, T, N, H]; positions float/int[B, T]."""
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
  fraction = 2.0 * torch.arange(head_dim // 2, dtype=FLOAT32, device=x.device) / head_dim
  timescale = max_wavelength**fraction
  angles = positions.to(FLOAT32)[..., None, None] / timescale  # [B, T, 1, H/2]
  sin, cos = torch.sin(angles), torch.cos(angles)
  first, second = torch.chunk(x.to(FLOAT32), 2, dim=-1)
  return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1).to(x.dtype)


def dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                          scale: float | None = None) -> torch.Tensor:
  """Multi-head / grouped-query attention with a float32 softmax (``layers.dot_product_attention``).

  Args:
    q: float[B, T, N, H]; k, v: float[B, S, K, H] (K divides N).
    mask: bool[B, T, S] (True = may attend) or None.
  Returns:
    float[B, T, N, H] in q's dtype; fully masked query rows are zeros.
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  if n % kv_heads:
    raise ValueError(f"{n} query heads are not a multiple of {kv_heads} kv heads")
  g = n // kv_heads
  scale = h**-0.5 if scale is None else scale
  qg = q.reshape(b, t, kv_heads, g, h)
  # float32 products of the (possibly bfloat16) inputs: JAX's preferred_element_type=float32.
  logits = torch.einsum("btkgh,bskh->bkgts", qg.to(FLOAT32), k.to(FLOAT32)) * scale
  if mask is not None:
    mask5 = mask[:, None, None, :, :]
    logits = torch.where(mask5, logits, torch.finfo(FLOAT32).min)
  probs = torch.softmax(logits, dim=-1)
  if mask is not None:
    probs = torch.where(mask5, probs, 0.0)
  out = torch.einsum("bkgts,bskh->btkgh", probs.to(v.dtype), v)
  return out.reshape(b, t, n, h).to(q.dtype)


def sincos_1d(positions: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
  """float32[..., dim] = [sin | cos] of ``positions`` times log-spaced frequencies (``layers.sincos_1d``)."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=FLOAT32, device=positions.device) / half)
  angles = positions.to(FLOAT32)[..., None] * freqs
  return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sincos_2d(height: int, width: int, dim: int, device=None, max_period: float = 10_000.0) -> torch.Tensor:
  """float32[height * width, dim]: [x | y] halves (MoCo v3 / big_vision layout)."""
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
  yy, xx = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
  emb_x = sincos_1d(xx.reshape(-1), dim // 2, max_period)
  emb_y = sincos_1d(yy.reshape(-1), dim // 2, max_period)
  return torch.cat([emb_x, emb_y], dim=-1)


def sincos_3d(frames: int, height: int, width: int, dim: int, device=None, temporal_fraction: float = 0.25,
              max_period: float = 10_000.0) -> torch.Tensor:
  """float32[frames * height * width, dim] = [temporal | spatial(x, y)] (CogVideoX; ``layers.sincos_3d``)."""
  if dim % 2:
    raise ValueError(f"3-D sin-cos embedding needs an even dim, got {dim}")
  dim_s = int(dim * (1.0 - temporal_fraction)) // 4 * 4
  dim_t = dim - dim_s
  spatial = sincos_2d(height, width, dim_s, device, max_period)
  temporal = sincos_1d(torch.arange(frames, device=device), dim_t, max_period)
  spatial = spatial[None].expand(frames, height * width, dim_s)
  temporal = temporal[:, None].expand(frames, height * width, dim_t)
  return torch.cat([temporal, spatial], dim=-1).reshape(frames * height * width, dim)


def timestep_embedding(tau: torch.Tensor, dim: int, max_period: float = 10_000.0, scale: float = 1000.0):
  """DiT sinusoidal embedding of flow times tau in [0, 1]: float32[B] -> float32[B, dim]."""
  return sincos_1d(tau.to(FLOAT32) * scale, dim, max_period)
