"""The LaMP policy: PaliGemma VLM + Motion Expert + gated motion guidance + Action Expert.

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
(same code path, no motion expert / guidance parameters are used).

Parameter tree top level: 'vlm', 'motion_expert', 'guidance', 'action_expert' (nothing else).

Public module-level helpers: ``model_config(variant)``, ``build(model_cfg)``, ``init_params``,
``abstract_params``, ``logical_axes``, ``dummy_batch``, ``analytic_flops``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.models import action_expert as action_lib
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import guidance as guidance_lib
from lamp_jax.models import motion_expert as motion_lib
from lamp_jax.models import paligemma

VARIANTS = ("tiny", "sim", "paper")
TOP_LEVEL = ("vlm", "motion_expert", "guidance", "action_expert")


# ------------------------------------------------------------------------------------------ configs
def _motion(**kw) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      num_keypoints=400, num_steps=32, patch_size=2, frames_per_token=2, width=1024, depth=12, num_heads=16,
      mlp_ratio=4, cond_len=256, use_rope=False, delta_scale=(0.05, 0.05, 0.04), time_frequency_dim=256,
      # Training time distribution of the motion flow loss: 'uniform' (TraceGen-style stage 1) or 'pi0_beta'.
      time_dist="uniform", scan_layers=True, remat=False,
      # Exact rewrites (same math): unroll the layer scan; last block on motion queries only (its condition
      # stream is never read).
      scan_unroll=1, prune_last_condition=True,
      # Model option (changes the model; 1 = released): mean-pool windows of this many VLM prefix tokens into
      # one condition token (then set cond_len to about prefix / cond_pool).
      cond_pool=1,
      # Loss option (1.0 = released): weight of moving deltas (normalised norm > moving_threshold) in the motion
      # loss (motion_expert.loss_weights).
      moving_weight=1.0, moving_threshold=0.1))
  cfg.update(kw)
  return cfg


def _action(**kw) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      kind="dit", width=1024, depth=24, num_heads=16, mlp_ratio=4, time_frequency_dim=256,
      time_dist="pi0_beta", scan_layers=True, remat=False,
      # Exact rewrites (same math): unroll the layer scan; when sampling, project the cross-attention keys /
      # values of the (fixed) guided features once instead of at every Euler step.
      scan_unroll=1, cache_context_kv=True))
  cfg.update(kw)
  return cfg


def model_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  """The LaMP model section for 'tiny' (tests), 'sim' (CPU-trainable, 64x64 images) or 'paper'.

  Fields: name, variant, dtype (expert activations), vlm (paligemma.config_from_dict), image_keys, image_size,
  max_token_len, motion, guidance (num_heads, gate_init_logit), action (kind, ...), use_motion,
  loss (motion_weight, action_weight), num_inference_steps, tau_infer, partial_steps,
  motion_reconstruction_steps, action_horizon, action_dim, proprio_dim.
  Speed options: motion.scan_unroll / action.scan_unroll (int, layers per scan iteration; exact),
  motion.prune_last_condition and action.cache_context_kv (exact rewrites, on by default), motion.cond_pool
  (changes the model, off = 1). lamp_jax.bench times them.
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown LaMP variant {variant!r}; known: {VARIANTS}")
  cfg = ml_collections.ConfigDict()
  cfg.name = "lamp"
  cfg.variant = variant
  cfg.use_motion = True
  # motion_repeats / action_repeats: flow-matching draws (tau, eps) per example and loss term, sharing one VLM
  # pass (and one guidance pass). 1 = released LaMP / pi0 (one draw per example). R > 1 tiles the expert's
  # inputs R times: R x the expert's cost, a lower-variance gradient for the same encoder cost.
  cfg.loss = ml_collections.ConfigDict(dict(motion_weight=1.0, action_weight=1.0, motion_repeats=1,
                                            action_repeats=1))
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
  cfg.guidance = ml_collections.ConfigDict(dict(num_heads=8, gate_init_logit=0.0))
  if variant == "tiny":
    cfg.dtype = "float32"
    cfg.vlm = paligemma.default_config_dict("tiny")
    cfg.image_keys = (specs.IMAGE_PRIMARY, specs.IMAGE_WRIST)
    cfg.max_token_len = 7
    cfg.motion = _motion(num_keypoints=16, num_steps=6, width=40, depth=2, num_heads=4, mlp_ratio=2,
                         cond_len=29, time_frequency_dim=32)
    cfg.guidance.num_heads = 3
    cfg.action = _action(width=36, depth=2, num_heads=3, mlp_ratio=2, time_frequency_dim=32)
    cfg.action_horizon, cfg.action_dim, cfg.proprio_dim = 5, 7, 5
  elif variant == "sim":
    cfg.dtype = "float32"
    cfg.vlm = paligemma.default_config_dict("tiny")
    cfg.vlm.vision_variant = "S/16"
    cfg.vlm.llm_variant = "dummy"
    cfg.vlm.image_size = 64
    cfg.vlm.vocab_size = 1024  # the trainer sets the tokenizer's vocabulary size
    # Sized for the 2-core CPU budget of the built-in benchmark (measured with `python -m lamp_jax.bench`):
    # ~2.3 M parameters, ~1.3 GFLOP per training example (2 cameras x 64 patches + 48 text tokens; 1.1 with
    # the 12 word tokens of configs/sim.py).
    cfg.vlm.vision_overrides = ml_collections.ConfigDict(dict(width=128, depth=2, mlp_dim=256, num_heads=2,
                                                              patch_size=8))
    cfg.vlm.llm_overrides = ml_collections.ConfigDict(dict(width=128, depth=2, mlp_dim=256, num_heads=2,
                                                           num_kv_heads=1, head_dim=64))
    cfg.image_keys = (specs.IMAGE_PRIMARY, specs.IMAGE_WRIST)
    # The longest built-in instruction ("put the yellow cylinder on the orange plate", 43 bytes) + bos + "\n" = 45
    # byte tokens (tests/test_sim_config.py checks every template against this budget).
    cfg.max_token_len = 48
    cfg.motion = _motion(num_keypoints=64, num_steps=8, width=64, depth=2, num_heads=2, cond_len=2 * 64 + 48,
                         time_frequency_dim=64)
    cfg.guidance.num_heads = 2
    cfg.action = _action(width=128, depth=4, num_heads=2, time_frequency_dim=128)
    cfg.action_horizon, cfg.action_dim, cfg.proprio_dim = 8, specs.ACTION_DIM, specs.SIM_STATE_DIM
  else:  # paper
    cfg.dtype = "bfloat16"
    cfg.vlm = paligemma.default_config_dict("paligemma_3b")
    cfg.vlm.dtype = "bfloat16"
    cfg.image_keys = (specs.IMAGE_PRIMARY,)
    cfg.max_token_len = 48
    # Released cond length 256; here the condition must hold the whole prefix (256 image + 48 text tokens).
    cfg.motion = _motion(cond_len=304)
    cfg.guidance.num_heads = 8
    cfg.action = _action()
    cfg.action_horizon, cfg.action_dim, cfg.proprio_dim = 10, specs.ACTION_DIM, specs.SIM_STATE_DIM
  cfg.image_size = cfg.vlm.get_ref("image_size")  # follows vlm.image_size
  return cfg


