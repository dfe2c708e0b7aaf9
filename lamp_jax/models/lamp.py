"""LaMP: a PaliGemma VLM + Motion Expert + gated motion guidance + Action Expert (the ``'lamp'`` model library).

Data flow (shapes for one batch; letters as specs.py, P = VLM prefix length, N = motion tokens):

  images uint8[B, W, Hi, Wi, 3] per camera ─► current frame, [-1, 1], stacked cameras float32[B, C, Hi, Wi, 3]
  tokens int32[B, L] ─┐
                      ├─► vlm (PaliGemma prefix) ─► features float[B, P, Dv], feature_mask bool[B, P]
  noise float[B, K, T, 3] ─► motion_expert, ``partial_steps`` Euler steps 0 -> tau_infer, one more evaluation
                             at tau_infer ─► motion hidden float[B, N, Dm]       (2 expert calls by default)
  features, motion hidden ─► guidance ─► guided features float[B, P, Dv]
  noise float[B, H, A] ─► action_expert, Euler 0 -> 1 in ``num_inference_steps`` ─► actions float32[B, H, A]

Flow-matching time convention: flow_matching.py (tau = 0 noise, tau = 1 data). Motion target normalisation:
motion_expert.py. ``use_motion=False`` is the w/o-motion ablation: the guided features are the VLM features
(same code path, no motion expert / guidance parameters are used). Configs: lamp_config.py. FLOPs: flops.py.

Optional joint motion-image diffusion (``motion_image.enabled``; motion_image.py): a DiT head over the frozen VAE's
latents of the batch's optical-flow image, conditioned on the VLM prefix features (before guidance), trained by
the loss term 'motion_image'. ``sample_actions`` never runs it (the same computation with or without the head);
``reconstruct_motion_image`` decodes its prediction for visualisation.

LARA (``model.lara``, lara.py; training-only): loss terms 'align' (the Action Expert's hidden state at block
L - lara.block_from_end of its ``depth`` layers, last action token, predicts the latent action model's latent) and
'lam' (that model's own loss), parameters 'lam' and 'lara_predictor'.

Latent-action pretraining (``model.latent_pretraining``, latent_pretraining.py; training-only): loss term
'latent_codes' (a head on the VLM prefix predicts the frozen latent action model's codes of (o_t, o_{t+k})),
parameters 'lam' and 'latent_head'. Without the 'action' term the policy reads no action labels.

Parameter tree top level: 'vlm', 'motion_expert', 'guidance', 'action_expert' (nothing else); with the motion-image
head also 'motion_image' and 'vae'; with LARA also 'lam' and 'lara_predictor'; with latent-action pretraining also
'lam' and 'latent_head'; without motion (use_motion=False) no 'motion_expert' / 'guidance'.
"""

from __future__ import annotations

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.models import action_expert as action_lib
from lamp_jax.models import flops
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import guidance as guidance_lib
from lamp_jax.models import interface
from lamp_jax.models import layers
from lamp_jax.models import lamp_config
from lamp_jax.models import lara
from lamp_jax.models import latent_pretraining
from lamp_jax.models import losses
from lamp_jax.models import motion_expert as motion_lib
from lamp_jax.models import motion_image as motion_image_lib
from lamp_jax.models import observation
from lamp_jax.models import prefix_encoder

NAME = lamp_config.NAME
TOP_LEVEL = ("vlm", "motion_expert", "guidance", "action_expert")
LOSS_TERMS = ("motion", "action", motion_image_lib.LOSS_TERM)


