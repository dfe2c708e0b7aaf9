"""π0's action expert (``action.kind='pi0'``): a Gemma decoder over [state token; H action tokens] that attends, at
every layer, to the VLM's keys / values of the prefix (images + prompt).

In π0 the VLM and the expert are one transformer with two weight sets: every layer runs a joint attention over
[prefix; suffix] in which prefix tokens use the VLM's weights and suffix tokens the expert's. Because the prefix
never attends to the suffix, the prefix's per-layer keys / values do not depend on the suffix: they are the
``kv_cache`` of a VLM pass over the prefix alone, and the expert's layer l attends to [prefix K/V of layer l;
its own K/V]. One VLM pass therefore serves every Euler step of sampling (and the training loss, where it gives
the same function as the joint pass). The expert's depth, query heads, K/V heads and head dim must equal the VLM
LLM's (``check_matches_vlm``); its width and MLP may differ ('gemma_300m': width 1024 next to Gemma 2B's 2048).

Attention (openpi's block-causal ``ar_mask`` = [0] * P + [1] + [1] + [0] * (H - 1), ``block_ids``): three blocks.
  prefix (P tokens, padding excluded)  attends to the prefix, bidirectionally; never to the suffix
  state token                          attends to the prefix and itself
  H action tokens                      attend to the prefix, the state token and every action token
RoPE positions count real tokens over the whole sequence: the suffix continues after the prefix's real tokens.

Suffix embedding (π0, not π0.5):
  state token   Linear(S -> D)(proprio)
  action tokens Linear(2D -> D) -> swish -> Linear(D -> D) of [Linear(A -> D)(x_tau) ; time embedding(D)]
  output        Linear(D -> A) of the action tokens after the expert's final norm: the velocity float32[B, H, A].

Time: lamp_jax's convention (flow_matching.py): tau = 0 noise, tau = 1 data, velocity v = x - eps. openpi's time
is t = 1 - tau (t = 1 noise) and its network predicts u = eps - x = -v. The sin-cos time embedding is fed
openpi's t = 1 - tau with openpi's periods (``time_min_period`` 4e-3 .. ``time_max_period`` 4.0, sensitive on
[0, 1]), so that embedding features and weights mean the same as in openpi; the output is our v (an openpi
``action_out_proj`` maps onto ``action_out_proj`` negated, kernel and bias).

Parameter tree: state_proj · action_in_proj · action_time_mlp_in · action_time_mlp_out · action_out_proj ·
llm (``gemma.Gemma`` without an embedder: layers (scanned, leading [L] axis), final_norm).
Axis letters: B batch · H action horizon · A action dim · S proprio dim · P prefix length · D expert width
· L layers · K kv heads · Hd head dim.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax.models import gemma as gemma_lib
from lamp_jax.models import layers

Dtype = Any

KIND = "pi0"
# The fields in which the expert must equal the VLM's LLM (its keys / values are attended to per layer).
SHARED_FIELDS = ("depth", "num_heads", "num_kv_heads", "head_dim")


def gemma_config(action_cfg: ml_collections.ConfigDict, dtype: str) -> gemma_lib.GemmaConfig:
  """The expert's Gemma: ``gemma.get_config(action.variant, **action.overrides)`` in the model's ``dtype``, with
  ``action.attention`` (follows ``model.attention``; 'heads_major' when absent)."""
  if action_cfg.get("kind", None) != KIND:
    raise ValueError(f"config field model.action.kind={action_cfg.get('kind', None)!r}: the π0 expert is kind "
                     f"{KIND!r}")
  overrides = dict(action_cfg.get("overrides", None) or {})
  for field in ("dtype", "remat", "remat_policy", "attention"):
    if field in overrides:
      raise ValueError(f"config field model.action.overrides.{field}: set model.dtype / model.action.remat / "
                       f"model.action.remat_policy / model.attention instead")
  return gemma_lib.get_config(action_cfg.variant, dtype=dtype, remat=bool(action_cfg.get("remat", False)),
                              remat_policy=str(action_cfg.get("remat_policy", layers.DEFAULT_REMAT_POLICY)),
                              attention=str(action_cfg.get("attention", "heads_major")), **overrides)


def check_matches_vlm(expert: gemma_lib.GemmaConfig, vlm_llm: gemma_lib.GemmaConfig) -> None:
  """Raises naming the config fields when the expert cannot attend to the VLM's per-layer keys / values."""
  bad = [f for f in SHARED_FIELDS if getattr(expert, f) != getattr(vlm_llm, f)]
  if bad:
    got = ", ".join(f"{f}={getattr(expert, f)} vs {getattr(vlm_llm, f)}" for f in bad)
    raise ValueError(f"the π0 action expert (config fields model.action.variant / model.action.overrides) must "
                     f"match the VLM's LLM (model.vlm.llm_variant / model.vlm.llm_overrides) in {SHARED_FIELDS}: "
                     f"it attends to the VLM's keys / values at every layer; expert vs VLM: {got}")


