"""LAFP (latent action flow policy) model configs: the named variants, built from the w/o-motion LaMP policy's
prefix encoder and DiT sizes plus a frozen latent action model (lam_config.py).

``model_config(variant)`` / ``from_policy(policy_cfg, lam_cfg)`` -> ConfigDict with:
  name 'lafp' · variant · dtype · attention (``vlm.attention`` follows it) · vlm (the prefix encoder,
  ``prefix_encoder.py``: 'paligemma' or 'film_cnn', copied from the policy config) · image_keys · image_size ·
  max_token_len · action_horizon · action_dim · proprio_dim · use_proprio · proprio_dropout
  latent_policy   the DiT (``action_expert.DiTActionExpert``) over the L_z latent tokens of Dc dims, cross-attending
                  to the prefix, plus: objective ('flow': x-prediction flow matching, LAFP; 'bc': one deterministic
                  regression of the latent, the behaviour-cloned baseline), loss_space ('v': x-prediction with the
                  velocity loss, as JiT; 'x': the latent error itself), t_eps (the floor of 1 - tau in the implied
                  velocity), time_dist, cache_context_kv
  latent          the latent the heads are sized for: code_length (L_z) · code_dim (Dc); must equal
                  ``lam.vq.code_length`` / ``code_dim`` (checked, naming the fields)
  decoder         the action decoder (an MLP over [flattened latent; proprio]): width · depth · mlp_ratio ·
                  use_proprio · interpolation (tau_i of the interpolated training latent
                  (1 - tau_i) * z_0 + tau_i * z_t; z_0 the policy's sample, z_t the LAM's latent)
  num_inference_steps (the latent sampler's Euler steps; 3, the paper's) · lam (the frozen LAM, training only)
  pairs_past_end  an example whose pair (o_t, o_{t+k}) lies past the episode end: 'last_frame' (the default: its
                  pair is (o_t, the episode's last frame), as the data pipeline gives it) or 'drop' (no latent: it
                  enters no term, so the last k steps of every episode never train the decoder). The paper does not
                  say; on the built-in benchmark 'drop' discards 37.5 % of the examples and LAFP reached 8.3 % against
                  27.5 % with 'last_frame' (3 seeds each, docs/results.md). A config without the field (written
                  before it existed) keeps 'drop', the behaviour it was trained with
  loss.weights {latent_flow, latent_bc, decoder}

Variants: 'tiny' (tests: odd sizes, the 'tiny' LAM single-view) and 'sim' (the built-in benchmark: the 'sim' LaMP's
prefix encoder and Action Expert sizes, the 'sim' LAM single-view on the front camera, pairs (o_t, o_{t+H})).
"""

from __future__ import annotations

import ml_collections

from lamp_jax import specs
from lamp_jax.models import lam_config
from lamp_jax.models import lamp_config

NAME = "lafp"
VARIANTS = ("tiny", "sim")
OBJECTIVES = ("flow", "bc")
LOSS_SPACES = ("v", "x")
PAIRS_PAST_END = ("drop", "last_frame")
DEFAULT_PAIRS_PAST_END = "last_frame"
# What a config without the field means (configs written before it existed were trained so).
LEGACY_PAIRS_PAST_END = "drop"
# The policy fields a LAFP config copies from a LaMP / w/o-motion config (same prefix, same data).
_POLICY_FIELDS = ("dtype", "attention", "vlm", "image_keys", "image_size", "max_token_len", "action_horizon",
                  "action_dim", "proprio_dim", "use_proprio", "proprio_dropout")
# tau_i: the paper gives no value; 0.5 (the decoder sees latents halfway between the policy's sample and the LAM's
# latent) is our reading, a config value to sweep (1.0 = the decoder trains on LAM latents only).
DEFAULT_INTERPOLATION = 0.5


def single_view_lam(variant: str, horizon: int) -> ml_collections.ConfigDict:
  """A latent action model config of ``variant`` on the front camera alone, pairs (o_t, o_{t+horizon})."""
  lam = lam_config.model_config(variant)
  lam.views = (specs.IMAGE_PRIMARY,)
  lam.future_offsets = (int(horizon),)
  lam.loss.weights.cross_view = 0.0
  return lam


