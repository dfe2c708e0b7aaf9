"""The FiLM-CNN prefix encoder (models/film_cnn.py) and its selection in LaMP (vlm.kind, models/prefix_encoder.py)."""

import copy

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.models import film_cnn, flops, lamp_config, prefix_encoder, registry

FAST_COMPILE = {"xla_backend_optimization_level": 0}
CFG = film_cnn.FiLMCNNConfig(image_size=24, vocab_size=17, max_text_len=7, num_cameras=2, width=13,
                             channels=(5, 7, 11), kernels=(2, 3, 3), strides=(2, 1, 2), text_width=9, cond_width=11,
                             keypoints=3)
B, C, L = 3, 2, 7


def _inputs(seed=0, length=L):
  rs = np.random.RandomState(seed)
  images = rs.uniform(-1, 1, (B, C, 24, 24, 3)).astype(np.float32)
  tokens = rs.randint(1, CFG.vocab_size, (B, length)).astype(np.int32)
  token_mask = np.arange(length)[None] < np.array([length, 4, 2])[:, None]
  return images, np.ones((B, C), bool), np.where(token_mask, tokens, 0), token_mask


@pytest.fixture(scope="module")
def encoder():
  """The module, random parameters with every FiLM kernel non-zero (init makes FiLM the identity), and apply."""
  module = film_cnn.FiLMCNNEncoder(CFG)
  variables = jax.jit(module.init, compiler_options=FAST_COMPILE)(jax.random.key(0), *_inputs())
  params = nn.unbox(variables)["params"]
  rs = np.random.RandomState(1)
  random = jax.tree.map(lambda x: jnp.asarray(rs.normal(0.0, 0.3, x.shape), jnp.float32), params)
  apply = jax.jit(lambda p, *args: module.apply({"params": p}, *args), compiler_options=FAST_COMPILE)
  return variables, params, random, apply


