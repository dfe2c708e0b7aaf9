"""FiLM-conditioned convolutional prefix encoder (RT-1 / BC-Z style): the instruction modulates every conv stage.

An alternative to the PaliGemma VLM for the LaMP experts when everything is trained from scratch on a small
budget (``vlm.kind='film_cnn'``, see ``prefix_encoder.py``). Same contract as the VLM prefix: prefix tokens and
their mask, which the Motion Expert, the guidance and the Action Expert consume unchanged.

Why: a from-scratch ViT + Gemma does not learn within a CPU budget to find the object an instruction names
(``lamp_jax.eval.localization_probe``), because it must both localise objects of a few pixels and bind colour
words to them through attention. Here the binding happens before any token exists: per-channel scales and shifts
computed from the instruction (FiLM, Perez et al. 2018) act on every feature map, so the convolutions can light
up "the yellow cube" and damp everything else from the first stage on; the convolutions localise small objects
easily, and coordinate channels (CoordConv) plus optional spatial-softmax keypoints (Levine et al. 2016) turn
"where" into numbers.

Data flow (B batch, C cameras, L text tokens, G = image_size / prod(strides), K keypoints per camera):

  tokens int32[B, L] -> word + position embedding -> text float[B, L, Dt]
  text (padding zeroed, flattened IN ORDER) -> MLP -> instruction float[B, Dc]
       order-aware: "stack the red cube on the blue cube" != "stack the blue cube on the red cube"
  images float[B, C, H, W, 3] + (u, v) coordinate channels
       -> S x [conv k_i x k_i stride s_i -> GroupNorm -> FiLM: x * (1 + gamma_i) + beta_i -> ReLU]
          (k_i == s_i: a patchify convolution, no padding; otherwise 'SAME' padding)
          (gamma_i, beta_i) = Dense(instruction), zero-initialised (identity FiLM at init)
       -> feature map float[B * C, G, G, c_S] -> Dense -> G * G grid tokens + position + camera embeddings
       (K > 0) spatial softmax over the finest feature map of stride below G's -> K expected (u, v) per camera
            -> sin-cos features -> Dense + keypoint embedding -> K keypoint tokens per camera
  text -> Dense -> L text tokens
  prefix = [cam_0 grid | cam_0 keypoints | cam_1 grid | ... | text]
       -> (transformer_depth > 0) pre-LN self-attention + MLP blocks over the real prefix tokens (a hybrid: every
          token can gather where the lit-up object is, as ViT tokens do; the CNN tokens alone are local)
       -> LayerNorm -> float[B, P, D]
  prefix_mask bool[B, P]: a missing camera's tokens and padded text tokens are False.
  P = C * (G * G + K) + L.

Parameter tree ('vlm' in LaMP): word_embedding[V, Dt], text_position[L, Dt], instruction_0/1 (MLP),
conv_i, norm_i, film_i, grid_proj, grid_position[G*G, D], camera_embedding[C, D], (keypoint_logits, keypoint_proj,
keypoint_embedding[K, D] when K > 0), text_proj, (block_j when transformer_depth > 0), out_norm. Every parameter carries logical axis names
(``layers.py``): conv channels 'stem', the first conv's fan-in 'patch_in', token width 'embed', instruction
width 'cond', vocabulary 'vocab'.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax.models import dit
from lamp_jax.models import layers

KIND = "film_cnn"
KEYPOINT_FREQUENCIES = 8  # sin-cos frequencies per keypoint coordinate (periods 2 .. 2 / 2**7 of the image)


@dataclasses.dataclass(frozen=True)
class FiLMCNNConfig:
  """Sizes of the encoder.

  image_size: square input size (pixels); must be divisible by prod(strides).
  vocab_size: token vocabulary (ids >= vocab_size are an error of the tokenizer config).
  max_text_len: L, the token budget (``model.max_token_len``); instructions are flattened over L positions.
  num_cameras: cameras with their own learned embedding (more cameras in a batch is an error).
  width: D, width of every output token.
  channels / kernels / strides: one conv stage per entry. XLA:CPU runs 3x3 convolutions on large maps slowly
    (memory bound: a 3x3 conv over 64x64x32 costs ~4x one over 16x16x64 in a training step), so the default
    patchifies 4x4 first (a 4x4 stride-4 conv: 4 px per cell, about one cube), then convolves at 16x16 and 8x8.
  text_width: Dt, word embedding width.  cond_width: Dc, instruction embedding width (FiLM input).
  keypoints: K spatial-softmax keypoints per camera (0 = none), read from the output of the last stage whose
    total stride is below the grid's (for the default, the 16x16 map), or of the last stage when none is.
  """

  image_size: int
  vocab_size: int
  max_text_len: int
  num_cameras: int = 2
  width: int = 128
  channels: tuple[int, ...] = (64, 64, 128, 128)
  kernels: tuple[int, ...] = (4, 3, 3, 3)
  strides: tuple[int, ...] = (4, 1, 2, 1)
  text_width: int = 64
  cond_width: int = 128
  keypoints: int = 0
  transformer_depth: int = 0
  num_heads: int = 2
  mlp_ratio: int = 2
  dtype: str = "float32"

  def __post_init__(self):
    if not len(self.channels) == len(self.kernels) == len(self.strides) or not self.channels:
      raise ValueError(f"FiLMCNNConfig: channels {self.channels}, kernels {self.kernels} and strides "
                       f"{self.strides} need the same non-zero length (one conv stage per entry)")
    if min(self.strides) < 1 or min(self.channels) < 1 or min(self.kernels) < 1:
      raise ValueError(f"FiLMCNNConfig: channels {self.channels}, kernels {self.kernels} and strides "
                       f"{self.strides} must be >= 1")
    total = int(np.prod(self.strides))
    if self.image_size % total:
      raise ValueError(f"FiLMCNNConfig: image_size={self.image_size} is not divisible by the total stride {total} "
                       f"(strides {self.strides})")
    for field in ("vocab_size", "max_text_len", "num_cameras", "width", "text_width", "cond_width"):
      if int(getattr(self, field)) < 1:
        raise ValueError(f"FiLMCNNConfig: {field} must be >= 1, got {getattr(self, field)}")
    if self.keypoints < 0 or self.transformer_depth < 0:
      raise ValueError(f"FiLMCNNConfig: keypoints and transformer_depth must be >= 0, got {self.keypoints}, "
                       f"{self.transformer_depth}")
    if self.transformer_depth and (self.num_heads < 1 or self.width % self.num_heads):
      raise ValueError(f"FiLMCNNConfig: num_heads={self.num_heads} must divide width={self.width}")

  @property
  def grid(self) -> int:
    """G: side of the token grid of one camera."""
    return self.image_size // int(np.prod(self.strides))

  @property
  def tokens_per_image(self) -> int:
    """G * G grid tokens + K keypoint tokens."""
    return self.grid**2 + self.keypoints

  @property
  def keypoint_stage(self) -> int:
    """Index of the conv stage whose output the spatial softmax reads."""
    total, finer = int(np.prod(self.strides)), len(self.strides) - 1
    for i in range(len(self.strides)):
      if int(np.prod(self.strides[:i + 1])) < total:
        finer = i
    return finer

  def stage_size(self, stage: int) -> int:
    """Side of the feature map after conv stage ``stage``."""
    return self.image_size // int(np.prod(self.strides[:stage + 1]))


def keypoint_trunk_pattern(cfg: FiLMCNNConfig, prefix: str = "^vlm/") -> str:
  """A regular expression (for a stage's ``frozen`` list) matching exactly the parameters the keypoints depend on:
  the word and position embeddings, the instruction MLP, conv / GroupNorm / FiLM stages 0 .. ``keypoint_stage`` and
  the keypoint logits. These are what the grounding stage 0 trains (training/grounding.py); the later conv stages
  and every token projection are not."""
  stages = "|".join(str(i) for i in range(cfg.keypoint_stage + 1))
  return (rf"{prefix}(word_embedding|text_position|instruction_\d+|(conv|norm|film)_({stages})|keypoint_logits)"
          r"(/|$)")


def default_config_dict() -> ml_collections.ConfigDict:
  """The ``vlm.film_cnn`` section of a LaMP model config (fields of :class:`FiLMCNNConfig` that are not shared
  with the VLM section: image_size, vocab_size and dtype come from ``vlm``, max_text_len from max_token_len and
  num_cameras from image_keys)."""
  defaults = FiLMCNNConfig(image_size=64, vocab_size=1, max_text_len=1)
  return ml_collections.ConfigDict(dict(
      width=defaults.width, channels=defaults.channels, kernels=defaults.kernels, strides=defaults.strides,
      text_width=defaults.text_width,
      cond_width=defaults.cond_width, keypoints=defaults.keypoints, transformer_depth=defaults.transformer_depth,
      num_heads=defaults.num_heads, mlp_ratio=defaults.mlp_ratio))


def config_from_dict(vlm_cfg: ml_collections.ConfigDict, max_text_len: int, num_cameras: int) -> FiLMCNNConfig:
  """:class:`FiLMCNNConfig` from a LaMP model's ``vlm`` section (image_size, vocab_size, dtype, film_cnn)."""
  if vlm_cfg.get("vocab_size", None) is None:
    raise ValueError("config field model.vlm.vocab_size must be set for vlm.kind='film_cnn' (the word embedding "
                     "has one row per token id)")
  film = dict(vlm_cfg.get("film_cnn", None) or {})
  for field in ("channels", "kernels", "strides"):
    film[field] = tuple(int(v) for v in film.get(field, getattr(FiLMCNNConfig, field)))
  known = {f.name for f in dataclasses.fields(FiLMCNNConfig)}
  unknown = sorted(set(film) - known)
  if unknown:
    raise ValueError(f"config field model.vlm.film_cnn has unknown keys {unknown} (known: {sorted(known)})")
  return FiLMCNNConfig(image_size=int(vlm_cfg.image_size), vocab_size=int(vlm_cfg.vocab_size),
                       max_text_len=int(max_text_len), num_cameras=int(num_cameras),
                       dtype=str(vlm_cfg.get("dtype", "float32")), **film)


def coordinate_channels(height: int, width: int) -> np.ndarray:
  """(u, v) of every pixel centre, ``specs`` convention ((i + 0.5) / W), mapped to [-1, 1]: float32[H, W, 2]."""
  u = (np.arange(width, dtype=np.float32) + 0.5) / width
  v = (np.arange(height, dtype=np.float32) + 0.5) / height
  vv, uu = np.meshgrid(v, u, indexing="ij")
  return np.stack([uu, vv], axis=-1) * 2.0 - 1.0


def spatial_softmax(logits: jax.Array) -> jax.Array:
  """Expected normalised (u, v) in [0, 1] of a softmax over each channel's pixels.

  Args:
    logits: float[N, H, W, K].
  Returns:
    float32[N, K, 2]: sum over pixels of softmax(logits) * pixel centre (u, v) (``specs`` convention).
  """
  n, h, w, k = logits.shape
  probs = jax.nn.softmax(logits.astype(jnp.float32).reshape(n, h * w, k), axis=1)
  uv = (jnp.asarray(coordinate_channels(h, w)).reshape(h * w, 2) + 1.0) / 2.0
  return jnp.einsum("npk,pc->nkc", probs, uv)


def _conv(features: int, kernel: int, stride: int, in_axis: str, dtype, name: str) -> nn.Conv:
  padding = "VALID" if kernel == stride else "SAME"  # kernel == stride: patchify
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding, dtype=dtype,
                 param_dtype=jnp.float32,
                 name=name, kernel_init=layers.param_with_axes(nn.initializers.he_normal(), (None, None, in_axis,
                                                                                              "stem")),
                 bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("stem",)))