def from_policy(policy_cfg: ml_collections.ConfigDict, lam_cfg: ml_collections.ConfigDict, *,
                objective: str = "flow") -> ml_collections.ConfigDict:
  """The LAFP config whose prefix encoder, cameras, horizon and DiT sizes are those of ``policy_cfg`` (a LaMP model
  config; its motion parts are not used) and whose latent is ``lam_cfg``'s (at the policy's image size)."""
  if objective not in OBJECTIVES:
    raise ValueError(f"config field model.latent_policy.objective={objective!r}: one of {OBJECTIVES}")
  p = policy_cfg
  cfg = ml_collections.ConfigDict()
  cfg.name = NAME
  cfg.variant = str(p.get("variant", "custom"))
  for field in _POLICY_FIELDS:
    value = p[field]
    cfg[field] = ml_collections.ConfigDict(value.to_dict()) if isinstance(value, ml_collections.ConfigDict) else value
  cfg.vlm.dtype = cfg.get_ref("dtype")
  cfg.vlm.attention = cfg.get_ref("attention")
  cfg.image_size = cfg.vlm.get_ref("image_size")
  latent_policy = ml_collections.ConfigDict(p.action.to_dict())
  latent_policy.update(dict(objective=objective, loss_space="v", t_eps=0.05))
  cfg.latent_policy = latent_policy
  lam = ml_collections.ConfigDict(lam_cfg.to_dict())
  lam.image_size = int(cfg.image_size)
  lam.image_encoder.image_size = int(cfg.image_size)
  cfg.lam = lam
  cfg.latent = ml_collections.ConfigDict(dict(code_length=int(lam.vq.code_length), code_dim=int(lam.vq.code_dim)))
  width = int(p.action.width)
  cfg.decoder = ml_collections.ConfigDict(dict(width=width, depth=2, mlp_ratio=2, use_proprio=True,
                                               interpolation=DEFAULT_INTERPOLATION))
  cfg.num_inference_steps = 3
  cfg.pairs_past_end = DEFAULT_PAIRS_PAST_END
  flow = objective == "flow"
  cfg.loss = ml_collections.ConfigDict(dict(weights=ml_collections.ConfigDict(dict(
      latent_flow=1.0 if flow else 0.0, latent_bc=0.0 if flow else 1.0, decoder=1.0))))
  return cfg


def model_config(variant: str = "tiny", objective: str = "flow") -> ml_collections.ConfigDict:
  """The LAFP model section of a named variant (``VARIANTS``)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown LAFP variant {variant!r}; known: {VARIANTS}")
  policy = lamp_config.model_config(variant)
  policy.use_motion = False
  return from_policy(policy, single_view_lam(variant, int(policy.action_horizon)), objective=objective)


def check(cfg: ml_collections.ConfigDict, *, needs_lam: bool) -> None:
  """Rejects inconsistent fields, naming them. ``needs_lam``: the config trains (the LAM must be there and its
  latent must have the heads' sizes); an inference config (``without_lam``) has no LAM."""
  lp = cfg.latent_policy
  if lp.objective not in OBJECTIVES:
    raise ValueError(f"config field model.latent_policy.objective={lp.objective!r}: one of {OBJECTIVES}")
  if lp.loss_space not in LOSS_SPACES:
    raise ValueError(f"config field model.latent_policy.loss_space={lp.loss_space!r}: one of {LOSS_SPACES}")
  if not 0.0 < float(lp.t_eps) <= 1.0 / max(int(cfg.num_inference_steps), 1):
    raise ValueError(f"config field model.latent_policy.t_eps={lp.t_eps}: give 0 < t_eps <= 1 / "
                     f"model.num_inference_steps ({cfg.num_inference_steps}), so that the last Euler step lands on "
                     "the predicted latent")
  if int(cfg.num_inference_steps) < 1:
    raise ValueError(f"config field model.num_inference_steps={cfg.num_inference_steps} must be >= 1")
  if cfg.get("pairs_past_end", LEGACY_PAIRS_PAST_END) not in PAIRS_PAST_END:
    raise ValueError(f"config field model.pairs_past_end={cfg.pairs_past_end!r}: one of {PAIRS_PAST_END}")
  tau_i = float(cfg.decoder.interpolation)
  if not 0.0 <= tau_i <= 1.0:
    raise ValueError(f"config field model.decoder.interpolation={tau_i} (tau_i) must lie in [0, 1]")
  weights = {str(k): float(v) for k, v in cfg.loss.weights.items()}
  wrong = "latent_bc" if lp.objective == "flow" else "latent_flow"
  if weights.get(wrong, 0.0) > 0:
    raise ValueError(f"config field model.loss.weights.{wrong} > 0 with model.latent_policy.objective="
                     f"{lp.objective!r}: the latent policy has one objective")
  if not needs_lam:
    return
  if cfg.get("lam", None) is None or cfg.lam.get("name", None) != lam_config.NAME:
    raise ValueError("config field model.lam is not a latent action model config (name "
                     f"{lam_config.NAME!r}): LAFP trains on the latents of a frozen LAM")
  lam_config.check(cfg.lam)
  for field in ("code_length", "code_dim"):
    if int(cfg.latent[field]) != int(cfg.lam.vq[field]):
      raise ValueError(f"config field model.latent.{field}={cfg.latent[field]} differs from the latent action "
                       f"model's model.lam.vq.{field}={cfg.lam.vq[field]}: the latent policy and the action decoder "
                       "are sized for the LAM's pre-quantisation latent")
  if int(cfg.lam.image_size) != int(cfg.image_size):
    raise ValueError(f"config field model.lam.image_size={cfg.lam.image_size} differs from the policy's "
                     f"model.image_size={cfg.image_size}: one data pipeline feeds both at one image size")
