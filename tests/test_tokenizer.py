"""Tokenizers: byte and SentencePiece round trips, PaliGemma prompt format, deterministic truncation."""

import ml_collections
import numpy as np
import pytest

from lamp_jax import tokenizer as tok


def test_byte_tokenizer_round_trip_and_specials():
  t = tok.ByteTokenizer()
  text = "pick up the red cube → bowl ü"
  ids = t.encode(text)
  assert len(ids) == len(text.encode("utf-8"))
  assert min(ids) >= 3 and max(ids) < t.vocab_size == 259
  assert t.decode([t.bos_id] + ids + [t.eos_id, t.pad_id, t.pad_id]) == text
  assert (t.pad_id, t.eos_id, t.bos_id) == (0, 1, 2)


def test_tokenize_prompts_format_padding_and_bytes():
  t = tok.ByteTokenizer()
  tokens, mask = tok.tokenize_prompts(t, ["open drawer", b"  close it \n"], max_len=16)
  assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == mask.shape == (2, 16)
  expected0 = [t.bos_id] + t.encode("open drawer") + t.encode("\n")
  expected1 = [t.bos_id] + t.encode("close it") + t.encode("\n")  # bytes decoded, whitespace stripped
  np.testing.assert_array_equal(tokens[0, :len(expected0)], expected0)
  np.testing.assert_array_equal(tokens[1, :len(expected1)], expected1)
  assert mask[0].sum() == len(expected0) and mask[1].sum() == len(expected1)
  assert mask[0, :len(expected0)].all()  # right padded
  assert (tokens[~mask] == t.pad_id).all()


def test_truncation_is_deterministic_and_keeps_bos_and_separator():
  t = tok.ByteTokenizer()
  long = "a very long instruction that does not fit" * 3
  a, ma = tok.tokenize_prompts(t, [long, "short"], max_len=10, truncate=True)
  b, mb = tok.tokenize_prompts(t, [long, "short"], max_len=10, truncate=True)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ma, mb)
  assert ma[0].all()
  assert a[0, 0] == t.bos_id and a[0, -1] == t.encode("\n")[0]
  assert t.decode(a[0]) == long[:8] + "\n"
  with pytest.raises(ValueError, match="max_len"):
    tok.tokenize_prompts(t, ["x"], max_len=1)


def test_too_long_prompt_is_an_error_naming_the_field_unless_truncate():
  t = tok.ByteTokenizer()
  text = "push the red cube to the left"  # 29 bytes: needs 31 tokens with bos and separator
  assert tok.prompt_length(t, text) == 31 == tok.prompt_length(t, text.encode() + b"  ")
  tokens, mask = tok.tokenize_prompts(t, [text], max_len=31)  # exactly fits: no error, nothing cut
  assert t.decode(tokens[0]) == text + "\n" and mask.all()
  with pytest.raises(tok.PromptTooLongError, match=r"model\.max_token_len.*tokenizer\.truncate") as err:
    tok.tokenize_prompts(t, ["short", text], max_len=30)
  assert "push the red cube to the left" in str(err.value) and "31 tokens" in str(err.value)
  cut, _ = tok.tokenize_prompts(t, [text], max_len=16, truncate=True)
  assert t.decode(cut[0]) == "push the red c\n"  # what silent truncation fed the sim policy before


def test_sentencepiece_tokenizer_trained_in_test(tmp_path):
  sentencepiece = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "corpus.txt"
  lines = ["pick up the red block", "put the bowl on the plate", "open the top drawer",
           "close the microwave door", "move the cup to the left", "stack the green cube on the blue cube"]
  corpus.write_text("\n".join(lines * 20))
  prefix = str(tmp_path / "sp")
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=prefix, vocab_size=40, model_type="unigram", pad_id=0, eos_id=1, bos_id=2,
      unk_id=3, user_defined_symbols=["\n"], remove_extra_whitespaces=False, add_dummy_prefix=False, normalization_rule_name="identity",
      minloglevel=2)
  t = tok.from_config(ml_collections.ConfigDict({"kind": "sentencepiece", "path": prefix + ".model"}))
  assert isinstance(t, tok.SentencePieceTokenizer)
  assert (t.pad_id, t.eos_id, t.bos_id, t.vocab_size) == (0, 1, 2, 40)
  ids = t.encode("put the red cube on the plate")
  assert t.decode(ids) == "put the red cube on the plate"
  tokens, mask = tok.tokenize_prompts(t, ["open the drawer", "pick up the cup"], max_len=24)
  tokens2, _ = tok.tokenize_prompts(tok.SentencePieceTokenizer(prefix + ".model"), ["open the drawer",
                                                                                   "pick up the cup"], 24)
  np.testing.assert_array_equal(tokens, tokens2)
  sep = t.encode("\n")
  assert len(sep) == 1
  for row in range(2):
    n = mask[row].sum()
    assert tokens[row, 0] == t.bos_id and tokens[row, n - 1] == sep[0]
    assert (tokens[row, n:] == t.pad_id).all()


def test_from_config_errors(tmp_path):
  assert isinstance(tok.from_config(tok.default_config()), tok.ByteTokenizer)
  with pytest.raises(ValueError, match="kind"):
    tok.from_config(ml_collections.ConfigDict({"kind": "wordpiece"}))
  with pytest.raises(ValueError, match="tokenizer.path"):
    tok.from_config(ml_collections.ConfigDict({"kind": "sentencepiece", "path": ""}))
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tok.from_config(ml_collections.ConfigDict({"kind": "sentencepiece", "path": str(tmp_path / "missing.model")}))


def test_word_tokenizer_round_trip_unknown_words_and_prompt_format():
  t = tok.WordTokenizer("put the red cube on plate")
  assert t.vocab_size == 11 and (t.pad_id, t.eos_id, t.bos_id) == (0, 1, 2)
  ids = t.encode("Put the red cube on the plate.")  # case and end punctuation are normalised
  assert ids == [5, 6, 7, 8, 9, 6, 10] and t.decode(ids) == "put the red cube on the plate"
  assert t.encode("put the blue cube") == [5, 6, t.UNK, 8] and t.decode([5, t.UNK]) == "put <unk>"
  tokens, mask = tok.tokenize_prompts(t, ["put the red cube", "on"], max_len=7)
  np.testing.assert_array_equal(tokens, [[2, 5, 6, 7, 8, t.NEWLINE, 0], [2, 9, t.NEWLINE, 0, 0, 0, 0]])
  assert t.decode(tokens[0]) == "put the red cube\n" and mask.sum() == 9
  assert tok.prompt_length(t, "put the red cube on the plate") == 9
  cfg = tok.default_config()
  cfg.kind, cfg.words = "words", "open drawer"
  assert tok.from_config(cfg).words == ("open", "drawer")
  for bad in ("", "open open", "Open"):
    with pytest.raises(ValueError, match="tokenizer.words"):
      tok.WordTokenizer(bad)
