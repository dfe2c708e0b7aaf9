"""The LaMP policy: parameter tree, loss masking, stage configurations, compiled sampling, variants."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.models import lamp as lamp_model
from lamp_jax.models import flops, lamp_config, motion_expert, paligemma, registry

lamp = registry.get("lamp")


CFG = lamp.model_config("tiny")
B = 2
# XLA CPU compilation dominates these tests; the unoptimised backend compiles ~2x faster, same semantics.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def setup():
  """Random (non-zero-gated) parameters from the abstract tree: no init compilation needed."""
  abstract = lamp.abstract_params(CFG)
  rs = np.random.RandomState(0)
  params = jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, 0.15, s.shape), s.dtype), abstract)
  return lamp.build(CFG), params, lamp.dummy_batch(CFG, B, seed=1)


def test_parameter_tree_top_level_and_axes(setup):
  _, params, _ = setup
  assert set(params) == set(lamp_model.TOP_LEVEL)
  axes = lamp.logical_axes(CFG)
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) == \
      jax.tree.structure(params)
  assert axes["guidance"]["gate_logit"] == jax.sharding.PartitionSpec()
  no_motion = copy.deepcopy(CFG)
  no_motion.use_motion = False
  assert set(lamp.abstract_params(no_motion)) == {"vlm", "action_expert"}


def test_loss_ignores_masked_keypoints_and_padded_action_dims(setup):
  model, params, batch = setup
  batch = copy.deepcopy(batch)
  batch[specs.ACTION_PAD_MASK][:, :, 5:] = False  # two padded action dims
  batch[specs.HAS_SCENE_FLOW][1] = False
  loss_fn = jax.jit(lambda p, b, r: model.apply({"params": p}, b, r, method="compute_loss"),
                    compiler_options=FAST_COMPILE)
  rng = jax.random.key(3)
  loss, metrics = loss_fn(params, batch, rng)
  assert set(metrics) >= {"loss", "loss/action", "loss/motion", "guidance/gate"}
  assert np.isfinite(float(loss)) and float(metrics["loss/motion"]) > 0 and float(metrics["loss/action"]) > 0
  np.testing.assert_allclose(loss, metrics["loss/action"] + metrics["loss/motion"], rtol=1e-6)

  changed = copy.deepcopy(batch)
  changed[specs.ACTION][:, :, 5:] = 123.0
  invisible = ~batch[specs.SCENE_FLOW_MASK]
  changed[specs.SCENE_FLOW][invisible] = -7.0
  changed[specs.SCENE_FLOW][1] = 9.0  # sample without motion labels
  changed[specs.SCENE_FLOW_QUERY][1] = 9.0
  loss2, metrics2 = loss_fn(params, changed, rng)
  for key in ("loss/action", "loss/motion"):
    np.testing.assert_allclose(metrics2[key], metrics[key], rtol=1e-6, err_msg=key)
  # A visible keypoint and a real action dim do change the loss.
  changed[specs.ACTION][:, :, 0] += 1.0
  visible = np.argwhere(batch[specs.SCENE_FLOW_MASK][0] & batch[specs.SCENE_FLOW_QUERY_MASK][0][:, None])[0]
  changed[specs.SCENE_FLOW][0, visible[0], visible[1]] += 0.01
  _, metrics3 = loss_fn(params, changed, rng)
  for key in ("loss/action", "loss/motion"):
    assert abs(float(metrics3[key]) - float(metrics[key])) > 1e-6, key


def test_loss_repeats_equal_a_tiled_batch(setup):
  """loss.{motion,action}_repeats = R equals R = 1 on the batch tiled R times (same draws, one VLM pass).

  The gate is forced to 0 so that guidance (whose partial-denoising noise is drawn per example) drops out."""
  _, params, batch = setup
  repeats = 3
  cfg = copy.deepcopy(CFG)
  cfg.loss.motion_repeats = cfg.loss.action_repeats = repeats
  tiled = jax.tree.map(lambda x: np.concatenate([x] * repeats), batch)

  def loss(model_cfg, b):
    fn = lambda p, bb, r: lamp.build(model_cfg).apply({"params": p}, bb, r, gate_override=0.0,  # noqa: E731
                                                     method="compute_loss")
    return jax.jit(fn, compiler_options=FAST_COMPILE)(params, b, jax.random.key(5))[1]

  repeated, reference = loss(cfg, batch), loss(CFG, tiled)
  for key in ("loss/motion", "loss/action"):
    np.testing.assert_allclose(repeated[key], reference[key], rtol=2e-5, err_msg=key)
  assert lamp.analytic_flops(cfg, 1, "train_step") > lamp.analytic_flops(CFG, 1, "train_step")
  bad = copy.deepcopy(CFG)
  bad.loss.action_repeats = 0
  with pytest.raises(ValueError, match="action_repeats"):
    lamp.build(bad).apply({"params": params}, batch, jax.random.key(0), method="compute_loss")


@pytest.mark.slow  # several compilations of the sim-size model
def test_proprio_off_and_dropout(setup):
  """use_proprio=False: the action loss does not depend on the proprio values. proprio_dropout only acts in
  training (train=False equals no dropout), only zeroes the state (zero proprio is unchanged by it), and does act
  (a different loss for non-zero proprio)."""
  _, params, batch = setup
  rng = jax.random.key(11)

  def action_loss(model_cfg, b, train):
    fn = lambda p, bb, r: lamp.build(model_cfg).apply({"params": p}, bb, r, train=train,  # noqa: E731
                                                     method="compute_loss")
    return float(jax.jit(fn, compiler_options=FAST_COMPILE)(params, b, rng)[1]["loss/action"])

  other = copy.deepcopy(batch)
  other[specs.OBSERVATION][specs.PROPRIO] = other[specs.OBSERVATION][specs.PROPRIO] * -3.0 + 1.0
  zeros = copy.deepcopy(batch)
  zeros[specs.OBSERVATION][specs.PROPRIO] = np.zeros_like(zeros[specs.OBSERVATION][specs.PROPRIO])
  off = copy.deepcopy(CFG)
  off.use_proprio = False
  assert action_loss(off, batch, True) == action_loss(off, other, True) == action_loss(CFG, zeros, True)
  assert action_loss(CFG, batch, True) != action_loss(CFG, other, True)

  drop = copy.deepcopy(CFG)
  drop.proprio_dropout = 0.9  # with this key at least one of the B = 2 examples is dropped
  assert action_loss(drop, batch, False) == action_loss(CFG, batch, False)
  assert action_loss(drop, zeros, True) == action_loss(CFG, zeros, True)
  assert action_loss(drop, batch, True) != action_loss(CFG, batch, True)
  bad = copy.deepcopy(CFG)
  bad.proprio_dropout = 1.0
  with pytest.raises(ValueError, match="proprio_dropout"):
    lamp.build(bad).apply({"params": params}, batch, rng, method="compute_loss")


def test_stage_configs_need_only_their_data(setup):
  _, params, batch = setup
  stage1 = copy.deepcopy(CFG)
  stage1.loss.weights.action = 0.0  # motion only, action-free data
  no_actions = {k: v for k, v in batch.items() if k not in (specs.ACTION, specs.ACTION_PAD_MASK)}
  loss, metrics = jax.eval_shape(
      lambda p, b: lamp.build(stage1).apply({"params": p}, b, jax.random.key(0), method="compute_loss"),
      params, no_actions)
  assert loss.shape == () and metrics["guidance/gate"].shape == ()
  stage2 = copy.deepcopy(CFG)
  stage2.loss.weights.motion = 0.0
  no_flow = {k: v for k, v in batch.items() if not k.startswith("scene_flow") and k != specs.HAS_SCENE_FLOW}
  jax.eval_shape(lambda p, b: lamp.build(stage2).apply({"params": p}, b, jax.random.key(0), method="compute_loss"),
                 params, no_flow)
  with pytest.raises(ValueError, match="no 'action'"):
    jax.eval_shape(lambda p, b: lamp.build(CFG).apply({"params": p}, b, jax.random.key(0), method="compute_loss"),
                   params, no_actions)
  ablation = copy.deepcopy(CFG)
  ablation.use_motion = False
  with pytest.raises(ValueError, match="use_motion"):
    jax.eval_shape(lambda p, b: lamp.build(ablation).apply({"params": p}, b, jax.random.key(0),
                                                           method="compute_loss"), params, batch)
  # Named terms: an unknown term and all-zero weights are errors naming the field.
  unknown = copy.deepcopy(CFG)
  unknown.loss.weights.depth_image = 1.0
  with pytest.raises(ValueError,
                     match=r"model\.loss\.weights\.depth_image.*terms: \['motion', 'action', 'motion_image'\]"):
    jax.eval_shape(lambda p, b: lamp.build(unknown).apply({"params": p}, b, jax.random.key(0),
                                                          method="compute_loss"), params, batch)
  nothing = copy.deepcopy(CFG)
  nothing.loss.weights.motion = nothing.loss.weights.action = 0.0
  with pytest.raises(ValueError, match="nothing to train"):
    jax.eval_shape(lambda p, b: lamp.build(nothing).apply({"params": p}, b, jax.random.key(0),
                                                          method="compute_loss"), params, batch)


def test_sample_actions_compiles_once_and_gate_zero_equals_no_motion(setup):
  model, params, batch = setup
  obs_only = {k: batch[k] for k in (specs.OBSERVATION, specs.TASK)}
  traces = []

  @jax.jit(compiler_options=FAST_COMPILE)
  def sample(p, b, r, gate):
    traces.append(1)
    return model.apply({"params": p}, b, r, gate_override=gate, method="sample_actions")

  outs = [sample(params, obs_only, jax.random.key(i), jnp.float32(g)) for i, g in ((0, 0.0), (1, 0.5), (0, 0.7))]
  other = lamp.dummy_batch(CFG, B, seed=5)
  outs.append(sample(params, {k: other[k] for k in obs_only}, jax.random.key(0), jnp.float32(0.0)))
  assert len(traces) == 1
  for out in outs:
    assert out.shape == (B, CFG.action_horizon, CFG.action_dim) and out.dtype == jnp.float32
    assert np.isfinite(out).all()
  assert np.abs(outs[0] - outs[2]).max() > 1e-3  # the motion guidance changes the actions

  ablation = copy.deepcopy(CFG)
  ablation.use_motion = False
  no_motion_params = {k: params[k] for k in ("vlm", "action_expert")}
  no_motion = jax.jit(lambda p, b, r: lamp.build(ablation).apply({"params": p}, b, r, method="sample_actions"),
                      compiler_options=FAST_COMPILE)
  # The same math in two different programs: equal up to the compiler's choice of summation order (XLA's CPU loop
  # emitters, which the suite uses, fuse the two programs differently: up to 3 ulp measured), far below the guidance's
  # effect checked above.
  np.testing.assert_allclose(no_motion(no_motion_params, obs_only, jax.random.key(0)), outs[0], rtol=0, atol=1e-5)


def test_exact_inference_rewrites_equal_the_reference_math(setup):
  """The default sampling (pruned last motion block, action cross-attention keys / values projected once,
  heads-major attention) computes the same actions as the plain per-step computation (unrolled scans: the
  expert tests)."""
  _, params, batch = setup
  obs_only = {k: batch[k] for k in (specs.OBSERVATION, specs.TASK)}
  reference_cfg = lamp.reference_config(CFG)
  assert (reference_cfg.attention, reference_cfg.vlm.attention) == ("plain", "plain")
  assert not reference_cfg.motion.prune_last_condition and not reference_cfg.action.cache_context_kv

  def sample(cfg):
    fn = jax.jit(lambda p, b, r: lamp.build(cfg).apply({"params": p}, b, r, method="sample_actions"),
                 compiler_options=FAST_COMPILE)
    return np.asarray(fn(params, obs_only, jax.random.key(4)))

  np.testing.assert_allclose(sample(CFG), sample(reference_cfg), rtol=1e-5, atol=1e-5)
  # The analytic FLOPs count the work actually done.
  assert lamp.analytic_flops(CFG, 1, "sample_actions") < lamp.analytic_flops(reference_cfg, 1, "sample_actions")


@pytest.mark.slow  # two compiled gradients of the whole model (~40 s)
def test_heads_major_attention_gives_the_plain_loss_and_gradient(setup):
  """Training through the default attention ('heads_major', every component) equals the plain attention."""
  _, params, batch = setup
  plain_cfg = copy.deepcopy(CFG)
  plain_cfg.attention = "plain"
  assert plain_cfg.vlm.attention == "plain"  # the VLM follows the model-wide field

  def loss_and_grad(cfg):
    model = lamp.build(cfg)
    fn = jax.jit(jax.value_and_grad(lambda p: model.apply({"params": p}, batch, jax.random.key(5),
                                                          method="compute_loss")[0]),
                 compiler_options=FAST_COMPILE)
    return fn(params)

  (loss, grads), (plain_loss, plain_grads) = loss_and_grad(CFG), loss_and_grad(plain_cfg)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-5)
  for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(g, p, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_openpi_dummy_preset_has_pi0_test_sizes_and_equal_flops():
  """configs/lamp.py:openpi_dummy is openpi's π0 test model (SigLIP S/14 at 224², dummy Gemma, 3 cameras, 48
  tokens, horizon 10, action dim 8) w/o motion, with a DiT action expert of π0's analytic cost: 38.49 GFLOP per
  ``sample_actions`` and 459.5 GFLOP per batch-4 train step for π0, computed here from its layer shapes."""
  cfg = lamp.model_config("openpi_dummy")
  vlm = paligemma.config_from_dict(cfg.vlm)
  assert (vlm.vision.width, vlm.vision.depth, vlm.vision.mlp_dim, vlm.vision.num_heads) == (384, 12, 1536, 6)
  assert (vlm.vision.patch_size, vlm.vision.image_size, vlm.vision.num_patches) == (14, 224, 256)
  assert (vlm.llm.width, vlm.llm.depth, vlm.llm.mlp_dim, vlm.llm.num_heads, vlm.llm.num_kv_heads,
          vlm.llm.head_dim, vlm.llm.vocab_size) == (64, 4, 128, 8, 1, 16, 257_152)
  assert tuple(cfg.image_keys) == (specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY, specs.IMAGE_WRIST)
  assert (cfg.max_token_len, cfg.action_horizon, cfg.action_dim, cfg.proprio_dim, cfg.dtype) == (48, 10, 8, 8,
                                                                                                   "float32")
  assert not cfg.use_motion and cfg.loss.weights.motion == 0.0
  assert (cfg.action.width, cfg.action.depth) == (64, 8)
  assert lamp_config.prefix_length(cfg) == 3 * 256 + 48
  # π0: SigLIP per camera, Gemma over the 816-token prefix, then per Euler step the action expert ('dummy' Gemma
  # sizes) over 11 suffix tokens (state + 10 actions) attending to prefix + suffix, and its in / out projections.
  g, v, prefix, suffix, w = vlm.llm, vlm.vision, 816, 11, 64
  vision = 3 * (2 * 256 * 14 * 14 * 3 * v.width + v.depth * flops.transformer_layer(256, v.width, v.mlp_dim)
                + 2 * 256 * v.width * g.width)
  prefix_llm = g.depth * flops.gemma_layer(g, prefix)
  suffix_layers = g.depth * flops.gemma_layer(g, suffix, keys=prefix + suffix)
  projections = 2 * 8 * w + 2 * 10 * 8 * w + 2 * 10 * 3 * w * w + 2 * 10 * w * 8
  step = g.depth * flops.gemma_layer(g, suffix, keys=prefix + suffix, kv_tokens=suffix) + projections
  pi0_sample = vision + prefix_llm + 10 * step
  pi0_train = 3 * 4 * (vision + prefix_llm + suffix_layers + projections)
  assert abs(pi0_sample / 38.4946e9 - 1) < 1e-4 and abs(pi0_train / 459.4856e9 - 1) < 1e-4
  assert abs(lamp.analytic_flops(cfg, 1, "sample_actions") / pi0_sample - 1) < 1e-3
  assert abs(lamp.analytic_flops(cfg, 4, "train_step") / pi0_train - 1) < 2e-3


def test_reconstruct_motion_and_full_sampling_shapes(setup):
  model, params, batch = setup
  tracks = jax.eval_shape(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), num_steps=4,
                                                   method="reconstruct_motion"), params, batch)
  assert tracks.shape == (B, CFG.motion.num_keypoints, CFG.motion.num_steps, 3)
  actions = jax.eval_shape(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), motion_steps=10,
                                                    method="sample_actions"), params, batch)
  assert actions.shape == (B, CFG.action_horizon, CFG.action_dim)


def test_bad_inputs_raise_clear_errors(setup):
  model, params, batch = setup
  bad = copy.deepcopy(batch)
  bad[specs.OBSERVATION][specs.IMAGE_PRIMARY] = bad[specs.OBSERVATION][specs.IMAGE_PRIMARY][:, :, :-1]
  with pytest.raises(ValueError, match="image_primary"):
    jax.eval_shape(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), method="sample_actions"),
                   params, bad)
  bad = copy.deepcopy(batch)
  del bad[specs.TASK][specs.TOKENS]
  with pytest.raises(ValueError, match="tokens"):
    jax.eval_shape(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), method="sample_actions"),
                   params, bad)


def test_all_variants_shapes_and_paper_size():
  counts = {}
  for variant in lamp.variants:
    cfg = lamp.model_config(variant)
    params = lamp.abstract_params(cfg)
    # The w/o-motion ablation (openpi_dummy) has neither a Motion Expert nor guidance.
    expected = lamp_model.TOP_LEVEL if cfg.use_motion else ("vlm", "action_expert")
    assert set(params) == set(expected), variant
    counts[variant] = {k: _count(v) for k, v in params.items()}
    assert lamp.analytic_flops(cfg, 1, "sample_actions") < lamp.analytic_flops(cfg, 1, "sample_actions_full_motion")
  paper = counts["paper"]
  assert 2.8e9 < paper["vlm"] < 3.0e9, paper  # PaliGemma-3B: SigLIP So400m + Gemma 2B
  assert 1.5e8 < paper["motion_expert"] < 4.5e8, paper  # 12 layers x 1024 wide + expert adaLN
  assert 3.0e8 < paper["action_expert"] < 9.0e8, paper  # 24 layers x 1024 wide DiT
  assert motion_expert.num_motion_tokens(lamp.model_config("paper").motion) == 16 * 10 * 10
  assert counts["tiny"]["vlm"] < 1e6 and sum(counts["sim"].values()) < 3e7
