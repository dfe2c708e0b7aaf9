"""Action Expert (DiT with alternating cross/self-attention): conditioning, masking, configuration errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax.models import action_expert, lamp_config

CFG = lamp_config.model_config("tiny")
B, H, A, S, P, DC = 2, 5, 7, 5, 9, 48
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # compile time dominates; same semantics


def setup_expert(seed=0):
  module = action_expert.build_action_expert(CFG.action, jnp.float32)
  args = (jnp.zeros((B, H, A)), jnp.zeros((B,)), jnp.zeros((B, S)), jnp.zeros((B, P, DC)), jnp.ones((B, P), bool))
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))["params"]
  rs = np.random.RandomState(seed)
  params = jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, 0.2, s.shape), s.dtype), abstract)
  return module, params


def test_conditioning_and_context_mask():
  module, params = setup_expert()
  # The layers alternate cross- and self-attention: depth 2 = one scanned (cross, self) pair.
  assert set(params["blocks"]) == {"cross", "self"}
  rs = np.random.RandomState(1)
  x = rs.randn(B, H, A).astype(np.float32)
  tau = np.array([0.1, 0.8], np.float32)
  state = rs.randn(B, S).astype(np.float32)
  ctx = rs.randn(B, P, DC).astype(np.float32)
  mask = np.ones((B, P), bool)
  mask[0, 4:] = False
  apply = jax.jit(lambda *a: module.apply({"params": params}, *a), compiler_options=FAST_COMPILE)
  v = np.asarray(apply(x, tau, state, ctx, mask))
  assert v.shape == (B, H, A) and np.isfinite(v).all()
  ctx_masked = ctx.copy()
  ctx_masked[~mask] = -50.0
  np.testing.assert_array_equal(apply(x, tau, state, ctx_masked, mask), v)
  for changed in ((x, tau[::-1], state, ctx, mask), (x, tau, state + 1.0, ctx, mask),
                  (x, tau, state, ctx + 1.0, mask)):
    assert np.abs(np.asarray(apply(*changed)) - v).max() > 1e-4


def test_config_errors():
  bad = CFG.action.copy_and_resolve_references()
  bad.kind = "pi0_shared"
  with pytest.raises(ValueError, match="action.kind"):
    action_expert.build_action_expert(bad, jnp.float32)
  bad = CFG.action.copy_and_resolve_references()
  bad.depth = 3
  module = action_expert.build_action_expert(bad, jnp.float32)
  with pytest.raises(ValueError, match="action.depth"):
    jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, H, A)), jnp.zeros((1,)), jnp.zeros((1, S)), jnp.zeros((1, P, DC)),
                jnp.ones((1, P), bool))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cached_context_kv_equals_projecting_the_context_every_call(scan_layers):
  """context_kv (cross-attention keys / values projected once) is an exact rewrite of projecting the context
  in every call; depth 4 = two cross layers, so each layer must get its own cache entry."""
  cfg = CFG.action.copy_and_resolve_references()
  cfg.update(depth=4, scan_layers=scan_layers, scan_unroll=2 if scan_layers else 1)
  module = action_expert.build_action_expert(cfg, jnp.float32)
  args = (jnp.zeros((B, H, A)), jnp.zeros((B,)), jnp.zeros((B, S)), jnp.zeros((B, P, DC)), jnp.ones((B, P), bool))
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))["params"]
  rs = np.random.RandomState(2)
  params = jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, 0.2, s.shape), s.dtype), abstract)
  x, tau, state = rs.randn(B, H, A), np.array([0.3, 0.9]), rs.randn(B, S)
  ctx = rs.randn(B, P, DC).astype(np.float32)
  mask = np.ones((B, P), bool)
  mask[1, 6:] = False
  apply = jax.jit(lambda *a, **kw: module.apply({"params": params}, *a, **kw), compiler_options=FAST_COMPILE)
  reference = apply(x, tau, state, ctx, mask)
  cache = jax.jit(lambda c: module.apply({"params": params}, c, method="context_kv"))(ctx)
  heads = cfg.num_heads
  assert [c.shape for c in cache] == [(2, B, P, heads, cfg.width // heads)] * 2
  # The cache replaces the context entirely: a different context argument is not read.
  cached = apply(x, tau, state, np.zeros_like(ctx), mask, context_kv=cache)
  np.testing.assert_allclose(cached, reference, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(apply(x, tau, state, np.zeros_like(ctx), mask)) - np.asarray(reference)).max() > 1e-4
