"""LAFP (models/lafp.py) and its BC baseline: the x-prediction flow loss and the BC loss against hand computations,
the sampler with an exact network, the decoder's interpolated latent, where gradients go (never into the frozen
LAM), the latent-size check, inference without the LAM (sampling, export), a checkpoint behind the policy server
and its PyTorch export, the sim configs' data and budget, and training through the trainer."""

import copy
import importlib.util
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

import lamp_torch
from lamp_jax import export
from lamp_jax import specs
from lamp_jax.data import config as data_config
from lamp_jax.eval.checkpoint_policy import CheckpointPolicy
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import lafp
from lamp_jax.models import lafp_config
from lamp_jax.models import lam as lam_lib
from lamp_jax.models import registry
from lamp_jax.models.weights import strict
from lamp_jax.serving import client as client_lib
from lamp_jax.serving import server as server_lib
from lamp_jax.training import defaults
from lamp_jax.training import pretrained
from lamp_jax.training import trainer as trainer_lib
from tests import export_helpers
from tests.export_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B = 3  # batch of the tiny tests


def _config_file(name: str, variant: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"_lafp_test_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(variant)


def _tiny(objective: str = "flow", **decoder) -> ml_collections.ConfigDict:
  """The tiny LAFP (latent: 3 tokens x 11 dims, horizon 5, 7 action dims) with an odd tau_i."""
  cfg = lafp_config.model_config("tiny", objective)
  cfg.decoder.interpolation = 0.3
  cfg.decoder.update(decoder)
  return cfg


# The BC objective's model-level tests (a second compilation of every function) run with the slow tests; its
# loss and sampling are also covered by the fast function-level tests below.
@pytest.fixture(scope="module", params=["flow", pytest.param("bc", marks=pytest.mark.slow)])
def setup(request):
  cfg = _tiny(request.param)
  lib = registry.for_config(cfg)
  batch = lib.dummy_batch(cfg, B, seed=5)
  params = lib.init_params(cfg, jax.random.key(0), batch)
  model = lib.build(cfg)
  loss_fn = jax.jit(lambda p, b, r: model.apply({"params": p}, b, r, method="compute_loss",
                                                mutable=["intermediates"]))
  return cfg, lib, model, batch, params, loss_fn


def _apply(model, params, batch, fn):
  """model.apply(params, batch, method=fn), jitted (eager flax calls are slow on a shared 2-core host)."""
  return jax.jit(lambda p, b: model.apply({"params": p}, b, method=fn))(params, batch)


def _decode(model, params, latent, batch):
  """The model's action decoder on ``latent`` and the batch's current proprio."""
  proprio = jnp.asarray(batch[specs.OBSERVATION][specs.PROPRIO][:, -1])
  return jax.jit(lambda p, z, s: model.apply({"params": p}, z, s, method=lambda m, zz, ss: m.action_decoder(zz, ss)))(
      params, latent, proprio)


def _sample(model, params, batch, rng, method, noise=None):
  return jax.jit(lambda p, b, r, n: model.apply({"params": p}, b, r, method=method, noise=n))(params, batch, rng,
                                                                                              noise)


def _lam_latent(cfg, params, batch, rng):
  out = jax.jit(lambda p, b, r: lam_lib.LatentActionModel(cfg.lam).apply(
      {"params": p}, b, jax.random.fold_in(r, 0x1A), method="encode_latent"))(params["lam"], batch, rng)
  return out["latent"], out["valid"]


# ------------------------------------------------------------------------------------------ the loss terms
def test_x_prediction_loss_matches_a_hand_computation():
  rs = np.random.RandomState(0)
  z, eps, z_hat = (rs.randn(4, 3, 5).astype(np.float32) for _ in range(3))
  tau = np.array([0.1, 0.5, 0.97, 0.3], np.float32)
  valid = np.array([True, True, True, False])
  z_tau = (1 - tau[:, None, None]) * eps + tau[:, None, None] * z
  denom = np.maximum(1 - tau, 0.05)[:, None, None]  # 0.97 hits the floor t_eps = 0.05
  v_hat, v = (z_hat - z_tau) / denom, (z - z_tau) / denom
  expected_v = np.mean(np.square(v_hat - v)[valid])
  np.testing.assert_allclose(expected_v, np.mean((np.square(z_hat - z) / denom**2)[valid]), rtol=1e-5)
  got_v = lafp.x_prediction_loss(z_hat, z, eps, tau, valid, loss_space="v", t_eps=0.05)
  got_x = lafp.x_prediction_loss(z_hat, z, eps, tau, valid, loss_space="x", t_eps=0.05)
  np.testing.assert_allclose(got_v, expected_v, rtol=1e-5)
  np.testing.assert_allclose(got_x, np.mean(np.square(z_hat - z)[valid]), rtol=1e-5)


def test_compute_loss_terms_match_a_hand_computation(setup):
  """The module's latent term from its own draws (the documented key streams) and its decoder term."""
  cfg, _, model, batch, params, loss_fn = setup
  rng = jax.random.key(7)
  (_, metrics), inter = loss_fn(params, batch, rng)
  z_lam, valid = _lam_latent(cfg, params, batch, rng)
  assert bool(np.all(valid))

  def latent_term(m, b):
    features, mask = m.encode(b)
    proprio = jnp.asarray(b[specs.OBSERVATION][specs.PROPRIO][:, -1])
    if cfg.latent_policy.objective == "bc":
      z_hat = m._predict(jnp.zeros_like(z_lam), 0.0, proprio, features, mask)  # pylint: disable=protected-access
      return jnp.mean(jnp.square(z_hat - z_lam))
    rng_t, rng_e = jax.random.split(jax.random.fold_in(rng, 0))
    tau = fm.sample_tau(rng_t, B, cfg.latent_policy.time_dist)
    eps = jax.random.normal(rng_e, z_lam.shape, jnp.float32)
    z_tau = (1 - tau[:, None, None]) * eps + tau[:, None, None] * z_lam
    z_hat = m._predict(z_tau, tau, proprio, features, mask)  # pylint: disable=protected-access
    denom = jnp.maximum(1 - tau, cfg.latent_policy.t_eps)[:, None, None]
    return jnp.mean(jnp.square((z_hat - z_tau) / denom - (z_lam - z_tau) / denom))

  term = "latent_bc" if cfg.latent_policy.objective == "bc" else "latent_flow"
  np.testing.assert_allclose(metrics[f"loss/{term}"], _apply(model, params, batch, latent_term), rtol=2e-4)
  z_dec = inter["intermediates"]["z_decoder"][0]
  decoded = _decode(model, params, z_dec, batch)
  np.testing.assert_allclose(metrics["loss/decoder"], np.mean(np.square(decoded - batch[specs.ACTION])), rtol=2e-4)
  np.testing.assert_allclose(metrics["loss"], metrics[f"loss/{term}"] + metrics["loss/decoder"], rtol=1e-6)


def test_decoder_input_is_the_interpolation_of_the_policy_sample_and_the_lam_latent(setup):
  cfg, _, model, batch, params, loss_fn = setup
  rng = jax.random.key(11)
  _, inter = loss_fn(params, batch, rng)
  sown = {k: np.asarray(v[0]) for k, v in inter["intermediates"].items()}
  z_lam, _ = _lam_latent(cfg, params, batch, rng)
  np.testing.assert_allclose(sown["z_lam"], z_lam, rtol=1e-5, atol=1e-5)
  noise = {"latent": jax.random.normal(jax.random.fold_in(rng, 1), z_lam.shape, jnp.float32)}
  z0 = _sample(model, params, batch, rng, "sample_latent", noise)
  np.testing.assert_allclose(sown["z_policy"], z0, rtol=1e-4, atol=1e-5)
  tau_i = 0.3
  np.testing.assert_allclose(sown["z_decoder"], (1 - tau_i) * sown["z_policy"] + tau_i * sown["z_lam"], rtol=1e-6,
                             atol=1e-6)
  assert not np.allclose(sown["z_policy"], sown["z_lam"], atol=1e-3)  # the interpolation is not trivial here


# ------------------------------------------------------------------------------------------ the sampler
class _ExactPolicy(lafp.LatentActionFlowPolicy):
  """The policy whose latent network returns ``target`` for every input (the exact x-prediction)."""

  target: Any = None

  def _predict(self, z_tau, tau, proprio, features, mask, context_kv=None):
    del tau, proprio, features, mask, context_kv
    return jnp.asarray(self.target, jnp.float32) + 0.0 * z_tau


@pytest.mark.parametrize("steps", [3, pytest.param(5, marks=pytest.mark.slow)])
def test_sampling_with_the_exact_network_returns_the_latent(steps):
  cfg = _tiny("flow")
  cfg.num_inference_steps = steps
  lib = registry.for_config(cfg)
  batch = lib.dummy_batch(cfg, B)
  params = lib.init_params(cfg, jax.random.key(0), batch)
  del params["lam"]
  target = np.random.RandomState(1).randn(*lafp.latent_shape(cfg, B)).astype(np.float32) * 3.0
  exact = _ExactPolicy(lafp.without_lam(cfg), target=target)
  noise = {"latent": np.random.RandomState(2).randn(*target.shape).astype(np.float32)}
  z = _sample(exact, params, batch, jax.random.key(0), "sample_latent", noise)
  np.testing.assert_allclose(z, target, rtol=1e-5, atol=1e-5)
  actions = _sample(exact, params, batch, jax.random.key(0), "sample_actions", noise)
  decoded = _decode(exact, params, jnp.asarray(target), batch)
  np.testing.assert_allclose(actions, decoded, rtol=1e-5, atol=1e-5)


def test_the_sampler_takes_x_prediction_euler_steps():
  """Two steps of a network that predicts a fixed z for each step's input: z1 = z0 + (1/2) (z_hat - z0) / 1."""
  cfg = _tiny("flow")
  cfg.num_inference_steps = 2
  cfg.latent_policy.t_eps = 0.5
  z0 = np.random.RandomState(3).randn(*lafp.latent_shape(cfg, B)).astype(np.float32)
  z_hat = np.full_like(z0, 2.0)
  z1 = z0 + 0.5 * (z_hat - z0) / 1.0
  z2 = z1 + 0.5 * (z_hat - z1) / 0.5
  np.testing.assert_allclose(z2, z_hat, rtol=1e-6)  # and the last step lands on the prediction
  velocity = lafp.implied_velocity(jnp.asarray(z_hat), jnp.asarray(z0), jnp.zeros((B,)), 0.5)
  np.testing.assert_allclose(velocity, z_hat - z0, rtol=1e-6)


# ------------------------------------------------------------------------------------------ gradients, LAM
@pytest.mark.slow  # ~70 s of compilation; the slow trainer test also checks the LAM stays bit-identical
def test_gradients_never_reach_the_lam(setup):
  cfg, _, model, batch, params, _ = setup
  # Away from the adaLN-zero initialisation (zero gates: no gradient reaches the prefix through the DiT yet).
  rs = np.random.RandomState(9)
  params = jax.tree.map(lambda x: x + rs.normal(0.0, 0.05, x.shape).astype(x.dtype), params)
  grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, batch, jax.random.key(3), method="compute_loss",
                                                 mutable=["intermediates"])[0][0]))(params)
  for leaf in jax.tree.leaves(grads["lam"]):
    assert not np.any(np.asarray(leaf)), "a gradient reached the frozen LAM"
  for name in ("vlm", "latent_policy", "action_decoder"):
    assert sum(float(np.sum(np.square(g))) for g in jax.tree.leaves(grads[name])) > 0, name
  # The decoder term trains the decoder only (z_0 and z_t are stop-gradient inputs).
  only_decoder = copy.deepcopy(cfg)
  only_decoder.loss.weights.latent_flow = only_decoder.loss.weights.latent_bc = 0.0
  m = registry.for_config(only_decoder).build(only_decoder)
  grads = jax.jit(jax.grad(lambda p: m.apply({"params": p}, batch, jax.random.key(3), method="compute_loss",
                                             mutable=["intermediates"])[0][0]))(params)
  for name in ("vlm", "latent_policy", "lam"):
    assert not any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads[name])), name