# ------------------------------------------------------------------------------------------ the model
class LaMP(nn.Module):
  """The LaMP policy. All methods take the specs.py batch and an explicit PRNG key ``rng``.

  * ``compute_loss(batch, rng, *, train=True) -> (loss float32[], metrics)``
  * ``sample_actions(batch, rng, *, num_steps=None, motion_steps=None, gate_override=None, noise=None)
    -> float32[B, H, A]``
  * ``reconstruct_motion(batch, rng, *, num_steps=10) -> float32[B, K, T, 3]``
  * ``__call__(batch, rng)``: runs every component once (used by ``init``).
  """

  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    self.vlm_config = paligemma.config_from_dict(cfg.vlm)
    self.vlm = paligemma.PaliGemma(self.vlm_config)
    self.motion_expert = motion_lib.MotionExpert(cfg.motion, dtype=dtype)
    self.guidance = guidance_lib.GatedMotionGuidance(cfg.guidance, width=self.vlm_config.llm.width, dtype=dtype)
    self.action_expert = action_lib.build_action_expert(cfg.action, dtype)

  # ---------------------------------------------------------------------------------------- inputs
  def _images(self, batch):
    """Current frame of each configured camera -> (float32[B, C, Hi, Wi, 3] in [-1, 1], bool[B, C])."""
    obs = batch[specs.OBSERVATION]
    present = [k for k in self.config.image_keys if k in obs]
    if not present:
      raise ValueError(f"batch['observation'] has none of the configured cameras image_keys="
                       f"{tuple(self.config.image_keys)}; it has {sorted(obs)}")
    ref = obs[present[0]]
    b, size = ref.shape[0], self.config.image_size
    images, masks = [], []
    for key in self.config.image_keys:
      if key not in obs:  # optional camera: zeros, masked out.
        images.append(jnp.zeros((b, size, size, 3), jnp.float32))
        masks.append(jnp.zeros((b,), bool))
        continue
      img = obs[key]
      if img.ndim != 5 or img.shape[2:] != (size, size, 3):
        raise ValueError(f"batch['observation'][{key!r}] has shape {img.shape}; expected uint8[B, W, {size}, "
                         f"{size}, 3] (config image_size={size})")
      images.append(img[:, -1].astype(jnp.float32) / 127.5 - 1.0)
      mask = obs.get(specs.IMAGE_MASK, {}).get(key)
      masks.append(jnp.ones((b,), bool) if mask is None else mask[:, -1].astype(bool))
    return jnp.stack(images, axis=1), jnp.stack(masks, axis=1)

  def _proprio(self, batch, dropout_rng=None):
    """Current normalised proprio float32[B, S]: zeros when ``use_proprio`` is False; with ``dropout_rng`` (training
    only) each example's proprio is zeroed with probability ``proprio_dropout``."""
    proprio = batch[specs.OBSERVATION][specs.PROPRIO]
    if proprio.shape[-1] != self.config.proprio_dim:
      raise ValueError(f"batch['observation']['proprio'] has {proprio.shape[-1]} dims; config proprio_dim="
                       f"{self.config.proprio_dim}")
    proprio = proprio[:, -1].astype(jnp.float32)
    if not self.config.get("use_proprio", True):
      return jnp.zeros_like(proprio)
    p = float(self.config.get("proprio_dropout", 0.0))
    if not 0.0 <= p < 1.0:
      raise ValueError(f"config proprio_dropout must be in [0, 1), got {p}")
    if dropout_rng is not None and p > 0.0:
      keep = jax.random.bernoulli(dropout_rng, 1.0 - p, (proprio.shape[0], 1))
      proprio = jnp.where(keep, proprio, 0.0)
    return proprio

  def encode(self, batch):
    """VLM prefix features: (float[B, P, Dv], bool[B, P])."""
    task = batch[specs.TASK]
    if specs.TOKENS not in task:
      raise ValueError("batch['task'] has no 'tokens': tokenise language_instruction with lamp_jax.tokenizer")
    images, image_mask = self._images(batch)
    out = self.vlm(images, image_mask, task[specs.TOKENS].astype(jnp.int32), task[specs.TOKEN_MASK].astype(bool))
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
    return self.action_expert(actions, jnp.zeros((b,)), self._proprio(batch), guided, mask)

  def compute_loss(self, batch, rng, *, train: bool = True, gate_override=None):
    """Weighted flow-matching losses.

    Terms: 'loss/motion_fm' (needs scene_flow keys; off when loss.motion_weight == 0) and 'loss/action_fm'
    (needs action keys; off when loss.action_weight == 0). ``train`` enables ``proprio_dropout`` (the only
    stochastic regulariser; ``train=False`` gives the deterministic loss of evaluation).
    Returns (loss float32[], metrics dict of float32[]: 'loss', 'loss/action_fm', 'loss/motion_fm',
    'guidance/gate'). With ``loss.{motion,action}_repeats`` = R, each term averages R (tau, eps) draws per
    example: the expert sees its inputs tiled R times along the batch (copy r of example i at r * B + i).
    """
    cfg = self.config
    w_motion, w_action = float(cfg.loss.motion_weight), float(cfg.loss.action_weight)
    r_motion, r_action = int(cfg.loss.get("motion_repeats", 1)), int(cfg.loss.get("action_repeats", 1))
    if r_motion < 1 or r_action < 1:
      raise ValueError(f"config loss.motion_repeats / loss.action_repeats must be >= 1, got {r_motion}, {r_action}")
    if w_motion <= 0 and w_action <= 0:
      raise ValueError("config loss.motion_weight and loss.action_weight are both 0: nothing to train")
    if w_motion > 0 and not cfg.use_motion:
      raise ValueError("loss.motion_weight > 0 but use_motion=False (the w/o-motion ablation has no motion loss)")
    features, mask = self.encode(batch)
    b = features.shape[0]
    rng_motion, rng_action, rng_guide = jax.random.split(rng, 3)
    rng_proprio = jax.random.fold_in(rng, 4)  # a separate stream: the other draws stay those of earlier versions
    zero = jnp.zeros((), jnp.float32)
    metrics = {"loss/motion_fm": zero, "loss/action_fm": zero,
               "guidance/gate": self.guidance.gate() if cfg.use_motion else zero}
    total = zero

    if w_motion > 0:
      for key in (specs.SCENE_FLOW, specs.SCENE_FLOW_QUERY, specs.SCENE_FLOW_MASK, specs.SCENE_FLOW_QUERY_MASK,
                  specs.HAS_SCENE_FLOW):
        if key not in batch:
          raise ValueError(f"loss.motion_weight > 0 but the batch has no {key!r}")
      target = motion_lib.tracks_to_target(batch[specs.SCENE_FLOW_QUERY], batch[specs.SCENE_FLOW],
                                           cfg.motion.delta_scale)
      valid = motion_lib.target_mask(batch[specs.SCENE_FLOW_QUERY_MASK].astype(bool),
                                     batch[specs.SCENE_FLOW_MASK].astype(bool),
                                     batch[specs.HAS_SCENE_FLOW].astype(bool))
      # Masked deltas enter the expert as zeros, so unlabelled values cannot influence the loss.
      target = jnp.where(valid[..., None], target, 0.0)
      target, valid, cond, cond_mask = (_tile(x, r_motion) for x in (target, valid, features, mask))
      rng_t, rng_e = jax.random.split(rng_motion)
      tau = _sample_tau(rng_t, b * r_motion, cfg.motion.time_dist)
      eps = jax.random.normal(rng_e, target.shape, jnp.float32)
      velocity, _ = self.motion_expert(fm.interpolate(target, eps, tau), tau, cond, cond_mask)
      weights = motion_lib.loss_weights(target, valid, float(cfg.motion.get("moving_weight", 1.0)),
                                        float(cfg.motion.get("moving_threshold", 0.1)))
      motion_loss = motion_lib.masked_mse(velocity, fm.velocity_target(target, eps), weights[..., None])
      metrics["loss/motion_fm"] = motion_loss
      total = total + w_motion * motion_loss

    if w_action > 0:
      for key in (specs.ACTION, specs.ACTION_PAD_MASK):
        if key not in batch:
          raise ValueError(f"loss.action_weight > 0 but the batch has no {key!r}")
      actions = batch[specs.ACTION].astype(jnp.float32)
      expected = (b, cfg.action_horizon, cfg.action_dim)
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
      rng_t, rng_e = jax.random.split(rng_action)
      tau = _sample_tau(rng_t, b * r_action, cfg.action.time_dist)
      eps = jax.random.normal(rng_e, actions.shape, jnp.float32)
      velocity = self.action_expert(fm.interpolate(actions, eps, tau), tau, proprio, guided, guided_mask)
      action_loss = motion_lib.masked_mse(velocity, fm.velocity_target(actions, eps), pad_mask)
      metrics["loss/action_fm"] = action_loss
      if cfg.use_motion:
        metrics["guidance/gate"] = gate
      total = total + w_action * action_loss

    metrics["loss"] = total
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


