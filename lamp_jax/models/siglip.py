"""SigLIP ViT image encoder (pooling 'none': one output token per patch), as used by PaliGemma.

Parameter names and layout follow big_vision's ``vit.py`` so that a big_vision checkpoint maps almost one to one:

  embedding/{kernel[P, P, 3, D], bias[D]}          patch embedding (a strided convolution; stem 'patch')
  stem/{conv_i/{kernel[3, 3, C, C'], bias}, norm_i}   convolutional stem (stem 'conv' only; then 'embedding' is
                                                    the 1x1 projection kernel[1, 1, C, D] to the width)
  pos_embedding[1, N, D]                            learned position embedding (posemb='learn' only)
  Transformer/encoderblock/...                      the D-layer stack, scanned: every leaf has a leading [depth] axis
      LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1, MlpBlock_0/{Dense_0,Dense_1}
  Transformer/encoder_norm                          final LayerNorm
  head/{kernel[D, E], bias[E]}                      per-token projection to the language-model width E (optional)

Axis letters: b batch · n patches (tokens) · d width · q heads · h head dim · f MLP width · e output width.
Precision: parameters float32; activations in ``config.dtype``; LayerNorm and softmax in float32.
Activation sharding: every block input is constrained to the logical axes ``ACTIVATION_AXES``
(``layers.with_logical_constraint``: a no-op outside the trainer's ``activation_sharding`` context).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from lamp_jax.models import layers

ACTIVATION_AXES = layers.ACTIVATION_AXES  # block inputs float[B, T, D]


@dataclasses.dataclass(frozen=True)
class SigLIPConfig:
  """SigLIP ViT hyper-parameters.

  Attributes:
    width: token width D.
    depth: number of encoder blocks.
    mlp_dim: MLP hidden width.
    num_heads: attention heads (width must be divisible by it).
    patch_size: square patch side in pixels.
    image_size: square input image side the learned position embedding is built for.
    posemb: 'learn' (learned, as SigLIP / PaliGemma) or 'sincos2d' (fixed, no parameters).
    stem: 'patch' (SigLIP / PaliGemma: one P x P stride-P convolution) or 'conv' (Xiao et al. 2021, "Early
      convolutions help transformers see better"; Octo's small stem is the same idea: log2(P) 3x3 stride-2
      convolutions with GroupNorm + ReLU, then a 1x1 projection to the width). Not part of any released model:
      an option for ViTs trained from scratch on little data (configs/sim.py documents why it uses it).
    stem_width: channels of the first stem convolution (doubled at every further one); stem 'conv' only.
    head_width: width of the per-token output projection ('head'); None for no projection.
    norm_eps: LayerNorm epsilon.
    dtype: activation dtype name, 'float32' or 'bfloat16'.
    remat: rematerialise each block in the backward pass (saves activation memory).
    remat_policy: what a rematerialised block keeps for the backward pass (``layers.REMAT_POLICIES``).
    attention: attention implementation (``layers.ATTENTION_IMPLEMENTATIONS``; all compute the same function).
  """

  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  image_size: int = 224
  posemb: str = "learn"
  stem: str = "patch"
  stem_width: int = 32
  head_width: int | None = None
  norm_eps: float = 1e-6
  dtype: str = "float32"
  remat: bool = False
  remat_policy: str = layers.DEFAULT_REMAT_POLICY
  attention: str = "heads_major"

  def __post_init__(self):
    layers.check_attention_implementation(self.attention, "SigLIPConfig.attention")
    layers.check_remat_policy(self.remat_policy, "SigLIPConfig.remat_policy")
    if self.width % self.num_heads:
      raise ValueError(f"SigLIPConfig.width={self.width} is not divisible by num_heads={self.num_heads}")
    if self.image_size % self.patch_size:
      raise ValueError(f"SigLIPConfig.image_size={self.image_size} is not a multiple of patch_size={self.patch_size}")
    if self.posemb not in ("learn", "sincos2d"):
      raise ValueError(f"SigLIPConfig.posemb must be 'learn' or 'sincos2d', got {self.posemb!r}")
    if self.stem not in ("patch", "conv"):
      raise ValueError(f"SigLIPConfig.stem must be 'patch' or 'conv', got {self.stem!r}")
    if self.stem == "conv" and (self.patch_size < 2 or self.patch_size & (self.patch_size - 1)):
      raise ValueError(f"SigLIPConfig.stem='conv' needs a power-of-two patch_size >= 2, got {self.patch_size}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"SigLIPConfig.dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size)**2


# Named variants (big_vision naming: "<size>/<patch>"); 'tiny' has odd dimensions for tests.
VARIANTS: dict[str, SigLIPConfig] = {
    "tiny": SigLIPConfig(width=40, depth=2, mlp_dim=72, num_heads=2, patch_size=8, image_size=24),
    "Ti/16": SigLIPConfig(width=192, depth=12, mlp_dim=768, num_heads=3, patch_size=16),
    "S/16": SigLIPConfig(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=16),
    "B/16": SigLIPConfig(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16),
    "L/16": SigLIPConfig(width=1024, depth=24, mlp_dim=4096, num_heads=16, patch_size=16),
    "So400m/14": SigLIPConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14),
}


def get_config(variant: str, **overrides: Any) -> SigLIPConfig:
  """Returns the named variant with ``overrides`` applied (e.g. image_size=448, dtype='bfloat16')."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown SigLIP variant {variant!r}; known: {sorted(VARIANTS)}")
  return dataclasses.replace(VARIANTS[variant], **overrides)


