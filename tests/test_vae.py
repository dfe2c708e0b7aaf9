"""models.vae (AutoencoderKL in Flax): sizes, latent scaling, posterior and KL in closed form, loss masking,
training from scratch on synthetic flow images. Parity with diffusers: test_vae_diffusers.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lamp_jax import flow_image, specs
from lamp_jax.models import vae

# diffusers.AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2) -- the SD / SDXL VAE.
DIFFUSERS_SDXL_PARAMS = 83_653_863


def tiny(**overrides):
  cfg = vae.model_config("tiny")
  cfg.update(overrides)
  return cfg


def torch_default_params(cfg, seed=0):
  """Parameters drawn in numpy like ``init_params`` (kernels U(+-1/sqrt(fan_in)), zero biases, unit norm
  scales) plus small random biases / norm parameters, without compiling ``init`` (its many random draws take
  XLA a long time to compile on a CPU; ``test_init_params`` covers it once on a small config)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
      return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
    if name == "scale":
      return (1.0 + 0.1 * rng.normal(size=leaf.shape)).astype(np.float32)
    return (0.05 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, vae.abstract_params(cfg))


SCALE, SHIFT = 0.37, 0.21


@pytest.fixture(scope="module")
def tiny_outputs():
  """Everything the closed-form tests compare, from ONE compiled function of the 'tiny' VAE (odd per-group
  widths 3 and 5) with a non-trivial latent scaling and shift."""
  cfg = tiny(scaling_factor=SCALE, shift_factor=SHIFT)
  mse_cfg = tiny(scaling_factor=SCALE, shift_factor=SHIFT,
                 loss=dict(reconstruction="mse", reconstruction_weight=2.0, kl_weight=0.5))
  params = torch_default_params(cfg)
  batch = vae.dummy_batch(cfg, 3, seed=1)
  masked = {specs.OPTICAL_FLOW: batch[specs.OPTICAL_FLOW].copy(), specs.HAS_OPTICAL_FLOW: np.array([True, False, True])}
  masked[specs.OPTICAL_FLOW][1] = 0  # what the pipeline gives where a dataset has no flow
  none = dict(masked, **{specs.HAS_OPTICAL_FLOW: np.zeros(3, bool)})
  model, mse = vae.build(cfg), vae.build(mse_cfg)

  @jax.jit
  def run(params, batch, masked, none):
    v = {"params": params}
    images = vae.images_from_uint8(batch[specs.OPTICAL_FLOW])
    rng = jax.random.key(5)
    mean, logvar = model.apply(v, images, method="encode")
    z = model.apply(v, images, method="latents")
    out = dict(images=images, mean=mean, logvar=logvar, z=z, z_sample=model.apply(v, images, rng, method="latents"),
               eps=jax.random.normal(rng, mean.shape, jnp.float32),
               decoded_latents=model.apply(v, z, method="decode_latents"),
               decoded_mean=model.apply(v, mean, method="decode"),
               reconstruction=model.apply(v, batch, rng))
    for name, m, b, train, key in (("eval", model, batch, False, 1), ("eval_other_rng", model, batch, False, 2),
                                   ("train", model, batch, True, 1), ("mse", mse, batch, False, 1),
                                   ("masked", model, masked, False, 0), ("none", model, none, True, 0)):
      out[name] = m.apply(v, b, jax.random.key(key), train=train, method="compute_loss")
    return out

  return jax.tree.map(np.asarray, run(params, batch, masked, none))


def test_sdxl_and_sd_sizes_match_diffusers():
  for variant, scaling in (("sdxl", 0.13025), ("sd", 0.18215)):
    cfg = vae.model_config(variant)
    assert cfg.scaling_factor == scaling and cfg.block_out_channels == (128, 256, 512, 512)
    assert cfg.layers_per_block == 2 and cfg.latent_channels == 4 and cfg.norm_num_groups == 32
    assert vae.param_count(cfg) == DIFFUSERS_SDXL_PARAMS  # jax.eval_shape: nothing allocated
  # The paper's shapes: a 3 x 224 x 224 flow image -> a 4 x 28 x 28 latent (H/8, W/8).
  cfg = vae.model_config("sdxl")
  params = vae.abstract_params(cfg)
  model = vae.build(cfg)
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  mean, logvar = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method="encode"), params, images)
  assert mean.shape == logvar.shape == (2, 28, 28, 4)
  out = jax.eval_shape(lambda p, z: model.apply({"params": p}, z, method="decode"), params, mean)
  assert out.shape == (2, 224, 224, 3)
  # 'sim': 64 x 64 -> 8 x 8 x 4 as well (four levels).
  sim = vae.model_config("sim")
  assert vae.config_from_dict(sim).downsample_factor == 8 and sim.image_size == 64


