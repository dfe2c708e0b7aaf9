"""LaMP Motion Expert in PyTorch (mirrors ``lamp_jax/models/motion_expert.py``; the math is documented there).

Axis letters: B batch · K keypoints (a G x G grid) · T future steps · P VLM prefix tokens · C condition tokens
(``cond_len``) · N motion tokens · D width · p spatial patch · F frames per token.

Modules: ``cond_proj``, ``cond_pad[C, D]``, ``patch_embed``, ``time_embed.{fc1,fc2}``,
``blocks.{i}.{attn_mod.proj, norm1, attn.{query,key,value,query_norm,key_norm,out}, mlp_mod.proj, norm2,
mlp.{fc1,fc2}}``, ``out_mod.proj``, ``norm_out``, ``proj_out``. ``forward`` returns
``(velocity float32[B, K, T, 3], hidden float[B, N, D])``: the last block's motion-token output is the motion
representation read by guidance. The last block runs on the motion queries only when
``prune_last_condition`` (the JAX default; the motion stream is the same function of the same parameters).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lamp_torch import dit, layers


def grid_side(cfg: Mapping[str, Any]) -> int:
  side = int(round(cfg["num_keypoints"]**0.5))
  if side * side != cfg["num_keypoints"]:
    raise ValueError(f"motion.num_keypoints={cfg['num_keypoints']} is not a perfect square")
  return side


def token_grid(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
  """(latent frames, grid rows, grid cols) of motion tokens."""
  side = grid_side(cfg)
  if side % cfg["patch_size"]:
    raise ValueError(f"motion.patch_size={cfg['patch_size']} does not divide the keypoint grid side {side}")
  if cfg["num_steps"] % cfg["frames_per_token"]:
    raise ValueError(f"motion.frames_per_token={cfg['frames_per_token']} does not divide motion.num_steps="
                     f"{cfg['num_steps']}")
  return cfg["num_steps"] // cfg["frames_per_token"], side // cfg["patch_size"], side // cfg["patch_size"]


def patchify(x: torch.Tensor, cfg: Mapping[str, Any]) -> torch.Tensor:
  """float[B, K, T, 3] -> float[B, N, p*p*F*3], tokens in (frame, row, col) order."""
  b = x.shape[0]
  f, h, w = token_grid(cfg)
  p, fr = cfg["patch_size"], cfg["frames_per_token"]
  x = x.reshape(b, h, p, w, p, f, fr, 3).permute(0, 5, 1, 3, 2, 4, 6, 7)
  return x.reshape(b, f * h * w, p * p * fr * 3)


def unpatchify(tokens: torch.Tensor, cfg: Mapping[str, Any]) -> torch.Tensor:
  """float[B, N, p*p*F*3] -> float[B, K, T, 3] (inverse of ``patchify``)."""
  b = tokens.shape[0]
  f, h, w = token_grid(cfg)
  p, fr = cfg["patch_size"], cfg["frames_per_token"]
  x = tokens.reshape(b, f, h, w, p, p, fr, 3).permute(0, 2, 4, 3, 5, 1, 6, 7)
  return x.reshape(b, h * p * w * p, f * fr, 3)


def rope_3d(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
  """3-D RoPE: head dim split into (time, row, col) chunks. x float[B, N, heads, H]; positions float[N, 3]."""
  head_dim = x.shape[-1]
  spatial = ((head_dim - head_dim // 4) // 2) // 2 * 2
  temporal = head_dim - 2 * spatial
  if temporal % 2 or temporal <= 0 or spatial <= 0:
    raise ValueError(f"3-D RoPE needs an even head dim >= 8, got {head_dim}")
  chunks = torch.split(x, [temporal, spatial, spatial], dim=-1)
  pos = positions[None].expand((x.shape[0],) + tuple(positions.shape))
  return torch.cat([layers.apply_rope(c, pos[..., i]) for i, c in enumerate(chunks)], dim=-1)


def pool_condition(features: torch.Tensor, feature_mask: torch.Tensor, pool: int):
  """Masked mean over windows of ``pool`` prefix tokens (``motion.cond_pool``; 1 = unchanged)."""
  if pool < 1:
    raise ValueError(f"motion.cond_pool={pool} must be >= 1")
  if pool == 1:
    return features, feature_mask
  b, p, d = features.shape
  windows = -(-p // pool)
  extra = windows * pool - p
  features = torch.nn.functional.pad(features, (0, 0, 0, extra)).reshape(b, windows, pool, d)
  weights = torch.nn.functional.pad(feature_mask, (0, extra)).reshape(b, windows, pool).to(features.dtype)
  count = torch.sum(weights, dim=-1, keepdim=True)
  pooled = torch.sum(features * weights[..., None], dim=2) / torch.clamp(count, min=1.0)
  return pooled, count[..., 0] > 0


class CogVideoXBlock(nn.Module):
  """Expert adaLN-zero block over (condition, motion) streams with one joint attention and one shared MLP."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, use_rope: bool, motion_only: bool,
               dtype: torch.dtype):
    super().__init__()
    self.use_rope, self.motion_only, self.dtype = use_rope, motion_only, dtype
    self.attn_mod = dit.Modulation(6, width, width, dtype)
    self.norm1 = layers.LayerNorm(width, 1e-5, dtype)
    self.attn = dit.Attention(width, num_heads, width // num_heads, dtype, qk_norm=True)
    self.mlp_mod = dit.Modulation(6, width, width, dtype)
    self.norm2 = layers.LayerNorm(width, 1e-5, dtype)
    self.mlp = dit.Mlp(width, mlp_dim, dtype)

  def forward(self, cond, motion, temb, positions):
    num_cond = cond.shape[1]
    gate_dtype = self.dtype
    shift, scale, gate, c_shift, c_scale, c_gate = self.attn_mod(temb)
    motion_in = dit.modulate(self.norm1(motion), shift, scale)
    x = torch.cat([dit.modulate(self.norm1(cond), c_shift, c_scale), motion_in], dim=1)

    def rope_motion(qk):  # RoPE on motion tokens only, as CogVideoX.
      return torch.cat([qk[:, :num_cond], rope_3d(qk[:, num_cond:], positions)], dim=1)

    if self.motion_only:
      q_transform = (lambda q: rope_3d(q, positions)) if self.use_rope else None
      attn = self.attn(motion_in, x, q_transform=q_transform, k_transform=rope_motion if self.use_rope else None)
      motion = motion + gate.to(gate_dtype) * attn
      shift, scale, gate, _, _, _ = self.mlp_mod(temb)
      h = self.mlp(dit.modulate(self.norm2(motion), shift, scale))
      return cond, motion + gate.to(gate_dtype) * h

    transform = rope_motion if self.use_rope else None
    attn = self.attn(x, q_transform=transform, k_transform=transform)
    cond = cond + c_gate.to(gate_dtype) * attn[:, :num_cond]
    motion = motion + gate.to(gate_dtype) * attn[:, num_cond:]
    shift, scale, gate, c_shift, c_scale, c_gate = self.mlp_mod(temb)
    x = torch.cat([dit.modulate(self.norm2(cond), c_shift, c_scale),
                   dit.modulate(self.norm2(motion), shift, scale)], dim=1)
    h = self.mlp(x)
    return cond + c_gate.to(gate_dtype) * h[:, :num_cond], motion + gate.to(gate_dtype) * h[:, num_cond:]


class MotionExpert(nn.Module):
  """Velocity field over normalised scene-flow deltas conditioned on VLM features (``cfg`` = model.motion)."""

  def __init__(self, cfg: Mapping[str, Any], feature_width: int, dtype: torch.dtype):
    super().__init__()
    self.cfg, self.dtype = cfg, dtype
    width = cfg["width"]
    fan_in = cfg["patch_size"]**2 * cfg["frames_per_token"] * 3
    self.cond_proj = layers.Linear(feature_width, width, dtype)
    self.cond_pad = nn.Parameter(torch.zeros(cfg["cond_len"], width))
    self.patch_embed = layers.Linear(fan_in, width, dtype)
    self.time_embed = dit.TimestepEmbedder(width, cfg["time_frequency_dim"], dtype)
    prune_last = bool(cfg.get("prune_last_condition", True))
    self.blocks = nn.ModuleList([
        CogVideoXBlock(width, cfg["num_heads"], cfg["mlp_ratio"] * width, bool(cfg["use_rope"]),
                       prune_last and i == cfg["depth"] - 1, dtype) for i in range(cfg["depth"])])
    self.out_mod = dit.Modulation(2, width, width, dtype)
    self.norm_out = layers.LayerNorm(width, 1e-5, dtype)
    self.proj_out = layers.Linear(width, fan_in, dtype)

  def forward(self, x_tau: torch.Tensor, tau: torch.Tensor, features: torch.Tensor, feature_mask: torch.Tensor):
    cfg = self.cfg
    b, k, t, c = x_tau.shape
    if (k, t, c) != (cfg["num_keypoints"], cfg["num_steps"], 3):
      raise ValueError(f"MotionExpert input has shape {tuple(x_tau.shape)}; config expects [B, "
                       f"motion.num_keypoints={cfg['num_keypoints']}, motion.num_steps={cfg['num_steps']}, 3]")
    features, feature_mask = pool_condition(features, feature_mask, int(cfg.get("cond_pool", 1)))
    prefix, cond_len = features.shape[1], cfg["cond_len"]
    if prefix > cond_len:
      raise ValueError(f"VLM prefix has {prefix} tokens (after motion.cond_pool) but motion.cond_len={cond_len}")
    frames, rows, cols = token_grid(cfg)

    cond = torch.nn.functional.pad(self.cond_proj(features), (0, 0, 0, cond_len - prefix))
    mask = torch.nn.functional.pad(feature_mask, (0, cond_len - prefix))
    cond = torch.where(mask[..., None], cond, self.cond_pad.to(self.dtype)[None])

    motion = self.patch_embed(patchify(x_tau.to(self.dtype), cfg))
    motion = motion + layers.sincos_3d(frames, rows, cols, cfg["width"], device=motion.device)[None].to(self.dtype)
    ff, rr, cc = torch.meshgrid(torch.arange(frames), torch.arange(rows), torch.arange(cols), indexing="ij")
    positions = torch.stack([ff.reshape(-1), rr.reshape(-1), cc.reshape(-1)], dim=-1).to(layers.FLOAT32)
    positions = positions.to(motion.device)

    temb = self.time_embed(tau.to(layers.FLOAT32).expand(b))
    for block in self.blocks:
      cond, motion = block(cond, motion, temb, positions)
    hidden = motion
    shift, scale = self.out_mod(temb)
    out = self.proj_out(dit.modulate(self.norm_out(hidden), shift, scale))
    return unpatchify(out, cfg).to(layers.FLOAT32), hidden