def test_prefix_layout_mask_and_logical_axes(encoder):
  variables, params, _, apply = encoder
  out = apply(params, *_inputs())
  tokens_per_image = CFG.grid**2 + CFG.keypoints
  assert CFG.grid == 6 and CFG.tokens_per_image == tokens_per_image == 39 and CFG.keypoint_stage == 1
  assert out["last_hidden"].shape == (B, C * tokens_per_image + L, CFG.width)
  images, image_mask, tokens, token_mask = _inputs()
  image_mask[1, 0] = False
  out = apply(params, images, image_mask, tokens, token_mask)
  mask = np.asarray(out["prefix_mask"])
  assert not mask[1, :tokens_per_image].any() and mask[1, tokens_per_image:2 * tokens_per_image].all()
  np.testing.assert_array_equal(mask[:, C * tokens_per_image:], token_mask)
  # Every parameter carries one logical axis name per dimension.
  specs_tree = nn.get_partition_spec(variables)["params"]
  for spec, leaf in zip(jax.tree.leaves(specs_tree, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                        jax.tree.leaves(params)):
    assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == leaf.ndim, (spec, leaf.shape)


def test_film_is_the_identity_at_init(encoder):
  """FiLM kernels start at zero: at init the image tokens do not depend on the instruction (and the text tokens
  do); with non-zero FiLM weights they do."""
  _, params, random, apply = encoder
  images, image_mask, tokens, token_mask = _inputs()
  other = (tokens + 5) % CFG.vocab_size * token_mask
  n_image = C * CFG.tokens_per_image
  a, b = apply(params, images, image_mask, tokens, token_mask), apply(params, images, image_mask, other, token_mask)
  np.testing.assert_allclose(a["last_hidden"][:, :n_image], b["last_hidden"][:, :n_image], atol=1e-6)
  assert np.abs(a["last_hidden"][:, n_image:] - b["last_hidden"][:, n_image:]).max() > 1e-3
  a, b = apply(random, images, image_mask, tokens, token_mask), apply(random, images, image_mask, other, token_mask)
  assert np.abs(a["last_hidden"][:, :n_image] - b["last_hidden"][:, :n_image]).max() > 1e-3


def test_instruction_is_order_aware_and_ignores_padding(encoder):
  """'the red cube on the blue cube' != 'the blue cube on the red cube': swapping two words changes the image
  tokens (through FiLM); changing padded token ids, or padding a shorter token array, changes nothing."""
  _, _, random, apply = encoder
  images, image_mask, tokens, token_mask = _inputs()
  n_image = C * CFG.tokens_per_image
  swapped = tokens.copy()
  swapped[0, [1, 3]] = tokens[0, [3, 1]]
  assert tokens[0, 1] != tokens[0, 3]
  a, b = apply(random, images, image_mask, tokens, token_mask), apply(random, images, image_mask, swapped, token_mask)
  assert np.abs(a["last_hidden"][0, :n_image] - b["last_hidden"][0, :n_image]).max() > 1e-3
  np.testing.assert_allclose(a["last_hidden"][1:], b["last_hidden"][1:], atol=1e-6)
  junk = np.where(token_mask, tokens, 9)
  c = apply(random, images, image_mask, junk, token_mask)
  np.testing.assert_allclose(a["last_hidden"][:, :n_image], c["last_hidden"][:, :n_image], atol=1e-5)
  # Only 4 real tokens at most in examples 1, 2: a 5-token array gives the same image tokens there.
  short = apply(random, images, image_mask, tokens[:, :5], token_mask[:, :5])
  np.testing.assert_allclose(a["last_hidden"][1:, :n_image], short["last_hidden"][1:, :n_image], atol=1e-5)


def test_cameras_are_encoded_independently(encoder):
  """Changing camera 1's image leaves camera 0's tokens and the text tokens exactly as they were."""
  _, _, random, apply = encoder
  images, image_mask, tokens, token_mask = _inputs()
  changed = images.copy()
  changed[:, 1] = -changed[:, 1]
  a, b = apply(random, images, image_mask, tokens, token_mask), apply(random, changed, image_mask, tokens, token_mask)
  n = CFG.tokens_per_image
  np.testing.assert_allclose(a["last_hidden"][:, :n], b["last_hidden"][:, :n], atol=1e-6)
  np.testing.assert_allclose(a["last_hidden"][:, 2 * n:], b["last_hidden"][:, 2 * n:], atol=1e-6)
  assert np.abs(a["last_hidden"][:, n:2 * n] - b["last_hidden"][:, n:2 * n]).max() > 1e-3


def test_spatial_softmax_closed_form():
  """Uniform logits -> the image centre (0.5, 0.5); a peaked logit -> that pixel's centre ((i + 0.5) / W)."""
  h, w = 5, 7
  uniform = film_cnn.spatial_softmax(jnp.zeros((1, h, w, 2)))
  np.testing.assert_allclose(uniform, 0.5, atol=1e-6)
  logits = np.zeros((1, h, w, 2), np.float32)
  logits[0, 3, 1, 0] = 60.0  # row 3, column 1
  logits[0, 0, 6, 1] = 60.0
  uv = np.asarray(film_cnn.spatial_softmax(jnp.asarray(logits)))
  np.testing.assert_allclose(uv[0, 0], [(1 + 0.5) / w, (3 + 0.5) / h], atol=1e-5)
  np.testing.assert_allclose(uv[0, 1], [(6 + 0.5) / w, (0 + 0.5) / h], atol=1e-5)
  coords = film_cnn.coordinate_channels(h, w)
  np.testing.assert_allclose(coords[3, 1], [2 * (1.5 / w) - 1, 2 * (3.5 / h) - 1], atol=1e-6)


def test_prefix_flops_match_xla_count():
  """The analytic count equals XLA's FLOP count of the encoder's convolutions and dense layers up to the
  element-wise work XLA also counts (norms, FiLM, softmax: a few per cent here)."""
  module = film_cnn.FiLMCNNEncoder(CFG)
  inputs = _inputs()
  variables = jax.jit(module.init, compiler_options=FAST_COMPILE)(jax.random.key(0), *inputs)
  params = nn.unbox(variables)["params"]
  compiled = jax.jit(lambda p, *a: module.apply({"params": p}, *a)).lower(params, *inputs).compile()
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, (list, tuple)) else xla
  analytic = B * flops.film_cnn_prefix(CFG, C, L)
  assert 0.85 < analytic / float(xla["flops"]) <= 1.0, (analytic, xla["flops"])


