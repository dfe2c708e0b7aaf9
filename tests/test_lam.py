"""The latent action model library ('lam'): variants, learning a recoverable latent, MVP-LAM's cross-view term,
encode_latent vs compute_loss, padded pairs, bad inputs, collapse counting, FLOPs, the frozen image encoder."""

import copy
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lamp_jax import specs
from lamp_jax.models import lam as lam_model
from lamp_jax.models import lam_config, registry
from lamp_jax.models import vq as vq_lib
from tests import tree_stats

lam = registry.get("lam")
CFG = lam.model_config("tiny")
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _single_view(cfg, view=specs.IMAGE_PRIMARY):
  cfg = copy.deepcopy(cfg)
  cfg.views = (view,)
  cfg.loss.weights.cross_view = 0.0
  return cfg


def _init(cfg):
  """Unboxed variables ('params' and the 'vq_state'), initialised by the unoptimised (fast-compiling) backend."""
  model = lam.build(cfg)
  init = jax.jit(lambda rng, batch: model.init(rng, batch, jax.random.key(1)), compiler_options=FAST_COMPILE)
  return nn.unbox(init(jax.random.key(0), lam.dummy_batch(cfg, 2, 0)))


def _encode(cfg, **kwargs):
  """Jitted (fast-compiling) ``encode_latent`` of ``cfg``: (params, batch) -> dict."""
  model = lam.build(cfg)
  return jax.jit(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), method="encode_latent", **kwargs),
                 compiler_options=FAST_COMPILE)


def _loss_fn(cfg, with_state=False):
  model = lam.build(cfg)
  if not with_state:
    return jax.jit(lambda p, b, r: model.apply({"params": p}, b, r, method="compute_loss"),
                   compiler_options=FAST_COMPILE)
  return jax.jit(lambda v, b, r: model.apply(v, b, r, method="compute_loss", mutable=[vq_lib.STATE]),
                 compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def params():
  return _init(CFG)["params"]


@pytest.mark.parametrize("variant", lam_config.VARIANTS)
def test_variant_shapes_and_axes(variant):
  cfg = lam.model_config(variant)
  abstract = lam.abstract_params(cfg)
  expected = {"idm", "vq", "fdm"} | ({"image_encoder"} if lam_config.uses_encoder(cfg) else set())
  assert set(abstract) == expected
  k, length, dim = cfg.vq.num_codes, cfg.vq.code_length, cfg.vq.code_dim
  assert abstract["vq"]["codebook"].shape == (k, dim)
  axes = lam.logical_axes(cfg)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)  # noqa: E731
  assert jax.tree.structure(axes, is_leaf=is_spec) == jax.tree.structure(abstract)
  for spec in jax.tree.leaves(axes, is_leaf=is_spec):  # every parameter carries logical axis names
    assert any(name is not None for name in spec)
  assert tuple(axes["vq"]["codebook"]) == ("codes", "code_dim")
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), lam.dummy_batch(cfg, 2))
  model = lam.build(cfg)
  out = jax.eval_shape(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), method="encode_latent"),
                       abstract, batch)
  assert out["latent"].shape == out["quantized"].shape == (2, length, dim) and out["latent"].dtype == jnp.float32
  assert out["codes"].shape == (2, length) and out["codes"].dtype == jnp.int32 and out["valid"].shape == (2,)
  loss, metrics = jax.eval_shape(lambda p, b: model.apply({"params": p}, b, jax.random.key(0),
                                                          method="compute_loss"), abstract, batch)
  assert loss.shape == () and {f"loss/{t}" for t in lam_model.LOSS_TERMS} <= set(metrics)
  state = jax.eval_shape(lambda b: lam.init_model_state(cfg, jax.random.key(0), b), batch)
  assert state[vq_lib.STATE]["vq"]["usage"].shape == (k,)
  req = lam.data_requirements(cfg)
  assert req.cameras == req.future_cameras == tuple(cfg.views) and req.actions_optional
  assert req.future_offsets == tuple(cfg.future_offsets) and req.action_horizon == 0


