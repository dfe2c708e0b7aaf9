"""The small networks the probes train: an MLP (depth 1 = a linear layer), BA's Gaussian decoder, MINE's critic.

Parameters carry logical axis names like every lamp_jax parameter ('embed' for input / output features, 'mlp'
for hidden widths), so a probe could be sharded with the trainer's rules; the probes themselves run on one
device (their trainers unbox the parameters for optax).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from lamp_jax.models import layers

LOG_2PI = math.log(2.0 * math.pi)


class MLP(nn.Module):
  """float[..., Din] -> float[..., out_dim] by ``depth`` dense layers (ReLU between them).

  ``depth`` counts dense layers, the output layer included: depth 1 is a linear (affine) map, depth 4 has three
  hidden layers of ``hidden_dim``.
  """

  hidden_dim: int
  depth: int
  out_dim: int

  @nn.compact
  def __call__(self, x):
    if self.depth < 1:
      raise ValueError(f"MLP depth must be >= 1 (dense layers, output included), got {self.depth}")
    for i in range(self.depth - 1):
      x = layers.DenseGeneral(self.hidden_dim, kernel_axes=("embed" if i == 0 else "mlp", "mlp"),
                              name=f"hidden_{i}")(x)
      x = nn.relu(x)
    return layers.DenseGeneral(self.out_dim, kernel_axes=("mlp" if self.depth > 1 else "embed", "embed"),
                               name="out")(x)


class GaussianDecoder(nn.Module):
  """Barber–Agakov's q(a | z) = N(μ(z), diag σ²): an MLP mean and one learned σ per action dimension (global,
  shared by all samples).

  Returns ``(mean float32[..., Da], log_sigma float32[Da])``.
  """

  hidden_dim: int
  depth: int
  a_dim: int

  @nn.compact
  def __call__(self, z):
    mean = MLP(self.hidden_dim, self.depth, self.a_dim, name="mean")(z)
    log_sigma = self.param("log_sigma", layers.param_with_axes(nn.initializers.zeros_init(), ("embed",)),
                           (self.a_dim,), jnp.float32)
    return mean, log_sigma


def gaussian_nll_nats(a: jax.Array, mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """−log N(a; mean, diag exp(log_sigma)²) summed over the last axis, in nats: float[...]."""
  scaled = (a - mean) * jnp.exp(-log_sigma)
  return jnp.sum(0.5 * jnp.square(scaled) + log_sigma + 0.5 * LOG_2PI, axis=-1)


class Critic(nn.Module):
  """MINE's critic T(z, a): an MLP on the concatenation [z, a] -> float32[...] (one score per pair)."""

  hidden_dim: int
  depth: int

  @nn.compact
  def __call__(self, z, a):
    return MLP(self.hidden_dim, self.depth, 1, name="mlp")(jnp.concatenate([z, a], axis=-1))[..., 0]


def make_optimizer(learning_rate: float | optax.Schedule, weight_decay: float,
                   grad_clip: float) -> optax.GradientTransformation:
  """AdamW with decoupled ``weight_decay``, after global-norm clipping at ``grad_clip`` (0: no clipping)."""
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  parts.append(optax.adamw(learning_rate, weight_decay=weight_decay))
  return optax.chain(*parts)
