"""Analytic matmul FLOPs of the model components, per example and forward (2 FLOPs per multiply-add).

XLA's ``cost_analysis()`` counts a scanned layer once, so utilisation figures (``lamp_jax.bench``, the trainer's
``roof_fraction``) use these counts. Element-wise ops, norms and softmax are not counted. Each library's
``analytic_flops`` composes them into its modes ('train_step' = 3 x forward: backward ~ 2 x forward).
"""

from __future__ import annotations

import ml_collections

from lamp_jax.models import film_cnn
from lamp_jax.models import motion_expert as motion_lib
from lamp_jax.models import motion_image as motion_image_lib
from lamp_jax.models import paligemma
from lamp_jax.models import prefix_encoder
from lamp_jax.models import vae as vae_lib


def transformer_layer(tokens: int, width: int, mlp_dim: int, *, context: int | None = None,
                      context_width: int | None = None, attn_width: int | None = None,
                      gated_mlp: bool = False) -> float:
  """One attention + MLP layer over ``tokens`` queries (keys / values from ``context`` tokens of
  ``context_width`` when given, else self-attention)."""
  attn_width = attn_width or width
  keys = tokens if context is None else context
  kv_in = width if context_width is None else context_width
  proj = 2 * tokens * width * attn_width * 2 + 2 * keys * kv_in * attn_width * 2  # q, out ; k, v
  scores = 2 * 2 * tokens * keys * attn_width  # logits + weighted values
  mlp = 2 * tokens * width * mlp_dim * (3 if gated_mlp else 2)
  return float(proj + scores + mlp)


def gemma_layer(llm, tokens: int, keys: int | None = None, kv_tokens: int | None = None) -> float:
  """One Gemma layer (GQA, GeGLU) over ``tokens`` queries attending to ``keys`` positions, of which
  ``kv_tokens`` (default: ``tokens``) project their keys / values in this call."""
  keys = tokens if keys is None else keys
  kv_tokens = tokens if kv_tokens is None else kv_tokens
  return float(2 * tokens * llm.width * llm.num_heads * llm.head_dim * 2  # q, out
               + 2 * kv_tokens * llm.width * llm.num_kv_heads * llm.head_dim * 2  # k, v
               + 2 * 2 * tokens * keys * llm.num_heads * llm.head_dim
               + 2 * tokens * llm.width * llm.mlp_dim * 3)


def siglip_tower(vision) -> float:
  """One image through a SigLIP tower (``siglip.SigLIPConfig``): patch embedding, the blocks, the optional head
  (the 'conv' stem is not counted)."""
  patches = vision.num_patches
  head = 2 * patches * vision.width * vision.head_width if vision.head_width else 0
  return float(2 * patches * vision.patch_size**2 * 3 * vision.width
               + vision.depth * transformer_layer(patches, vision.width, vision.mlp_dim) + head)


def image_patches(vlm_cfg: ml_collections.ConfigDict) -> int:
  """Prefix tokens of one camera (SigLIP patches, or the FiLM-CNN grid + keypoint tokens)."""
  return prefix_encoder.tokens_per_image(vlm_cfg)


def prefix_length(vlm_cfg: ml_collections.ConfigDict, num_cameras: int, text_tokens: int) -> int:
  """VLM prefix tokens: every camera's patches + the text tokens."""
  return num_cameras * image_patches(vlm_cfg) + int(text_tokens)


def prefix_encoder_call(vlm_cfg: ml_collections.ConfigDict, num_cameras: int, text_tokens: int) -> float:
  """The prefix encoder of ``vlm.kind`` ('paligemma': :func:`paligemma_prefix`; 'film_cnn': its convolutions)."""
  if prefix_encoder.kind_of(vlm_cfg) == film_cnn.KIND:
    cfg = film_cnn.config_from_dict(vlm_cfg, int(text_tokens), num_cameras)
    return film_cnn_prefix(cfg, num_cameras, int(text_tokens))
  return paligemma_prefix(vlm_cfg, num_cameras, text_tokens)


