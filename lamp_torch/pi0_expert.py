"""π0's action expert in PyTorch (mirrors ``lamp_jax/models/pi0_expert.py``): a Gemma decoder over [state token;
H action tokens] that attends, at every layer, to the VLM's keys / values of the prefix.

Attention (openpi's block-causal mask; keys = [prefix K/V of the layer; the suffix's own K/V]):
  state token      the real prefix tokens and itself
  H action tokens  the real prefix tokens, the state token and every action token
RoPE positions continue after the prefix's real tokens (``cumsum`` of the whole sequence's mask, minus 1).

Suffix embedding: state token ``state_proj(proprio)``; action tokens ``action_time_mlp_out(swish(
action_time_mlp_in([action_in_proj(x_tau) ; time embedding])))``; output ``action_out_proj`` of the action tokens
after the final norm = the velocity v (tau = 0 noise, tau = 1 data). The time embedding is the sin-cos embedding of
openpi's time t = 1 - tau with periods ``time_min_period`` .. ``time_max_period`` (``flow_time_embedding``).

Modules (the export's names): ``state_proj``, ``action_in_proj``, ``action_time_mlp_in``, ``action_time_mlp_out``,
``action_out_proj`` (Linear weight [out, in]) and ``llm`` (``lamp_torch.gemma.Gemma`` without ``embed_tokens``:
transformers' ``GemmaModel`` names ``llm.layers.{i}.self_attn.q_proj.weight``, ..., ``llm.norm.weight``).
Axis letters: B batch · H horizon · A action dim · S proprio dim · P prefix length · D expert width · L layers
· K kv heads · Hd head dim.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from lamp_torch import gemma, layers

FLOAT32 = layers.FLOAT32
KIND = "pi0"
# The fields in which the expert must equal the VLM's LLM (it attends to the VLM's keys / values at every layer).
SHARED_FIELDS = ("depth", "num_heads", "num_kv_heads", "head_dim")


def time_frequencies(dim: int, min_period: float, max_period: float) -> np.ndarray:
  """float32[dim / 2] angular frequencies 2 pi / period_i of the time embedding, periods geometric from
  ``min_period`` to ``max_period``: computed in float64 and rounded once (``pi0_expert.time_frequencies``)."""
  if dim % 2:
    raise ValueError(f"the π0 time embedding needs an even expert width, got {dim}")
  fraction = np.linspace(0.0, 1.0, dim // 2, dtype=np.float64)
  period = min_period * (max_period / min_period) ** fraction
  return (2.0 * np.pi / period).astype(np.float32)


def flow_time_embedding(tau: torch.Tensor, dim: int, min_period: float, max_period: float,
                        frequencies: torch.Tensor | None = None) -> torch.Tensor:
  """float32[B] flow times tau -> float32[B, dim] = [sin | cos] of (1 - tau) times ``time_frequencies`` (pass
  ``frequencies``, that table as a tensor, to skip recomputing it)."""
  t = 1.0 - tau.to(FLOAT32)
  if frequencies is None:
    frequencies = torch.from_numpy(time_frequencies(dim, min_period, max_period))
  angles = t[:, None] * frequencies.to(t.device)[None, :]
  return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def suffix_attention(prefix_mask: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
  """The suffix rows of the [prefix; state; H actions] attention: (mask bool[B, 1 + H, P + 1 + H] (query, key),
  RoPE positions int[B, 1 + H]) (``pi0_expert.attention_inputs(...)[:, P:]``)."""
  b, p = prefix_mask.shape
  prefix_mask = prefix_mask.bool()
  # Block of every key: 0 prefix, 1 state, 2 actions; a query of block q sees real keys of blocks <= q.
  key_block = torch.cat([torch.zeros(p, dtype=torch.int64), torch.tensor([1]), torch.full((horizon,), 2)])
  query_block = key_block[p:]
  blocks = (key_block[None, :] <= query_block[:, None]).to(prefix_mask.device)  # [1 + H, P + 1 + H]
  key_real = torch.cat([prefix_mask, torch.ones(b, 1 + horizon, dtype=torch.bool, device=prefix_mask.device)], 1)
  mask = blocks[None] & key_real[:, None, :]
  real_prefix = prefix_mask.to(torch.int64).sum(dim=1, keepdim=True)
  positions = real_prefix + torch.arange(1 + horizon, device=prefix_mask.device)[None]
  return mask, positions


def gemma_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
  """The expert's Gemma fields: config.json ``expert_llm`` (the resolved ``gemma.GemmaConfig`` the exporter
  writes), checked against the VLM's LLM (``vlm.llm``) in ``SHARED_FIELDS``."""
  expert, vlm_llm = config["expert_llm"], config["vlm"]["llm"]
  bad = [f for f in SHARED_FIELDS if expert[f] != vlm_llm[f]]
  if bad:
    got = ", ".join(f"{f}={expert[f]} vs {vlm_llm[f]}" for f in bad)
    raise ValueError(f"config.json: the π0 expert (field expert_llm) must match the VLM's LLM (field vlm.llm) in "
                     f"{SHARED_FIELDS} (it attends to the VLM's keys / values at every layer); expert vs VLM: {got}")
  return expert


