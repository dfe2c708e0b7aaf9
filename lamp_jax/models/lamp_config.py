"""LaMP model configs: the named variants as a table, and the derived sizes.

``model_config(variant)`` -> ConfigDict with:
  name 'lamp' · variant · dtype (expert activations; ``vlm.dtype`` follows it) · attention (``vlm.attention``
  follows it) · vlm (the prefix encoder: ``vlm.kind`` 'paligemma' (default, ``paligemma.config_from_dict``) |
  'film_cnn' (sizes in ``vlm.film_cnn``, ``film_cnn.py``), see ``prefix_encoder.py``)
  image_keys · image_size (follows vlm.image_size) · max_token_len · motion · guidance (num_heads, gate_init_logit)
  action (kind 'dit', ...) · use_motion · use_proprio · proprio_dropout · loss (weights {motion, action,
  motion_image}, motion_repeats, action_repeats) · num_inference_steps · tau_infer · partial_steps ·
  motion_reconstruction_steps · action_horizon · action_dim · proprio_dim · motion_image (the optional joint
  motion-image diffusion head, ``models/motion_image.py``; off by default) · vae (the frozen VAE of that head:
  a ``models/vae.py`` model config, its image_size following image_size; read only when motion_image.enabled).

Where the paper and the released code disagree the field defaults to the released code (stated per field).
Speed options (exact rewrites, same math, on by default): ``attention`` ('auto': cuDNN flash attention on GPU in
bf16, else 'heads_major'; 'plain' is the reference; 'jax_xla' / 'jax_cudnn' use ``jax.nn.dot_product_attention``),
``motion.scan_unroll`` / ``action.scan_unroll`` (layers per scan iteration), ``motion.prune_last_condition``, ``action.cache_context_kv``; ``motion.cond_pool`` changes
the model (1 = released). ``python -m lamp_jax.bench`` times them.
"""

from __future__ import annotations

import ml_collections

from lamp_jax import specs
from lamp_jax.models import film_cnn
from lamp_jax.models import flops
from lamp_jax.models import motion_image
from lamp_jax.models import paligemma
from lamp_jax.models import vae

NAME = "lamp"
VARIANTS = ("tiny", "sim", "paper", "openpi_dummy")


def motion_config(**overrides) -> ml_collections.ConfigDict:
  """The Motion Expert section; defaults = the released Motion Expert (12 layers, width 1024, K = 400, T = 32)."""
  cfg = ml_collections.ConfigDict(dict(
      num_keypoints=400, num_steps=32, patch_size=2, frames_per_token=2, width=1024, depth=12, num_heads=16,
      mlp_ratio=4, cond_len=256, use_rope=False, delta_scale=(0.05, 0.05, 0.04), time_frequency_dim=256,
      # Training time distribution of the motion flow loss: 'uniform' (TraceGen-style stage 1) or 'pi0_beta'.
      time_dist="uniform", scan_layers=True, remat=False, remat_policy="nothing_saveable",
      # Exact rewrites (same math): unroll the layer scan; last block on motion queries only (its condition
      # stream is never read).
      scan_unroll=1, prune_last_condition=True,
      # Model option (changes the model; 1 = released): mean-pool windows of this many VLM prefix tokens into
      # one condition token (then set cond_len to about prefix / cond_pool).
      cond_pool=1,
      # Loss option (1.0 = released): weight of moving deltas (normalised norm > moving_threshold) in the motion
      # loss (motion_expert.loss_weights).
      moving_weight=1.0, moving_threshold=0.1))
  cfg.update(overrides)
  return cfg


def action_config(**overrides) -> ml_collections.ConfigDict:
  """The Action Expert section; defaults = the released DiT (24 layers, width 1024, 16 heads)."""
  cfg = ml_collections.ConfigDict(dict(
      kind="dit", width=1024, depth=24, num_heads=16, mlp_ratio=4, time_frequency_dim=256,
      time_dist="pi0_beta", scan_layers=True, remat=False, remat_policy="nothing_saveable",
      # Exact rewrites (same math): unroll the layer scan; when sampling, project the cross-attention keys /
      # values of the (fixed) guided features once instead of at every Euler step.
      scan_unroll=1, cache_context_kv=True))
  cfg.update(overrides)
  return cfg


