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
from lamp_jax.models import vae as vae_lib
from lamp_jax.training import defaults
from lamp_jax.training import pretrained
from lamp_jax.training import prerequisites

# The frozen VAE of a motion-image head: frozen in every stage (it is never trained by the policy).
VAE_FROZEN = r"^vae/"


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


def motion_image_stages(warmup_steps: int, joint_steps: int, warmup_optimizer, joint_optimizer, *,
                        motion_image_weight: float = 1.0, action_repeats: int = 1,
                        policy_parts=("vlm", "action_expert"),
                        silenced_terms=()) -> tuple[tuple[str, ...], ml_collections.ConfigDict]:
  """(stage_order, stages) of joint motion-image diffusion (the paper's two phases), for any policy whose loss has
  the terms 'action' and 'motion_image'.

  'warmup': only the motion-image head trains (term 'motion_image'; every ``policy_parts`` subtree and the VAE
  frozen), so that the new head adapts to the policy's VLM features before its gradients reach them; 'joint': the
  VLM, the action head and the motion-image head train together on ``action + motion_image_weight *
  motion_image`` (the VAE stays frozen). ``action_repeats``: flow-matching draws of the action term per example.
  ``silenced_terms``: the policy's other loss terms, weighted 0 in both stages (e.g. ('motion',) for a policy
  config that declares a motion term).
  """
  warmup_frozen = tuple(rf"^{part}/" for part in policy_parts) + (VAE_FROZEN,)
  silent = {term: 0.0 for term in silenced_terms}
  return ("warmup", "joint"), ml_collections.ConfigDict(dict(
      warmup=defaults.stage_config(warmup_steps, frozen=warmup_frozen, optimizer=warmup_optimizer,
                                   model_overrides=dict(loss=dict(weights=dict(**silent, action=0.0,
                                                                               motion_image=1.0)))),
      joint=defaults.stage_config(joint_steps, frozen=(VAE_FROZEN,), optimizer=joint_optimizer,
                                  model_overrides=dict(loss=dict(
                                      weights=dict(**silent, action=1.0, motion_image=motion_image_weight),
                                      action_repeats=action_repeats)))))


def flow_vae_run(policy: ml_collections.ConfigDict, vae_model: ml_collections.ConfigDict, *, steps: int,
                 batch_size: int, optimizer) -> ml_collections.ConfigDict:
  """The run config of the VAE a motion-image ``policy`` run depends on: ``vae_model`` trained on the flow images
  of the policy's own data (same datasets, generation settings and simulator data cache, so the demonstrations
  are generated once for both; only the flow images are read), one stage 'vae', no evaluation. Its latents are
  unscaled (scaling_factor 1, shift 0): the report measures the scaling the policy then uses."""
  c = defaults.base_config()
  c.seed = 0
  m = vae_model
  m.scaling_factor, m.shift_factor = 1.0, 0.0
  c.model = m
  c.compute_dtype = policy.compute_dtype
  c.data.kind = policy.data.kind
  c.data.global_batch_size = batch_size
  p = policy.data.pipeline
  d = data_for(m, batch_size)
  # Fields that decide what the simulator generates (experiment.generation_flags) and how the data is read follow
  # the policy's, so that both read the same generated dataset; the VAE reads only the flow images.
  for field in ("datasets", "scene_flow_num_points", "scene_flow_horizon", "action_horizon", "max_action_dim",
                "max_proprio_dim", "action_normalization", "proprio_normalization", "shuffle_buffer_size",
                "num_parallel_calls", "num_parallel_reads", "deterministic", "resume_mode", "stats_cache_dir",
                "optical_flow_max_magnitude"):
    if field in p:
      d[field] = p[field]
  d.augment = False  # a flow image's colours encode the flow; the policy's flow images are not cropped either
  c.data.pipeline = d
  c.tokenizer = policy.tokenizer
  c.mesh = policy.mesh
  c.sim_data = policy.sim_data
  c.stage_order = ("vae",)
  c.stages = ml_collections.ConfigDict(dict(vae=defaults.stage_config(steps, optimizer=optimizer)))
  c.checkpoint.every_steps = max(1, min(500, steps))
  c.checkpoint.max_to_keep = 1
  c.logging.every_steps = max(1, min(25, steps))
  c.logging.measure_roof = policy.logging.measure_roof
  c.eval.enabled = False
  return c


def add_motion_image_head(policy: ml_collections.ConfigDict, vae_run: ml_collections.ConfigDict,
                          name: str = "vae") -> None:
  """Gives a policy run config its frozen VAE from ``vae_run``, trained once as a prerequisite: the policy's
  ``model.vae`` becomes the VAE run's architecture with its latent scaling left unset (0: filled in from the VAE
  run's report, 'scaling_factor' = 1 / latent std and 'shift_factor' = latent mean), its parameters load from the
  finished run (init entry ``name``, kind 'checkpoint', the run's whole tree into params['vae'])."""
  m = policy.model
  m.motion_image.enabled = True
  vae = ml_collections.ConfigDict(vae_run.model.to_dict())
  vae.image_size = int(m.image_size)
  vae.dtype = m.dtype
  vae.scaling_factor, vae.shift_factor = 0.0, 0.0  # measured by the VAE run (its report), written in before training
  m.vae = vae
  with policy.unlocked():
    if "init" not in policy:
      policy.init = ml_collections.ConfigDict()
    policy.init[name] = pretrained.init_entry("checkpoint", "vae", path=None, source="/")
    if "prerequisites" not in policy:
      policy.prerequisites = ml_collections.ConfigDict()
    policy.prerequisites[name] = prerequisites.prerequisite_entry(
        vae_run, init=name, report_fields=(("model.vae.scaling_factor", "scaling_factor"),
                                           ("model.vae.shift_factor", "shift_factor")))
