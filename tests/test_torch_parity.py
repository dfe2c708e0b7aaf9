"""lamp_torch against the JAX model (LaMP, π0 and LAFP): same parameters, same inputs, same injected noise -> every
component and ``sample_actions`` agree (float32: <= 1e-4 max abs error; bfloat16: the tolerance stated below), at
the tiny size (odd dims) and the configs/sim.py size; the raw-observation path (resize, normalisation,
tokenisation) against ``CheckpointPolicy``; the injected noise against the random draws it replaces."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import torch

import lamp_torch
from lamp_jax import specs
from lamp_jax.data import frame_transforms
from lamp_jax import export
from lamp_jax.models import lafp
from lamp_jax.models import lafp_config
from lamp_jax.models import observation
from lamp_jax.models import registry
from lamp_jax.training import defaults
from lamp_jax.training import trainer as trainer_lib
from lamp_torch import preprocess
from tests import export_helpers
from tests.export_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

lamp = registry.get("lamp")
pi0 = registry.get("pi0")

FP32_TOLERANCE = 1e-4
# bfloat16 activations (8-bit mantissa, relative step 2^-8 = 0.4 %) through ~10 layers: errors relative to the
# output's largest magnitude. Measured on the tiny model: SigLIP 0.5 %, prefix 1.6 %, motion 0.7 % / hidden 3 %,
# guidance 0.5 %, action velocity 0.7 %, sample_actions 0.3 %; tiny π0: SigLIP 0.9 %, prefix keys 1.3 % / values
# 1.0 %, velocity 1.1 %, sample_actions 0.4 %.
BF16_RELATIVE_TOLERANCE = 5e-2
B = 2


def _sim_model():
  config = export_helpers.sim_config("")
  return defaults.stage_model_config(config, config.stage_order[-1])


def _bf16(model_cfg):
  model_cfg = copy.deepcopy(model_cfg)
  model_cfg.dtype = model_cfg.vlm.dtype = "bfloat16"
  return model_cfg


def _no_motion(model_cfg):
  model_cfg = copy.deepcopy(model_cfg)
  model_cfg.use_motion = False
  return model_cfg


def _jit(fn, *args):
  """jax.jit(fn) compiled with the fast (unoptimised) CPU backend, called on args."""
  return jax.jit(fn).lower(*args).compile(export_helpers.FAST_COMPILE)(*args)


def _np(x):
  if torch.is_tensor(x):
    return x.detach().float().cpu().numpy()
  return np.asarray(jnp.asarray(x, jnp.float32))


def _setup(model_cfg, tmp_path, seed=0):
  params = export_helpers.random_params(model_cfg, seed)
  inputs = {"cameras": list(model_cfg.image_keys), "camera_keys": {c: c for c in model_cfg.image_keys},
            "image_size": [model_cfg.image_size] * 2, "resize": False, "state_key": "state",
            "proprio_dim": model_cfg.proprio_dim, "state_dim": None}
  tokenizer = {"kind": "bytes", "words": "", "path": "", "max_len": model_cfg.max_token_len, "truncate": True}
  export.export_params(params, model_cfg, str(tmp_path), inputs=inputs, normalization=None, tokenizer=tokenizer,
                       source={})
  policy = lamp_torch.from_pretrained(str(tmp_path))
  lib = registry.for_config(model_cfg)
  batch = lib.dummy_batch(model_cfg, B, seed=seed + 1)
  # One missing camera in example 1: its tokens are masked out on both sides.
  batch[specs.OBSERVATION][specs.IMAGE_MASK][model_cfg.image_keys[-1]][1] = False
  obs = batch[specs.OBSERVATION]
  images = np.stack([obs[k][:, -1].astype(np.float32) / 127.5 - 1.0 for k in model_cfg.image_keys], axis=1)
  torch_inputs = {
      "images": torch.from_numpy(images),
      "image_mask": torch.from_numpy(np.stack([obs[specs.IMAGE_MASK][k][:, -1] for k in model_cfg.image_keys], 1)),
      "tokens": torch.from_numpy(batch[specs.TASK][specs.TOKENS]),
      "token_mask": torch.from_numpy(batch[specs.TASK][specs.TOKEN_MASK]),
      "proprio": torch.from_numpy(np.array(obs[specs.PROPRIO][:, -1])),
  }
  rs = np.random.RandomState(seed + 2)
  noise = {k: rs.normal(size=s).astype(np.float32) for k, s in policy.model.noise_shapes(B).items()}
  return lib.build(model_cfg), params, batch, policy.model, torch_inputs, noise


def _component_errors(model_cfg, tmp_path):
  """{component: (max abs error, max abs reference)} of every component and of sample_actions.

  The JAX side is one jitted program (one compilation); each PyTorch component is fed the JAX component's
  inputs (so an error does not compound through the chain), sample_actions runs end to end on both sides."""
  model, params, batch, tm, ti, noise = _setup(model_cfg, tmp_path)
  use_motion = bool(model_cfg.use_motion)
  images = ti["images"].numpy()
  flat_images = images.reshape((-1,) + images.shape[2:])
  motion_tau, action_tau = np.array([0.1, 0.63], np.float32), np.array([0.0, 0.7], np.float32)
  proprio = ti["proprio"].numpy()

  def reference(mdl, batch, noise):
    out = {"siglip": mdl.vlm.img(flat_images)}
    # sample_actions(rng) and sample_actions(rng, noise=the very draws of rng) (test_injected_noise_...).
    rng = jax.random.key(5)
    rng_motion, rng_action = jax.random.split(rng)
    draws = {"action": jax.random.normal(rng_action, noise["action"].shape, jnp.float32)}
    if use_motion:
      draws["motion"] = jax.random.normal(rng_motion, noise["motion"].shape, jnp.float32)
    out["drawn"] = mdl.sample_actions(batch, rng)
    out["drawn_injected"] = mdl.sample_actions(batch, rng, noise=draws)
    out["prefix"], out["mask"] = mdl.encode(batch)
    guided = out["prefix"]
    if use_motion:
      out["motion_velocity"], out["motion_hidden"] = mdl.motion_expert(noise["motion"], motion_tau, out["prefix"],
                                                                       out["mask"])
      guided = out["guidance"] = mdl.guidance(out["prefix"], out["motion_hidden"])[0]
    out["action_velocity"] = mdl.action_expert(noise["action"], action_tau, proprio, guided, out["mask"])
    out["sample_actions"] = mdl.sample_actions(batch, jax.random.key(0), noise=noise)
    return out

  ref = _jit(lambda p, b, n: model.apply({"params": p}, b, n, method=reference), params, batch, noise)
  dtype = tm.dtype
  as_torch = lambda x: torch.from_numpy(np.array(x, np.float32)).to(dtype)  # noqa: E731
  mask = torch.from_numpy(np.array(ref["mask"]))
  ours = {}
  with torch.no_grad():
    ours["siglip"] = tm.vlm.model.multi_modal_projector.linear(tm.vlm.model.vision_tower(torch.from_numpy(
        flat_images)))
    ours["prefix"], our_mask = tm.encode(ti["images"], ti["image_mask"], ti["tokens"], ti["token_mask"])
    np.testing.assert_array_equal(our_mask.numpy(), mask.numpy())
    features = as_torch(ref["prefix"])
    guided = features
    if use_motion:
      ours["motion_velocity"], ours["motion_hidden"] = tm.motion_expert(
          torch.from_numpy(noise["motion"]), torch.from_numpy(motion_tau), features, mask)
      ours["guidance"] = tm.guidance(features, as_torch(ref["motion_hidden"]))[0]
      guided = as_torch(ref["guidance"])
    ours["action_velocity"] = tm.action_expert(torch.from_numpy(noise["action"]), torch.from_numpy(action_tau),
                                               ti["proprio"], tm.action_expert.context_kv(guided), mask)
    ours["sample_actions"] = tm.sample_actions(ti, {k: torch.from_numpy(v) for k, v in noise.items()})
  real = mask.numpy()  # padded prefix positions carry no meaning (masked everywhere downstream)
  errors = {"injected_vs_drawn": (float(np.abs(_np(ref["drawn"]) - _np(ref["drawn_injected"])).max()),
                                  float(np.abs(_np(ref["drawn"])).max()))}
  for name, value in ours.items():
    a, b = _np(value), _np(ref[name])
    if name == "prefix":
      a, b = a[real], b[real]
    errors[name] = (float(np.abs(a - b).max()), float(np.abs(b).max()))
  return errors


def _pi0_component_errors(model_cfg, tmp_path):
  """π0's ``_component_errors``: SigLIP, the prefix pass's per-layer keys / values (real positions), the expert's
  velocity with the cached prefix K/V (the PyTorch expert fed the JAX cache), ``sample_actions`` end to end, and
  the JAX injected-vs-drawn check."""
  model, params, batch, tm, ti, noise = _setup(model_cfg, tmp_path)
  images = ti["images"].numpy()
  flat_images = images.reshape((-1,) + images.shape[2:])
  action_tau = np.array([0.0, 0.7], np.float32)
  proprio = np.zeros_like(ti["proprio"].numpy()) if not model_cfg.use_proprio else ti["proprio"].numpy()

  def reference(mdl, batch, noise):
    out = {"siglip": mdl.vlm.img(flat_images)}
    rng = jax.random.key(5)
    out["drawn"] = mdl.sample_actions(batch, rng)
    out["drawn_injected"] = mdl.sample_actions(
        batch, rng, noise={"action": jax.random.normal(rng, noise["action"].shape, jnp.float32)})
    (out["prefix_keys"], out["prefix_values"]), out["mask"] = mdl.prefix(batch)
    out["velocity"] = mdl.action_expert(noise["action"], action_tau, proprio,
                                        (out["prefix_keys"], out["prefix_values"]), out["mask"])
    out["sample_actions"] = mdl.sample_actions(batch, jax.random.key(0), noise=noise)
    return out

  ref = _jit(lambda p, b, n: model.apply({"params": p}, b, n, method=reference), params, batch, noise)
  as_torch = lambda x: torch.from_numpy(np.array(x, np.float32)).to(tm.dtype)  # noqa: E731
  mask = torch.from_numpy(np.array(ref["mask"]))
  ours = {}
  with torch.no_grad():
    ours["siglip"] = tm.vlm.model.multi_modal_projector.linear(tm.vlm.model.vision_tower(torch.from_numpy(
        flat_images)))
    (ours["prefix_keys"], ours["prefix_values"]), our_mask = tm.prefix(ti["images"], ti["image_mask"],
                                                                        ti["tokens"], ti["token_mask"])
    np.testing.assert_array_equal(our_mask.numpy(), mask.numpy())
    prefix_kv = (as_torch(ref["prefix_keys"]), as_torch(ref["prefix_values"]))
    ours["velocity"] = tm.action_expert(torch.from_numpy(noise["action"]), torch.from_numpy(action_tau),
                                        torch.from_numpy(proprio), prefix_kv, mask)
    ours["sample_actions"] = tm.sample_actions(ti, {k: torch.from_numpy(v) for k, v in noise.items()})
  real = mask.numpy()  # padded prefix positions carry no meaning (masked everywhere downstream)
  errors = {"injected_vs_drawn": (float(np.abs(_np(ref["drawn"]) - _np(ref["drawn_injected"])).max()),
                                  float(np.abs(_np(ref["drawn"])).max()))}
  for name, value in ours.items():
    a, b = _np(value), _np(ref[name])
    if name.startswith("prefix_"):
      a, b = a[:, real], b[:, real]  # [L, B, P, K, Hd] at the real (b, p)
    errors[name] = (float(np.abs(a - b).max()), float(np.abs(b).max()))
  return errors


def _lafp_component_errors(model_cfg, tmp_path):
  """LAFP's ``_component_errors``: SigLIP, the prefix features (real positions), one latent-policy call (its clean
  latent z_hat at two times; the PyTorch DiT fed the JAX features), the action decoder on the noise latent, the
  latent sampler (the PyTorch sampler fed the JAX features), ``sample_actions`` end to end, and the JAX
  injected-vs-drawn check."""
  model, params, batch, tm, ti, noise = _setup(model_cfg, tmp_path)
  images = ti["images"].numpy()
  flat_images = images.reshape((-1,) + images.shape[2:])
  tau = np.array([0.0, 0.7], np.float32)

  def reference(mdl, batch, noise):
    out = {"siglip": mdl.vlm.img(flat_images)}
    rng = jax.random.key(5)
    out["drawn"] = mdl.sample_actions(batch, rng)
    out["drawn_injected"] = mdl.sample_actions(
        batch, rng, noise={"latent": jax.random.normal(rng, noise["latent"].shape, jnp.float32)})
    out["prefix"], out["mask"] = mdl.encode(batch)
    out["proprio"] = proprio = observation.current_proprio(batch, mdl.config)
    out["latent_prediction"] = mdl.latent_policy(noise["latent"], tau, proprio, out["prefix"], out["mask"])
    out["decoder"] = mdl.action_decoder(noise["latent"], proprio)
    out["sample_latent"] = mdl.sample_latent(batch, jax.random.key(0), noise=noise)
    out["sample_actions"] = mdl.sample_actions(batch, jax.random.key(0), noise=noise)
    return out

  ref = _jit(lambda p, b, n: model.apply({"params": p}, b, n, method=reference), params, batch, noise)
  as_torch = lambda x: torch.from_numpy(np.array(x, np.float32)).to(tm.dtype)  # noqa: E731
  mask = torch.from_numpy(np.array(ref["mask"]))
  proprio = torch.from_numpy(np.array(ref["proprio"]))
  latent = torch.from_numpy(noise["latent"])
  ours = {}
  with torch.no_grad():
    ours["siglip"] = tm.vlm.model.multi_modal_projector.linear(tm.vlm.model.vision_tower(torch.from_numpy(
        flat_images)))
    ours["prefix"], our_mask = tm.encode(ti["images"], ti["image_mask"], ti["tokens"], ti["token_mask"])
    np.testing.assert_array_equal(our_mask.numpy(), mask.numpy())
    features = as_torch(ref["prefix"])
    context_kv = tm.latent_policy.context_kv(features)
    ours["latent_prediction"] = tm.latent_policy(latent, torch.from_numpy(tau), proprio, context_kv, mask)
    ours["decoder"] = tm.action_decoder(latent, proprio)
    ours["sample_latent"] = tm.sample_latent(features, mask, proprio, latent)
    ours["sample_actions"] = tm.sample_actions(ti, {k: torch.from_numpy(v) for k, v in noise.items()})
  real = mask.numpy()
  errors = {"injected_vs_drawn": (float(np.abs(_np(ref["drawn"]) - _np(ref["drawn_injected"])).max()),
                                  float(np.abs(_np(ref["drawn"])).max()))}
  for name, value in ours.items():
    a, b = _np(value), _np(ref[name])
    if name == "prefix":
      a, b = a[real], b[real]
    errors[name] = (float(np.abs(a - b).max()), float(np.abs(b).max()))
  return errors


def _lafp_tiny(objective: str = "flow"):
  """The tiny LAFP's inference config (the exported policy: no LAM; latent 3 tokens x 11 dims)."""
  return lafp.without_lam(lafp_config.model_config("tiny", objective))


