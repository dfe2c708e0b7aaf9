"""π0 model configs: the named variants as a table, and the derived sizes.

``model_config(variant)`` -> ConfigDict with:
  name 'pi0' · variant · dtype (activations of the VLM and the expert; ``vlm.dtype`` follows it) · attention (the
  attention implementation of both, ``layers.ATTENTION_IMPLEMENTATIONS``; ``vlm.attention`` / ``action.attention``
  follow it)
  vlm (``paligemma.config_from_dict``) · image_keys · image_size (follows vlm.image_size) · max_token_len
  action (kind 'pi0', variant + overrides of ``gemma.get_config`` for the expert, time_dist, time_min_period,
  time_max_period, remat, remat_policy; ``pi0_expert.py``) · use_proprio · proprio_dropout · loss (weights
  {action}, action_repeats)
  num_inference_steps · action_horizon · action_dim · proprio_dim; with ``with_motion_image`` also motion_image
  and vae (the joint motion-image diffusion head, ``models/motion_image.py``) and loss.weights.motion_image.

The expert's depth, num_heads, num_kv_heads and head_dim must equal the VLM LLM's (checked when the model is
built). Defaults follow openpi's π0: 10 Euler steps, time distribution 'pi0_beta', time embedding periods
4e-3 .. 4.0, the state as one suffix token; π0's action horizon is 50 and its actions / state are padded to 32
dims ('paper' keeps the 32 dims and uses ``action_horizon`` 10, a config value).
"""

from __future__ import annotations

import ml_collections

from lamp_jax import specs
from lamp_jax.models import flops
from lamp_jax.models import motion_image
from lamp_jax.models import paligemma

NAME = "pi0"
VARIANTS = ("tiny", "sim", "openpi_dummy", "paper")


def action_config(variant: str = "gemma_300m", **overrides) -> ml_collections.ConfigDict:
  """The action section: the Gemma expert ``gemma.get_config(variant, **overrides)`` and its flow-matching
  settings."""
  return ml_collections.ConfigDict(dict(
      kind="pi0", variant=variant, overrides=ml_collections.ConfigDict(overrides),
      # Training times of the flow-matching loss (flow_matching.sample_tau): π0's Beta(1.5, 1) in our convention.
      time_dist="pi0_beta",
      # Sin-cos embedding of openpi's time t = 1 - tau (pi0_expert.flow_time_embedding).
      time_min_period=4e-3, time_max_period=4.0,
      # Rematerialise each expert layer in the backward pass (the VLM has its own vlm.remat), keeping what
      # remat_policy names (layers.REMAT_POLICIES).
      remat=False, remat_policy="nothing_saveable"))


# The VLM of the built-in tabletop benchmark: LaMP's 'sim' VLM (64x64 images, two 2-layer towers of width 128;
# tests/test_pi0.py checks that the two stay equal, so that the policies compare on the same encoder).
SIM_VLM = dict(vision_variant="S/16", llm_variant="dummy", image_size=64, vocab_size=1024,
               vision_overrides=dict(width=128, depth=2, mlp_dim=256, num_heads=2, patch_size=8),
               llm_overrides=dict(width=128, depth=2, mlp_dim=256, num_heads=2, num_kv_heads=1, head_dim=64))
# openpi's test sizes (its speed comparison): SigLIP S with 14-pixel patches at 224² (256 tokens per camera),
# the 'dummy' Gemma (width 64, depth 4, 8 heads, 1 K/V head of 16) for the VLM and the expert, PaliGemma's
# vocabulary.
OPENPI_DUMMY_VLM = dict(vision_variant="S/16", llm_variant="dummy", image_size=224,
                        vision_overrides=dict(patch_size=14))
THREE_CAMERAS = (specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY, specs.IMAGE_WRIST)

# The sizes of each variant. 'tiny': tests (odd widths). 'sim': the CPU-trainable built-in benchmark.
# 'openpi_dummy': openpi's dummy π0 at equal sizes, for the speed comparison. 'paper': π0 (PaliGemma-3B + Gemma
# 300M, bf16), horizon 10.
_TABLE = {
    "tiny": dict(
        dtype="float32", vlm=("tiny", {}), image_keys=(specs.IMAGE_PRIMARY, specs.IMAGE_WRIST), max_token_len=7,
        action=("tiny", dict(width=38, mlp_dim=70)), action_horizon=5, action_dim=7, proprio_dim=5),
    "sim": dict(
        dtype="float32", vlm=("tiny", SIM_VLM), image_keys=(specs.IMAGE_PRIMARY, specs.IMAGE_WRIST), max_token_len=48,
        action=("dummy", dict(width=128, depth=2, mlp_dim=256, num_heads=2, num_kv_heads=1, head_dim=64)),
        action_horizon=8, action_dim=specs.ACTION_DIM, proprio_dim=specs.SIM_STATE_DIM),
    "openpi_dummy": dict(
        dtype="float32", vlm=("tiny", OPENPI_DUMMY_VLM), image_keys=THREE_CAMERAS, max_token_len=48,
        action=("dummy", {}), action_horizon=10, action_dim=8, proprio_dim=8),
    "paper": dict(
        dtype="bfloat16", vlm=("paligemma_3b", {}), image_keys=THREE_CAMERAS, max_token_len=48,
        action=("gemma_300m", {}), action_horizon=10, action_dim=32, proprio_dim=32),
}


