"""LARA (models/lara.py) on LaMP and π0: the cosine alignment against a hand computation, the block it reads, where
its gradients go (joint vs frozen LAM), sampling untouched, the data requirements, the LAM checkpoint's size check
and training through the trainer."""

import copy
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.data import config as data_config
from lamp_jax.models import lam_config
from lamp_jax.models import lara
from lamp_jax.models import registry
from lamp_jax.models.weights import strict
from lamp_jax.training import defaults
from lamp_jax.training import pretrained
from lamp_jax.training import trainer as trainer_lib
from tests import tree_stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ("lamp", "pi0")


def _config_file(name: str, variant: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"_lara_test_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _tiny(policy: str, *, joint: bool = True, block_from_end: int = 0, **action) -> ml_collections.ConfigDict:
  """A tiny policy with LARA and a tiny single-view latent action model (odd sizes: code_length 3, code_dim 11)."""
  cfg = registry.get(policy).model_config("tiny")
  cfg.action.update(action)
  lam = lam_config.model_config("tiny")
  lam.views = (specs.IMAGE_PRIMARY,)
  lam.future_offsets = (3,)
  lam.loss.weights.cross_view = 0.0
  return lara.add(cfg, lam, block_from_end=block_from_end, joint=joint)


def _key(cfg) -> str:
  return cfg.to_json_best_effort(sort_keys=True)


def _init(cfg, batch_size=3, seed=0):
  """(library, model, dummy batch, parameters) of ``cfg``. Initialising traces and compiles the whole model (~13 s
  for the tiny LaMP with its LAM on 2 cores), so each config is initialised once per process; the tests get fresh
  copies of the batch and of the parameter tree's dicts (the arrays are immutable)."""
  lib = registry.for_config(cfg)
  key = (_key(cfg), batch_size, seed)
  if key not in _INITS:
    batch = lib.dummy_batch(cfg, batch_size, seed)
    _INITS[key] = batch, lib.init_params(cfg, jax.random.key(seed), batch)
  batch, params = _INITS[key]
  return lib, lib.build(cfg), copy.deepcopy(batch), jax.tree.map(lambda x: x, params)


def _loss(model, params, batch, rng=1):
  """compute_loss, jitted once per model config (tests that evaluate the same model share the compiled program)."""
  fn = _JITTED.setdefault(_key(model.config), (model, jax.jit(
      lambda p, b, r: model.apply({"params": p}, b, jax.random.key(r), method="compute_loss"), static_argnums=2)))[1]
  return fn(params, batch, rng)


_INITS = {}
_JITTED = {}
# The module's tests share these caches: xdist keeps a module on one worker (pytest.ini runs with --dist=loadfile).


# ------------------------------------------------------------------------------------------ the loss
def test_cosine_loss_matches_a_hand_computation_over_valid_pairs_and_repeats():
  rs = np.random.RandomState(0)
  v, b, f, dz, repeats = 2, 3, 2, 7, 2
  prediction = rs.randn(repeats * b, dz).astype(np.float32)
  latents = rs.randn(v, b, f, dz).astype(np.float32)
  valid = rs.rand(v, b, f) > 0.3
  valid[0, 0, 0] = True
  loss, mean = lara.cosine_loss(jnp.asarray(prediction), jnp.asarray(latents), jnp.asarray(valid), stop_target=False)
  cosines = []
  for r in range(repeats):
    for i in range(v):
      for j in range(b):
        for k in range(f):
          if valid[i, j, k]:
            p, z = prediction[r * b + j], latents[i, j, k]
            cosines.append(float(p @ z / (np.linalg.norm(p) * np.linalg.norm(z))))
  np.testing.assert_allclose(float(mean), np.mean(cosines), rtol=1e-5)
  np.testing.assert_allclose(float(loss), 1.0 - np.mean(cosines), rtol=1e-5)
  # Parallel vectors of any scale: loss 0; no valid pair: loss 0 (the term does not count).
  same, _ = lara.cosine_loss(jnp.asarray(3.0 * latents[0, :, 0]), jnp.asarray(latents[:1, :, :1]),
                             jnp.ones((1, b, 1), bool), stop_target=True)
  np.testing.assert_allclose(float(same), 0.0, atol=1e-6)
  none, _ = lara.cosine_loss(jnp.asarray(prediction), jnp.asarray(latents), jnp.zeros((v, b, f), bool), False)
  assert float(none) == 0.0


@pytest.mark.parametrize("policy", POLICIES)
def test_loss_terms_metrics_and_weights(policy):
  cfg = _tiny(policy)
  _, model, batch, params = _init(cfg)
  loss, metrics = _loss(model, params, batch)
  assert set(params) >= {"lam", "lara_predictor"}
  weights = {k: float(v) for k, v in cfg.loss.weights.items()}
  assert weights["align"] == 0.01 and weights["lam"] == 0.01
  expected = sum(w * float(metrics[f"loss/{k}"]) for k, w in weights.items())
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert 0.0 < float(metrics["loss/align"]) < 2.0 and float(metrics["lara/valid_pairs"]) == 1.0
  np.testing.assert_allclose(float(metrics["loss/align"]), 1.0 - float(metrics["lara/cosine"]), rtol=1e-5)
  # The 'lam' term is the latent action model's own loss on the same pairs.
  lam_lib = registry.get("lam")
  lam_loss, _ = jax.jit(lambda p, b: lam_lib.build(cfg.lam).apply(  # jitted: op by op it compiled ~200 programs
      {"params": p}, b, jax.random.fold_in(jax.random.key(1), lara._LAM_STREAM), method="compute_loss"))(
          params["lam"], batch)
  np.testing.assert_allclose(float(metrics["loss/lam"]), float(lam_loss), rtol=1e-5)


@pytest.mark.parametrize("policy", POLICIES)
def test_pad_pairs_do_not_count(policy):
  cfg = _tiny(policy)
  _, model, batch, params = _init(cfg)
  batch = copy.deepcopy(batch)
  batch[specs.OBSERVATION][specs.FUTURE_PAD_MASK][0] = False
  _, metrics = _loss(model, params, batch)
  changed = copy.deepcopy(batch)
  changed[specs.OBSERVATION][specs.FUTURE][specs.IMAGE_PRIMARY][0] = 255 - changed[specs.OBSERVATION][specs.FUTURE][
      specs.IMAGE_PRIMARY][0]
  _, metrics2 = _loss(model, params, changed)
  np.testing.assert_allclose(float(metrics["loss/align"]), float(metrics2["loss/align"]), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["lara/valid_pairs"]), 2 / 3, rtol=1e-6)