def _group_norm(channels: int, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=math.gcd(8, channels), epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
                      name=name, scale_init=layers.param_with_axes(nn.initializers.ones_init(), ("norm",)),
                      bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("norm",)))


class FiLMCNNEncoder(nn.Module):
  """The encoder (module docstring). ``__call__(images, image_mask, tokens, token_mask)`` returns the VLM prefix
  contract: dict(last_hidden=float[B, P, D], prefix_mask=bool[B, P]); with keypoints (K > 0) also
  'keypoint_logits' float32[B, C, h, w, K] (the spatial-softmax logits over the h x w feature map) and
  'keypoints' float32[B, C, K, 2] (their expected (u, v) in [0, 1], ``specs`` convention).

  Args (of ``__call__``):
    images: float32[B, C, H, W, 3] in [-1, 1].
    image_mask: bool[B, C], False for missing cameras.
    tokens: int32[B, L] right-padded, L <= max_text_len.
    token_mask: bool[B, L].
  """

  config: FiLMCNNConfig

  def _instruction(self, tokens, token_mask):
    """(text float[B, L, Dt] with padding zeroed, instruction float[B, Dc])."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    length = tokens.shape[1]
    if length > cfg.max_text_len:
      raise ValueError(f"tokens have length {length} but the FiLM-CNN encoder was built for max_text_len="
                       f"{cfg.max_text_len} (config field model.max_token_len)")
    embedding = self.param("word_embedding", layers.param_with_axes(nn.initializers.normal(stddev=1.0),
                                                                    ("vocab", "embed")),
                           (cfg.vocab_size, cfg.text_width), jnp.float32)
    position = self.param("text_position", layers.param_with_axes(nn.initializers.normal(stddev=1.0),
                                                                  (None, "embed")),
                          (cfg.max_text_len, cfg.text_width), jnp.float32)
    text = (jnp.take(embedding, tokens, axis=0) + position[:length]) * token_mask[..., None]
    # Padded to the full budget so that every position keeps its own weights (order-aware flattening).
    flat = jnp.pad(text, ((0, 0), (0, cfg.max_text_len - length), (0, 0))).astype(dtype)
    hidden = layers.DenseGeneral(cfg.cond_width, (None, "embed", "cond"), axis=(-2, -1), dtype=dtype,
                                 name="instruction_0")(flat)
    instruction = layers.DenseGeneral(cfg.cond_width, ("cond", "cond"), dtype=dtype, name="instruction_1")(
        nn.gelu(hidden))
    return text.astype(dtype), instruction

  @nn.compact
  def __call__(self, images, image_mask, tokens, token_mask):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    if images.ndim != 5 or images.shape[-1] != 3:
      raise ValueError(f"FiLM-CNN encoder expects images float[B, cameras, H, W, 3], got shape {images.shape}")
    b, c, h, w = images.shape[:4]
    if (h, w) != (cfg.image_size, cfg.image_size):
      raise ValueError(f"images of {h}x{w} but the FiLM-CNN encoder was built for image_size={cfg.image_size} "
                       "(config field model.vlm.image_size)")
    if c > cfg.num_cameras:
      raise ValueError(f"{c} cameras but the FiLM-CNN encoder has camera embeddings for {cfg.num_cameras} "
                       "(config field model.image_keys)")
    if image_mask.shape != (b, c) or token_mask.shape != tokens.shape or tokens.shape[0] != b:
      raise ValueError(f"inconsistent shapes: images {images.shape}, image_mask {image_mask.shape}, tokens "
                       f"{tokens.shape}, token_mask {token_mask.shape}")
    token_mask = token_mask.astype(bool)
    text, instruction = self._instruction(tokens, token_mask)
    # Each camera sees the same instruction: FiLM parameters per example, repeated over its cameras.
    instruction = jnp.repeat(instruction, c, axis=0)

    coords = jnp.broadcast_to(jnp.asarray(coordinate_channels(h, w)), (b * c, h, w, 2))
    x = jnp.concatenate([images.reshape(b * c, h, w, 3), coords], axis=-1).astype(dtype)
    keypoint_source = None
    for i, (channels, kernel, stride) in enumerate(zip(cfg.channels, cfg.kernels, cfg.strides)):
      x = _conv(channels, kernel, stride, "patch_in" if i == 0 else "stem", dtype, f"conv_{i}")(x)
      x = _group_norm(channels, f"norm_{i}")(x.astype(jnp.float32))
      film = layers.DenseGeneral(2 * channels, ("cond", "stem"), dtype=jnp.float32, name=f"film_{i}",
                                 kernel_init=nn.initializers.zeros_init())(instruction)
      gamma, beta = jnp.split(film[:, None, None, :], 2, axis=-1)
      x = nn.relu(x * (1.0 + gamma) + beta).astype(dtype)
      if i == cfg.keypoint_stage:
        keypoint_source = x

    grid = x.reshape(b * c, cfg.grid**2, x.shape[-1])
    grid = layers.DenseGeneral(cfg.width, ("stem", "embed"), dtype=dtype, name="grid_proj")(grid)
    grid_position = self.param("grid_position", layers.param_with_axes(nn.initializers.normal(stddev=0.02),
                                                                        (None, "embed")),
                               (cfg.grid**2, cfg.width), jnp.float32)
    camera_embedding = self.param("camera_embedding", layers.param_with_axes(nn.initializers.normal(stddev=0.02),
                                                                              (None, "embed")),
                                  (cfg.num_cameras, cfg.width), jnp.float32)
    grid = grid.reshape(b, c, cfg.grid**2, cfg.width) + grid_position[None, None].astype(dtype)
    per_camera, extras = [grid], {}
    if cfg.keypoints:
      logits = nn.Conv(cfg.keypoints, (1, 1), dtype=jnp.float32, param_dtype=jnp.float32, name="keypoint_logits",
                       kernel_init=layers.param_with_axes(nn.initializers.lecun_normal(), (None, None, "stem",
                                                                                            "stem")),
                       bias_init=layers.param_with_axes(nn.initializers.zeros_init(), ("stem",)))(keypoint_source)
      uv = spatial_softmax(logits)  # [B * C, K, 2] in [0, 1]
      extras["keypoint_logits"] = logits.reshape((b, c) + logits.shape[1:])
      extras["keypoints"] = uv.reshape(b, c, cfg.keypoints, 2)
      freqs = jnp.pi * 2.0 ** jnp.arange(KEYPOINT_FREQUENCIES, dtype=jnp.float32)
      angles = (uv[..., None] * freqs).reshape(b * c, cfg.keypoints, 2 * KEYPOINT_FREQUENCIES)
      features = jnp.concatenate([jnp.sin(angles), jnp.cos(angles), uv * 2.0 - 1.0], axis=-1).astype(dtype)
      keypoints = layers.DenseGeneral(cfg.width, (None, "embed"), dtype=dtype, name="keypoint_proj")(features)
      keypoint_embedding = self.param(
          "keypoint_embedding", layers.param_with_axes(nn.initializers.normal(stddev=0.02), (None, "embed")),
          (cfg.keypoints, cfg.width), jnp.float32)
      per_camera.append(keypoints.reshape(b, c, cfg.keypoints, cfg.width) + keypoint_embedding[None, None]
                        .astype(dtype))
    image_tokens = jnp.concatenate(per_camera, axis=2) + camera_embedding[:c][None, :, None].astype(dtype)
    image_tokens = image_tokens.reshape(b, c * cfg.tokens_per_image, cfg.width)
    image_token_mask = jnp.repeat(image_mask.astype(bool), cfg.tokens_per_image, axis=1)

    text_tokens = layers.DenseGeneral(cfg.width, ("embed", "embed"), dtype=dtype, name="text_proj")(text)
    hidden = jnp.concatenate([image_tokens, text_tokens.astype(dtype)], axis=1)
    prefix_mask = jnp.concatenate([image_token_mask, token_mask], axis=1)
    for j in range(cfg.transformer_depth):
      hidden = Block(cfg.num_heads, cfg.mlp_ratio * cfg.width, dtype, name=f"block_{j}")(hidden, prefix_mask)
    hidden = layers.LayerNorm(dtype=dtype, name="out_norm")(hidden)
    return {"last_hidden": hidden, "prefix_mask": prefix_mask, **extras}


class Block(nn.Module):
  """Pre-LN transformer block over the prefix: x + Attn(LN(x)) then x + MLP(LN(x)); padded tokens are never
  attended to. ``__call__(x float[B, P, D], mask bool[B, P]) -> float[B, P, D]``."""

  num_heads: int
  mlp_dim: int
  dtype: str | jnp.dtype = "float32"

  @nn.compact
  def __call__(self, x, mask):
    dtype = jnp.dtype(self.dtype)
    width = x.shape[-1]
    attention_mask = jnp.broadcast_to(mask[:, None, :], (x.shape[0], x.shape[1], x.shape[1]))
    h = layers.LayerNorm(dtype=dtype, name="attention_norm")(x)
    x = x + dit.Attention(self.num_heads, width // self.num_heads, dtype=dtype, name="attention")(
        h, mask=attention_mask)
    h = layers.LayerNorm(dtype=dtype, name="mlp_norm")(x)
    return x + dit.Mlp(self.mlp_dim, dtype=dtype, name="mlp")(h)