# ------------------------------------------------------------------------------------------ the model
class LaMP(nn.Module):
  """The LaMP policy. All methods take the specs.py batch and an explicit PRNG key ``rng``.

  * ``compute_loss(batch, rng, *, train=True) -> (loss float32[], metrics)``
  * ``sample_actions(batch, rng, *, num_steps=None, motion_steps=None, gate_override=None, noise=None)
    -> float32[B, H, A]``
  * ``reconstruct_motion(batch, rng, *, num_steps=10) -> float32[B, K, T, 3]``
  * ``reconstruct_motion_image(batch, rng, *, num_steps=None, noise=None) -> float32[B, S, S, 3]`` (with the
    motion-image head)
  * ``__call__(batch, rng)``: runs every component once (used by ``init``).
  """

  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    # 'vlm': the prefix encoder of vlm.kind (PaliGemma by default; prefix_encoder.py).
    self.vlm = prefix_encoder.build(cfg.vlm, int(cfg.max_token_len), len(cfg.image_keys))
    attention = cfg.get("attention", "heads_major")
    layers.check_attention_implementation(attention, "config field model.attention")
    self.motion_expert = motion_lib.MotionExpert(cfg.motion, dtype=dtype, attention=attention)
    self.guidance = guidance_lib.GatedMotionGuidance(cfg.guidance, width=prefix_encoder.width(cfg.vlm), dtype=dtype,
                                                     attention=attention)
    self.action_expert = action_lib.build_action_expert(cfg.action, dtype, attention=attention)
    if _has_motion_image(cfg):
      self.vae, self.motion_image = motion_image_lib.build(cfg)
    if lara.enabled(cfg):
      self.lam, self.lara_predictor = lara.build(cfg)
    if latent_pretraining.enabled(cfg):
      self.lam, self.latent_head = latent_pretraining.build(cfg, prefix_encoder.width(cfg.vlm))

  # ---------------------------------------------------------------------------------------- inputs
  def _proprio(self, batch, dropout_rng=None):
    """Current normalised proprio float32[B, S] (``observation.current_proprio``: use_proprio, proprio_dropout)."""
    return observation.current_proprio(batch, self.config, dropout_rng)

  def encode(self, batch):
    """VLM prefix features: (float[B, P, Dv], bool[B, P])."""
    out = self.vlm(*observation.vlm_inputs(batch, self.config))
    return out["last_hidden"], out["prefix_mask"]

  # ---------------------------------------------------------------------------------------- motion
  def _motion_shape(self, batch_size):
    m = self.config.motion
    return (batch_size, m.num_keypoints, m.num_steps, 3)

  def motion_representation(self, features, feature_mask, rng, noise=None):
    """One-step partial denoising: ``partial_steps`` Euler steps 0 -> tau_infer from noise, then one more
    evaluation at tau_infer whose last-block hidden state float[B, N, Dm] is returned (partial_steps + 1
    expert calls, unrolled so that it is differentiable). ``noise`` float32[B, K, T, 3] replaces the draw from
    ``rng`` (parity tests against other implementations)."""
    cfg = self.config
    b = features.shape[0]
    x = (jax.random.normal(rng, self._motion_shape(b), jnp.float32) if noise is None
         else _given_noise(noise, self._motion_shape(b), "motion"))
    dt = cfg.tau_infer / cfg.partial_steps
    for i in range(cfg.partial_steps):
      velocity, _ = self.motion_expert(x, jnp.full((b,), i * dt, jnp.float32), features, feature_mask)
      x = fm.euler_step(x, velocity, dt)
    _, hidden = self.motion_expert(x, jnp.full((b,), cfg.tau_infer, jnp.float32), features, feature_mask)
    return hidden

  def _reconstruct(self, features, feature_mask, rng, num_steps):
    """Full Euler reconstruction 0 -> 1: (normalised deltas float32[B, K, T, 3], hidden of the last call)."""
    b = features.shape[0]
    x0 = jax.random.normal(rng, self._motion_shape(b), jnp.float32)
    hidden0 = jnp.zeros((b, motion_lib.num_motion_tokens(self.config.motion), self.config.motion.width),
                        jnp.dtype(self.config.dtype))

    def step(mdl, x, tau):
      return mdl.motion_expert(x, jnp.full((b,), tau), features, feature_mask)

    return fm.euler_integrate_module(self, step, x0, num_steps, hidden0)

  def guide(self, features, feature_mask, rng, *, motion_steps=None, gate_override=None, motion_noise=None):
    """Guided features float[B, P, Dv] and the gate (float32[]); identity when ``use_motion`` is False.

    motion_steps=None: one-step partial denoising (``motion_noise`` replaces its random start); an int n:
    hidden state of an n-step full reconstruction.
    """
    if not self.config.use_motion:
      return features, jnp.zeros((), jnp.float32)
    if motion_steps is None:
      hidden = self.motion_representation(features, feature_mask, rng, noise=motion_noise)
    elif motion_noise is not None:
      raise ValueError("noise['motion'] is the start of the one-step partial denoising; it cannot be given with "
                       "motion_steps (a full reconstruction)")
    else:
      _, hidden = self._reconstruct(features, feature_mask, rng, motion_steps)
    return self.guidance(features, hidden, gate_override)

  # ---------------------------------------------------------------------------------------- public methods
  def __call__(self, batch, rng):
    """Runs every component once (creates all parameters in ``init``). Returns the action velocity."""
    features, mask = self.encode(batch)
    b = features.shape[0]
    guided = features
    if self.config.use_motion:
      _, hidden = self.motion_expert(jnp.zeros(self._motion_shape(b)), jnp.zeros((b,)), features, mask)
      guided, _ = self.guidance(features, hidden)
    actions = jnp.zeros((b, self.config.action_horizon, self.config.action_dim))
    if _has_motion_image(self.config):
      motion_image_lib.init_touch(self.config, self.vae, self.motion_image, batch, features, mask)
    velocity = self.action_expert(actions, jnp.zeros((b,)), self._proprio(batch), guided, mask)
    if lara.enabled(self.config):
      velocity = velocity + 0.0 * lara.init_touch(self.config, self.lam, self.lara_predictor, batch, rng,
                                                  int(self.config.action.width))
    if latent_pretraining.enabled(self.config):
      velocity = velocity + 0.0 * latent_pretraining.init_touch(self.config, self.latent_head, self.lam, batch, rng,
                                                                features, mask)
    return velocity

  def compute_loss(self, batch, rng, *, train: bool = True, gate_override=None):
    """Weighted flow-matching losses of the named terms (``losses.py``; weights ``loss.weights``).

    Terms: 'motion' (scene-flow deltas; needs the scene_flow keys and use_motion), 'action' (the action chunk,
    through guidance when use_motion) and 'motion_image' (the VAE latents of the optical-flow image, by the
    motion-image head from the VLM features; needs motion_image.enabled and the optical_flow keys; examples with
    has_optical_flow False weigh 0); with options also LARA's 'align' / 'lam' and latent-action pretraining's
    'latent_codes' (latent_pretraining.py). ``train`` enables ``proprio_dropout`` (the only stochastic regulariser;
    ``train=False`` gives the deterministic loss of evaluation).
    Returns (loss float32[], metrics dict of float32[]: 'loss', 'loss/motion', 'loss/action', 'loss/motion_image',
    'guidance/gate').
    With ``loss.{motion,action}_repeats`` = R, each term averages R (tau, eps) draws per example: the expert sees
    its inputs tiled R times along the batch (copy r of example i at r * B + i).
    """
    cfg = self.config
    terms = latent_pretraining.loss_terms(cfg, lara.loss_terms(cfg, LOSS_TERMS))
    weights = losses.active_weights(cfg.loss.weights, terms, NAME)
    r_motion, r_action = int(cfg.loss.get("motion_repeats", 1)), int(cfg.loss.get("action_repeats", 1))
    if r_motion < 1 or r_action < 1:
      raise ValueError(f"config loss.motion_repeats / loss.action_repeats must be >= 1, got {r_motion}, {r_action}")
    if "motion" in weights and not cfg.use_motion:
      raise ValueError("config field model.loss.weights.motion > 0 but use_motion=False (the w/o-motion ablation "
                       "has no motion loss)")
    motion_image_lib.check_weights(cfg, weights)
    features, mask = self.encode(batch)
    rng_motion, rng_action, rng_guide = jax.random.split(rng, 3)
    rng_proprio = jax.random.fold_in(rng, 4)  # a separate stream: the other draws stay those of earlier versions
    values = {}

    if "motion" in weights:
      _require(batch, (specs.SCENE_FLOW, specs.SCENE_FLOW_QUERY, specs.SCENE_FLOW_MASK, specs.SCENE_FLOW_QUERY_MASK,
                       specs.HAS_SCENE_FLOW), "motion")
      target = motion_lib.tracks_to_target(batch[specs.SCENE_FLOW_QUERY], batch[specs.SCENE_FLOW],
                                           cfg.motion.delta_scale)
      valid = motion_lib.target_mask(batch[specs.SCENE_FLOW_QUERY_MASK].astype(bool),
                                     batch[specs.SCENE_FLOW_MASK].astype(bool),
                                     batch[specs.HAS_SCENE_FLOW].astype(bool))
      # Masked deltas enter the expert as zeros, so unlabelled values cannot influence the loss.
      target = jnp.where(valid[..., None], target, 0.0)
      target, valid, cond, cond_mask = (_tile(x, r_motion) for x in (target, valid, features, mask))
      delta_weights = motion_lib.loss_weights(target, valid, float(cfg.motion.get("moving_weight", 1.0)),
                                              float(cfg.motion.get("moving_threshold", 0.1)))
      values["motion"] = fm.flow_matching_loss(
          rng_motion, target, lambda x, tau: self.motion_expert(x, tau, cond, cond_mask)[0],
          time_dist=cfg.motion.time_dist, mask=delta_weights[..., None])

    gate = self.guidance.gate() if cfg.use_motion else jnp.zeros((), jnp.float32)
    captured = {}  # LARA: the Action Expert's hidden state of the action loss's forward pass
    if "action" in weights:
      _require(batch, (specs.ACTION, specs.ACTION_PAD_MASK), "action")
      actions = batch[specs.ACTION].astype(jnp.float32)
      expected = (features.shape[0], cfg.action_horizon, cfg.action_dim)
      if actions.shape != expected:
        raise ValueError(f"batch['action'] has shape {actions.shape}; config expects {expected} "
                         "(action_horizon, action_dim)")
      pad_mask = batch[specs.ACTION_PAD_MASK].astype(bool)
      # Padded action dimensions (False at every step) enter the expert as zeros, so their values cannot
      # influence the loss; time padding (repeated last action) stays in the input and is only unweighted.
      actions = jnp.where(jnp.any(pad_mask, axis=1, keepdims=True), actions, 0.0)
      guided, gate = self.guide(features, mask, rng_guide, gate_override=gate_override)
      actions, pad_mask, proprio, guided, guided_mask = (
          _tile(x, r_action) for x in (actions, pad_mask, self._proprio(batch, rng_proprio if train else None),
                                       guided, mask))
      align_after = (lara.hidden_after(cfg, int(cfg.action.depth)) if "align" in weights else None)

      def velocity(x, tau):
        if align_after is None:
          return self.action_expert(x, tau, proprio, guided, guided_mask)
        v, hidden = self.action_expert(x, tau, proprio, guided, guided_mask, hidden_after=align_after)
        captured["hidden"] = hidden[:, -1]  # the last action token
        return v

      values["action"] = fm.flow_matching_loss(rng_action, actions, velocity, time_dist=cfg.action.time_dist,
                                               mask=pad_mask)

    if motion_image_lib.LOSS_TERM in weights:
      # Its own stream (fold_in): the other terms' draws do not depend on the head.
      values[motion_image_lib.LOSS_TERM] = motion_image_lib.loss_value(cfg, self.vae, self.motion_image, batch,
                                                                       features, mask, rng)

    extra = {}
    if lara.enabled(cfg):
      lara_values, extra = lara.loss_values(cfg, self.lam, self.lara_predictor, batch, rng, captured.get("hidden"),
                                            weights)
      values.update(lara_values)
    if latent_pretraining.enabled(cfg):
      latent_values, latent_metrics = latent_pretraining.loss_values(cfg, self.latent_head, self.lam, batch,
                                                                     rng, features, mask, weights)
      values.update(latent_values)
      extra.update(latent_metrics)
    total, metrics = losses.weighted_total(values, weights, terms)
    metrics["guidance/gate"] = gate
    metrics.update(extra)
    return total, metrics

  def sample_actions(self, batch, rng, *, num_steps: int | None = None, motion_steps: int | None = None,
                     gate_override=None, noise=None):
    """Normalised action chunk float32[B, H, A]: VLM prefix once, motion partial denoising (or, with
    ``motion_steps``, an n-step full reconstruction for cost comparison), guidance, Euler integration of the
    Action Expert over ``num_steps`` (default config num_inference_steps). Jit the caller's
    ``model.apply(..., method='sample_actions')``: one XLA computation, no Python-side state.

    ``noise``: optional {'motion': float32[B, K, T, 3], 'action': float32[B, H, A]} replacing the random draws
    (the motion entry only when use_motion; parity tests of exported models feed both sides the same noise).
    """
    cfg = self.config
    num_steps = cfg.num_inference_steps if num_steps is None else num_steps
    noise = dict(noise or {})
    unknown = set(noise) - ({"motion", "action"} if cfg.use_motion else {"action"})
    if unknown:
      raise ValueError(f"sample_actions noise has unexpected entries {sorted(unknown)}; expected 'action'"
                       + (" and 'motion'" if cfg.use_motion else " (use_motion=False has no motion noise)"))
    features, mask = self.encode(batch)
    rng_motion, rng_action = jax.random.split(rng)
    guided, _ = self.guide(features, mask, rng_motion, motion_steps=motion_steps, gate_override=gate_override,
                           motion_noise=noise.get("motion"))
    proprio = self._proprio(batch)
    b = features.shape[0]
    action_shape = (b, cfg.action_horizon, cfg.action_dim)
    x0 = (jax.random.normal(rng_action, action_shape, jnp.float32) if noise.get("action") is None
          else _given_noise(noise["action"], action_shape, "action"))

    # The guided features are fixed during integration: project the cross-attention keys / values once.
    context_kv = self.action_expert.context_kv(guided) if cfg.action.get("cache_context_kv", True) else None

    def step(mdl, x, tau):
      return mdl.action_expert(x, jnp.full((b,), tau), proprio, guided, mask, context_kv=context_kv), ()

    actions, _ = fm.euler_integrate_module(self, step, x0, num_steps, ())
    return actions

  def reconstruct_motion(self, batch, rng, *, num_steps: int = 10):
    """UVD tracks float32[B, K, T, 3] from a full ``num_steps`` Euler reconstruction of the motion deltas.

    Tracks start at batch['scene_flow_query'] when present; otherwise at the specs.py query grid (u, v) with
    depth 0 (the depth channel is then relative to the query depth).
    """
    if not self.config.use_motion:
      raise ValueError("reconstruct_motion needs use_motion=True")
    features, mask = self.encode(batch)
    deltas, _ = self._reconstruct(features, mask, rng, num_steps)
    b = features.shape[0]
    if specs.SCENE_FLOW_QUERY in batch:
      query = batch[specs.SCENE_FLOW_QUERY].astype(jnp.float32)
    else:
      uv = jnp.asarray(specs.grid_query_uv(self.config.motion.num_keypoints))
      query = jnp.broadcast_to(jnp.concatenate([uv, jnp.zeros_like(uv[:, :1])], -1)[None], (b,) + (uv.shape[0], 3))
    return motion_lib.target_to_tracks(query, deltas, self.config.motion.delta_scale)

  def reconstruct_motion_image(self, batch, rng, *, num_steps: int | None = None, noise=None):
    """The motion-image head's predicted flow image float32[B, S, S, 3] (about [-1, 1]; ``vae.images_to_uint8``
    for a PNG, ``flow_image.rgb_to_flow`` for pixels): ``num_steps`` Euler steps (default
    motion_image.reconstruction_steps) of the head from noise (``noise`` float32[B, h, w, L] replaces the draw),
    decoded by the frozen VAE. For visualisation; ``sample_actions`` never runs the head."""
    cfg = self.config
    if not _has_motion_image(cfg):
      raise ValueError("reconstruct_motion_image needs model.motion_image.enabled=True")
    features, mask = self.encode(batch)
    return motion_image_lib.reconstruct_images(cfg, self, lambda mdl: mdl.motion_image, self.vae, features, mask,
                                               rng, num_steps=num_steps, noise=noise)