def _train(cfg, steps, batch_size, lr=3e-3):
  """Adam steps on ``dummy_batch`` (colour-shift pairs) with the state and ``after_update`` as the trainer runs
  them. Returns (params, reconstruction loss per step)."""
  model = lam.build(cfg)
  variables = _init(cfg)
  params, state = variables["params"], {vq_lib.STATE: variables[vq_lib.STATE]}
  tx = optax.adam(lr)
  opt = tx.init(params)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(params, state, opt, batch, rng):
    def loss_fn(p):
      (loss, metrics), written = model.apply({"params": p, **state}, batch, rng, method="compute_loss",
                                             mutable=[vq_lib.STATE])
      return loss, (metrics, written)
    (_, (metrics, written)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = tx.update(grads, opt, params)
    params, written, extra = lam.after_update(cfg, optax.apply_updates(params, updates), written,
                                              jax.random.fold_in(rng, 1))
    return params, written, opt, {**metrics, **extra}

  history = []
  for i in range(steps):
    params, state, opt, metrics = step(params, state, opt, lam.dummy_batch(cfg, batch_size, 100 + i),
                                       jax.random.key(i))
    history.append(float(metrics["loss/reconstruction"]))
  return params, history


def test_a_few_steps_reduce_the_loss():
  cfg = _single_view(CFG)
  cfg.image_size = 8
  _, history = _train(cfg, 12, 8)
  assert np.mean(history[-3:]) < 0.5 * np.mean(history[:2])


@pytest.mark.slow
def test_a_short_run_keeps_several_codes_in_use():
  """The collapse seen on the simulator (one code after ~50 steps) on the colour-shift toy, where o_t+k depends on
  one of four discrete actions: after 40 steps the codes still spread over several entries (slow: ~100 s on the
  loaded 2-core box, most of it compiling the step)."""
  cfg = _single_view(CFG)
  cfg.image_size = 8
  params, history = _train(cfg, 40, 16)
  batch, _ = lam_model.colour_shift_pairs(cfg, 64, seed=7)
  _, metrics = _loss_fn(cfg)(params, batch, jax.random.key(0))
  assert float(metrics["vq/perplexity"]) >= 2.0
  assert np.mean(history[-5:]) < history[0]


@pytest.mark.slow
def test_training_recovers_the_latent_action():
  """Colour-shift pairs (four actions): after 150 steps the decoder relies on the latent (shuffled latents
  predict much worse) and the codes tell the four actions apart."""
  cfg = _single_view(CFG)
  params, history = _train(cfg, 150, 32)
  model = lam.build(cfg)
  batch, action = lam_model.colour_shift_pairs(cfg, 64, seed=7)
  # Without the latent the best prediction is o_t itself (the four shifts average to 0): its MSE is the floor.
  obs = batch[specs.OBSERVATION]
  now = obs[specs.IMAGE_PRIMARY][:, 0].astype(np.float32) / 127.5 - 1
  floor = np.mean(np.square(now - (obs[specs.FUTURE][specs.IMAGE_PRIMARY][:, 0].astype(np.float32) / 127.5 - 1)))
  assert np.mean(history[-10:]) < 0.75 * floor

  def decode_error(module, batch, order):
    current, future, valid = module._frames(batch, tuple(module.config.views))
    _, quantised, now_tokens, next_tokens = module._latents(current, future, valid, jax.random.key(0))
    prediction = module.fdm(now_tokens, quantised["straight_through"][order])
    return jnp.mean(jnp.square(prediction - next_tokens))

  own = float(model.apply({"params": params}, batch, np.arange(64), method=decode_error))
  shuffled = float(model.apply({"params": params}, batch, np.random.RandomState(0).permutation(64),
                               method=decode_error))
  assert shuffled > 3 * own
  _, metrics = _loss_fn(cfg)(params, batch, jax.random.key(0))  # the logged metric tells the same
  assert float(metrics["lam/reconstruction_shuffled"]) > 3 * float(metrics["loss/reconstruction"])
  codes = np.asarray(_encode(cfg)(params, batch)["codes"])
  # Each action's most frequent code tuple covers most of its examples, and the four tuples differ.
  modes = []
  for a in range(4):
    tuples, counts = np.unique(codes[action == a], axis=0, return_counts=True)
    assert counts.max() >= 0.6 * counts.sum()
    modes.append(tuple(tuples[np.argmax(counts)]))
  assert len(set(modes)) == 4


def test_untrained_residual_decoder_predicts_the_present_and_logs_the_copy_baseline(params):
  """``fdm_residual``: the decoder's zero-initialised change leaves o_t as the prediction, so before training the
  reconstruction and cross-view losses equal the copy-the-present baseline, which is the pixel MSE of (o_t, o_t+k)
  computed here by hand over both views."""
  residual = copy.deepcopy(CFG)
  residual.fdm_residual = True
  batch = lam.dummy_batch(CFG, 3, 5)
  _, metrics = _loss_fn(residual)(_init(residual)["params"], batch, jax.random.key(0))
  obs = batch[specs.OBSERVATION]
  by_hand = np.mean([np.mean(np.square(obs[v][:, 0].astype(np.float32) / 127.5
                                       - obs[specs.FUTURE][v][:, 0].astype(np.float32) / 127.5)) for v in CFG.views])
  assert float(metrics["lam/copy_baseline"]) == pytest.approx(by_hand, rel=1e-5)
  assert float(metrics["loss/reconstruction"]) == pytest.approx(by_hand, rel=1e-5)
  assert float(metrics["loss/cross_view"]) == pytest.approx(by_hand, rel=1e-5)
  assert not CFG.fdm_residual  # the default: the plain decoder predicts from scratch, far from the present
  _, metrics = _loss_fn(CFG)(params, batch, jax.random.key(0))
  assert float(metrics["loss/reconstruction"]) > 3 * by_hand


def test_bypass_decodes_the_continuous_latent(params):
  """``vq.bypass``: the decoder reads z, so moving the codebook changes the codebook / commitment losses but not the
  reconstruction; without it the reconstruction reads the (moved) codes."""
  bypass = copy.deepcopy(CFG)
  bypass.vq.bypass = True
  batch = lam.dummy_batch(CFG, 3, 5)
  moved = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.5 if "codebook" in jax.tree_util.keystr(path) else x, params)
  for cfg, reads_codes in ((bypass, False), (CFG, True)):
    loss = _loss_fn(cfg)
    _, before = loss(params, batch, jax.random.key(0))
    _, after = loss(moved, batch, jax.random.key(0))
    assert float(after["loss/commitment"]) != pytest.approx(float(before["loss/commitment"]))
    same = float(after["loss/reconstruction"]) == pytest.approx(float(before["loss/reconstruction"]), rel=1e-6)
    assert same != reads_codes, cfg.vq.bypass


