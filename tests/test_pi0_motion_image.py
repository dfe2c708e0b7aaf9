"""Joint motion-image diffusion on the π0 policy (models/pi0.py + models/motion_image.py): inference unchanged,
the loss against a reference written from the parameters, gradients (into the shared VLM, never into the VAE or
the expert), the export drops the head, analytic FLOPs, the configs; a two-stage training through the trainer
(warm-up trains the head alone, joint trains the VLM too, the VAE never) and the predicted-vs-true flow-image
report of its checkpoint on held-out simulator frames."""

import copy
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from configs import pi0 as pi0_configs
from lamp_jax import export
from lamp_jax import flow_image
from lamp_jax import specs
from lamp_jax.eval import motion_image_report
from lamp_jax.eval.checkpoint_policy import CheckpointPolicy
from lamp_jax.models import flops
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import motion_image
from lamp_jax.models import pi0_config
from lamp_jax.models import registry
from lamp_jax.models import vae as vae_lib
from lamp_jax.models.weights import strict
from lamp_jax.sim import env as env_lib
from lamp_jax.sim import experts
from lamp_jax.sim import optical_flow
from lamp_jax.sim import tasks
from lamp_jax.training import defaults
from lamp_jax.training import trainer as trainer_lib
from tests import tree_stats

pi0 = registry.get("pi0")
B = 3
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def head_config():
  """Tiny π0 + the head (24-pixel flow images -> 12 x 12 x 4 latents of the tiny VAE, 16 tokens of 3 x 3 patches),
  a non-trivial latent scaling and shift."""
  cfg = pi0_config.with_motion_image(pi0.model_config("tiny"))
  cfg.vae.scaling_factor, cfg.vae.shift_factor = 1.7, 0.11
  return cfg


CFG = head_config()
PLAIN = pi0.model_config("tiny")


def random_params(cfg, seed=0, scale=0.15):
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, scale, s.shape), s.dtype), pi0.abstract_params(cfg))


def without_head(params):
  return {k: v for k, v in params.items() if k not in motion_image.TOP_LEVEL}


@pytest.fixture(scope="module")
def setup():
  return random_params(CFG), pi0.dummy_batch(CFG, B, seed=1)


def test_parameter_tree_inference_config_data_and_configs():
  params = pi0.abstract_params(CFG)
  assert set(params) == {"vlm", "action_expert", "motion_image", "vae"}
  assert set(params["vae"]) == set(vae_lib.abstract_params(CFG.vae))
  for name in ("vlm", "action_expert"):  # the policy's own tensors are those of the plain π0
    assert jax.tree.map(lambda s: s.shape, params[name]) == jax.tree.map(lambda s: s.shape,
                                                                         pi0.abstract_params(PLAIN)[name])
  # The inference config IS the plain π0's (sections and weight removed).
  assert pi0.inference_config(CFG).to_dict() == PLAIN.to_dict()
  assert pi0.inference_config(PLAIN) is PLAIN
  assert pi0.data_requirements(CFG).optical_flow and not pi0.data_requirements(PLAIN).optical_flow
  assert "reconstruct_motion_image" in pi0.methods
  assert pi0.bench_variants(CFG).keys() == {"with_motion_image_head", "without_motion_image_head"}
  assert pi0.bench_variants(PLAIN).keys() == {"sample_actions"}
  assert set(pi0.dummy_batch(CFG, 2)) - set(pi0.dummy_batch(PLAIN, 2)) == {specs.OPTICAL_FLOW,
                                                                          specs.HAS_OPTICAL_FLOW}
  # The plain π0 declares no motion-image term (its metrics are unchanged).
  with pytest.raises(ValueError, match=r"model\.loss\.weights\.motion_image: 'pi0' has no loss term"):
    bad = copy.deepcopy(PLAIN)
    bad.loss.weights.motion_image = 1.0
    jax.eval_shape(lambda p: pi0.build(bad).apply({"params": p}, pi0.dummy_batch(PLAIN, 1), jax.random.key(0),
                                                  method="compute_loss"), pi0.abstract_params(PLAIN))


