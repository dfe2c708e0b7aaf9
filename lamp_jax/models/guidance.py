"""Gated motion guidance: one cross-attention layer from VLM features to the motion representation.

  q   = LayerNorm(vlm)                         vlm    float[B, P, Dv]   (VLM last hidden states)
  kv  = LayerNorm(Dense_Dv(motion))            motion float[B, N, Dm]   (Motion Expert last-block hidden)
  out = vlm + sigmoid(g) * MHA(q, kv, kv)      float[B, P, Dv]

``g`` is one learned scalar, initialised at ``gate_init_logit``. Released LaMP code: 0.0 (gate 0.5), which its
config calls the paper setting; the paper text says the gate "is initialized at zero" and guidance "gradually
increases" — use a strongly negative logit (e.g. -6, gate 0.0025) for that reading. ``gate_override`` replaces
sigmoid(g) by a given value (e.g. 0.0 reproduces the w/o-motion path exactly).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lamp_jax.models import dit, layers

Dtype = Any


class GatedMotionGuidance(nn.Module):
  """``__call__(vlm float[B, P, Dv], motion float[B, N, Dm], gate_override=None) -> (guided [B, P, Dv], gate [])``.

  ``gate()`` returns sigmoid(g) alone (float32 scalar) for logging when guidance is not run.
  """

  config: ml_collections.ConfigDict
  width: int
  dtype: Dtype = jnp.float32
  attention: str = "heads_major"  # layers.ATTENTION_IMPLEMENTATIONS

  def setup(self):
    cfg = self.config
    if self.width % cfg.num_heads:
      raise ValueError(f"guidance.num_heads={cfg.num_heads} does not divide the VLM width {self.width}")
    self.query_norm = layers.LayerNorm(dtype=self.dtype)
    self.motion_proj = layers.DenseGeneral(self.width, ("embed", "embed"), dtype=self.dtype)
    self.motion_norm = layers.LayerNorm(dtype=self.dtype)
    self.attn = dit.Attention(cfg.num_heads, self.width // cfg.num_heads, dtype=self.dtype,
                              implementation=self.attention)
    self.gate_logit = self.param("gate_logit",
                                 layers.param_with_axes(nn.initializers.constant(cfg.gate_init_logit), ()), (),
                                 jnp.float32)

  def gate(self) -> jax.Array:
    return jax.nn.sigmoid(self.gate_logit)

  def __call__(self, vlm: jax.Array, motion: jax.Array, gate_override: float | jax.Array | None = None):
    if vlm.shape[-1] != self.width:
      raise ValueError(f"guidance built for VLM width {self.width}, got features of shape {vlm.shape}")
    query = self.query_norm(vlm)
    kv = self.motion_norm(self.motion_proj(motion.astype(self.dtype)))
    attn = self.attn(query, kv)
    gate = self.gate()
    applied = gate if gate_override is None else jnp.asarray(gate_override, jnp.float32)
    guided = vlm + (applied * attn.astype(jnp.float32)).astype(vlm.dtype)
    return guided, gate