def test_shuffled_latent_reconstruction_decodes_each_valid_pair_with_the_previous_valid_pairs_latent(params):
  """'lam/reconstruction_shuffled' equals, by hand, the self-view MSE of decoding each valid pair with the quantised
  latent of the previous valid pair of its view (the first valid pair borrows the last's), over the same pairs as
  'loss/reconstruction'; and a decoder that ignores the latent (the untrained residual
  decoder predicts o_t) scores exactly the same with and without the shuffle."""
  batch = lam.dummy_batch(CFG, 5, 3)
  batch[specs.OBSERVATION][specs.FUTURE_PAD_MASK][2] = False  # pair 2 neither counts nor lends its latent
  _, metrics = _loss_fn(CFG)(params, batch, jax.random.key(0))
  model = lam.build(CFG)
  kept = np.array([0, 1, 3, 4])
  lender = np.array([4, 0, 1, 3])  # the previous valid pair, cyclically

  def by_hand(module, batch):
    current, future, valid = module._frames(batch, tuple(module.config.views))
    _, quantised, now_tokens, next_tokens = module._latents(current, future, valid, jax.random.key(0))
    v, b = valid.shape[:2]
    latent = quantised["quantized"].reshape(v, b, *quantised["quantized"].shape[1:])
    now, nxt = now_tokens.reshape(v, b, *now_tokens.shape[1:]), next_tokens.reshape(v, b, *next_tokens.shape[1:])
    prediction = module.fdm(now[:, kept].reshape(v * 4, *now.shape[2:]),
                            latent[:, lender].reshape(v * 4, *latent.shape[2:]))
    return jnp.mean(jnp.square(prediction - nxt[:, kept].reshape(v * 4, *nxt.shape[2:])))

  expected = jax.jit(lambda p, b: model.apply({"params": p}, b, method=by_hand), compiler_options=FAST_COMPILE)(
      params, batch)
  assert float(metrics["lam/reconstruction_shuffled"]) == pytest.approx(float(expected), rel=1e-5)
  assert float(metrics["lam/reconstruction_shuffled"]) != pytest.approx(float(metrics["loss/reconstruction"]),
                                                                         rel=1e-3)

  residual = copy.deepcopy(CFG)
  residual.fdm_residual = True  # the same parameter tree; its untrained output projection is zero
  blind = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.zeros_like(x) if "output_proj" in jax.tree_util.keystr(path) and
      jax.tree_util.keystr(path).startswith("['fdm']") else x, params)
  _, metrics = _loss_fn(residual)(blind, batch, jax.random.key(0))
  assert float(metrics["lam/reconstruction_shuffled"]) == pytest.approx(float(metrics["loss/reconstruction"]),
                                                                         rel=1e-6)