# ------------------------------------------------------------------------------------------ the block read
def _perturb_layer(params, path, index, scanned):
  """params with every leaf of the expert layer ``index`` under ``path`` shifted (stacked or per-layer names)."""
  params = jax.tree.map(lambda x: x, params)
  node = params
  for part in path[:-1]:
    node = node[part]
  def shifted(x, rows):  # numpy: no small XLA program compiled per leaf shape
    x = np.array(x)
    x[rows] += 0.5
    return x

  if scanned:
    node[path[-1]] = jax.tree.map(lambda x: shifted(x, index), node[path[-1]])
  else:
    node[f"{path[-1]}_{index}"] = jax.tree.map(lambda x: shifted(x, Ellipsis), node[f"{path[-1]}_{index}"])
  return params


@pytest.mark.parametrize("policy", POLICIES)
def test_the_predictor_reads_block_l_minus_k(policy):
  """Block L - k: changing a later layer changes the action loss but not the alignment; changing that block does."""
  if policy == "lamp":
    cfg = _tiny(policy, block_from_end=2, depth=6)  # 3 cross / self pairs: aligned after pair 2
    path, last, aligned = ("action_expert", "blocks"), 2, 1
    scanned = bool(cfg.action.scan_layers)
  else:
    cfg = _tiny(policy, block_from_end=1)  # the tiny Gemma expert has 3 layers: aligned after layer 2
    path, last, aligned = ("action_expert", "llm", "layers"), 2, 1
    scanned = True
  _, model, batch, params = _init(cfg)
  _, base = _loss(model, params, batch)
  _, later = _loss(model, _perturb_layer(params, path, last, scanned), batch)
  _, earlier = _loss(model, _perturb_layer(params, path, aligned, scanned), batch)
  assert float(later["loss/align"]) == float(base["loss/align"])
  assert float(later["loss/action"]) != float(base["loss/action"])
  assert float(earlier["loss/align"]) != float(base["loss/align"])


def test_block_fields_are_checked_naming_the_field():
  cfg = _tiny("lamp", block_from_end=1, depth=6)  # inside a cross / self pair
  _, model, batch, params = _init(_tiny("lamp", block_from_end=2, depth=6))
  with pytest.raises(ValueError, match="model.lara.block_from_end"):  # raised while tracing: nothing compiles
    jax.eval_shape(lambda p: registry.get("lamp").build(cfg).apply({"params": p}, batch, jax.random.key(0),
                                                                    method="compute_loss"), params)
  with pytest.raises(ValueError, match=r"model.lara.block_from_end=6"):
    lara.hidden_after(_tiny("lamp", block_from_end=6, depth=6), 6)
  bad = _tiny("pi0")
  bad.lam.image_size = 16
  with pytest.raises(ValueError, match="model.lam.image_size"):
    lara.check(bad)
  frozen = _tiny("pi0", joint=False)
  frozen.loss.weights.lam = 0.5
  with pytest.raises(ValueError, match="model.loss.weights.lam"):
    lara.check(frozen)