def _lafp_options(model_cfg):
  """LAFP with the options that change its computation: conv stem, sin-cos positions, camera embeddings, proprio off
  (state token and decoder input zeros), no cached context K/V, 4 sampler steps, an unscanned DiT."""
  model_cfg = copy.deepcopy(model_cfg)
  model_cfg.vlm.vision_overrides = ml_collections.ConfigDict(dict(stem="conv", stem_width=6, posemb="sincos2d"))
  model_cfg.vlm.camera_embeddings = 2
  model_cfg.use_proprio, model_cfg.num_inference_steps = False, 4
  model_cfg.latent_policy.cache_context_kv = model_cfg.latent_policy.scan_layers = False
  return model_cfg


def _pi0_sim_model():
  config = export_helpers.sim_config("pi0")
  return defaults.stage_model_config(config, config.stage_order[-1])


def _pi0_options(model_cfg):
  """π0 with the options that change its computation: conv stem, sin-cos positions, camera embeddings, proprio off,
  3 Euler steps."""
  model_cfg = copy.deepcopy(model_cfg)
  model_cfg.vlm.vision_overrides = ml_collections.ConfigDict(dict(stem="conv", stem_width=6, posemb="sincos2d"))
  model_cfg.vlm.camera_embeddings = 2
  model_cfg.use_proprio, model_cfg.num_inference_steps = False, 3
  return model_cfg


