"""Gemma decoder: variant shapes (eval_shape), mask semantics, causality, K/V cache equivalence, GQA, precision."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax.models import gemma


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _random_params(abstract, seed=0, scale=0.2):
  """Random float32 parameters (numpy: no init compilation; the real init is tested in test_paligemma.py)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), abstract)


def _forward(model):
  """jit(params, tokens, positions, mask, cache) -> Gemma outputs over the embedded tokens."""

  def run(m, tokens, positions, mask, cache):
    return m(m.embed(tokens), positions, mask, kv_cache=cache)

  return jax.jit(lambda params, *args: model.apply(params, *args, method=run))


def _abstract(cfg, length=5):
  model = gemma.Gemma(cfg)
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, length, length), jnp.bool_)

  def init(m, tokens, positions, mask):
    out = m(m.embed(tokens), positions, mask)
    return m.logits(out["last_hidden"])

  return jax.eval_shape(lambda t, m: model.init(jax.random.key(0), t, t, m, method=init), tokens, mask)


def _inputs(cfg, b=2, t=7):
  """Tokens with a padded prefix-LM layout: 3 prefix tokens (+1 pad in row 0), 3 causal suffix tokens."""
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (b, t)).astype(np.int32)
  input_mask = np.ones((b, t), bool)
  input_mask[0, 3] = False
  mask = gemma.make_attention_mask(input_mask, np.array([[0, 0, 0, 0, 1, 1, 1]] * b))
  return tokens, gemma.positions_from_mask(input_mask), mask


@pytest.fixture(scope="module")
def tiny():
  cfg = gemma.get_config("tiny")
  params = _random_params(nn.unbox(_abstract(cfg)))
  return cfg, params, _forward(gemma.Gemma(cfg))


@pytest.mark.parametrize("variant", sorted(gemma.VARIANTS))
def test_variant_shapes_without_allocation(variant):
  cfg = gemma.get_config(variant)
  params = nn.unbox(_abstract(cfg))["params"]
  n, k, d, h, f, depth = cfg.num_heads, cfg.num_kv_heads, cfg.width, cfg.head_dim, cfg.mlp_dim, cfg.depth
  layers = params["layers"]
  assert layers["attn"]["q_einsum"]["w"].shape == (depth, n, d, h)
  assert layers["attn"]["kv_einsum"]["w"].shape == (depth, 2, k, d, h)
  assert layers["attn"]["attn_vec_einsum"]["w"].shape == (depth, n, h, d)
  assert layers["mlp"]["gating_einsum"].shape == (depth, 2, d, f)
  per_layer = 2 * n * d * h + 2 * k * d * h + 3 * d * f + 2 * d
  assert _count(params) == depth * per_layer + cfg.vocab_size * d + d
  if variant == "gemma_2b":
    assert (d, depth, f, n, k, h) == (2048, 18, 16384, 8, 1, 256)
    assert 2.50e9 < _count(params) < 2.52e9
  if variant == "gemma_300m":
    assert (d, depth, f, n, k, h) == (1024, 18, 4096, 8, 1, 256)
    assert 0.30e9 < _count(params["layers"]) < 0.32e9  # the action expert does not use the embedder


def test_make_attention_mask_prefix_lm_semantics():
  input_mask = jnp.array([[1, 1, 1, 0, 1, 1]], bool)  # 3 prefix tokens, 1 pad, 2 suffix tokens
  block_ids = jnp.array([[0, 0, 0, 0, 1, 1]])
  mask = np.asarray(gemma.make_attention_mask(input_mask, block_ids))[0]
  expected = np.array([
      [1, 1, 1, 0, 0, 0],  # prefix: bidirectional within the prefix, never the suffix
      [1, 1, 1, 0, 0, 0],
      [1, 1, 1, 0, 0, 0],
      [0, 0, 0, 0, 0, 0],  # padding sees nothing and is seen by nobody
      [1, 1, 1, 0, 1, 0],  # suffix: causal
      [1, 1, 1, 0, 1, 1],
  ], bool)
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(gemma.positions_from_mask(input_mask), [[0, 1, 2, 2, 3, 4]])
  np.testing.assert_array_equal(gemma.positions_from_mask(input_mask, jnp.array([5])), [[5, 6, 7, 7, 8, 9]])