def model_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  """The π0 model section of a named variant (``VARIANTS``)."""
  if variant not in _TABLE:
    raise ValueError(f"unknown π0 variant {variant!r}; known: {VARIANTS}")
  row = _TABLE[variant]
  cfg = ml_collections.ConfigDict()
  cfg.name = NAME
  cfg.variant = variant
  cfg.dtype = row["dtype"]
  vlm_base, vlm_overrides = row["vlm"]
  cfg.vlm = paligemma.default_config_dict(vlm_base)
  for key, value in vlm_overrides.items():
    cfg.vlm[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  cfg.vlm.dtype = cfg.get_ref("dtype")  # the VLM computes in the model's dtype (the trainer sets compute_dtype)
  # Attention implementation of the VLM and the expert (layers.ATTENTION_IMPLEMENTATIONS; all compute the same
  # function; 'plain' is the reference of ``Pi0Library.reference_config``).
  cfg.attention = "auto"  # cuDNN flash attention on GPU in bf16, else 'heads_major'
  cfg.vlm.attention = cfg.get_ref("attention")
  cfg.image_keys = row["image_keys"]
  cfg.image_size = cfg.vlm.get_ref("image_size")  # follows vlm.image_size
  cfg.max_token_len = row["max_token_len"]
  expert_variant, expert_overrides = row["action"]
  cfg.action = action_config(expert_variant, **expert_overrides)
  cfg.action.attention = cfg.get_ref("attention")
  # Proprio input (observation.current_proprio): use_proprio=False feeds zeros; proprio_dropout=p zeroes it for a
  # random fraction p of the training examples. π0: True / 0.0.
  cfg.use_proprio = True
  cfg.proprio_dropout = 0.0
  # Named loss terms (interface.py): 'action' = flow matching of the action chunk. action_repeats: (tau, eps)
  # draws per example sharing one VLM pass (the expert sees R copies of the batch; 1 = π0).
  cfg.loss = ml_collections.ConfigDict(dict(weights=ml_collections.ConfigDict(dict(action=1.0)), action_repeats=1))
  cfg.num_inference_steps = 10
  cfg.action_horizon, cfg.action_dim, cfg.proprio_dim = row["action_horizon"], row["action_dim"], row["proprio_dim"]
  return cfg


def prefix_length(cfg: ml_collections.ConfigDict) -> int:
  """VLM prefix tokens: every camera's patches + ``max_token_len`` text tokens."""
  return flops.prefix_length(cfg.vlm, len(cfg.image_keys), int(cfg.max_token_len))


# The motion-image head of each variant: (head sizes, VAE variant), those of LaMP's variants of the same VLM.
# 'tiny': 24-pixel flow images -> 12 x 12 x 4 latents of the tiny VAE -> 16 tokens of 3 x 3 patches; 'sim': 64-pixel
# flow images -> 8 x 8 x 4 latents of the 'sim' VAE -> 64 tokens; 'paper' / 'openpi_dummy': the paper's head
# (6 blocks, width 1536, 2 x 2 patches) over the SDXL VAE.
_MOTION_IMAGE = {
    "tiny": (dict(width=44, depth=2, num_heads=4, mlp_ratio=2, patch_size=3, time_frequency_dim=32), "tiny"),
    "sim": (dict(width=64, depth=2, num_heads=2, patch_size=1, time_frequency_dim=64), "sim"),
    "openpi_dummy": ({}, "sdxl"),
    "paper": ({}, "sdxl"),
}


def with_motion_image(cfg: ml_collections.ConfigDict, *, weight: float = 1.0,
                      **head_overrides) -> ml_collections.ConfigDict:
  """``cfg`` (a π0 model section) with the motion-image head on: the sections of its variant's head
  (``motion_image.add``; ``head_overrides`` on top) and loss weight ``weight``. The VAE's latent scaling is its
  variant's default; a run measures it on its data (``configs/common.add_motion_image_head``)."""
  sizes, vae_variant = _MOTION_IMAGE[str(cfg.variant)]
  return motion_image.add(cfg, vae_variant, enable=True, weight=weight, **{**sizes, **head_overrides})