def test_every_parameter_has_logical_axes():
  cfg = vae.model_config("tiny")
  axes = jax.tree.leaves(vae.logical_axes(cfg), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  shapes = jax.tree.leaves(vae.abstract_params(cfg))
  assert len(axes) == len(shapes) > 0
  allowed = {(None, None, "conv_in", "conv_out"), ("conv_in", "conv_out"), ("conv_out",), ("norm",)}
  for spec, shape in zip(axes, shapes):
    assert tuple(spec) in allowed and len(spec) == len(shape.shape), (spec, shape)


def test_init_params():
  cfg = tiny()
  batch = vae.dummy_batch(cfg, 1)
  variables = vae.init_variables(cfg, jax.random.key(0), batch)
  # The tree, shapes and logical names of model.init (eval_shape: nothing compiled).
  reference = jax.eval_shape(lambda r: vae.build(cfg).init(r, batch, r), jax.random.key(0))
  assert jax.tree.structure(variables) == jax.tree.structure(reference)
  assert nn.get_partition_spec(variables) == nn.get_partition_spec(reference)
  params = nn.unbox(variables)["params"]
  kernels = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    assert leaf.dtype == jnp.float32
    name = path[-1].key
    if name == "kernel":  # torch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
      fan_in = np.prod(leaf.shape[:-1])
      assert np.abs(leaf).max() <= 1 / np.sqrt(fan_in), path
      kernels.append(np.asarray(leaf).ravel() * np.sqrt(fan_in))
    else:
      np.testing.assert_array_equal(leaf, 1.0 if name == "scale" else 0.0)
  # Kernels scaled by sqrt(fan_in) are U(-1, 1): mean 0, variance 1/3; independent across kernels.
  pooled = np.concatenate(kernels)
  assert abs(pooled.mean()) < 0.01 and abs(pooled.var() - 1 / 3) < 0.01
  assert not np.allclose(kernels[0][:16], kernels[1][:16])
  # The modules' own initialiser (model.init) has the same distribution.
  init = vae._TORCH_DEFAULT_INIT  # pylint: disable=protected-access
  w = np.asarray(init(jax.random.key(1), (3, 3, 20, 12))) * np.sqrt(3 * 3 * 20)
  assert np.abs(w).max() <= 1 and abs(w.var() - 1 / 3) < 0.02


def test_latent_scaling_and_decode_latents_invert_each_other(tiny_outputs):
  o = tiny_outputs
  assert o["mean"].shape == (3, 12, 12, 4) and o["logvar"].shape == o["mean"].shape
  assert (o["logvar"] >= vae.LOGVAR_MIN).all() and (o["logvar"] <= vae.LOGVAR_MAX).all()
  np.testing.assert_allclose(o["z"], SCALE * (o["mean"] - SHIFT), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(o["decoded_latents"], o["decoded_mean"], atol=2e-6)
  # With an rng: a posterior draw mean + exp(logvar / 2) * eps, scaled.
  np.testing.assert_allclose(o["z_sample"], SCALE * (o["mean"] + np.exp(0.5 * o["logvar"]) * o["eps"] - SHIFT),
                             rtol=1e-5, atol=1e-6)
  assert o["reconstruction"].shape == (3, 24, 24, 3)


def test_loss_terms_in_closed_form(tiny_outputs):
  o = tiny_outputs
  images, mean, logvar, recon = o["images"], o["mean"], o["logvar"], o["decoded_mean"]
  kl = 0.5 * np.sum(np.square(mean) + np.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3)) / (24 * 24 * 3)
  loss, metrics = o["eval"]
  np.testing.assert_allclose(metrics["loss/reconstruction"], np.mean(np.abs(recon - images)), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/kl"], kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(loss, metrics["loss/reconstruction"] + 1e-6 * metrics["loss/kl"], rtol=1e-6)
  np.testing.assert_allclose(metrics["vae/posterior_std"], np.mean(np.exp(0.5 * logvar)), rtol=1e-5)
  np.testing.assert_allclose(metrics["vae/latent_std"], np.std(SCALE * (mean - SHIFT)), rtol=1e-4)
  # MSE with other weights.
  loss2, m2 = o["mse"]
  np.testing.assert_allclose(m2["loss/reconstruction"], np.mean(np.square(recon - images)), rtol=1e-5)
  np.testing.assert_allclose(loss2, 2.0 * m2["loss/reconstruction"] + 0.5 * m2["loss/kl"], rtol=1e-6)
  # train=False decodes the mean (rng-free); train=True a posterior sample: another reconstruction, same KL.
  assert o["eval_other_rng"][0] == loss
  assert o["train"][1]["loss/reconstruction"] != metrics["loss/reconstruction"]
  np.testing.assert_allclose(o["train"][1]["loss/kl"], metrics["loss/kl"], rtol=1e-6)


def test_examples_without_flow_are_excluded(tiny_outputs):
  # Example 1 has no flow (zeros, has_optical_flow False): the loss is that of examples 0 and 2 alone (GroupNorm
  # is per example, so their outputs are those of the unmasked batch).
  o = tiny_outputs
  per_example = np.mean(np.abs(o["decoded_mean"] - o["images"]), axis=(1, 2, 3))
  kl = 0.5 * np.sum(np.square(o["mean"]) + np.exp(o["logvar"]) - 1.0 - o["logvar"], axis=(1, 2, 3)) / (24 * 24 * 3)
  metrics = o["masked"][1]
  np.testing.assert_allclose(metrics["loss/reconstruction"], per_example[[0, 2]].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss/kl"], kl[[0, 2]].mean(), rtol=1e-5)
  assert o["none"][0] == 0.0  # no example with flow: zero, not NaN


def test_options_change_the_parameter_tree():
  params = vae.abstract_params(tiny(use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False))
  assert "quant_conv" not in params and "post_quant_conv" not in params
  assert "attention" not in params["encoder"]["mid_block"] and "attention" not in params["decoder"]["mid_block"]
  full = vae.abstract_params(tiny())
  assert full["quant_conv"]["kernel"].shape == (1, 1, 8, 8) and full["post_quant_conv"]["kernel"].shape == (1, 1, 4, 4)
  assert full["encoder"]["mid_block"]["attention"]["to_q"]["kernel"].shape == (20, 20)
  # Decoder levels have layers_per_block + 1 resnets; a 1x1 shortcut only where the width changes.
  assert sorted(full["decoder"]["up_blocks_1"]) == ["resnets_0", "resnets_1"]
  assert "conv_shortcut" in full["decoder"]["up_blocks_1"]["resnets_0"]
  assert "conv_shortcut" not in full["decoder"]["up_blocks_0"]["resnets_0"]
  assert "upsample" in full["decoder"]["up_blocks_0"] and "upsample" not in full["decoder"]["up_blocks_1"]
  no_z = vae.abstract_params(tiny(double_z=False))
  assert no_z["encoder"]["conv_out"]["kernel"].shape == (3, 3, 20, 4) and no_z["quant_conv"]["bias"].shape == (4,)


def test_deterministic_encoder_without_double_z_and_bfloat16():
  cfg = tiny(double_z=False, block_out_channels=(8,), image_size=8)
  params = torch_default_params(cfg)
  batch = vae.dummy_batch(cfg, 2)
  images = vae.images_from_uint8(batch[specs.OPTICAL_FLOW])
  model, bf16 = vae.build(cfg), vae.build(tiny(double_z=False, block_out_channels=(8,), dtype="bfloat16"))

  @jax.jit
  def run(params):
    v = {"params": params}
    mean, logvar = model.apply(v, images, method="encode")
    return (mean, logvar, model.apply(v, images, jax.random.key(3), method="latents"),
            model.apply(v, batch, jax.random.key(0), method="compute_loss")[1],
            model.apply(v, batch, jax.random.key(1)), bf16.apply(v, batch, jax.random.key(1)))

  mean, logvar, z, metrics, out32, out16 = run(params)
  assert logvar is None and metrics["loss/kl"] == 0.0
  np.testing.assert_array_equal(z, mean)  # scaling_factor 1, no shift; no sampling without a variance
  # bfloat16 activations (parameters stay float32): outputs float32, close to the float32 model.
  assert out16.dtype == jnp.float32 and out16.shape == out32.shape == (2, 8, 8, 3)
  assert np.abs(out16 - out32).max() < 0.05 * np.abs(out32).max()


def test_clear_errors():
  with pytest.raises(ValueError, match=r"block_out_channels=\(12, 18\): \[18\] not divisible by norm_num_groups=4"):
    vae.build(tiny(block_out_channels=(12, 18)))
  with pytest.raises(ValueError, match="unknown VAE variant 'xl'"):
    vae.model_config("xl")
  cfg = tiny()
  model, params = vae.build(cfg), vae.abstract_params(cfg)

  def trace(fn, *args):  # errors are raised while tracing: nothing is compiled
    return jax.eval_shape(fn, params, *args)

  with pytest.raises(ValueError, match=r"image size 25x24 is not a multiple of 2"):
    trace(lambda p, x: model.apply({"params": p}, x, method="encode"), jnp.zeros((1, 25, 24, 3)))
  with pytest.raises(ValueError, match=r"images float\[B, H, W, 3\] \(in_channels\), got shape \(1, 24, 24, 2\)"):
    trace(lambda p, x: model.apply({"params": p}, x, method="encode"), jnp.zeros((1, 24, 24, 2)))
  with pytest.raises(ValueError, match=r"latents float\[B, h, w, 4\]"):
    trace(lambda p, z: model.apply({"params": p}, z, method="decode"), jnp.zeros((1, 6, 6, 3)))
  batch = vae.dummy_batch(cfg, 1)
  with pytest.raises(ValueError, match="loss.reconstruction='huber'"):
    huber = vae.build(tiny(loss=dict(reconstruction="huber")))
    trace(lambda p, b: huber.apply({"params": p}, b, jax.random.key(0), method="compute_loss"), batch)
  with pytest.raises(ValueError, match="the batch has no 'optical_flow'"):
    trace(lambda p: model.apply({"params": p}, {}, jax.random.key(0), method="compute_loss"))
  two = tiny(out_channels=2)
  with pytest.raises(ValueError, match="config out_channels=2 must equal in_channels=3"):
    jax.eval_shape(lambda p, b: vae.build(two).apply({"params": p}, b, jax.random.key(0), method="compute_loss"),
                   vae.abstract_params(two), batch)


def test_dummy_batch_is_flow_images():
  cfg = vae.model_config("sim")
  batch = vae.dummy_batch(cfg, 4, seed=3)
  images = batch[specs.OPTICAL_FLOW]
  assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8 and batch[specs.HAS_OPTICAL_FLOW].all()
  flow = flow_image.rgb_to_flow(images, cfg.flow_max_magnitude)
  magnitude = np.hypot(flow[..., 0], flow[..., 1])
  assert (magnitude <= cfg.flow_max_magnitude * 1.001).all()
  # A still background (white) and moving objects.
  assert 0.05 < np.mean(magnitude > 0.5) < 0.95
  np.testing.assert_array_equal(vae.dummy_batch(cfg, 4, seed=3)[specs.OPTICAL_FLOW], images)


def test_a_few_adam_steps_on_flow_images_reduce_the_loss():
  # One level (with the mid-block attention): compiling the train step is what costs here, per block.
  cfg = tiny(block_out_channels=(12,), image_size=16)
  batch = jax.tree.map(jnp.asarray, vae.dummy_batch(cfg, 8, seed=0))
  params = vae.init_params(cfg, jax.random.key(0), batch)
  model = vae.build(cfg)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, rng):
    grads, metrics = jax.grad(
        lambda p: model.apply({"params": p}, batch, rng, train=True, method="compute_loss"), has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state, history = tx.init(params), []
  for i in range(30):
    params, opt_state, metrics = step(params, opt_state, jax.random.key(i))
    history.append(metrics)  # of the parameters before the step
  rec = np.array([float(m["loss/reconstruction"]) for m in history])
  loss = np.array([float(m["loss"]) for m in history])
  assert np.isfinite(loss).all()
  assert rec[-5:].mean() < 0.5 * rec[0], rec
  assert loss[-5:].mean() < 0.5 * loss[0]