def _options(model_cfg):
  """Every option that changes the computation: conv stem, sin-cos positions, camera embeddings, 3-D RoPE, pooled
  condition, unscanned stacks, unpruned last motion block, no cached context K/V, proprio off."""
  model_cfg = copy.deepcopy(model_cfg)
  model_cfg.vlm.vision_overrides = ml_collections.ConfigDict(dict(stem="conv", stem_width=6, posemb="sincos2d"))
  model_cfg.vlm.camera_embeddings = 2
  model_cfg.motion.use_rope, model_cfg.motion.cond_pool, model_cfg.motion.cond_len = True, 3, 10
  model_cfg.motion.scan_layers = model_cfg.action.scan_layers = False
  model_cfg.motion.prune_last_condition, model_cfg.action.cache_context_kv = False, False
  model_cfg.use_proprio, model_cfg.partial_steps, model_cfg.num_inference_steps = False, 2, 3
  return model_cfg


CONFIGS = {
    "tiny": lambda: lamp.model_config("tiny"),
    "tiny_no_motion": lambda: _no_motion(lamp.model_config("tiny")),
    "tiny_bf16": lambda: _bf16(lamp.model_config("tiny")),
    "sim": _sim_model,
    "tiny_options": lambda: _options(lamp.model_config("tiny")),
    "pi0_tiny": lambda: pi0.model_config("tiny"),
    "pi0_tiny_bf16": lambda: _bf16(pi0.model_config("tiny")),
    "pi0_sim": _pi0_sim_model,
    "pi0_tiny_options": lambda: _pi0_options(pi0.model_config("tiny")),
    "lafp_tiny": _lafp_tiny,
    "lafp_tiny_bc": lambda: _lafp_tiny("bc"),
    "lafp_tiny_options": lambda: _lafp_options(_lafp_tiny()),
}
ERRORS_OF = {"lamp": lambda: _component_errors, "pi0": lambda: _pi0_component_errors,
             "lafp": lambda: _lafp_component_errors}