def test_cross_view_off_equals_the_single_view_lam(params):
  """MVP-LAM with its cross-view term off on a two-view batch = the mean of the single-view LAM's losses on each
  view (same parameters: nothing in the model depends on the viewpoint); with it on, the total adds its MSE."""
  batch = lam.dummy_batch(CFG, 3, 5)
  rng = jax.random.key(1)
  off = copy.deepcopy(CFG)
  off.loss.weights.cross_view = 0.0
  loss_off, metrics_off = _loss_fn(off)(params, batch, rng)
  singles = [_loss_fn(_single_view(CFG, v))(params, batch, rng) for v in CFG.views]
  np.testing.assert_allclose(loss_off, np.mean([float(s[0]) for s in singles]), rtol=1e-5)
  for term in ("reconstruction", "codebook", "commitment"):
    np.testing.assert_allclose(metrics_off[f"loss/{term}"], np.mean([float(s[1][f"loss/{term}"]) for s in singles]),
                               rtol=1e-5)
  assert float(metrics_off["loss/cross_view"]) == 0.0
  loss_on, metrics_on = _loss_fn(CFG)(params, batch, rng)
  assert float(metrics_on["loss/cross_view"]) > 0
  np.testing.assert_allclose(loss_on, loss_off + metrics_on["loss/cross_view"], rtol=1e-5)
  np.testing.assert_allclose(metrics_on["loss/reconstruction"], metrics_off["loss/reconstruction"], rtol=1e-6)


def test_cross_view_decodes_the_other_views_future_with_this_views_latent(params):
  """With two views whose frames are swapped, the cross-view error equals the self-view error (the decoder is
  not told the viewpoint, so (latent of i, context of j) is the same computation as the swapped self pair)."""
  batch = lam.dummy_batch(CFG, 3, 2)
  a, b = CFG.views
  obs = batch[specs.OBSERVATION]
  obs[b] = obs[a].copy()
  obs[specs.FUTURE][b] = obs[specs.FUTURE][a].copy()  # identical views: cross pairs = self pairs
  _, metrics = _loss_fn(CFG)(params, batch, jax.random.key(0))
  np.testing.assert_allclose(metrics["loss/cross_view"], metrics["loss/reconstruction"], rtol=1e-5)


