"""Gemma (v1) decoder: RMSNorm, RoPE, multi-query / grouped-query attention, GeGLU MLP, tied embedding.

Parameter names follow big_vision's ``gemma.py`` (the PaliGemma checkpoint layout):

  embedder/input_embedding[V, D]                   token embedding, also the (tied) output projection
  layers/...                                       the depth-L stack, scanned: every leaf has a leading [L] axis
      pre_attention_norm/scale[D]
      attn/q_einsum/w[N, D, H]  attn/kv_einsum/w[2, K, D, H]  attn/attn_vec_einsum/w[N, H, D]
      pre_ffw_norm/scale[D]
      mlp/gating_einsum[2, D, F]  mlp/linear[F, D]
  final_norm/scale[D]

Axis letters: b batch · t query positions · s key positions · d width · n query heads · k kv heads
  · h head dim · f MLP width · v vocabulary · l layers.

The decoder takes embeddings (not tokens) so that other token streams (e.g. an action expert) can reuse it, an
explicit attention mask (prefix-LM, causal or any block structure; see :func:`make_attention_mask`), and an
optional per-layer K/V cache of earlier positions (keys after RoPE), which it prepends to its own keys/values.
Precision: params float32, activations ``config.dtype``, norms / softmax / RoPE in float32.
Activation sharding: every block input is constrained to the logical axes ``ACTIVATION_AXES``
(``layers.with_logical_constraint``: a no-op outside the trainer's ``activation_sharding`` context).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lamp_jax.models import layers

ACTIVATION_AXES = layers.ACTIVATION_AXES  # block inputs float[B, T, D]


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Gemma decoder hyper-parameters.

  Attributes:
    width: model width D.
    depth: number of decoder layers.
    mlp_dim: GeGLU hidden width F.
    num_heads: query heads N.
    num_kv_heads: key/value heads K (1 = multi-query attention; must divide num_heads).
    head_dim: per-head width H (even, for RoPE).
    vocab_size: embedding rows V.
    norm_eps: RMSNorm epsilon.
    rope_max_wavelength: RoPE base.
    dtype: activation dtype name, 'float32' or 'bfloat16'.
    remat: rematerialise each layer in the backward pass.
    remat_policy: what a rematerialised layer keeps for the backward pass (``layers.REMAT_POLICIES``).
    attention: attention implementation (``layers.ATTENTION_IMPLEMENTATIONS``; all compute the same function).
  """

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  vocab_size: int = 257_152
  norm_eps: float = 1e-6
  rope_max_wavelength: float = 10_000.0
  dtype: str = "float32"
  remat: bool = False
  remat_policy: str = layers.DEFAULT_REMAT_POLICY
  attention: str = "heads_major"

  def __post_init__(self):
    layers.check_attention_implementation(self.attention, "GemmaConfig.attention")
    layers.check_remat_policy(self.remat_policy, "GemmaConfig.remat_policy")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"GemmaConfig.num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"GemmaConfig.head_dim={self.head_dim} must be even (RoPE)")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"GemmaConfig.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")


# Named variants. 'gemma_2b' is PaliGemma's language model, 'gemma_300m' π0's action expert, 'dummy' openpi's
# test size; 'tiny' has odd dimensions and a byte-level vocabulary for fast tests.
VARIANTS: dict[str, GemmaConfig] = {
    "tiny": GemmaConfig(width=48, depth=3, mlp_dim=112, num_heads=3, num_kv_heads=1, head_dim=16, vocab_size=263),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
}


