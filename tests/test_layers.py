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
  # Reference: repeat kv heads, plain softmax with -inf.
  k_rep, v_rep = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)
  logits = jnp.einsum("btnh,bsnh->bnts", q, k_rep) / np.sqrt(h)
  logits = jnp.where(mask[:, None], logits, -jnp.inf)
  ref = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, -1), v_rep)
  for implementation in layers.ATTENTION_IMPLEMENTATIONS:
    if implementation == "jax_cudnn":  # GPU only
      continue
    out = layers.dot_product_attention(q, k, v, mask, implementation=implementation)
    np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=implementation)
    # A fully masked row gives zeros, not NaN.
    out0 = layers.dot_product_attention(q, k, v, jnp.zeros((b, t, s), bool), implementation=implementation)
    assert np.all(np.asarray(out0) == 0), implementation


# (query heads, kv heads, mask kind): multi-head, grouped-query and multi-query attention; no mask, a shared
# [B, T, S] mask, one mask per kv head, and a [B, 1, T, S] mask; odd sizes.
_ATTENTION_CASES = [(6, 6, None), (6, 3, "shared"), (6, 3, "per_kv_head"), (5, 1, "shared"), (5, 1, "one_head")]


def _attention_inputs(n, kv, mask_kind, dtype=jnp.float32):
  rng = np.random.default_rng(n * 10 + kv)
  b, t, s, h = 2, 7, 11, 6
  q, k, v = (jnp.asarray(rng.normal(size=shape), dtype) for shape in ((b, t, n, h), (b, s, kv, h), (b, s, kv, h)))
  masks = {None: None, "shared": rng.random((b, t, s)) > 0.3, "per_kv_head": rng.random((b, kv, t, s)) > 0.3,
           "one_head": rng.random((b, 1, t, s)) > 0.3}
  mask = masks[mask_kind]
  if mask is not None:
    mask[0, ..., 2, :] = False  # a fully masked query row (every head)
    mask = jnp.asarray(mask)
  return q, k, v, mask


@pytest.mark.parametrize("n,kv,mask_kind", _ATTENTION_CASES)
@pytest.mark.parametrize("implementation", ["heads_major", "jax_xla"])
def test_attention_implementations_equal_the_plain_computation_and_its_gradient(n, kv, mask_kind, implementation):
  """The rewrites compute the plain attention's function: outputs and gradients (w.r.t. q, k, v) to float32
  rounding, fully masked rows zero with zero gradient (no NaN)."""
  q, k, v, mask = _attention_inputs(n, kv, mask_kind)

  def loss(impl):
    return lambda q, k, v: jnp.sum(jnp.sin(layers.dot_product_attention(q, k, v, mask, implementation=impl)))

  np.testing.assert_allclose(layers.dot_product_attention(q, k, v, mask, implementation=implementation),
                             layers.plain_dot_product_attention(q, k, v, mask), atol=2e-6)
  grads = jax.grad(loss(implementation), argnums=(0, 1, 2))(q, k, v)
  plain_grads = jax.grad(loss("plain"), argnums=(0, 1, 2))(q, k, v)
  for name, got, want in zip("qkv", grads, plain_grads):
    assert np.all(np.isfinite(np.asarray(got))), name
    np.testing.assert_allclose(got, want, atol=5e-6, err_msg=f"d loss / d {name}")
  if mask is not None:
    assert np.all(np.asarray(grads[0])[0, 2] == 0)  # the fully masked row's queries get no gradient


@pytest.mark.parametrize("pad_multiple", [2, 4])
@pytest.mark.parametrize("n,kv,mask_kind", _ATTENTION_CASES)
def test_padding_the_lengths_for_cudnn_is_exact(n, kv, mask_kind, pad_multiple):
  """'jax_cudnn' pads odd query / key lengths (7, 11 here; cuDNN refuses to train otherwise), with or without a mask:
  the padded computation, run through the 'xla' implementation on CPU, equals the plain one, gradients too."""
  q, k, v, mask = _attention_inputs(n, kv, mask_kind)
  scale = q.shape[-1] ** -0.5

  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))

  padded = lambda q, k, v: layers._jax_nn_attention(q, k, v, mask, scale, "xla", pad_multiple=pad_multiple)
  plain = lambda q, k, v: layers.plain_dot_product_attention(q, k, v, mask)
  out = padded(q, k, v)
  assert out.shape == q.shape
  np.testing.assert_allclose(out, plain(q, k, v), atol=2e-6)
  for name, got, want in zip("qkv", jax.grad(loss(padded), argnums=(0, 1, 2))(q, k, v),
                             jax.grad(loss(plain), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=5e-6, err_msg=f"d loss / d {name}")


def test_heads_major_attention_in_bfloat16_within_output_rounding_of_float32():
  """bfloat16 activations: the result is the float32 attention of the same (rounded) inputs up to about the
  rounding of the bfloat16 output (values |x| < 4 here, bfloat16 spacing 2^-6 at most), like the plain one."""
  q, k, v, mask = _attention_inputs(6, 3, "shared")
  q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
  exact = layers.plain_dot_product_attention(*(x.astype(jnp.float32) for x in (q16, k16, v16)), mask)
  heads_major = layers.dot_product_attention(q16, k16, v16, mask)
  plain = layers.plain_dot_product_attention(q16, k16, v16, mask)
  assert heads_major.dtype == plain.dtype == jnp.bfloat16
  for out in (heads_major, plain):
    np.testing.assert_allclose(out.astype(jnp.float32), exact, atol=2.0**-6, rtol=2.0**-7)


def test_auto_attention_picks_cudnn_only_where_it_runs(monkeypatch):
  """'auto' (the models' default) is 'heads_major' on CPU; on GPU it is cuDNN for bf16 / fp16 with a head dim
  cuDNN takes (multiple of 8, <= 256), 'heads_major' otherwise."""
  resolve = layers.resolve_attention_implementation
  assert resolve("auto", jnp.bfloat16, 64) == "heads_major"  # this CPU host
  assert resolve("plain", jnp.bfloat16, 64) == "plain"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert resolve("auto", jnp.bfloat16, 72) == resolve("auto", jnp.float16, 256) == "jax_cudnn"
  assert resolve("auto", jnp.float32, 72) == resolve("auto", jnp.bfloat16, 12) == "heads_major"
  assert resolve("auto", jnp.bfloat16, 264) == "heads_major"


def test_unknown_attention_implementation_is_named():
  q, k, v, _ = _attention_inputs(6, 6, None)
  with pytest.raises(ValueError, match="'flash'"):
    layers.dot_product_attention(q, k, v, None, implementation="flash")
  with pytest.raises(ValueError, match="GemmaConfig.attention"):
    from lamp_jax.models import gemma
    gemma.get_config("tiny", attention="flash")


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
