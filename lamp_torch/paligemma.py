"""PaliGemma prefix (SigLIP image tokens + text tokens through a bidirectional prefix-LM Gemma) in PyTorch.

Mirrors the prefix path of ``lamp_jax/models/paligemma.py``: each camera's image through SigLIP and the
``multi_modal_projector`` to the LM width (unscaled; plus camera c's learned embedding when
``camera_embeddings`` > 0), then the prompt embeddings (scaled by sqrt(D)); every real prefix token attends to
every real prefix token; RoPE positions skip padding (``cumsum(mask) - 1``).

Module names below ``model.`` are those of transformers' ``PaliGemmaForConditionalGeneration`` (5.x):
``model.vision_tower.*``, ``model.multi_modal_projector.linear.*``, ``model.language_model.*``; the only
addition is ``camera_embedding[C, D]`` (not part of PaliGemma). Axis letters: b batch · c cameras · n patches
per image · l prompt tokens · p prefix length · d LM width.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lamp_torch import gemma, layers, siglip


class _Projector(nn.Module):
  def __init__(self, vision_width: int, width: int, dtype: torch.dtype):
    super().__init__()
    self.linear = layers.Linear(vision_width, width, dtype)


class _PaliGemmaModel(nn.Module):
  """The ``model.`` level of transformers' PaliGemma: vision tower, projector, language model."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    vision, llm = cfg["vision"], cfg["llm"]
    self.vision_tower = siglip.SiglipVisionTower(vision, dtype)
    self.multi_modal_projector = _Projector(vision["width"], llm["width"], dtype)
    self.language_model = gemma.Gemma(llm, dtype)


class PaliGemma(nn.Module):
  """``cfg``: {'vision': SigLIP fields, 'llm': Gemma fields, 'camera_embeddings': int} (the resolved dataclass
  fields of ``paligemma.PaliGemmaConfig``, as the export's config.json ``vlm`` section holds them)."""

  def __init__(self, cfg: Mapping[str, Any], dtype: torch.dtype):
    super().__init__()
    self.cfg = cfg
    self.model = _PaliGemmaModel(cfg, dtype)
    self.num_camera_embeddings = int(cfg.get("camera_embeddings", 0) or 0)
    if self.num_camera_embeddings:
      self.camera_embedding = nn.Parameter(torch.zeros(self.num_camera_embeddings, cfg["llm"]["width"]))

  def embed_images(self, images: torch.Tensor) -> torch.Tensor:
    """images float32[B, C, H, W, 3] in [-1, 1] -> float[B, C * N, D]."""
    b, c = images.shape[:2]
    tokens = self.model.vision_tower(images.reshape((b * c,) + tuple(images.shape[2:])))
    tokens = self.model.multi_modal_projector.linear(tokens)
    tokens = tokens.reshape(b, c, tokens.shape[1], tokens.shape[2])
    if self.num_camera_embeddings:
      if c > self.num_camera_embeddings:
        raise ValueError(f"{c} cameras but the VLM config has camera_embeddings={self.num_camera_embeddings}")
      tokens = tokens + self.camera_embedding[:c][None, :, None, :].to(tokens.dtype)
    return tokens.reshape(b, c * tokens.shape[2], tokens.shape[3])

  def embed_prefix(self, images, image_mask, tokens, token_mask):
    """(embeds float[B, P, D], prefix_mask bool[B, P]), P = C * N + L (``PaliGemma.embed_prefix``)."""
    if images.ndim != 5:
      raise ValueError(f"images must be float[B, cameras, H, W, 3], got shape {tuple(images.shape)}")
    img = self.embed_images(images)
    per_image = img.shape[1] // images.shape[1]
    img_mask = torch.repeat_interleave(image_mask.bool(), per_image, dim=1)
    txt = self.model.language_model.embed(tokens)
    return torch.cat([img.to(txt.dtype), txt], dim=1), torch.cat([img_mask, token_mask.bool()], dim=1)

  def forward(self, images, image_mask, tokens, token_mask):
    """Prefix features: (last hidden float[B, P, D] after the final norm, prefix_mask bool[B, P])."""
    hidden, _, prefix_mask = self.prefix(images, image_mask, tokens, token_mask)
    return hidden, prefix_mask

  def prefix(self, images, image_mask, tokens, token_mask):
    """The prefix pass: (last hidden float[B, P, D], (keys, values) each float[L, B, P, K, H] of every LM layer
    (keys after RoPE; the JAX ``kv_cache``), prefix_mask bool[B, P])."""
    embeds, prefix_mask = self.embed_prefix(images, image_mask, tokens, token_mask)
    attention_mask = prefix_mask[:, None, :] & prefix_mask[:, :, None]
    positions = torch.cumsum(prefix_mask.to(torch.int32), dim=1) - 1
    hidden, kv_cache = self.model.language_model.decode(embeds, positions, attention_mask)
    return hidden, kv_cache, prefix_mask
