"""Motion Expert: target normalisation, patchify, masking of the condition, partial denoising."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax.models import lamp_config, registry
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import motion_expert as me

lamp = registry.get("lamp")

CFG = lamp.model_config("tiny")
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # compile time dominates; same semantics
B, P, DV = 2, 11, 48  # DV: any VLM width works (the expert projects it)


def random_params(abstract, seed, scale=0.2):
  """Random normal parameters shaped like ``abstract`` (non-trivial: no zero-initialised gates)."""
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, scale, s.shape), s.dtype), abstract)


def expert_and_params(cfg, seed=0):
  module = me.MotionExpert(cfg)
  args = (jnp.zeros((B, cfg.num_keypoints, cfg.num_steps, 3)), jnp.zeros((B,)), jnp.zeros((B, P, DV)),
          jnp.ones((B, P), bool))
  abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))["params"]
  return module, random_params(abstract, seed)


def test_target_round_trip_and_clipping():
  rs = np.random.RandomState(0)
  k, t = 9, 5
  scale = np.asarray(CFG.motion.delta_scale, np.float32)
  query = rs.rand(B, k, 3).astype(np.float32)
  deltas = rs.uniform(-0.9, 0.9, (B, k, t, 3)).astype(np.float32) * scale
  tracks = query[:, :, None] + np.cumsum(deltas, axis=2)
  target = me.tracks_to_target(query, tracks, scale)
  np.testing.assert_allclose(target, deltas / scale, atol=1e-4)
  np.testing.assert_allclose(me.target_to_tracks(query, target, scale), tracks, atol=1e-5)
  # Deltas beyond ±scale are clipped to ±1.
  big = tracks.copy()
  big[0, 0, 2:] += 1.0
  clipped = me.tracks_to_target(query, big, scale)
  assert np.all(clipped[0, 0, 2] == 1.0) and np.all(np.abs(clipped) <= 1.0)


def test_target_mask_needs_both_endpoints():
  query_mask = np.array([[True, False, True]])
  track_mask = np.array([[[True, True, True], [True, True, True], [True, False, True]]])
  mask = np.asarray(me.target_mask(query_mask, track_mask, np.array([True])))
  np.testing.assert_array_equal(mask[0], [[True, True, True], [False, True, True], [True, False, False]])
  assert not np.asarray(me.target_mask(query_mask, track_mask, np.array([False]))).any()


def test_patchify_groups_grid_neighbours_and_frames():
  cfg = CFG.motion  # 4 x 4 grid, T = 6, patch 2, 2 frames per token -> 3 x 2 x 2 tokens of 24 values.
  side = 4
  k_idx = np.arange(cfg.num_keypoints)
  row, col = k_idx // side, k_idx % side
  t_idx = np.arange(cfg.num_steps)
  # value encodes (row, col, step, channel) so every entry is unique.
  x = (row[:, None, None] * 1000 + col[:, None, None] * 100 + t_idx[None, :, None] * 10
       + np.arange(3)[None, None]).astype(np.float32)[None]
  tokens = np.asarray(me.patchify(jnp.asarray(x), cfg))
  assert tokens.shape == (1, me.num_motion_tokens(cfg), 2 * 2 * 2 * 3)
  # Token 0 = frame 0, rows 0-1, cols 0-1, steps 0-1; token 1 = cols 2-3; token 4 = frame 1 (steps 2-3).
  for token, (r0, c0, t0) in ((0, (0, 0, 0)), (1, (0, 2, 0)), (2, (2, 0, 0)), (4, (0, 0, 2))):
    vals = tokens[0, token]
    assert sorted(set((vals // 1000).astype(int))) == [r0, r0 + 1]
    assert sorted(set((vals % 1000 // 100).astype(int))) == [c0, c0 + 1]
    assert sorted(set((vals % 100 // 10).astype(int))) == [t0, t0 + 1]
  np.testing.assert_array_equal(me.unpatchify(jnp.asarray(tokens), cfg), x)


def test_bad_geometry_raises():
  bad = CFG.motion.copy_and_resolve_references()
  bad.patch_size = 3
  with pytest.raises(ValueError, match="patch_size"):
    me.token_grid(bad)
  bad = CFG.motion.copy_and_resolve_references()
  bad.num_keypoints = 15
  with pytest.raises(ValueError, match="perfect square"):
    me.token_grid(bad)


def test_masked_condition_positions_are_ignored():
  # With the optional 3-D RoPE (the released default without it is exercised by the partial-denoising test).
  cfg = CFG.motion.copy_and_resolve_references()
  cfg.use_rope = True
  module, params = expert_and_params(cfg)
  rs = np.random.RandomState(1)
  x = jnp.asarray(rs.randn(B, cfg.num_keypoints, cfg.num_steps, 3), jnp.float32)
  tau = jnp.array([0.2, 0.7])
  feats = rs.randn(B, P, DV).astype(np.float32)
  mask = np.ones((B, P), bool)
  mask[:, 7:] = False
  mask[1, 3] = False
  apply = jax.jit(lambda f, m, t: module.apply({"params": params}, x, t, f, m), compiler_options=FAST_COMPILE)
  v1, h1 = apply(feats, mask, tau)
  feats2 = feats.copy()
  feats2[~mask] = 100.0
  v2, h2 = apply(feats2, mask, tau)
  np.testing.assert_array_equal(v1, v2)
  np.testing.assert_array_equal(h1, h2)
  assert v1.shape == x.shape and h1.shape == (B, me.num_motion_tokens(cfg), cfg.width)
  # ...while real positions and the time do matter.
  feats3 = feats.copy()
  feats3[:, 0] += 1.0
  assert np.abs(apply(feats3, mask, tau)[0] - v1).max() > 1e-4
  assert np.abs(apply(feats, mask, tau[::-1])[0] - v1).max() > 1e-4


def test_one_step_partial_denoising_equals_two_expert_calls():
  cfg = CFG
  module, me_params = expert_and_params(cfg.motion, seed=2)
  model = lamp.build(cfg)
  rs = np.random.RandomState(3)
  feats = jnp.asarray(rs.randn(B, P, DV), jnp.float32)
  mask = jnp.ones((B, P), bool).at[0, -2:].set(False)
  rng = jax.random.key(7)
  hidden = jax.jit(lambda p, f, m, r: model.apply({"params": {"motion_expert": p}}, f, m, r,
                                                  method="motion_representation"),
                   compiler_options=FAST_COMPILE)(me_params, feats, mask, rng)

  @jax.jit(compiler_options=FAST_COMPILE)
  def explicit(p, f, m, r):
    x0 = jax.random.normal(r, (B, cfg.motion.num_keypoints, cfg.motion.num_steps, 3))
    v0, _ = module.apply({"params": p}, x0, jnp.zeros((B,)), f, m)
    x1 = x0 + cfg.tau_infer * v0
    return module.apply({"params": p}, x1, jnp.full((B,), cfg.tau_infer), f, m)[1]

  np.testing.assert_allclose(hidden, explicit(me_params, feats, mask, rng), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan_layers,use_rope", [(True, True), (False, False)])
def test_pruned_last_block_and_unrolled_scan_equal_the_reference(scan_layers, use_rope):
  """prune_last_condition (last block on motion queries only) and scan_unroll are exact rewrites: the same
  velocity and hidden state as the plain stack (depth 3: a scan of 2 + the last block), and for the scanned
  stack the same parameter gradients (the training path)."""
  ref_cfg = CFG.motion.copy_and_resolve_references()
  ref_cfg.update(depth=3, scan_layers=scan_layers, use_rope=use_rope, prune_last_condition=False, scan_unroll=1)
  _, params = expert_and_params(ref_cfg, seed=4)
  rs = np.random.RandomState(5)
  x = jnp.asarray(rs.randn(B, ref_cfg.num_keypoints, ref_cfg.num_steps, 3), jnp.float32)
  tau = jnp.asarray([0.0, 0.37], jnp.float32)
  feats = jnp.asarray(rs.randn(B, P, DV), jnp.float32)
  mask = jnp.ones((B, P), bool).at[1, -3:].set(False)
  w_v = jnp.asarray(rs.randn(*x.shape), jnp.float32)

  def outputs(cfg):
    module = me.MotionExpert(cfg)

    def loss(p):
      v, h = module.apply({"params": p}, x, tau, feats, mask)
      return jnp.sum(v * w_v) + jnp.sum(jnp.sin(h)), (v, h)

    if not scan_layers:
      return jax.jit(loss, compiler_options=FAST_COMPILE)(params)[1]
    (_, (v, h)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=FAST_COMPILE)(params)
    return v, h, grads

  reference = outputs(ref_cfg)
  variants = [dict(prune_last_condition=True, scan_unroll=2 if scan_layers else 1)]
  for variant in variants:
    cfg = ref_cfg.copy_and_resolve_references()
    cfg.update(variant)
    for name, got, want in zip(("velocity", "hidden", "grads"), outputs(cfg), reference):
      # Gradients are sums over many tokens (magnitudes ~10-50): float32 reassociation only.
      tol = 1e-4 if name == "grads" else 1e-5
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol, err_msg=f"{variant} {name}"),
                   got, want)


def test_condition_pooling_option_is_a_masked_window_mean():
  rs = np.random.RandomState(6)
  feats = rs.randn(B, P, 5).astype(np.float32)  # P = 11 tokens -> windows of 4: 3 windows, the last padded
  mask = np.ones((B, P), bool)
  mask[0, 4:8] = False  # a fully masked window
  mask[1, [0, 9]] = False
  pooled, pooled_mask = me.pool_condition(jnp.asarray(feats), jnp.asarray(mask), 4)
  assert pooled.shape == (B, 3, 5)
  np.testing.assert_array_equal(pooled_mask, [[True, False, True], [True, True, True]])
  for b in range(B):
    for w in range(3):
      keep = mask[b, 4 * w:4 * w + 4]
      if keep.any():
        np.testing.assert_allclose(pooled[b, w], feats[b, 4 * w:4 * w + 4][keep].mean(0), rtol=1e-6, atol=1e-6)
  same = me.pool_condition(jnp.asarray(feats), jnp.asarray(mask), 1)
  np.testing.assert_array_equal(same[0], feats)
  # The expert accepts the pooled condition when cond_len holds it (and says which field to raise if not).
  cfg = CFG.motion.copy_and_resolve_references()
  cfg.update(cond_pool=4, cond_len=3)
  module, params = expert_and_params(cfg)
  x = jnp.zeros((B, cfg.num_keypoints, cfg.num_steps, 3))
  v, h = jax.eval_shape(lambda: module.apply({"params": params}, x, jnp.zeros((B,)), jnp.asarray(feats[..., :1]
                                                                                                 .repeat(DV, -1)),
                                             jnp.asarray(mask)))
  assert v.shape == x.shape and h.shape == (B, me.num_motion_tokens(cfg), cfg.width)
  cfg.cond_pool = 2
  with pytest.raises(ValueError, match="motion.cond_len"):
    jax.eval_shape(lambda: me.MotionExpert(cfg).apply({"params": params}, x, jnp.zeros((B,)),
                                                      jnp.zeros((B, P, DV)), jnp.asarray(mask)))


def test_loss_weights_upweight_moving_valid_deltas_only():
  rs = np.random.RandomState(3)
  target = np.zeros((2, 5, 3, 3), np.float32)
  target[0, 1, 2] = (0.3, 0.0, 0.0)  # moving, valid
  target[1, 4, 0] = (0.0, 0.05, 0.05)  # norm 0.07: static at threshold 0.1
  target[1, 2, 1] = (0.0, 0.0, -2.0)  # moving but invalid
  valid = np.ones((2, 5, 3), bool)
  valid[1, 2, 1] = False
  plain = np.asarray(me.loss_weights(target, valid))
  np.testing.assert_array_equal(plain, valid.astype(np.float32))
  weighted = np.asarray(me.loss_weights(target, valid, moving_weight=5.0, moving_threshold=0.1))
  expected = valid.astype(np.float32)
  expected[0, 1, 2] = 5.0
  np.testing.assert_array_equal(weighted, expected)
  prediction = rs.normal(size=target.shape).astype(np.float32)
  err = np.square(prediction - target).sum(-1)
  np.testing.assert_allclose(fm.masked_mse(prediction, target, weighted[..., None]),
                             (err * weighted).sum() / (3 * weighted.sum()), rtol=1e-6)
