"""The joint motion-image diffusion head (models/motion_image.py) on the LaMP policy: inference unchanged, the loss
against a reference written from the parameters, gradients (into the VLM, never into the VAE), masking,
reconstruction, analytic FLOPs against traced matmul FLOPs, clear errors."""

import copy
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import motion_image, registry
from lamp_jax.models import vae as vae_lib
from tests import tree_stats

lamp = registry.get("lamp")
B = 3
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def head_config(**overrides):
  """Tiny LaMP without the Motion Expert (the w/o-motion policy the head is added to) + the head; the tiny VAE
  (24-pixel flow images -> 12 x 12 x 4 latents) with a non-trivial latent scaling and shift."""
  cfg = lamp.model_config("tiny")
  cfg.use_motion = False
  cfg.motion_image.enabled = True
  cfg.loss.weights.update(dict(motion=0.0, action=1.0, motion_image=1.0))
  cfg.vae.scaling_factor, cfg.vae.shift_factor = 1.7, 0.11
  cfg.update(overrides)
  return cfg


CFG = head_config()


def random_params(cfg, seed=0, scale=0.15):
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, scale, s.shape), s.dtype), lamp.abstract_params(cfg))


@pytest.fixture(scope="module")
def setup():
  params = random_params(CFG)
  batch = lamp.dummy_batch(CFG, B, seed=1)
  return lamp.build(CFG), params, batch


def without_head(params):
  return {k: v for k, v in params.items() if k not in motion_image.TOP_LEVEL}


def test_patchify_round_trip_and_token_order():
  x = jnp.asarray(np.random.RandomState(0).normal(size=(2, 6, 9, 5)), jnp.float32)
  tokens = motion_image.patchify(x, 3)
  assert tokens.shape == (2, 2 * 3, 3 * 3 * 5)
  np.testing.assert_array_equal(motion_image.unpatchify(tokens, 3, 6, 9), x)
  # Token 4 is patch row 1, column 1: pixels [3:6, 3:6], row-major, channels last.
  np.testing.assert_array_equal(tokens[:, 4], x[:, 3:6, 3:6].reshape(2, -1))