@pytest.fixture(scope="module")
def component_errors(tmp_path_factory):
  cache = {}

  def get(name):
    if name not in cache:
      model_cfg = CONFIGS[name]()
      cache[name] = ERRORS_OF[model_cfg.name]()(model_cfg, tmp_path_factory.mktemp(name))
    return cache[name]

  return get


def _check_float32(errors, use_motion=True):
  expected = {"siglip", "prefix", "action_velocity", "sample_actions", "injected_vs_drawn"}
  if use_motion:
    expected |= {"motion_velocity", "motion_hidden", "guidance"}
  assert set(errors) == expected
  for component, (err, scale) in errors.items():
    if component != "injected_vs_drawn":
      assert err <= FP32_TOLERANCE, (component, err)
      assert scale > 0.1, (component, scale)  # a non-trivial comparison


def test_float32_components_and_sample_actions_match_jax(component_errors):
  _check_float32(component_errors("tiny"))


def test_float32_without_motion_matches_jax(component_errors):
  _check_float32(component_errors("tiny_no_motion"), use_motion=False)


@pytest.mark.slow  # a second model size: ~40 s of XLA compilation on 2 cores
def test_float32_at_the_sim_size_matches_jax(component_errors):
  _check_float32(component_errors("sim"))


@pytest.mark.slow  # ~40 s of XLA compilation on 2 cores
def test_float32_with_every_model_option_matches_jax(component_errors):
  _check_float32(component_errors("tiny_options"))


