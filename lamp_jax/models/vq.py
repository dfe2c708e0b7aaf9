"""Vector quantiser of the latent action models (the VQ-VAE bottleneck), with its training statistics.

Quantisation (van den Oord et al. 2017): each of the L tokens of a latent z float32[N, L, Dc] is replaced by the
nearest of K codebook entries (squared Euclidean distance, ties to the lowest index):
codes int32[N, L], q float32[N, L, Dc]. The decoder receives the straight-through value z + stop_gradient(q - z):
q in the forward pass, the identity onto z in the backward pass.

Losses (means over valid tokens and the Dc dimensions; ``valid`` bool[N] marks the latents that count):
  codebook   = mean ||stop_gradient(z) - q||^2   moves the codebook (not used with the EMA codebook)
  commitment = mean ||z - stop_gradient(q)||^2   moves the encoder (the configs weigh it beta = 0.25)

Training state (the flax collection ``STATE`` = 'vq_state', carried by the trainer between steps; see
``models/interface.py``: ``state_collections`` / ``after_update``):
  usage            float32[K]       EMA (``usage_decay``) of the fraction of valid tokens assigned to each code;
                                    starts uniform (1/K). A code is dead when usage < dead_fraction / K.
  recent_latents   float32[R, Dc]   R encoder outputs drawn from the last step's valid tokens: where dead codes
  recent_filled    bool[]           restart from (True once a step had a valid token)
  collapsed_steps  int32[]          consecutive steps with a collapsed quantiser (below)
  collapse_events  int32[]          how many times ``collapse_patience`` consecutive collapsed steps were seen
  restarts         int32[]          codes replaced so far (the data initialisation's K included)
  codebook_ready   bool[]           the codebook was initialised from data (``init_from_data``)
  EMA codebook only (``ema=True``): ema_cluster_size float32[K], ema_embed_sum float32[K, Dc], ema_ready bool[]
  (the EMA statistics are seeded from the codebook parameter at the first training step, so a codebook loaded
  from another run is kept).

Where the state changes: the forward pass of a training step (applied with 'vq_state' mutable) updates usage,
the recent-latent buffer, the collapse counters and the EMA sums from this step's valid tokens; after the
optimizer update, ``update_codebook`` (pure, inside the same jitted step) sets the EMA codebook, replaces every
code by distinct buffered latents once (``init_from_data``: the uniform [-1/K, 1/K] initialisation is far from
the encoder's outputs and lets one code take every latent) and restarts dead codes from the buffer. Without the
collection (evaluation, other models calling ``encode_latent``) the quantiser is a pure function of the
parameters and the metrics describe the batch alone.

Collapse (the latent carries no information): a step is collapsed when every token position uses a single code
over the batch (the largest per-position perplexity <= ``collapse_perplexity``) or at most one code is alive.
``collapse_patience`` consecutive collapsed steps count one event in ``vq/collapse_events`` (logged every
logging step with the other metrics), then the count of consecutive steps starts again.

Metrics (float32[] each): vq/perplexity (exp of the entropy of the batch's code histogram; K for uniform use),
vq/position_perplexity (mean over token positions), vq/codes_used (fraction of codes used in the batch),
vq/dead_codes (state: usage below the threshold; no state: codes unused in the batch), vq/collapsed_steps,
vq/collapse_events, vq/restarts (0 without state).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lamp_jax.models import layers

STATE = "vq_state"


def default_config(**overrides) -> ml_collections.ConfigDict:
  """The ``vq`` section of a latent action model config."""
  cfg = ml_collections.ConfigDict(dict(
      num_codes=16,  # K
      code_length=4,  # L tokens per latent
      code_dim=128,  # Dc
      ema=False,  # codebook by exponential moving averages of the assigned latents (needs loss.weights.codebook=0)
      ema_decay=0.99,
      # EMA of the per-code assignment fractions (dead-code detection). A never-used code dies after
      # steps_until_dead = 34 steps; 0.99 took 349, longer than the short runs in which the codebook collapsed.
      usage_decay=0.9,
      dead_fraction=0.03,  # dead: usage below this fraction of the uniform share 1/K
      restart=True,  # replace dead codes by recent encoder outputs after each update
      init_from_data=True,  # after the first training step, replace every code by one of that step's latents
      restart_buffer=256,  # R recent latents kept for restarts
      collapse_perplexity=1.05,
      collapse_patience=100,
      # Diagnostic / continuous-latent ablation: the decoder reads the pre-quantisation latent z instead of the
      # straight-through codes (codes, losses and statistics are still computed; zero the codebook / commitment
      # weights for a plain continuous LAM). Tells a VQ bottleneck from a decoder that ignores any latent.
      bypass=False))
  cfg.update(overrides)
  return cfg


# ------------------------------------------------------------------------------------------ pure functions
def nearest_codes(z: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the nearest codebook row. z float[..., Dc], codebook float32[K, Dc] -> int32[...]."""
  z = z.astype(jnp.float32)
  distances = (jnp.sum(jnp.square(z), -1, keepdims=True) - 2.0 * jnp.einsum("...d,kd->...k", z, codebook)
               + jnp.sum(jnp.square(codebook), -1))
  return jnp.argmin(distances, axis=-1).astype(jnp.int32)


