"""LaMP Action Expert: a flow-matching transformer over the action chunk, conditioned on guided VLM features.

Axis letters: B batch · H action horizon · A action dim (padded) · S proprio dim · P context (VLM prefix)
tokens · D width.

``action.kind`` selects the design (``build_action_expert``):
  * 'dit' (default, released LaMP): a DiT over [state token; H action tokens] with adaLN-zero time
    conditioning; layers alternate cross-attention to the guided VLM features (even layers) and
    self-attention over the chunk (odd layers); each layer has a gated MLP. ``depth`` counts both kinds
    (released: 24 = 12 cross + 12 self, width 1024, 16 heads).
The π0-style expert (``action.kind='pi0'``, pi0_expert.py: a Gemma sharing the VLM's attention) has the same
call signature with the VLM's per-layer keys / values as its context, ``(x_tau, tau, proprio, prefix_kv,
prefix_mask) -> velocity``; it belongs to the 'pi0' library, since LaMP conditions on guided features instead.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lamp_jax.models import dit, layers

Dtype = Any


class DiTLayer(nn.Module):
  """adaLN-zero transformer layer: (cross- or self-) attention + MLP, both with gated residuals.

  ``context`` is float[B, P, Dc], or for cross layers this layer's precomputed (keys, values) float[B, P, N, H].
  """

  num_heads: int
  head_dim: int
  mlp_dim: int
  cross: bool
  dtype: Dtype = jnp.float32
  attention: str = "heads_major"  # layers.ATTENTION_IMPLEMENTATIONS

  @nn.compact
  def __call__(self, x, temb, context, context_mask):
    x = layers.with_logical_constraint(x, dit.ACTIVATION_AXES)
    width = x.shape[-1]
    shift, scale, gate, m_shift, m_scale, m_gate = dit.Modulation(6, width, self.dtype, name="mod")(temb)
    h = dit.modulate(layers.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="norm1")(x),
                     shift, scale)
    attention = dit.Attention(self.num_heads, self.head_dim, qk_norm=True, dtype=self.dtype,
                              implementation=self.attention, name="attn")
    if self.cross:
      mask = jnp.broadcast_to(context_mask[:, None, :], (x.shape[0], x.shape[1], context_mask.shape[1]))
      if isinstance(context, tuple):  # precomputed (keys, values) of this layer: DiTActionExpert.context_kv
        h = attention(h, mask=mask, kv=context)
      else:
        h = attention(h, context.astype(self.dtype), mask)
    else:
      h = attention(h)
    x = x + gate.astype(self.dtype) * h
    h = dit.modulate(layers.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="norm2")(x),
                     m_shift, m_scale)
    return x + m_gate.astype(self.dtype) * dit.Mlp(self.mlp_dim, self.dtype, name="mlp")(h)


class CrossSelfPair(nn.Module):
  """One cross-attention layer followed by one self-attention layer (the scanned unit)."""

  num_heads: int
  head_dim: int
  mlp_dim: int
  dtype: Dtype = jnp.float32
  attention: str = "heads_major"

  @nn.compact
  def __call__(self, x, temb, context, context_mask):
    kw = dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim, dtype=self.dtype,
              attention=self.attention)
    x = DiTLayer(cross=True, name="cross", **kw)(x, temb, context, context_mask)
    x = DiTLayer(cross=False, name="self", **kw)(x, temb, context, context_mask)
    return x, x  # the pair's output, also as the scan's per-layer output (dropped unless collected)


class DiTActionExpert(nn.Module):
  """``__call__(x_tau float[B, H, A], tau float[B], proprio float[B, S], context float[B, P, Dc],
  context_mask bool[B, P], context_kv=None) -> velocity float32[B, H, A]``.

  The cross-attention keys / values depend only on the context, which is fixed during sampling:
  ``context_kv(context)`` computes them once for every cross layer ((keys, values), each
  float[depth / 2, B, P, N, H]) and ``__call__(..., context_kv=cache)`` uses them instead of projecting
  ``context`` again (same function of the same parameters; ``context`` is then not read).
  ``__call__(..., hidden_after=n)`` returns (velocity, hidden float[B, 1 + H, D]): the token sequence
  [state; H actions] after the first n of the ``depth`` layers (n even; 0 = the input embedding), read by
  representation alignment (lara.py). The velocity is the same.
  """

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  attention: str = "heads_major"  # layers.ATTENTION_IMPLEMENTATIONS

  def _check(self):
    cfg = self.config
    if cfg.depth % 2:
      raise ValueError(f"action.depth={cfg.depth} must be even (alternating cross/self-attention layers)")
    if cfg.width % cfg.num_heads:
      raise ValueError(f"action.num_heads={cfg.num_heads} does not divide action.width={cfg.width}")

  @nn.compact
  def __call__(self, x_tau, tau, proprio, context, context_mask, context_kv=None, hidden_after=None):
    cfg = self.config
    self._check()
    b, horizon, _ = x_tau.shape
    width = cfg.width
    actions = layers.DenseGeneral(width, (None, "embed"), dtype=self.dtype, name="action_in")(x_tau.astype(self.dtype))
    actions = actions + layers.sincos_1d(jnp.arange(horizon), width)[None].astype(self.dtype)
    state = layers.DenseGeneral(width, (None, "embed"), dtype=self.dtype, name="state_in")(proprio.astype(self.dtype))
    x = x_in = jnp.concatenate([state[:, None], actions], axis=1)
    temb = dit.TimestepEmbedder(width, cfg.time_frequency_dim, self.dtype, name="time_embed")(
        jnp.broadcast_to(jnp.asarray(tau, jnp.float32), (b,)))
    blocks = dit.stack(CrossSelfPair, cfg.depth // 2, scan=cfg.scan_layers, remat=cfg.remat,
                       remat_policy=cfg.get("remat_policy", layers.DEFAULT_REMAT_POLICY),
                       unroll=cfg.get("scan_unroll", 1), num_broadcast_args=3,
                       per_layer_args=() if context_kv is None else (1,),
                       name="blocks", num_heads=cfg.num_heads, head_dim=width // cfg.num_heads,
                       mlp_dim=cfg.mlp_ratio * width, dtype=self.dtype, attention=self.attention)
    context = context if context_kv is None else tuple(context_kv)
    if hidden_after is None:
      x = blocks(x, temb, context, context_mask)
    else:
      x, per_pair = blocks(x, temb, context, context_mask, collect=True)
      pairs = self.hidden_pairs(hidden_after)
      hidden = x_in if pairs == 0 else per_pair[pairs - 1]
    shift, scale = dit.Modulation(2, width, self.dtype, name="out_mod")(temb)
    out = dit.modulate(layers.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="norm_out")(x[:, 1:]),
                       shift, scale)
    velocity = layers.DenseGeneral(x_tau.shape[-1], ("embed", None), dtype=self.dtype, name="action_out")(
        out).astype(jnp.float32)
    return velocity if hidden_after is None else (velocity, hidden)

  def hidden_pairs(self, hidden_after: int) -> int:
    """Cross / self pairs run before the hidden state after ``hidden_after`` of the ``depth`` layers (even: the
    stack's unit is one cross + one self layer); errors name the config field."""
    depth = int(self.config.depth)
    if not 0 <= hidden_after <= depth or hidden_after % 2:
      raise ValueError(f"the DiT action expert's hidden state after layer {hidden_after} of model.action.depth="
                       f"{depth}: give an even layer count in [0, {depth}] (layers alternate cross / self "
                       "attention in pairs; config field model.lara.block_from_end counts from the last layer)")
    return hidden_after // 2

  def context_kv(self, context: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Every cross layer's (keys, values) of ``context`` float[B, P, Dc]: each float[depth / 2, B, P, N, H].

    Reads the existing parameters (call after ``init``)."""
    cfg = self.config
    self._check()
    kw = dict(num_heads=cfg.num_heads, head_dim=cfg.width // cfg.num_heads, qk_norm=True, dtype=self.dtype)
    params = nn.unbox(self.variables["params"])
    context = context.astype(self.dtype)
    if cfg.scan_layers:  # stacked parameters: one projection per layer along the leading 'layers' axis
      return jax.vmap(lambda p: dit.project_kv(p, context, **kw))(params["blocks"]["cross"]["attn"])
    per_layer = [dit.project_kv(params[f"blocks_{i}"]["cross"]["attn"], context, **kw)
                 for i in range(cfg.depth // 2)]
    return tuple(jnp.stack(t) for t in zip(*per_layer))


ACTION_EXPERTS = {"dit": DiTActionExpert}


def build_action_expert(config: ml_collections.ConfigDict, dtype: Dtype, **kwargs) -> nn.Module:
  """The action expert selected by ``config.kind`` (see module docstring); kwargs go to the module (e.g. name)."""
  if config.kind not in ACTION_EXPERTS:
    raise ValueError(f"action.kind={config.kind!r} is unknown; choose one of {sorted(ACTION_EXPERTS)}")
  return ACTION_EXPERTS[config.kind](config, dtype=dtype, **kwargs)