@pytest.mark.slow  # ~40 s of XLA compilation on 2 cores
def test_bfloat16_components_and_sample_actions_match_jax_within_the_stated_tolerance(component_errors):
  errors = component_errors("tiny_bf16")
  assert len(errors) == 8
  for component, (err, scale) in errors.items():
    if component != "injected_vs_drawn":
      assert err <= BF16_RELATIVE_TOLERANCE * max(scale, 1.0), (component, err, scale)


PI0_COMPONENTS = {"siglip", "prefix_keys", "prefix_values", "velocity", "sample_actions", "injected_vs_drawn"}


def _check_pi0_float32(errors):
  assert set(errors) == PI0_COMPONENTS
  for component, (err, scale) in errors.items():
    if component == "injected_vs_drawn":  # sample_actions(rng) == sample_actions(rng, noise=the draws of rng)
      assert err <= 1e-5 and scale > 0.1, (err, scale)
    else:
      assert err <= FP32_TOLERANCE, (component, err)
      assert scale > 0.1, (component, scale)


def test_pi0_float32_prefix_kv_velocity_and_sample_actions_match_jax(component_errors):
  _check_pi0_float32(component_errors("pi0_tiny"))


@pytest.mark.slow  # a second model size: ~40 s of XLA compilation on 2 cores
def test_pi0_float32_at_the_sim_size_matches_jax(component_errors):
  _check_pi0_float32(component_errors("pi0_sim"))


