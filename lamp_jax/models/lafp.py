"""LAFP: latent action flow policy (the ``'lafp'`` model library), and its behaviour-cloned baseline ('bc').

A policy that acts through the latent space of a FROZEN latent action model (LAM, lam.py): the latent policy
predicts, from the observation, the LAM's pre-quantisation latent z_t of the pair (o_t, o_{t+k}); an action
decoder turns a latent into the action chunk. Shapes (letters as specs.py; L_z latent tokens of Dc dims,
``model.latent``):

  images, tokens ─► vlm (prefix encoder, prefix_encoder.py: LaMP's) ─► features float[B, P, D], bool[B, P]
  latent policy (``latent_policy``: LaMP's DiT Action Expert over L_z tokens of Dc dims, cross-attending to the
      features, proprio as its state token) ─► z_hat float32[B, L_z, Dc]
  action decoder (``action_decoder``: MLP over [flatten(z) float32[B, L_z * Dc]; proprio float32[B, S]])
      ─► actions float32[B, H, A]
  LAM (``lam``, training only, frozen): o_t, o_{t+k} ─► inverse model ─► z_t float32[B, L_z, Dc] (pre-quantisation,
      view ``lam.views[0]``, offset ``lam.future_offsets[0]``; a stop-gradient target)

X-prediction flow matching (objective 'flow', LAFP). Time convention of flow_matching.py: tau = 0 noise, tau = 1
data, z_tau = (1 - tau) * eps + tau * z_t with eps ~ N(0, I). The network outputs the CLEAN latent,
z_hat = f(z_tau, tau), not a velocity. The velocity it implies is that of the straight path through z_tau that
ends at z_hat at tau = 1:

  v_hat = (z_hat - z_tau) / max(1 - tau, t_eps)           (target: v = z_t - eps = (z_t - z_tau) / (1 - tau))

Term 'latent_flow' (``latent_policy.loss_space``): 'v' (default; JiT's x-prediction with the velocity loss)
mean ||v_hat - v||^2 with v = (z_t - z_tau) / max(1 - tau, t_eps), i.e. ||z_hat - z_t||^2 / max(1 - tau, t_eps)^2;
'x' mean ||z_hat - z_t||^2. Sampling: ``num_inference_steps`` (3) Euler steps of dz/dtau = v_hat from noise at
tau = 0; at the last step (tau = 1 - 1/N, dt = 1/N = 1 - tau) z + dt * v_hat = z_hat exactly, so a network that
returns the true z for every input samples z (tested).

Behaviour cloning (objective 'bc', the baseline ``lafp_bc``): the same network, called once with z_tau = 0 and
tau = 0, regresses z_t (term 'latent_bc', mean ||z_hat - z_t||^2); sampling is that one call.

Decoder (term 'decoder'): trained on the interpolated latent

  z_dec = (1 - tau_i) * z_0 + tau_i * z_t        (tau_i = ``decoder.interpolation``)

with z_0 the latent policy's own stop-gradient sample for the same observation (LAFP: the N-step sampler from a
fresh noise; BC: the regression output), mean squared error to the action chunk (padded entries unweighted).
At inference the decoder reads z_0 alone: training it on latents between the policy's samples and the LAM's
latents aligns it with what the stochastic policy produces. tau_i = 1 trains on the LAM latents only.

Valid pairs: a pair (o_t, o_{t+k}) with the LAM camera missing, or with t + k past the episode end
(``future_pad_mask`` False) under ``model.pairs_past_end='drop'``, has no latent: the example enters neither latent
term nor the decoder term. ``'last_frame'`` (the default) keeps the pairs past the end as (o_t, the episode's last
frame), so the last k steps of each episode train the decoder too.

Gradients: z_t is a stop-gradient target and the configs freeze ``^lam/`` (gradients never reach the LAM; the
LAM runs without its 'vq_state' collection); z_0 is stop-gradient (the decoder term trains the decoder only).
Key streams of ``compute_loss(rng)``: fold_in(rng, 0) the flow draw (tau, eps), 1 the sampler's noise for z_0,
2 proprio dropout, 0x1A the LAM.

Parameter tree top level: 'vlm', 'latent_policy', 'action_decoder' (the policy, all ``sample_actions`` reads) and
'lam' (training only; ``inference_config`` drops it, so an export keeps the policy alone). Configs:
lafp_config.py; docs/lafp.md.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.models import action_expert as action_lib
from lamp_jax.models import flops
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import interface
from lamp_jax.models import lafp_config
from lamp_jax.models import lam as lam_lib
from lamp_jax.models import lamp_config
from lamp_jax.models import layers
from lamp_jax.models import losses
from lamp_jax.models import observation
from lamp_jax.models import prefix_encoder

NAME = lafp_config.NAME
LOSS_TERMS = ("latent_flow", "latent_bc", "decoder")
TOP_LEVEL = ("vlm", "latent_policy", "action_decoder", "lam")
# Streams of compute_loss's key: fold_in(rng, this).
_FLOW_STREAM, _SAMPLE_STREAM, _PROPRIO_STREAM, _LAM_STREAM = 0, 1, 2, 0x1A


def has_lam(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the config carries the (training-only) latent action model."""
  return cfg.get("lam", None) is not None