# The sizes of each variant. 'tiny': tests (odd widths). 'sim': the CPU-trainable built-in benchmark (64x64
# images; ~2.3 M parameters, ~1.3 GFLOP per training example with 2 cameras x 64 patches + 48 text tokens, as
# measured with ``python -m lamp_jax.bench``). 'paper': PaliGemma-3B + the released experts (3.73 B).
_SIM_VLM = dict(vision_variant="S/16", llm_variant="dummy", image_size=64, vocab_size=1024,
                vision_overrides=dict(width=128, depth=2, mlp_dim=256, num_heads=2, patch_size=8),
                llm_overrides=dict(width=128, depth=2, mlp_dim=256, num_heads=2, num_kv_heads=1, head_dim=64))
# 'openpi_dummy': the sizes of openpi's π0 test model, the speed anchor of ``python -m lamp_jax.bench`` (docs/results.md,
# "Speed"): SigLIP S with patch 14 at 224² (256 patches per camera), openpi's 'dummy' Gemma (width 64, 4 layers, the
# full 257,152-row vocabulary), three cameras, 48 prompt tokens, horizon 10, action dim 8, proprio 8, float32, and
# in place of π0's dummy Gemma action expert a DiT of the same analytic cost (width 64, 8 layers). π0 has no motion:
# the preset is the w/o-motion ablation; its motion section (sim-sized, condition = the whole 816-token prefix)
# serves the bench's with-motion variant.
_OPENPI_DUMMY_VLM = dict(vision_variant="S/16", llm_variant="dummy", image_size=224,
                         vision_overrides=dict(patch_size=14))
_TABLE = {
    "tiny": dict(
        dtype="float32", vlm=("tiny", {}), image_keys=(specs.IMAGE_PRIMARY, specs.IMAGE_WRIST), max_token_len=7,
        motion=dict(num_keypoints=16, num_steps=6, width=40, depth=2, num_heads=4, mlp_ratio=2, cond_len=29,
                    time_frequency_dim=32),
        guidance_heads=3, action=dict(width=36, depth=2, num_heads=3, mlp_ratio=2, time_frequency_dim=32),
        action_horizon=5, action_dim=7, proprio_dim=5,
        # 24-pixel flow images -> 12 x 12 x 4 latents (tiny VAE, 2 levels) -> 4 x 4 tokens of 3 x 3 patches.
        motion_image=dict(width=44, depth=2, num_heads=4, mlp_ratio=2, patch_size=3, time_frequency_dim=32),
        vae="tiny"),
    "sim": dict(
        dtype="float32", vlm=("tiny", _SIM_VLM), image_keys=(specs.IMAGE_PRIMARY, specs.IMAGE_WRIST),
        # The longest built-in instruction ("put the yellow cylinder on the orange plate", 43 bytes) + bos + "\n" =
        # 45 byte tokens; configs/sim.py uses whole-word tokens and sets 12.
        max_token_len=48,
        motion=dict(num_keypoints=64, num_steps=8, width=64, depth=2, num_heads=2, cond_len=2 * 64 + 48,
                    time_frequency_dim=64),
        guidance_heads=2, action=dict(width=128, depth=4, num_heads=2, time_frequency_dim=128),
        action_horizon=8, action_dim=specs.ACTION_DIM, proprio_dim=specs.SIM_STATE_DIM,
        # 64-pixel flow images -> 8 x 8 x 4 latents of the 'sim' VAE -> 64 tokens (patch 1); the Motion Expert's
        # size (0.25 M parameters, 12 % of the w/o-motion policy: the paper's head is 11 % of pi0).
        motion_image=dict(width=64, depth=2, num_heads=2, patch_size=1, time_frequency_dim=64), vae="sim"),
    "paper": dict(
        dtype="bfloat16", vlm=("paligemma_3b", {}), image_keys=(specs.IMAGE_PRIMARY,), max_token_len=48,
        # Released cond length 256; here the condition holds the whole prefix (256 image + 48 text tokens).
        motion=dict(cond_len=304), guidance_heads=8, action={},
        action_horizon=10, action_dim=specs.ACTION_DIM, proprio_dim=specs.SIM_STATE_DIM,
        # The paper's head: 6 blocks over the SDXL VAE's 28 x 28 x 4 latent of a 224-pixel flow image (patch 2:
        # 196 tokens), 0.37 B parameters.
        motion_image={}, vae="sdxl"),
    "openpi_dummy": dict(
        dtype="float32", vlm=("tiny", _OPENPI_DUMMY_VLM),
        image_keys=(specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY, specs.IMAGE_WRIST), max_token_len=48,
        motion=dict(num_keypoints=64, num_steps=8, width=64, depth=2, num_heads=2, cond_len=3 * 256 + 48,
                    time_frequency_dim=64),
        guidance_heads=2, action=dict(width=64, depth=8, num_heads=4, time_frequency_dim=64),
        action_horizon=10, action_dim=8, proprio_dim=8, use_motion=False,
        motion_image={}, vae="sdxl"),
}


