"""Diffusion-transformer pieces shared by the LaMP experts: time embedding, adaLN(-zero) modulation, attention
with optional QK-norm / position transforms, MLP, and layer stacking with ``nn.scan``.

Axis letters: b batch · t query tokens · s key/value tokens · n heads · h head dim · d width · f MLP width.
Shapes: tokens float[B, T, D]; conditioning vectors float[B, D_c].
Activation sharding: the experts' blocks constrain their token inputs to ``ACTIVATION_AXES``
(``layers.with_logical_constraint``: a no-op outside the trainer's ``activation_sharding`` context).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from lamp_jax.models import layers

Dtype = Any
ACTIVATION_AXES = layers.ACTIVATION_AXES  # block inputs float[B, T, D]


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation ``x * (1 + scale) + shift``; x float[B, T, D], shift/scale float[B, 1, D]."""
  return x * (1.0 + scale.astype(x.dtype)) + shift.astype(x.dtype)


class TimestepEmbedder(nn.Module):
  """Flow time tau in [0, 1] -> float[B, width]: sinusoidal (tau * 1000) -> Dense -> SiLU -> Dense (DiT)."""

  width: int
  frequency_dim: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tau: jax.Array) -> jax.Array:
    emb = layers.timestep_embedding(jnp.asarray(tau, jnp.float32), self.frequency_dim).astype(self.dtype)
    emb = layers.DenseGeneral(self.width, ("cond", "embed"), dtype=self.dtype, name="fc1")(emb)
    emb = nn.silu(emb)
    return layers.DenseGeneral(self.width, ("embed", "embed"), dtype=self.dtype, name="fc2")(emb)


class Modulation(nn.Module):
  """SiLU -> zero-initialised Dense producing ``count`` vectors float[B, 1, width] (adaLN-zero)."""

  count: int
  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, cond: jax.Array) -> tuple[jax.Array, ...]:
    out = layers.DenseGeneral((self.count, self.width), ("cond", None, "embed"), dtype=self.dtype,
                              kernel_init=nn.initializers.zeros_init(), name="proj")(nn.silu(cond))
    return tuple(out[:, None, i, :] for i in range(self.count))


class Mlp(nn.Module):
  """Dense(mlp_dim) -> GELU (tanh approximation) -> Dense(width)."""

  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    h = layers.DenseGeneral(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
    h = nn.gelu(h, approximate=True)
    return layers.DenseGeneral(width, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


class Attention(nn.Module):
  """Multi-head (self- or cross-) attention with optional QK LayerNorm and position transforms.

  ``__call__(x float[B, T, D], context float[B, S, Dc] | None, mask bool[B, T, S] | None)``; with
  ``context=None`` it is self-attention. ``q_transform`` / ``k_transform`` (e.g. RoPE) act on
  float[B, T, N, H] after the QK norm. Output float[B, T, out_features or D].
  """

  num_heads: int
  head_dim: int
  qk_norm: bool = False
  out_features: int | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None,
               q_transform: Callable | None = None, k_transform: Callable | None = None) -> jax.Array:
    context = x if context is None else context
    heads = (self.num_heads, self.head_dim)
    q = layers.DenseGeneral(heads, ("embed", "q_heads", "head_dim"), dtype=self.dtype, name="query")(x)
    k = layers.DenseGeneral(heads, ("embed", "kv_heads", "head_dim"), dtype=self.dtype, name="key")(context)
    v = layers.DenseGeneral(heads, ("embed", "kv_heads", "head_dim"), dtype=self.dtype, name="value")(context)
    if self.qk_norm:
      q = layers.LayerNorm(dtype=self.dtype, name="query_norm")(q)
      k = layers.LayerNorm(dtype=self.dtype, name="key_norm")(k)
    if q_transform is not None:
      q = q_transform(q)
    if k_transform is not None:
      k = k_transform(k)
    out = layers.dot_product_attention(q, k, v, mask)
    return layers.DenseGeneral(self.out_features or x.shape[-1], ("q_heads", "head_dim", "embed"), axis=(-2, -1),
                               dtype=self.dtype, name="out")(out)


def stack(block: type[nn.Module], num_layers: int, *, scan: bool, remat: bool, num_broadcast_args: int,
          name: str, **block_kwargs) -> Callable:
  """Returns ``f(carry, *broadcast_args) -> carry`` applying ``num_layers`` copies of ``block``.

  ``block(**block_kwargs)(carry, *broadcast_args)`` must return ``(carry, None)``. With ``scan=True`` the
  layers are one ``nn.scan`` (parameters stacked on a leading 'layers' axis, compiled once); otherwise a
  Python loop of separately named layers (``{name}_{i}``). ``remat`` wraps the block in ``nn.remat``.
  """
  cls = nn.remat(block, prevent_cse=not scan) if remat else block
  if scan:
    scanned = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast,) * num_broadcast_args, length=num_layers,
                      metadata_params={nn.PARTITION_NAME: layers.LAYERS_AXIS})(name=name, **block_kwargs)

    def apply_scanned(carry, *args):
      return scanned(carry, *args)[0]

    return apply_scanned
  blocks = [cls(name=f"{name}_{i}", **block_kwargs) for i in range(num_layers)]

  def apply_loop(carry, *args):
    for blk in blocks:
      carry = blk(carry, *args)[0]
    return carry

  return apply_loop
