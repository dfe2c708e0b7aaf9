"""PaliGemma assembly: init, full-size shapes (eval_shape), prefix-LM semantics, camera masks, cached suffix."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lamp_jax.models import paligemma


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _random_params(abstract, seed=0, scale=0.2):
  """Random float32 parameters (numpy: no init compilation)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), abstract)


B, C, L, S = 2, 2, 5, 3


@pytest.fixture(scope="module")
def tiny():
  cfg = paligemma.config_from_dict(paligemma.default_config_dict("tiny"))
  params = {"params": _random_params(paligemma.abstract_params(cfg))}
  model = paligemma.PaliGemma(cfg)
  rng = np.random.default_rng(1)
  inputs = dict(
      images=rng.uniform(-1, 1, (B, C, 24, 24, 3)).astype(np.float32),
      image_mask=np.array([[True, True], [True, False]]),
      tokens=rng.integers(3, cfg.llm.vocab_size, (B, L)).astype(np.int32),
      token_mask=np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool),
      suffix_tokens=rng.integers(3, cfg.llm.vocab_size, (B, S)).astype(np.int32),
      suffix_mask=np.array([[1, 1, 1], [1, 1, 0]], bool),
  )
  full = jax.jit(lambda p, x: model.apply(p, **x, return_kv_cache=True, return_all_hidden=True,
                                          return_logits=True))
  return cfg, model, params, inputs, full


