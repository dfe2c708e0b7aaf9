"""Host-side batch preparation shared by the trainer, the config preflight and the checkpoint policy: the run's
tokenizer (its vocabulary checked against the model's embedding), the token budget, and the preparer that
tokenises ``task/language_instruction`` and drops non-numeric leaves before a batch goes to devices."""

from __future__ import annotations

import logging

import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax import tokenizer as tokenizer_lib
from lamp_jax.models import registry


def _is_numeric(x) -> bool:
  return np.asarray(x).dtype.kind in "biuf"


def text_length(config: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict) -> int:
  """Token length: the model's token budget (``data_requirements.text_tokens``) when it reads text, else
  ``tokenizer.max_len``."""
  budget = registry.for_config(model_cfg).data_requirements(model_cfg).text_tokens
  return int(budget) if budget else int(config.tokenizer.max_len)


def make_tokenizer(config: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict):
  """The run's tokenizer; its vocabulary must fit the model's embedding (checked, naming the fields)."""
  tok = tokenizer_lib.from_config(config.tokenizer)
  vocab = registry.for_config(model_cfg).data_requirements(model_cfg).vocab_size
  if vocab and tok.vocab_size > int(vocab):
    raise ValueError(f"the model's token embedding has {vocab} rows (config model.*.vocab_size), fewer than the "
                     f"vocabulary of tokenizer.kind={config.tokenizer.kind!r} ({tok.vocab_size})")
  return tok


class HostBatchPreparer:
  """Host-side batch preparation: tokenises ``task/language_instruction`` (when the batch has no tokens yet)
  and drops non-numeric leaves (raw strings never go to devices)."""

  def __init__(self, config: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict):
    self.config = config
    self.model_cfg = model_cfg
    self.max_len = text_length(config, model_cfg)
    # Too long instructions: an error naming the field (default), or cut and counted (tokenizer.truncate=True).
    self.truncate = bool(config.tokenizer.get("truncate", False))
    self.truncated_prompts = 0
    self.unknown_words = 0  # WordTokenizer: words outside the vocabulary (-> <unk>)
    self._tokenizer = None

  def __call__(self, batch: dict) -> dict:
    task = batch.get(specs.TASK)
    if isinstance(task, dict) and specs.LANGUAGE_INSTRUCTION in task and specs.TOKENS not in task:
      if self._tokenizer is None:
        self._tokenizer = make_tokenizer(self.config, self.model_cfg)
      texts = list(np.asarray(task[specs.LANGUAGE_INSTRUCTION]).reshape(-1))
      tokens, mask = tokenizer_lib.tokenize_prompts(self._tokenizer, texts, self.max_len, truncate=self.truncate)
      if self.truncate:
        cut = [t for t in texts if tokenizer_lib.prompt_length(self._tokenizer, t) > self.max_len]
        if cut and not self.truncated_prompts:
          logging.warning("tokenizer.truncate=True: instructions longer than %d tokens are cut (first: %r); the "
                          "count is logged as data/truncated_prompts", self.max_len, cut[0])
        self.truncated_prompts += len(cut)
      if isinstance(self._tokenizer, tokenizer_lib.WordTokenizer):
        unknown = int(((tokens == tokenizer_lib.WordTokenizer.UNK) & mask).sum())
        if unknown and not self.unknown_words:
          logging.warning("instructions have words outside tokenizer.words (first batch: %r); they become <unk>; "
                          "the count is logged as data/unknown_words", texts[:4])
        self.unknown_words += unknown
      batch = dict(batch)
      batch[specs.TASK] = {**task, specs.TOKENS: np.asarray(tokens, np.int32),
                           specs.TOKEN_MASK: np.asarray(mask, bool)}
    return _drop_non_numeric(batch)


def _drop_non_numeric(tree):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      v = _drop_non_numeric(v)
      if v is not None:
        out[k] = v
    return out
  return np.asarray(tree) if _is_numeric(tree) else None