def test_parameter_tree_axes_and_data_requirements(setup):
  _, params, _ = setup
  assert set(params) == {"vlm", "action_expert", "motion_image", "vae"}
  assert set(params["vae"]) == set(vae_lib.abstract_params(CFG.vae))
  axes = lamp.logical_axes(CFG)
  flat_axes = jax.tree_util.tree_leaves_with_path(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  flat_params = dict(jax.tree_util.tree_leaves_with_path(params))
  assert len(flat_axes) == len(flat_params)
  for path, spec in flat_axes:
    assert len(spec) == flat_params[path].ndim, path  # every parameter carries a logical name per axis
  assert lamp.data_requirements(CFG).optical_flow
  assert not lamp.data_requirements(lamp.model_config("tiny")).optical_flow
  assert set(lamp.abstract_params(lamp.inference_config(CFG))) == {"vlm", "action_expert"}


def plain_config():
  cfg = copy.deepcopy(CFG)
  cfg.motion_image.enabled = False
  cfg.loss.weights.motion_image = 0.0
  return cfg


def test_sample_actions_is_the_policy_without_the_head(setup):
  """Same outputs for the same parameters and noise (given or drawn), and the same compiled work: the head
  never runs."""
  _, params, batch = setup
  obs = {k: batch[k] for k in (specs.OBSERVATION, specs.TASK)}
  noise = {"action": np.random.RandomState(3).normal(size=(B, CFG.action_horizon, CFG.action_dim)).astype(np.float32)}

  def compiled(cfg, p):
    def sample(p, b, r):
      model = lamp.build(cfg)
      return (model.apply({"params": p}, b, r, noise=noise, method="sample_actions"),
              model.apply({"params": p}, b, r, method="sample_actions"))
    return jax.jit(sample).lower(p, obs, jax.random.key(0)).compile()

  with_head, plain = compiled(CFG, params), compiled(plain_config(), without_head(params))
  for a, b in zip(with_head(params, obs, jax.random.key(7)), plain(without_head(params), obs, jax.random.key(7))):
    np.testing.assert_array_equal(a, b)
  assert with_head.cost_analysis()["flops"] == plain.cost_analysis()["flops"]
  assert lamp.analytic_flops(CFG, 1, "sample_actions") == lamp.analytic_flops(plain_config(), 1, "sample_actions")
  assert lamp.bench_variants(CFG).keys() == {"with_motion_image_head", "without_motion_image_head"}


def test_deployed_sample_actions_takes_only_the_policys_parameters(setup):
  """``inference_params`` (what evaluation, the server and export run) drops the head and the VAE: the jitted
  ``sample_actions`` of the policy with the head then lowers to the very program of the policy without it, with
  the same arguments (bug guarded: the head's and the VAE's arrays were arguments of every deployed call, ~3 %
  more CPU time per call at sim size); parameters without a part that sample_actions reads are refused, named."""
  _, params, batch = setup
  obs = {k: batch[k] for k in (specs.OBSERVATION, specs.TASK)}
  deployed, deployed_cfg = lamp.inference_params(CFG, params)
  assert set(deployed) == set(without_head(params)) and not set(deployed) & set(motion_image.TOP_LEVEL)
  assert deployed_cfg.to_dict() == plain_config().to_dict()

  def lowered(cfg, p):
    model = lamp.build(cfg)
    return jax.jit(lambda p, b, r: model.apply({"params": p}, b, r, method="sample_actions")).lower(
        p, obs, jax.random.key(0)).as_text()

  assert lowered(deployed_cfg, deployed) == lowered(plain_config(), without_head(params))
  assert lamp.inference_params(plain_config(), params)[0] is params  # nothing training-only: unchanged
  with pytest.raises(ValueError, match=r"lack the top-level entries \['action_expert'\]"):
    lamp.inference_params(CFG, {k: v for k, v in params.items() if k != "action_expert"})


def reference_loss(params, batch, rng):
  """The 'motion_image' term written from the parameters: VLM features -> frozen VAE posterior mean ->
  scaled latents -> flow matching of the head (modules applied on their own subtrees)."""
  model = lamp.build(CFG)
  features, mask = model.apply({"params": params}, batch, method="encode")
  vae = vae_lib.AutoencoderKL(CFG.vae)
  images = batch[specs.OPTICAL_FLOW].astype(jnp.float32) / 127.5 - 1.0
  mean, _ = vae.apply({"params": params["vae"]}, images, method="encode")
  z = CFG.vae.scaling_factor * (mean - CFG.vae.shift_factor)
  present = batch[specs.HAS_OPTICAL_FLOW]
  z = jnp.where(present[:, None, None, None], z, 0.0)
  head = motion_image.MotionImageDiT(CFG.motion_image)
  rng_t, rng_e = jax.random.split(jax.random.fold_in(rng, 5))
  tau = fm.sample_time(rng_t, (B,))
  eps = jax.random.normal(rng_e, z.shape, jnp.float32)
  x_tau = (1 - tau[:, None, None, None]) * eps + tau[:, None, None, None] * z
  velocity = head.apply({"params": params["motion_image"]}, x_tau, tau, features, mask)
  per_example = jnp.mean(jnp.square(velocity - (z - eps)), axis=(1, 2, 3))
  return jnp.sum(per_example * present) / jnp.sum(present)


def test_loss_reference_masking_streams_and_gradients(setup):
  """The 'motion_image' term equals the reference; examples without a flow image do not count; the head draws
  from its own stream (the action term equals the policy's without the head); its gradient trains the head AND
  the shared VLM, never the VAE (frozen in every stage; stop_gradient also saves its backward pass) nor the
  action expert. One compiled function for all of it."""
  _, params, batch = setup
  batch = copy.deepcopy(batch)
  batch[specs.HAS_OPTICAL_FLOW][1] = False
  absent_changed = copy.deepcopy(batch)
  absent_changed[specs.OPTICAL_FLOW][1] = 255 - absent_changed[specs.OPTICAL_FLOW][1]
  present_changed = copy.deepcopy(absent_changed)
  present_changed[specs.OPTICAL_FLOW][0] = 255 - present_changed[specs.OPTICAL_FLOW][0]
  image_only = copy.deepcopy(CFG)
  image_only.loss.weights.action = 0.0
  rng = jax.random.key(4)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(p, batches):
    loss = lambda cfg, q, b: lamp.build(cfg).apply({"params": q}, b, rng, method="compute_loss")  # noqa: E731
    total, metrics = loss(CFG, p, batches[0])
    others = [loss(CFG, p, b)[1]["loss/motion_image"] for b in batches[1:]]
    plain = loss(plain_config(), without_head(p), batches[0])[1]
    grads = jax.grad(lambda q: loss(image_only, q, batches[0])[0])(p)
    return total, metrics, others, plain, reference_loss(p, batches[0], rng), grads

  total, metrics, (absent, present), plain, reference, grads = run(params, [batch, absent_changed, present_changed])
  np.testing.assert_allclose(metrics["loss/motion_image"], reference, rtol=2e-5)
  np.testing.assert_allclose(total, metrics["loss/action"] + metrics["loss/motion_image"], rtol=1e-6)
  np.testing.assert_allclose(absent, metrics["loss/motion_image"], rtol=1e-6)
  assert abs(float(present - metrics["loss/motion_image"])) > 1e-4
  assert float(plain["loss/motion_image"]) == 0.0
  np.testing.assert_allclose(plain["loss/action"], metrics["loss/action"], rtol=1e-6)
  norm = tree_stats.sum_of_squares
  assert norm(grads["vae"]) == 0.0 and norm(grads["action_expert"]) == 0.0
  assert norm(grads["motion_image"]) > 0.0 and norm(grads["vlm"]) > 0.0


def test_reconstruct_motion_image_is_euler_then_the_vae_decoder(setup):
  model, params, batch = setup
  h, w, channels = motion_image.latent_shape(CFG.vae, CFG.image_size)
  noise = np.random.RandomState(5).normal(size=(B, h, w, channels)).astype(np.float32)
  steps = 3
  images = jax.jit(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), num_steps=steps, noise=noise,
                                            method="reconstruct_motion_image"), compiler_options=FAST_COMPILE)(
                                                params, batch)
  assert images.shape == (B, CFG.image_size, CFG.image_size, 3) and images.dtype == jnp.float32
  head = motion_image.MotionImageDiT(CFG.motion_image)
  vae = vae_lib.AutoencoderKL(CFG.vae)

  def reference(params, batch):  # one program of its own (op by op it compiled ~350 small programs)
    features, mask = model.apply({"params": params}, batch, method="encode")
    z = jnp.asarray(noise)
    for i in range(steps):  # Euler 0 -> 1, tau = i / steps
      velocity = head.apply({"params": params["motion_image"]}, z, jnp.full((B,), i / steps), features, mask)
      z = z + velocity / steps
    return vae.apply({"params": params["vae"]}, z / CFG.vae.scaling_factor + CFG.vae.shift_factor, method="decode")

  expected = jax.jit(reference, compiler_options=FAST_COMPILE)(params, batch)
  np.testing.assert_allclose(images, expected, rtol=1e-4, atol=1e-4)


