"""SigLIP ViT: variant shapes (eval_shape), logical axes, token output, position embeddings, precision."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax.models import siglip


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _random_params(abstract, seed=0, scale=0.2):
  """Random float32 parameters for an abstract tree (numpy: no init compilation; the real init is tested in
  test_paligemma.py)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), abstract)


@pytest.fixture(scope="module")
def tiny():
  cfg = siglip.get_config("tiny", head_width=29)
  model = siglip.SigLIP(cfg)
  images = np.random.default_rng(1).uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32)
  boxed = jax.eval_shape(model.init, jax.random.key(0), images)
  params = _random_params(nn.unbox(boxed))
  return cfg, jax.jit(model.apply), params, boxed, images


@pytest.mark.parametrize("variant", sorted(siglip.VARIANTS))
def test_variant_shapes_without_allocation(variant):
  cfg = siglip.get_config(variant)
  model = siglip.SigLIP(cfg)
  images = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  out = jax.eval_shape(model.apply, variables, images)
  assert out.shape == (1, cfg.num_patches, cfg.width)
  params = nn.unbox(variables)["params"]
  block = params["Transformer"]["encoderblock"]
  assert block["MlpBlock_0"]["Dense_0"]["kernel"].shape == (cfg.depth, cfg.width, cfg.mlp_dim)
  assert block["MultiHeadDotProductAttention_0"]["query"]["kernel"].shape == (
      cfg.depth, cfg.width, cfg.num_heads, cfg.head_dim)
  if variant == "So400m/14":
    assert (cfg.width, cfg.depth, cfg.mlp_dim, cfg.num_heads, cfg.patch_size) == (1152, 27, 4304, 16, 14)
    assert cfg.num_patches == 256
    assert 0.40e9 < _count(params) < 0.42e9  # So400m without the projection head: 412.4 M


def test_every_parameter_has_logical_axes(tiny):
  _, _, _, boxed, _ = tiny
  specs = nn.get_partition_spec(boxed)["params"]
  shapes = nn.unbox(boxed)["params"]
  for spec, x in zip(jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)),
                     jax.tree.leaves(shapes)):
    assert len(spec) == x.ndim and any(name is not None for name in spec), (spec, x.shape)
  assert specs["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"] == jax.sharding.PartitionSpec("layers", "norm")


def test_token_output_and_full_attention(tiny):
  cfg, apply, params, _, images = tiny
  out = apply(params, images)
  assert out.shape == (2, 9, 29) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  # Bidirectional: changing the last (bottom-right) patch changes the first token's output.
  changed = images.copy()
  changed[:, -8:, -8:, :] = 0.5
  delta = np.abs(np.asarray(apply(params, changed) - out))
  assert delta[:, 0].max() > 1e-4
  # Patches are independent of the batch: the second image alone gives the same tokens.
  np.testing.assert_allclose(apply(params, images[::-1]), out[::-1], atol=1e-5)


def test_learned_posemb_checks_image_size_and_sincos_has_no_params(tiny):
  cfg, _, params, _, _ = tiny
  model = siglip.SigLIP(cfg)
  with pytest.raises(ValueError, match="image_size=24"):
    jax.eval_shape(model.apply, params, jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="multiple of patch_size"):
    jax.eval_shape(model.apply, params, jnp.zeros((1, 20, 20, 3)))
  sincos = siglip.SigLIP(siglip.get_config("tiny", posemb="sincos2d"))
  variables = jax.eval_shape(sincos.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert "pos_embedding" not in variables["params"]
  with pytest.raises(ValueError, match="posemb"):
    siglip.get_config("tiny", posemb="rope")


def test_bfloat16_activations_float32_params(tiny):
  cfg, apply, params, _, images = tiny
  model16 = siglip.SigLIP(siglip.get_config("tiny", head_width=29, dtype="bfloat16"))
  out16 = jax.jit(model16.apply)(params, images)
  assert out16.dtype == jnp.bfloat16
  abstract16 = nn.unbox(jax.eval_shape(model16.init, jax.random.key(0), images))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(abstract16))
  out32 = apply(params, images)
  scale = float(np.abs(np.asarray(out32)).max())
  assert float(np.abs(np.asarray(out16, np.float32) - np.asarray(out32)).max()) < 0.05 * scale


def test_conv_stem_shapes_axes_and_validation():
  cfg = siglip.get_config("tiny", stem="conv", stem_width=12, head_width=29)
  model = siglip.SigLIP(cfg)
  images = np.random.default_rng(2).uniform(-1, 1, (3, 24, 24, 3)).astype(np.float32)
  boxed = model.init(jax.random.key(0), images)
  params = nn.unbox(boxed)["params"]
  # patch 8 = three stride-2 convolutions (12 -> 24 -> 48 channels), then a 1x1 projection to the width.
  assert sorted(params["stem"]) == ["conv_0", "conv_1", "conv_2", "norm_0", "norm_1", "norm_2"]
  assert params["stem"]["conv_2"]["kernel"].shape == (3, 3, 24, 48)
  assert params["embedding"]["kernel"].shape == (1, 1, 48, cfg.width)
  specs = nn.get_partition_spec(boxed)["params"]
  for spec in jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)):
    assert any(name is not None for name in spec), spec
  out = jax.jit(model.apply)(boxed, images)
  assert out.shape == (3, 9, 29) and np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(model.apply(boxed, images[::-1]), out[::-1], atol=1e-5)  # per-image
  with pytest.raises(ValueError, match="power-of-two"):
    siglip.get_config("So400m/14", stem="conv")
  with pytest.raises(ValueError, match="stem"):
    siglip.get_config("tiny", stem="resnet")
