"""Gated motion guidance: the gate, its override and the residual form."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax.models import guidance

B, P, N, DV, DM = 2, 7, 5, 24, 20
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # compile time dominates; same semantics


def setup_guidance(gate_init_logit, seed=0):
  cfg = ml_collections.ConfigDict(dict(num_heads=3, gate_init_logit=gate_init_logit))
  module = guidance.GatedMotionGuidance(cfg, width=DV)
  rs = np.random.RandomState(seed)
  vlm = jnp.asarray(rs.randn(B, P, DV), jnp.float32)
  motion = jnp.asarray(rs.randn(B, N, DM), jnp.float32)
  params = nn.unbox(jax.jit(module.init, compiler_options=FAST_COMPILE)(jax.random.key(seed), vlm, motion))["params"]
  return module, params, vlm, motion


def test_gate_initialisation_released_and_paper():
  for logit, low, high in ((0.0, 0.5, 0.5), (-6.0, 1e-4, 3e-3)):  # released LaMP; paper "initialised at zero"
    module, params, vlm, motion = setup_guidance(logit)
    gate = float(module.apply({"params": params}, method="gate"))
    assert low <= gate <= high
    _, reported = jax.jit(lambda p: module.apply({"params": p}, vlm, motion), compiler_options=FAST_COMPILE)(params)
    assert float(reported) == gate


def test_gate_zero_is_identity_and_output_is_gated_residual():
  module, params, vlm, motion = setup_guidance(0.0)
  apply = jax.jit(lambda m, g: module.apply({"params": params}, vlm, m, gate_override=g),
                  compiler_options=FAST_COMPILE)
  out0, _ = apply(motion, 0.0)
  np.testing.assert_array_equal(out0, vlm)
  out, gate = jax.jit(lambda p: module.apply({"params": p}, vlm, motion), compiler_options=FAST_COMPILE)(params)
  out1, _ = apply(motion, 1.0)
  attn = np.asarray(out1 - vlm)
  assert np.abs(attn).max() > 1e-3
  np.testing.assert_allclose(out - vlm, float(gate) * attn, rtol=1e-5, atol=1e-6)
  # The motion representation reaches the output.
  out2, _ = apply(motion + 1.0, float(gate))
  assert np.abs(out2 - out).max() > 1e-4