def without_lam(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``cfg`` without the ``lam`` section (a copy): the policy ``sample_actions`` runs (what an export keeps)."""
  return losses.without_sections(cfg, ("lam",)) if has_lam(cfg) else cfg


def latent_shape(cfg: ml_collections.ConfigDict, batch_size: int) -> tuple[int, int, int]:
  """(B, L_z, Dc) of the latent the heads read and write."""
  return (batch_size, int(cfg.latent.code_length), int(cfg.latent.code_dim))


def implied_velocity(z_hat: jax.Array, z_tau: jax.Array, tau: jax.Array, t_eps: float) -> jax.Array:
  """v_hat = (z_hat - z_tau) / max(1 - tau, t_eps): the velocity of an x-prediction z_hat at z_tau, time tau
  (float32[B] or scalar)."""
  one_minus = jnp.maximum(1.0 - fm._broadcast_time(tau, z_tau), t_eps)  # pylint: disable=protected-access
  return (z_hat.astype(jnp.float32) - z_tau.astype(jnp.float32)) / one_minus


def x_prediction_loss(z_hat: jax.Array, z: jax.Array, eps: jax.Array, tau: jax.Array, valid: jax.Array, *,
                      loss_space: str, t_eps: float) -> jax.Array:
  """The 'latent_flow' term of one draw.

  Args:
    z_hat: float[B, L_z, Dc] the network's clean-latent prediction at z_tau = (1 - tau) eps + tau z.
    z: float32[B, L_z, Dc] the LAM latent; eps: float32[B, L_z, Dc] the noise; tau: float32[B].
    valid: bool[B] the examples whose pair counts.
    loss_space: 'v' (mean ||v_hat - v||^2, v = (z - z_tau) / max(1 - tau, t_eps)) or 'x' (mean ||z_hat - z||^2).
  Returns:
    float32[] the mean over valid examples' entries (0 when none is valid).
  """
  mask = valid.astype(bool)[:, None, None]
  if loss_space == "x":
    return fm.masked_mse(z_hat, z, mask)
  z_tau = fm.interpolate(z, eps, tau)
  return fm.masked_mse(implied_velocity(z_hat, z_tau, tau, t_eps), implied_velocity(z, z_tau, tau, t_eps), mask)


def interpolated_latent(z_policy: jax.Array, z_lam: jax.Array, tau_i: float) -> jax.Array:
  """The decoder's training latent (1 - tau_i) * z_0 + tau_i * z_t."""
  return (1.0 - tau_i) * z_policy.astype(jnp.float32) + tau_i * z_lam.astype(jnp.float32)


class ActionDecoder(nn.Module):
  """latent float[B, L_z, Dc] (+ proprio float[B, S]) -> action chunk float32[B, H, A]: an input projection,
  ``depth`` pre-LN residual MLP blocks of ``width``, a final LayerNorm and an output projection."""

  config: ml_collections.ConfigDict
  horizon: int
  action_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, latent, proprio):
    cfg = self.config
    b = latent.shape[0]
    x = latent.reshape(b, -1).astype(jnp.float32)
    if cfg.use_proprio:
      x = jnp.concatenate([x, proprio.astype(jnp.float32)], axis=-1)
    h = layers.DenseGeneral(int(cfg.width), (None, "embed"), dtype=self.dtype, name="input_proj")(x.astype(self.dtype))
    for i in range(int(cfg.depth)):
      y = layers.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(h)
      y = layers.DenseGeneral(int(cfg.mlp_ratio) * int(cfg.width), ("embed", "mlp"), dtype=self.dtype,
                              name=f"fc1_{i}")(y)
      y = layers.DenseGeneral(int(cfg.width), ("mlp", "embed"), dtype=self.dtype, name=f"fc2_{i}")(
          nn.gelu(y, approximate=True))
      h = h + y
    h = layers.LayerNorm(dtype=self.dtype, name="norm_out")(h)
    out = layers.DenseGeneral(self.horizon * self.action_dim, ("embed", None), dtype=self.dtype, name="output_proj")(h)
    return out.astype(jnp.float32).reshape(b, self.horizon, self.action_dim)


