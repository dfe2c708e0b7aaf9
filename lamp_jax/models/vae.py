"""AutoencoderKL (the Stable Diffusion / SDXL VAE) for flow images: encoder, diagonal Gaussian posterior, decoder.

Architecture (diffusers ``AutoencoderKL`` with ``DownEncoderBlock2D`` / ``UpDecoderBlock2D`` blocks; C_i =
``block_out_channels[i]``, n levels, L = ``latent_channels``, every GroupNorm has ``norm_num_groups`` groups and
epsilon 1e-6, every activation is SiLU):

  encoder   conv_in 3x3 (in -> C_0)
            down_blocks_i: ``layers_per_block`` ResnetBlock2D (C_{i-1} -> C_i), then Downsample2D (pad right/bottom
              by one, 3x3 stride-2 conv) except on the last level
            mid_block: ResnetBlock2D, single-head self-attention over the H x W positions (GroupNorm, q/k/v/out
              linear maps, residual), ResnetBlock2D (attention off with ``mid_block_add_attention=False``)
            conv_norm_out (GroupNorm), SiLU, conv_out 3x3 (C_{n-1} -> 2L moments: mean | logvar; L with
              ``double_z=False``)
  quant_conv     1x1 (2L -> 2L)               (``use_quant_conv``)
  posterior      mean, logvar = split(moments); logvar clipped to [-30, 20]; sample = mean + exp(logvar / 2) * eps
  post_quant_conv 1x1 (L -> L)                (``use_post_quant_conv``)
  decoder   conv_in 3x3 (L -> C_{n-1}), mid_block as above,
            up_blocks_i (reversed channels): ``layers_per_block + 1`` ResnetBlock2D, then Upsample2D (nearest 2x,
              3x3 conv) except on the last level
            conv_norm_out, SiLU, conv_out 3x3 (C_0 -> out)
  ResnetBlock2D: GroupNorm, SiLU, conv1 3x3, GroupNorm, SiLU, conv2 3x3, + input (1x1 conv_shortcut when the
  channel count changes).

With n = 4 levels the latent is float32[B, H/8, W/8, L] (SDXL: a 224 x 224 flow image -> 28 x 28 x 4).
Images are NHWC float in [-1, 1] (``images_from_uint8``); NCHW diffusers tensors map with
``lamp_jax.models.weights.diffusers_vae`` (strict import / export, bit-exact round trip).

Latent scaling: ``latents`` returns ``z = scaling_factor * (sample - shift_factor)`` (SD: 0.18215, SDXL: 0.13025,
no shift), the unit-variance latent a diffusion head predicts; ``decode_latents`` inverts it.
With ``double_z=False`` the encoder emits the mean only: the posterior is deterministic (logvar None, no KL).

Parameter names mirror diffusers' (``down_blocks.0.resnets.1.conv1`` -> ``down_blocks_0/resnets_1/conv1``,
``downsamplers.0.conv`` -> ``downsample``, ``upsamplers.0.conv`` -> ``upsample``, ``attentions.0`` ->
``attention``, ``to_out.0`` -> ``to_out``). Logical axes: convolution kernels (None, None, 'conv_in',
'conv_out'), attention kernels ('conv_in', 'conv_out'), biases ('conv_out',), GroupNorm ('norm',).
Precision: parameters float32; activations in ``dtype``; GroupNorm, softmax and the posterior in float32.

Training a small VAE from scratch on flow images (when no pretrained SDXL VAE checkpoint is at hand):
``compute_loss`` = ``loss.reconstruction_weight`` * reconstruction (per-value L1 or MSE) + ``loss.kl_weight`` *
KL(posterior || N(0, I)) summed over the latent and divided by the number of image values (H * W * C), so the
weight means what the LDM recipe's ``kl_weight`` means (both terms are per-image sums there; its perceptual and
adversarial terms are not used here).

Public module-level helpers: ``model_config(variant)``, ``build``, ``init_variables``, ``init_params``,
``abstract_params``, ``logical_axes``, ``dummy_batch``, ``param_count``; and ``LIBRARY``, the 'vae' model library
(``interface.ModelLibrary``), so that a VAE trains through the one trainer (``python -m lamp_jax.train
--config=configs/sim.py:vae``: reads only the batch's flow images) and reports its reconstruction error and latent
statistics (``report``: the scaling a diffusion head over its latents needs). A policy with a motion-image head
loads a trained VAE run into its ``vae`` subtree (``config.init`` entry of kind 'checkpoint', source '/').
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import flow_image
from lamp_jax import specs
from lamp_jax.models import interface
from lamp_jax.models import layers

VARIANTS = ("tiny", "sim", "sd", "sdxl")
NORM_EPS = 1e-6  # every GroupNorm of diffusers' AutoencoderKL
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # diffusers' DiagonalGaussianDistribution clamp
RECONSTRUCTION_LOSSES = ("l1", "mse")

# Torch's default Conv2d / Linear weight initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
CONV_AXES = (None, None, "conv_in", "conv_out")
LINEAR_AXES = ("conv_in", "conv_out")


# ------------------------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """AutoencoderKL hyper-parameters (diffusers ``AutoencoderKL`` config names).

  Attributes:
    in_channels / out_channels: image channels in / out (3 for RGB flow images).
    block_out_channels: C_i per level; n levels downsample by 2^(n-1) (4 levels: H/8).
    layers_per_block: ResnetBlock2D per encoder level (the decoder has one more per level).
    latent_channels: L.
    norm_num_groups: GroupNorm groups (divides every C_i).
    scaling_factor / shift_factor: ``z = scaling_factor * (sample - shift_factor)`` (shift None = 0).
    mid_block_add_attention: self-attention in both mid blocks.
    double_z: the encoder emits mean and logvar (True in every diffusers AutoencoderKL); False: mean only.
    use_quant_conv / use_post_quant_conv: the 1x1 convolutions around the latent.
    dtype: activation dtype name, 'float32' or 'bfloat16'.
  """

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  mid_block_add_attention: bool = True
  double_z: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  dtype: str = "float32"

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))
    if not self.block_out_channels:
      raise ValueError("VAEConfig.block_out_channels is empty")
    for field in ("in_channels", "out_channels", "layers_per_block", "latent_channels", "norm_num_groups"):
      if int(getattr(self, field)) < 1:
        raise ValueError(f"VAEConfig.{field}={getattr(self, field)} must be >= 1")
    bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
    if bad:
      raise ValueError(f"VAEConfig.block_out_channels={self.block_out_channels}: {bad} not divisible by "
                       f"norm_num_groups={self.norm_num_groups}")
    if not self.scaling_factor > 0:
      raise ValueError(f"VAEConfig.scaling_factor={self.scaling_factor} must be positive")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"VAEConfig.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

  @property
  def downsample_factor(self) -> int:
    return 2**(len(self.block_out_channels) - 1)

  @property
  def moment_channels(self) -> int:
    return 2 * self.latent_channels if self.double_z else self.latent_channels


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(VAEConfig))


def config_from_dict(cfg: Any) -> VAEConfig:
  """``VAEConfig`` from a model ConfigDict / dict (its architecture fields; others such as loss are ignored)."""
  if isinstance(cfg, VAEConfig):
    return cfg
  return VAEConfig(**{name: (tuple(cfg[name]) if name == "block_out_channels" else cfg[name])
                      for name in CONFIG_FIELDS if name in cfg})


def model_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  """The VAE model section: 'tiny' (tests), 'sim' (64 x 64 simulator flow images, CPU-trainable), 'sd'
  (Stable Diffusion 1.x / 2.x VAE) or 'sdxl' (the SDXL VAE the paper keeps frozen; 83.65 M parameters).

  Fields: name, variant, the ``VAEConfig`` fields, image_size (square side of ``dummy_batch`` images and of the
  flow images it is trained on), flow_max_magnitude (pixels, for synthetic flow images), sample_posterior
  (training draws z from the posterior; False trains on its mean), loss (reconstruction 'l1' | 'mse',
  reconstruction_weight, kl_weight).
  """
  if variant not in VARIANTS:
    raise ValueError(f"unknown VAE variant {variant!r}; known: {VARIANTS}")
  sizes = {
      # Odd per-group widths (3, 5 channels per group) for tests; 2 levels: H/2 latents.
      "tiny": dict(block_out_channels=(12, 20), layers_per_block=1, norm_num_groups=4, image_size=24,
                   scaling_factor=1.0),
      # SD-shaped (4 levels, H/8) but narrow: a 64 x 64 flow image -> 8 x 8 x 4 latent. 0.98 M parameters,
      # 0.61 GFLOP per image forward, 1.82 forward + backward (XLA cost analysis); (32, 64, 128, 128) would be
      # 3.9 M and 7.2 GFLOP per trained image, 5.5x LaMP 'sim' (1.3).
      "sim": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=1, norm_num_groups=8, image_size=64,
                  scaling_factor=1.0),
      "sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, image_size=512,
                 scaling_factor=0.18215),
      "sdxl": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                   image_size=224, scaling_factor=0.13025),
  }[variant]
  defaults = VAEConfig()
  cfg = ml_collections.ConfigDict()
  cfg.name = "vae"
  cfg.variant = variant
  for field in CONFIG_FIELDS:
    cfg[field] = getattr(defaults, field)
  cfg.shift_factor = 0.0  # diffusers' None (no shift); a float so that overrides type-check
  cfg.image_size = 0
  cfg.update(sizes)
  cfg.flow_max_magnitude = flow_image.default_max_magnitude(cfg.image_size)
  cfg.sample_posterior = True
  # 'tiny' / 'sim' scaling_factor 1.0: set it to 1 / std of the trained VAE's latents before a diffusion head
  # uses them (what SD's 0.18215 is for its VAE).
  cfg.loss = ml_collections.ConfigDict(dict(reconstruction="l1", reconstruction_weight=1.0, kl_weight=1e-6))
  return cfg


# ------------------------------------------------------------------------------------------ layers
def _conv(features: int, kernel: int, name: str, dtype, *, stride: int = 1, padding=None) -> nn.Conv:
  """A k x k convolution with torch's default init and logical axes; 'same' padding (k - 1) / 2 by default."""
  pad = (kernel - 1) // 2
  padding = ((pad, pad), (pad, pad)) if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype,
                 param_dtype=jnp.float32, name=name,
                 kernel_init=layers.param_with_axes(_TORCH_DEFAULT_INIT, CONV_AXES),
                 bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("conv_out",)))


