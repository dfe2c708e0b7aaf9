"""Text tokenizers and the PaliGemma prompt format.

Three implementations of one small interface (:class:`Tokenizer`):
  * :class:`SentencePieceTokenizer` - a SentencePiece model file (PaliGemma's ``paligemma_tokenizer.model``,
    vocabulary 257152, pad 0 / eos 1 / bos 2).
  * :class:`ByteTokenizer` - self-contained, no file: UTF-8 bytes shifted past three specials
    (pad 0, eos 1, bos 2, byte b -> 3 + b; vocabulary 259). The offline default.
  * :class:`WordTokenizer` - a closed vocabulary of whole words from the config (templated benchmarks such as
    the built-in tabletop suite: one token per word, like SentencePiece on common words).

:func:`tokenize_prompts` builds PaliGemma prefixes: ``[bos] + encode(text) + encode("\\n")``, right padded.
All are pure functions of their inputs (deterministic, no randomness, no global state).

This module imports only the standard library and numpy (``ml_collections`` inside :func:`default_config`,
``sentencepiece`` inside :class:`SentencePieceTokenizer`): the JAX-free PyTorch serving process
(``lamp_torch``) tokenises with it too, so both backends give the same tokens by construction.
:func:`from_config` accepts a ConfigDict or a plain dict (the ``tokenizer`` section of an export's config.json).
"""

from __future__ import annotations

import abc
import os
from typing import Any, Mapping, Sequence

import numpy as np

SEPARATOR = "\n"  # PaliGemma ends the prefix (prompt) with a newline.


