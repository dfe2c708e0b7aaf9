"""The LAFP policy network in PyTorch (mirrors the inference path of ``lamp_jax/models/lafp.py``): PaliGemma prefix
-> latent policy (LaMP's DiT over the L_z latent tokens, x-prediction Euler steps) -> action decoder MLP.

Data flow (B batch, C cameras, L prompt tokens, P prefix tokens, L_z latent tokens of Dc dims, H horizon, A action
dim, S proprio dim):

  images float32[B, C, Hi, Wi, 3] in [-1, 1], tokens int[B, L] ─► vlm ─► features float[B, P, Dv], bool[B, P]
  noise['latent'] float32[B, L_z, Dc] ─► latent_policy, ``num_inference_steps`` Euler steps 0 -> 1 of the velocity
      implied by the x-prediction z_hat = f(z, tau):  v_hat = (z_hat - z) / max(1 - tau, latent_policy.t_eps)
      ─► z_0 float32[B, L_z, Dc]      (objective 'bc': one call z_0 = f(0, 0), the noise unused)
  [flatten(z_0) float32[B, L_z * Dc]; proprio float32[B, S] (decoder.use_proprio)] ─► action_decoder
      ─► actions float32[B, H, A]

Time convention (tau = 0 noise, tau = 1 data) and step arithmetic are those of ``lamp_jax/models/flow_matching.py``
(tau_i = float32(i) * float32(dt); z <- z + float32(dt) * v). ``use_proprio=False`` feeds zeros as the proprio (both
to the latent policy's state token and to the decoder).

The frozen latent action model of the JAX model is training-only (it gives the latent policy's targets): the
export leaves it out (the JAX library's ``inference_config``), so this module has none. Top-level modules:
``vlm`` (``lamp_torch.paligemma``), ``latent_policy`` (``lamp_torch.action_expert``), ``action_decoder`` (below:
``input_proj``, per block i ``norm_{i}`` / ``fc1_{i}`` / ``fc2_{i}``, ``norm_out``, ``output_proj``), as the JAX
parameter tree.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lamp_torch import action_expert as action_lib
from lamp_torch import inputs as inputs_lib
from lamp_torch import layers
from lamp_torch import paligemma

FLOAT32 = layers.FLOAT32
OBJECTIVES = ("flow", "bc")


class ActionDecoder(nn.Module):
  """latent float[B, L_z, Dc] (+ proprio float[B, S]) -> action chunk float32[B, H, A]: ``input_proj``, ``depth``
  pre-LN residual MLP blocks (``norm_{i}`` -> ``fc1_{i}`` -> GELU (tanh) -> ``fc2_{i}``), ``norm_out``,
  ``output_proj`` (``lafp.ActionDecoder``)."""

  def __init__(self, cfg: Mapping[str, Any], latent_size: int, proprio_dim: int, horizon: int, action_dim: int,
               dtype: torch.dtype):
    super().__init__()
    self.use_proprio, self.depth = bool(cfg["use_proprio"]), int(cfg["depth"])
    self.horizon, self.action_dim, self.dtype = horizon, action_dim, dtype
    width, mlp = int(cfg["width"]), int(cfg["mlp_ratio"]) * int(cfg["width"])
    self.input_proj = layers.Linear(latent_size + (proprio_dim if self.use_proprio else 0), width, dtype)
    for i in range(self.depth):
      self.add_module(f"norm_{i}", layers.LayerNorm(width, 1e-6, dtype))
      self.add_module(f"fc1_{i}", layers.Linear(width, mlp, dtype))
      self.add_module(f"fc2_{i}", layers.Linear(mlp, width, dtype))
    self.norm_out = layers.LayerNorm(width, 1e-6, dtype)
    self.output_proj = layers.Linear(width, horizon * action_dim, dtype)

  def forward(self, latent: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
    b = latent.shape[0]
    x = latent.reshape(b, -1).to(FLOAT32)
    if self.use_proprio:
      x = torch.cat([x, proprio.to(FLOAT32)], dim=-1)
    h = self.input_proj(x.to(self.dtype))
    for i in range(self.depth):
      y = getattr(self, f"norm_{i}")(h)
      y = getattr(self, f"fc2_{i}")(layers.gelu_tanh(getattr(self, f"fc1_{i}")(y)))
      h = h + y
    out = self.output_proj(self.norm_out(h))
    return out.to(FLOAT32).reshape(b, self.horizon, self.action_dim)


class LAFP(nn.Module):
  """``model``: the export's config.json ``model`` section (the JAX inference config as JSON, without ``lam``);
  ``vlm``: its ``vlm`` section (the resolved SigLIP / Gemma fields)."""

  def __init__(self, model: Mapping[str, Any], vlm: Mapping[str, Any]):
    super().__init__()
    self.cfg = model
    self.dtype = layers.activation_dtype(model["dtype"], "model.dtype")
    vlm_dtype = layers.activation_dtype(vlm["llm"]["dtype"], "vlm.llm.dtype")
    latent_policy = model["latent_policy"]
    if latent_policy["objective"] not in OBJECTIVES:
      raise ValueError(f"config.json field model.latent_policy.objective={latent_policy['objective']!r}: one of "
                       f"{OBJECTIVES}")
    self.objective = latent_policy["objective"]
    self.t_eps = float(latent_policy["t_eps"])
    self.code_length, self.code_dim = int(model["latent"]["code_length"]), int(model["latent"]["code_dim"])
    self.vlm = paligemma.PaliGemma(vlm, vlm_dtype)
    self.latent_policy = action_lib.build_action_expert(latent_policy, action_dim=self.code_dim,
                                                        proprio_dim=model["proprio_dim"],
                                                        context_width=vlm["llm"]["width"], dtype=self.dtype)
    self.action_decoder = ActionDecoder(model["decoder"], self.code_length * self.code_dim, model["proprio_dim"],
                                        model["action_horizon"], model["action_dim"], self.dtype)

  @classmethod
  def from_export_config(cls, config: Mapping[str, Any]) -> "LAFP":
    """The module of an export's config.json (its ``model`` and ``vlm`` sections)."""
    return cls(config["model"], config["vlm"])

  def noise_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the random draws of one ``sample_actions`` call (the keys of its ``noise`` dict)."""
    return {"latent": (batch_size, self.code_length, self.code_dim)}

  def encode(self, images, image_mask, tokens, token_mask):
    """VLM prefix features (float[B, P, Dv], bool[B, P])."""
    return self.vlm(images, image_mask, tokens, token_mask)

  def sample_latent(self, features, mask, proprio, z_noise):
    """The latent policy's sample z_0 float32[B, L_z, Dc] from ``z_noise`` float32[B, L_z, Dc] (module docstring)."""
    b = z_noise.shape[0]
    context_kv = self.latent_policy.context_kv(features)
    if self.objective == "bc":
      return self.latent_policy(torch.zeros_like(z_noise), torch.zeros((b,), dtype=FLOAT32, device=z_noise.device),
                                proprio, context_kv, mask)
    num_steps = int(self.cfg["num_inference_steps"])
    if num_steps < 1:
      raise ValueError(f"config.json field model.num_inference_steps={num_steps} must be >= 1")
    dt32 = torch.tensor(1.0 / num_steps, dtype=FLOAT32, device=z_noise.device)
    z = z_noise
    for i in range(num_steps):
      tau = torch.tensor(float(i), dtype=FLOAT32, device=z.device) * dt32
      z_hat = self.latent_policy(z, tau.expand(b), proprio, context_kv, mask)
      velocity = (z_hat.to(FLOAT32) - z) / torch.clamp(1.0 - tau, min=self.t_eps)
      z = z + dt32 * velocity
    return z

  def sample_actions(self, inputs: Mapping[str, torch.Tensor], noise: Mapping[str, Any]) -> torch.Tensor:
    """Normalised action chunk float32[B, H, A].

    Args:
      inputs: 'images' float32[B, C, Hi, Wi, 3] in [-1, 1], 'image_mask' bool[B, C], 'tokens' int[B, L],
        'token_mask' bool[B, L], 'proprio' float32[B, S] (normalised).
      noise: {'latent': float32[B, L_z, Dc]} (the JAX ``LatentActionFlowPolicy.sample_actions(noise=...)`` takes
        the same dict).
    """
    z_noise = inputs_lib.checked_noise(
        noise, self.noise_shapes(inputs["tokens"].shape[0]), inputs["images"].device,
        {"latent": "batch, model.latent.code_length, model.latent.code_dim"})["latent"]
    proprio = inputs_lib.checked_proprio(inputs, self.cfg)
    features, mask = self.encode(inputs["images"], inputs["image_mask"], inputs["tokens"], inputs["token_mask"])
    return self.action_decoder(self.sample_latent(features, mask, proprio, z_noise), proprio)