class LatentActionFlowPolicy(nn.Module):
  """The LAFP policy (or its BC baseline). Methods take the specs.py batch and an explicit PRNG key ``rng``:

  * ``compute_loss(batch, rng, *, train=True) -> (loss float32[], metrics)``
  * ``sample_actions(batch, rng, *, noise=None) -> float32[B, H, A]`` (never reads 'lam')
  * ``sample_latent(batch, rng, *, noise=None) -> float32[B, L_z, Dc]``: the latent policy's sample z_0
  * ``lam_latent(batch, rng) -> (z_t float32[B, L_z, Dc], valid bool[B])``: the frozen LAM's target
  * ``__call__(batch, rng)``: touches every parameter once (``init``).
  """

  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    self.vlm = prefix_encoder.build(cfg.vlm, int(cfg.max_token_len), len(cfg.image_keys))
    self.latent_policy = action_lib.build_action_expert(cfg.latent_policy, dtype, attention=str(cfg.attention))
    self.action_decoder = ActionDecoder(cfg.decoder, int(cfg.action_horizon), int(cfg.action_dim), dtype=dtype)
    if has_lam(cfg):
      self.lam = lam_lib.LatentActionModel(cfg.lam)

  # ---------------------------------------------------------------------------------------- pieces
  def encode(self, batch):
    """Prefix features (float[B, P, D], bool[B, P])."""
    out = self.vlm(*observation.vlm_inputs(batch, self.config))
    return out["last_hidden"], out["prefix_mask"]

  def _predict(self, z_tau, tau, proprio, features, mask, context_kv=None):
    """z_hat float32[B, L_z, Dc] = the latent policy at (z_tau, tau)."""
    b = z_tau.shape[0]
    return self.latent_policy(z_tau, jnp.broadcast_to(jnp.asarray(tau, jnp.float32), (b,)), proprio, features, mask,
                              context_kv=context_kv)

  def _sample(self, features, mask, proprio, z_noise):
    """The latent policy's sample from the initial noise z_noise float32[B, L_z, Dc] (BC: one call at zeros)."""
    cfg = self.config
    lp = cfg.latent_policy
    if lp.objective == "bc":
      return self._predict(jnp.zeros_like(z_noise), 0.0, proprio, features, mask)
    context_kv = self.latent_policy.context_kv(features) if lp.get("cache_context_kv", True) else None
    t_eps = float(lp.t_eps)

    def step(mdl, z, tau):
      z_hat = mdl._predict(z, tau, proprio, features, mask, context_kv)  # pylint: disable=protected-access
      return implied_velocity(z_hat, z, tau, t_eps), ()

    z, _ = fm.euler_integrate_module(self, step, z_noise, int(cfg.num_inference_steps), ())
    return z

  def _noise(self, noise, rng, shape):
    if noise is None:
      return jax.random.normal(rng, shape, jnp.float32)
    if not isinstance(noise, dict) or set(noise) != {"latent"}:
      raise ValueError(f"sample_actions(noise=...) takes {{'latent': float32{list(shape)}}}, got "
                       f"{type(noise).__name__} {sorted(noise) if isinstance(noise, dict) else ''}")
    z = jnp.asarray(noise["latent"], jnp.float32)
    if tuple(z.shape) != tuple(shape):
      raise ValueError(f"sample_actions(noise={{'latent': ...}}) has shape {tuple(z.shape)}; expected {shape} "
                       "(batch, model.latent.code_length, model.latent.code_dim)")
    return z

  def lam_latent(self, batch, rng):
    """The frozen LAM's pre-quantisation latent of (o_t, o_{t+k}) (first view, first offset), stop-gradient:
    (z_t float32[B, L_z, Dc], valid bool[B]). Raises naming the config fields when its size is not the heads'."""
    cfg = self.config
    if not has_lam(cfg):
      raise ValueError("config field model.lam is not set: LAFP's losses read the latent action model's latents "
                       "(an inference config has none; train with the full config)")
    pairs_past_end = cfg.get("pairs_past_end", lafp_config.LEGACY_PAIRS_PAST_END)
    out = self.lam.encode_latent(batch, jax.random.fold_in(rng, _LAM_STREAM),
                                 past_end_valid=pairs_past_end == "last_frame")
    z = out["latent"]
    expected = latent_shape(cfg, z.shape[0])
    if tuple(z.shape) != expected:
      raise ValueError(f"the latent action model gives latents of shape {tuple(z.shape)}; the heads expect "
                       f"{expected} (config fields model.latent.code_length / code_dim vs model.lam.vq)")
    return jax.lax.stop_gradient(z), out["valid"]

  # ---------------------------------------------------------------------------------------- public methods
  def __call__(self, batch, rng):
    """Every component once (creates the parameters in ``init``). Returns the decoded actions."""
    cfg = self.config
    features, mask = self.encode(batch)
    b = features.shape[0]
    proprio = observation.current_proprio(batch, cfg)
    z_hat = self._predict(jnp.zeros(latent_shape(cfg, b), jnp.float32), 0.0, proprio, features, mask)
    actions = self.action_decoder(z_hat, proprio)
    if has_lam(cfg):
      actions = actions + 0.0 * self.lam(batch, jax.random.fold_in(rng, _LAM_STREAM))
    return actions

  def sample_latent(self, batch, rng, *, noise: dict | None = None):
    """The latent policy's sample z_0 float32[B, L_z, Dc] (LAFP: ``num_inference_steps`` x-prediction Euler steps
    from the noise; BC: one regression call). ``noise``: optional {'latent': float32[B, L_z, Dc]}."""
    cfg = self.config
    features, mask = self.encode(batch)
    z_noise = self._noise(noise, rng, latent_shape(cfg, features.shape[0]))
    return self._sample(features, mask, observation.current_proprio(batch, cfg), z_noise)

  def sample_actions(self, batch, rng, *, noise: dict | None = None):
    """Normalised action chunk float32[B, H, A]: the prefix once, the latent sampler, the decoder. Never reads the
    LAM. ``noise``: optional {'latent': float32[B, L_z, Dc]} (the sampler's initial noise)."""
    cfg = self.config
    proprio = observation.current_proprio(batch, cfg)
    z = self.sample_latent(batch, rng, noise=noise)
    return self.action_decoder(z, proprio)

  def compute_loss(self, batch, rng, *, train: bool = True):
    """Terms (module docstring): 'latent_flow' (LAFP) or 'latent_bc' (BC) and 'decoder'. ``train`` enables
    ``proprio_dropout``. Returns (loss float32[], metrics: 'loss', 'loss/<term>', 'lafp/valid_pairs',
    'lafp/latent_mse' (the sample z_0 against z_t), 'lafp/latent_norm' (RMS of z_t)). The decoder's inputs are
    sown into the 'intermediates' collection (z_policy, z_lam, z_decoder) for tests and plots."""
    cfg = self.config
    lp = cfg.latent_policy
    weights = losses.active_weights(cfg.loss.weights, LOSS_TERMS, NAME)
    z_lam, valid = self.lam_latent(batch, rng)
    features, mask = self.encode(batch)
    b = features.shape[0]
    proprio = observation.current_proprio(batch, cfg, jax.random.fold_in(rng, _PROPRIO_STREAM) if train else None)
    values, metrics = {}, {}
    z_policy = None
    if "latent_flow" in weights:
      rng_t, rng_e = jax.random.split(jax.random.fold_in(rng, _FLOW_STREAM))
      tau = fm.sample_tau(rng_t, b, str(lp.time_dist))
      eps = jax.random.normal(rng_e, z_lam.shape, jnp.float32)
      z_hat = self._predict(fm.interpolate(z_lam, eps, tau), tau, proprio, features, mask)
      values["latent_flow"] = x_prediction_loss(z_hat, z_lam, eps, tau, valid, loss_space=str(lp.loss_space),
                                                t_eps=float(lp.t_eps))
    if "latent_bc" in weights:
      z_hat = self._predict(jnp.zeros_like(z_lam), 0.0, proprio, features, mask)
      values["latent_bc"] = fm.masked_mse(z_hat, z_lam, valid[:, None, None])
      z_policy = z_hat
    if z_policy is None and "decoder" in weights:
      z_noise = jax.random.normal(jax.random.fold_in(rng, _SAMPLE_STREAM), z_lam.shape, jnp.float32)
      z_policy = self._sample(features, mask, proprio, z_noise)
    metrics["lafp/latent_mse"] = jnp.zeros((), jnp.float32)
    if z_policy is not None:
      z_policy = jax.lax.stop_gradient(z_policy)
      metrics["lafp/latent_mse"] = fm.masked_mse(z_policy, z_lam, valid[:, None, None])
    if "decoder" in weights:
      for key in (specs.ACTION, specs.ACTION_PAD_MASK):
        if key not in batch:
          raise ValueError(f"config field model.loss.weights.decoder > 0 but the batch has no {key!r}")
      actions = batch[specs.ACTION].astype(jnp.float32)
      expected = (b, int(cfg.action_horizon), int(cfg.action_dim))
      if tuple(actions.shape) != expected:
        raise ValueError(f"batch['action'] has shape {tuple(actions.shape)}; config expects {expected} "
                         "(action_horizon, action_dim)")
      z_dec = interpolated_latent(z_policy, z_lam, float(cfg.decoder.interpolation))
      self.sow("intermediates", "z_policy", z_policy)
      self.sow("intermediates", "z_lam", z_lam)
      self.sow("intermediates", "z_decoder", z_dec)
      pad = batch[specs.ACTION_PAD_MASK].astype(bool) & valid[:, None, None]
      values["decoder"] = fm.masked_mse(self.action_decoder(z_dec, proprio), actions, pad)
    total, out = losses.weighted_total(values, weights, LOSS_TERMS)
    out.update(metrics)
    out["lafp/valid_pairs"] = jnp.mean(valid.astype(jnp.float32))
    out["lafp/latent_norm"] = jnp.sqrt(fm.masked_mse(z_lam, jnp.zeros_like(z_lam), valid[:, None, None]))
    return total, out