# ------------------------------------------------------------------------------------------ gradients
def _align_grads(cfg, params_cfg):
  """Gradients of the alignment term of ``cfg``'s model at ``params_cfg``'s initial parameters (the joint and
  frozen configs have the same parameters: one initialisation serves both)."""
  _, _, batch, params = _init(params_cfg)
  model = registry.for_config(cfg).build(cfg)
  return jax.jit(jax.grad(lambda p: model.apply({"params": p}, batch, jax.random.key(1), method="compute_loss")[1][
      "loss/align"]))(params)


def _norm(tree):
  return tree_stats.sum_of_squares(tree)


@pytest.mark.parametrize("policy", POLICIES)
def test_alignment_gradients_reach_the_lam_only_when_joint(policy):
  joint = _align_grads(_tiny(policy), _tiny(policy))
  frozen = _align_grads(_tiny(policy, joint=False), _tiny(policy))
  for grads in (joint, frozen):
    assert _norm(grads["lara_predictor"]) > 0 and _norm(grads["action_expert"]) > 0
  assert _norm(joint["lam"]["idm"]) > 0
  assert _norm(frozen["lam"]) == 0.0


# ------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("policy", POLICIES)
def test_sample_actions_unchanged_by_lara(policy):
  cfg = _tiny(policy)
  lib, model, batch, params = _init(cfg)
  base_cfg = lib.model_config("tiny")
  base_params = {k: v for k, v in params.items() if k not in lara.TOP_LEVEL}
  assert set(base_params) == set(lib.abstract_params(base_cfg))
  noise = {"action": np.random.RandomState(1).randn(3, cfg.action_horizon, cfg.action_dim).astype(np.float32)}
  if policy == "lamp":
    noise["motion"] = np.random.RandomState(2).randn(3, cfg.motion.num_keypoints, cfg.motion.num_steps,
                                                     3).astype(np.float32)

  def sample(c, p):
    return jax.jit(lambda p, b: lib.build(c).apply({"params": p}, b, jax.random.key(5), method="sample_actions",
                                                   noise=noise))(p, batch)

  np.testing.assert_array_equal(np.asarray(sample(cfg, params)), np.asarray(sample(base_cfg, base_params)))


# ------------------------------------------------------------------------------------------ data
@pytest.mark.parametrize("policy", POLICIES)
def test_data_requirements_add_the_lam_future_frames(policy):
  cfg = _tiny(policy)
  cfg.lam.views = (specs.IMAGE_SECONDARY,)
  lib = registry.get(policy)
  req = lib.data_requirements(cfg)
  assert req.cameras == tuple(cfg.image_keys) + (specs.IMAGE_SECONDARY,)
  assert req.future_offsets == (3,) and req.future_cameras == (specs.IMAGE_SECONDARY,)
  d = data_config.from_requirements(req, 4)
  assert data_config.check_requirements(d, req) == []
  assert data_config.check_requirements(data_config.from_requirements(lib.data_requirements(lib.model_config("tiny")),
                                                                      4), req)
  batch = lib.dummy_batch(cfg, 2)
  assert batch[specs.OBSERVATION][specs.FUTURE][specs.IMAGE_SECONDARY].shape == (2, 1, 24, 24, 3)
  # Without LARA the dummy batch is unchanged (the export parity tests draw from it).
  base = lib.model_config("tiny")
  jax.tree.map(np.testing.assert_array_equal, lib.dummy_batch(base, 2), lara.add_dummy_future(base, lib.dummy_batch(
      base, 2), 0))


# ------------------------------------------------------------------------------------------ through the trainer
def _run(config, workdir):
  t = trainer_lib.Trainer(config, str(workdir))
  try:
    initial = jax.device_get(t.initial_state(t.stage(0)))
    final = jax.device_get(t.train())
  finally:
    t.close()
  return initial, final


@pytest.fixture(scope="module")
def lam_run(tmp_path_factory):
  """A finished 2-step run of the tiny latent action model that ``_tiny('lamp')`` carries."""
  workdir = tmp_path_factory.mktemp("lam_run")
  config = _config_file("lam", "smoke")
  config.model = _tiny("lamp").lam
  config.stages.main.steps = 2
  config.checkpoint.every_steps = 2
  config.checkpoint.async_save = False
  _, final = _run(config, workdir)
  return str(workdir), final


def _frozen_config(lam_workdir: str):
  config = _config_file("lara", "smoke_frozen")
  config.model = _tiny("lamp", joint=False)
  config.init.lam.path = lam_workdir
  config.stages.main.steps = 2
  config.checkpoint.async_save = False
  return config