def block_ids(prefix_len: int, horizon: int) -> np.ndarray:
  """openpi's ``ar_mask`` of [prefix; state; H actions]: int32[P + 1 + H] = [0] * P + [1] + [1] + [0] * (H - 1)
  (1 starts a block that earlier tokens cannot see; ``gemma.make_attention_mask``)."""
  return np.asarray([0] * prefix_len + [1, 1] + [0] * (horizon - 1), np.int32)


def attention_inputs(prefix_mask: jax.Array, horizon: int) -> tuple[jax.Array, jax.Array]:
  """Attention mask and RoPE positions of the whole [prefix; state; H actions] sequence (N = P + 1 + H).

  Args:
    prefix_mask: bool[B, P] True on real prefix tokens (the suffix is always real).
    horizon: H.
  Returns:
    (mask bool[B, N, N] (query, key), positions int32[B, N]). The expert uses the suffix rows
    ``[:, P:]``: its queries over [prefix K/V; suffix K/V].
  """
  b, p = prefix_mask.shape
  input_mask = jnp.concatenate([prefix_mask.astype(bool), jnp.ones((b, 1 + horizon), bool)], axis=1)
  ids = jnp.broadcast_to(jnp.asarray(block_ids(p, horizon)), input_mask.shape)
  return gemma_lib.make_attention_mask(input_mask, ids), gemma_lib.positions_from_mask(input_mask)