def test_sample_actions_is_the_policy_without_the_head(setup):
  """Same outputs for the same parameters and noise (given or drawn), and the same compiled work: the head
  never runs."""
  params, batch = setup
  obs = {k: batch[k] for k in (specs.OBSERVATION, specs.TASK)}
  noise = {"action": np.random.RandomState(3).normal(size=(B, CFG.action_horizon, CFG.action_dim)).astype(np.float32)}

  def compiled(cfg, p):
    def sample(p, b, r):
      model = pi0.build(cfg)
      return (model.apply({"params": p}, b, r, noise=noise, method="sample_actions"),
              model.apply({"params": p}, b, r, method="sample_actions"))
    return jax.jit(sample).lower(p, obs, jax.random.key(0)).compile(FAST_COMPILE)

  with_head, plain = compiled(CFG, params), compiled(PLAIN, without_head(params))
  for a, b in zip(with_head(params, obs, jax.random.key(7)), plain(without_head(params), obs, jax.random.key(7))):
    np.testing.assert_array_equal(a, b)
  assert with_head.cost_analysis()["flops"] == plain.cost_analysis()["flops"]
  assert pi0.analytic_flops(CFG, 1, "sample_actions") == pi0.analytic_flops(PLAIN, 1, "sample_actions")


def reference_loss(params, batch, rng):
  """The 'motion_image' term written from the parameters: the VLM's last hidden states over the prefix ->
  frozen VAE posterior mean -> scaled latents -> flow matching of the head (modules on their own subtrees)."""
  features, mask = pi0.build(CFG).apply({"params": params}, batch, method="encode")
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


@pytest.mark.slow  # 1.5-2 min of compilation; LaMP's twin in test_motion_image.py covers the shared plumbing
def test_loss_reference_streams_gradients_and_reconstruction(setup):
  """The 'motion_image' term equals the reference (features = the VLM's last hidden states); the action term
  equals the plain π0's (the head draws from its own stream); the warm-up weights (action 0) compute the head's
  term alone; the head's gradient trains the head AND the shared VLM, never the VAE (frozen; stop_gradient) nor
  the expert; ``reconstruct_motion_image`` is Euler steps of the head from the given noise, then the VAE decoder.
  One compiled function for all of it."""
  params, batch = setup
  batch = copy.deepcopy(batch)
  batch[specs.HAS_OPTICAL_FLOW][1] = False
  image_only = copy.deepcopy(CFG)
  image_only.loss.weights.action = 0.0
  rng = jax.random.key(4)
  h, w, channels = motion_image.latent_shape(CFG.vae, CFG.image_size)
  noise = np.random.RandomState(5).normal(size=(B, h, w, channels)).astype(np.float32)
  steps = 2

  def manual_reconstruction(p, b):
    features, mask = pi0.build(CFG).apply({"params": p}, b, method="encode")
    head = motion_image.MotionImageDiT(CFG.motion_image)
    z = jnp.asarray(noise)
    for i in range(steps):  # Euler 0 -> 1, tau = i / steps
      z = z + head.apply({"params": p["motion_image"]}, z, jnp.full((B,), i / steps), features, mask) / steps
    vae = vae_lib.AutoencoderKL(CFG.vae)
    return vae.apply({"params": p["vae"]}, z / CFG.vae.scaling_factor + CFG.vae.shift_factor, method="decode")

  def run(p, b):
    loss = lambda cfg, q: pi0.build(cfg).apply({"params": q}, b, rng, method="compute_loss")  # noqa: E731
    total, metrics = loss(CFG, p)
    plain = loss(PLAIN, without_head(p))[1]
    warmup_total, warmup = loss(image_only, p)
    grads = jax.grad(lambda q: loss(image_only, q)[0])(p)
    images = pi0.build(CFG).apply({"params": p}, b, jax.random.key(0), num_steps=steps, noise=noise,
                                  method="reconstruct_motion_image")
    return (total, metrics, plain, warmup_total, warmup, reference_loss(p, b, rng), grads, images,
            manual_reconstruction(p, b))

  total, metrics, plain, warmup_total, warmup, reference, grads, images, expected = jax.jit(
      run, compiler_options=FAST_COMPILE)(params, batch)
  np.testing.assert_allclose(metrics["loss/motion_image"], reference, rtol=2e-5)
  np.testing.assert_allclose(total, metrics["loss/action"] + metrics["loss/motion_image"], rtol=1e-6)
  np.testing.assert_allclose(plain["loss/action"], metrics["loss/action"], rtol=1e-6)
  assert set(plain) == {"loss", "loss/action"}
  np.testing.assert_allclose(warmup["loss/motion_image"], metrics["loss/motion_image"], rtol=1e-6)
  assert float(warmup["loss/action"]) == 0.0 and float(warmup_total) == float(warmup["loss/motion_image"])
  norm = tree_stats.sum_of_squares
  assert norm(grads["vae"]) == 0.0 and norm(grads["action_expert"]) == 0.0
  assert norm(grads["motion_image"]) > 0.0 and norm(grads["vlm"]["llm"]) > 0.0 and norm(grads["vlm"]["img"]) > 0.0
  assert images.shape == (B, CFG.image_size, CFG.image_size, 3)
  np.testing.assert_allclose(images, expected, rtol=1e-4, atol=1e-4)