def test_a_latent_size_other_than_the_lams_is_an_error_naming_the_field():
  cfg = _tiny()
  cfg.latent.code_dim = 13
  with pytest.raises(ValueError, match=r"model\.latent\.code_dim=13 .* model\.lam\.vq\.code_dim=11"):
    registry.for_config(cfg).build(cfg)
  cfg = _tiny()
  cfg.lam.vq.code_length = 4
  with pytest.raises(ValueError, match=r"model\.latent\.code_length=3 .* model\.lam\.vq\.code_length=4"):
    registry.for_config(cfg).build(cfg)
  cfg = _tiny("bc")
  cfg.loss.weights.latent_flow = 1.0
  with pytest.raises(ValueError, match=r"model\.loss\.weights\.latent_flow > 0 with model\.latent_policy\.objective"):
    registry.for_config(cfg).build(cfg)


def test_pairs_past_the_episode_end_do_not_count_when_configured_to_drop(setup):
  cfg, lib, _, batch, params, _ = setup
  dropping = copy.deepcopy(cfg)
  dropping.pairs_past_end = "drop"
  model = lib.build(dropping)
  loss_fn = jax.jit(lambda p, b, r: model.apply({"params": p}, b, r, method="compute_loss", mutable=["intermediates"]))
  pad = copy.deepcopy(batch)
  pad[specs.OBSERVATION][specs.FUTURE_PAD_MASK][0] = False
  (_, m_pad), _ = loss_fn(params, pad, jax.random.key(2))
  np.testing.assert_allclose(m_pad["lafp/valid_pairs"], 2 / 3, rtol=1e-6)
  # Changing the invalid example's future frame leaves every term unchanged.
  other = copy.deepcopy(pad)
  view = cfg.lam.views[0]
  other[specs.OBSERVATION][specs.FUTURE][view][0] = 255 - other[specs.OBSERVATION][specs.FUTURE][view][0]
  other[specs.ACTION][0] = -other[specs.ACTION][0]
  (_, m_other), _ = loss_fn(params, other, jax.random.key(2))
  for term in lafp.LOSS_TERMS:
    np.testing.assert_allclose(m_other[f"loss/{term}"], m_pad[f"loss/{term}"], rtol=1e-5)


