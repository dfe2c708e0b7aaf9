"""The choice of LaMP's prefix encoder: ``model.vlm.kind`` -> the module that turns cameras + instruction into the
prefix tokens the experts read.

Kinds:
  'paligemma' (default; real data, pods, pretrained weights): SigLIP + Gemma prefix-LM (``paligemma.py``).
  'film_cnn'  (from-scratch CPU runs of the built-in benchmark): instruction-FiLM-conditioned convolutions
              (``film_cnn.py``, its sizes in ``model.vlm.film_cnn``).

Both keep one contract, ``module(images float32[B, C, H, W, 3], image_mask bool[B, C], tokens int32[B, L],
token_mask bool[B, L]) -> {'last_hidden': float[B, P, D], 'prefix_mask': bool[B, P]}`` with
P = C * tokens_per_image + L, so the Motion Expert, the guidance and the Action Expert are the same code for
both. The parameter subtree is named 'vlm' either way (stage freezing regexes such as ``^vlm/`` keep working).
"""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from lamp_jax.models import film_cnn
from lamp_jax.models import paligemma

KINDS = ("paligemma", film_cnn.KIND)


def kind_of(vlm_cfg: ml_collections.ConfigDict) -> str:
  """``vlm.kind`` ('paligemma' when the field is absent: configs written before the field existed)."""
  kind = str(vlm_cfg.get("kind", "paligemma") or "paligemma")
  if kind not in KINDS:
    raise ValueError(f"config field model.vlm.kind={kind!r} is not a known prefix encoder (known: {KINDS})")
  return kind


def _film(vlm_cfg: ml_collections.ConfigDict, max_text_len: int = 1, num_cameras: int = 1):
  return film_cnn.config_from_dict(vlm_cfg, max_text_len, num_cameras)


def build(vlm_cfg: ml_collections.ConfigDict, max_text_len: int, num_cameras: int) -> nn.Module:
  """The encoder module (named by its parent; LaMP names it 'vlm')."""
  if kind_of(vlm_cfg) == film_cnn.KIND:
    return film_cnn.FiLMCNNEncoder(_film(vlm_cfg, max_text_len, num_cameras))
  return paligemma.PaliGemma(paligemma.config_from_dict(vlm_cfg))


def width(vlm_cfg: ml_collections.ConfigDict) -> int:
  """D, the width of the prefix tokens."""
  if kind_of(vlm_cfg) == film_cnn.KIND:
    return _film(vlm_cfg).width
  return paligemma.config_from_dict(vlm_cfg).llm.width


def tokens_per_image(vlm_cfg: ml_collections.ConfigDict) -> int:
  """Prefix tokens of one camera."""
  if kind_of(vlm_cfg) == film_cnn.KIND:
    return _film(vlm_cfg).tokens_per_image
  return paligemma.config_from_dict(vlm_cfg).tokens_per_image


def vocab_size(vlm_cfg: ml_collections.ConfigDict) -> int:
  """Token ids the encoder accepts (the tokenizer's vocabulary must fit)."""
  if kind_of(vlm_cfg) == film_cnn.KIND:
    return _film(vlm_cfg).vocab_size
  return paligemma.config_from_dict(vlm_cfg).llm.vocab_size