def film_cnn_prefix(cfg: film_cnn.FiLMCNNConfig, num_cameras: int, text_tokens: int) -> float:
  """The FiLM-CNN encoder: convolutions (k x k x fan-in per output value), FiLM and token projections, the
  instruction MLP, keypoint heads and the optional transformer blocks over the prefix."""
  fan_in, total = 3 + 2, 0.0  # RGB + the two coordinate channels
  for i, (channels, kernel) in enumerate(zip(cfg.channels, cfg.kernels)):
    size = cfg.stage_size(i)
    total += 2.0 * size * size * kernel**2 * fan_in * channels + 2.0 * cfg.cond_width * 2 * channels
    fan_in = channels
  total += 2.0 * cfg.grid**2 * cfg.channels[-1] * cfg.width
  if cfg.keypoints:
    total += 2.0 * cfg.stage_size(cfg.keypoint_stage)**2 * cfg.channels[cfg.keypoint_stage] * cfg.keypoints
    total += 2.0 * cfg.keypoints * (4 * film_cnn.KEYPOINT_FREQUENCIES + 2) * cfg.width
  total *= num_cameras
  instruction = 2.0 * cfg.max_text_len * cfg.text_width * cfg.cond_width + 2.0 * cfg.cond_width**2
  prefix = num_cameras * cfg.tokens_per_image + text_tokens
  blocks = cfg.transformer_depth * transformer_layer(prefix, cfg.width, cfg.mlp_ratio * cfg.width)
  return float(total + instruction + 2.0 * text_tokens * cfg.text_width * cfg.width + blocks)


def paligemma_prefix(vlm_cfg: ml_collections.ConfigDict, num_cameras: int, text_tokens: int) -> float:
  """SigLIP over every camera, the projection into Gemma, Gemma over the whole prefix."""
  vlm = paligemma.config_from_dict(vlm_cfg)
  v, g = vlm.vision, vlm.llm
  patches = image_patches(vlm_cfg)
  vision = num_cameras * (2 * patches * v.patch_size**2 * 3 * v.width
                          + v.depth * transformer_layer(patches, v.width, v.mlp_dim)
                          + 2 * patches * v.width * g.width)
  prefix = prefix_length(vlm_cfg, num_cameras, text_tokens)
  return float(vision + g.depth * gemma_layer(g, prefix))