class Tokenizer(abc.ABC):
  """Text <-> token ids."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids (the model's embedding must have at least this many rows)."""

  @property
  @abc.abstractmethod
  def bos_id(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def eos_id(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def pad_id(self) -> int:
    ...

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Token ids of ``text`` without bos / eos."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str:
    """Text of ``ids``; special ids (pad / bos / eos) are dropped."""


class _FixedSpecialsTokenizer(Tokenizer):
  """The self-contained tokenizers' special ids: pad 0, eos 1, bos 2."""

  @property
  def bos_id(self) -> int:
    return 2

  @property
  def eos_id(self) -> int:
    return 1

  @property
  def pad_id(self) -> int:
    return 0


class ByteTokenizer(_FixedSpecialsTokenizer):
  """UTF-8 bytes as tokens: pad 0, eos 1, bos 2, byte b -> 3 + b."""

  NUM_SPECIAL = 3

  @property
  def vocab_size(self) -> int:
    return self.NUM_SPECIAL + 256

  def encode(self, text: str) -> list[int]:
    return [self.NUM_SPECIAL + b for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    data = bytes(int(i) - self.NUM_SPECIAL for i in ids if self.NUM_SPECIAL <= int(i) < self.vocab_size)
    return data.decode("utf-8", errors="replace")


class WordTokenizer(_FixedSpecialsTokenizer):
  """A closed vocabulary of whole words: pad 0, eos 1, bos 2, unk 3, newline 4, ``words[i]`` -> 5 + i.

  For benchmarks whose instructions come from templates (the built-in tabletop suite): one token per word, as
  PaliGemma's SentencePiece gives for common English words, where bytes need ~4.5 tokens per word. Text is
  lower-cased and split on whitespace, with ``.,;:!?`` stripped from word ends; a word outside the vocabulary
  becomes ``unk`` (id :attr:`UNK`; the trainer counts them).
  """

  NUM_SPECIAL = 5
  UNK, NEWLINE = 3, 4

  def __init__(self, words: str | Sequence[str]):
    words = words.split() if isinstance(words, str) else list(words)
    if not words:
      raise ValueError("tokenizer.kind='words' needs tokenizer.words (a space-separated vocabulary)")
    if len(set(words)) != len(words) or any(w != w.lower() or not w.strip() for w in words):
      raise ValueError(f"tokenizer.words must be distinct lower-case words, got {words}")
    self.words = tuple(words)
    self._ids = {w: self.NUM_SPECIAL + i for i, w in enumerate(self.words)}

  @property
  def vocab_size(self) -> int:
    return self.NUM_SPECIAL + len(self.words)

  def encode(self, text: str) -> list[int]:
    ids = []
    for line_no, line in enumerate(text.split("\n")):
      if line_no:
        ids.append(self.NEWLINE)
      for word in line.lower().split():
        word = word.strip(".,;:!?")
        if word:
          ids.append(self._ids.get(word, self.UNK))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    out = ""
    for i in (int(i) for i in ids):
      if i == self.NEWLINE:
        out += "\n"
      elif i == self.UNK or self.NUM_SPECIAL <= i < self.vocab_size:
        word = "<unk>" if i == self.UNK else self.words[i - self.NUM_SPECIAL]
        out += word if (not out or out.endswith("\n")) else " " + word
    return out


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model file. If the model defines no pad piece, padding uses id 0 (always masked out)."""

  def __init__(self, model_path: str | os.PathLike):
    import sentencepiece  # pylint: disable=import-outside-toplevel

    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"SentencePiece model file not found: {model_path} (tokenizer.path)")
    self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    self.model_path = model_path
    if self._sp.bos_id() < 0:
      raise ValueError(f"SentencePiece model {model_path} has no bos piece; PaliGemma prompts need one")

  @property
  def vocab_size(self) -> int:
    return int(self._sp.get_piece_size())

  @property
  def bos_id(self) -> int:
    return int(self._sp.bos_id())

  @property
  def eos_id(self) -> int:
    return int(self._sp.eos_id())

  @property
  def pad_id(self) -> int:
    return max(int(self._sp.pad_id()), 0)

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    special = {self.bos_id, self.eos_id, int(self._sp.pad_id())}
    return self._sp.decode([int(i) for i in ids if int(i) not in special])


class PromptTooLongError(ValueError):
  """An instruction does not fit the token budget and truncation is off (``tokenizer.truncate=False``)."""


def prompt_length(tokenizer: Tokenizer, text: str | bytes) -> int:
  """Tokens the PaliGemma prefix of ``text`` needs untruncated: ``1 (bos) + len(encode(text)) + separator``."""
  if isinstance(text, (bytes, np.bytes_)):
    text = bytes(text).decode("utf-8")
  return 1 + len(tokenizer.encode(str(text).strip())) + len(tokenizer.encode(SEPARATOR))


def tokenize_prompts(tokenizer: Tokenizer, texts: Sequence[str | bytes], max_len: int, *, truncate: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
  """PaliGemma prefix tokens for a batch of prompts.

  Each prompt (bytes are decoded as UTF-8; surrounding whitespace stripped) becomes
  ``[bos] + encode(text) + encode("\\n")``, right padded with ``pad_id`` to ``max_len``.

  A prompt longer than ``max_len`` is an error (:class:`PromptTooLongError`, naming the prompt, the length it
  needs and the config fields) unless ``truncate``: then text tokens are dropped from the end, deterministically,
  so that bos and the separator are always kept: ``[bos] + encode(text)[:max_len - 1 - len(encode("\\n"))] +
  encode("\\n")``. (Silent truncation once cut every sim instruction after its 14th byte - the object, the
  receptacle and the push direction - so it is opt-in and counted by the callers.)

  Returns:
    (tokens int32[B, max_len], mask bool[B, max_len]) with mask True on real tokens.
  """
  separator = tokenizer.encode(SEPARATOR)
  budget = max_len - 1 - len(separator)
  if budget < 0:
    raise ValueError(f"max_len={max_len} leaves no room for bos and the separator ({len(separator)} tokens)")
  tokens = np.full((len(texts), max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), max_len), bool)
  for row, text in enumerate(texts):
    if isinstance(text, (bytes, np.bytes_)):
      text = bytes(text).decode("utf-8")
    encoded = tokenizer.encode(str(text).strip())
    if len(encoded) > budget and not truncate:
      raise PromptTooLongError(
          f"instruction {str(text).strip()!r} needs {1 + len(encoded) + len(separator)} tokens, more than the "
          f"token budget {max_len} (config field model.max_token_len, or tokenizer.max_len for models without "
          f"one); raise it, or set tokenizer.truncate=True to cut long instructions (counted in the logs)")
    ids = [tokenizer.bos_id] + encoded[:budget] + separator
    tokens[row, :len(ids)] = ids
    mask[row, :len(ids)] = True
  return tokens, mask


def default_config():
  """Tokenizer config section (an ``ml_collections.ConfigDict``): kind 'bytes' (no file), 'words' (with words)
  or 'sentencepiece' (with path), max_len, truncate."""
  import ml_collections  # pylint: disable=import-outside-toplevel  (keeps this module's imports JAX-free)

  cfg = ml_collections.ConfigDict()
  cfg.kind = "bytes"
  cfg.path = ""
  cfg.max_len = 48
  cfg.words = ""  # kind 'words': the space-separated vocabulary
  cfg.truncate = False  # True: cut too long instructions (counted); False: PromptTooLongError naming the field
  return cfg


def from_config(cfg: Mapping[str, Any]) -> Tokenizer:
  """The tokenizer of a config section (``cfg.kind`` in {'bytes', 'words', 'sentencepiece'}; ``cfg.words``,
  ``cfg.path``)."""
  kind = cfg.get("kind", None)
  if kind == "bytes":
    return ByteTokenizer()
  if kind == "words":
    return WordTokenizer(cfg.get("words", ""))
  if kind == "sentencepiece":
    path = cfg.get("path", "")
    if not path:
      raise ValueError("tokenizer.kind='sentencepiece' needs tokenizer.path (a .model file)")
    return SentencePieceTokenizer(path)
  raise ValueError(f"tokenizer.kind must be 'bytes', 'words' or 'sentencepiece', got {kind!r}")