def time_frequencies(dim: int, min_period: float, max_period: float) -> np.ndarray:
  """float32[dim / 2] angular frequencies 2 pi / period_i, periods geometric from ``min_period`` to ``max_period``.

  A constant of the config: computed in float64 and rounded once, so that every backend (XLA on any device, the
  PyTorch port lamp_torch/pi0_expert.py) multiplies by the same table. (A float32 ``pow`` / ``linspace`` differs
  by an ulp between implementations (XLA:CPU vs PyTorch: 8 of 512 periods at width 1024), and with angles up to
  2 pi / min_period ~ 1571 rad one ulp of a frequency moves a sine by up to ~1e-4.)
  """
  if dim % 2:
    raise ValueError(f"the π0 time embedding needs an even expert width, got {dim}")
  fraction = np.linspace(0.0, 1.0, dim // 2, dtype=np.float64)
  period = min_period * (max_period / min_period) ** fraction
  return (2.0 * np.pi / period).astype(np.float32)


def flow_time_embedding(tau: jax.Array, dim: int, min_period: float, max_period: float) -> jax.Array:
  """Sin-cos embedding of openpi's flow time t = 1 - tau: float32[B] -> float32[B, dim] = [sin | cos].

  Periods grow geometrically from ``min_period`` to ``max_period`` over the dim / 2 frequencies; the angle of
  frequency i is t * 2 pi / period_i (``time_frequencies``, float32), computed in float32.
  """
  t = 1.0 - jnp.asarray(tau, jnp.float32)
  angles = t[:, None] * jnp.asarray(time_frequencies(dim, min_period, max_period))[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Pi0ActionExpert(nn.Module):
  """``__call__(x_tau float[B, H, A], tau float[B], proprio float[B, S], prefix_kv, prefix_mask bool[B, P])
  -> velocity float32[B, H, A]`` with ``prefix_kv`` = (keys, values), each float[L, B, P, K, Hd] (the VLM's
  ``kv_cache``, keys after RoPE).

  ``embed_suffix(x_tau, tau, proprio) -> float[B, 1 + H, D]`` is the expert's input sequence.
  ``__call__(..., hidden_after=n)`` returns (velocity, hidden float[B, 1 + H, D]): the suffix after the first n
  Gemma layers (0 = the input embedding; n = depth: the last layer's output before the final norm), read by
  representation alignment (lara.py). The velocity is the same.
  """

  config: ml_collections.ConfigDict  # the model's 'action' section
  action_dim: int
  dtype: Dtype = jnp.float32

  def setup(self):
    cfg = self.config
    self.llm_config = gemma_config(cfg, jnp.dtype(self.dtype).name)
    width = self.llm_config.width
    self.state_proj = layers.DenseGeneral(width, (None, "embed"), dtype=self.dtype)
    self.action_in_proj = layers.DenseGeneral(width, (None, "embed"), dtype=self.dtype)
    self.action_time_mlp_in = layers.DenseGeneral(width, ("embed", "mlp"), dtype=self.dtype)
    self.action_time_mlp_out = layers.DenseGeneral(width, ("mlp", "embed"), dtype=self.dtype)
    self.llm = gemma_lib.Gemma(self.llm_config)
    self.action_out_proj = layers.DenseGeneral(self.action_dim, ("embed", None), dtype=self.dtype)

  def embed_suffix(self, x_tau, tau, proprio):
    """[state token; H action tokens] float[B, 1 + H, D] (module docstring)."""
    b, horizon, _ = x_tau.shape
    cfg = self.config
    state = self.state_proj(proprio.astype(self.dtype))[:, None]
    actions = self.action_in_proj(x_tau.astype(self.dtype))
    time = flow_time_embedding(jnp.broadcast_to(jnp.asarray(tau, jnp.float32), (b,)), self.llm_config.width,
                               float(cfg.time_min_period), float(cfg.time_max_period))
    time = jnp.broadcast_to(time[:, None].astype(self.dtype), actions.shape)
    h = nn.swish(self.action_time_mlp_in(jnp.concatenate([actions, time], axis=-1)))
    return jnp.concatenate([state, self.action_time_mlp_out(h)], axis=1)

  def __call__(self, x_tau, tau, proprio, prefix_kv, prefix_mask, hidden_after=None):
    if x_tau.shape[-1] != self.action_dim:
      raise ValueError(f"x_tau has {x_tau.shape[-1]} action dims; config action_dim={self.action_dim}")
    keys, values = prefix_kv
    expected = (self.llm_config.depth, x_tau.shape[0], prefix_mask.shape[1], self.llm_config.num_kv_heads,
                self.llm_config.head_dim)
    if tuple(keys.shape) != expected or tuple(values.shape) != expected:
      raise ValueError(f"prefix_kv has keys {tuple(keys.shape)} / values {tuple(values.shape)}; the π0 expert "
                       f"expects float[L, B, P, K, Hd] = {expected}")
    horizon = x_tau.shape[1]
    tokens = self.embed_suffix(x_tau, tau, proprio)
    mask, positions = attention_inputs(prefix_mask, horizon)
    p = prefix_mask.shape[1]
    out = self.llm(tokens, positions[:, p:], mask[:, p:], kv_cache=(keys, values))
    velocity = self.action_out_proj(out["last_hidden"][:, 1:]).astype(jnp.float32)
    if hidden_after is None:
      return velocity
    depth = self.llm_config.depth
    if not 0 <= hidden_after <= depth:
      raise ValueError(f"the π0 expert's hidden state after layer {hidden_after}: give a layer count in [0, {depth}] "
                       f"(the expert's depth; config field model.lara.block_from_end counts from the last layer)")
    return velocity, out["hidden_states"][hidden_after]
