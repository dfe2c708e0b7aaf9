"""Strict weight import / export: HF transformers PaliGemma parity and round trip, big_vision .npz round trip."""

import os

import jax
import ml_collections
import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from lamp_jax.models import paligemma
from lamp_jax.models.weights import big_vision_npz
from lamp_jax.models.weights import hf_paligemma
from lamp_jax.models.weights import strict

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _tiny_cfg():
  return paligemma.config_from_dict(paligemma.default_config_dict("tiny"))


def _hf_config(cfg):
  kwargs = {k: v for k, v in hf_paligemma.hf_config(cfg).items() if k not in ("architectures", "model_type")}
  return transformers.PaliGemmaConfig(**kwargs)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
  """A tiny random HF PaliGemma (fp32, eager attention) saved with save_pretrained, and our import of it."""
  cfg = _tiny_cfg()
  torch.manual_seed(0)
  hf_cfg = _hf_config(cfg)
  hf_cfg._attn_implementation = "eager"
  model = transformers.PaliGemmaForConditionalGeneration(hf_cfg).eval()
  with torch.no_grad():  # all weights random (HF initialises norm scales to constants)
    for _, p in model.named_parameters():
      p.normal_(0.0, 0.2)
  assert model.config._attn_implementation == "eager"
  path = tmp_path_factory.mktemp("hf_tiny")
  model.save_pretrained(path)
  return cfg, model, path, hf_paligemma.load(path, cfg)


def test_hf_parity_prefix_lm_with_padding(hf_model):
  cfg, model, _, params = hf_model
  b, l, s, n_img = 2, 5, 3, cfg.tokens_per_image
  v = cfg.llm.vocab_size
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (b, 1, 24, 24, 3)).astype(np.float32)
  tokens = rng.integers(0, v, (b, l)).astype(np.int32)
  token_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  suffix = rng.integers(0, v, (b, s)).astype(np.int32)
  suffix_mask = np.ones((b, s), bool)
  ours = jax.jit(lambda p, *x: paligemma.PaliGemma(cfg).apply(
      {"params": p}, *x[:4], suffix_tokens=x[4], suffix_mask=x[5], return_logits=True))(
          params, images, np.ones((b, 1), bool), tokens, token_mask, suffix, suffix_mask)
  # HF PaliGemma: <image> placeholders then text; token_type_ids 0 = bidirectional prefix, 1 = causal suffix;
  # RoPE positions are relative, so HF's 1-based positions match ours (cumsum(mask) - 1) shifted by one.
  ids = np.concatenate([np.full((b, n_img), hf_model[1].config.image_token_id), tokens, suffix], axis=1)
  attention_mask = np.concatenate([np.ones((b, n_img), bool), token_mask, suffix_mask], axis=1)
  token_type_ids = np.concatenate([np.zeros((b, n_img + l)), np.ones((b, s))], axis=1)
  positions = np.cumsum(attention_mask, axis=1) - 1
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(ids, dtype=torch.long),
                pixel_values=torch.tensor(images[:, 0].transpose(0, 3, 1, 2)),
                attention_mask=torch.tensor(attention_mask, dtype=torch.long),
                token_type_ids=torch.tensor(token_type_ids, dtype=torch.long),
                position_ids=torch.tensor(positions + 1, dtype=torch.long), output_hidden_states=True)
  real = attention_mask
  np.testing.assert_array_equal(np.asarray(ours["input_mask"]), real)
  last_err = np.abs(np.asarray(ours["last_hidden"])[real] - ref.hidden_states[-1].numpy()[real]).max()
  logit_err = np.abs(np.asarray(ours["logits"])[real] - ref.logits.numpy()[real]).max()
  assert last_err <= 1e-4 and logit_err <= 1e-4, (last_err, logit_err)
  assert np.abs(ref.logits.numpy()).max() > 1.0  # a non-trivial comparison


def test_round_trip_ours_hf_ours_is_exact(hf_model, tmp_path):
  cfg, model, _, params = hf_model
  out = hf_paligemma.export(params, cfg, tmp_path / "export")
  reloaded, info = transformers.PaliGemmaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
  original, exported = model.state_dict(), reloaded.state_dict()
  assert sorted(original) == sorted(exported)
  for name in original:
    assert torch.equal(original[name], exported[name]), name
  again = hf_paligemma.load(out, cfg)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)


def test_strict_import_reports_missing_and_unexpected_by_name(hf_model, tmp_path):
  cfg, _, path, _ = hf_model
  tensors = load_file(os.path.join(path, "model.safetensors"))
  dropped = "language_model.model.layers.1.mlp.up_proj.weight"
  assert dropped in tensors
  del tensors[dropped]
  tensors["vision_tower.head.probe"] = np.zeros((1, 1, 40), np.float32)
  save_file(tensors, tmp_path / "broken.safetensors")
  with pytest.raises(strict.StrictLoadError) as err:
    hf_paligemma.load(tmp_path / "broken.safetensors", cfg)
  message = str(err.value)
  assert "model.language_model.layers.1.mlp.up_proj.weight" in message and "vision_tower.head.probe" in message
  assert err.value.missing == ["model.language_model.layers.1.mlp.up_proj.weight"]
  assert err.value.unexpected == ["vision_tower.head.probe"]


