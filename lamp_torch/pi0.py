"""The π0 policy network in PyTorch (mirrors ``lamp_jax/models/pi0.py``): one PaliGemma pass over the prefix gives
every LM layer's keys / values; the Gemma action expert attends to them at every Euler step.

Data flow (B batch, C cameras, L prompt tokens, P prefix tokens, H horizon, A action dim, S proprio dim):

  images float32[B, C, Hi, Wi, 3] in [-1, 1], tokens int[B, L] ─► vlm.prefix (ONE pass)
      ─► prefix keys / values float[Lyr, B, P, K, Hd], prefix_mask bool[B, P]
  noise['action'] float32[B, H, A] ─► action_expert, Euler 0 -> 1 in ``num_inference_steps`` ─► float32[B, H, A]

Time convention (tau = 0 noise, tau = 1 data) and step arithmetic are those of ``lamp_jax/models/flow_matching.py``
(tau_i = float32(i) * float32(dt); x <- x + float32(dt) * v). ``use_proprio=False`` feeds zeros as the state.

Top-level modules: ``vlm`` (``lamp_torch.paligemma``: transformers' PaliGemma names), ``action_expert``
(``lamp_torch.pi0_expert``), as the JAX parameter tree.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lamp_torch import inputs as inputs_lib
from lamp_torch import layers
from lamp_torch import paligemma
from lamp_torch import pi0_expert

FLOAT32 = layers.FLOAT32


class Pi0(nn.Module):
  """``config``: the export's config.json (its ``model``, ``vlm`` and ``expert_llm`` sections)."""

  def __init__(self, config: Mapping[str, Any]):
    super().__init__()
    model, vlm = config["model"], config["vlm"]
    self.cfg = model
    self.dtype = layers.activation_dtype(model["dtype"], "model.dtype")
    vlm_dtype = layers.activation_dtype(vlm["llm"]["dtype"], "vlm.llm.dtype")
    if model["action"]["kind"] != pi0_expert.KIND:
      raise ValueError(f"config.json field model.action.kind={model['action']['kind']!r}: a π0 export has "
                       f"{pi0_expert.KIND!r}")
    self.vlm = paligemma.PaliGemma(vlm, vlm_dtype)
    self.action_expert = pi0_expert.Pi0ActionExpert(model["action"], pi0_expert.gemma_config(config),
                                                    action_dim=model["action_dim"], proprio_dim=model["proprio_dim"],
                                                    dtype=self.dtype)

  @classmethod
  def from_export_config(cls, config: Mapping[str, Any]) -> "Pi0":
    """The module of an export's config.json."""
    return cls(config)

  def noise_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the random draws of one ``sample_actions`` call (the keys of its ``noise`` dict)."""
    return {"action": (batch_size, self.cfg["action_horizon"], self.cfg["action_dim"])}

  def prefix(self, images, image_mask, tokens, token_mask):
    """The VLM over the prefix alone: ((keys, values) each float[L, B, P, K, Hd], prefix_mask bool[B, P])."""
    _, kv_cache, prefix_mask = self.vlm.prefix(images, image_mask, tokens, token_mask)
    return kv_cache, prefix_mask

  def integrate_actions(self, prefix_kv, prefix_mask, proprio, x0):
    """Euler integration of the expert 0 -> 1 from ``x0`` float32[B, H, A], every step on the same prefix K/V."""
    num_steps = int(self.cfg["num_inference_steps"])
    if num_steps < 1:
      raise ValueError(f"config.json field model.num_inference_steps={num_steps} must be >= 1")
    b = x0.shape[0]
    attention = pi0_expert.suffix_attention(prefix_mask, x0.shape[1])  # the same at every step
    dt32 = torch.tensor(1.0 / num_steps, dtype=FLOAT32, device=x0.device)
    x = x0
    for i in range(num_steps):
      tau = (torch.tensor(float(i), dtype=FLOAT32, device=x.device) * dt32).expand(b)
      x = x + dt32 * self.action_expert(x, tau, proprio, prefix_kv, prefix_mask, attention)
    return x

  def sample_actions(self, inputs: Mapping[str, torch.Tensor], noise: Mapping[str, Any]) -> torch.Tensor:
    """Normalised action chunk float32[B, H, A].

    Args:
      inputs: 'images' float32[B, C, Hi, Wi, 3] in [-1, 1], 'image_mask' bool[B, C], 'tokens' int[B, L],
        'token_mask' bool[B, L], 'proprio' float32[B, S] (normalised).
      noise: {'action': float32[B, H, A]} (the JAX ``Pi0.sample_actions(noise=...)`` takes the same dict).
    """
    x0 = inputs_lib.checked_noise(noise, self.noise_shapes(inputs["tokens"].shape[0]), inputs["images"].device,
                                  {"action": "batch, action_horizon, action_dim"})["action"]
    proprio = inputs_lib.checked_proprio(inputs, self.cfg)
    prefix_kv, prefix_mask = self.prefix(inputs["images"], inputs["image_mask"], inputs["tokens"],
                                         inputs["token_mask"])
    return self.integrate_actions(prefix_kv, prefix_mask, proprio, x0)