class Pi0ActionExpert(nn.Module):
  """``forward(x_tau float[B, H, A], tau float[B], proprio float[B, S], prefix_kv, prefix_mask bool[B, P])
  -> velocity float32[B, H, A]`` with ``prefix_kv`` = (keys, values) each float[L, B, P, K, Hd] (the VLM's
  ``PaliGemma.prefix`` cache, keys after RoPE)."""

  def __init__(self, action: Mapping[str, Any], llm: Mapping[str, Any], action_dim: int, proprio_dim: int,
               dtype: torch.dtype):
    super().__init__()
    self.cfg, self.llm_cfg, self.dtype = action, llm, dtype
    self.action_dim = action_dim
    width = llm["width"]
    self.state_proj = layers.Linear(proprio_dim, width, dtype)
    self.action_in_proj = layers.Linear(action_dim, width, dtype)
    self.action_time_mlp_in = layers.Linear(2 * width, width, dtype)
    self.action_time_mlp_out = layers.Linear(width, width, dtype)
    self.llm = gemma.Gemma(llm, dtype, embed=False)
    self.action_out_proj = layers.Linear(width, action_dim, dtype)
    # A constant of the config, not a parameter: kept out of the state_dict (and so of the export).
    self.register_buffer("time_frequencies", torch.from_numpy(time_frequencies(
        width, float(action["time_min_period"]), float(action["time_max_period"]))), persistent=False)

  def embed_suffix(self, x_tau: torch.Tensor, tau: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
    """[state token; H action tokens] float[B, 1 + H, D]."""
    b = x_tau.shape[0]
    state = self.state_proj(proprio)[:, None]
    actions = self.action_in_proj(x_tau)
    tau = torch.as_tensor(tau, dtype=FLOAT32, device=x_tau.device).expand(b)
    time = flow_time_embedding(tau, self.llm_cfg["width"], float(self.cfg["time_min_period"]),
                               float(self.cfg["time_max_period"]), self.time_frequencies)
    time = time[:, None].to(self.dtype).expand(actions.shape)
    h = F.silu(self.action_time_mlp_in(torch.cat([actions, time], dim=-1)))
    return torch.cat([state, self.action_time_mlp_out(h)], dim=1)

  def forward(self, x_tau, tau, proprio, prefix_kv, prefix_mask, attention=None):
    """``attention``: ``suffix_attention(prefix_mask, H)`` when the caller computed it once for many calls."""
    if x_tau.shape[-1] != self.action_dim:
      raise ValueError(f"x_tau has {x_tau.shape[-1]} action dims; config.json field model.action_dim="
                       f"{self.action_dim}")
    keys, values = prefix_kv
    cfg = self.llm_cfg
    expected = (cfg["depth"], x_tau.shape[0], prefix_mask.shape[1], cfg["num_kv_heads"], cfg["head_dim"])
    if tuple(keys.shape) != expected or tuple(values.shape) != expected:
      raise ValueError(f"prefix_kv has keys {tuple(keys.shape)} / values {tuple(values.shape)}; the π0 expert "
                       f"expects float[L, B, P, K, Hd] = {expected}")
    tokens = self.embed_suffix(x_tau, tau, proprio)
    mask, positions = suffix_attention(prefix_mask, x_tau.shape[1]) if attention is None else attention
    hidden, _ = self.llm.decode(tokens, positions, mask, kv_cache=(keys, values))
    return self.action_out_proj(hidden[:, 1:]).to(FLOAT32)
