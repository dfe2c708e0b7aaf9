"""Properties of the shared layers and of the specs helpers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.models import layers


def test_rope_preserves_norm_and_is_relative():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 5, 3, 14)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 5, 3, 14)), jnp.float32)
  pos = jnp.arange(5)[None]
  q_rot, k_rot = layers.apply_rope(q, pos), layers.apply_rope(k, pos)
  np.testing.assert_allclose(jnp.linalg.norm(q_rot, axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5)
  # Dot products depend on position differences only: shifting all positions changes nothing.
  q_shift, k_shift = layers.apply_rope(q, pos + 11), layers.apply_rope(k, pos + 11)
  dots = jnp.einsum("btnh,bsnh->bnts", q_rot, k_rot)
  dots_shift = jnp.einsum("btnh,bsnh->bnts", q_shift, k_shift)
  np.testing.assert_allclose(dots, dots_shift, atol=1e-4)
  # Position zero is the identity.
  np.testing.assert_allclose(layers.apply_rope(q, jnp.zeros((1, 5))), q, atol=1e-6)


def test_attention_mask_and_gqa_match_reference():
  rng = np.random.default_rng(1)
  b, t, s, kv, g, h = 2, 3, 5, 2, 3, 7
  q = jnp.asarray(rng.normal(size=(b, t, kv * g, h)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, s, kv, h)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, s, kv, h)), jnp.float32)
  mask = jnp.asarray(rng.random((b, t, s)) > 0.4)
  mask = mask.at[:, :, 0].set(True)
  out = layers.dot_product_attention(q, k, v, mask)
  # Reference: repeat kv heads, plain softmax with -inf.
  k_rep, v_rep = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", q, k_rep) / np.sqrt(h)
  logits = jnp.where(mask[:, None], logits, -jnp.inf)
  ref = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, -1), v_rep)
  np.testing.assert_allclose(out, ref, atol=1e-5)
  # A fully masked row gives zeros, not NaN.
  out0 = layers.dot_product_attention(q, k, v, jnp.zeros((b, t, s), bool))
  assert np.all(np.asarray(out0) == 0)


def test_rmsnorm_and_layernorm_carry_logical_axes_and_fp32():
  x = jnp.ones((2, 5, 9), jnp.bfloat16)
  for module in (layers.RMSNorm(dtype=jnp.bfloat16), layers.LayerNorm(dtype=jnp.bfloat16)):
    variables = module.init(jax.random.key(0), x)
    y = module.apply(variables, x)
    assert y.dtype == jnp.bfloat16
    for leaf in jax.tree.leaves(variables, is_leaf=lambda l: isinstance(l, nn.Partitioned)):
      assert isinstance(leaf, nn.Partitioned) and leaf.names == ("norm",)
      assert leaf.value.dtype == jnp.float32


def test_dense_general_axes():
  module = layers.DenseGeneral(features=(3, 5), kernel_axes=("embed", "q_heads", "head_dim"))
  variables = module.init(jax.random.key(0), jnp.ones((2, 11)))
  kernel = variables["params"]["dense"]["kernel"]
  assert kernel.names == ("embed", "q_heads", "head_dim") and kernel.value.shape == (11, 3, 5)
  assert variables["params"]["dense"]["bias"].names == ("q_heads", "head_dim")


def test_sincos_3d_layout():
  emb = layers.sincos_3d(frames=3, height=2, width=5, dim=24)
  assert emb.shape == (30, 24)
  emb = np.asarray(emb).reshape(3, 2, 5, 24)
  dim_t = 24 - int(24 * 0.75) // 4 * 4
  # Temporal channels vary only with the frame index; spatial channels only with (h, w).
  np.testing.assert_allclose(emb[:, 0, 0, :dim_t], emb[:, 1, 3, :dim_t])
  np.testing.assert_allclose(emb[0, :, :, dim_t:], emb[2, :, :, dim_t:])
  assert not np.allclose(emb[0, 0, 0], emb[1, 0, 0])


def test_grid_query_uv_row_major_cell_centres():
  uv = specs.grid_query_uv(9)
  np.testing.assert_allclose(uv[0], [1 / 6, 1 / 6])
  np.testing.assert_allclose(uv[1], [3 / 6, 1 / 6])  # u varies fastest (row-major, v outer)
  np.testing.assert_allclose(uv[3], [1 / 6, 3 / 6])
  with pytest.raises(ValueError, match="K=10"):
    specs.grid_query_uv(10)


def test_models_import_neither_data_nor_training():
  """Data flows one way (specs.py): models never import lamp_jax.data or lamp_jax.training."""
  import subprocess
  import sys

  code = ("import sys, lamp_jax.models.lamp, lamp_jax.models.weights.hf_paligemma, "
          "lamp_jax.models.weights.big_vision_npz; "
          "bad = sorted(m for m in sys.modules if m.startswith(('lamp_jax.data', 'lamp_jax.training'))); "
          "print(bad); sys.exit(1 if bad else 0)")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