def straight_through(z: jax.Array, q: jax.Array) -> jax.Array:
  """q in the forward pass, identity onto z in the backward pass."""
  return z + jax.lax.stop_gradient(q - z)


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of ``values`` float[N, ...] over the rows where ``mask`` bool[N] is True (0 when none is)."""
  mask = mask.astype(jnp.float32)
  per_row = jnp.mean(values.reshape(values.shape[0], -1).astype(jnp.float32), axis=-1)
  return jnp.sum(per_row * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def vq_losses(z: jax.Array, q: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(codebook, commitment) losses float32[] of latents z and their codes q float[N, L, Dc]; valid bool[N]."""
  z, q = z.astype(jnp.float32), q.astype(jnp.float32)
  codebook = masked_mean(jnp.square(jax.lax.stop_gradient(z) - q), valid)
  commitment = masked_mean(jnp.square(z - jax.lax.stop_gradient(q)), valid)
  return codebook, commitment


def code_counts(codes: jax.Array, mask: jax.Array, num_codes: int) -> jax.Array:
  """Assignments per code over the True entries of ``mask``: codes int[...], mask bool[...] -> float32[K]."""
  one_hot = jax.nn.one_hot(codes.reshape(-1), num_codes, dtype=jnp.float32)
  return jnp.sum(one_hot * mask.reshape(-1, 1).astype(jnp.float32), axis=0)


def perplexity(counts: jax.Array) -> jax.Array:
  """exp(entropy) of the distribution ``counts`` float[..., K] (normalised along the last axis): K for uniform
  use, 1 when one code takes everything; 1 for an all-zero histogram."""
  total = jnp.sum(counts, -1, keepdims=True)
  p = counts / jnp.maximum(total, 1e-12)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1)
  return jnp.exp(entropy)


def dead_codes(usage: jax.Array, dead_fraction: float) -> jax.Array:
  """bool[K]: codes whose usage EMA is below ``dead_fraction`` of the uniform share 1/K."""
  return usage < dead_fraction / usage.shape[-1]


def steps_until_dead(cfg: ml_collections.ConfigDict) -> int:
  """Steps without a single assignment after which a code (fresh or restarted: usage 1/K) is declared dead and
  restarted: the smallest n with usage_decay^n < dead_fraction. The restart rule must fire well inside a run;
  with usage_decay 0.99 and dead_fraction 0.03 it took 349 steps, so a 200-step run never restarted a code."""
  decay, fraction = float(cfg.usage_decay), float(cfg.dead_fraction)
  if not (0.0 < decay < 1.0 and 0.0 < fraction < 1.0):
    raise ValueError(f"config fields vq.usage_decay={decay} and vq.dead_fraction={fraction} must lie in (0, 1)")
  return int(math.floor(math.log(fraction) / math.log(decay))) + 1


