"""π0: a PaliGemma VLM + a Gemma action expert that shares its attention (the ``'pi0'`` model library).

Data flow (shapes for one batch; letters as specs.py, P = VLM prefix length, L = layers):

  images uint8[B, W, Hi, Wi, 3] per camera, tokens int32[B, Lt] ─► observation.vlm_inputs (as LaMP reads them)
      ─► vlm (PaliGemma over the prefix, ONE pass) ─► per-layer keys / values float[L, B, P, K, Hd], bool[B, P]
  noise float32[B, H, A] ─► action_expert (pi0_expert.py: [state; H action tokens] attending at every layer to
      the prefix keys / values), Euler 0 -> 1 in ``num_inference_steps`` ─► actions float32[B, H, A]

The prefix never attends to the suffix, so the VLM pass over the prefix alone gives exactly the keys / values
that π0's joint [prefix; suffix] pass computes (pi0_expert.py); ``sample_actions`` runs it once and every Euler
step reuses it, and ``compute_loss`` uses the same split. Time convention: flow_matching.py (tau = 0 noise,
tau = 1 data); openpi's t = 1 - tau (pi0_expert.py says what the expert's time embedding is fed). Configs:
pi0_config.py. FLOPs: flops.py.

LARA (``model.lara``, lara.py; training-only): loss terms 'align' (the expert's hidden state after layer
L - lara.block_from_end, last action token, predicts the latent action model's latent) and 'lam' (that model's own
loss), parameters 'lam' and 'lara_predictor'.

Joint motion-image diffusion (``model.motion_image.enabled``; motion_image.py, the paper's setting: the head on a
π0-style policy): a DiT head over the frozen VAE's latents of the batch's optical-flow image, conditioned on the
VLM's last hidden states over the prefix (``encode``: float[B, P, D] after the final norm, the same VLM pass whose
keys / values the expert reads), trained by the loss term 'motion_image' (its draws from their own stream, so the
action term is unchanged by the head). ``sample_actions`` never runs it (the same computation with or without the
head; ``inference_config`` and the export drop it and the VAE); ``reconstruct_motion_image`` decodes its
prediction for visualisation. The VLM's final norm feeds only the heads (the expert reads keys / values).
``pi0_config.with_motion_image`` adds the sections.

Latent-action pretraining (``model.latent_pretraining``, latent_pretraining.py; training-only, as on LaMP): loss
term 'latent_codes' (a code head of L_z learned queries cross-attending to the VLM's last hidden states over the
prefix, ``encode``: the same pass whose keys / values the expert reads, predicts the frozen latent action model's
codes of (o_t, o_{t+k})), parameters 'lam' and 'latent_head'. Its 'latent' stage (action weight 0) runs the VLM
and the head only, on batches without action labels; ``sample_actions`` never runs it (``inference_config`` and
the export drop it). ``latent_pretraining.add`` adds the sections; it excludes LARA (both own ``model.lam``).

Parameter tree top level: 'vlm' (PaliGemma: 'img', 'llm'), 'action_expert' (+ 'lam', 'lara_predictor' with LARA;
+ 'motion_image', 'vae' with the motion-image head; + 'lam', 'latent_head' with latent-action pretraining; nothing
else).
"""

from __future__ import annotations

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.models import flops
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import interface
from lamp_jax.models import lara
from lamp_jax.models import latent_pretraining
from lamp_jax.models import losses
from lamp_jax.models import motion_image as motion_image_lib
from lamp_jax.models import observation
from lamp_jax.models import paligemma
from lamp_jax.models import pi0_config
from lamp_jax.models import pi0_expert

NAME = pi0_config.NAME
TOP_LEVEL = ("vlm", "action_expert")
LOSS_TERMS = ("action",)


