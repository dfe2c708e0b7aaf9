"""Analytic matmul FLOPs of the model components, per example and forward (2 FLOPs per multiply-add).

XLA's ``cost_analysis()`` counts a scanned layer once, so utilisation figures (``lamp_jax.bench``, the trainer's
``roof_fraction``) use these counts. Element-wise ops, norms and softmax are not counted. Each library's
``analytic_flops`` composes them into its modes ('train_step' = 3 x forward: backward ~ 2 x forward).
"""

from __future__ import annotations

import ml_collections

from lamp_jax.models import paligemma


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
  vision = paligemma.config_from_dict(vlm_cfg).vision
  return (vision.image_size // vision.patch_size) ** 2


def prefix_length(vlm_cfg: ml_collections.ConfigDict, num_cameras: int, text_tokens: int) -> int:
  """VLM prefix tokens: every camera's patches + the text tokens."""
  return num_cameras * image_patches(vlm_cfg) + int(text_tokens)


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
  from lamp_jax.models import motion_expert as motion_lib  # deferred: other models' counts need no Motion Expert

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
  from lamp_jax.models import motion_expert as motion_lib  # deferred (see motion_expert_call)

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


def gemma_expert_call(expert, horizon: int, action_dim: int, proprio_dim: int, prefix: int) -> float:
  """One π0 Gemma action-expert evaluation (``pi0_expert.Pi0ActionExpert``, a ``gemma.GemmaConfig`` ``expert``):
  the 1 + ``horizon`` suffix tokens through every layer, attending to the ``prefix`` cached VLM keys / values
  (projected by the VLM pass, not here) and their own; the state / action / action-time MLP / output projections."""
  tokens = 1 + horizon
  d = expert.width
  layers = expert.depth * gemma_layer(expert, tokens, keys=prefix + tokens, kv_tokens=tokens)
  embed = 2 * proprio_dim * d + 2 * horizon * (action_dim * d + 2 * d * d + d * d)
  return float(layers + embed + 2 * horizon * d * action_dim)