def get_config(variant: str, **overrides: Any) -> GemmaConfig:
  """Returns the named variant with ``overrides`` applied (e.g. vocab_size=..., dtype='bfloat16')."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown Gemma variant {variant!r}; known: {sorted(VARIANTS)}")
  return dataclasses.replace(VARIANTS[variant], **overrides)


def make_attention_mask(input_mask: jax.Array, block_ids: jax.Array) -> jax.Array:
  """Block-causal attention mask (big_vision / openpi ``mask_ar`` semantics).

  Token t may attend to token s iff both are real tokens and ``cumsum(block_ids)[s] <= cumsum(block_ids)[t]``.
  All-zero ``block_ids`` give full bidirectional attention; all-one give causal attention; a prefix of zeros
  followed by ones gives the prefix-LM pattern (bidirectional prefix, causal suffix, the prefix never sees the
  suffix).

  Args:
    input_mask: bool[B, S] True on real (non-padding) tokens.
    block_ids: int/bool[B, S] 1 where a new causal block starts, 0 to continue the previous block.
  Returns:
    bool[B, S, S] (query, key).
  """
  cum = jnp.cumsum(block_ids.astype(jnp.int32), axis=1)
  mask = cum[:, None, :] <= cum[:, :, None]
  valid = input_mask[:, None, :] & input_mask[:, :, None]
  return mask & valid


def positions_from_mask(input_mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
  """RoPE positions that skip padding: ``offset + cumsum(input_mask) - 1`` (int32[B, S])."""
  offset = jnp.asarray(offset, jnp.int32)
  if offset.ndim == 1:
    offset = offset[:, None]
  return offset + jnp.cumsum(input_mask.astype(jnp.int32), axis=1) - 1


class Embedder(nn.Module):
  """Token embedding with Gemma's sqrt(width) input scaling, and the tied output projection."""

  config: GemmaConfig

  def setup(self):
    cfg = self.config
    self.input_embedding = self.param(
        "input_embedding", layers.param_with_axes(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
        (cfg.vocab_size, cfg.width), jnp.float32)

  def encode(self, tokens):
    """int[B, T] -> float[B, T, D] = embedding * sqrt(D), in the activation dtype."""
    dtype = jnp.dtype(self.config.dtype)
    x = jnp.take(self.input_embedding, tokens, axis=0).astype(dtype)
    return x * jnp.sqrt(jnp.float32(self.config.width)).astype(dtype)

  def decode(self, x):
    """float[B, T, D] -> float32[B, T, V] logits (tied weights)."""
    dtype = jnp.dtype(self.config.dtype)
    return jnp.einsum("btd,vd->btv", x.astype(dtype), self.input_embedding.astype(dtype),
                      preferred_element_type=jnp.float32)


class Einsum(nn.Module):
  """A weight ``w`` of a given shape and logical axes, applied with an einsum string."""

  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  dtype: Any = jnp.float32
  in_axis: tuple[int, ...] = (-2,)  # fan-in axes for the LeCun-normal init
  batch_axis: tuple[int, ...] = ()  # independent axes (heads, the k/v pair) excluded from the fan-in

  @nn.compact
  def __call__(self, eqn: str, x):
    init = nn.initializers.lecun_normal(in_axis=self.in_axis, out_axis=-1, batch_axis=self.batch_axis)
    w = self.param("w", layers.param_with_axes(init, self.axes), self.shape, jnp.float32)
    return jnp.einsum(eqn, x, w.astype(self.dtype))


class Attention(nn.Module):
  """GQA / MQA self-attention with RoPE and an optional prepended K/V cache."""

  config: GemmaConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache):
    """x: float[B, T, D]; positions: int[B, T]; mask: bool[B, T, S0 + T];
    cache: None or (k, v) each float[B, S0, K, H]. Returns (float[B, T, D], (k, v) of float[B, T, K, H])."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    n, kh, d, h = cfg.num_heads, cfg.num_kv_heads, cfg.width, cfg.head_dim
    q = Einsum((n, d, h), ("q_heads", "embed", "head_dim"), dtype, batch_axis=(0,),
               name="q_einsum")("btd,ndh->btnh", x)
    k, v = Einsum((2, kh, d, h), (None, "kv_heads", "embed", "head_dim"), dtype, batch_axis=(0, 1),
                  name="kv_einsum")("bsd,ckdh->cbskh", x)
    q = layers.apply_rope(q, positions, cfg.rope_max_wavelength)
    k = layers.apply_rope(k, positions, cfg.rope_max_wavelength)
    new_kv = (k, v)
    if cache is not None:
      k = jnp.concatenate([cache[0].astype(dtype), k], axis=1)
      v = jnp.concatenate([cache[1].astype(dtype), v], axis=1)
    if mask.shape[-1] != k.shape[1]:
      raise ValueError(f"attention mask covers {mask.shape[-1]} keys but there are {k.shape[1]} "
                       "(cache + new tokens)")
    out = layers.dot_product_attention(q, k, v, mask, implementation=cfg.attention)
    out = Einsum((n, h, d), ("q_heads", "head_dim", "embed"), dtype, in_axis=(-3, -2),
                 name="attn_vec_einsum")("btnh,nhd->btd", out)
    return out, new_kv


class FeedForward(nn.Module):
  """GeGLU MLP: (gelu_tanh(x W_gate) * (x W_up)) W_down, big_vision parameter layout."""

  config: GemmaConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    w_gating = self.param("gating_einsum",
                          layers.param_with_axes(
                              nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,)),
                              (None, "embed", "mlp")),
                          (2, cfg.width, cfg.mlp_dim), jnp.float32).astype(dtype)
    w_linear = self.param("linear", layers.param_with_axes(nn.initializers.lecun_normal(), ("mlp", "embed")),
                          (cfg.mlp_dim, cfg.width), jnp.float32).astype(dtype)
    gate = nn.gelu(jnp.einsum("btd,df->btf", x, w_gating[0]), approximate=True)
    up = jnp.einsum("btd,df->btf", x, w_gating[1])
    return jnp.einsum("btf,fd->btd", gate * up, w_linear)


class Block(nn.Module):
  """One pre-norm decoder layer. Scanned over layers: (x, positions, mask, cache_l) -> (x, (k, v, x))."""

  config: GemmaConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = layers.with_logical_constraint(x, ACTIVATION_AXES)
    y = layers.RMSNorm(cfg.norm_eps, dtype, name="pre_attention_norm")(x)
    y, (k, v) = Attention(cfg, name="attn")(y, positions, mask, cache)
    x = x + y
    y = layers.RMSNorm(cfg.norm_eps, dtype, name="pre_ffw_norm")(x)
    x = (x + FeedForward(cfg, name="mlp")(y)).astype(dtype)
    return x, (k, v, x)


class Gemma(nn.Module):
  """The Gemma decoder over embeddings.

  Methods:
    embed(tokens int[B, T]) -> float[B, T, D] (scaled by sqrt(D)).
    __call__(embedded, positions, attention_mask, kv_cache=None) -> dict (see there).
    logits(hidden float[B, T, D]) -> float32[B, T, V].
  """

  config: GemmaConfig

  def setup(self):
    cfg = self.config
    block = layers.maybe_remat(Block, cfg.remat, cfg.remat_policy)
    self.embedder = Embedder(cfg)
    self.layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=(nn.broadcast, nn.broadcast, 0), length=cfg.depth,
                          metadata_params={nn.PARTITION_NAME: layers.LAYERS_AXIS})(cfg)
    self.final_norm = layers.RMSNorm(cfg.norm_eps, jnp.dtype(cfg.dtype))

  def embed(self, tokens):
    return self.embedder.encode(tokens)

  def logits(self, hidden):
    return self.embedder.decode(hidden)

  def __call__(self, embedded, positions, attention_mask, kv_cache=None):
    """Runs the decoder.

    Args:
      embedded: float[B, T, D] input embeddings.
      positions: int[B, T] RoPE positions (see :func:`positions_from_mask`).
      attention_mask: bool[B, T, S0 + T] (query, key), True = may attend; keys are the S0 cached positions
        followed by the T new ones.
      kv_cache: None or (keys, values), each float[L, B, S0, K, H] (keys after RoPE), e.g. the 'kv_cache' of an
        earlier call over a prefix.
    Returns:
      dict with
        'last_hidden'   float[B, T, D] after the final norm,
        'hidden_states' float[L + 1, B, T, D]: the input embeddings, then each layer's output (before the final
                        norm),
        'kv_cache'      (keys, values) each float[L, B, T, K, H] of the new positions only (concatenate with the
                        input cache to extend it).
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = embedded.astype(dtype)
    if x.shape[-1] != cfg.width:
      raise ValueError(f"Gemma expects embeddings of width {cfg.width}, got shape {x.shape}")
    x_out, (keys, values, per_layer) = self.layers(x, positions, attention_mask, kv_cache)
    hidden_states = jnp.concatenate([x[None], per_layer], axis=0)
    return {
        "last_hidden": self.final_norm(x_out),
        "hidden_states": hidden_states,
        "kv_cache": (keys, values),
    }