def vlm_and_expert_configs(cfg: ml_collections.ConfigDict):
  """(PaliGemmaConfig, the expert's GemmaConfig) of a model config, checked against each other."""
  vlm = paligemma.config_from_dict(cfg.vlm)
  expert = pi0_expert.gemma_config(cfg.action, str(cfg.dtype))
  pi0_expert.check_matches_vlm(expert, vlm.llm)
  return vlm, expert


class Pi0(nn.Module):
  """The π0 policy. All methods take the specs.py batch and an explicit PRNG key ``rng``.

  * ``compute_loss(batch, rng, *, train=True) -> (loss float32[], metrics)``
  * ``sample_actions(batch, rng, *, num_steps=None, noise=None) -> float32[B, H, A]``
  * ``prefix(batch) -> (prefix_kv, prefix_mask bool[B, P])``: the VLM pass (keys / values each float[L, B, P, K, Hd])
  * ``encode(batch) -> (features float[B, P, D], prefix_mask bool[B, P])``: the VLM's last hidden states (the
    motion-image head's condition)
  * ``reconstruct_motion_image(batch, rng, *, num_steps=None, noise=None) -> float32[B, S, S, 3]`` (with the
    motion-image head)
  * ``__call__(batch, rng)``: runs every component once (used by ``init``).
  """

  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    vlm_config, _ = vlm_and_expert_configs(cfg)
    self.vlm = paligemma.PaliGemma(vlm_config)
    self.action_expert = pi0_expert.Pi0ActionExpert(cfg.action, int(cfg.action_dim), dtype=jnp.dtype(cfg.dtype))
    if lara.enabled(cfg):
      self.lam, self.lara_predictor = lara.build(cfg)
    if motion_image_lib.enabled(cfg):
      self.vae, self.motion_image = motion_image_lib.build(cfg)
    if latent_pretraining.enabled(cfg):
      self.lam, self.latent_head = latent_pretraining.build(cfg, vlm_config.llm.width)

  def _vlm_pass(self, batch):
    """The VLM over the prefix (images + prompt) alone: PaliGemma's outputs with 'kv_cache'."""
    return self.vlm(*observation.vlm_inputs(batch, self.config), return_kv_cache=True)

  def prefix(self, batch):
    """The VLM over the prefix (images + prompt) alone: (per-layer (keys, values), prefix_mask bool[B, P])."""
    out = self._vlm_pass(batch)
    return out["kv_cache"], out["prefix_mask"]

  def encode(self, batch):
    """The VLM's last hidden states over the prefix: (float[B, P, D] after the final norm, bool[B, P])."""
    out = self._vlm_pass(batch)
    return out["last_hidden"], out["prefix_mask"]

  def __call__(self, batch, rng):
    """Runs the VLM and the expert once (creates all parameters in ``init``). Returns the action velocity."""
    out = self._vlm_pass(batch)
    prefix_kv, prefix_mask = out["kv_cache"], out["prefix_mask"]
    if motion_image_lib.enabled(self.config):
      motion_image_lib.init_touch(self.config, self.vae, self.motion_image, batch, out["last_hidden"], prefix_mask)
    b = prefix_mask.shape[0]
    actions = jnp.zeros((b, self.config.action_horizon, self.config.action_dim), jnp.float32)
    velocity = self.action_expert(actions, jnp.zeros((b,)), observation.current_proprio(batch, self.config),
                                  prefix_kv, prefix_mask)
    if lara.enabled(self.config):
      _, expert = vlm_and_expert_configs(self.config)
      velocity = velocity + 0.0 * lara.init_touch(self.config, self.lam, self.lara_predictor, batch, rng,
                                                  expert.width)
    if latent_pretraining.enabled(self.config):
      velocity = velocity + 0.0 * latent_pretraining.init_touch(self.config, self.latent_head, self.lam, batch,
                                                                rng, out["last_hidden"], prefix_mask)
    return velocity

  def compute_loss(self, batch, rng, *, train: bool = True):
    """Flow-matching loss of the action chunk (term 'action', ``fm.flow_matching_loss`` with ``action.time_dist``).

    Padded action dimensions (``action_pad_mask`` False at every step) enter the expert as zeros and are
    unweighted; time padding stays in the input and is only unweighted (as LaMP). ``train`` enables
    ``proprio_dropout``. With ``loss.action_repeats`` = R the expert sees its inputs tiled R times along the
    batch (copy r of example i at r * B + i), all reading one VLM pass.
    With LARA (lara.py) the terms 'align' (reads this forward pass's hidden state) and 'lam' join. With the
    motion-image head the term 'motion_image' (motion_image.py; the VLM's last hidden states of the same pass, its
    own random stream; needs the optical_flow keys) joins; it alone (action weight 0: the warm-up stage) runs the
    VLM and the head, not the expert. With latent-action pretraining the term 'latent_codes'
    (latent_pretraining.py; the code head on the same last hidden states, the frozen LAM's codes from its own
    stream) joins; without the action term (the 'latent' stage) the batch needs no action keys.
    Returns (loss float32[], metrics dict of float32[]: 'loss', 'loss/<term>' of every declared term, and with
    LARA 'lara/cosine', 'lara/valid_pairs', the latent action model's 'lam/...'; with latent-action pretraining
    'latent/code_accuracy', 'latent/valid_pairs').
    """
    cfg = self.config
    terms = latent_pretraining.loss_terms(cfg, lara.loss_terms(cfg, motion_image_lib.loss_terms(cfg, LOSS_TERMS)))
    weights = losses.active_weights(cfg.loss.weights, terms, NAME)
    motion_image_lib.check_weights(cfg, weights)
    if "action" not in weights:
      if "align" in weights:
        raise ValueError("config field model.loss.weights.align > 0 needs model.loss.weights.action > 0: the "
                         "alignment reads the action expert's forward pass of the action loss")
      values, extra = {}, {}
      if motion_image_lib.LOSS_TERM in weights or latent_pretraining.LOSS_TERM in weights:
        features, feature_mask = self.encode(batch)  # one VLM pass for both heads
      if motion_image_lib.LOSS_TERM in weights:
        values[motion_image_lib.LOSS_TERM] = motion_image_lib.loss_value(cfg, self.vae, self.motion_image, batch,
                                                                         features, feature_mask, rng)
      if lara.enabled(cfg):
        lara_values, extra = lara.loss_values(cfg, self.lam, self.lara_predictor, batch, rng, None, weights)
        values.update(lara_values)
      if latent_pretraining.LOSS_TERM in weights:
        latent_values, latent_metrics = latent_pretraining.loss_values(cfg, self.latent_head, self.lam, batch,
                                                                       rng, features, feature_mask, weights)
        values.update(latent_values)
        extra.update(latent_metrics)
      total, metrics = losses.weighted_total(values, weights, terms)
      metrics.update(extra)
      return total, metrics
    repeats = int(cfg.loss.get("action_repeats", 1))
    if repeats < 1:
      raise ValueError(f"config field model.loss.action_repeats must be >= 1, got {repeats}")
    for key in (specs.ACTION, specs.ACTION_PAD_MASK):
      if key not in batch:
        raise ValueError(f"config field model.loss.weights.action > 0 but the batch has no {key!r}")
    vlm_out = self._vlm_pass(batch)
    prefix_kv, prefix_mask = vlm_out["kv_cache"], vlm_out["prefix_mask"]
    actions = batch[specs.ACTION].astype(jnp.float32)
    expected = (prefix_mask.shape[0], cfg.action_horizon, cfg.action_dim)
    if actions.shape != expected:
      raise ValueError(f"batch['action'] has shape {actions.shape}; config expects {expected} "
                       "(action_horizon, action_dim)")
    pad_mask = batch[specs.ACTION_PAD_MASK].astype(bool)
    actions = jnp.where(jnp.any(pad_mask, axis=1, keepdims=True), actions, 0.0)
    rng_action, rng_proprio = jax.random.split(rng)
    proprio = observation.current_proprio(batch, cfg, rng_proprio if train else None)
    actions, pad_mask, proprio, prefix_mask = (_tile(x, repeats) for x in (actions, pad_mask, proprio, prefix_mask))
    prefix_kv = jax.tree.map(lambda x: _tile(x, repeats, axis=1), prefix_kv)
    captured = {}  # LARA: the expert's hidden state of this forward pass
    align_after = None
    if "align" in weights:
      align_after = lara.hidden_after(cfg, vlm_and_expert_configs(cfg)[1].depth)

    def velocity(x, tau):
      if align_after is None:
        return self.action_expert(x, tau, proprio, prefix_kv, prefix_mask)
      v, hidden = self.action_expert(x, tau, proprio, prefix_kv, prefix_mask, hidden_after=align_after)
      captured["hidden"] = hidden[:, -1]  # the last action token
      return v

    values = {"action": fm.flow_matching_loss(rng_action, actions, velocity, time_dist=cfg.action.time_dist,
                                              mask=pad_mask)}
    if motion_image_lib.LOSS_TERM in weights:  # the VLM pass of the action term, before tiling
      values[motion_image_lib.LOSS_TERM] = motion_image_lib.loss_value(
          cfg, self.vae, self.motion_image, batch, vlm_out["last_hidden"], vlm_out["prefix_mask"], rng)
    extra = {}
    if lara.enabled(cfg):
      lara_values, extra = lara.loss_values(cfg, self.lam, self.lara_predictor, batch, rng, captured.get("hidden"),
                                            weights)
      values.update(lara_values)
    if latent_pretraining.enabled(cfg):  # the VLM pass of the action term, before tiling
      latent_values, latent_metrics = latent_pretraining.loss_values(
          cfg, self.latent_head, self.lam, batch, rng, vlm_out["last_hidden"], vlm_out["prefix_mask"], weights)
      values.update(latent_values)
      extra.update(latent_metrics)
    total, metrics = losses.weighted_total(values, weights, terms)
    metrics.update(extra)
    return total, metrics

  def sample_actions(self, batch, rng, *, num_steps: int | None = None, noise: dict | None = None):
    """Normalised action chunk float32[B, H, A]: the VLM prefix pass once, then ``num_steps`` Euler steps (default
    config num_inference_steps) of the expert from tau = 0 (noise) to 1, each reusing the prefix keys / values.

    ``noise``: optional {'action': float32[B, H, A]}, the initial noise (else drawn from ``rng``). Jit the caller's
    ``model.apply(..., method='sample_actions')``: one XLA computation, no Python-side state.
    """
    cfg = self.config
    num_steps = int(cfg.num_inference_steps if num_steps is None else num_steps)
    prefix_kv, prefix_mask = self.prefix(batch)
    proprio = observation.current_proprio(batch, cfg)
    b = prefix_mask.shape[0]
    shape = (b, cfg.action_horizon, cfg.action_dim)
    x0 = _initial_noise(noise, rng, shape)

    def step(mdl, x, tau):
      return mdl.action_expert(x, jnp.full((b,), tau), proprio, prefix_kv, prefix_mask), ()

    actions, _ = fm.euler_integrate_module(self, step, x0, num_steps, ())
    return actions

  def reconstruct_motion_image(self, batch, rng, *, num_steps: int | None = None, noise=None):
    """The motion-image head's predicted flow image float32[B, S, S, 3] (about [-1, 1]; ``vae.images_to_uint8``
    for a PNG, ``flow_image.rgb_to_flow`` for pixels): ``num_steps`` Euler steps (default
    motion_image.reconstruction_steps) of the head from noise (``noise`` float32[B, h, w, L] replaces the draw),
    conditioned on ``encode``, decoded by the frozen VAE. For visualisation; ``sample_actions`` never runs it."""
    cfg = self.config
    if not motion_image_lib.enabled(cfg):
      raise ValueError("reconstruct_motion_image needs model.motion_image.enabled=True")
    features, mask = self.encode(batch)
    return motion_image_lib.reconstruct_images(cfg, self, lambda mdl: mdl.motion_image, self.vae, features, mask,
                                               rng, num_steps=num_steps, noise=noise)