def test_analytic_flops_and_errors(setup):
  """A train step with the head costs 3 x its call + the frozen VAE encoder more; warm-up (action weight 0) runs
  no expert. Clear errors for a head without latent scaling, without flow images, or switched off."""
  params, batch = setup
  head_call = pi0.analytic_flops(CFG, 1, "motion_image_call")
  np.testing.assert_allclose(pi0.analytic_flops(CFG, 1, "train_step") - pi0.analytic_flops(PLAIN, 1, "train_step"),
                             3 * head_call + flops.vae_encoder(CFG.vae, CFG.image_size))
  warm = copy.deepcopy(CFG)
  warm.loss.weights.action = 0.0
  vlm = flops.paligemma_prefix(CFG.vlm, len(CFG.image_keys), int(CFG.max_token_len))
  np.testing.assert_allclose(pi0.analytic_flops(warm, 1, "train_step"),
                             3 * (vlm + head_call) + flops.vae_encoder(CFG.vae, CFG.image_size))
  np.testing.assert_allclose(pi0.analytic_flops(CFG, 1, "reconstruct_motion_image"),
                             vlm + CFG.motion_image.reconstruction_steps * head_call
                             + flops.vae_decoder(CFG.vae, CFG.image_size))
  unscaled = copy.deepcopy(CFG)
  unscaled.vae.scaling_factor = 0.0
  with pytest.raises(ValueError, match=r"model\.vae\.scaling_factor=0\.0"):
    pi0.build(unscaled)
  call = lambda cfg, b: jax.eval_shape(  # noqa: E731
      lambda p: pi0.build(cfg).apply({"params": p}, b, jax.random.key(0), method="compute_loss"), params)
  with pytest.raises(ValueError, match=r"model\.loss\.weights\.motion_image > 0 but the batch has no 'optical_flow'"):
    call(CFG, {k: v for k, v in batch.items() if k != specs.OPTICAL_FLOW})
  disabled = copy.deepcopy(CFG)
  disabled.motion_image.enabled = False
  with pytest.raises(ValueError, match=r"model\.loss\.weights\.motion_image > 0 but model\.motion_image\.enabled"):
    call(disabled, batch)
  with pytest.raises(ValueError, match="reconstruct_motion_image needs model.motion_image.enabled"):
    jax.eval_shape(lambda p: pi0.build(disabled).apply({"params": p}, batch, jax.random.key(0),
                                                       method="reconstruct_motion_image"), params)
  with pytest.raises(ValueError, match="needs model.motion_image.enabled"):
    pi0.analytic_flops(PLAIN, 1, "motion_image_call")


def test_export_drops_the_head_and_its_vae(tmp_path):
  """The export of π0 with the head is the export of the plain π0 on the same tensors: config.json's model
  section is the plain π0's, the tensors are the policy's, bit-exact."""
  params = jax.tree.map(np.asarray, random_params(CFG, seed=7))
  inputs = {"cameras": list(CFG.image_keys), "camera_keys": {c: c for c in CFG.image_keys},
            "image_size": [CFG.image_size] * 2, "resize": False, "state_key": "state",
            "proprio_dim": CFG.proprio_dim, "state_dim": None}
  tokenizer = {"kind": "bytes", "words": "", "path": "", "max_len": CFG.max_token_len, "truncate": True}
  kw = dict(inputs=inputs, normalization=None, tokenizer=tokenizer, source={"test": True})
  info = export.export_params(params, CFG, str(tmp_path / "head"), **kw)
  export.export_params(without_head(params), PLAIN, str(tmp_path / "plain"), **kw)
  back, model_cfg, config = export.load_export(str(tmp_path / "head"))
  assert set(back) == {"vlm", "action_expert"} and "motion_image" not in config["model"]
  assert model_cfg.to_dict() == PLAIN.to_dict()
  assert info["tensors"] == len(export.layout(PLAIN)[0])
  with open(tmp_path / "plain" / "model.safetensors", "rb") as a, open(tmp_path / "head" / "model.safetensors",
                                                                      "rb") as b:
    assert a.read() == b.read()
  for name, value in strict.flatten(back).items():
    np.testing.assert_array_equal(value, strict.flatten(params)[name])