@pytest.mark.slow  # ~40 s of XLA compilation on 2 cores
def test_pi0_float32_with_every_model_option_matches_jax(component_errors):
  _check_pi0_float32(component_errors("pi0_tiny_options"))


@pytest.mark.slow  # ~40 s of XLA compilation on 2 cores
def test_pi0_bfloat16_matches_jax_within_the_stated_tolerance(component_errors):
  errors = component_errors("pi0_tiny_bf16")
  assert set(errors) == PI0_COMPONENTS
  for component, (err, scale) in errors.items():
    if component != "injected_vs_drawn":
      assert err <= BF16_RELATIVE_TOLERANCE * max(scale, 1.0), (component, err, scale)


LAFP_COMPONENTS = {"siglip", "prefix", "latent_prediction", "decoder", "sample_latent", "sample_actions",
                   "injected_vs_drawn"}


def _check_lafp_float32(errors):
  assert set(errors) == LAFP_COMPONENTS
  for component, (err, scale) in errors.items():
    if component == "injected_vs_drawn":  # sample_actions(rng) == sample_actions(rng, noise=the draws of rng)
      assert err <= 1e-5 and scale > 0.1, (err, scale)
    else:
      assert err <= FP32_TOLERANCE, (component, err)
      assert scale > 0.1, (component, scale)


def test_lafp_float32_latent_sampler_decoder_and_sample_actions_match_jax(component_errors):
  _check_lafp_float32(component_errors("lafp_tiny"))


def test_lafp_bc_float32_matches_jax(component_errors):
  _check_lafp_float32(component_errors("lafp_tiny_bc"))


def test_lafp_float32_with_every_model_option_matches_jax(component_errors):
  _check_lafp_float32(component_errors("lafp_tiny_options"))