def default_config_dict(variant: str = "tiny", **overrides: Any) -> ml_collections.ConfigDict:
  """A config section describing a stand-alone SigLIP tower (e.g. a latent action model's frozen image encoder):
  name 'siglip' · variant · image_size · head_width (None = patch features of the tower's width) · dtype ·
  overrides (dict of ``SigLIPConfig`` fields). ``config_from_dict`` builds the ``SigLIPConfig``."""
  base = VARIANTS[variant] if variant in VARIANTS else None
  if base is None:
    raise ValueError(f"unknown SigLIP variant {variant!r}; known: {sorted(VARIANTS)}")
  cfg = ml_collections.ConfigDict(dict(name="siglip", variant=variant, image_size=base.image_size, head_width=None,
                                       dtype="float32", overrides=ml_collections.ConfigDict()))
  cfg.head_width = ml_collections.config_dict.placeholder(int)
  for key, value in overrides.items():
    cfg[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
  return cfg


def config_from_dict(cfg: ml_collections.ConfigDict | SigLIPConfig) -> SigLIPConfig:
  """The ``SigLIPConfig`` of a section made by ``default_config_dict``."""
  if isinstance(cfg, SigLIPConfig):
    return cfg
  if cfg.get("name", None) != "siglip" or "variant" not in cfg:
    raise ValueError(f"a SigLIP config section needs name='siglip' and a variant (got fields {sorted(cfg.keys())})")
  kwargs = dict(image_size=int(cfg.image_size), head_width=cfg.get("head_width", None),
                dtype=str(cfg.get("dtype", "float32")))
  kwargs.update(dict(cfg.get("overrides", None) or {}))
  return get_config(str(cfg.variant), **kwargs)


def _layer_norm(name: str, eps: float) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name,
                      scale_init=layers.param_with_axes(nn.initializers.ones_init(), ("norm",)),
                      bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("norm",)))


def _dense(features, kernel_axes, name, dtype, axis=-1, kernel_init=nn.initializers.xavier_uniform()):
  """nn.DenseGeneral with big_vision's parameter names (``name/kernel``, ``name/bias``) and logical axes."""
  features = (features,) if isinstance(features, int) else tuple(features)
  return nn.DenseGeneral(features=features, axis=axis, dtype=dtype, param_dtype=jnp.float32, name=name,
                         kernel_init=layers.param_with_axes(kernel_init, kernel_axes),
                         bias_init=layers.param_with_axes(nn.initializers.zeros_init(),
                                                          kernel_axes[-len(features):]))