_has_motion_image = motion_image_lib.enabled


def _given_noise(noise, shape: tuple[int, ...], name: str) -> jax.Array:
  """Injected noise as float32 of the expected ``shape``; another shape raises naming ``noise[name]``."""
  noise = jnp.asarray(noise, jnp.float32)
  if tuple(noise.shape) != tuple(shape):
    raise ValueError(f"sample_actions noise[{name!r}] has shape {tuple(noise.shape)}; expected {tuple(shape)}")
  return noise


# ------------------------------------------------------------------------------------------ helpers
def dummy_batch(model_cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0, *,
                window: int = 1) -> dict:
  """A random numpy batch following specs.py (with tokens, without the raw language_instruction)."""
  rs = np.random.RandomState(seed)
  b = batch_size
  inputs = observation.dummy_inputs(model_cfg, b, rs, prefix_encoder.vocab_size(model_cfg.vlm),
                                    window=window)
  m = model_cfg.motion
  k, t = m.num_keypoints, m.num_steps
  uv = specs.grid_query_uv(k)
  query = np.concatenate([np.broadcast_to(uv, (b, k, 2)), rs.uniform(0.5, 1.5, (b, k, 1))], -1).astype(np.float32)
  steps = rs.uniform(-0.8, 0.8, (b, k, t, 3)) * np.asarray(m.delta_scale)
  flow = (query[:, :, None] + np.cumsum(steps, axis=2)).astype(np.float32)
  return motion_image_lib.add_dummy_flow(model_cfg, {
      **inputs,
      specs.ACTION: rs.uniform(-1, 1, (b, model_cfg.action_horizon, model_cfg.action_dim)).astype(np.float32),
      specs.ACTION_PAD_MASK: np.ones((b, model_cfg.action_horizon, model_cfg.action_dim), bool),
      specs.SCENE_FLOW: flow,
      specs.SCENE_FLOW_QUERY: query,
      specs.SCENE_FLOW_MASK: rs.rand(b, k, t) > 0.1,
      specs.SCENE_FLOW_QUERY_MASK: rs.rand(b, k) > 0.05,
      specs.HAS_SCENE_FLOW: np.ones((b,), bool),
  }, b, seed)


