"""Joint motion-image diffusion: a DiT motion head over VAE latents of optical-flow images, trained jointly with a
policy's action head and never run by ``sample_actions`` (the ``motion_image`` section of a policy config).

The method (joint learning with motion image diffusion, Fang et al.): a VLA (PaliGemma VLM + action head) gets a
second head that predicts the *flow image* of the current step (the optical flow from o_t to o_{t+k}, k spanning
the action chunk, HSV-encoded: ``lamp_jax.flow_image``) by flow matching in the latent space of a frozen VAE.
Both heads read the same VLM prefix and are trained together, so the shared VLM learns representations that
serve control and pixel motion alike. The head is absent at inference: the action path is unchanged, so it adds
no latency. Paper setting: SDXL VAE (a 3 x 224 x 224 flow image -> 4 x 28 x 28 latent), a 6-block DiT of about
400 M parameters, L = L_action + L_motion, the VAE frozen in every stage; warm-up (only the head trains, on
DROID flow, 40k steps at batch 128), then joint training of everything but the VAE.

Policies carrying it: π0 (``models/pi0.py``, the paper's setting: the head reads the VLM's last hidden states over
the prefix; ``pi0_config.with_motion_image``) and LaMP (``models/lamp.py``, the w/o-motion policy in
configs/sim.py; the head reads the VLM prefix features before guidance). Stages: ``configs/common.py``
``motion_image_stages``. Predicted vs true flow images of a trained policy: ``lamp_jax.eval.motion_image_report``.

Data flow (letters as specs.py; S flow-image side, f = VAE downsampling, h = w = S / f, L latent channels,
p patch size, N = (h / p) (w / p) latent tokens, P VLM prefix tokens, D width):

  optical_flow uint8[B, S, S, 3] ─► [-1, 1] ─► frozen VAE encoder, posterior mean ─► (no gradient)
      z = vae.scaling_factor * (mean - vae.shift_factor)       float32[B, h, w, L]
  z, eps ~ N(0, I), tau ─► z_tau = (1 - tau) eps + tau z ─► MotionImageDiT(z_tau, tau, VLM prefix):
      patchify p x p ─► Dense ─► + 2-D sin-cos positions ─► ``depth`` blocks, each
        adaLN-zero self-attention over the N latent tokens,
        adaLN-zero cross-attention to the VLM prefix (latents are the queries, prefix features keys / values,
          padded prefix tokens masked),
        adaLN-zero MLP
      (shift / scale / gate of every sub-layer from the flow-time embedding: 9 vectors per block, zero-initialised)
      ─► final adaLN + LayerNorm + Dense ─► unpatchify ─► velocity float32[B, h, w, L]
  loss term 'motion_image' = ``flow_matching.flow_matching_loss`` (v = z - eps), averaged over the latent values of
  the examples with ``has_optical_flow`` (examples without a flow image do not count).

Visualisation (``reconstruct``): Euler integration 0 -> 1 from noise in ``reconstruction_steps`` steps, then the
VAE decoder: a predicted flow image float32[B, S, S, 3] in about [-1, 1] (``vae.images_to_uint8`` for PNGs).

Latent scaling is explicit: the VAE section of the policy config carries ``scaling_factor`` (1 / std of the VAE's
latents on the data) and ``shift_factor`` (their mean), measured once on the training data when the VAE is trained
(``AutoencoderKL`` report, ``lamp_jax.training.prerequisites``) and written into the policy config; a policy
config whose head is enabled and whose VAE ``scaling_factor`` is unset (0) is an error naming the field.

Config section (``motion_image_config``): enabled · width · depth · num_heads · mlp_ratio · patch_size ·
time_frequency_dim · time_dist ('pi0_beta' as the action head, or 'uniform') · qk_norm · scan_layers · remat ·
remat_policy · scan_unroll · reconstruction_steps. The VAE is the policy's ``vae`` section (``models/vae.py`` model
config), its parameters the policy's top-level ``vae`` subtree (loaded from a trained VAE run with a ``config.init``
entry of kind 'checkpoint', or from a diffusers AutoencoderKL with kind 'diffusers_vae'; frozen by a stage regex
``^vae/``).
Parameters of the head: top-level ``motion_image``.

Policy-side helpers (one copy for every policy that carries the head; the policy passes its VLM prefix features):
``add`` (the sections and the loss weight), ``enabled``, ``loss_terms``, ``check``, ``build`` (the VAE and the head
modules for the policy's ``setup``), ``init_touch``, ``loss_value``, ``reconstruct_images``, ``without`` (the
inference config), ``add_dummy_flow``, ``without_head`` (the bench's comparison config); FLOPs:
``flops.motion_image_train`` / ``flops.motion_image_reconstruction``.
"""

