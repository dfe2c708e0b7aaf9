"""PaliGemma: SigLIP image tokens projected to the LM width, then text tokens, through a prefix-LM Gemma.

Sequence layout (per example):  [cam_0 patches | cam_1 patches | ... | prompt tokens] [optional suffix tokens]
                                 \______________________ prefix (P) _______________/  \___ suffix (S) ___/
The prefix attends bidirectionally (to its real tokens), suffix tokens attend causally to everything before them,
and the prefix never sees the suffix. RoPE positions skip padding (``cumsum(mask) - 1``), as big_vision and openpi.

Scaling (checked against transformers' PaliGemma, see tests/test_paligemma.py): image tokens enter the LM as the
SigLIP 'head' projection output, unscaled; text tokens as embedding * sqrt(D).

Parameter tree: {'img': SigLIP (incl. 'head' to the LM width), 'llm': Gemma} (big_vision layout).
Axis letters: b batch · c cameras · n patches per image · l prompt tokens · p prefix length · s suffix length
  · d LM width.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lamp_jax.models import gemma as gemma_lib
from lamp_jax.models import layers
from lamp_jax.models import siglip as siglip_lib


@dataclasses.dataclass(frozen=True)
class PaliGemmaConfig:
  """The two towers. ``vision.head_width`` must equal ``llm.width``."""

  vision: siglip_lib.SigLIPConfig
  llm: gemma_lib.GemmaConfig
  # Learned per-camera embeddings float[camera_embeddings, D] added to each camera's image tokens (0 = none, as
  # PaliGemma). SigLIP gives every camera the same patch position embeddings, so without them an image token
  # says where in *an* image it lies but not in which camera; Octo gives each camera its own learned embeddings.
  camera_embeddings: int = 0

  def __post_init__(self):
    if self.camera_embeddings < 0:
      raise ValueError(f"PaliGemmaConfig: camera_embeddings must be >= 0, got {self.camera_embeddings}")
    if self.vision.head_width != self.llm.width:
      raise ValueError(f"PaliGemmaConfig: vision.head_width={self.vision.head_width} must equal "
                       f"llm.width={self.llm.width}")
    if self.vision.dtype != self.llm.dtype:
      raise ValueError(f"PaliGemmaConfig: vision.dtype={self.vision.dtype!r} != llm.dtype={self.llm.dtype!r}")

  @property
  def image_size(self) -> int:
    return self.vision.image_size

  @property
  def tokens_per_image(self) -> int:
    return self.vision.num_patches


_DEFAULTS = {
    # variant: (vision_variant, llm_variant, image_size)
    "tiny": ("tiny", "tiny", 24),
    "paligemma_3b": ("So400m/14", "gemma_2b", 224),
}


def default_config_dict(variant: str = "tiny") -> ml_collections.ConfigDict:
  """The model section of a config for a named PaliGemma variant ('tiny' or 'paligemma_3b').

  Fields: name ('paligemma'), vision_variant, llm_variant, image_size, dtype ('float32' | 'bfloat16'),
  vocab_size (None = the LLM variant's), remat, remat_policy (``layers.REMAT_POLICIES``), attention (both towers'
  attention implementation,
  ``layers.ATTENTION_IMPLEMENTATIONS``), vision_overrides / llm_overrides (dicts of dataclass fields),
  camera_embeddings (0 = none, as PaliGemma; see :class:`PaliGemmaConfig`).
  """
  if variant not in _DEFAULTS:
    raise ValueError(f"unknown PaliGemma variant {variant!r}; known: {sorted(_DEFAULTS)}")
  vision_variant, llm_variant, image_size = _DEFAULTS[variant]
  cfg = ml_collections.ConfigDict()
  cfg.name = "paligemma"
  cfg.variant = variant
  cfg.vision_variant = vision_variant
  cfg.llm_variant = llm_variant
  cfg.image_size = image_size
  cfg.dtype = "float32"
  cfg.vocab_size = ml_collections.config_dict.placeholder(int)
  cfg.remat = False
  cfg.remat_policy = "nothing_saveable"
  cfg.attention = "heads_major"
  cfg.camera_embeddings = 0
  cfg.vision_overrides = ml_collections.ConfigDict()
  cfg.llm_overrides = ml_collections.ConfigDict()
  return cfg


def config_from_dict(cfg: ml_collections.ConfigDict | PaliGemmaConfig) -> PaliGemmaConfig:
  """Builds a :class:`PaliGemmaConfig` from a config section as made by :func:`default_config_dict`."""
  if isinstance(cfg, PaliGemmaConfig):
    return cfg
  for field in ("vision_variant", "llm_variant"):
    if field not in cfg:
      raise ValueError(f"PaliGemma model config is missing the field {field!r}")
  dtype = cfg.get("dtype", "float32")
  remat = bool(cfg.get("remat", False))
  remat_policy = str(cfg.get("remat_policy", layers.DEFAULT_REMAT_POLICY))
  attention = str(cfg.get("attention", "heads_major"))
  llm_over = dict(cfg.get("llm_overrides", None) or {})
  vision_over = dict(cfg.get("vision_overrides", None) or {})
  if cfg.get("vocab_size", None) is not None:
    llm_over["vocab_size"] = int(cfg.vocab_size)
  llm = gemma_lib.get_config(cfg.llm_variant, dtype=dtype, remat=remat, remat_policy=remat_policy,
                             attention=attention, **llm_over)
  vision_kwargs = dict(dtype=dtype, remat=remat, remat_policy=remat_policy, attention=attention,
                       head_width=llm.width)
  if cfg.get("image_size", None) is not None:
    vision_kwargs["image_size"] = int(cfg.image_size)
  vision_kwargs.update(vision_over)
  vision = siglip_lib.get_config(cfg.vision_variant, **vision_kwargs)
  return PaliGemmaConfig(vision=vision, llm=llm, camera_embeddings=int(cfg.get("camera_embeddings", 0) or 0))


def prefix_lm_inputs(prefix_mask: jax.Array, suffix_mask: jax.Array | None = None):
  """Attention mask and positions for [prefix | suffix].

  Args:
    prefix_mask: bool[B, P]; suffix_mask: bool[B, S] or None.
  Returns:
    (attention_mask bool[B, P+S, P+S], positions int32[B, P+S], input_mask bool[B, P+S]).
  """
  input_mask = prefix_mask
  block_ids = jnp.zeros(prefix_mask.shape, jnp.int32)
  if suffix_mask is not None:
    input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
    block_ids = jnp.concatenate([block_ids, jnp.ones(suffix_mask.shape, jnp.int32)], axis=1)
  attn = gemma_lib.make_attention_mask(input_mask, block_ids)
  return attn, gemma_lib.positions_from_mask(input_mask), input_mask


class PaliGemma(nn.Module):
  """The VLM. Methods (use through ``model.apply(variables, ..., method=...)``):

  * ``embed_prefix(images, image_mask, tokens, token_mask)`` -> (float[B, P, D], bool[B, P]).
  * ``__call__(images, image_mask, tokens, token_mask, *, suffix_tokens=None, suffix_mask=None,
    return_kv_cache=False, return_all_hidden=False, return_logits=False)`` -> dict.
  * ``decode_suffix(kv_cache, prefix_mask, suffix_tokens, suffix_mask, *, return_logits=False)`` -> dict: the
    suffix computed against a cached prefix; equals the suffix part of ``__call__`` with the same suffix.
  """

  config: PaliGemmaConfig

  def setup(self):
    self.img = siglip_lib.SigLIP(self.config.vision)
    self.llm = gemma_lib.Gemma(self.config.llm)
    if self.config.camera_embeddings:
      width = self.config.llm.width
      self.camera_embedding = self.param(
          "camera_embedding", layers.param_with_axes(nn.initializers.normal(stddev=width**-0.5), (None, "embed")),
          (self.config.camera_embeddings, width), jnp.float32)

  def embed_images(self, images):
    """images float32[B, C, H, W, 3] in [-1, 1] -> float[B, C * N, D] image tokens at the LM width (plus camera
    c's learned embedding when ``camera_embeddings`` > 0)."""
    b, c = images.shape[:2]
    tokens = self.img(images.reshape((b * c,) + images.shape[2:]))
    tokens = tokens.reshape(b, c, tokens.shape[1], tokens.shape[2])
    if self.config.camera_embeddings:
      if c > self.config.camera_embeddings:
        raise ValueError(f"{c} cameras but the VLM config has camera_embeddings={self.config.camera_embeddings}")
      tokens = tokens + self.camera_embedding[:c][None, :, None, :].astype(tokens.dtype)
    return tokens.reshape(b, c * tokens.shape[2], tokens.shape[3])

  def embed_prefix(self, images, image_mask, tokens, token_mask):
    """Prefix embeddings.

    Args:
      images: float32[B, C, Himg, Wimg, 3] in [-1, 1] (C cameras).
      image_mask: bool[B, C] False for missing cameras (their tokens are masked out).
      tokens: int32[B, L] prompt tokens, right padded.
      token_mask: bool[B, L] True on real tokens.
    Returns:
      (embeds float[B, P, D], prefix_mask bool[B, P]) with P = C * N + L.
    """
    if images.ndim != 5:
      raise ValueError(f"images must be float[B, cameras, H, W, 3], got shape {images.shape}")
    if image_mask.shape != images.shape[:2]:
      raise ValueError(f"image_mask shape {image_mask.shape} does not match images {images.shape[:2]}")
    if token_mask.shape != tokens.shape:
      raise ValueError(f"token_mask shape {token_mask.shape} does not match tokens {tokens.shape}")
    img = self.embed_images(images)
    per_image = img.shape[1] // images.shape[1]
    img_mask = jnp.repeat(image_mask.astype(bool), per_image, axis=1)
    txt = self.llm.embed(tokens)
    embeds = jnp.concatenate([img.astype(txt.dtype), txt], axis=1)
    return embeds, jnp.concatenate([img_mask, token_mask.astype(bool)], axis=1)

  def __call__(self, images, image_mask, tokens, token_mask, *, suffix_tokens=None, suffix_mask=None,
               return_kv_cache=False, return_all_hidden=False, return_logits=False):
    """Runs the prefix (and an optional causal suffix of text tokens).

    Returns a dict with
      'last_hidden'   float[B, T, D] after the final norm, T = P (+ S with a suffix),
      'prefix_mask'   bool[B, P], 'input_mask' bool[B, T],
      'hidden_states' float[L + 1, B, T, D] (if return_all_hidden; embeddings then each layer's output),
      'kv_cache'      (keys, values) each float[L, B, T, K, H] (if return_kv_cache; keys after RoPE),
      'logits'        float32[B, T, V] (if return_logits).
    """
    embeds, prefix_mask = self.embed_prefix(images, image_mask, tokens, token_mask)
    if (suffix_tokens is None) != (suffix_mask is None):
      raise ValueError("suffix_tokens and suffix_mask must be given together")
    if suffix_tokens is not None:
      embeds = jnp.concatenate([embeds, self.llm.embed(suffix_tokens)], axis=1)
    attn, positions, input_mask = prefix_lm_inputs(prefix_mask, suffix_mask)
    out = self.llm(embeds, positions, attn)
    return self._outputs(out, prefix_mask, input_mask, return_kv_cache, return_all_hidden, return_logits)

  def decode_suffix(self, kv_cache, prefix_mask, suffix_tokens, suffix_mask, *, return_kv_cache=False,
                    return_all_hidden=False, return_logits=False):
    """Suffix tokens attending to a cached prefix (``kv_cache`` from ``__call__(..., return_kv_cache=True)``).

    Args:
      kv_cache: (keys, values) each float[L, B, P, K, H].
      prefix_mask: bool[B, P] the prefix's mask (as returned with the cache).
      suffix_tokens: int32[B, S]; suffix_mask: bool[B, S].
    Returns:
      dict as ``__call__`` over the S suffix positions ('prefix_mask' is the given one).
    """
    attn_full, positions, input_mask = prefix_lm_inputs(prefix_mask, suffix_mask)
    p = prefix_mask.shape[1]
    out = self.llm(self.llm.embed(suffix_tokens), positions[:, p:], attn_full[:, p:, :], kv_cache=kv_cache)
    return self._outputs(out, prefix_mask, input_mask[:, p:], return_kv_cache, return_all_hidden, return_logits)

  def _outputs(self, out, prefix_mask, input_mask, return_kv_cache, return_all_hidden, return_logits):
    result = {"last_hidden": out["last_hidden"], "prefix_mask": prefix_mask, "input_mask": input_mask}
    if return_all_hidden:
      result["hidden_states"] = out["hidden_states"]
    if return_kv_cache:
      result["kv_cache"] = out["kv_cache"]
    if return_logits:
      result["logits"] = self.llm.logits(out["last_hidden"])
    return result


def dummy_inputs(model_cfg: PaliGemmaConfig, batch: int = 1, cameras: int = 1, text_len: int = 4):
  """Abstract inputs (jax.ShapeDtypeStruct) for init / eval_shape: images, image_mask, tokens, token_mask."""
  size = model_cfg.image_size
  return (jax.ShapeDtypeStruct((batch, cameras, size, size, 3), jnp.float32),
          jax.ShapeDtypeStruct((batch, cameras), jnp.bool_),
          jax.ShapeDtypeStruct((batch, text_len), jnp.int32),
          jax.ShapeDtypeStruct((batch, text_len), jnp.bool_))


def init_variables(model_cfg: PaliGemmaConfig | ml_collections.ConfigDict, rng: jax.Array):
  """Random initial variables (boxed with logical axis names: use ``flax.linen.unbox`` for plain arrays).

  Jit-compiled; on CPU, keys made with ``jax.random.key(seed, impl='rbg')`` compile much faster than threefry.
  """
  model_cfg = config_from_dict(model_cfg)
  model = PaliGemma(model_cfg)
  inputs = [jnp.zeros(x.shape, x.dtype) for x in dummy_inputs(model_cfg)]
  return jax.jit(functools.partial(model.init, return_logits=True))(rng, *inputs)


def abstract_variables(model_cfg: PaliGemmaConfig | ml_collections.ConfigDict):
  """``init_variables`` under ``jax.eval_shape``: boxed (logical axes kept) ShapeDtypeStructs, no allocation."""
  model_cfg = config_from_dict(model_cfg)
  return jax.eval_shape(lambda rng: init_variables(model_cfg, rng), jax.random.key(0))


def abstract_params(model_cfg: PaliGemmaConfig | ml_collections.ConfigDict) -> Any:
  """Parameter tree of ``jax.ShapeDtypeStruct`` ({'img': ..., 'llm': ...}), via jax.eval_shape (no allocation)."""
  return nn.unbox(abstract_variables(model_cfg))["params"]


def logical_axes(model_cfg: PaliGemmaConfig | ml_collections.ConfigDict) -> Any:
  """Parameter tree of ``jax.sharding.PartitionSpec`` holding each parameter's logical axis names."""
  return nn.get_partition_spec(abstract_variables(model_cfg))["params"]