def test_real_init_matches_abstract_params_and_has_logical_axes():
  cfg = paligemma.default_config_dict("tiny")
  variables = paligemma.init_variables(cfg, jax.random.key(0, impl="rbg"))
  params = nn.unbox(variables)["params"]
  abstract = paligemma.abstract_params(cfg)
  assert jax.tree.structure(params) == jax.tree.structure(abstract)
  for x, a in zip(jax.tree.leaves(params), jax.tree.leaves(abstract)):
    assert x.shape == a.shape and x.dtype == a.dtype == jnp.float32
    assert np.isfinite(np.asarray(x)).all()
  assert set(params) == {"img", "llm"} and "head" in params["img"]
  specs = paligemma.logical_axes(cfg)
  is_spec = lambda s: isinstance(s, jax.sharding.PartitionSpec)
  for spec, a in zip(jax.tree.leaves(specs, is_leaf=is_spec), jax.tree.leaves(abstract)):
    assert len(spec) == len(a.shape), (spec, a.shape)
  assert specs["llm"]["layers"]["pre_ffw_norm"]["scale"][0] == "layers"
  assert specs["img"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"][0] == "layers"


def test_paligemma_3b_sizes_and_shapes_without_allocation():
  cfg_dict = paligemma.default_config_dict("paligemma_3b")
  params = paligemma.abstract_params(cfg_dict)
  assert 2.90e9 < _count(params) < 2.95e9
  assert 0.40e9 < _count(params["img"]) < 0.43e9
  assert 2.50e9 < _count(params["llm"]) < 2.52e9
  cfg = paligemma.config_from_dict(cfg_dict)
  assert cfg.tokens_per_image == 256 and cfg.vision.width == 1152 and cfg.llm.width == 2048
  model = paligemma.PaliGemma(cfg)
  images, image_mask, tokens, token_mask = paligemma.dummy_inputs(cfg, batch=2, cameras=3, text_len=7)
  out = jax.eval_shape(lambda p, *x: model.apply({"params": p}, *x, return_kv_cache=True, return_logits=True),
                       params, images, image_mask, tokens, token_mask)
  p = 3 * 256 + 7
  assert out["last_hidden"].shape == (2, p, 2048) and out["prefix_mask"].shape == (2, p)
  assert out["kv_cache"][0].shape == (18, 2, p, 1, 256)
  assert out["logits"].shape == (2, p, 257_152) and out["logits"].dtype == jnp.float32


def test_shapes_and_finiteness(tiny):
  cfg, _, params, x, full = tiny
  out = full(params, x)
  p = C * cfg.tokens_per_image + L
  d = cfg.llm.width
  assert out["last_hidden"].shape == (B, p + S, d)
  assert out["hidden_states"].shape == (cfg.llm.depth + 1, B, p + S, d)
  assert out["kv_cache"][1].shape == (cfg.llm.depth, B, p + S, cfg.llm.num_kv_heads, cfg.llm.head_dim)
  assert out["logits"].shape == (B, p + S, cfg.llm.vocab_size)
  expected_prefix_mask = np.concatenate([np.repeat(x["image_mask"], cfg.tokens_per_image, 1), x["token_mask"]], 1)
  np.testing.assert_array_equal(out["prefix_mask"], expected_prefix_mask)
  np.testing.assert_array_equal(out["input_mask"], np.concatenate([expected_prefix_mask, x["suffix_mask"]], 1))
  for key in ("last_hidden", "hidden_states", "logits"):
    assert np.isfinite(np.asarray(out[key])).all(), key


def test_prefix_embeddings_scaling(tiny):
  """Text tokens enter as embedding * sqrt(D) (image tokens unscaled: checked against HF in test_weights.py)."""
  cfg, _, params, x, full = tiny
  embeds = np.asarray(full(params, x)["hidden_states"][0])
  n_img = C * cfg.tokens_per_image
  table = params["params"]["llm"]["embedder"]["input_embedding"]
  np.testing.assert_allclose(embeds[:, n_img:n_img + L], table[x["tokens"]] * np.sqrt(cfg.llm.width), rtol=1e-6)


def test_camera_embeddings_add_one_learned_vector_per_camera(tiny):
  """camera_embeddings=K adds row c of a learned float[K, D] table to camera c's image tokens, nothing else."""
  cfg, _, params, x, _ = tiny
  cfg_dict = paligemma.default_config_dict("tiny")
  cfg_dict.camera_embeddings = 3
  cam_cfg = paligemma.config_from_dict(cfg_dict)
  abstract = paligemma.abstract_params(cam_cfg)
  assert abstract["camera_embedding"].shape == (3, cfg.llm.width)
  assert paligemma.logical_axes(cam_cfg)["camera_embedding"] == jax.sharding.PartitionSpec(None, "embed")
  table = np.random.default_rng(2).standard_normal((3, cfg.llm.width)).astype(np.float32)
  cam_params = {"params": {**params["params"], "camera_embedding": table}}
  embed = lambda model, p: np.asarray(model.apply(p, x["images"], method="embed_images"))  # noqa: E731
  plain, with_cams = embed(paligemma.PaliGemma(cfg), params), embed(paligemma.PaliGemma(cam_cfg), cam_params)
  n = cfg.tokens_per_image
  for c in range(C):
    np.testing.assert_allclose(with_cams[:, c * n:(c + 1) * n], plain[:, c * n:(c + 1) * n] + table[c], rtol=1e-5,
                               atol=1e-5)
  cfg_dict.camera_embeddings = 1
  one = paligemma.config_from_dict(cfg_dict)
  with pytest.raises(ValueError, match="camera_embeddings=1"):
    paligemma.PaliGemma(one).apply({"params": {**params["params"], "camera_embedding": table[:1]}}, x["images"],
                                   method="embed_images")


def test_prefix_never_sees_suffix_and_masked_camera_is_ignored(tiny):
  cfg, _, params, x, full = tiny
  p = C * cfg.tokens_per_image + L
  ref = np.asarray(full(params, x)["last_hidden"])
  changed = dict(x, suffix_tokens=(x["suffix_tokens"] + 7) % cfg.llm.vocab_size)
  out = np.asarray(full(params, changed)["last_hidden"])
  np.testing.assert_array_equal(out[:, :p], ref[:, :p])  # prefix outputs do not depend on the suffix
  assert np.abs(out[:, p:] - ref[:, p:]).max() > 1e-3
  # A causal suffix: changing its last token only changes its own position.
  last = x["suffix_tokens"].copy()
  last[:, -1] = (last[:, -1] + 1) % cfg.llm.vocab_size
  out = np.asarray(full(params, dict(x, suffix_tokens=last))["last_hidden"])
  np.testing.assert_array_equal(out[:, :-1], ref[:, :-1])
  # Row 1's second camera is masked: its pixels change nothing at row 1's real positions.
  images = x["images"].copy()
  images[1, 1] = -images[1, 1]
  out = full(params, dict(x, images=images))
  real = np.asarray(out["input_mask"][1])
  np.testing.assert_allclose(np.asarray(out["last_hidden"])[1][real], ref[1][real], atol=1e-6)
  # ... while an unmasked camera does matter.
  images = x["images"].copy()
  images[0, 1] = -images[0, 1]
  assert np.abs(np.asarray(full(params, dict(x, images=images))["last_hidden"])[0] - ref[0]).max() > 1e-3


def test_cached_prefix_equals_uncached(tiny):
  cfg, model, params, x, full = tiny
  ref = full(params, x)
  p = C * cfg.tokens_per_image + L
  # The prefix's K/V cache is a slice of the full run's (the prefix never sees the suffix, tested above); a
  # prefix-only call returns a cache of that layout.
  prefix_inputs = {k: x[k] for k in ("images", "image_mask", "tokens", "token_mask")}
  prefix = jax.eval_shape(lambda p, x: model.apply(p, **x, return_kv_cache=True), params, prefix_inputs)
  assert prefix["kv_cache"][0].shape == ref["kv_cache"][0][:, :, :p].shape
  cache = tuple(c[:, :, :p] for c in ref["kv_cache"])
  decode = jax.jit(lambda p, *args: model.apply(p, *args, return_logits=True, return_kv_cache=True,
                                                method=paligemma.PaliGemma.decode_suffix))
  suffix = decode(params, cache, ref["prefix_mask"], x["suffix_tokens"], x["suffix_mask"])
  valid = np.asarray(x["suffix_mask"])
  np.testing.assert_allclose(np.asarray(suffix["last_hidden"])[valid], np.asarray(ref["last_hidden"])[:, p:][valid],
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(suffix["logits"])[valid], np.asarray(ref["logits"])[:, p:][valid],
                             atol=1e-5)
  np.testing.assert_allclose(suffix["kv_cache"][0], np.asarray(ref["kv_cache"][0])[:, :, p:], atol=1e-5)


def test_config_from_dict():
  cfg = paligemma.default_config_dict("tiny")
  cfg.dtype = "bfloat16"
  cfg.vocab_size = 301
  cfg.llm_overrides = ml_collections.ConfigDict({"depth": 2})
  cfg.vision_overrides = ml_collections.ConfigDict({"posemb": "sincos2d"})
  model_cfg = paligemma.config_from_dict(cfg)
  assert model_cfg.llm.vocab_size == 301 and model_cfg.llm.depth == 2 and model_cfg.vision.posemb == "sincos2d"
  assert model_cfg.llm.dtype == model_cfg.vision.dtype == "bfloat16"
  assert model_cfg.vision.head_width == model_cfg.llm.width
  model = paligemma.PaliGemma(model_cfg)
  out = jax.eval_shape(lambda p, *x: model.apply({"params": p}, *x), paligemma.abstract_params(model_cfg),
                       *paligemma.dummy_inputs(model_cfg))
  assert out["last_hidden"].dtype == jnp.bfloat16
  with pytest.raises(ValueError, match="unknown PaliGemma variant"):
    paligemma.default_config_dict("paligemma_28b")
  with pytest.raises(ValueError, match="llm_variant"):
    paligemma.config_from_dict(ml_collections.ConfigDict({"vision_variant": "tiny"}))
  with pytest.raises(ValueError, match="image_mask shape"):
    jax.eval_shape(lambda p, i, t, tm: model.apply({"params": p}, i, jnp.ones((1, 2), bool), t, tm),
                   paligemma.abstract_params(model_cfg), *[paligemma.dummy_inputs(model_cfg)[k] for k in (0, 2, 3)])