class EncoderBlock(nn.Module):
  """Pre-LN transformer block: x + MHA(LN(x)); x + MLP(LN(x)). Scanned: returns (x, None)."""

  config: SigLIPConfig

  @nn.compact
  def __call__(self, x, _):
    """x: float[B, N, D] -> (float[B, N, D], None)."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = layers.with_logical_constraint(x, ACTIVATION_AXES)
    y = _layer_norm("LayerNorm_0", cfg.norm_eps)(x.astype(jnp.float32)).astype(dtype)
    y = Attention(cfg, name="MultiHeadDotProductAttention_0")(y)
    x = x + y
    y = _layer_norm("LayerNorm_1", cfg.norm_eps)(x.astype(jnp.float32)).astype(dtype)
    y = MlpBlock(cfg, name="MlpBlock_0")(y)
    return (x + y).astype(dtype), None


class Attention(nn.Module):
  """Full (bidirectional) multi-head self-attention with big_vision / flax MHA parameter layout."""

  config: SigLIPConfig

  @nn.compact
  def __call__(self, x):
    """x: float[B, N, D] -> float[B, N, D]."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    heads = (cfg.num_heads, cfg.head_dim)
    qkv_axes = ("embed", "q_heads", "head_dim")
    q = _dense(heads, qkv_axes, "query", dtype)(x)  # [B, N, Q, H]
    k = _dense(heads, qkv_axes, "key", dtype)(x)
    v = _dense(heads, qkv_axes, "value", dtype)(x)
    out = layers.dot_product_attention(q, k, v, mask=None, implementation=cfg.attention)
    return _dense(cfg.width, ("q_heads", "head_dim", "embed"), "out", dtype, axis=(-2, -1))(out)


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation, as big_vision and HF 'gelu_pytorch_tanh') -> Dense."""

  config: SigLIPConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    x = _dense(cfg.mlp_dim, ("embed", "mlp"), "Dense_0", dtype)(x)
    x = nn.gelu(x, approximate=True)
    return _dense(cfg.width, ("mlp", "embed"), "Dense_1", dtype)(x)


class Encoder(nn.Module):
  """The scanned block stack followed by the final LayerNorm ('encoder_norm')."""

  config: SigLIPConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    block = layers.maybe_remat(EncoderBlock, cfg.remat, cfg.remat_policy)
    stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, length=cfg.depth,
                    metadata_params={nn.PARTITION_NAME: layers.LAYERS_AXIS})
    x, _ = stack(cfg, name="encoderblock")(x, None)
    y = _layer_norm("encoder_norm", cfg.norm_eps)(x.astype(jnp.float32))
    return y.astype(jnp.dtype(cfg.dtype))


class ConvStem(nn.Module):
  """log2(P) 3x3 stride-2 convolutions (GroupNorm + ReLU): float[B, H, W, 3] -> float[B, H/P, W/P, C']."""

  config: SigLIPConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    channels = cfg.stem_width
    for i in range(int(cfg.patch_size).bit_length() - 1):
      in_axis = "patch_in" if i == 0 else "stem"
      x = nn.Conv(channels, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype, param_dtype=jnp.float32,
                  name=f"conv_{i}",
                  kernel_init=layers.param_with_axes(nn.initializers.he_normal(), (None, None, in_axis, "stem")),
                  bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("stem",)))(x)
      x = nn.GroupNorm(num_groups=math.gcd(8, channels), epsilon=cfg.norm_eps, dtype=jnp.float32,
                       param_dtype=jnp.float32, name=f"norm_{i}",
                       scale_init=layers.param_with_axes(nn.initializers.ones_init(), ("norm",)),
                       bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("norm",)))(
                           x.astype(jnp.float32))
      x = nn.relu(x).astype(dtype)
      channels *= 2
    return x


class SigLIP(nn.Module):
  """SigLIP ViT with token output.

  Call: images float[B, Himg, Wimg, 3] in [-1, 1] -> float[B, N, E] tokens (E = head_width, or width when
  there is no head), N = (Himg / patch) * (Wimg / patch) in row-major patch order.
  """

  config: SigLIPConfig

  @nn.compact
  def __call__(self, images):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"SigLIP expects images float[B, H, W, 3], got shape {images.shape}")
    height, width = images.shape[1:3]
    if height % cfg.patch_size or width % cfg.patch_size:
      raise ValueError(f"image size {height}x{width} is not a multiple of patch_size={cfg.patch_size}")
    x = images.astype(dtype)
    kernel = cfg.patch_size
    if cfg.stem == "conv":
      x, kernel = ConvStem(cfg, name="stem")(x), 1
    x = nn.Conv(cfg.width, (kernel, kernel), strides=(kernel, kernel),
                padding="VALID", dtype=dtype, param_dtype=jnp.float32, name="embedding",
                kernel_init=layers.param_with_axes(nn.initializers.lecun_normal(),
                                                   (None, None, "patch_in", "embed")),
                bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("embed",)))(x)
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    if cfg.posemb == "learn":
      if gh * gw != cfg.num_patches:
        raise ValueError(f"images of {height}x{width} give {gh * gw} patches but the learned position embedding "
                         f"has {cfg.num_patches} (SigLIPConfig.image_size={cfg.image_size})")
      pos = self.param("pos_embedding",
                       layers.param_with_axes(nn.initializers.normal(stddev=d**-0.5), (None, None, "embed")),
                       (1, gh * gw, d), jnp.float32)
    else:
      pos = layers.sincos_2d(gh, gw, d)[None]
    x = (x + pos.astype(dtype)).astype(dtype)
    x = Encoder(cfg, name="Transformer")(x)
    if cfg.head_width is not None:
      x = _dense(cfg.head_width, (None, "embed"), "head", dtype)(x)
    return x