def test_sim_variants_run_on_the_budget_and_data_of_pi0(tmp_path):
  """configs/sim.py:pi0_motion_image is π0 + the head: π0's model, data (plus the exact flow images), total step
  budget, optimizer and action draws, in the head's two stages (the VAE frozen in both; the warm-up trains the head
  alone), its VAE the motion-image variant's (one shared prerequisite run)."""
  from configs import sim  # pylint: disable=g-import-not-at-top
  assert sim.ABLATION_METHODS["pi0_motion_image"] == ("pi0_motion_image", "smoke_pi0_motion_image")
  for smoke in ("", "smoke_"):
    run, base, lamp_head = (sim.get_config(smoke + v) for v in ("pi0_motion_image", "pi0", "motion_image"))
    defaults.validate(run)
    assert run.model.name == "pi0" and motion_image.enabled(run.model)
    assert pi0.inference_config(run.model).to_dict() == base.model.to_dict()
    assert run.prerequisites.vae.config.to_dict() == lamp_head.prerequisites.vae.config.to_dict()
    assert run.model.motion_image.to_dict() == lamp_head.model.motion_image.to_dict()
    assert run.data.pipeline.to_dict() == dict(base.data.pipeline.to_dict(), optical_flow=True)
    assert run.stage_order == ("warmup", "joint")
    assert sum(int(run.stages[s].steps) for s in run.stage_order) == int(base.stages.action.steps)
    warmup, joint = (defaults.stage_model_config(run, s) for s in run.stage_order)
    assert dict(warmup.loss.weights) == {"action": 0.0, "motion_image": 1.0}
    assert dict(joint.loss.weights) == {"action": 1.0, "motion_image": 1.0}
    assert joint.loss.action_repeats == base.stages.action.model_overrides.loss.action_repeats
    assert run.stages.joint.optimizer.to_dict() == base.stages.action.optimizer.to_dict()
    assert set(run.stages.warmup.frozen) == {"^vlm/", "^action_expert/", "^vae/"}
    assert tuple(run.stages.joint.frozen) == ("^vae/",)
  from lamp_jax import experiment  # pylint: disable=g-import-not-at-top
  experiment.check_config(sim.get_config("smoke_pi0_motion_image"), str(tmp_path))  # the checks before any work


