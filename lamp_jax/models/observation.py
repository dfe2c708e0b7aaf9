"""What a policy with a PaliGemma prefix reads of a batch: the current frame of each configured camera, the prompt
tokens and the current proprio. One definition shared by the policy libraries (LaMP, π0), so that they read a batch
identically.

The model config fields read here (each library's config has them):
  image_keys (cameras, in prefix order) · image_size (square, pixels) · proprio_dim · use_proprio (default True)
  · proprio_dropout (default 0.0).

Shapes as specs.py: B batch · W observation window (the current frame is the last) · C configured cameras
· Hi = Wi = image_size · L text tokens · S proprio dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs


def current_images(batch: dict, cfg: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """Current frame of each configured camera: (float32[B, C, Hi, Wi, 3] in [-1, 1], bool[B, C]).

  A camera of ``image_keys`` that the batch lacks enters as zeros with a False mask (optional cameras); a batch
  with none of them is an error naming the keys.
  """
  obs = batch[specs.OBSERVATION]
  present = [k for k in cfg.image_keys if k in obs]
  if not present:
    raise ValueError(f"batch['observation'] has none of the configured cameras image_keys="
                     f"{tuple(cfg.image_keys)}; it has {sorted(obs)}")
  ref = obs[present[0]]
  b, size = ref.shape[0], cfg.image_size
  images, masks = [], []
  for key in cfg.image_keys:
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


def prompt_tokens(batch: dict) -> tuple[jax.Array, jax.Array]:
  """(tokens int32[B, L], token_mask bool[B, L]) of ``batch['task']``."""
  task = batch[specs.TASK]
  if specs.TOKENS not in task:
    raise ValueError("batch['task'] has no 'tokens': tokenise language_instruction with lamp_jax.tokenizer")
  return task[specs.TOKENS].astype(jnp.int32), task[specs.TOKEN_MASK].astype(bool)


def vlm_inputs(batch: dict, cfg: ml_collections.ConfigDict):
  """The PaliGemma prefix inputs of a batch: (images float32[B, C, Hi, Wi, 3], image_mask bool[B, C],
  tokens int32[B, L], token_mask bool[B, L]) — the arguments of ``paligemma.PaliGemma.__call__``."""
  images, image_mask = current_images(batch, cfg)
  tokens, token_mask = prompt_tokens(batch)
  return images, image_mask, tokens, token_mask


def current_proprio(batch: dict, cfg: ml_collections.ConfigDict, dropout_rng: jax.Array | None = None) -> jax.Array:
  """Current normalised proprio float32[B, S]: zeros when ``use_proprio`` is False; with ``dropout_rng`` (training
  only) each example's proprio is zeroed with probability ``proprio_dropout``."""
  proprio = batch[specs.OBSERVATION][specs.PROPRIO]
  if proprio.shape[-1] != cfg.proprio_dim:
    raise ValueError(f"batch['observation']['proprio'] has {proprio.shape[-1]} dims; config proprio_dim="
                     f"{cfg.proprio_dim}")
  proprio = proprio[:, -1].astype(jnp.float32)
  if not cfg.get("use_proprio", True):
    return jnp.zeros_like(proprio)
  p = float(cfg.get("proprio_dropout", 0.0))
  if not 0.0 <= p < 1.0:
    raise ValueError(f"config proprio_dropout must be in [0, 1), got {p}")
  if dropout_rng is not None and p > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - p, (proprio.shape[0], 1))
    proprio = jnp.where(keep, proprio, 0.0)
  return proprio


def dummy_inputs(cfg: ml_collections.ConfigDict, batch_size: int, rs: np.random.RandomState, vocab_size: int, *,
                 window: int = 1) -> dict:
  """The random observation and task parts of a dummy batch (numpy; specs.py keys), drawn from ``rs`` in a fixed
  order (images per camera, proprio, prompt lengths, tokens) so that a library's later draws stay reproducible.

  Returns {'observation': {camera: uint8[B, W, Hi, Wi, 3], 'image_mask', 'proprio' float32[B, W, S],
  'timestep_pad_mask'}, 'task': {'tokens' int32[B, L], 'token_mask' bool[B, L]}} with L = ``max_token_len``
  and between 1 and L real tokens per example.
  """
  b, size = batch_size, cfg.image_size
  obs = {key: rs.randint(0, 256, (b, window, size, size, 3)).astype(np.uint8) for key in cfg.image_keys}
  obs[specs.IMAGE_MASK] = {key: np.ones((b, window), bool) for key in cfg.image_keys}
  obs[specs.PROPRIO] = rs.randn(b, window, cfg.proprio_dim).astype(np.float32)
  obs[specs.TIMESTEP_PAD_MASK] = np.ones((b, window), bool)
  length = cfg.max_token_len
  lengths = rs.randint(1, length + 1, (b,))
  token_mask = np.arange(length)[None] < lengths[:, None]
  tokens = np.where(token_mask, rs.randint(1, vocab_size, (b, length)), 0).astype(np.int32)
  return {specs.OBSERVATION: obs, specs.TASK: {specs.TOKENS: tokens, specs.TOKEN_MASK: token_mask}}