def _require(batch: dict, keys, term: str) -> None:
  for key in keys:
    if key not in batch:
      raise ValueError(f"config field model.loss.weights.{term} > 0 but the batch has no {key!r}")


def _tile(x: jax.Array, repeats: int) -> jax.Array:
  """x[B, ...] -> x[R * B, ...], copy r of example i at r * B + i (identity for R = 1)."""
  return x if repeats == 1 else jnp.tile(x, (repeats,) + (1,) * (x.ndim - 1))


# ------------------------------------------------------------------------------------------ the library
class LaMPLibrary(interface.ModelLibrary):
  """The 'lamp' model library (``interface.ModelLibrary``)."""

  name = NAME
  variants = lamp_config.VARIANTS
  methods = frozenset({"sample_actions", "reconstruct_motion", "reconstruct_motion_image"})
  flop_modes = ("train_step", "sample_actions", "sample_actions_full_motion", "motion_partial", "motion_full",
                "motion_image_call", "reconstruct_motion_image")

  bench_ratios = {"with_over_without_motion": ("with_motion", "without_motion"),
                  "sample_actions_one_step_over_full": ("with_motion", "full_motion"),
                  "with_over_without_motion_image_head": ("with_motion_image_head", "without_motion_image_head")}

  def model_config(self, variant: str = "tiny") -> ml_collections.ConfigDict:
    return lamp_config.model_config(variant)

  def bench_variants(self, cfg: ml_collections.ConfigDict) -> dict[str, interface.BenchVariant]:
    """With motion (one-step partial denoising), without motion (the ablation: use_motion=False) and with the
    full ``motion_reconstruction_steps`` reconstruction of the motion instead. A config with the motion-image head
    (motion_image.enabled) is timed with and without the head instead (its use_motion as configured): the claim
    that the head adds no inference latency."""
    if _has_motion_image(cfg):
      return {"with_motion_image_head": interface.BenchVariant(cfg),
              "without_motion_image_head": interface.BenchVariant(motion_image_lib.without_head(cfg))}
    with_motion, without_motion = copy.deepcopy(cfg), copy.deepcopy(cfg)
    with_motion.use_motion, without_motion.use_motion = True, False
    full = (("motion_steps", int(cfg.motion_reconstruction_steps)),)
    return {"with_motion": interface.BenchVariant(with_motion),
            "without_motion": interface.BenchVariant(without_motion),
            "full_motion": interface.BenchVariant(with_motion, full, "sample_actions_full_motion")}

  def reference_config(self, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Motion Expert's pruned last block, cached action cross-attention keys / values, unrolled scans and the
    heads-major attention (``layers.ATTENTION_IMPLEMENTATIONS``: 'plain' instead) off."""
    ref = copy.deepcopy(cfg)
    ref.attention = "plain"  # the VLM follows (vlm.attention refers to it)
    ref.motion.prune_last_condition = False
    ref.action.cache_context_kv = False
    ref.motion.scan_unroll = ref.action.scan_unroll = 1
    return ref

  def build(self, cfg: ml_collections.ConfigDict) -> LaMP:
    motion_image_lib.check(cfg)
    return LaMP(cfg)

  def inference_config(self, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Without the training-only parts ``sample_actions`` never runs: the motion-image head (its parameters and
    the VAE's are dropped), LARA's alignment (the LAM and the predictor) and latent-action pretraining (the LAM
    and the code head)."""
    return latent_pretraining.without(motion_image_lib.without(lara.without(cfg)))

  def frame_codes(self, cfg: ml_collections.ConfigDict, params) -> interface.FrameCodes | None:
    """With latent-action pretraining reading cached codes, in a stage that weighs 'latent_codes': the frozen LAM
    as the encoder of the datasets' code caches (latent_pretraining.frame_codes); else None."""
    return latent_pretraining.frame_codes(cfg, params)

  def dummy_batch(self, cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict:
    batch = lara.add_dummy_future(cfg, dummy_batch(cfg, batch_size, seed), seed)
    return latent_pretraining.add_dummy_future(cfg, batch, seed)

  def data_requirements(self, cfg: ml_collections.ConfigDict) -> specs.DataRequirements:
    motion = cfg.motion
    return latent_pretraining.data_requirements(cfg, lara.data_requirements(cfg, specs.DataRequirements(
        cameras=tuple(cfg.image_keys), image_size=int(cfg.image_size), window=1,
        action_horizon=int(cfg.action_horizon), action_dim=int(cfg.action_dim), proprio_dim=int(cfg.proprio_dim),
        scene_flow=(int(motion.num_keypoints), int(motion.num_steps)) if cfg.use_motion else None,
        optical_flow=_has_motion_image(cfg),
        text_tokens=int(cfg.max_token_len), vocab_size=int(prefix_encoder.vocab_size(cfg.vlm)))))

  def analytic_flops(self, cfg: ml_collections.ConfigDict, batch_size: int, mode: str) -> float:
    """Modes: 'sample_actions' (VLM + partial_steps + 1 motion calls + guidance + num_inference_steps action
    calls; without motion calls / guidance when use_motion=False), 'sample_actions_full_motion'
    (motion_reconstruction_steps motion calls instead), 'motion_partial' / 'motion_full' (the motion calls alone),
    'train_step' (3 x forward of compute_loss, every term of non-zero weight; frozen parts counted as trainable,
    i.e. an upper bound for stage 2). Counts what the configured model computes: the motion expert's pruned last
    block (motion.prune_last_condition) and, when sampling, the action cross-attention keys / values projected
    once (action.cache_context_kv)."""
    prefix = lamp_config.prefix_length(cfg)
    width = prefix_encoder.width(cfg.vlm)
    vlm = flops.prefix_encoder_call(cfg.vlm, len(cfg.image_keys), int(cfg.max_token_len))
    motion_call = flops.motion_expert_call(cfg.motion, prefix, width)
    guidance = flops.gated_guidance(cfg.motion, prefix, width)
    action_call = flops.dit_action_call(cfg.action, cfg.action_horizon, cfg.action_dim, cfg.proprio_dim, prefix,
                                        width)
    steps = int(cfg.num_inference_steps)
    partial_calls, full_calls = int(cfg.partial_steps) + 1, int(cfg.motion_reconstruction_steps)
    # Sampling with action.cache_context_kv projects the cross-attention keys / values once, not every step.
    kv = flops.dit_context_kv(cfg.action, prefix, width) if cfg.action.get("cache_context_kv", True) else 0.0
    actions = vlm + steps * action_call - (steps - 1) * kv
    use_motion = bool(cfg.use_motion)
    if mode == "sample_actions":
      total = actions + (partial_calls * motion_call + guidance if use_motion else 0.0)
    elif mode == "sample_actions_full_motion":
      total = actions + full_calls * motion_call + guidance
    elif mode == "motion_partial":
      total = partial_calls * motion_call
    elif mode == "motion_full":
      total = full_calls * motion_call
    elif mode in ("motion_image_call", "reconstruct_motion_image"):
      if not _has_motion_image(cfg):
        raise ValueError(f"analytic_flops mode {mode!r} needs model.motion_image.enabled=True")
      head_call = flops.motion_image_call(cfg.motion_image, cfg.vae, int(cfg.image_size), prefix, width)
      total = (head_call if mode == "motion_image_call"
               else flops.motion_image_reconstruction(cfg, vlm, prefix, width))
    elif mode == "train_step":
      weights = self.loss_weights(cfg)
      forward = vlm
      if weights.get("motion", 0.0) > 0:
        forward += int(cfg.loss.get("motion_repeats", 1)) * motion_call
      if weights.get("action", 0.0) > 0:
        forward += int(cfg.loss.get("action_repeats", 1)) * action_call
        if use_motion:
          forward += partial_calls * motion_call + guidance
      total = (3 * forward + flops.motion_image_train(cfg, weights, prefix, width)
               + lara.train_flops(cfg, 1, weights, int(cfg.action.width))
               + latent_pretraining.train_flops(cfg, 1, weights, prefix, width))
    else:
      raise ValueError(f"unknown analytic_flops mode {mode!r} of 'lamp' (modes: {self.flop_modes})")
    return float(batch_size * total)


LIBRARY = LaMPLibrary()