def motion_expert_call(motion_cfg: ml_collections.ConfigDict, prefix: int, feature_width: int) -> float:
  """One Motion Expert evaluation (condition projection of ``prefix`` VLM features of ``feature_width``, the
  joint [condition; motion] blocks, adaLN modulations, patch in / out). Counts the pruned last block when
  ``prune_last_condition`` is on."""
  m = motion_cfg
  n_motion = motion_lib.num_motion_tokens(m)
  n_all = n_motion + m.cond_len
  cond_in = -(-prefix // m.get("cond_pool", 1))  # prefix tokens entering the condition projection
  fan_in = m.patch_size**2 * m.frames_per_token * 3
  mlp = m.mlp_ratio * m.width
  full_layer = transformer_layer(n_all, m.width, mlp)
  # prune_last_condition: the last block runs its queries / MLP on the motion tokens only (keys from all).
  last_layer = (transformer_layer(n_motion, m.width, mlp, context=n_all, context_width=m.width)
                if m.get("prune_last_condition", True) else full_layer)
  return float((m.depth - 1) * full_layer + last_layer + m.depth * 2 * 12 * m.width**2
               + 2 * cond_in * feature_width * m.width + 2 * n_motion * fan_in * m.width * 2)


def gated_guidance(motion_cfg: ml_collections.ConfigDict, prefix: int, width: int) -> float:
  """The gated cross-attention: ``prefix`` queries of ``width`` over the motion hidden states."""
  n_motion = motion_lib.num_motion_tokens(motion_cfg)
  return float(2 * n_motion * motion_cfg.width * width + 2 * n_motion * width * width * 2
               + 2 * prefix * width * width * 2 + 2 * 2 * prefix * n_motion * width)


def dit_action_call(action_cfg: ml_collections.ConfigDict, horizon: int, action_dim: int, proprio_dim: int,
                    prefix: int, feature_width: int, *, with_context_kv: bool = True) -> float:
  """One DiT Action Expert evaluation: pairs of (cross-attention to the prefix, self-attention) blocks over the
  horizon + 1 (proprio) tokens. ``with_context_kv=False`` leaves out the projection of the prefix keys / values
  (computed once per sampling when ``cache_context_kv`` is on: ``dit_context_kv``)."""
  a = action_cfg
  tokens = horizon + 1
  pair = (transformer_layer(tokens, a.width, a.mlp_ratio * a.width, context=prefix, context_width=feature_width)
          + transformer_layer(tokens, a.width, a.mlp_ratio * a.width) + 2 * 2 * 6 * a.width**2)
  total = (a.depth // 2) * pair + 2 * tokens * (action_dim + proprio_dim) * a.width
  if not with_context_kv:
    total -= dit_context_kv(action_cfg, prefix, feature_width)
  return float(total)


def dit_context_kv(action_cfg: ml_collections.ConfigDict, prefix: int, feature_width: int) -> float:
  """The cross-attention keys + values of the prefix features in every cross-attention block."""
  return float((action_cfg.depth // 2) * 2 * prefix * feature_width * action_cfg.width * 2)


def motion_image_call(head_cfg: ml_collections.ConfigDict, vae_cfg, image_size: int, prefix: int,
                      feature_width: int) -> float:
  """One motion-image head evaluation (``motion_image.MotionImageDiT``) on the latent of an ``image_size`` flow
  image, cross-attending to ``prefix`` VLM features of ``feature_width``: patch in / out, ``depth`` blocks of
  self-attention + MLP, cross-attention (keys / values projected from the prefix in every block) and 9 adaLN
  modulations, the time embedding and the final modulation."""
  c = head_cfg
  tokens = motion_image_lib.num_tokens(c, vae_cfg, image_size)
  _, _, channels = motion_image_lib.latent_shape(vae_cfg, image_size)
  width, p = int(c.width), int(c.patch_size)
  block = (transformer_layer(tokens, width, int(c.mlp_ratio) * width)
           + transformer_layer(tokens, width, 0, context=prefix, context_width=feature_width)
           + 2 * 9 * width * width)
  embed = 2 * int(c.time_frequency_dim) * width + 2 * width * width + 2 * 2 * width * width
  return float(int(c.depth) * block + embed + 2 * 2 * tokens * p * p * channels * width)


def motion_image_train(policy_cfg: ml_collections.ConfigDict, weights: dict, prefix: int,
                       feature_width: int) -> float:
  """Matmul FLOPs the motion-image head adds to one training example of a policy (``policy_cfg``, its
  ``weights``): 3 x one head call (forward + backward) + the frozen VAE encoder once (no backward: its input and
  output are stop_gradient); 0 when the head or its term is off."""
  if weights.get(motion_image_lib.LOSS_TERM, 0.0) <= 0 or not motion_image_lib.enabled(policy_cfg):
    return 0.0
  c = policy_cfg
  return (3 * motion_image_call(c.motion_image, c.vae, int(c.image_size), prefix, feature_width)
          + vae_encoder(c.vae, int(c.image_size)))


def motion_image_reconstruction(policy_cfg: ml_collections.ConfigDict, prefix_flops: float, prefix: int,
                                feature_width: int) -> float:
  """One ``reconstruct_motion_image`` example of a policy: its VLM prefix (``prefix_flops``),
  ``motion_image.reconstruction_steps`` head calls and the VAE decoder."""
  c = policy_cfg
  return (prefix_flops + int(c.motion_image.reconstruction_steps)
          * motion_image_call(c.motion_image, c.vae, int(c.image_size), prefix, feature_width)
          + vae_decoder(c.vae, int(c.image_size)))


def vae_encoder(vae_cfg, image_size: int) -> float:
  """The VAE encoder on one ``image_size`` x ``image_size`` image (``vae.encoder_flops``)."""
  return vae_lib.encoder_flops(vae_cfg, image_size)


def vae_decoder(vae_cfg, image_size: int) -> float:
  """The VAE decoder from the latent of an ``image_size`` image (``vae.decoder_flops``)."""
  return vae_lib.decoder_flops(vae_cfg, image_size)


def gemma_expert_call(expert, horizon: int, action_dim: int, proprio_dim: int, prefix: int) -> float:
  """One π0 Gemma action-expert evaluation (``pi0_expert.Pi0ActionExpert``, a ``gemma.GemmaConfig`` ``expert``):
  the 1 + ``horizon`` suffix tokens through every layer, attending to the ``prefix`` cached VLM keys / values
  (projected by the VLM pass, not here) and their own; the state / action / action-time MLP / output projections."""
  tokens = 1 + horizon
  d = expert.width
  layers = expert.depth * gemma_layer(expert, tokens, keys=prefix + tokens, kv_tokens=tokens)
  embed = 2 * proprio_dim * d + 2 * horizon * (action_dim * d + 2 * d * d + d * d)
  return float(layers + embed + 2 * horizon * d * action_dim)