# ------------------------------------------------------------------------ trainer -> checkpoint -> report
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Two warm-up and two joint AdamW steps of the tiny π0 + head on synthetic batches, a checkpoint every step."""
  workdir = tmp_path_factory.mktemp("pi0_motion_image")
  c = defaults.base_config()
  c.compilation_cache_dir = os.path.join(tempfile.gettempdir(), "lamp_jax_tests_xla_cache")
  c.model = head_config()
  c.data.global_batch_size = 2
  c.tokenizer.kind, c.tokenizer.words = "words", " ".join(tasks.INSTRUCTION_WORDS)
  c.tokenizer.truncate = True  # the tiny model's 7-token prompt is shorter than the sim's instructions (report)
  opt = defaults.optimizer_config(lr=1e-3, warmup_steps=0)
  c.stage_order, c.stages = common.motion_image_stages(2, 2, opt, opt)
  c.checkpoint.every_steps, c.checkpoint.max_to_keep = 1, 4
  c.logging.every_steps, c.logging.measure_roof, c.logging.progress_bar, c.logging.tensorboard = 1, False, False, False
  trainer = trainer_lib.Trainer(c, str(workdir))
  try:
    trainer.train()
  finally:
    trainer.close()
  return workdir


# ~1 min on two idle cores (two stages: two train-step compilations); several minutes when the cores are shared.
@pytest.mark.slow
def test_warmup_trains_the_head_alone_then_joint_trains_the_vlm_never_the_vae(trained):
  records = [json.loads(line) for line in open(trained / "metrics.jsonl")]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  assert all(r["loss/action"] == 0 and r["loss/motion_image"] > 0 for r in train[:2])  # warm-up
  assert all(r["loss/action"] > 0 and r["loss/motion_image"] > 0 for r in train[2:])  # joint
  params = {step: jax.device_get(CheckpointPolicy(str(trained), step=step, training_parts=True).params)
            for step in (1, 2, 3)}

  def same(a, b, part):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params[a][part]), jax.tree.leaves(params[b][part])))

  assert same(1, 2, "vlm") and same(1, 2, "action_expert") and not same(1, 2, "motion_image")  # step 2: warm-up
  assert not same(2, 3, "vlm") and not same(2, 3, "action_expert") and not same(2, 3, "motion_image")  # joint
  assert same(1, 2, "vae") and same(2, 3, "vae")


@pytest.mark.slow  # the training above + the head's reconstruction compile + 4 simulated expert episodes
def test_report_of_predicted_and_true_flow_images(trained, tmp_path):
  """``python -m lamp_jax.eval.motion_image_report`` on the checkpoint: PNG, NPZ and JSON written, the figures
  finite, the true-flow column the flow-image encoding of the simulator's exact flow of that frame (recomputed
  here from a fresh replay of the same held-out episode), the camera column that frame's image_0."""
  out = tmp_path / "report"
  motion_image_report.main([f"--checkpoint={trained}", f"--out={out}", "--frames=2", "--num-steps=2"])
  for name in (motion_image_report.PNG, motion_image_report.NPZ, motion_image_report.JSON):
    assert os.path.getsize(out / name) > 100, name
  result = json.load(open(out / motion_image_report.JSON))
  assert result["step"] == 4 and len(result["frames"]) == 2 and result["flow_steps"] == CFG.action_horizon
  for row in result["frames"] + [result["mean"]]:
    for key in ("flow_epe_px", "flow_epe_moving_px", "zero_flow_epe_px", "image_l1", "image_mse"):
      assert np.isfinite(row[key]) and row[key] >= 0, (key, row)
  assert result["mean"]["zero_flow_epe_px"] > 0  # the frames move
  arrays = np.load(out / motion_image_report.NPZ)
  size = CFG.image_size
  magnitude = flow_image.default_max_magnitude(size)
  assert result["flow_max_magnitude_px"] == magnitude
  env = env_lib.TabletopEnv(image_size=size, render=True)
  try:
    for i, row in enumerate(result["frames"]):
      episode = experts.run_expert_episode(env, tasks.sample_task(row["family"], row["seed"]), seed=row["seed"],
                                           record=True)
      frames, t = episode["frames"], row["step"]
      flow = optical_flow.dense_flow(env.model, frames[t], frames[min(t + CFG.action_horizon, len(frames) - 1)],
                                     env_lib.REFERENCE_CAMERA, size, size)
      np.testing.assert_array_equal(arrays["true_flow_image"][i], flow_image.flow_to_rgb(flow, magnitude))
      np.testing.assert_array_equal(arrays["true_flow"][i], flow)
      np.testing.assert_array_equal(arrays["camera"][i], episode["observations"][t]["image_0"])
  finally:
    env.close()
  assert arrays["predicted_flow_image"].shape == (2, size, size, 3)
  assert arrays["predicted_flow_image"].dtype == np.uint8


def test_pi0_model_configs_with_the_head():
  """configs/pi0.py:<size>_motion_image is the size's π0 with the head (pi0_config.with_motion_image); anything
  else is refused, naming the variants."""
  plain, with_head = pi0_configs.get_config("tiny"), pi0_configs.get_config("tiny_motion_image")
  assert "motion_image" not in plain.model and bool(with_head.model.motion_image.enabled)
  assert with_head.model.to_dict() == pi0_config.with_motion_image(pi0_config.model_config("tiny")).to_dict()
  with pytest.raises(ValueError, match="variants: .*'paper'.*_motion_image"):
    pi0_configs.get_config("huge_motion_image")