# ------------------------------------------------------------------------------------------ helpers
def data_requirements(cfg: ml_collections.ConfigDict) -> specs.DataRequirements:
  """The policy's inputs and labels, plus (with the LAM) its view among the cameras and its future frames."""
  base = specs.DataRequirements(
      cameras=tuple(cfg.image_keys), image_size=int(cfg.image_size), window=1,
      action_horizon=int(cfg.action_horizon), action_dim=int(cfg.action_dim), proprio_dim=int(cfg.proprio_dim),
      text_tokens=int(cfg.max_token_len), vocab_size=int(prefix_encoder.vocab_size(cfg.vlm)))
  if not has_lam(cfg):
    return base
  lam_req = lam_lib.LIBRARY.data_requirements(cfg.lam)
  cameras = tuple(base.cameras) + tuple(c for c in lam_req.cameras if c not in base.cameras)
  return specs.DataRequirements(**{**base.__dict__, "cameras": cameras, "future_offsets": lam_req.future_offsets,
                                   "future_cameras": lam_req.future_cameras})


def dummy_batch(cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict:
  """A random numpy batch (specs.py keys, tokens included) with the LAM's views and future frames."""
  rs = np.random.RandomState(seed)
  b, h, a = batch_size, int(cfg.action_horizon), int(cfg.action_dim)
  batch = observation.dummy_inputs(cfg, b, rs, prefix_encoder.vocab_size(cfg.vlm))
  batch[specs.ACTION] = rs.uniform(-1, 1, (b, h, a)).astype(np.float32)
  batch[specs.ACTION_PAD_MASK] = np.ones((b, h, a), bool)
  if not has_lam(cfg):
    return batch
  obs = batch[specs.OBSERVATION]
  size, offsets = int(cfg.image_size), tuple(int(k) for k in cfg.lam.future_offsets)
  obs[specs.FUTURE] = {}
  for view in cfg.lam.views:
    if view not in obs:
      obs[view] = rs.randint(0, 256, (b, 1, size, size, 3)).astype(np.uint8)
      obs[specs.IMAGE_MASK][view] = np.ones((b, 1), bool)
    obs[specs.FUTURE][view] = rs.randint(0, 256, (b, len(offsets), size, size, 3)).astype(np.uint8)
  obs[specs.FUTURE_PAD_MASK] = np.ones((b, len(offsets)), bool)
  return batch


# ------------------------------------------------------------------------------------------ the library
class LafpLibrary(interface.ModelLibrary):
  """The 'lafp' model library (``interface.ModelLibrary``)."""

  name = NAME
  variants = lafp_config.VARIANTS
  methods = frozenset({"sample_actions"})
  flop_modes = ("train_step", "sample_actions")

  def model_config(self, variant: str = "tiny") -> ml_collections.ConfigDict:
    return lafp_config.model_config(variant)

  def build(self, cfg: ml_collections.ConfigDict) -> LatentActionFlowPolicy:
    self.check_config(cfg)
    lafp_config.check(cfg, needs_lam=has_lam(cfg))
    return LatentActionFlowPolicy(cfg)

  def inference_config(self, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Without the latent action model (training only)."""
    return without_lam(cfg)

  def dummy_batch(self, cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict:
    return dummy_batch(cfg, batch_size, seed)

  def data_requirements(self, cfg: ml_collections.ConfigDict) -> specs.DataRequirements:
    return data_requirements(cfg)

  def analytic_flops(self, cfg: ml_collections.ConfigDict, batch_size: int, mode: str) -> float:
    """Modes: 'sample_actions' (prefix once + num_inference_steps latent-policy calls (1 for BC; cross-attention
    keys / values projected once with cache_context_kv) + the decoder), 'train_step' (3 x the forward of the
    trained parts: prefix, one latent-policy call, decoder; plus the forward-only z_0 sampler for LAFP and the
    frozen LAM's inverse model on one pair)."""
    prefix = lamp_config.prefix_length(cfg)
    width = prefix_encoder.width(cfg.vlm)
    vlm = flops.prefix_encoder_call(cfg.vlm, len(cfg.image_keys), int(cfg.max_token_len))
    length, dim = int(cfg.latent.code_length), int(cfg.latent.code_dim)
    call = flops.dit_action_call(cfg.latent_policy, length, dim, int(cfg.proprio_dim), prefix, width)
    bc = cfg.latent_policy.objective == "bc"
    steps = 1 if bc else int(cfg.num_inference_steps)
    kv = flops.dit_context_kv(cfg.latent_policy, prefix, width) if cfg.latent_policy.get("cache_context_kv",
                                                                                         True) else 0.0
    sampler = steps * call - (steps - 1) * kv
    d = cfg.decoder
    d_in = length * dim + (int(cfg.proprio_dim) if d.use_proprio else 0)
    dw, mlp = int(d.width), int(d.mlp_ratio) * int(d.width)
    decoder = 2 * d_in * dw + int(d.depth) * 2 * 2 * dw * mlp + 2 * dw * int(cfg.action_horizon) * int(cfg.action_dim)
    if mode == "sample_actions":
      total = vlm + sampler + decoder
    elif mode == "train_step":
      total = 3 * (vlm + call + decoder) + (0.0 if bc else sampler)
      if has_lam(cfg):
        total += lam_lib.LIBRARY.analytic_flops(cfg.lam, 1, "encode_latent")
    else:
      raise ValueError(f"unknown analytic_flops mode {mode!r} of 'lafp' (modes: {self.flop_modes})")
    return float(batch_size * total)


LIBRARY = LafpLibrary()