def test_pairs_past_the_end_count_as_the_last_frame_pair_by_default(setup):
  """``model.pairs_past_end='last_frame'`` (the default): an example flagged past the episode end (whose future frame
  the pipeline clamps to the episode's last frame) enters every term as if its pair were inside the episode. A config
  written before the field existed keeps 'drop', the behaviour it was trained with."""
  cfg, lib, _, batch, params, loss_fn = setup
  assert cfg.pairs_past_end == lafp_config.DEFAULT_PAIRS_PAST_END == "last_frame"
  assert lafp_config.model_config("sim").pairs_past_end == "last_frame"
  pad = copy.deepcopy(batch)
  pad[specs.OBSERVATION][specs.FUTURE_PAD_MASK][0] = False
  (_, m_last), _ = loss_fn(params, pad, jax.random.key(2))
  (_, m_all), _ = loss_fn(params, batch, jax.random.key(2))  # every pair inside the episode
  legacy = copy.deepcopy(cfg)
  del legacy["pairs_past_end"]
  legacy_model = lib.build(legacy)
  (_, m_legacy), _ = jax.jit(lambda p, b, r: legacy_model.apply({"params": p}, b, r, method="compute_loss",
                                                                mutable=["intermediates"]))(params, pad,
                                                                                            jax.random.key(2))
  np.testing.assert_allclose(m_legacy["lafp/valid_pairs"], 2 / 3, rtol=1e-6)
  np.testing.assert_allclose(m_last["lafp/valid_pairs"], 1.0)
  for term in lafp.LOSS_TERMS:
    np.testing.assert_allclose(m_last[f"loss/{term}"], m_all[f"loss/{term}"], rtol=1e-5, atol=1e-7)
  bad = copy.deepcopy(cfg)
  bad.pairs_past_end = "mask"
  with pytest.raises(ValueError, match="model.pairs_past_end"):
    lafp_config.check(bad, needs_lam=True)