def test_pi0_time_embedding_is_the_same_table_on_both_sides():
  """The frequencies 2 pi / period are a float64 closed form rounded once, the same array on both sides (a float32
  ``pow`` differs by an ulp between backends; with angles up to 1571 rad that moved sines by 1.2e-4); the
  embeddings then differ only by the sin / cos implementations."""
  from lamp_jax.models import pi0_expert as jax_expert
  from lamp_torch import pi0_expert as torch_expert

  tau = np.random.RandomState(0).uniform(0, 1, 64).astype(np.float32)
  for dim in (38, 128, 1024, 2048):
    table = jax_expert.time_frequencies(dim, 4e-3, 4.0)
    np.testing.assert_array_equal(table, torch_expert.time_frequencies(dim, 4e-3, 4.0))
    closed_form = 2 * np.pi / (4e-3 * 1000.0 ** (np.arange(dim // 2) / (dim // 2 - 1)))
    np.testing.assert_allclose(table, closed_form, rtol=1e-7)
    want = np.asarray(jax.jit(lambda t, d=dim: jax_expert.flow_time_embedding(t, d, 4e-3, 4.0))(tau))
    got = torch_expert.flow_time_embedding(torch.from_numpy(tau), dim, 4e-3, 4.0).numpy()
    assert np.abs(got - want).max() <= 1e-6, (dim, np.abs(got - want).max())


def test_injected_noise_equals_the_random_draws_it_replaces(component_errors):
  """sample_actions(rng) == sample_actions(rng, noise=the very draws of rng): the noise enters where the draws do.
  Not bit-identical: XLA fuses the two programs differently (measured 4e-7); other noise moves actions by O(1)."""
  err, scale = component_errors("tiny")["injected_vs_drawn"]
  assert err <= 1e-5 and scale > 0.1
  err, _ = component_errors("tiny_no_motion")["injected_vs_drawn"]
  assert err <= 1e-5


def test_injected_noise_of_a_wrong_shape_or_name_is_an_error():
  model_cfg = lamp.model_config("tiny")
  params = jax.tree.map(jnp.asarray, export_helpers.random_params(model_cfg, 7))
  batch = lamp.dummy_batch(model_cfg, B, seed=3)
  model, rng = lamp.build(model_cfg), jax.random.key(0)
  with pytest.raises(ValueError, match=r"unexpected entries \['actions'\]"):
    model.apply({"params": params}, batch, rng, noise={"actions": np.zeros((2, 5, 7))}, method="sample_actions")
  with pytest.raises(ValueError, match=r"noise\['motion'\] has shape \(2, 16, 6\); expected \(2, 16, 6, 3\)"):
    jax.eval_shape(lambda p: model.apply({"params": p}, batch, rng, noise={"motion": np.zeros((2, 16, 6))},
                                         method="sample_actions"), params)


def test_resize_is_bit_exact_with_the_pipeline_resize():
  rng = np.random.default_rng(0)
  for _ in range(40):
    h0, w0, h, w = (int(v) for v in rng.integers(1, 90, 4))
    images = rng.integers(0, 256, (2, h0, w0, 3), dtype=np.uint8)
    want = frame_transforms.resize(tf.constant(images), (h, w)).numpy()
    np.testing.assert_array_equal(preprocess.resize(images, (h, w)), want, err_msg=f"{h0}x{w0} -> {h}x{w}")
    np.testing.assert_array_equal(preprocess.resize(images[0], (h, w)), want[0])


@pytest.fixture(scope="module")
def sim_smoke(tmp_path_factory):
  """A configs/sim.py:smoke checkpoint with random parameters, its JAX policy and its PyTorch export."""
  root = tmp_path_factory.mktemp("sim_smoke")
  export_helpers.sim_checkpoint(root / "run")
  export.export_checkpoint(str(root / "run"), str(root / "export"))
  jax_policy = export_helpers.FixedNoiseCheckpointPolicy(str(root / "run"))
  torch_policy = lamp_torch.from_pretrained(str(root / "export"))
  rs = np.random.RandomState(0)
  jax_policy.noise = {k: rs.normal(size=s).astype(np.float32) for k, s in torch_policy.model.noise_shapes(1).items()}
  return root, jax_policy, torch_policy


def test_raw_observations_give_the_checkpoint_policys_actions(sim_smoke, monkeypatch):
  """Resize (48x40 -> 32x32), proprio normalisation with the statistics' mask, word tokens, un-normalisation; a
  camera the robot does not send."""
  _, jax_policy, torch_policy = sim_smoke
  rng = np.random.default_rng(1)
  instruction = "put the red cube on the blue plate"
  jax_policy.reset(instruction)
  for size in ((48, 40), (32, 32)):
    observation = export_helpers.raw_observation(rng, size)
    batch = jax_policy.observation_batch(observation)
    inputs = torch_policy.model_inputs({**observation, "instruction": instruction})
    obs = batch[specs.OBSERVATION]
    for i, camera in enumerate(torch_policy.cameras):
      np.testing.assert_array_equal(inputs["images"][:, i].numpy(), obs[camera][:, -1] / np.float32(127.5) - 1.0)
      np.testing.assert_array_equal(inputs["image_mask"][:, i].numpy(), obs[specs.IMAGE_MASK][camera][:, -1])
    np.testing.assert_array_equal(inputs["proprio"].numpy(), obs[specs.PROPRIO][:, -1])
    np.testing.assert_array_equal(inputs["tokens"].numpy(), batch[specs.TASK][specs.TOKENS])
    want = jax_policy(observation)
    got = torch_policy.sample_actions({**observation, "instruction": instruction},
                                      noise={k: torch.from_numpy(v) for k, v in jax_policy.noise.items()})
    assert got.shape == (1, torch_policy.action_horizon, 7) and got.dtype == np.float32
    assert np.abs(got[0] - want).max() <= FP32_TOLERANCE * max(1.0, np.abs(want).max())
  # A camera the robot does not send: the JAX CheckpointPolicy's observation_spec requires every camera (a clear
  # error); the exported policy fills zeros and masks the camera out, which the JAX preprocessing below the check
  # does too (the same actions).
  observation = export_helpers.raw_observation(rng)
  del observation["image_2"]
  with pytest.raises(ValueError, match=r"missing observation keys \['image_2'\]"):
    jax_policy(observation)
  monkeypatch.setattr(jax_policy, "check_observation", lambda observation: None)
  np.testing.assert_allclose(torch_policy.sample_actions(
      {**observation, "instruction": instruction}, noise={k: torch.from_numpy(v) for k, v in jax_policy.noise.items()}
  )[0], jax_policy(observation), atol=FP32_TOLERANCE)


def test_batched_sampling_equals_one_by_one_and_bad_observations_name_the_key(sim_smoke):
  _, _, policy = sim_smoke
  rng = np.random.default_rng(2)
  observations = [export_helpers.raw_observation(rng) for _ in range(3)]
  instructions = ["push the red cylinder to the left", "open the drawer", "stack the blue cube on the red cube"]
  noise = {k: torch.randn(s, generator=torch.Generator().manual_seed(3))
           for k, s in policy.model.noise_shapes(3).items()}
  batched = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
  together = policy.sample_actions({**batched, "instruction": instructions}, noise=noise)
  for i, observation in enumerate(observations):
    alone = policy.sample_actions({**observation, "instruction": instructions[i]},
                                  noise={k: v[i:i + 1] for k, v in noise.items()})
    np.testing.assert_allclose(together[i], alone[0], atol=1e-5)
  policy.reset("open the drawer")
  first, second = policy(observations[0]), policy(observations[0])
  assert first.shape == (policy.action_horizon, 7) and not np.allclose(first, second)  # the noise advances
  with pytest.raises(ValueError, match=r"observation\['image_0'\] must be uint8\[h, w, 3\]"):
    policy(dict(observations[0], image_0=observations[0]["image_0"].astype(np.float32)))
  with pytest.raises(ValueError, match=r"observation\['state'\] has 9 dims; the normalisation statistics have 8"):
    policy(dict(observations[0], state=np.zeros(9, np.float32)))
  with pytest.raises(ValueError, match="unknown words|not in the vocabulary|unk") if False else \
      pytest.raises(ValueError, match=r"noise\['action'\] has shape \(1, 4, 6\)"):
    policy.sample_actions({**observations[0], "instruction": "open the drawer"},
                          noise={"motion": noise["motion"][:1], "action": torch.zeros(1, 4, 6)})