def _initial_noise(noise, rng, shape) -> jax.Array:
  if noise is None:
    return jax.random.normal(rng, shape, jnp.float32)
  if not isinstance(noise, dict) or set(noise) != {"action"}:
    raise ValueError(f"sample_actions(noise=...) takes {{'action': float32{list(shape)}}}, got "
                     f"{type(noise).__name__} {sorted(noise) if isinstance(noise, dict) else ''}")
  x0 = jnp.asarray(noise["action"], jnp.float32)
  if x0.shape != shape:
    raise ValueError(f"sample_actions(noise={{'action': ...}}) has shape {x0.shape}; expected {shape} "
                     "(batch, action_horizon, action_dim)")
  return x0


def _tile(x: jax.Array, repeats: int, axis: int = 0) -> jax.Array:
  """x -> x tiled ``repeats`` times along ``axis`` (copy r of example i at r * B + i; identity for R = 1)."""
  if repeats == 1:
    return x
  reps = [1] * x.ndim
  reps[axis] = repeats
  return jnp.tile(x, reps)


def dummy_batch(model_cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0, *,
                window: int = 1) -> dict:
  """A random numpy batch following specs.py (with tokens, without the raw language_instruction)."""
  rs = np.random.RandomState(seed)
  b, h, a = batch_size, model_cfg.action_horizon, model_cfg.action_dim
  inputs = observation.dummy_inputs(model_cfg, b, rs, paligemma.config_from_dict(model_cfg.vlm).llm.vocab_size,
                                    window=window)
  return {**inputs, specs.ACTION: rs.uniform(-1, 1, (b, h, a)).astype(np.float32),
          specs.ACTION_PAD_MASK: np.ones((b, h, a), bool)}


