"""Gemma (v1) decoder in PyTorch (mirrors ``lamp_jax/models/gemma.py``), with Hugging Face module names.

Module names are those of transformers' ``GemmaModel`` (inside PaliGemma at ``model.language_model``):

  embed_tokens.weight[V, D]                                   token embedding (tied output projection)
  layers.{i}.input_layernorm.weight[D]                        RMSNorm scales stored as the offset from 1
  layers.{i}.self_attn.{q_proj[N*H, D], k_proj[K*H, D], v_proj[K*H, D], o_proj[D, N*H]}.weight   no biases
  layers.{i}.post_attention_layernorm.weight[D]               (JAX ``pre_ffw_norm``)
  layers.{i}.mlp.{gate_proj[F, D], up_proj[F, D], down_proj[D, F]}.weight   GeGLU (tanh GELU)
  norm.weight[D]                                              final RMSNorm

The decoder runs over embeddings with an explicit attention mask and RoPE positions, and (``decode``) returns
every layer's keys / values and takes those of earlier positions to prepend (the JAX ``kv_cache``: the π0 expert
attends to the VLM prefix's). No logits. ``embed=False`` builds a decoder without ``embed_tokens`` (π0's action
expert, whose tokens are its own projections).
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

  def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache=None):
    """x float[B, T, D], positions int[B, T], mask bool[B, T, S0 + T], cache None or (k, v) each
    float[B, S0, K, H] -> (float[B, T, D], (k, v) each float[B, T, K, H] of the T new positions, k after RoPE)."""
    b, t, _ = x.shape
    q = layers.apply_rope(self.q_proj(x).reshape(b, t, self.n, self.h), positions, self.rope_max_wavelength)
    k = layers.apply_rope(self.k_proj(x).reshape(b, t, self.k, self.h), positions, self.rope_max_wavelength)
    v = self.v_proj(x).reshape(b, t, self.k, self.h)
    new_kv = (k, v)
    if cache is not None:
      k = torch.cat([cache[0].to(k.dtype), k], dim=1)
      v = torch.cat([cache[1].to(v.dtype), v], dim=1)
    if mask.shape[-1] != k.shape[1]:
      raise ValueError(f"attention mask covers {mask.shape[-1]} keys but there are {k.shape[1]} (cache + new "
                       "tokens)")
    out = layers.dot_product_attention(q, k, v, mask)
    return self.o_proj(out.reshape(b, t, self.n * self.h)), new_kv


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

  def forward(self, x, positions, mask, cache=None):
    """-> (float[B, T, D], this layer's (k, v) of the new positions)."""
    y, new_kv = self.self_attn(self.input_layernorm(x), positions, mask, cache)
    x = x + y
    return (x + self.mlp(self.post_attention_layernorm(x))).to(self.dtype), new_kv


class Gemma(nn.Module):
  """``embed(tokens int[B, T]) -> float[B, T, D]`` (scaled by sqrt(D); ``embed=True`` only),
  ``forward(embedded float[B, T, D], positions int[B, T], mask bool[B, T, T]) -> float[B, T, D]`` after the final
  norm, and ``decode`` (the same with a K/V cache in and out)."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype, embed: bool = True):
    super().__init__()
    self.width, self.dtype = cfg["width"], dtype
    if embed:
      self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["width"])
    self.layers = nn.ModuleList([GemmaDecoderLayer(cfg, dtype) for _ in range(cfg["depth"])])
    self.norm = layers.RMSNorm(cfg["width"], cfg["norm_eps"], dtype)

  def embed(self, tokens: torch.Tensor) -> torch.Tensor:
    if not hasattr(self, "embed_tokens"):
      raise ValueError("this Gemma was built with embed=False (no embed_tokens): it takes embeddings only")
    vocab = self.embed_tokens.weight.shape[0]
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
      raise ValueError(f"token ids must lie in [0, {vocab}) (vlm vocab_size); got [{int(tokens.min())}, "
                       f"{int(tokens.max())}]")
    x = self.embed_tokens.weight[tokens.long()].to(self.dtype)
    return x * torch.sqrt(torch.tensor(float(self.width), dtype=layers.FLOAT32)).to(self.dtype)

  def forward(self, embedded: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return self.decode(embedded, positions, mask)[0]

  def decode(self, embedded: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, kv_cache=None):
    """The decoder with the K/V of earlier positions prepended at every layer (``gemma.Gemma.__call__``).

    Args:
      embedded: float[B, T, D]; positions: int[B, T] RoPE positions.
      mask: bool[B, T, S0 + T] (query, key): the S0 cached keys, then the T new ones.
      kv_cache: None or (keys, values) each float[L, B, S0, K, H] (keys after RoPE), e.g. the cache returned by
        an earlier call over a prefix.
    Returns:
      (last hidden float[B, T, D] after the final norm, (keys, values) each float[L, B, T, K, H] of the new
      positions).
    """
    if embedded.shape[-1] != self.width:
      raise ValueError(f"Gemma expects embeddings of width {self.width}, got shape {tuple(embedded.shape)}")
    if kv_cache is not None and (len(kv_cache[0]) != len(self.layers) or len(kv_cache[1]) != len(self.layers)):
      raise ValueError(f"kv_cache has keys for {len(kv_cache[0])} / values for {len(kv_cache[1])} layers; this "
                       f"Gemma has {len(self.layers)}")
    x = embedded.to(self.dtype)
    keys, values = [], []
    for i, layer in enumerate(self.layers):
      x, (k, v) = layer(x, positions, mask, None if kv_cache is None else (kv_cache[0][i], kv_cache[1][i]))
      keys.append(k)
      values.append(v)
    return self.norm(x), (torch.stack(keys), torch.stack(values))