def _given_noise(noise, shape: tuple[int, ...], name: str) -> jax.Array:
  """Injected noise as float32 of the expected ``shape``; another shape raises naming ``noise[name]``."""
  noise = jnp.asarray(noise, jnp.float32)
  if tuple(noise.shape) != tuple(shape):
    raise ValueError(f"sample_actions noise[{name!r}] has shape {tuple(noise.shape)}; expected {tuple(shape)}")
  return noise


def _sample_tau(rng, batch_size: int, kind: str) -> jax.Array:
  if kind == "uniform":
    return jax.random.uniform(rng, (batch_size,), jnp.float32)
  if kind == "pi0_beta":
    return fm.sample_time(rng, (batch_size,))
  raise ValueError(f"unknown time_dist {kind!r} (motion.time_dist / action.time_dist): 'uniform' | 'pi0_beta'")


# ------------------------------------------------------------------------------------------ helpers
def build(model_cfg: ml_collections.ConfigDict) -> LaMP:
  return LaMP(model_cfg)


def init_variables(model_cfg: ml_collections.ConfigDict, rng: jax.Array, batch) -> dict:
  """Boxed variables (parameters carry logical axis names; ``nn.unbox`` for plain arrays), jit-compiled."""
  model = build(model_cfg)

  def init(rng, batch):
    rng_init, rng_call = jax.random.split(rng)
    return model.init(rng_init, batch, rng_call)

  return jax.jit(init)(rng, batch)