def model_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  """The LaMP model section of a named variant (``VARIANTS``)."""
  if variant not in _TABLE:
    raise ValueError(f"unknown LaMP variant {variant!r}; known: {VARIANTS}")
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
  # Attention implementation of every component (layers.ATTENTION_IMPLEMENTATIONS; all compute the same function).
  cfg.attention = "auto"  # cuDNN flash attention on GPU in bf16, else 'heads_major'
  cfg.vlm.attention = cfg.get_ref("attention")
  # Prefix encoder (prefix_encoder.py): 'paligemma' (the VLM above) or 'film_cnn' (an instruction-conditioned CNN
  # for from-scratch CPU runs; it reads image_size, vocab_size and dtype above and its sizes here).
  cfg.vlm.kind = "paligemma"
  cfg.vlm.film_cnn = film_cnn.default_config_dict()
  cfg.image_keys = row["image_keys"]
  cfg.image_size = cfg.vlm.get_ref("image_size")  # follows vlm.image_size
  cfg.max_token_len = row["max_token_len"]
  cfg.use_motion = row.get("use_motion", True)
  # Named loss terms (interface.py): 'motion' = flow matching of the scene-flow deltas (needs scene_flow keys),
  # 'action' = flow matching of the action chunk. *_repeats: flow-matching draws (tau, eps) per example and term,
  # sharing one VLM pass (and one guidance pass). 1 = released LaMP / pi0. R > 1 tiles the expert's inputs R
  # times: R x the expert's cost, a lower-variance gradient for the same encoder cost.
  # The w/o-motion ablation has no motion term (compute_loss rejects one).
  # 'motion_image' = flow matching of the VAE latents of the optical-flow image (the motion-image head; needs
  # motion_image.enabled and the optical_flow keys).
  weights = ml_collections.ConfigDict(dict(motion=1.0 if cfg.use_motion else 0.0, action=1.0, motion_image=0.0))
  cfg.loss = ml_collections.ConfigDict(dict(weights=weights, motion_repeats=1, action_repeats=1))
  # Proprio input of the Action Expert. use_proprio=False feeds zeros (the normalised mean state) always;
  # proprio_dropout=p zeroes it for a random fraction p of the training examples (never when sampling), so that
  # the policy cannot predict every action from the state alone and has to read the cameras (the "copycat"
  # shortcut of behaviour cloning with proprioception). Released LaMP: True / 0.0.
  cfg.use_proprio = True
  cfg.proprio_dropout = 0.0
  cfg.num_inference_steps = 10
  cfg.tau_infer = 0.1
  cfg.partial_steps = 1
  cfg.motion_reconstruction_steps = 10
  # Released LaMP: sigmoid(0.0) = 0.5. Paper wording ("initialised at zero"): use e.g. -6.0 (gate 0.0025).
  cfg.guidance = ml_collections.ConfigDict(dict(num_heads=row["guidance_heads"], gate_init_logit=0.0))
  cfg.motion = motion_config(**row["motion"])
  cfg.action = action_config(**row["action"])
  cfg.action_horizon, cfg.action_dim, cfg.proprio_dim = row["action_horizon"], row["action_dim"], row["proprio_dim"]
  # Joint motion-image diffusion (off: enable with motion_image.enabled=True and loss.weights.motion_image > 0).
  cfg.motion_image = motion_image.motion_image_config(**row["motion_image"])
  cfg.vae = vae.model_config(row["vae"])
  cfg.vae.image_size = cfg.get_ref("image_size")  # the flow images have the cameras' size
  cfg.vae.dtype = cfg.get_ref("dtype")
  return cfg


def prefix_length(cfg: ml_collections.ConfigDict) -> int:
  """VLM prefix tokens: every camera's patches + ``max_token_len`` text tokens (motion.cond_len must hold them)."""
  return flops.prefix_length(cfg.vlm, len(cfg.image_keys), int(cfg.max_token_len))
