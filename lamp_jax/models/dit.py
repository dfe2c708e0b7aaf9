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
  float[B, T, N, H] after the QK norm. ``kv=(keys, values)`` float[B, S, N, H] replaces the key / value
  projection of ``context`` by precomputed ones (``project_kv`` of this layer's parameters: post-norm, no
  transform). Output float[B, T, out_features or D]. ``implementation``: ``layers.ATTENTION_IMPLEMENTATIONS``.
  """

  num_heads: int
  head_dim: int
  qk_norm: bool = False
  out_features: int | None = None
  dtype: Dtype = jnp.float32
  implementation: str = "heads_major"

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None, mask: jax.Array | None = None,
               q_transform: Callable | None = None, k_transform: Callable | None = None,
               kv: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    heads = (self.num_heads, self.head_dim)
    q = layers.DenseGeneral(heads, ("embed", "q_heads", "head_dim"), dtype=self.dtype, name="query")(x)
    if kv is None:
      context = x if context is None else context
      k = layers.DenseGeneral(heads, ("embed", "kv_heads", "head_dim"), dtype=self.dtype, name="key")(context)
      v = layers.DenseGeneral(heads, ("embed", "kv_heads", "head_dim"), dtype=self.dtype, name="value")(context)
      if self.qk_norm:
        k = layers.LayerNorm(dtype=self.dtype, name="key_norm")(k)
    else:
      k, v = kv
    if self.qk_norm:
      q = layers.LayerNorm(dtype=self.dtype, name="query_norm")(q)
    if q_transform is not None:
      q = q_transform(q)
    if k_transform is not None:
      k = k_transform(k)
    out = layers.dot_product_attention(q, k, v, mask, implementation=self.implementation)
    return layers.DenseGeneral(self.out_features or x.shape[-1], ("q_heads", "head_dim", "embed"), axis=(-2, -1),
                               dtype=self.dtype, name="out")(out)


def project_kv(attn_params: dict, context: jax.Array, *, num_heads: int, head_dim: int, qk_norm: bool,
               dtype: Dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Keys and values float[B, S, N, H] of ``context`` float[B, S, Dc] under one ``Attention``'s parameters
  ``attn_params`` (its 'key', 'value' and, with ``qk_norm``, 'key_norm' entries), exactly as ``Attention``
  computes them; pass the result as its ``kv`` to reuse them across calls with the same context."""
  heads = (num_heads, head_dim)
  k = layers.DenseGeneral(heads, ("embed", "kv_heads", "head_dim"), dtype=dtype, parent=None).apply(
      {"params": attn_params["key"]}, context)
  v = layers.DenseGeneral(heads, ("embed", "kv_heads", "head_dim"), dtype=dtype, parent=None).apply(
      {"params": attn_params["value"]}, context)
  if qk_norm:
    k = layers.LayerNorm(dtype=dtype, parent=None).apply({"params": attn_params["key_norm"]}, k)
  return k, v


def stack(block: type[nn.Module], num_layers: int, *, scan: bool, remat: bool, num_broadcast_args: int,
          name: str, remat_policy: str = layers.DEFAULT_REMAT_POLICY, unroll: int | bool = 1,
          last_layer_kwargs: dict | None = None,
          per_layer_args: tuple[int, ...] = (), **block_kwargs) -> Callable:
  """Returns ``f(carry, *args) -> carry`` applying ``num_layers`` copies of ``block``.

  ``block(**block_kwargs)(carry, *args)`` must return ``(carry, None)``. The ``num_broadcast_args`` args are the
  same for every layer, except those whose positions are in ``per_layer_args``: these hold one entry per layer
  on a leading axis (pytrees of float[num_layers, ...], e.g. per-layer key / value caches); layer i gets
  entry i. With ``scan=True`` the layers are one ``nn.scan`` (parameters stacked on a leading 'layers' axis,
  compiled once); otherwise a Python loop of separately named layers (``{name}_{i}``). ``remat`` wraps the
  block in ``nn.remat`` keeping what ``remat_policy`` names (``layers.REMAT_POLICIES``).
  ``unroll`` (scan only): layers per scan iteration, ``True`` = all (the parameter layout stays stacked; the
  computation is the same, XLA just sees straight-line code instead of a while loop).
  ``last_layer_kwargs``: extra attributes of the LAST layer only (e.g. ``motion_only=True``); they must not
  change its parameters. Scanned stacks then run (outside ``init``) as a ``lax.scan`` of the first
  ``num_layers - 1`` layers plus the last layer, both reading the same stacked parameters.
  ``f(carry, *args, collect=True) -> (carry, per_layer)``: also the blocks' second outputs stacked on a leading
  [num_layers] axis (e.g. each layer's output, for representation alignment; not with ``last_layer_kwargs``).
  Unused outputs cost nothing under jit (jax removes them from the scan).
  """
  cls = layers.maybe_remat(block, remat, remat_policy, prevent_cse=not scan)
  last_kwargs = {**block_kwargs, **(last_layer_kwargs or {})}
  per_layer = frozenset(per_layer_args)

  def layer_args(args, index):
    return tuple(jax.tree.map(lambda a: a[index], arg) if i in per_layer else arg for i, arg in enumerate(args))

  if scan:
    unroll_n = num_layers if unroll is True else max(1, int(unroll))
    in_axes = tuple(0 if i in per_layer else nn.broadcast for i in range(num_broadcast_args))
    scanned = nn.scan(cls, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=in_axes,
                      length=num_layers, unroll=unroll_n,
                      metadata_params={nn.PARTITION_NAME: layers.LAYERS_AXIS})(name=name, **block_kwargs)

    def apply_scanned(carry, *args, collect=False):
      if collect and last_layer_kwargs:
        raise ValueError(f"dit.stack {name!r}: collect=True is not supported with last_layer_kwargs")
      if collect:
        return scanned(carry, *args)
      if not last_layer_kwargs or scanned.is_initializing():
        return scanned(carry, *args)[0]
      stacked = nn.unbox(scanned.variables["params"])

      def layer(kwargs, index, c):
        params = jax.tree.map(lambda p: p[index], stacked)
        return cls(parent=None, **kwargs).apply({"params": params}, c, *layer_args(args, index))[0]

      if num_layers > 1:
        carry, _ = jax.lax.scan(lambda c, i: (layer(block_kwargs, i, c), None), carry,
                                jnp.arange(num_layers - 1), unroll=min(unroll_n, num_layers - 1))
      return layer(last_kwargs, num_layers - 1, carry)

    return apply_scanned
  blocks = [cls(name=f"{name}_{i}", **(last_kwargs if i == num_layers - 1 else block_kwargs))
            for i in range(num_layers)]

  def apply_loop(carry, *args, collect=False):
    if collect and last_layer_kwargs:
      raise ValueError(f"dit.stack {name!r}: collect=True is not supported with last_layer_kwargs")
    outputs = []
    for i, blk in enumerate(blocks):
      carry, out = blk(carry, *layer_args(args, i))
      outputs.append(out)
    if not collect:
      return carry
    return carry, jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)

  return apply_loop