def update_codebook(codebook: jax.Array, state: dict, rng: jax.Array,
                    cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict, dict]:
  """The quantiser's part of the train step after the optimizer update (pure; see the module docstring).

  Args:
    codebook: float32[K, Dc], the parameter after the optimizer update.
    state: this quantiser's 'vq_state' variables after the step's forward pass.
    rng: key for choosing which recent latents restart the dead codes.
    cfg: the ``vq`` config section.
  Returns:
    (codebook, state, metrics {'vq/restarted_codes': float32[]}).
  """
  state = dict(state)
  k = codebook.shape[0]
  if cfg.ema:
    ready = state["ema_ready"]
    size = state["ema_cluster_size"][:, None]
    ema_codebook = state["ema_embed_sum"] / jnp.maximum(size, 1e-12)
    codebook = jnp.where(ready & (size > 1e-12), ema_codebook, codebook)
  restart = jnp.zeros((k,), bool)
  if cfg.restart:
    restart = dead_codes(state["usage"], float(cfg.dead_fraction))
  if cfg.get("init_from_data", False):
    restart = restart | ~state["codebook_ready"]
    state["codebook_ready"] = state["codebook_ready"] | state["recent_filled"]
  restart = restart & state["recent_filled"]
  if cfg.restart or cfg.get("init_from_data", False):
    recent = state["recent_latents"]
    r = recent.shape[0]
    # Distinct buffered latents for the replaced codes whenever the buffer holds at least K.
    pick = (jax.random.permutation(rng, r)[:k] if r >= k else jax.random.randint(rng, (k,), 0, r))
    codebook = jnp.where(restart[:, None], recent[pick], codebook)
    state["usage"] = jnp.where(restart, 1.0 / k, state["usage"])  # a grace period before it can die again
    state["restarts"] = state["restarts"] + jnp.sum(restart).astype(jnp.int32)
    if cfg.ema:
      state["ema_cluster_size"] = jnp.where(restart, 1.0, state["ema_cluster_size"])
      state["ema_embed_sum"] = jnp.where(restart[:, None], recent[pick], state["ema_embed_sum"])
  return codebook.astype(jnp.float32), state, {"vq/restarted_codes": jnp.sum(restart).astype(jnp.float32)}