def init_params(model_cfg: ml_collections.ConfigDict, rng: jax.Array, batch) -> dict:
  """Random parameters (plain arrays): {'vlm', 'motion_expert', 'guidance', 'action_expert'}."""
  return nn.unbox(init_variables(model_cfg, rng, batch))["params"]


def _abstract_variables(model_cfg):
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), dummy_batch(model_cfg, 1))
  return jax.eval_shape(lambda rng, b: init_variables(model_cfg, rng, b), jax.random.key(0), batch)


def abstract_params(model_cfg: ml_collections.ConfigDict) -> dict:
  """Parameter tree of jax.ShapeDtypeStruct via jax.eval_shape (no allocation)."""
  return nn.unbox(_abstract_variables(model_cfg))["params"]


def logical_axes(model_cfg: ml_collections.ConfigDict) -> dict:
  """Parameter tree of PartitionSpec holding each parameter's logical axis names."""
  return nn.get_partition_spec(_abstract_variables(model_cfg))["params"]


def dummy_batch(model_cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0, *,
                window: int = 1) -> dict:
  """A random numpy batch following specs.py (with tokens, without the raw language_instruction)."""
  rs = np.random.RandomState(seed)
  b, size = batch_size, model_cfg.image_size
  vocab = paligemma.config_from_dict(model_cfg.vlm).llm.vocab_size
  obs = {key: rs.randint(0, 256, (b, window, size, size, 3)).astype(np.uint8) for key in model_cfg.image_keys}
  obs[specs.IMAGE_MASK] = {key: np.ones((b, window), bool) for key in model_cfg.image_keys}
  obs[specs.PROPRIO] = rs.randn(b, window, model_cfg.proprio_dim).astype(np.float32)
  obs[specs.TIMESTEP_PAD_MASK] = np.ones((b, window), bool)
  length = model_cfg.max_token_len
  lengths = rs.randint(1, length + 1, (b,))
  token_mask = np.arange(length)[None] < lengths[:, None]
  tokens = np.where(token_mask, rs.randint(1, vocab, (b, length)), 0).astype(np.int32)
  m = model_cfg.motion
  k, t = m.num_keypoints, m.num_steps
  uv = specs.grid_query_uv(k)
  query = np.concatenate([np.broadcast_to(uv, (b, k, 2)), rs.uniform(0.5, 1.5, (b, k, 1))], -1).astype(np.float32)
  steps = rs.uniform(-0.8, 0.8, (b, k, t, 3)) * np.asarray(m.delta_scale)
  flow = (query[:, :, None] + np.cumsum(steps, axis=2)).astype(np.float32)
  return {
      specs.OBSERVATION: obs,
      specs.TASK: {specs.TOKENS: tokens, specs.TOKEN_MASK: token_mask},
      specs.ACTION: rs.uniform(-1, 1, (b, model_cfg.action_horizon, model_cfg.action_dim)).astype(np.float32),
      specs.ACTION_PAD_MASK: np.ones((b, model_cfg.action_horizon, model_cfg.action_dim), bool),
      specs.SCENE_FLOW: flow,
      specs.SCENE_FLOW_QUERY: query,
      specs.SCENE_FLOW_MASK: rs.rand(b, k, t) > 0.1,
      specs.SCENE_FLOW_QUERY_MASK: rs.rand(b, k) > 0.05,
      specs.HAS_SCENE_FLOW: np.ones((b,), bool),
  }