# ------------------------------------------------------------------------------------------ inference
def test_sample_actions_does_not_read_the_lam_and_the_inference_config_leaves_it_out(setup):
  cfg, lib, model, batch, params, _ = setup
  policy = {k: v for k, v in params.items() if k != "lam"}
  with_lam = _sample(model, params, batch, jax.random.key(4), "sample_actions")
  without = _sample(model, policy, batch, jax.random.key(4), "sample_actions")
  np.testing.assert_array_equal(with_lam, without)
  inference = lib.inference_config(cfg)
  assert "lam" not in inference and "lam" in cfg
  alone = _sample(lib.build(inference), policy, batch, jax.random.key(4), "sample_actions")
  np.testing.assert_array_equal(with_lam, alone)
  assert with_lam.shape == (B, cfg.action_horizon, cfg.action_dim)
  # The inference config's parameter tree is the training tree without 'lam' (what an export keeps).
  kept = lib.abstract_params(inference)
  assert set(kept) == {"vlm", "latent_policy", "action_decoder"}
  full = strict.flatten(params)
  for name, value in strict.flatten(kept).items():
    assert tuple(value.shape) == tuple(full[name].shape), name
  assert set(full) - set(strict.flatten(kept)) == {n for n in full if n.startswith("lam/")}
  with pytest.raises(ValueError, match="model.lam is not set"):
    jax.eval_shape(lambda p: lib.build(inference).apply({"params": p}, batch, jax.random.key(4),
                                                        method="compute_loss"), policy)