def test_config_errors_name_the_field():
  vlm = lamp_config.model_config("tiny").vlm
  vlm.kind = "resnet"
  with pytest.raises(ValueError, match="model.vlm.kind"):
    prefix_encoder.width(vlm)
  vlm.kind = "film_cnn"
  with pytest.raises(ValueError, match="model.vlm.vocab_size"):
    prefix_encoder.width(vlm)
  vlm.vocab_size = 11
  assert prefix_encoder.width(vlm) == film_cnn.FiLMCNNConfig.width
  vlm.film_cnn.depth = 3
  with pytest.raises(ValueError, match="model.vlm.film_cnn has unknown keys"):
    prefix_encoder.width(vlm)
  with pytest.raises(ValueError, match="not divisible by the total stride"):
    film_cnn.FiLMCNNConfig(image_size=20, vocab_size=5, max_text_len=3, channels=(4, 4, 4), kernels=(3, 3, 3),
                           strides=(2, 2, 2))


def _lamp_film_config(keypoints: int = 2) -> ml_collections.ConfigDict:
  cfg = lamp_config.model_config("tiny")
  cfg.vlm.kind = "film_cnn"
  cfg.vlm.vocab_size = 37
  cfg.vlm.film_cnn.update(dict(width=15, channels=(5, 7), kernels=(2, 3), strides=(2, 4), text_width=9,
                               cond_width=11, keypoints=keypoints))
  cfg.motion.cond_len = lamp_config.prefix_length(cfg)
  return cfg


@pytest.mark.slow  # ~130 s at load 7 on the 2-core box (two LaMP compilations)
def test_lamp_with_film_cnn_trains_and_samples():
  """vlm.kind='film_cnn': the parameter tree keeps its top level (the encoder under 'vlm'), the prefix length the
  experts are sized for is the encoder's, and the loss has a gradient into the encoder (sampling reads the prefix
through the same ``encode``)."""
  lamp = registry.get("lamp")
  cfg = _lamp_film_config()
  # Random parameters from the abstract tree (at init the experts' zero-initialised outputs stop every gradient).
  rs = np.random.RandomState(0)
  params = jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, 0.15, s.shape), s.dtype), lamp.abstract_params(cfg))
  assert set(params) == {"vlm", "motion_expert", "guidance", "action_expert"}
  assert "conv_0" in params["vlm"] and "keypoint_embedding" in params["vlm"]
  model = lamp.build(cfg)
  batch = lamp.dummy_batch(cfg, 2, seed=3)
  features, mask = jax.jit(lambda p, b: model.apply({"params": p}, b, method="encode"),
                           compiler_options=FAST_COMPILE)(params, batch)
  assert features.shape == (2, lamp_config.prefix_length(cfg), 15) == (2, 2 * (3 * 3 + 2) + 7, 15)
  grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, batch, jax.random.key(1),
                                                 method="compute_loss")[0]), compiler_options=FAST_COMPILE)(params)
  assert float(jnp.abs(grads["vlm"]["conv_0"]["kernel"]).sum()) > 0
  assert float(jnp.abs(grads["vlm"]["film_1"]["dense"]["kernel"]).sum()) > 0
  assert lamp.data_requirements(cfg).vocab_size == 37
  assert lamp.analytic_flops(cfg, 2, "train_step") > 0


def test_default_kind_keeps_the_paligemma_tree():
  """vlm.kind defaults to 'paligemma' and a config without the field (written before it existed) means the same:
  the VLM subtree is SigLIP + Gemma ('img', 'llm'), whatever the unused film_cnn section holds."""
  lamp = registry.get("lamp")
  cfg = lamp_config.model_config("tiny")
  assert cfg.vlm.kind == "paligemma"
  tree = lamp.abstract_params(cfg)["vlm"]
  assert set(tree) == {"img", "llm"}
  old = copy.deepcopy(cfg)
  del old.vlm["kind"]
  del old.vlm["film_cnn"]
  assert jax.tree.structure(lamp.abstract_params(old)) == jax.tree.structure(lamp.abstract_params(cfg))
  assert flops.prefix_length(old.vlm, 2, 7) == flops.prefix_length(cfg.vlm, 2, 7)
  assert specs.IMAGE_PRIMARY in cfg.image_keys


def test_export_refuses_a_film_cnn_encoder_by_name():
  """lamp_torch implements the PaliGemma prefix only: the export names model.vlm.kind instead of failing inside
  the tensor layout; the default kind stays exportable."""
  from lamp_jax import export  # pylint: disable=g-import-not-at-top

  assert export.kind_of(lamp_config.model_config("tiny")) == "lamp"
  with pytest.raises(ValueError, match=r"model\.vlm\.kind='film_cnn'"):
    export.layout(_lamp_film_config())