from __future__ import annotations

from typing import Any, Callable

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import flow_image
from lamp_jax import specs
from lamp_jax.models import dit
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import layers
from lamp_jax.models import vae as vae_lib

Dtype = Any
LOSS_TERM = "motion_image"
TOP_LEVEL = ("motion_image", "vae")  # the parameter subtrees the head adds to a policy


def motion_image_config(**overrides) -> ml_collections.ConfigDict:
  """The ``motion_image`` section of a policy config; defaults = off, the paper's 6 blocks at width 1536
  (about 0.37 B parameters against a 2048-wide Gemma prefix; the paper gives 'about 400 M', not the width)."""
  cfg = ml_collections.ConfigDict(dict(
      enabled=False, width=1536, depth=6, num_heads=16, mlp_ratio=4, patch_size=2, time_frequency_dim=256,
      # Training time distribution of the head's flow loss (the paper draws tau from a Beta distribution for both
      # heads, as pi0 does).
      time_dist="pi0_beta", qk_norm=True, scan_layers=True, remat=False, remat_policy="nothing_saveable",
      scan_unroll=1,
      # Euler steps of ``reconstruct`` (visualisation only: the head never runs when sampling actions).
      reconstruction_steps=10))
  cfg.update(overrides)
  return cfg


def latent_shape(vae_cfg: Any, image_size: int) -> tuple[int, int, int]:
  """(h, w, L) of the latent of an ``image_size`` x ``image_size`` flow image."""
  arch = vae_lib.config_from_dict(vae_cfg)
  f = arch.downsample_factor
  if image_size % f:
    raise ValueError(f"flow images of {image_size} x {image_size} pixels (config field model.image_size) are not "
                     f"a multiple of the VAE's downsampling {f} (model.vae.block_out_channels)")
  return image_size // f, image_size // f, arch.latent_channels