@pytest.mark.slow  # 85 s at load 7 on the 2-core box (abstract tree with the LAM, checkpoint I/O, 2 compilations)
def test_a_checkpoint_serves_and_its_torch_export_gives_the_same_actions(tmp_path):
  """configs/sim.py:smoke_lafp checkpointed with random parameters (the frozen LAM included, as training writes it)
  -> CheckpointPolicy -> policy server: the served actions are the policy's own (same seed); -> export ->
  lamp_torch: the same actions for the same latent noise from a raw observation (resize 48x40 -> 32x32, proprio
  normalisation, word tokens, un-normalisation)."""
  _, model_cfg, _, _ = export_helpers.sim_checkpoint(tmp_path / "run", "smoke_lafp")
  run = str(tmp_path / "run")
  policy = CheckpointPolicy(run, seed=7)
  # The frozen LAM is training-only: the deployed policy neither holds nor passes it (ModelLibrary.inference_params).
  assert type(policy.model).__name__ == "LatentActionFlowPolicy" and "lam" not in policy.params
  assert "lam" in CheckpointPolicy(run, training_parts=True).params
  instruction = "put the red cube on the blue plate"
  observation = export_helpers.raw_observation(np.random.default_rng(1))
  key = policy._rng  # pylint: disable=protected-access  (the noise key the served call will use)
  server = server_lib.PolicyServer(policy, host="127.0.0.1", port=0).start()
  try:
    with client_lib.PolicyClient("127.0.0.1", server.port) as client:
      assert client.health()["action_horizon"] == policy.action_horizon
      client.reset(instruction)
      served = client.infer(observation)
  finally:
    server.shutdown()
  policy._rng = key  # pylint: disable=protected-access  (the same draw again, without a second compilation)
  policy.reset(instruction)
  np.testing.assert_allclose(served, policy(observation), rtol=1e-6, atol=1e-6)
  assert served.shape == (model_cfg.action_horizon, specs.ACTION_DIM) and np.all(np.isfinite(served))

  info = export.export_checkpoint(run, str(tmp_path / "export"))
  assert info["params"] == "ema_params"
  torch_policy = lamp_torch.from_pretrained(str(tmp_path / "export"))
  assert torch_policy.kind == "lafp"
  assert not any(name.startswith("lam.") for name in torch_policy.model.state_dict())
  jax_policy = export_helpers.FixedNoiseCheckpointPolicy(run)
  rs = np.random.RandomState(0)
  jax_policy.noise = {k: rs.normal(size=s).astype(np.float32) for k, s in torch_policy.model.noise_shapes(1).items()}
  assert set(jax_policy.noise) == {"latent"}
  jax_policy.reset(instruction)
  want = jax_policy(observation)
  got = torch_policy.sample_actions({**observation, "instruction": instruction},
                                    noise={k: torch.from_numpy(v) for k, v in jax_policy.noise.items()})
  assert got.shape == (1, model_cfg.action_horizon, specs.ACTION_DIM) and got.dtype == np.float32
  assert np.abs(got[0] - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
  assert np.abs(want).max() > 0.1  # a non-trivial comparison


@pytest.mark.slow  # ~40 s of compilation
def test_bc_samples_its_regression_in_one_call():
  cfg = _tiny("bc")
  lib = registry.for_config(cfg)
  flow = _tiny("flow")
  assert lib.analytic_flops(cfg, 1, "sample_actions") < lib.analytic_flops(flow, 1, "sample_actions")
  batch = lib.dummy_batch(cfg, B)
  params = lib.init_params(cfg, jax.random.key(0), batch)
  model = lib.build(cfg)
  a = _sample(model, params, batch, jax.random.key(1), "sample_latent")
  b = _sample(model, params, batch, jax.random.key(2), "sample_latent")
  np.testing.assert_array_equal(a, b)  # deterministic: the noise is not read


# ------------------------------------------------------------------------------------------ configs, data
def test_data_requirements_add_the_lam_future_frames():
  cfg = _tiny()
  lib = registry.for_config(cfg)
  req = lib.data_requirements(cfg)
  assert req.future_offsets == tuple(cfg.lam.future_offsets) and req.future_cameras == (specs.IMAGE_PRIMARY,)
  assert data_config.check_requirements(data_config.from_requirements(req, 4), req) == []
  bare = lib.data_requirements(lafp.without_lam(cfg))
  assert bare.future_offsets == () and data_config.check_requirements(data_config.from_requirements(bare, 4), req)


def test_sim_lafp_variants_share_the_base_policys_data_and_budget():
  module, base = _config_file("sim", "no_motion")
  for variant in ("lafp", "lafp_bc"):
    c = module.get_config(variant)
    assert [(n, c.stages[n].steps) for n in c.stage_order] == [(n, base.stages[n].steps) for n in base.stage_order]
    assert c.stages[c.stage_order[0]].optimizer.to_dict() == base.stages[base.stage_order[0]].optimizer.to_dict()
    assert c.data.pipeline.datasets[0].name == base.data.pipeline.datasets[0].name
    assert c.data.global_batch_size == base.data.global_batch_size
    assert c.sim_data.to_dict() == base.sim_data.to_dict()
    assert all(r"^lam/" in c.stages[n].frozen for n in c.stage_order)
    assert c.model.lam.future_offsets == (c.model.action_horizon,)
    stage_cfg = defaults.stage_model_config(c, c.stage_order[0])
    assert data_config.check_requirements(c.data.pipeline, registry.for_config(stage_cfg).data_requirements(
        stage_cfg)) == []
    with pytest.raises(ValueError, match="init.lam.path"):
      pretrained.active_entries(c)
    assert module.ABLATION_METHODS[variant] == (variant, f"smoke_{variant}")
    assert variant in module.VARIANTS and f"smoke_{variant}" in module.VARIANTS
  assert module.get_config("lafp").model.latent_policy.objective == "flow"
  assert module.get_config("lafp_bc").model.latent_policy.objective == "bc"
  assert module.get_config("lafp").model.num_inference_steps == 3


# ------------------------------------------------------------------------------------------ through the trainer
def _run(config, workdir):
  t = trainer_lib.Trainer(config, str(workdir))
  try:
    initial = jax.device_get(t.initial_state(t.stage(0)))
    final = jax.device_get(t.train())
  finally:
    t.close()
  return initial, final


def _norm(tree) -> float:
  return float(sum(np.sum(np.square(np.asarray(x))) for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize("variant", ["smoke", "smoke_bc"])
@pytest.mark.slow  # trains through the trainer (minutes on a 2-core host)
def test_smoke_trains_the_policy_and_leaves_the_lam_unchanged(variant, tmp_path):
  _, config = _config_file("lafp", variant)
  config.stages.main.steps = 2
  config.checkpoint.async_save = False
  initial, final = _run(config, tmp_path)
  jax.tree.map(np.testing.assert_array_equal, final.params["lam"], initial.params["lam"])
  for name in ("vlm", "latent_policy", "action_decoder"):
    assert _norm(jax.tree.map(lambda a, b: a - b, final.params[name], initial.params[name])) > 0, name


def test_the_lam_run_the_sim_variants_load_validates_and_fits_each_of_them():
  """``configs/lam.py:sim_single_h8`` (the run every LAM-loading variant of configs/sim.py names in its docs) and its
  '_explore' twin pass the trainer's checks, and their parameters have the shapes of each such policy's
  params['lam'], pairs at the policy's horizon. The docs once named ``sim_single
  --config.model.future_offsets='(8,)'``, which the trainer refuses (the pipeline's offsets stay (5,))."""
  lam_module, lam_run = _config_file("lam", "sim_single_h8")
  defaults.validate(lam_run)
  explore = lam_module.get_config("sim_single_h8_explore")  # the same model on exploration data
  defaults.validate(explore)
  assert explore.model.to_dict() == lam_run.model.to_dict()
  assert "--policy=explore" in explore.sim_data.extra_flags and "--policy=explore" not in lam_run.sim_data.extra_flags
  with pytest.raises(ValueError, match="future_offsets"):
    bad = lam_module.get_config("sim_single")
    bad.model.future_offsets = (8,)
    defaults.validate(bad)
  run_shapes = jax.tree.map(lambda x: x.shape, registry.for_config(lam_run.model).abstract_params(lam_run.model))
  sim_module, _ = _config_file("sim", "")
  loaders = [v for v in sim_module.VARIANTS if not v.startswith("smoke")
             and "lam" in sim_module.get_config(v).get("init", {})]
  assert {"lafp", "lafp_bc", "lara_frozen", "film_cnn_lafp", "film_cnn_lara_frozen"} <= set(loaders)
  built = set()
  for variant in loaders:
    policy = sim_module.get_config(variant).model
    assert tuple(policy.lam.future_offsets) == tuple(lam_run.model.future_offsets) == (policy.action_horizon,)
    assert tuple(policy.lam.views) == tuple(lam_run.model.views), variant
    kind = (policy.name, policy.get("vlm", {}).get("kind"), str(policy.lam))  # one trace per kind of policy
    if kind in built:
      continue
    built.add(kind)
    wanted = registry.for_config(policy).abstract_params(policy)["lam"]
    assert jax.tree.map(lambda x: x.shape, wanted) == run_shapes, variant