def _linear(features: int, name: str, dtype) -> nn.Dense:
  return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                  kernel_init=layers.param_with_axes(_TORCH_DEFAULT_INIT, LINEAR_AXES),
                  bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("conv_out",)))


def _group_norm(x: jax.Array, num_groups: int, name: str, dtype) -> jax.Array:
  """GroupNorm over (H, W, the group's channels) in float32 (two-pass variance) of float[B, H, W, C], cast to
  ``dtype``; scale / bias carry 'norm'. Call inside a compact method (the norm is a submodule ``name``)."""
  y = nn.GroupNorm(num_groups=num_groups, epsilon=NORM_EPS, dtype=jnp.float32, param_dtype=jnp.float32,
                   use_fast_variance=False, name=name,
                   scale_init=layers.param_with_axes(nn.initializers.ones_init(), ("norm",)),
                   bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("norm",)))(x.astype(jnp.float32))
  return y.astype(dtype)


class ResnetBlock2D(nn.Module):
  """x + conv2(SiLU(GN(conv1(SiLU(GN(x)))))); the skip is a 1x1 conv when the channel count changes.

  Call: float[B, H, W, C_in] -> float[B, H, W, out_channels].
  """

  out_channels: int
  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.silu(_group_norm(x, self.num_groups, "norm1", self.dtype))
    h = _conv(self.out_channels, 3, "conv1", self.dtype)(h)
    h = nn.silu(_group_norm(h, self.num_groups, "norm2", self.dtype))
    h = _conv(self.out_channels, 3, "conv2", self.dtype)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "conv_shortcut", self.dtype)(x)
    return x + h