def num_tokens(cfg: ml_collections.ConfigDict, vae_cfg: Any, image_size: int) -> int:
  """N latent tokens of the DiT."""
  h, w, _ = latent_shape(vae_cfg, image_size)
  p = int(cfg.patch_size)
  return (h // p) * (w // p)


def check_config(cfg: ml_collections.ConfigDict, vae_cfg: Any, image_size: int) -> None:
  """Raises naming the config field when the head's sizes do not fit together."""
  h, w, _ = latent_shape(vae_cfg, image_size)
  p = int(cfg.patch_size)
  if p < 1 or h % p or w % p:
    raise ValueError(f"config field model.motion_image.patch_size={p} does not divide the {h} x {w} latent of a "
                     f"{image_size}-pixel flow image")
  if cfg.width % cfg.num_heads:
    raise ValueError(f"config field model.motion_image.num_heads={cfg.num_heads} does not divide "
                     f"model.motion_image.width={cfg.width}")
  if cfg.width % 4:
    raise ValueError(f"config field model.motion_image.width={cfg.width} must be a multiple of 4 (2-D sin-cos "
                     "positions)")
  if int(cfg.depth) < 1:
    raise ValueError(f"config field model.motion_image.depth={cfg.depth} must be >= 1")


def patchify(x: jax.Array, p: int) -> jax.Array:
  """float[B, h, w, C] -> float[B, (h/p)(w/p), p p C] (row-major tokens, each patch row-major then channels)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, p: int, h: int, w: int) -> jax.Array:
  """Inverse of ``patchify``: float[B, (h/p)(w/p), p p C] -> float[B, h, w, C]."""
  b, _, ppc = tokens.shape
  c = ppc // (p * p)
  x = tokens.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


class MotionImageBlock(nn.Module):
  """adaLN-zero DiT block: self-attention over the latent tokens, cross-attention to the prefix, MLP; each
  sub-layer's input modulated (shift, scale) and its residual gated by vectors from the time embedding."""

  num_heads: int
  head_dim: int
  mlp_dim: int
  qk_norm: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, context, context_mask):
    x = layers.with_logical_constraint(x, dit.ACTIVATION_AXES)
    width = x.shape[-1]
    (shift_sa, scale_sa, gate_sa, shift_ca, scale_ca, gate_ca, shift_mlp, scale_mlp,
     gate_mlp) = dit.Modulation(9, width, self.dtype, name="mod")(temb)

    def norm(name, h, shift, scale):
      return dit.modulate(layers.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name=name)(h), shift,
                          scale)

    kw = dict(num_heads=self.num_heads, head_dim=self.head_dim, qk_norm=self.qk_norm, dtype=self.dtype)
    h = dit.Attention(name="self_attn", **kw)(norm("norm1", x, shift_sa, scale_sa))
    x = x + gate_sa.astype(self.dtype) * h
    mask = jnp.broadcast_to(context_mask[:, None, :], (x.shape[0], x.shape[1], context_mask.shape[1]))
    h = dit.Attention(name="cross_attn", **kw)(norm("norm2", x, shift_ca, scale_ca), context, mask)
    x = x + gate_ca.astype(self.dtype) * h
    h = dit.Mlp(self.mlp_dim, self.dtype, name="mlp")(norm("norm3", x, shift_mlp, scale_mlp))
    return x + gate_mlp.astype(self.dtype) * h, None


