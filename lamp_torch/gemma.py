"""Gemma (v1) decoder in PyTorch (mirrors ``lamp_jax/models/gemma.py``), with Hugging Face module names.

Module names are those of transformers' ``GemmaModel`` (inside PaliGemma at ``model.language_model``):

  embed_tokens.weight[V, D]                                   token embedding (tied output projection)
  layers.{i}.input_layernorm.weight[D]                        RMSNorm scales stored as the offset from 1
  layers.{i}.self_attn.{q_proj[N*H, D], k_proj[K*H, D], v_proj[K*H, D], o_proj[D, N*H]}.weight   no biases
  layers.{i}.post_attention_layernorm.weight[D]               (JAX ``pre_ffw_norm``)
  layers.{i}.mlp.{gate_proj[F, D], up_proj[F, D], down_proj[D, F]}.weight   GeGLU (tanh GELU)
  norm.weight[D]                                              final RMSNorm

Only what the LaMP prefix needs is here: the decoder over embeddings with an explicit attention mask and RoPE
positions (no K/V cache, no logits).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lamp_torch import layers


class GemmaAttention(nn.Module):
  """GQA / MQA self-attention with RoPE (no biases)."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    d, self.n, self.k, self.h = cfg["width"], cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    self.rope_max_wavelength = cfg["rope_max_wavelength"]
    self.q_proj = layers.Linear(d, self.n * self.h, dtype, bias=False)
    self.k_proj = layers.Linear(d, self.k * self.h, dtype, bias=False)
    self.v_proj = layers.Linear(d, self.k * self.h, dtype, bias=False)
    self.o_proj = layers.Linear(self.n * self.h, d, dtype, bias=False)

  def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    b, t, _ = x.shape
    q = layers.apply_rope(self.q_proj(x).reshape(b, t, self.n, self.h), positions, self.rope_max_wavelength)
    k = layers.apply_rope(self.k_proj(x).reshape(b, t, self.k, self.h), positions, self.rope_max_wavelength)
    v = self.v_proj(x).reshape(b, t, self.k, self.h)
    out = layers.dot_product_attention(q, k, v, mask)
    return self.o_proj(out.reshape(b, t, self.n * self.h))


class GemmaMLP(nn.Module):
  """GeGLU: (gelu_tanh(x W_gate) * (x W_up)) W_down."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    d, f = cfg["width"], cfg["mlp_dim"]
    self.gate_proj = layers.Linear(d, f, dtype, bias=False)
    self.up_proj = layers.Linear(d, f, dtype, bias=False)
    self.down_proj = layers.Linear(f, d, dtype, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(layers.gelu_tanh(self.gate_proj(x)) * self.up_proj(x))


class GemmaDecoderLayer(nn.Module):
  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    self.input_layernorm = layers.RMSNorm(cfg["width"], cfg["norm_eps"], dtype)
    self.self_attn = GemmaAttention(cfg, dtype)
    self.post_attention_layernorm = layers.RMSNorm(cfg["width"], cfg["norm_eps"], dtype)
    self.mlp = GemmaMLP(cfg, dtype)
    self.dtype = dtype

  def forward(self, x, positions, mask):
    x = x + self.self_attn(self.input_layernorm(x), positions, mask)
    return (x + self.mlp(self.post_attention_layernorm(x))).to(self.dtype)


class Gemma(nn.Module):
  """``embed(tokens int[B, T]) -> float[B, T, D]`` (scaled by sqrt(D)) and
  ``forward(embedded float[B, T, D], positions int[B, T], mask bool[B, T, T]) -> float[B, T, D]`` after the final
  norm."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    self.width, self.dtype = cfg["width"], dtype
    self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["width"])
    self.layers = nn.ModuleList([GemmaDecoderLayer(cfg, dtype) for _ in range(cfg["depth"])])
    self.norm = layers.RMSNorm(cfg["width"], cfg["norm_eps"], dtype)

  def embed(self, tokens: torch.Tensor) -> torch.Tensor:
    vocab = self.embed_tokens.weight.shape[0]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
      raise ValueError(f"token ids must lie in [0, {vocab}) (vlm vocab_size); got [{int(tokens.min())}, "
                       f"{int(tokens.max())}]")
    x = self.embed_tokens.weight[tokens.long()].to(self.dtype)
    return x * torch.sqrt(torch.tensor(float(self.width), dtype=layers.FLOAT32)).to(self.dtype)

  def forward(self, embedded: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if embedded.shape[-1] != self.width:
      raise ValueError(f"Gemma expects embeddings of width {self.width}, got shape {tuple(embedded.shape)}")
    x = embedded.to(self.dtype)
    for layer in self.layers:
      x = layer(x, positions, mask)
    return self.norm(x)