def test_encode_latent_matches_compute_loss_quantisation(params):
  cfg = _single_view(CFG)
  batch = lam.dummy_batch(cfg, 5, 3)
  model = lam.build(cfg)
  out = _encode(cfg)(params, batch)
  codebook = params["vq"]["codebook"]
  np.testing.assert_array_equal(out["codes"], vq_lib.nearest_codes(out["latent"], codebook))
  np.testing.assert_array_equal(out["quantized"], np.asarray(codebook)[np.asarray(out["codes"])])
  _, metrics = _loss_fn(cfg)(params, batch, jax.random.key(0))
  by_hand = np.mean(np.square(np.asarray(out["latent"]) - np.asarray(out["quantized"])))
  np.testing.assert_allclose(metrics["loss/codebook"], by_hand, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/commitment"], by_hand, rtol=1e-5)
  assert bool(np.all(out["valid"]))
  second = _encode(cfg, view=specs.IMAGE_PRIMARY, offset_index=0)(params, batch)
  np.testing.assert_array_equal(second["codes"], out["codes"])
  with pytest.raises(ValueError, match="not one of config field model.views"):
    jax.eval_shape(lambda p: model.apply({"params": p}, batch, jax.random.key(0), method="encode_latent",
                                         view=specs.IMAGE_WRIST), params)


def test_padded_pairs_do_not_contribute(params):
  """Pairs with future_pad_mask False (or a missing camera) change neither the loss, its gradient nor the codebook
  statistics, whatever their frames hold; a batch of padding only is a zero loss, not NaN."""
  batch = lam.dummy_batch(CFG, 4, 9)
  obs = batch[specs.OBSERVATION]
  obs[specs.FUTURE_PAD_MASK][1] = False
  obs[specs.IMAGE_MASK][CFG.views[1]][2] = False
  other = copy.deepcopy(batch)
  other_obs = other[specs.OBSERVATION]
  rs = np.random.RandomState(0)
  for view in CFG.views:
    other_obs[specs.FUTURE][view][1] = rs.randint(0, 256, other_obs[specs.FUTURE][view][1].shape)
  other_obs[CFG.views[1]][2] = 255 - other_obs[CFG.views[1]][2]
  other_obs[specs.FUTURE][CFG.views[1]][2] = 0
  state = {vq_lib.STATE: _init(CFG)[vq_lib.STATE]}
  grad_fn = jax.jit(jax.grad(lambda p, b: lam.build(CFG).apply({"params": p, **state}, b, jax.random.key(2),
                                                                method="compute_loss", mutable=[vq_lib.STATE])[0][0]),
                    compiler_options=FAST_COMPILE)
  results = [_loss_fn(CFG, with_state=True)({"params": params, **state}, b, jax.random.key(2)) for b in (batch, other)]
  (loss_a, metrics_a), state_a = results[0]
  (loss_b, metrics_b), state_b = results[1]
  assert float(loss_a) == float(loss_b)
  assert float(metrics_a["lam/valid_pairs"]) == pytest.approx(5 / 8)  # example 1 (both views), view 2 of example 2
  for key in ("usage", "recent_latents"):
    np.testing.assert_array_equal(state_a[vq_lib.STATE]["vq"][key], state_b[vq_lib.STATE]["vq"][key])
  for ga, gb in zip(jax.tree.leaves(grad_fn(params, batch)), jax.tree.leaves(grad_fn(params, other))):
    np.testing.assert_array_equal(ga, gb)
  obs[specs.FUTURE_PAD_MASK][:] = False
  loss, metrics = _loss_fn(CFG)(params, batch, jax.random.key(0))
  assert float(loss) == 0.0 and float(metrics["lam/valid_pairs"]) == 0.0


def test_bad_inputs_fail_naming_the_key_or_field(params):
  batch = lam.dummy_batch(CFG, 2, 0)
  no_view = copy.deepcopy(batch)
  del no_view[specs.OBSERVATION][specs.IMAGE_SECONDARY]
  with pytest.raises(ValueError, match="no camera 'image_secondary' of config field model.views"):
    _loss_fn(CFG)(params, no_view, jax.random.key(0))
  no_future_view = copy.deepcopy(batch)
  del no_future_view[specs.OBSERVATION][specs.FUTURE][specs.IMAGE_SECONDARY]
  with pytest.raises(ValueError, match=r"\['future'\] has no camera 'image_secondary'"):
    _loss_fn(CFG)(params, no_future_view, jax.random.key(0))
  no_future = copy.deepcopy(batch)
  del no_future[specs.OBSERVATION][specs.FUTURE]
  with pytest.raises(ValueError, match="no 'future' frames .* model.future_offsets"):
    _loss_fn(CFG)(params, no_future, jax.random.key(0))
  two_offsets = copy.deepcopy(CFG)
  two_offsets.future_offsets = (1, 2)
  with pytest.raises(ValueError, match=r"expected \(2, 2, 16, 16, 3\) \(one frame per offset"):
    _loss_fn(two_offsets)(params, batch, jax.random.key(0))
  one_view = _single_view(CFG)
  one_view.loss.weights.cross_view = 1.0
  with pytest.raises(ValueError, match="cross_view > 0 needs 2 or more views"):
    _loss_fn(one_view)(params, batch, jax.random.key(0))
  ema = copy.deepcopy(CFG)
  ema.vq.ema = True
  with pytest.raises(ValueError, match="codebook must be 0 with model.vq.ema=True"):
    _loss_fn(ema)(params, batch, jax.random.key(0))
  ema.loss.weights.codebook = 0.0
  assert np.isfinite(float(_loss_fn(ema)(params, batch, jax.random.key(0))[0]))


def test_several_offsets_are_pairs_of_their_own(params):
  """F future offsets: each (o_t, o_t+k) is a pair; padding one offset leaves the other's loss."""
  cfg = _single_view(CFG)
  cfg.future_offsets = (1, 2)
  batch = lam.dummy_batch(cfg, 3, 4)
  loss, _ = _loss_fn(cfg)(params, batch, jax.random.key(0))
  firsts = []
  for index, k in enumerate(cfg.future_offsets):
    one = copy.deepcopy(cfg)
    one.future_offsets = (k,)
    only = copy.deepcopy(batch)
    only[specs.OBSERVATION][specs.FUTURE][specs.IMAGE_PRIMARY] = \
        batch[specs.OBSERVATION][specs.FUTURE][specs.IMAGE_PRIMARY][:, index:index + 1]
    only[specs.OBSERVATION][specs.FUTURE_PAD_MASK] = batch[specs.OBSERVATION][specs.FUTURE_PAD_MASK][:, index:index + 1]
    firsts.append(float(_loss_fn(one)(params, only, jax.random.key(0))[0]))
    latent = _encode(cfg, offset_index=index)(params, batch)
    np.testing.assert_allclose(latent["latent"], _encode(one)(params, only)["latent"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss, np.mean(firsts), rtol=1e-5)


def test_collapsed_codebook_is_counted():
  """Every code identical: every latent takes code 0, perplexity 1: ``collapse_patience`` (5 in 'tiny') steps
  make one event in vq/collapse_events (restarts off so the collapse persists)."""
  cfg = copy.deepcopy(CFG)
  cfg.vq.restart, cfg.vq.init_from_data = False, False
  variables = _init(cfg)
  params = variables["params"]
  params["vq"]["codebook"] = jnp.zeros_like(params["vq"]["codebook"])
  state = {vq_lib.STATE: variables[vq_lib.STATE]}
  fn = _loss_fn(cfg, with_state=True)
  events = []
  for i in range(6):
    (_, metrics), state = fn({"params": params, **state}, lam.dummy_batch(cfg, 4, i), jax.random.key(i))
    events.append(float(metrics["vq/collapse_events"]))
    assert float(metrics["vq/perplexity"]) == pytest.approx(1.0)
  assert events == [0, 0, 0, 0, 1, 1]


def test_analytic_flops_match_xla_for_one_block_stacks():
  """Unscanned counts are exact for depth-1 stacks: the analytic forward FLOPs of compute_loss agree with XLA's
  cost analysis (which also counts the element-wise work: within 15 %), for pixels and features inputs."""
  for idm_input, target in (("pixels", "pixels"), ("features", "pixels")):
    cfg = copy.deepcopy(CFG)
    cfg.idm_depth = cfg.fdm_depth = 1
    cfg.image_size, cfg.image_encoder.overrides = 24, {"depth": 1}
    cfg.idm_input, cfg.target = idm_input, target
    batch = lam.dummy_batch(cfg, 2, 0)
    params = _init(cfg)["params"]
    model = lam.build(cfg)
    compiled = jax.jit(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), method="compute_loss")).lower(
        params, batch).compile()
    xla = compiled.cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    # train_step = frozen encoder forward + 3 x the trainable rest + the forward-only shuffled-latent decoding.
    train = lam.analytic_flops(cfg, 2, "train_step")
    encoder_part = _encoder_flops(cfg, 2) if lam_config.uses_encoder(cfg) else 0.0
    shuffled = len(cfg.views) * len(cfg.future_offsets) * lam.analytic_flops(cfg, 2, "decode")
    forward = encoder_part + (train - encoder_part - shuffled) / 3 + shuffled
    assert 0.85 < float(xla["flops"]) / forward < 1.15, (idm_input, target, xla["flops"], forward)