# ------------------------------------------------------------------------------------------ analytic FLOPs
def _transformer_layer_flops(tokens: int, width: int, mlp_dim: int, *, context: int | None = None,
                             context_width: int | None = None, attn_width: int | None = None,
                             gated_mlp: bool = False) -> float:
  """Matmul FLOPs (2 per multiply-add) of one attention + MLP layer over ``tokens`` tokens (one example)."""
  attn_width = attn_width or width
  keys = tokens if context is None else context
  kv_in = width if context_width is None else context_width
  proj = 2 * tokens * width * attn_width * 2 + 2 * keys * kv_in * attn_width * 2  # q, out ; k, v
  scores = 2 * 2 * tokens * keys * attn_width  # logits + weighted values
  mlp = 2 * tokens * width * mlp_dim * (3 if gated_mlp else 2)
  return float(proj + scores + mlp)


def prefix_length(model_cfg: ml_collections.ConfigDict) -> int:
  """VLM prefix tokens: every camera's patches + ``max_token_len`` text tokens (motion.cond_len must hold them)."""
  vision = paligemma.config_from_dict(model_cfg.vlm).vision
  return len(model_cfg.image_keys) * (vision.image_size // vision.patch_size) ** 2 + int(model_cfg.max_token_len)


def _component_flops(model_cfg: ml_collections.ConfigDict) -> dict[str, float]:
  """Per-example forward matmul FLOPs of each component call."""
  vlm = paligemma.config_from_dict(model_cfg.vlm)
  v, g = vlm.vision, vlm.llm
  cams = len(model_cfg.image_keys)
  patches = (v.image_size // v.patch_size) ** 2
  vision = cams * (2 * patches * v.patch_size**2 * 3 * v.width
                   + v.depth * _transformer_layer_flops(patches, v.width, v.mlp_dim)
                   + 2 * patches * v.width * g.width)
  prefix = prefix_length(model_cfg)
  gemma_layer = (2 * prefix * g.width * g.num_heads * g.head_dim * 2  # q, out
                 + 2 * prefix * g.width * g.num_kv_heads * g.head_dim * 2  # k, v
                 + 2 * 2 * prefix * prefix * g.num_heads * g.head_dim
                 + 2 * prefix * g.width * g.mlp_dim * 3)
  m = model_cfg.motion
  n_motion = motion_lib.num_motion_tokens(m)
  n_all = n_motion + m.cond_len
  cond_in = -(-prefix // m.get("cond_pool", 1))  # prefix tokens entering the condition projection
  fan_in = m.patch_size**2 * m.frames_per_token * 3
  mlp = m.mlp_ratio * m.width
  full_layer = _transformer_layer_flops(n_all, m.width, mlp)
  # prune_last_condition: the last block runs its queries / MLP on the motion tokens only (keys from all).
  last_layer = (_transformer_layer_flops(n_motion, m.width, mlp, context=n_all, context_width=m.width)
                if m.get("prune_last_condition", True) else full_layer)
  motion = ((m.depth - 1) * full_layer + last_layer + m.depth * 2 * 12 * m.width**2
            + 2 * cond_in * g.width * m.width + 2 * n_motion * fan_in * m.width * 2)
  guidance = (2 * n_motion * m.width * g.width + 2 * n_motion * g.width * g.width * 2
              + 2 * prefix * g.width * g.width * 2 + 2 * 2 * prefix * n_motion * g.width)
  a = model_cfg.action
  tokens = model_cfg.action_horizon + 1
  pair = (_transformer_layer_flops(tokens, a.width, a.mlp_ratio * a.width, context=prefix, context_width=g.width)
          + _transformer_layer_flops(tokens, a.width, a.mlp_ratio * a.width) + 2 * 2 * 6 * a.width**2)
  action = (a.depth // 2) * pair + 2 * tokens * (model_cfg.action_dim + model_cfg.proprio_dim) * a.width
  context_kv = (a.depth // 2) * 2 * prefix * g.width * a.width * 2  # cross-attention keys + values
  return {"vlm": float(vision + g.depth * gemma_layer), "motion_expert_call": float(motion),
          "guidance": float(guidance), "action_expert_call": float(action), "action_context_kv": float(context_kv)}


def _tile(x: jax.Array, repeats: int) -> jax.Array:
  """x[B, ...] -> x[R * B, ...], copy r of example i at r * B + i (identity for R = 1)."""
  return x if repeats == 1 else jnp.tile(x, (repeats,) + (1,) * (x.ndim - 1))


def analytic_flops(model_cfg: ml_collections.ConfigDict, batch_size: int, mode: str) -> float:
  """Model matmul FLOPs for one call (XLA's cost analysis counts a scanned layer once, so count here).

  Modes: 'sample_actions' (VLM + partial_steps + 1 motion calls + guidance + num_inference_steps action calls;
  without motion calls / guidance when use_motion=False), 'sample_actions_full_motion' (motion_reconstruction_steps
  motion calls instead), 'motion_partial' / 'motion_full' (the motion calls alone), 'train_step'
  (3 x forward of compute_loss: forward + backward ~ 2 x forward, all terms with non-zero weight; frozen parts
  counted as trainable, i.e. an upper bound for stage 2). Element-wise ops, norms and softmax are not counted.
  Counts what the configured model computes: the motion expert's pruned last block
  (motion.prune_last_condition) and, when sampling, the action cross-attention keys / values projected once
  (action.cache_context_kv).
  """
  c = _component_flops(model_cfg)
  use_motion = bool(model_cfg.use_motion)
  partial_calls = model_cfg.partial_steps + 1
  full_calls = model_cfg.motion_reconstruction_steps
  steps = model_cfg.num_inference_steps
  # Sampling with action.cache_context_kv projects the cross-attention keys / values once, not every step.
  kv_sampling = c["action_context_kv"] if model_cfg.action.get("cache_context_kv", True) else 0.0
  actions = c["vlm"] + steps * c["action_expert_call"] - (steps - 1) * kv_sampling
  if mode == "sample_actions":
    total = actions
    if use_motion:
      total += partial_calls * c["motion_expert_call"] + c["guidance"]
  elif mode == "sample_actions_full_motion":
    total = actions + full_calls * c["motion_expert_call"] + c["guidance"]
  elif mode == "motion_partial":
    total = partial_calls * c["motion_expert_call"]
  elif mode == "motion_full":
    total = full_calls * c["motion_expert_call"]
  elif mode == "train_step":
    forward = c["vlm"]
    if model_cfg.loss.motion_weight > 0:
      forward += int(model_cfg.loss.get("motion_repeats", 1)) * c["motion_expert_call"]
    if model_cfg.loss.action_weight > 0:
      forward += int(model_cfg.loss.get("action_repeats", 1)) * c["action_expert_call"]
      if use_motion:
        forward += partial_calls * c["motion_expert_call"] + c["guidance"]
    total = 3 * forward
  else:
    raise ValueError(f"unknown analytic_flops mode {mode!r}")
  return float(batch_size * total)