def test_strict_import_checks_shapes_dtypes_and_tied_head(hf_model, tmp_path):
  cfg, _, path, _ = hf_model
  tensors = load_file(os.path.join(path, "model.safetensors"))
  bad = dict(tensors)
  bad["language_model.model.norm.weight"] = np.zeros((47,), np.float32)
  bad["multi_modal_projector.linear.bias"] = np.zeros((48,), np.int32)
  save_file(bad, tmp_path / "bad.safetensors")
  with pytest.raises(strict.StrictLoadError, match=r"language_model.model.norm.weight: shape \(47,\)") as err:
    hf_paligemma.load(tmp_path / "bad.safetensors", cfg)
  assert "multi_modal_projector.linear.bias: dtype int32" in str(err.value)
  untied = dict(tensors)
  untied["language_model.lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"] + 1.0
  save_file(untied, tmp_path / "untied.safetensors")
  with pytest.raises(strict.StrictLoadError, match="lm_head.weight: differs"):
    hf_paligemma.load(tmp_path / "untied.safetensors", cfg)
  tied = dict(tensors)
  tied["language_model.lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"].copy()
  save_file(tied, tmp_path / "tied.safetensors")
  hf_paligemma.load(tmp_path / "tied.safetensors", cfg)  # an explicitly stored tied head is accepted
  ml_dtypes = pytest.importorskip("ml_dtypes")
  half = {name: value.astype(ml_dtypes.bfloat16) for name, value in tensors.items()}
  save_file(half, tmp_path / "bf16.safetensors")
  from_half = strict.flatten(hf_paligemma.load(tmp_path / "bf16.safetensors", cfg))  # bf16 -> f32 is exact
  assert from_half["llm/final_norm/scale"].dtype == np.float32
  np.testing.assert_array_equal(from_half["llm/final_norm/scale"],
                                half["language_model.model.norm.weight"].astype(np.float32))
  other_cfg = paligemma.default_config_dict("tiny")
  other_cfg.vocab_size = 300
  with pytest.raises(strict.StrictLoadError, match="embed_tokens.weight: shape"):
    hf_paligemma.load(path, other_cfg)
  with pytest.raises(FileNotFoundError):
    hf_paligemma.load(tmp_path / "nowhere", cfg)


def test_npz_round_trip_and_strictness(hf_model, tmp_path):
  cfg, _, _, params = hf_model
  big_vision_npz.save(params, tmp_path / "ckpt.npz")
  with np.load(tmp_path / "ckpt.npz") as f:
    names = set(f.files)
  assert "params/llm/layers/attn/q_einsum/w" in names and "params/img/head/kernel" in names
  loaded = big_vision_npz.load(tmp_path / "ckpt.npz", cfg)
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)
  flat = {k: v for k, v in strict.flatten(params).items()}
  del flat["llm/final_norm/scale"]
  flat["llm/extra/w"] = np.zeros(3, np.float32)
  np.savez(tmp_path / "broken.npz", **flat)  # no 'params/' prefix: also accepted
  with pytest.raises(strict.StrictLoadError) as err:
    big_vision_npz.load(tmp_path / "broken.npz", cfg)
  assert err.value.missing == ["llm/final_norm/scale"] and err.value.unexpected == ["llm/extra/w"]


def test_npz_fused_qkv_einsum_is_split(tmp_path):
  """big_vision stores attn/qkv_einsum when K == N: it maps onto q_einsum + kv_einsum."""
  cfg_dict = paligemma.default_config_dict("tiny")
  cfg_dict.llm_overrides = ml_collections.ConfigDict({"num_kv_heads": 3})
  abstract = strict.flatten(paligemma.abstract_params(cfg_dict))
  rng = np.random.default_rng(0)
  flat = {k: rng.standard_normal(s.shape).astype(np.float32) for k, s in abstract.items()}
  q, kv = flat.pop("llm/layers/attn/q_einsum/w"), flat.pop("llm/layers/attn/kv_einsum/w")
  flat["llm/layers/attn/qkv_einsum/w"] = np.concatenate([q[:, None], kv], axis=1)
  np.savez(tmp_path / "fused.npz", **{"params/" + k: v for k, v in flat.items()})
  loaded = strict.flatten(big_vision_npz.load(tmp_path / "fused.npz", cfg_dict))
  np.testing.assert_array_equal(loaded["llm/layers/attn/q_einsum/w"], q)
  np.testing.assert_array_equal(loaded["llm/layers/attn/kv_einsum/w"], kv)
