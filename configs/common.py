"""What the run configs share: LaMP's two-stage recipe, the one-stage recipe of a policy without a motion prior (π0),
the CPU-budget optimizers and data knobs, smoke sizes.

Config files import it as ``from configs import common``: run the commands from the repository root (as the
README does), where ``configs`` is importable.
"""

from __future__ import annotations

import ml_collections

from lamp_jax.data import config as data_config
from lamp_jax.models import lamp_config
from lamp_jax.models import registry
from lamp_jax.training import defaults


def lamp_stages(use_motion: bool, motion_steps: int, action_steps: int, motion_optimizer, action_optimizer, *,
                motion_repeats: int = 1, action_repeats: int = 1,
                motion_frozen=(r"^guidance/", r"^action_expert/"),
                action_frozen=(r"^motion_expert/",)) -> tuple[tuple[str, ...], ml_collections.ConfigDict]:
  """(stage_order, stages) of LaMP's two-stage recipe or of its w/o-motion ablation on the same step budget.

  LaMP: 'motion' (loss term 'motion' only: scene-flow flow matching; guidance and Action Expert frozen) then
  'action' (term 'action' only; Motion Expert frozen, as released). Ablation: one 'action' stage of
  ``motion_steps + action_steps`` with ``action_optimizer`` (nothing frozen; there is no Motion Expert).
  ``*_repeats``: flow-matching draws per example (``lamp_config``: loss.*_repeats).
  """
  def loss(motion: float, action: float, **repeats) -> dict:
    return dict(loss=dict(weights=dict(motion=motion, action=action), **repeats))

  if not use_motion:
    return ("action",), ml_collections.ConfigDict(dict(
        action=defaults.stage_config(motion_steps + action_steps, frozen=(), optimizer=action_optimizer,
                                     model_overrides=loss(0.0, 1.0, action_repeats=action_repeats))))
  return ("motion", "action"), ml_collections.ConfigDict(dict(
      motion=defaults.stage_config(motion_steps, frozen=motion_frozen, optimizer=motion_optimizer,
                                   model_overrides=loss(1.0, 0.0, motion_repeats=motion_repeats)),
      action=defaults.stage_config(action_steps, frozen=action_frozen, optimizer=action_optimizer,
                                   model_overrides=loss(0.0, 1.0, action_repeats=action_repeats))))


def action_stage(steps: int, optimizer, *, action_repeats: int = 1) -> tuple[tuple[str, ...],
                                                                             ml_collections.ConfigDict]:
  """(stage_order, stages) of one 'action' stage of ``steps`` with ``optimizer``, nothing frozen, loss term 'action'
  only: a policy without a motion prior (π0) on the budget of LaMP's w/o-motion ablation (``lamp_stages`` with
  use_motion=False: the same steps, optimizer and ``action_repeats``)."""
  return ("action",), ml_collections.ConfigDict(dict(
      action=defaults.stage_config(steps, frozen=(), optimizer=optimizer,
                                   model_overrides=dict(loss=dict(weights=dict(action=1.0),
                                                                  action_repeats=action_repeats)))))


def cpu_optimizers(warmup_steps: int) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """(stage-1, stage-2) AdamW of the from-scratch CPU runs: peak lr 1e-3 after ``warmup_steps``, cosine to 3e-6
  (released LaMP uses 1e-4 on a pretrained 3B VLM; 3e-4 fitted visibly slower here: motion loss 0.166 vs 0.118
  after 300 steps). Stage 1 keeps TraceGen's weight decay 0.05, stage 2 released LaMP's 1e-4."""
  motion = defaults.optimizer_config(lr=1e-3, end_lr=3e-6, warmup_steps=warmup_steps, weight_decay=0.05,
                                     clip_norm=1.0)
  action = defaults.optimizer_config(lr=1e-3, end_lr=3e-6, warmup_steps=warmup_steps, weight_decay=1e-4,
                                     clip_norm=1.0)
  return motion, action