@pytest.mark.slow  # trains through the trainer (minutes on a 2-core host)
def test_frozen_lam_is_loaded_from_a_lam_run_and_unchanged_by_training(lam_run, tmp_path):
  workdir, lam_final = lam_run
  initial, final = _run(_frozen_config(workdir), tmp_path / "policy")
  jax.tree.map(np.testing.assert_array_equal, initial.params["lam"], lam_final.params)
  jax.tree.map(np.testing.assert_array_equal, final.params["lam"], lam_final.params)
  assert _norm(jax.tree.map(lambda a, b: a - b, final.params["lara_predictor"], initial.params["lara_predictor"])) > 0


@pytest.mark.slow  # trains through the trainer (minutes on a 2-core host)
def test_a_lam_checkpoint_of_another_latent_size_is_an_error_naming_the_field(lam_run, tmp_path):
  config = _frozen_config(lam_run[0])
  config.model.lam.vq.code_dim = 13
  with pytest.raises(strict.StrictLoadError, match=r"model\.lam\.vq\.code_dim=13 here, 11 in the checkpoint"):
    _run(config, tmp_path / "policy")


@pytest.mark.parametrize("variant", ["smoke", "smoke_pi0"])
@pytest.mark.slow  # trains through the trainer (minutes on a 2-core host)
def test_joint_smoke_trains_the_policy_and_the_lam(variant, tmp_path):
  config = _config_file("lara", variant)
  config.stages.main.steps = 2
  config.checkpoint.async_save = False
  initial, final = _run(config, tmp_path)
  for name in ("lam", "lara_predictor", "action_expert"):
    assert _norm(jax.tree.map(lambda a, b: a - b, final.params[name], initial.params[name])) > 0, name


def test_sim_lara_variants_share_lamp_data_and_budget():
  base, joint, frozen = (_config_file("sim", v) for v in ("", "lara", "lara_frozen"))
  for c in (joint, frozen):
    assert [(n, c.stages[n].steps) for n in c.stage_order] == [(n, base.stages[n].steps) for n in base.stage_order]
    assert c.data.pipeline.datasets[0].name == base.data.pipeline.datasets[0].name
    assert c.data.global_batch_size == base.data.global_batch_size
    assert float(c.stages.motion.model_overrides.loss.weights.align) == 0.0
    assert r"^lam/" in c.stages.motion.frozen
    motion_cfg = defaults.stage_model_config(c, "action")
    assert data_config.check_requirements(c.data.pipeline, registry.for_config(motion_cfg).data_requirements(
        motion_cfg)) == []
  assert r"^lam/" in frozen.stages.action.frozen and r"^lam/" not in joint.stages.action.frozen
  assert float(frozen.model.loss.weights.lam) == 0.0 and float(joint.model.loss.weights.lam) == 0.01
  with pytest.raises(ValueError, match="init.lam.path"):
    pretrained.active_entries(frozen)
  sim = importlib.util.spec_from_file_location("_sim", os.path.join(REPO, "configs", "sim.py"))
  module = importlib.util.module_from_spec(sim)
  sim.loader.exec_module(module)
  assert module.ABLATION_METHODS["lara"] == ("lara", "smoke_lara")
  assert module.ABLATION_METHODS["lara_frozen_lam"] == ("lara_frozen", "smoke_lara_frozen")


@pytest.mark.parametrize("policy", POLICIES)
def test_export_leaves_out_the_alignment(policy):
  """LARA is training-only: the exported policy is the policy without it (no 'lam' / 'lara_predictor' tensors,
  no lara / lam config sections, no 'align' / 'lam' loss weights), the remaining tensors bit-exact."""
  from lamp_jax import export  # pylint: disable=g-import-not-at-top

  cfg = _tiny(policy)
  lib = registry.for_config(cfg)
  rs = np.random.RandomState(3)
  params = jax.tree.map(lambda s: np.asarray(rs.normal(0.0, 0.1, s.shape), s.dtype), lib.abstract_params(cfg))
  assert set(lara.TOP_LEVEL) <= set(params)
  inference = lib.inference_config(cfg)
  assert "lara" not in inference and "lam" not in inference
  assert not set(lara.LOSS_TERMS) & set(inference.loss.weights)
  assert "lara" in cfg and "align" in cfg.loss.weights  # the training config is left as it was
  kept, kept_cfg = export._inference_only(params, cfg)  # pylint: disable=protected-access
  assert set(kept) == set(params) - set(lara.TOP_LEVEL)
  assert kept_cfg.to_dict() == inference.to_dict()
  entries, abstract = export.layout(kept_cfg)  # the exporter's strict layout of what is kept
  assert set(abstract) == set(kept) and entries
  for name, value in strict.flatten(kept).items():
    np.testing.assert_array_equal(value, strict.flatten(params)[name])