def traced_matmul_flops(fn, *args) -> float:
  """2 x multiply-adds of every dot_general and convolution in ``fn``'s jaxpr (scan bodies x length)."""
  def visit(jaxpr, times):
    total = 0.0
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      out = eqn.outvars[0].aval
      if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        total += times * 2.0 * math.prod(out.shape) * math.prod(lhs.shape[i] for i in contract)
      elif name == "conv_general_dilated":
        rhs = eqn.invars[1].aval
        out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
        total += times * 2.0 * math.prod(out.shape) * math.prod(rhs.shape) / out_features
      inner = times * (eqn.params["length"] if name == "scan" else 1)
      for value in eqn.params.values():
        for sub in (value if isinstance(value, (list, tuple)) else (value,)):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            total += visit(sub.jaxpr, inner)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            total += visit(sub, inner)
    return total

  return visit(jax.make_jaxpr(fn)(*args).jaxpr, 1)


def test_analytic_flops_equal_traced_matmul_flops(setup):
  _, params, batch = setup
  prefix, width = 41, 29
  h, w, channels = motion_image.latent_shape(CFG.vae, CFG.image_size)
  head = motion_image.MotionImageDiT(CFG.motion_image)
  args = (jnp.zeros((1, h, w, channels)), jnp.zeros((1,)), jnp.zeros((1, prefix, width)), jnp.ones((1, prefix), bool))
  head_params = jax.eval_shape(lambda: head.init(jax.random.key(0), *args))
  traced = traced_matmul_flops(lambda p: head.apply(p, *args), head_params)
  from lamp_jax.models import flops
  assert flops.motion_image_call(CFG.motion_image, CFG.vae, CFG.image_size, prefix, width) == traced
  vae = vae_lib.AutoencoderKL(CFG.vae)
  images = jnp.zeros((1, CFG.image_size, CFG.image_size, 3))
  assert traced_matmul_flops(lambda p: vae.apply({"params": p}, images, method="encode"), params["vae"]) == \
      flops.vae_encoder(CFG.vae, CFG.image_size)
  assert traced_matmul_flops(lambda p: vae.apply({"params": p}, jnp.zeros((1, h, w, channels)), method="decode"),
                             params["vae"]) == flops.vae_decoder(CFG.vae, CFG.image_size)
  # The SDXL VAE at 224 pixels (the paper's): 4 levels, mid-block attention, 28 x 28 latent.
  sdxl = vae_lib.model_config("sdxl")
  sdxl_vae = vae_lib.AutoencoderKL(sdxl)
  sdxl_params = vae_lib.abstract_params(sdxl)
  assert traced_matmul_flops(lambda p: sdxl_vae.apply({"params": p}, jnp.zeros((1, 224, 224, 3)), method="encode"),
                             sdxl_params) == flops.vae_encoder(sdxl, 224)
  # The train step counts the head 3x and the frozen encoder once.
  no_image = copy.deepcopy(CFG)
  no_image.loss.weights.motion_image = 0.0
  prefix_len = lamp.analytic_flops(CFG, 1, "train_step") - lamp.analytic_flops(no_image, 1, "train_step")
  head_call = lamp.analytic_flops(CFG, 1, "motion_image_call")
  np.testing.assert_allclose(prefix_len, 3 * head_call + flops.vae_encoder(CFG.vae, CFG.image_size))