class SpatialSelfAttention(nn.Module):
  """Single-head self-attention over the H x W positions with a GroupNorm in front and a residual.

  Call: float[B, H, W, C] -> float[B, H, W, C]; head width C, logits scaled by 1/sqrt(C), float32 softmax.
  """

  num_groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = _group_norm(x, self.num_groups, "group_norm", self.dtype).reshape(b, h * w, 1, c)
    q = _linear(c, "to_q", self.dtype)(y)
    k = _linear(c, "to_k", self.dtype)(y)
    v = _linear(c, "to_v", self.dtype)(y)
    out = layers.dot_product_attention(q, k, v, mask=None)  # float[B, HW, 1, C]
    out = _linear(c, "to_out", self.dtype)(out.reshape(b, h * w, c))
    return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
  """ResnetBlock2D, (SpatialSelfAttention), ResnetBlock2D at constant width."""

  num_groups: int
  add_attention: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = ResnetBlock2D(c, self.num_groups, self.dtype, name="resnets_0")(x)
    if self.add_attention:
      x = SpatialSelfAttention(self.num_groups, self.dtype, name="attention")(x)
    return ResnetBlock2D(c, self.num_groups, self.dtype, name="resnets_1")(x)


class DownBlock(nn.Module):
  """``num_layers`` ResnetBlock2D, then (optionally) pad right/bottom by 1 and a 3x3 stride-2 conv."""

  out_channels: int
  num_layers: int
  num_groups: int
  add_downsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_layers):
      x = ResnetBlock2D(self.out_channels, self.num_groups, self.dtype, name=f"resnets_{j}")(x)
    if self.add_downsample:
      x = _conv(self.out_channels, 3, "downsample", self.dtype, stride=2, padding=((0, 1), (0, 1)))(x)
    return x


class UpBlock(nn.Module):
  """``num_layers`` ResnetBlock2D, then (optionally) nearest 2x upsampling and a 3x3 conv."""

  out_channels: int
  num_layers: int
  num_groups: int
  add_upsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.num_layers):
      x = ResnetBlock2D(self.out_channels, self.num_groups, self.dtype, name=f"resnets_{j}")(x)
    if self.add_upsample:
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = _conv(self.out_channels, 3, "upsample", self.dtype)(x)
    return x


