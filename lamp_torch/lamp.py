"""The LaMP policy network in PyTorch (mirrors ``lamp_jax/models/lamp.py``): PaliGemma prefix -> Motion Expert
(one-step partial denoising) -> gated guidance -> Action Expert (Euler integration).

Data flow (B batch, C cameras, L prompt tokens, P prefix tokens, K keypoints, T motion steps, H horizon, A action
dim, S proprio dim):

  images float32[B, C, Hi, Wi, 3] in [-1, 1], tokens int[B, L] ─► vlm ─► features float[B, P, Dv]
  noise['motion'] float32[B, K, T, 3] ─► ``partial_steps`` Euler steps 0 -> tau_infer, one more call at tau_infer
      ─► motion hidden float[B, N, Dm]
  features, motion hidden ─► guidance ─► guided features
  noise['action'] float32[B, H, A] ─► action expert, Euler 0 -> 1 in ``num_inference_steps`` ─► float32[B, H, A]

Time convention (tau = 0 noise, tau = 1 data) and step arithmetic are those of ``lamp_jax/models/flow_matching.py``
(tau_i = float32(i) * float32(dt); x <- x + float32(dt) * v). ``use_motion=False`` (the w/o-motion ablation) has
no ``motion_expert`` / ``guidance`` modules: the guided features are the VLM features.

Top-level modules: ``vlm``, ``motion_expert``, ``guidance``, ``action_expert`` (as the JAX parameter tree).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from lamp_torch import action_expert as action_lib
from lamp_torch import guidance as guidance_lib
from lamp_torch import inputs as inputs_lib
from lamp_torch import layers
from lamp_torch import motion_expert as motion_lib
from lamp_torch import paligemma

FLOAT32 = layers.FLOAT32


class LaMP(nn.Module):
  """``model``: the export's config.json ``model`` section (the JAX model config as JSON); ``vlm``: its
  ``vlm`` section (the resolved SigLIP / Gemma fields)."""

  def __init__(self, model: Mapping[str, Any], vlm: Mapping[str, Any]):
    super().__init__()
    self.cfg = model
    self.dtype = layers.activation_dtype(model["dtype"], "model.dtype")
    vlm_dtype = layers.activation_dtype(vlm["llm"]["dtype"], "vlm.llm.dtype")
    width = vlm["llm"]["width"]
    self.use_motion = bool(model["use_motion"])
    self.vlm = paligemma.PaliGemma(vlm, vlm_dtype)
    if self.use_motion:
      self.motion_expert = motion_lib.MotionExpert(model["motion"], width, self.dtype)
      self.guidance = guidance_lib.GatedMotionGuidance(model["guidance"], width, model["motion"]["width"],
                                                       self.dtype)
    self.action_expert = action_lib.build_action_expert(model["action"], action_dim=model["action_dim"],
                                                        proprio_dim=model["proprio_dim"], context_width=width,
                                                        dtype=self.dtype)

  @classmethod
  def from_export_config(cls, config: Mapping[str, Any]) -> "LaMP":
    """The module of an export's config.json (its ``model`` and ``vlm`` sections)."""
    return cls(config["model"], config["vlm"])

  # -------------------------------------------------------------------------------------------- components
  def encode(self, images, image_mask, tokens, token_mask):
    """VLM prefix features (float[B, P, Dv], bool[B, P])."""
    return self.vlm(images, image_mask, tokens, token_mask)

  def noise_shapes(self, batch_size: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the random draws of one ``sample_actions`` call (the keys of its ``noise`` dict)."""
    cfg = self.cfg
    shapes = {"action": (batch_size, cfg["action_horizon"], cfg["action_dim"])}
    if self.use_motion:
      shapes["motion"] = (batch_size, cfg["motion"]["num_keypoints"], cfg["motion"]["num_steps"], 3)
    return shapes

  def motion_representation(self, features, feature_mask, noise):
    """One-step partial denoising from ``noise`` float32[B, K, T, 3]: the last call's hidden float[B, N, Dm]."""
    cfg = self.cfg
    b = features.shape[0]
    x = noise
    dt = cfg["tau_infer"] / cfg["partial_steps"]
    dt32 = torch.tensor(dt, dtype=FLOAT32)
    for i in range(cfg["partial_steps"]):
      tau = torch.full((b,), i * dt, dtype=FLOAT32, device=x.device)
      velocity, _ = self.motion_expert(x, tau, features, feature_mask)
      x = x + dt32.to(x.device) * velocity
    tau = torch.full((b,), cfg["tau_infer"], dtype=FLOAT32, device=x.device)
    return self.motion_expert(x, tau, features, feature_mask)[1]

  def guide(self, features, feature_mask, motion_noise, gate_override=None):
    """Guided features float[B, P, Dv] (the VLM features themselves when use_motion is False)."""
    if not self.use_motion:
      return features
    hidden = self.motion_representation(features, feature_mask, motion_noise)
    return self.guidance(features, hidden, gate_override)[0]

  def integrate_actions(self, guided, mask, proprio, x0):
    """Euler integration of the Action Expert 0 -> 1 from ``x0`` float32[B, H, A]."""
    num_steps = int(self.cfg["num_inference_steps"])
    if num_steps < 1:
      raise ValueError(f"config.json field model.num_inference_steps={num_steps} must be >= 1")
    b = x0.shape[0]
    context_kv = self.action_expert.context_kv(guided)
    dt32 = torch.tensor(1.0 / num_steps, dtype=FLOAT32, device=x0.device)
    x = x0
    for i in range(num_steps):
      tau = (torch.tensor(float(i), dtype=FLOAT32, device=x.device) * dt32).expand(b)
      x = x + dt32 * self.action_expert(x, tau, proprio, context_kv, mask)
    return x

  # -------------------------------------------------------------------------------------------- sampling
  def sample_actions(self, inputs: Mapping[str, torch.Tensor], noise: Mapping[str, Any]) -> torch.Tensor:
    """Normalised action chunk float32[B, H, A].

    Args:
      inputs: 'images' float32[B, C, Hi, Wi, 3] in [-1, 1], 'image_mask' bool[B, C], 'tokens' int[B, L],
        'token_mask' bool[B, L], 'proprio' float32[B, S] (normalised).
      noise: {'action': float32[B, H, A], 'motion': float32[B, K, T, 3] (use_motion only)}.
    """
    noise = inputs_lib.checked_noise(noise, self.noise_shapes(inputs["tokens"].shape[0]), inputs["images"].device)
    proprio = inputs_lib.checked_proprio(inputs, self.cfg)
    features, mask = self.encode(inputs["images"], inputs["image_mask"], inputs["tokens"], inputs["token_mask"])
    guided = self.guide(features, mask, noise.get("motion"))
    return self.integrate_actions(guided, mask, proprio, noise["action"])