# ------------------------------------------------------------------------------------------ the module
def _uniform_init(bound: float):
  """Initializer drawing uniformly from [-bound, bound) (VQ-VAE's codebook initialisation with bound 1/K)."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class VectorQuantizer(nn.Module):
  """The codebook and its statistics. Call: (z float[N, L, Dc], valid bool[N], rng) -> dict:

    codes int32[N, L] · quantized float32[N, L, Dc] (the codebook rows) · straight_through float32[N, L, Dc]
    codebook_loss, commitment_loss float32[] · metrics {name: float32[]} (module docstring)

  ``rng`` draws the recent latents kept for restarts (only used while 'vq_state' is mutable).
  Parameter: codebook float32[K, Dc] (axes 'codes', 'code_dim'), initialised uniform in [-1/K, 1/K].
  """

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, z: jax.Array, valid: jax.Array, rng: jax.Array | None = None) -> dict[str, Any]:
    cfg = self.config
    k, dim = int(cfg.num_codes), int(cfg.code_dim)
    if z.ndim != 3 or z.shape[-1] != dim:
      raise ValueError(f"the quantiser expects latents float[N, L, {dim}] (config vq.code_dim={dim}), got {z.shape}")
    codebook = self.param("codebook", layers.param_with_axes(_uniform_init(1.0 / k), ("codes", "code_dim")),
                          (k, dim), jnp.float32)
    n, length, _ = z.shape
    z = z.astype(jnp.float32)
    codes = nearest_codes(z, codebook)
    q = jnp.take(codebook, codes, axis=0)
    codebook_loss, commitment_loss = vq_losses(z, q, valid)
    token_mask = jnp.broadcast_to(valid[:, None], (n, length))
    counts = code_counts(codes, token_mask, k)
    position_counts = jax.vmap(lambda c, m: code_counts(c, m, k), in_axes=(1, 1))(codes, token_mask)  # [L, K]
    position_perplexity = perplexity(position_counts)  # [L]
    any_valid = jnp.any(valid)
    metrics = {
        "vq/perplexity": perplexity(counts),
        "vq/position_perplexity": jnp.mean(position_perplexity),
        "vq/codes_used": jnp.mean((counts > 0).astype(jnp.float32)),
    }
    zero = jnp.zeros((), jnp.float32)
    if not (self.is_mutable_collection(STATE) or self.has_variable(STATE, "usage")):
      metrics.update({"vq/dead_codes": jnp.sum(counts == 0).astype(jnp.float32), "vq/collapsed_steps": zero,
                      "vq/collapse_events": zero, "vq/restarts": zero})
    else:
      metrics.update(self._statistics(z, codes, token_mask, counts, position_perplexity, any_valid, rng))
    return {"codes": codes, "quantized": q, "straight_through": straight_through(z, q),
            "codebook_loss": codebook_loss, "commitment_loss": commitment_loss, "metrics": metrics}

  def _statistics(self, z, codes, token_mask, counts, position_perplexity, any_valid, rng):
    """Reads (and, in a training step, updates) the 'vq_state' variables; returns their metrics."""
    cfg = self.config
    k, dim, r = int(cfg.num_codes), int(cfg.code_dim), int(cfg.restart_buffer)
    usage = self.variable(STATE, "usage", lambda: jnp.full((k,), 1.0 / k, jnp.float32))
    recent = self.variable(STATE, "recent_latents", lambda: jnp.zeros((r, dim), jnp.float32))
    filled = self.variable(STATE, "recent_filled", lambda: jnp.zeros((), bool))
    collapsed_steps = self.variable(STATE, "collapsed_steps", lambda: jnp.zeros((), jnp.int32))
    collapse_events = self.variable(STATE, "collapse_events", lambda: jnp.zeros((), jnp.int32))
    restarts = self.variable(STATE, "restarts", lambda: jnp.zeros((), jnp.int32))
    if cfg.get("init_from_data", False):
      self.variable(STATE, "codebook_ready", lambda: jnp.zeros((), bool))
    if cfg.ema:
      cluster_size = self.variable(STATE, "ema_cluster_size", lambda: jnp.ones((k,), jnp.float32))
      embed_sum = self.variable(STATE, "ema_embed_sum", lambda: jnp.zeros((k, dim), jnp.float32))
      ema_ready = self.variable(STATE, "ema_ready", lambda: jnp.zeros((), bool))
    if self.is_mutable_collection(STATE) and not self.is_initializing():
      if rng is None:
        raise ValueError("the quantiser updates its 'vq_state' in a training step and needs an rng")
      total = jnp.sum(counts)
      fraction = counts / jnp.maximum(total, 1.0)
      decay = float(cfg.usage_decay)
      usage.value = jnp.where(any_valid, decay * usage.value + (1.0 - decay) * fraction, usage.value)
      flat_z = z.reshape(-1, dim)
      flat_mask = token_mask.reshape(-1)
      logits = jnp.where(flat_mask, 0.0, -jnp.inf)
      pick = jax.random.categorical(rng, jnp.where(any_valid, logits, 0.0), shape=(r,))
      recent.value = jnp.where(any_valid, jax.lax.stop_gradient(flat_z[pick]), recent.value)
      filled.value = filled.value | any_valid
      alive = jnp.sum(~dead_codes(usage.value, float(cfg.dead_fraction)))
      collapsed = any_valid & ((jnp.max(position_perplexity) <= float(cfg.collapse_perplexity)) | (alive <= 1))
      steps = jnp.where(collapsed, collapsed_steps.value + 1, 0)
      event = steps >= int(cfg.collapse_patience)
      collapse_events.value = collapse_events.value + event.astype(jnp.int32)
      collapsed_steps.value = jnp.where(event, 0, steps).astype(jnp.int32)
      if cfg.ema:
        codebook = jax.lax.stop_gradient(self.get_variable("params", "codebook"))
        seeded_sum = jnp.where(ema_ready.value, embed_sum.value, codebook * cluster_size.value[:, None])
        one_hot = jax.nn.one_hot(codes.reshape(-1), k, dtype=jnp.float32) * flat_mask[:, None]
        sums = jax.lax.stop_gradient(one_hot.T @ flat_z)
        d = float(cfg.ema_decay)
        cluster_size.value = jnp.where(any_valid, d * cluster_size.value + (1.0 - d) * counts, cluster_size.value)
        embed_sum.value = jnp.where(any_valid, d * seeded_sum + (1.0 - d) * sums, seeded_sum)
        ema_ready.value = jnp.ones((), bool)
    return {"vq/dead_codes": jnp.sum(dead_codes(usage.value, float(cfg.dead_fraction))).astype(jnp.float32),
            "vq/collapsed_steps": collapsed_steps.value.astype(jnp.float32),
            "vq/collapse_events": collapse_events.value.astype(jnp.float32),
            "vq/restarts": restarts.value.astype(jnp.float32)}