class MotionImageDiT(nn.Module):
  """``__call__(z_tau float[B, h, w, L], tau float[B], context float[B, P, Dc], context_mask bool[B, P])
  -> velocity float32[B, h, w, L]`` (module docstring)."""

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z_tau, tau, context, context_mask):
    cfg = self.config
    b, h, w, channels = z_tau.shape
    p, width = int(cfg.patch_size), int(cfg.width)
    if h % p or w % p:
      raise ValueError(f"motion-image latents of {h} x {w} are not divisible by model.motion_image.patch_size={p}")
    tokens = patchify(z_tau.astype(jnp.float32), p).astype(self.dtype)
    x = layers.DenseGeneral(width, ("patch_in", "embed"), dtype=self.dtype, name="patch_in")(tokens)
    x = x + layers.sincos_2d(h // p, w // p, width)[None].astype(self.dtype)
    temb = dit.TimestepEmbedder(width, int(cfg.time_frequency_dim), self.dtype, name="time_embed")(
        jnp.broadcast_to(jnp.asarray(tau, jnp.float32), (b,)))
    blocks = dit.stack(MotionImageBlock, int(cfg.depth), scan=bool(cfg.scan_layers), remat=bool(cfg.remat),
                       remat_policy=str(cfg.get("remat_policy", layers.DEFAULT_REMAT_POLICY)),
                       unroll=cfg.get("scan_unroll", 1), num_broadcast_args=3, name="blocks",
                       num_heads=int(cfg.num_heads), head_dim=width // int(cfg.num_heads),
                       mlp_dim=int(cfg.mlp_ratio) * width, qk_norm=bool(cfg.qk_norm), dtype=self.dtype)
    x = blocks(x, temb, context.astype(self.dtype), context_mask.astype(bool))
    shift, scale = dit.Modulation(2, width, self.dtype, name="out_mod")(temb)
    x = dit.modulate(layers.LayerNorm(use_scale=False, use_bias=False, dtype=self.dtype, name="norm_out")(x), shift,
                     scale)
    out = layers.DenseGeneral(p * p * channels, ("embed", None), dtype=self.dtype, name="patch_out")(x)
    return unpatchify(out.astype(jnp.float32), p, h, w)


# ------------------------------------------------------------------------------------------ policy helpers
def flow_images(batch: dict, image_size: int) -> tuple[jax.Array, jax.Array]:
  """The batch's flow images in [-1, 1] float32[B, S, S, 3] and ``has_optical_flow`` bool[B] (all True when the
  key is absent). A missing key, another size or channel count is an error naming the key."""
  if specs.OPTICAL_FLOW not in batch:
    raise ValueError(f"config field model.loss.weights.{LOSS_TERM} > 0 but the batch has no "
                     f"{specs.OPTICAL_FLOW!r} (set data.pipeline.optical_flow=True; datasets without exact flow "
                     "need data.pipeline.optical_flow_estimator)")
  images = batch[specs.OPTICAL_FLOW]
  if images.ndim != 4 or tuple(images.shape[1:]) != (image_size, image_size, 3):
    raise ValueError(f"batch[{specs.OPTICAL_FLOW!r}] has shape {tuple(images.shape)}; the motion-image head "
                     f"expects uint8[B, {image_size}, {image_size}, 3] flow images (config field model.image_size="
                     f"{image_size}, RGB)")
  b = images.shape[0]
  present = batch.get(specs.HAS_OPTICAL_FLOW)
  if present is None:
    present = jnp.ones((b,), bool)
  elif tuple(present.shape) != (b,):
    raise ValueError(f"batch[{specs.HAS_OPTICAL_FLOW!r}] has shape {tuple(present.shape)}; expected bool[{b}]")
  return vae_lib.images_from_uint8(images), jnp.asarray(present).astype(bool)


def check_scaling(vae_cfg: Any) -> None:
  """The head needs the measured latent scaling: ``model.vae.scaling_factor`` > 0."""
  if not float(vae_cfg.scaling_factor) > 0:
    raise ValueError(f"config field model.vae.scaling_factor={vae_cfg.scaling_factor}: set it to 1 / std of the "
                     "VAE's latents on the data (the VAE run's report.json 'scaling_factor'; configs/sim.py's "
                     "motion_image variant fills it from its VAE prerequisite)")


def target_latents(vae: vae_lib.AutoencoderKL, images: jax.Array) -> jax.Array:
  """The flow-matching target: scaled posterior-mean latents float32[B, h, w, L] of the frozen VAE (no gradient
  flows into the VAE or its input)."""
  return jax.lax.stop_gradient(vae.latents(jax.lax.stop_gradient(images)))


def loss(vae: vae_lib.AutoencoderKL, head: MotionImageDiT, batch: dict, features: jax.Array,
         feature_mask: jax.Array, rng: jax.Array, *, image_size: int, time_dist: str) -> jax.Array:
  """Term 'motion_image': flow matching of the VAE latents of the batch's flow images, the head conditioned on the
  VLM prefix ``features`` float[B, P, Dv] / ``feature_mask`` bool[B, P]. Examples without a flow image weigh 0.
  Returns float32[]."""
  images, present = flow_images(batch, image_size)
  z = target_latents(vae, images)
  z = jnp.where(present[:, None, None, None], z, 0.0)  # absent images (zeros) cannot influence the loss
  return fm.flow_matching_loss(rng, z, lambda x, tau: head(x, tau, features, feature_mask), time_dist=time_dist,
                               mask=present[:, None, None, None])


def reconstruct(module: nn.Module, head_of: Callable[[nn.Module], MotionImageDiT],
                vae: vae_lib.AutoencoderKL, features: jax.Array, feature_mask: jax.Array, rng: jax.Array, *,
                latent: tuple[int, int, int], num_steps: int, noise: jax.Array | None = None) -> jax.Array:
  """Predicted flow images float32[B, S, S, 3] (about [-1, 1]): Euler integration of the head 0 -> 1 from noise
  (``noise`` float32[B, h, w, L] replaces the draw), decoded by the VAE.

  ``module`` is the bound policy module the Euler loop is lifted over and ``head_of(module)`` its head."""
  b = features.shape[0]
  shape = (b,) + tuple(latent)
  x0 = jax.random.normal(rng, shape, jnp.float32) if noise is None else jnp.asarray(noise, jnp.float32)
  if tuple(x0.shape) != shape:
    raise ValueError(f"reconstruct_motion_image noise has shape {tuple(x0.shape)}; expected {shape}")

  def step(mdl, x, tau):
    return head_of(mdl)(x, jnp.full((b,), tau), features, feature_mask), ()

  z, _ = fm.euler_integrate_module(module, step, x0, int(num_steps), ())
  return vae.decode_latents(z)


def dummy_flow_images(vae_cfg: Any, batch_size: int, image_size: int, seed: int) -> dict:
  """'optical_flow' uint8[B, S, S, 3] (synthetic manipulation-like flow images, ``vae.synthetic_flow``) and
  'has_optical_flow' bool[B] for a policy's dummy batch; its own random stream (other keys' draws unchanged)."""
  del vae_cfg
  rng = np.random.default_rng([seed, 31])
  max_magnitude = flow_image.default_max_magnitude(image_size)
  flow = vae_lib.synthetic_flow(rng, batch_size, image_size, max_magnitude)
  return {specs.OPTICAL_FLOW: flow_image.flow_to_rgb(flow, max_magnitude),
          specs.HAS_OPTICAL_FLOW: np.ones((batch_size,), bool)}


# ------------------------------------------------------------------------------------------ policy plumbing
def add(model_cfg: ml_collections.ConfigDict, vae_variant: str, *, enable: bool = False, weight: float = 0.0,
        **head_overrides) -> ml_collections.ConfigDict:
  """``model_cfg`` (a policy's model section) with the head's sections: ``motion_image`` (``motion_image_config``
  with ``head_overrides``; ``enabled`` = ``enable``), ``vae`` (``vae.model_config(vae_variant)``, its image_size and
  dtype following the policy's) and the loss weight ``loss.weights.motion_image`` = ``weight``."""
  m = model_cfg
  m.motion_image = motion_image_config(**head_overrides)
  m.motion_image.enabled = bool(enable)
  m.vae = vae_lib.model_config(vae_variant)
  m.vae.image_size = m.get_ref("image_size")  # the flow images have the cameras' size
  m.vae.dtype = m.get_ref("dtype")
  m.loss.weights[LOSS_TERM] = float(weight)
  return m


def enabled(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the policy config has the head on (a ``motion_image`` section with ``enabled``)."""
  return cfg.get("motion_image", None) is not None and bool(cfg.motion_image.enabled)


def loss_terms(cfg: ml_collections.ConfigDict, base: tuple[str, ...]) -> tuple[str, ...]:
  """The policy's declared loss terms: its ``base`` terms, plus 'motion_image' when the config has the head's
  section (on or off: a weight of 0 is allowed either way)."""
  if LOSS_TERM in base or cfg.get("motion_image", None) is None:
    return tuple(base)
  return tuple(base) + (LOSS_TERM,)


def check(cfg: ml_collections.ConfigDict) -> None:
  """Rejects a policy config whose head is on with unset latent scaling or sizes that do not fit (the build)."""
  if enabled(cfg):
    check_scaling(cfg.vae)
    check_config(cfg.motion_image, cfg.vae, int(cfg.image_size))


def check_weights(cfg: ml_collections.ConfigDict, weights: dict) -> None:
  """A positive 'motion_image' weight needs the head on (names both fields)."""
  if LOSS_TERM in weights and not enabled(cfg):
    raise ValueError(f"config field model.loss.weights.{LOSS_TERM} > 0 but model.motion_image.enabled=False (no "
                     "motion-image head)")


def build(cfg: ml_collections.ConfigDict) -> tuple[vae_lib.AutoencoderKL, MotionImageDiT]:
  """(the frozen VAE, the head) of a policy config with the head on (assign them in the policy's ``setup`` as
  ``self.vae`` and ``self.motion_image``: the parameter subtrees ``TOP_LEVEL``)."""
  return vae_lib.AutoencoderKL(cfg.vae), MotionImageDiT(cfg.motion_image, dtype=jnp.dtype(cfg.dtype))


def init_touch(cfg: ml_collections.ConfigDict, vae: vae_lib.AutoencoderKL, head: MotionImageDiT, batch: dict,
               features: jax.Array, feature_mask: jax.Array) -> None:
  """Creates the VAE's and the head's parameters in the policy's ``init`` (encoder, decoder and one head call)."""
  images, _ = flow_images(batch, int(cfg.image_size))
  latents = vae.latents(images)
  vae.decode_latents(latents)
  head(latents, jnp.zeros((latents.shape[0],)), features, feature_mask)


# The head's noise / time draws come from fold_in(policy loss key, _STREAM): the other terms' draws do not
# depend on whether the head is on.
_STREAM = 5


def loss_value(cfg: ml_collections.ConfigDict, vae: vae_lib.AutoencoderKL, head: MotionImageDiT, batch: dict,
               features: jax.Array, feature_mask: jax.Array, rng: jax.Array) -> jax.Array:
  """Term 'motion_image' of a policy's ``compute_loss`` (``loss``) from its loss key ``rng`` and its VLM prefix
  ``features`` float[B, P, Dv] / ``feature_mask`` bool[B, P]. Returns float32[]."""
  return loss(vae, head, batch, features, feature_mask, jax.random.fold_in(rng, _STREAM),
              image_size=int(cfg.image_size), time_dist=str(cfg.motion_image.time_dist))


def reconstruct_images(cfg: ml_collections.ConfigDict, module: nn.Module,
                       head_of: Callable[[nn.Module], MotionImageDiT], vae: vae_lib.AutoencoderKL,
                       features: jax.Array, feature_mask: jax.Array, rng: jax.Array, *, num_steps: int | None = None,
                       noise: jax.Array | None = None) -> jax.Array:
  """A policy's ``reconstruct_motion_image``: ``reconstruct`` with ``num_steps`` (default
  ``motion_image.reconstruction_steps``) Euler steps. Returns float32[B, S, S, 3] (about [-1, 1])."""
  if not enabled(cfg):
    raise ValueError("reconstruct_motion_image needs model.motion_image.enabled=True")
  steps = int(cfg.motion_image.reconstruction_steps if num_steps is None else num_steps)
  return reconstruct(module, head_of, vae, features, feature_mask, rng,
                     latent=latent_shape(cfg.vae, int(cfg.image_size)), num_steps=steps, noise=noise)


def without(cfg: ml_collections.ConfigDict, *, drop_sections: bool = False) -> ml_collections.ConfigDict:
  """``cfg`` with the head off (a copy; ``cfg`` itself when it is off): ``enabled`` False and weight 0, or, with
  ``drop_sections``, no ``motion_image`` / ``vae`` sections and no weight at all (the config of a policy that
  never had the head). The head is training-only, so this is the policy ``sample_actions`` runs (its parameter
  tree lacks ``TOP_LEVEL``)."""
  if not enabled(cfg):
    return cfg
  out = copy.deepcopy(cfg)
  if drop_sections:
    with out.unlocked():
      del out["motion_image"], out["vae"]
      del out.loss.weights[LOSS_TERM]
    return out
  out.motion_image.enabled = False
  out.loss.weights[LOSS_TERM] = 0.0
  return out


def without_head(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``cfg`` with the head disabled but its sections kept (the same parameters minus ``TOP_LEVEL``): the other
  side of the bench's with / without comparison."""
  out = copy.deepcopy(cfg)
  out.motion_image.enabled = False
  out.loss.weights[LOSS_TERM] = 0.0
  return out


def add_dummy_flow(cfg: ml_collections.ConfigDict, batch: dict, batch_size: int, seed: int) -> dict:
  """``batch`` (a policy's dummy batch of ``batch_size`` examples) with flow images when the head is on
  (``dummy_flow_images``: their own random stream, the other keys unchanged)."""
  if not enabled(cfg):
    return batch
  return {**dummy_flow_images(cfg.vae, batch_size, int(cfg.image_size), seed), **batch}