# ------------------------------------------------------------------------------------------ the library
class Pi0Library(interface.ModelLibrary):
  """The 'pi0' model library (``interface.ModelLibrary``)."""

  name = NAME
  variants = pi0_config.VARIANTS
  methods = frozenset({"sample_actions", "reconstruct_motion_image"})
  flop_modes = ("train_step", "sample_actions", "motion_image_call", "reconstruct_motion_image")
  bench_ratios = {"with_over_without_motion_image_head": ("with_motion_image_head", "without_motion_image_head")}

  def model_config(self, variant: str = "tiny") -> ml_collections.ConfigDict:
    return pi0_config.model_config(variant)

  def reference_config(self, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``cfg`` with the plain attention (``layers.ATTENTION_IMPLEMENTATIONS``) in the VLM and the expert."""
    ref = copy.deepcopy(cfg)
    ref.attention = "plain"  # vlm.attention and action.attention refer to it
    return ref

  def build(self, cfg: ml_collections.ConfigDict) -> Pi0:
    self.check_config(cfg)
    vlm_config, _ = vlm_and_expert_configs(cfg)  # fails here, naming the fields, rather than inside a trace
    motion_image_lib.check(cfg)
    if latent_pretraining.enabled(cfg):
      latent_pretraining.check(cfg, vlm_config.llm.width)
    return Pi0(cfg)

  def bench_variants(self, cfg: ml_collections.ConfigDict) -> dict[str, interface.BenchVariant]:
    """``sample_actions``; a config with the motion-image head is timed with and without it (the claim that the
    head adds no inference latency)."""
    if motion_image_lib.enabled(cfg):
      return {"with_motion_image_head": interface.BenchVariant(cfg),
              "without_motion_image_head": interface.BenchVariant(motion_image_lib.without_head(cfg))}
    return super().bench_variants(cfg)

  def inference_config(self, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Without the training-only parts ``sample_actions`` never runs: LARA's alignment (the LAM and the predictor),
    the motion-image head (its sections and weight removed: the config of a plain π0; the head's and the VAE's
    parameters are dropped) and latent-action pretraining (the LAM and the code head)."""
    return latent_pretraining.without(motion_image_lib.without(lara.without(cfg), drop_sections=True))

  def frame_codes(self, cfg: ml_collections.ConfigDict, params) -> interface.FrameCodes | None:
    """With latent-action pretraining reading cached codes, in a stage that weighs 'latent_codes': the frozen LAM
    as the encoder of the datasets' code caches (latent_pretraining.frame_codes); else None."""
    return latent_pretraining.frame_codes(cfg, params)

  def dummy_batch(self, cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict:
    batch = motion_image_lib.add_dummy_flow(cfg, dummy_batch(cfg, batch_size, seed), batch_size, seed)
    return latent_pretraining.add_dummy_future(cfg, lara.add_dummy_future(cfg, batch, seed), seed)

  def data_requirements(self, cfg: ml_collections.ConfigDict) -> specs.DataRequirements:
    return latent_pretraining.data_requirements(cfg, lara.data_requirements(cfg, specs.DataRequirements(
        cameras=tuple(cfg.image_keys), image_size=int(cfg.image_size), window=1,
        action_horizon=int(cfg.action_horizon), action_dim=int(cfg.action_dim), proprio_dim=int(cfg.proprio_dim),
        optical_flow=motion_image_lib.enabled(cfg),
        text_tokens=int(cfg.max_token_len), vocab_size=int(paligemma.config_from_dict(cfg.vlm).llm.vocab_size))))

  def analytic_flops(self, cfg: ml_collections.ConfigDict, batch_size: int, mode: str) -> float:
    """Modes: 'sample_actions' (the VLM prefix once + num_inference_steps expert calls), 'train_step' (3 x the
    forward of compute_loss: the VLM prefix + action_repeats expert calls when the action term is on; with the
    motion-image head 3 x its call + the frozen VAE encoder once; with latent-action pretraining the frozen LAM's
    encode_latent + 3 x the code head; frozen parts counted as trainable),
    'motion_image_call' (one head call), 'reconstruct_motion_image' (the VLM prefix + reconstruction_steps head
    calls + the VAE decoder)."""
    vlm_cfg, expert = vlm_and_expert_configs(cfg)
    prefix = pi0_config.prefix_length(cfg)
    vlm = flops.paligemma_prefix(cfg.vlm, len(cfg.image_keys), int(cfg.max_token_len))
    call = flops.gemma_expert_call(expert, int(cfg.action_horizon), int(cfg.action_dim), int(cfg.proprio_dim),
                                   prefix)
    width = vlm_cfg.llm.width
    if mode == "sample_actions":
      total = vlm + int(cfg.num_inference_steps) * call
    elif mode in ("motion_image_call", "reconstruct_motion_image"):
      if not motion_image_lib.enabled(cfg):
        raise ValueError(f"analytic_flops mode {mode!r} needs model.motion_image.enabled=True")
      total = (flops.motion_image_call(cfg.motion_image, cfg.vae, int(cfg.image_size), prefix, width)
               if mode == "motion_image_call" else flops.motion_image_reconstruction(cfg, vlm, prefix, width))
    elif mode == "train_step":
      weights = self.loss_weights(cfg)
      actions = int(cfg.loss.get("action_repeats", 1)) * call if weights.get("action", 0.0) > 0 else 0.0
      total = (3 * (vlm + actions) + flops.motion_image_train(cfg, weights, prefix, width)
               + lara.train_flops(cfg, 1, weights, expert.width)
               + latent_pretraining.train_flops(cfg, 1, weights, prefix, width))
    else:
      raise ValueError(f"unknown analytic_flops mode {mode!r} of 'pi0' (modes: {self.flop_modes})")
    return float(batch_size * total)


LIBRARY = Pi0Library()