def _encoder_flops(cfg, batch_size):
  from lamp_jax.models import flops, siglip

  images = len(cfg.views) * (1 + len(cfg.future_offsets))
  return batch_size * images * flops.siglip_tower(siglip.config_from_dict(cfg.image_encoder))


def test_frozen_encoder_gets_no_gradient_and_loads_a_paligemma_tower(tmp_path):
  """'features' input: the SigLIP tower's gradients are exactly zero (stop_gradient), and its weights load from
  a big_vision PaliGemma .npz into the 'image_encoder' subtree (its 'img/' tower, 'img/head' left over)."""
  from lamp_jax.models import paligemma
  from lamp_jax.models.weights import big_vision_npz, strict

  cfg = copy.deepcopy(CFG)
  cfg.idm_input = cfg.target = "features"
  cfg.image_size = 24
  batch = lam.dummy_batch(cfg, 2, 0)
  params = _init(cfg)["params"]
  grads = jax.jit(jax.grad(lambda p: lam.build(cfg).apply({"params": p}, batch, jax.random.key(0),
                                                          method="compute_loss")[0]),
                  compiler_options=FAST_COMPILE)(params)
  assert tree_stats.max_abs(grads["image_encoder"]) == 0.0
  assert tree_stats.global_norm(grads["idm"]) > 0
  vlm = paligemma.default_config_dict("tiny")  # SigLIP 'tiny' at 24^2, as the LAM's tower
  rs = np.random.RandomState(3)
  vlm_params = jax.tree.map(lambda x: rs.normal(size=x.shape).astype(np.float32), paligemma.abstract_params(vlm))
  path = tmp_path / "pg.npz"
  big_vision_npz.save(vlm_params, path)
  tower = big_vision_npz.load_image_tower(path, cfg.image_encoder)
  flat = strict.flatten(tower)
  assert set(flat) == set(strict.flatten(params["image_encoder"]))
  np.testing.assert_array_equal(flat["embedding/kernel"], np.asarray(vlm_params["img"]["embedding"]["kernel"]))
  wrong = copy.deepcopy(cfg.image_encoder)
  wrong.overrides = {"width": 48, "num_heads": 2}
  with pytest.raises(strict.StrictLoadError, match="mismatched"):
    big_vision_npz.load_image_tower(path, wrong)