def data_for(model_cfg: ml_collections.ConfigDict, batch_size: int) -> ml_collections.ConfigDict:
  """The pipeline config with every field the model fixes (``ModelLibrary.data_requirements``). A later command-line
  override of a model field that the data must follow (e.g. ``model.motion.num_keypoints``) needs the matching
  ``data.pipeline`` override too; the trainer checks both agree before any work and names the fields."""
  lib = registry.for_config(model_cfg)
  return data_config.from_requirements(lib.data_requirements(model_cfg), batch_size)


def fixed_camera_data(model_cfg: ml_collections.ConfigDict, batch_size: int) -> ml_collections.ConfigDict:
  """The pipeline config of a small scene seen by fixed cameras (the built-in tabletop, LIBERO's agentview).

  No random resized crop of the fixed camera (its pixel position is the table position; Octo / openpi crop it:
  ``--config.data.pipeline.augment_cameras='("image_primary",)'`` restores it) and no hue jitter (instructions
  name objects by colour, 20-40 degrees of hue apart); brightness / contrast / saturation stay. Deterministic,
  so that a resumed run reproduces the uninterrupted data stream (resume_mode 'skip')."""
  d = data_for(model_cfg, batch_size)
  d.action_normalization = "bounds"
  d.proprio_normalization = "normal"
  d.hue = 0.0
  d.augment_cameras = ()
  d.shuffle_buffer_size = 5000
  d.num_parallel_calls = 2
  d.num_parallel_reads = 2
  d.deterministic = True
  d.resume_mode = "skip"
  return d


def smoke_lamp(model_cfg: ml_collections.ConfigDict, *, image_size: int, width: int, mlp_dim: int,
               time_frequency_dim: int, max_words: int, action_horizon: int,
               num_inference_steps: int) -> ml_collections.ConfigDict:
  """``model_cfg`` (a 'sim' LaMP config) shrunk to smoke-test size: one-layer VLM towers of ``width``, a one-block
  Motion Expert and a two-block Action Expert; the motion grid is left to the caller (it follows the data)."""
  m = model_cfg
  m.vlm.image_size = image_size
  m.vlm.vision_overrides = ml_collections.ConfigDict(dict(width=width, depth=1, mlp_dim=mlp_dim, num_heads=2,
                                                          patch_size=8))
  m.vlm.llm_overrides = ml_collections.ConfigDict(dict(width=width, depth=1, mlp_dim=mlp_dim, num_heads=2,
                                                       num_kv_heads=1, head_dim=width // 2))
  m.max_token_len = max_words
  m.motion.width, m.motion.depth, m.motion.num_heads = width, 1, 2
  m.motion.time_frequency_dim = time_frequency_dim
  m.guidance.num_heads = 2
  m.action.width, m.action.depth, m.action.num_heads = width, 2, 2
  m.action.time_frequency_dim = time_frequency_dim
  m.action_horizon = action_horizon
  m.num_inference_steps = num_inference_steps
  return m


def smoke_pi0(model_cfg: ml_collections.ConfigDict, *, image_size: int, width: int, mlp_dim: int, max_words: int,
              action_horizon: int, num_inference_steps: int) -> ml_collections.ConfigDict:
  """``model_cfg`` (a 'sim' π0 config) shrunk to smoke-test size: the VLM towers of ``smoke_lamp`` (one layer of
  ``width``) and a one-layer Gemma expert of the same width, heads and head dim (it attends to the VLM's K/V)."""
  m = model_cfg
  m.vlm.image_size = image_size
  m.vlm.vision_overrides = ml_collections.ConfigDict(dict(width=width, depth=1, mlp_dim=mlp_dim, num_heads=2,
                                                          patch_size=8))
  llm = dict(width=width, depth=1, mlp_dim=mlp_dim, num_heads=2, num_kv_heads=1, head_dim=width // 2)
  m.vlm.llm_overrides = ml_collections.ConfigDict(llm)
  m.action.overrides = ml_collections.ConfigDict(llm)
  m.max_token_len = max_words
  m.action_horizon = action_horizon
  m.num_inference_steps = num_inference_steps
  return m


def every_prefix_token(model_cfg: ml_collections.ConfigDict) -> None:
  """Sizes the Motion Expert's condition to hold every VLM prefix token (``motion.cond_len``)."""
  model_cfg.motion.cond_len = lamp_config.prefix_length(model_cfg)
