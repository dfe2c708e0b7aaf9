"""SigLIP ViT image encoder in PyTorch (mirrors ``lamp_jax/models/siglip.py``), with Hugging Face module names.

Module names are those of transformers' ``SiglipVisionTransformer`` (as inside ``PaliGemmaForConditionalGeneration``
at ``model.vision_tower``), so the exported VLM tensors load there unchanged where the layouts match:

  embeddings.patch_embedding.{weight[D, 3, P, P], bias[D]}      stem 'patch' (weight[D, C', 1, 1] for stem 'conv')
  embeddings.position_embedding.weight[N, D]                    posemb 'learn' only ('sincos2d' has no parameters)
  embeddings.stem.{conv_i.weight[C', C, 3, 3], conv_i.bias, norm_i.weight, norm_i.bias}   stem 'conv' only
  encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}
  post_layernorm

The per-token projection to the LM width (JAX ``img/head``) lives in ``paligemma.py`` as HF's
``multi_modal_projector.linear``. Call: images float[B, H, W, 3] in [-1, 1] -> float[B, N, D] (before the head).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn
import torch.nn.functional as F

from lamp_torch import layers


class SiglipAttention(nn.Module):
  """Bidirectional multi-head self-attention (q, k, v, out projections with biases)."""

  def __init__(self, width: int, num_heads: int, dtype: torch.dtype):
    super().__init__()
    self.num_heads, self.head_dim = num_heads, width // num_heads
    self.q_proj = layers.Linear(width, width, dtype)
    self.k_proj = layers.Linear(width, width, dtype)
    self.v_proj = layers.Linear(width, width, dtype)
    self.out_proj = layers.Linear(width, width, dtype)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, n, _ = x.shape
    heads = (b, n, self.num_heads, self.head_dim)
    q, k, v = (proj(x).reshape(heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
    out = layers.dot_product_attention(q, k, v, None)
    return self.out_proj(out.reshape(b, n, -1))


class SiglipMLP(nn.Module):
  def __init__(self, width: int, mlp_dim: int, dtype: torch.dtype):
    super().__init__()
    self.fc1 = layers.Linear(width, mlp_dim, dtype)
    self.fc2 = layers.Linear(mlp_dim, width, dtype)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(layers.gelu_tanh(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
  """Pre-LN block: x + MHA(LN(x)); x + MLP(LN(x))."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    width, eps = cfg["width"], cfg["norm_eps"]
    self.layer_norm1 = layers.LayerNorm(width, eps, dtype)
    self.self_attn = SiglipAttention(width, cfg["num_heads"], dtype)
    self.layer_norm2 = layers.LayerNorm(width, eps, dtype)
    self.mlp = SiglipMLP(width, cfg["mlp_dim"], dtype)
    self.dtype = dtype

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.self_attn(self.layer_norm1(x))
    return (x + self.mlp(self.layer_norm2(x))).to(self.dtype)


class SiglipEncoder(nn.Module):
  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    self.layers = nn.ModuleList([SiglipEncoderLayer(cfg, dtype) for _ in range(cfg["depth"])])

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for layer in self.layers:
      x = layer(x)
    return x


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """XLA / TF 'SAME' padding (low, high) of one spatial axis: the extra pixel goes to the high side."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class ConvStem(nn.Module):
  """log2(P) 3x3 stride-2 convolutions with GroupNorm (float32) + ReLU (``siglip.ConvStem``)."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    self.dtype, self.eps = dtype, cfg["norm_eps"]
    channels, in_channels = cfg["stem_width"], 3
    self.num_convs = int(cfg["patch_size"]).bit_length() - 1
    self.groups = []
    for i in range(self.num_convs):
      self.add_module(f"conv_{i}", _Conv(in_channels, channels, 3))
      self.add_module(f"norm_{i}", _Affine(channels))
      self.groups.append(math.gcd(8, channels))
      in_channels, channels = channels, channels * 2
    self.out_channels = in_channels

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x float[B, 3, H, W] -> float[B, C', H / P, W / P]."""
    for i in range(self.num_convs):
      conv, norm = getattr(self, f"conv_{i}"), getattr(self, f"norm_{i}")
      pad_h, pad_w = _same_padding(x.shape[2], 3, 2), _same_padding(x.shape[3], 3, 2)
      x = F.pad(x, (pad_w[0], pad_w[1], pad_h[0], pad_h[1]))
      x = F.conv2d(x.to(self.dtype), conv.weight.to(self.dtype), conv.bias.to(self.dtype), stride=2)
      x = F.group_norm(x.to(layers.FLOAT32), self.groups[i], norm.weight.to(layers.FLOAT32),
                       norm.bias.to(layers.FLOAT32), self.eps)
      x = torch.relu(x).to(self.dtype)
    return x


class _Conv(nn.Module):
  def __init__(self, in_channels: int, out_channels: int, kernel: int):
    super().__init__()
    self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel, kernel))
    self.bias = nn.Parameter(torch.zeros(out_channels))


class _Affine(nn.Module):
  def __init__(self, channels: int):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))


class SiglipEmbeddings(nn.Module):
  """Patch (or conv-stem) embedding plus learned or fixed 2-D sin-cos positions."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    self.cfg, self.dtype = cfg, dtype
    width, patch = cfg["width"], cfg["patch_size"]
    kernel, in_channels = patch, 3
    if cfg["stem"] == "conv":
      self.stem = ConvStem(cfg, dtype)
      kernel, in_channels = 1, self.stem.out_channels
    self.kernel = kernel
    self.patch_embedding = _Conv(in_channels, width, kernel)
    if cfg["posemb"] == "learn":
      self.position_embedding = nn.Embedding((cfg["image_size"] // patch) ** 2, width)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    cfg = self.cfg
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"SigLIP expects images float[B, H, W, 3], got shape {tuple(images.shape)}")
    height, width = images.shape[1:3]
    if height % cfg["patch_size"] or width % cfg["patch_size"]:
      raise ValueError(f"image size {height}x{width} is not a multiple of patch_size={cfg['patch_size']}")
    x = images.to(self.dtype).permute(0, 3, 1, 2)
    if cfg["stem"] == "conv":
      x = self.stem(x)
    w = self.patch_embedding
    x = F.conv2d(x, w.weight.to(self.dtype), w.bias.to(self.dtype), stride=self.kernel)
    b, d, gh, gw = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b, gh * gw, d)
    if cfg["posemb"] == "learn":
      if gh * gw != self.position_embedding.weight.shape[0]:
        raise ValueError(f"images of {height}x{width} give {gh * gw} patches but the learned position embedding "
                         f"has {self.position_embedding.weight.shape[0]} (vision image_size={cfg['image_size']})")
      pos = self.position_embedding.weight
    else:
      pos = layers.sincos_2d(gh, gw, d, device=x.device)
    return (x + pos[None].to(self.dtype)).to(self.dtype)


class SiglipVisionTower(nn.Module):
  """``embeddings`` -> ``encoder`` -> ``post_layernorm``: float[B, H, W, 3] -> float[B, N, D]."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    self.embeddings = SiglipEmbeddings(cfg, dtype)
    self.encoder = SiglipEncoder(cfg, dtype)
    self.post_layernorm = layers.LayerNorm(cfg["width"], cfg["norm_eps"], dtype)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    return self.post_layernorm(self.encoder(self.embeddings(images)))