class Encoder(nn.Module):
  """float[B, H, W, in] -> float32[B, H/f, W/f, moment_channels] (f = ``downsample_factor``)."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    channels = cfg.block_out_channels
    x = _conv(channels[0], 3, "conv_in", dtype)(x.astype(dtype))
    for i, c in enumerate(channels):
      x = DownBlock(c, cfg.layers_per_block, cfg.norm_num_groups, i < len(channels) - 1, dtype,
                    name=f"down_blocks_{i}")(x)
    x = MidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, dtype, name="mid_block")(x)
    x = nn.silu(_group_norm(x, cfg.norm_num_groups, "conv_norm_out", dtype))
    return _conv(cfg.moment_channels, 3, "conv_out", dtype)(x).astype(jnp.float32)


class Decoder(nn.Module):
  """float[B, h, w, L] -> float32[B, h * f, w * f, out]."""

  config: VAEConfig

  @nn.compact
  def __call__(self, z):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    channels = tuple(reversed(cfg.block_out_channels))
    x = _conv(channels[0], 3, "conv_in", dtype)(z.astype(dtype))
    x = MidBlock(cfg.norm_num_groups, cfg.mid_block_add_attention, dtype, name="mid_block")(x)
    for i, c in enumerate(channels):
      x = UpBlock(c, cfg.layers_per_block + 1, cfg.norm_num_groups, i < len(channels) - 1, dtype,
                  name=f"up_blocks_{i}")(x)
    x = nn.silu(_group_norm(x, cfg.norm_num_groups, "conv_norm_out", dtype))
    return _conv(cfg.out_channels, 3, "conv_out", dtype)(x).astype(jnp.float32)


# ------------------------------------------------------------------------------------------ the model
def images_from_uint8(images: jax.Array) -> jax.Array:
  """uint8[..., 3] -> float32 in [-1, 1] (the VAE's image range)."""
  return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0


def images_to_uint8(images: jax.Array) -> jax.Array:
  """float in [-1, 1] -> uint8 (clipped, rounded); inverse of ``images_from_uint8`` on uint8 images."""
  return jnp.round(jnp.clip((images.astype(jnp.float32) + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


class AutoencoderKL(nn.Module):
  """The VAE. ``config``: the ``model_config`` ConfigDict (or a ``VAEConfig`` for the architecture alone).

  Methods (images float[B, H, W, in] in [-1, 1], H and W multiples of f = 2^(levels - 1); latents
  float32[B, H/f, W/f, L]):
    encode(images) -> (mean, logvar)              posterior moments, logvar clipped to [-30, 20] (None when
                                                  ``double_z=False``)
    latents(images, rng=None) -> z                scaled latent ``scaling_factor * (sample - shift)``; the
                                                  posterior mean when ``rng`` is None, else a sample
    decode(z_raw) -> images                       from an unscaled posterior sample
    decode_latents(z) -> images                   from a scaled latent (inverse scaling, then ``decode``)
    __call__(batch, rng) -> images                reconstruction of the batch's flow images (used by init)
    compute_loss(batch, rng, *, train) -> (loss, metrics)
  """

  config: Any

  def setup(self):
    cfg = config_from_dict(self.config)
    self.arch = cfg
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)
    dtype = jnp.dtype(cfg.dtype)
    if cfg.use_quant_conv:
      self.quant_conv = _conv(cfg.moment_channels, 1, "quant_conv", dtype)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = _conv(cfg.latent_channels, 1, "post_quant_conv", dtype)

  def _check_images(self, images):
    cfg, f = self.arch, self.arch.downsample_factor
    if images.ndim != 4 or images.shape[-1] != cfg.in_channels:
      raise ValueError(f"VAE expects images float[B, H, W, {cfg.in_channels}] (in_channels), got shape "
                       f"{images.shape}")
    if images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f"VAE image size {images.shape[1]}x{images.shape[2]} is not a multiple of {f} "
                       f"(2^(len(block_out_channels) - 1) for block_out_channels={cfg.block_out_channels})")

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """float[B, H, W, in] in [-1, 1] -> (mean, logvar) float32[B, H/f, W/f, L] (logvar None if not double_z)."""
    self._check_images(images)
    moments = self.encoder(images)
    if self.arch.use_quant_conv:
      moments = self.quant_conv(moments).astype(jnp.float32)
    if not self.arch.double_z:
      return moments, None
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

  def _shift(self) -> float:
    return float(self.arch.shift_factor or 0.0)

  def latents(self, images: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    """Scaled latent float32[B, H/f, W/f, L]: ``scaling_factor * (sample - shift_factor)``; the posterior mean
    when ``rng`` is None, else a draw ``mean + exp(logvar / 2) * eps``."""
    mean, logvar = self.encode(images)
    sample = mean if rng is None or logvar is None else _sample(mean, logvar, rng)
    return self.arch.scaling_factor * (sample - self._shift())

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latent float[B, h, w, L] -> float32[B, h * f, w * f, out] (about [-1, 1])."""
    if z.ndim != 4 or z.shape[-1] != self.arch.latent_channels:
      raise ValueError(f"VAE decode expects latents float[B, h, w, {self.arch.latent_channels}] (latent_channels), "
                       f"got shape {z.shape}")
    if self.arch.use_post_quant_conv:
      z = self.post_quant_conv(z.astype(jnp.dtype(self.arch.dtype)))
    return self.decoder(z)

  def decode_latents(self, z: jax.Array) -> jax.Array:
    """Scaled latent (as returned by ``latents``) -> float32 images: ``decode(z / scaling_factor + shift)``."""
    return self.decode(z / self.arch.scaling_factor + self._shift())

  def __call__(self, batch, rng):
    """Reconstruction float32[B, H, W, out] of ``batch['optical_flow']`` from a posterior sample."""
    images = images_from_uint8(batch[specs.OPTICAL_FLOW])
    mean, logvar = self.encode(images)
    return self.decode(mean if logvar is None else _sample(mean, logvar, rng))

  def compute_loss(self, batch, rng, *, train: bool = True):
    """Weighted reconstruction + KL loss on the batch's flow images.

    Batch: 'optical_flow' uint8[B, H, W, in]; optional 'has_optical_flow' bool[B] (examples without flow are
    excluded; a batch without any gives 0). ``train`` decodes a posterior sample (with
    ``sample_posterior``); ``train=False`` decodes the posterior mean (the deterministic loss of evaluation).

    Returns (loss float32[], metrics of float32[]): 'loss'; 'loss/reconstruction' (mean |x - x_hat| or
    (x - x_hat)^2 per image value, images in [-1, 1]); 'loss/kl' (KL(q(z|x) || N(0, I)) summed over the
    latent / (H * W * C), 0 without double_z); 'vae/posterior_std' (mean posterior std); 'vae/latent_std'
    (std of the scaled latents that were decoded, a posterior sample when training: about 1 when
    scaling_factor fits the data).
    """
    cfg = self.config
    if isinstance(cfg, VAEConfig):
      raise ValueError("compute_loss needs the model_config ConfigDict (loss weights), not a bare VAEConfig")
    loss_cfg = cfg.loss
    kind = str(loss_cfg.reconstruction)
    if kind not in RECONSTRUCTION_LOSSES:
      raise ValueError(f"config loss.reconstruction={kind!r}; expected one of {RECONSTRUCTION_LOSSES}")
    w_rec, w_kl = float(loss_cfg.reconstruction_weight), float(loss_cfg.kl_weight)
    if w_rec < 0 or w_kl < 0:
      raise ValueError(f"config loss.reconstruction_weight={w_rec} / loss.kl_weight={w_kl} must be >= 0")
    if specs.OPTICAL_FLOW not in batch:
      raise ValueError(f"VAE compute_loss: the batch has no {specs.OPTICAL_FLOW!r} (enable data.optical_flow)")
    if self.arch.out_channels != self.arch.in_channels:
      raise ValueError(f"VAE compute_loss reconstructs its input: config out_channels={self.arch.out_channels} "
                       f"must equal in_channels={self.arch.in_channels}")
    images = images_from_uint8(batch[specs.OPTICAL_FLOW])
    b = images.shape[0]
    weight = jnp.asarray(batch.get(specs.HAS_OPTICAL_FLOW, np.ones((b,), bool))).astype(jnp.float32)
    denom = jnp.maximum(weight.sum(), 1.0)

    mean, logvar = self.encode(images)
    stochastic = train and bool(cfg.get("sample_posterior", True)) and logvar is not None
    z = _sample(mean, logvar, rng) if stochastic else mean
    recon = self.decode(z)
    diff = recon - images
    per_value = jnp.abs(diff) if kind == "l1" else jnp.square(diff)
    rec = jnp.mean(per_value, axis=(1, 2, 3))
    values = float(np.prod(images.shape[1:]))
    if logvar is None:
      kl = jnp.zeros((b,), jnp.float32)
      std = jnp.zeros((), jnp.float32)
    else:
      kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)) / values
      std = jnp.sum(jnp.mean(jnp.exp(0.5 * logvar), axis=(1, 2, 3)) * weight) / denom
    rec_loss = jnp.sum(rec * weight) / denom
    kl_loss = jnp.sum(kl * weight) / denom
    total = w_rec * rec_loss + w_kl * kl_loss
    scaled = self.arch.scaling_factor * (z - self._shift())
    scaled_mean = jnp.sum(jnp.mean(scaled, axis=(1, 2, 3)) * weight) / denom
    scaled_var = jnp.sum(jnp.mean(jnp.square(scaled - scaled_mean), axis=(1, 2, 3)) * weight) / denom
    metrics = {"loss": total, "loss/reconstruction": rec_loss, "loss/kl": kl_loss, "vae/posterior_std": std,
               "vae/latent_std": jnp.sqrt(scaled_var)}
    return total, metrics


def _sample(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, jnp.float32)


# ------------------------------------------------------------------------------------------ helpers
def build(model_cfg: ml_collections.ConfigDict) -> AutoencoderKL:
  config_from_dict(model_cfg)  # validate early, with the config field names
  return AutoencoderKL(model_cfg)


def init_variables(model_cfg: ml_collections.ConfigDict, rng: jax.Array, batch) -> dict:
  """Boxed variables (parameters carry logical axis names; ``nn.unbox`` for plain arrays), jit-compiled.

  The distribution of ``model.init`` (the modules' initialisers: kernels U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  torch's default; biases 0; GroupNorm scales 1, biases 0), with the tree, shapes and logical names taken from
  ``model.init`` by ``jax.eval_shape``, but every kernel drawn from ONE uniform draw: XLA on a CPU compiles each
  random draw separately and slowly (about 0.6 s per kernel on a busy 2-core box; the 'sim' VAE has 56
  kernels), one draw compiles in about 2 s. The values differ from ``model.init``'s for the same key.
  """
  model = build(model_cfg)
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), batch)
  abstract = jax.eval_shape(lambda r, b: model.init(r, b, r), rng, batch)
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract, is_leaf=is_box)
  kernel_sizes = [math.prod(nn.unbox(leaf).shape) for path, leaf in leaves if path[-1].key == "kernel"]

  def init(rng):
    draws = jax.random.uniform(rng, (sum(kernel_sizes),), jnp.float32, -1.0, 1.0)
    values, offset = [], 0
    for path, leaf in leaves:
      shape = nn.unbox(leaf).shape
      if path[-1].key == "kernel":
        size = math.prod(shape)
        value = draws[offset:offset + size].reshape(shape) / math.sqrt(math.prod(shape[:-1]))
        offset += size
      else:
        value = jnp.full(shape, 1.0 if path[-1].key == "scale" else 0.0, jnp.float32)
      values.append(leaf.replace_boxed(value) if is_box(leaf) else value)
    return jax.tree_util.tree_unflatten(treedef, values)

  return jax.jit(init)(rng)


def init_params(model_cfg: ml_collections.ConfigDict, rng: jax.Array, batch) -> dict:
  """Random parameters (plain arrays): {'encoder', 'decoder', 'quant_conv', 'post_quant_conv'}."""
  return nn.unbox(init_variables(model_cfg, rng, batch))["params"]


def _abstract_variables(model_cfg):
  if isinstance(model_cfg, VAEConfig):  # the architecture alone: the smallest valid image
    size, channels = model_cfg.downsample_factor, model_cfg.in_channels
  else:
    size, channels = int(model_cfg.image_size), int(model_cfg.in_channels)
  batch = {specs.OPTICAL_FLOW: jax.ShapeDtypeStruct((1, size, size, channels), jnp.uint8),
           specs.HAS_OPTICAL_FLOW: jax.ShapeDtypeStruct((1,), jnp.bool_)}
  return jax.eval_shape(lambda rng, b: init_variables(model_cfg, rng, b), jax.random.key(0), batch)


def abstract_params(model_cfg: ml_collections.ConfigDict | VAEConfig) -> dict:
  """Parameter tree of jax.ShapeDtypeStruct via jax.eval_shape (no allocation); a model config or a VAEConfig."""
  return nn.unbox(_abstract_variables(model_cfg))["params"]


def logical_axes(model_cfg: ml_collections.ConfigDict) -> dict:
  """Parameter tree of PartitionSpec holding each parameter's logical axis names."""
  return nn.get_partition_spec(_abstract_variables(model_cfg))["params"]


def param_count(model_cfg: ml_collections.ConfigDict | VAEConfig) -> int:
  """Number of parameters (from ``abstract_params``: nothing is allocated)."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(model_cfg))))


def synthetic_flow(rng: np.random.Generator, batch_size: int, size: int, max_magnitude: float,
                   num_objects: Sequence[int] = (1, 3)) -> np.ndarray:
  """float32[B, size, size, 2] flow fields that look like manipulation: a still (zero-flow) background and
  1-2 axis-aligned rectangles ("objects") moving rigidly, each a random translation (up to ``max_magnitude``
  pixels) plus a small rotation about its centre. Later objects occlude earlier ones."""
  flow = np.zeros((batch_size, size, size, 2), np.float32)
  ys, xs = np.mgrid[:size, :size].astype(np.float32) + 0.5
  for b in range(batch_size):
    for _ in range(int(rng.integers(num_objects[0], num_objects[1]))):
      h, w = rng.integers(max(2, size // 6), max(3, size // 2), 2)
      y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
      angle = rng.uniform(0, 2 * np.pi)
      speed = rng.uniform(0.2, 1.0) * max_magnitude
      spin = rng.uniform(-0.1, 0.1)  # radians: displacement spin * r, perpendicular to the radius
      cy, cx = y0 + h / 2, x0 + w / 2
      box = (slice(y0, y0 + h), slice(x0, x0 + w))
      flow[b][box] = np.stack([speed * np.cos(angle) - spin * (ys[box] - cy),
                               speed * np.sin(angle) + spin * (xs[box] - cx)], axis=-1)
  return flow


def dummy_batch(model_cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict:
  """A numpy batch of synthetic flow images (``synthetic_flow`` encoded with ``lamp_jax.flow_image``):
  'optical_flow' uint8[B, S, S, 3] (S = image_size) and 'has_optical_flow' bool[B] (all True)."""
  if int(model_cfg.in_channels) != 3:
    raise ValueError(f"dummy_batch makes RGB flow images; config in_channels={model_cfg.in_channels}")
  size = int(model_cfg.image_size)
  max_magnitude = float(model_cfg.flow_max_magnitude)
  flow = synthetic_flow(np.random.default_rng(seed), batch_size, size, max_magnitude)
  return {specs.OPTICAL_FLOW: flow_image.flow_to_rgb(flow, max_magnitude),
          specs.HAS_OPTICAL_FLOW: np.ones((batch_size,), bool)}


# ------------------------------------------------------------------------------------------ FLOPs
def _conv_flops(size: int, kernel: int, c_in: int, c_out: int) -> float:
  return 2.0 * size * size * kernel * kernel * c_in * c_out


def _resnet_flops(size: int, c_in: int, c_out: int) -> float:
  shortcut = _conv_flops(size, 1, c_in, c_out) if c_in != c_out else 0.0
  return _conv_flops(size, 3, c_in, c_out) + _conv_flops(size, 3, c_out, c_out) + shortcut


def _mid_flops(arch, size: int, channels: int) -> float:
  attention = 0.0
  if arch.mid_block_add_attention:
    positions = size * size
    attention = 4 * 2 * positions * channels * channels + 2 * 2 * positions * positions * channels
  return 2 * _resnet_flops(size, channels, channels) + attention


def encoder_flops(vae_cfg, image_size: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of the encoder (convolutions, 1x1 maps and the mid-block attention) on one
  ``image_size`` x ``image_size`` image, through the quant conv to the posterior moments."""
  arch = config_from_dict(vae_cfg)
  chans = arch.block_out_channels
  size = int(image_size)
  total = _conv_flops(size, 3, arch.in_channels, chans[0])
  c_prev = chans[0]
  for i, c in enumerate(chans):
    for _ in range(arch.layers_per_block):
      total += _resnet_flops(size, c_prev, c)
      c_prev = c
    if i < len(chans) - 1:
      size //= 2
      total += _conv_flops(size, 3, c, c)  # the stride-2 conv, counted at its output size
  total += _mid_flops(arch, size, chans[-1]) + _conv_flops(size, 3, chans[-1], arch.moment_channels)
  if arch.use_quant_conv:
    total += _conv_flops(size, 1, arch.moment_channels, arch.moment_channels)
  return float(total)


def decoder_flops(vae_cfg, image_size: int) -> float:
  """Matmul FLOPs of the decoder from the latent of an ``image_size`` image (post-quant conv, mid block, up blocks, conv out)."""
  arch = config_from_dict(vae_cfg)
  chans = tuple(reversed(arch.block_out_channels))
  size = int(image_size) // arch.downsample_factor
  total = _conv_flops(size, 1, arch.latent_channels, arch.latent_channels) if arch.use_post_quant_conv else 0.0
  total += _conv_flops(size, 3, arch.latent_channels, chans[0]) + _mid_flops(arch, size, chans[0])
  c_prev = chans[0]
  for i, c in enumerate(chans):
    for _ in range(arch.layers_per_block + 1):
      total += _resnet_flops(size, c_prev, c)
      c_prev = c
    if i < len(chans) - 1:
      size *= 2
      total += _conv_flops(size, 3, c, c)
  return float(total + _conv_flops(size, 3, chans[-1], arch.out_channels))


# ------------------------------------------------------------------------------------------ the library
def _flow(images01: np.ndarray, max_magnitude: float) -> np.ndarray:
  return flow_image.rgb_to_flow(images01, max_magnitude)


class VAELibrary(interface.ModelLibrary):
  """The 'vae' model library (``interface.ModelLibrary``): no policy methods; ``compute_loss`` trains it on the
  batch's flow images and ``report`` measures it on held-out ones."""

  name = "vae"
  variants = VARIANTS
  methods = frozenset()
  flop_modes = ("train_step", "encode", "decode")
  report_batches = 8

  def model_config(self, variant: str = "tiny") -> ml_collections.ConfigDict:
    return model_config(variant)

  def build(self, cfg: ml_collections.ConfigDict) -> AutoencoderKL:
    return build(cfg)

  def dummy_batch(self, cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict:
    return dummy_batch(cfg, batch_size, seed)

  def data_requirements(self, cfg: ml_collections.ConfigDict) -> specs.DataRequirements:
    """Only the flow images (``optical_flow`` at image_size; no camera, action or text)."""
    return specs.DataRequirements(cameras=(), image_size=int(cfg.image_size), optical_flow=True)

  def init_variables(self, cfg: ml_collections.ConfigDict, rng: jax.Array, batch: dict) -> dict:
    return init_variables(cfg, rng, batch)

  def analytic_flops(self, cfg: ml_collections.ConfigDict, batch_size: int, mode: str) -> float:
    """'encode' (encoder to the posterior moments), 'decode' (decoder from a latent), 'train_step' (3 x both)."""
    size = int(cfg.image_size)
    encode, decode = encoder_flops(cfg, size), decoder_flops(cfg, size)
    if mode == "encode":
      total = encode
    elif mode == "decode":
      total = decode
    elif mode == "train_step":
      total = 3 * (encode + decode)
    else:
      raise ValueError(f"unknown analytic_flops mode {mode!r} of 'vae' (modes: {self.flop_modes})")
    return float(batch_size * total)

  def report(self, cfg: ml_collections.ConfigDict, params, batches: list[dict], out_dir: str) -> dict:
    """Reconstruction error and latent statistics on held-out flow images (examples with has_optical_flow only).

    Reconstructions decode the posterior mean (what a diffusion head's target is). Figures: 'reconstruction_l1' /
    'reconstruction_mse' (images in [-1, 1]); 'flow_epe_px' (mean end-point error in pixels of the flow decoded
    from the reconstruction, ``flow_image.rgb_to_flow`` with ``flow_max_magnitude``) over all pixels and
    'flow_epe_moving_px' over pixels whose true flow is longer than one saturation level, each beside the error of
    predicting no motion at all ('zero_flow_epe_px', 'zero_flow_epe_moving_px'); 'latent_mean' / 'latent_std'
    (of the UNSCALED posterior means, every value), 'latent_std_per_channel'; 'scaling_factor' = 1 / latent_std
    and 'shift_factor' = latent_mean: z = scaling_factor * (mean - shift_factor) has zero mean and unit variance
    on these images. 'image_rows' holds the first examples' true and reconstructed flow images (uint8) for the
    report PNG.
    """
    del out_dir
    model = build(cfg)
    max_magnitude = float(cfg.flow_max_magnitude)

    @jax.jit
    def encode_decode(p, images):
      mean, _ = model.apply({"params": p}, images, method=AutoencoderKL.encode)
      return mean, model.apply({"params": p}, mean, method=AutoencoderKL.decode)

    l1, mse, epe, epe_moving, zero, zero_moving, latents = [], [], [], [], [], [], []
    moving_pixels, shown_true, shown_recon = 0, [], []
    for batch in batches:
      images = np.asarray(batch[specs.OPTICAL_FLOW])
      present = np.asarray(batch.get(specs.HAS_OPTICAL_FLOW, np.ones(images.shape[:1], bool)), bool)
      if not present.any():
        continue
      images = images[present]
      x = np.asarray(images_from_uint8(images))
      mean, recon = (np.asarray(a) for a in encode_decode(params, x))
      l1.append(np.abs(recon - x).mean(axis=(1, 2, 3)))
      mse.append(np.square(recon - x).mean(axis=(1, 2, 3)))
      true_flow = _flow(images, max_magnitude)
      recon_flow = _flow((np.clip(recon, -1.0, 1.0) + 1.0) / 2.0, max_magnitude)
      error = np.linalg.norm(recon_flow - true_flow, axis=-1)
      length = np.linalg.norm(true_flow, axis=-1)
      moving = length > max_magnitude / 255.0
      epe.append(error.reshape(len(images), -1).mean(-1))
      zero.append(length.reshape(len(images), -1).mean(-1))
      epe_moving.append(float(error[moving].sum()))
      zero_moving.append(float(length[moving].sum()))
      moving_pixels += int(moving.sum())
      latents.append(mean.reshape(-1, mean.shape[-1]))
      shown_true.append(images)
      shown_recon.append(np.asarray(images_to_uint8(recon)))
    if not latents:
      raise ValueError("VAE report: no held-out example has a flow image (has_optical_flow is False everywhere)")
    values = np.concatenate(latents)
    std = float(values.std())
    shown = 8
    return {
        "examples": int(sum(len(a) for a in l1)),
        "reconstruction_l1": float(np.concatenate(l1).mean()),
        "reconstruction_mse": float(np.concatenate(mse).mean()),
        "flow_epe_px": float(np.concatenate(epe).mean()),
        "zero_flow_epe_px": float(np.concatenate(zero).mean()),
        "flow_epe_moving_px": sum(epe_moving) / max(moving_pixels, 1),
        "zero_flow_epe_moving_px": sum(zero_moving) / max(moving_pixels, 1),
        "moving_pixel_fraction": moving_pixels / float(sum(a.shape[0] * a.shape[1] * a.shape[2]
                                                           for a in shown_true)),
        "flow_max_magnitude_px": max_magnitude,
        "latent_mean": float(values.mean()),
        "latent_std": std,
        "latent_std_per_channel": [float(v) for v in values.std(axis=0)],
        "scaling_factor": 1.0 / std if std > 0 else 1.0,
        "shift_factor": float(values.mean()),
        "image_rows": {"true flow image": np.concatenate(shown_true)[:shown],
                       "VAE reconstruction": np.concatenate(shown_recon)[:shown]},
    }


LIBRARY = VAELibrary()