def test_causality_and_kv_cache_equivalence(tiny):
  cfg, params, forward = tiny
  b, t, t0 = 2, 7, 4
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32)
  input_mask = np.ones((b, t), bool)
  causal = gemma.make_attention_mask(input_mask, np.ones((b, t), np.int32))
  positions = gemma.positions_from_mask(input_mask)
  full = forward(params, tokens, positions, causal, None)
  assert full["last_hidden"].shape == (b, t, cfg.width)
  assert full["hidden_states"].shape == (cfg.depth + 1, b, t, cfg.width)
  assert full["kv_cache"][0].shape == (cfg.depth, b, t, cfg.num_kv_heads, cfg.head_dim)
  assert np.isfinite(np.asarray(full["last_hidden"])).all()

  # Causal: changing token 5 leaves positions 0..4 unchanged and changes position 5.
  changed = tokens.copy()
  changed[:, 5] = (changed[:, 5] + 1) % cfg.vocab_size
  other = forward(params, changed, positions, causal, None)
  np.testing.assert_array_equal(np.asarray(other["last_hidden"])[:, :5], np.asarray(full["last_hidden"])[:, :5])
  assert np.abs(np.asarray(other["last_hidden"])[:, 5] - np.asarray(full["last_hidden"])[:, 5]).max() > 1e-3

  # Cached: the rest against the K/V cache of the first t0 tokens equals the uncached computation. (The cache
  # of the first t0 tokens is a slice of the full run's: causal, they never see later tokens, checked above.)
  head_cache = tuple(c[:, :, :t0] for c in full["kv_cache"])
  tail = forward(params, tokens[:, t0:], positions[:, t0:], causal[:, t0:, :], head_cache)
  np.testing.assert_allclose(tail["last_hidden"], np.asarray(full["last_hidden"])[:, t0:], atol=1e-5)
  np.testing.assert_allclose(tail["kv_cache"][0], np.asarray(full["kv_cache"][0])[:, :, t0:], atol=1e-5)
  with pytest.raises(ValueError, match="attention mask covers"):
    forward(params, tokens[:, t0:], positions[:, t0:], causal[:, t0:, t0:], head_cache)


def test_grouped_query_attention_equals_repeated_kv_heads(tiny):
  """K = 1 (multi-query) equals K = N with the single K/V head copied to every head."""
  cfg, params, forward = tiny
  cfg_mha = dataclasses.replace(cfg, num_kv_heads=cfg.num_heads)
  params_mha = jax.tree.map(lambda x: x, params)
  kv = params["params"]["layers"]["attn"]["kv_einsum"]["w"]  # [L, 2, 1, D, H]
  params_mha["params"]["layers"]["attn"]["kv_einsum"]["w"] = np.repeat(kv, cfg.num_heads, axis=2)
  tokens, positions, mask = _inputs(cfg)  # same shapes as the other tests: no new compilation for `forward`
  ref = forward(params, tokens, positions, mask, None)["last_hidden"]
  mha = _forward(gemma.Gemma(cfg_mha))(params_mha, tokens, positions, mask, None)["last_hidden"]
  np.testing.assert_allclose(mha, ref, atol=1e-5)


def test_bfloat16_and_remat(tiny):
  cfg, params, forward = tiny
  tokens, positions, mask = _inputs(cfg)
  ref = np.asarray(forward(params, tokens, positions, mask, None)["last_hidden"])
  cfg16 = dataclasses.replace(cfg, dtype="bfloat16", remat=True)
  out16 = _forward(gemma.Gemma(cfg16))(params, tokens, positions, mask, None)
  assert out16["last_hidden"].dtype == jnp.bfloat16 and out16["kv_cache"][0].dtype == jnp.bfloat16
  assert np.abs(np.asarray(out16["last_hidden"], np.float32) - ref).max() < 0.05 * np.abs(ref).max()
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(_abstract(cfg16))))


def test_logical_axes():
  specs = nn.get_partition_spec(_abstract(gemma.get_config("tiny")))["params"]
  P = jax.sharding.PartitionSpec
  assert specs["layers"]["attn"]["q_einsum"]["w"] == P("layers", "q_heads", "embed", "head_dim")
  assert specs["layers"]["attn"]["kv_einsum"]["w"] == P("layers", None, "kv_heads", "embed", "head_dim")
  assert specs["layers"]["mlp"]["linear"] == P("layers", "mlp", "embed")
  assert specs["embedder"]["input_embedding"] == P("vocab", "embed")
  assert specs["final_norm"]["scale"] == P("norm")


def test_config_validation():
  with pytest.raises(ValueError, match="num_kv_heads"):
    gemma.get_config("tiny", num_kv_heads=2)
  with pytest.raises(ValueError, match="unknown Gemma variant"):
    gemma.get_config("gemma_7b")
