"""PaliGemma VLM configs (the VLM alone: parameter summaries, weight conversion, parity checks).

Variants (``--config=configs/paligemma.py:<variant>``):
  tiny          SigLIP 'tiny' (24 px, patch 8) + Gemma 'tiny' (width 48); byte tokenizer. Tests and smoke runs.
  paligemma_3b  SigLIP So400m/14 (224 px, 256 tokens per image) + Gemma 2B; PaliGemma's SentencePiece tokenizer
                (set tokenizer.path to paligemma_tokenizer.model).

Example: python -m lamp_jax.summary --config=configs/paligemma.py:paligemma_3b
"""

import ml_collections

from lamp_jax import tokenizer
from lamp_jax.models import paligemma


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "tiny"
  config = ml_collections.ConfigDict()
  config.model = paligemma.default_config_dict(variant)
  config.tokenizer = tokenizer.default_config()
  if variant == "paligemma_3b":
    config.model.dtype = "bfloat16"
    config.tokenizer.kind = "sentencepiece"
    config.tokenizer.path = ""  # paligemma_tokenizer.model (not downloadable here)
  return config