def test_clear_errors(setup):
  model, params, batch = setup
  call = lambda cfg, b: jax.eval_shape(  # noqa: E731
      lambda p: lamp.build(cfg).apply({"params": p}, b, jax.random.key(0), method="compute_loss"), params)
  wrong_size = dict(batch, optical_flow=batch[specs.OPTICAL_FLOW][:, :-2])
  with pytest.raises(ValueError, match=r"batch\['optical_flow'\] has shape \(3, 22, 24, 3\).*uint8\[B, 24, 24, 3\]"):
    call(CFG, wrong_size)
  wrong_channels = dict(batch, optical_flow=np.concatenate([batch[specs.OPTICAL_FLOW]] * 2, axis=-1))
  with pytest.raises(ValueError, match=r"batch\['optical_flow'\] has shape \(3, 24, 24, 6\)"):
    call(CFG, wrong_channels)
  with pytest.raises(ValueError, match=r"model\.loss\.weights\.motion_image > 0 but the batch has no 'optical_flow'"):
    call(CFG, {k: v for k, v in batch.items() if k != specs.OPTICAL_FLOW})
  disabled = copy.deepcopy(CFG)
  disabled.motion_image.enabled = False
  with pytest.raises(ValueError, match=r"model\.loss\.weights\.motion_image > 0 but model\.motion_image\.enabled"):
    call(disabled, batch)
  unscaled = copy.deepcopy(CFG)
  unscaled.vae.scaling_factor = 0.0
  with pytest.raises(ValueError, match=r"model\.vae\.scaling_factor=0\.0"):
    lamp.build(unscaled)
  odd_patch = copy.deepcopy(CFG)
  odd_patch.motion_image.patch_size = 5
  with pytest.raises(ValueError, match=r"model\.motion_image\.patch_size=5"):
    lamp.build(odd_patch)
  with pytest.raises(ValueError, match="reconstruct_motion_image needs model.motion_image.enabled"):
    jax.eval_shape(lambda p: lamp.build(disabled).apply({"params": p}, batch, jax.random.key(0),
                                                        method="reconstruct_motion_image"), params)


def test_variant_sizes():
  """Paper: the SDXL VAE's 28 x 28 x 4 latent of a 224-pixel flow image in 2 x 2 patches (196 tokens), 6 blocks,
  about 0.37 B parameters; sim: 64 tokens over the 'sim' VAE's 8 x 8 latent."""
  counts = {}
  for variant in ("sim", "paper"):
    cfg = lamp.model_config(variant)
    cfg.motion_image.enabled = True
    counts[variant] = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v))
                       for k, v in lamp.abstract_params(cfg).items()}
    assert motion_image.num_tokens(cfg.motion_image, cfg.vae, cfg.image_size) == {"sim": 64, "paper": 196}[variant]
  assert 3.3e8 < counts["paper"]["motion_image"] < 4.2e8, counts["paper"]
  assert counts["paper"]["vae"] == 83_653_863  # diffusers' SDXL AutoencoderKL
  assert counts["sim"]["motion_image"] < 0.15 * sum(counts["sim"][k] for k in ("vlm", "action_expert"))
