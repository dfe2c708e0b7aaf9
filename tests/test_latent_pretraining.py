"""Latent-action pretraining (models/latent_pretraining.py) on LaMP: the code cross-entropy against a hand
computation, the codes are the frozen LAM's ``encode_latent`` codes, no gradient reaches the LAM, the 'latent' stage
runs on action-free batches (and a stage that reads actions fails clearly on them), sampling and export untouched,
the action-free / labelled data (``data.hide_actions``, episode slices, the statistics cache), the sim configs and
both stages through the trainer."""

import copy
import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lamp_jax import experiment
from lamp_jax import specs
from lamp_jax.data import config as data_config
from lamp_jax.data import errors
from lamp_jax.data import normalization
from lamp_jax.data import pipeline
from lamp_jax.data import synthetic
from lamp_jax.models import lam_config
from lamp_jax.models import latent_pretraining as lp
from lamp_jax.models import registry
from lamp_jax.models.weights import strict
from lamp_jax.training import defaults
from lamp_jax.training import preflight
from lamp_jax.training import pretrained
from lamp_jax.training import trainer as trainer_lib
from tests import tree_stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTION_KEYS = (specs.ACTION, specs.ACTION_PAD_MASK)


def _config_file(name: str, variant: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"_latent_test_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, module.get_config(variant)


def _tiny(*, latent_stage: bool = True, num_heads: int = 3) -> ml_collections.ConfigDict:
  """The tiny LaMP with the option and a tiny single-view LAM (odd sizes: 7 codes, code_length 3, code_dim 11).
  ``latent_stage``: the 'latent' stage's weights (only 'latent_codes'); else the 'action' stage's."""
  cfg = registry.get("lamp").model_config("tiny")
  lam = lam_config.model_config("tiny")
  lam.views = (specs.IMAGE_PRIMARY,)
  lam.future_offsets = (3,)
  lam.loss.weights.cross_view = 0.0
  lp.add(cfg, lam, num_heads=num_heads)
  if latent_stage:
    cfg.loss.weights.update(dict(motion=0.0, action=0.0, latent_codes=1.0))
  else:
    cfg.loss.weights.update(dict(motion=0.0, action=1.0, latent_codes=0.0))
  return cfg


def _init(cfg, batch_size=3, seed=0):
  lib = registry.for_config(cfg)
  batch = lib.dummy_batch(cfg, batch_size, seed)
  return lib, lib.build(cfg), batch, lib.init_params(cfg, jax.random.key(seed), batch)


_JITTED = {}


def _loss(model, params, batch, rng=1):
  """compute_loss, jitted (one compilation per model and batch structure)."""
  fn = _JITTED.setdefault(id(model), (model, jax.jit(
      lambda p, b, r: model.apply({"params": p}, b, jax.random.key(r), method="compute_loss"), static_argnums=2)))[1]
  return fn(params, batch, rng)


@pytest.fixture(scope="module")
def latent():
  """(lib, model, batch, params) of the tiny LaMP in its 'latent' stage (batch of 3)."""
  return _init(_tiny())


def _norm(tree) -> float:
  return tree_stats.sum_abs(tree)


# ------------------------------------------------------------------------------------------ the loss
def test_code_cross_entropy_matches_a_hand_computation_over_valid_examples():
  rs = np.random.RandomState(0)
  logits = rs.normal(0.0, 2.0, (5, 3, 7)).astype(np.float32)
  codes = rs.randint(0, 7, (5, 3)).astype(np.int32)
  valid = np.array([True, False, True, True, False])
  loss, accuracy = lp.code_cross_entropy(jnp.asarray(logits), jnp.asarray(codes), jnp.asarray(valid))
  log_z = np.log(np.sum(np.exp(logits.astype(np.float64)), -1))
  nll = log_z - np.take_along_axis(logits, codes[..., None], -1)[..., 0]
  np.testing.assert_allclose(float(loss), nll[valid].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(accuracy), (logits.argmax(-1) == codes)[valid].mean(), rtol=1e-6)
  # Known closed forms: uniform logits give log K; no valid example gives 0.
  uniform, _ = lp.code_cross_entropy(jnp.zeros((2, 3, 7)), jnp.asarray(codes[:2]), jnp.ones((2,), bool))
  np.testing.assert_allclose(float(uniform), np.log(7.0), rtol=1e-6)
  none, _ = lp.code_cross_entropy(jnp.asarray(logits), jnp.asarray(codes), jnp.zeros((5,), bool))
  assert float(none) == 0.0
  with pytest.raises(ValueError, match="code_length"):
    lp.code_cross_entropy(jnp.asarray(logits), jnp.asarray(codes[:, :2]), jnp.asarray(valid))


def test_the_term_is_the_cross_entropy_of_the_head_against_the_lams_encode_latent_codes(latent):
  _, model, batch, params = latent
  cfg = model.config
  batch = copy.deepcopy(batch)
  batch[specs.OBSERVATION][specs.FUTURE_PAD_MASK] = np.array([[True], [False], [True]])
  rng = jax.random.key(4)
  # The codes in the policy are those of the LAM library's own encode_latent with params['lam'].
  in_policy, valid = jax.jit(lambda p, b: model.apply({"params": p}, b, rng,
                                                      method=lambda m, b, r: lp.lam_codes(m.lam, b, r)))(params, batch)
  lam_model = registry.for_config(cfg.lam).build(cfg.lam)
  alone = jax.jit(lambda p, b: lam_model.apply({"params": p}, b, jax.random.fold_in(rng, lp._LAM_STREAM),
                                               method="encode_latent"))(params["lam"], batch)
  np.testing.assert_array_equal(np.asarray(in_policy), np.asarray(alone["codes"]))
  np.testing.assert_array_equal(np.asarray(valid), [True, False, True])
  assert in_policy.shape == (3, 3) and int(jnp.max(in_policy)) < 7
  logits = jax.jit(lambda p, b: model.apply({"params": p}, b, method=lambda m, b: m.latent_head(*m.encode(b))))(
      params, batch)
  assert logits.shape == (3, 3, 7)
  log_p = np.asarray(jax.nn.log_softmax(logits, -1))
  codes = np.asarray(alone["codes"])
  expected = -np.mean([log_p[b, t, codes[b, t]] for b in (0, 2) for t in range(3)])
  loss, metrics = _loss(model, params, batch, 4)
  np.testing.assert_allclose(float(metrics["loss/latent_codes"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(metrics["loss/action"]) == 0.0 and float(metrics["latent/valid_pairs"]) == pytest.approx(2 / 3)


def test_no_gradient_reaches_the_lam_or_the_action_expert(latent):
  _, model, batch, params = latent
  grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, batch, jax.random.key(1),
                                                 method="compute_loss")[0]))(params)
  assert _norm(grads["lam"]) == 0.0
  assert _norm(grads["action_expert"]) == 0.0
  assert _norm(grads["latent_head"]) > 0 and _norm(grads["vlm"]) > 0


def test_fields_are_checked_naming_them():
  cfg = _tiny(num_heads=5)  # the tiny prefix width 48 is not a multiple of 5
  with pytest.raises(ValueError, match=r"model\.latent_pretraining\.num_heads=5"):
    _init(cfg)
  cfg = _tiny()
  cfg.lam.image_size = 16
  with pytest.raises(ValueError, match=r"model\.lam\.image_size=16"):
    _init(cfg)
  lara_cfg = registry.get("lamp").model_config("tiny")
  lara_cfg.lara = ml_collections.ConfigDict(dict(block_from_end=0, joint=True))
  with pytest.raises(ValueError, match=r"model\.lara"):
    lp.add(lara_cfg, lam_config.model_config("tiny"))


# ------------------------------------------------------------------------------------------ without actions
def test_the_latent_stage_runs_on_a_batch_without_actions_and_the_action_stage_fails_on_it(latent):
  lib, model, batch, params = latent
  assert not set(ACTION_KEYS) & set(batch)  # the latent stage's dummy batch is action-free, like its data
  loss, _ = _loss(model, params, batch)
  assert np.isfinite(float(loss))
  action_cfg = _tiny(latent_stage=False)
  with pytest.raises(ValueError, match=r"model\.loss\.weights\.action > 0 but the batch has no 'action'"):
    jax.eval_shape(lambda p, b: lib.build(action_cfg).apply({"params": p}, b, jax.random.key(1),
                                                            method="compute_loss"), params, batch)
  assert set(ACTION_KEYS) <= set(lib.dummy_batch(action_cfg, 2))


def test_data_requirements_of_the_stages_and_hidden_actions():
  lib = registry.get("lamp")
  latent, action = lib.data_requirements(_tiny()), lib.data_requirements(_tiny(latent_stage=False))
  assert latent.action_horizon == 0 and latent.action_dim == 0 and latent.actions_optional
  assert action.action_horizon == 5 and not action.actions_optional
  for req in (latent, action):
    assert req.future_offsets == (3,) and req.future_cameras == (specs.IMAGE_PRIMARY,)
  free = data_config.from_requirements(action, 4)
  free.hide_actions = True
  assert data_config.check_requirements(free, latent) == []
  problems = data_config.check_requirements(free, action)
  assert len(problems) == 1 and "data.hide_actions=True" in problems[0] and "action chunks of 5" in problems[0]


# ------------------------------------------------------------------------------------------ inference
def test_sample_actions_and_the_export_are_unchanged_by_the_head():
  from lamp_jax import export  # pylint: disable=g-import-not-at-top

  cfg = _tiny(latent_stage=False)
  lib = registry.for_config(cfg)
  batch = lib.dummy_batch(cfg, 3, 0)
  rs = np.random.RandomState(3)
  params = jax.tree.map(lambda s: np.asarray(rs.normal(0.0, 0.1, s.shape), s.dtype), lib.abstract_params(cfg))
  inference = lib.inference_config(cfg)
  assert "latent_pretraining" not in inference and "lam" not in inference
  assert lp.LOSS_TERM not in inference.loss.weights and "latent_pretraining" in cfg  # cfg left as it was
  base_params = {k: v for k, v in params.items() if k not in lp.TOP_LEVEL}
  assert set(base_params) == set(lib.abstract_params(inference))
  noise = {"action": np.random.RandomState(1).randn(3, cfg.action_horizon, cfg.action_dim).astype(np.float32),
           "motion": np.random.RandomState(2).randn(3, cfg.motion.num_keypoints, cfg.motion.num_steps,
                                                    3).astype(np.float32)}

  def sample(c, p):
    return jax.jit(lambda p, b: lib.build(c).apply({"params": p}, b, jax.random.key(5), method="sample_actions",
                                                   noise=noise))(p, batch)

  np.testing.assert_array_equal(np.asarray(sample(cfg, params)), np.asarray(sample(inference, base_params)))
  kept, kept_cfg = export._inference_only(params, cfg)  # pylint: disable=protected-access
  assert set(kept) == set(params) - set(lp.TOP_LEVEL)
  assert kept_cfg.to_dict() == inference.to_dict()
  for name, value in strict.flatten(kept).items():
    np.testing.assert_array_equal(value, strict.flatten(params)[name])


# ------------------------------------------------------------------------------------------ data
IMG, K, T = (16, 16), 4, 3
SIM_LENGTHS = [5, 4, 6]


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("rlds")
  rng = np.random.default_rng(3)
  episodes = [synthetic.lamp_sim_episode(rng, i, n, IMG, K, T) for i, n in enumerate(SIM_LENGTHS)]
  return synthetic.write("lamp_sim_lptst", str(root), synthetic.lamp_sim_features(IMG, K, T), episodes,
                         num_shards=1, val_episodes=[synthetic.lamp_sim_episode(rng, 9, 4, IMG, K, T)])


def _data_cfg(data_dir, tmp_path, train_split, hide_actions):
  cfg = data_config.default_data_config()
  cfg.datasets = [data_config.dataset_entry("lamp_sim_lptst", data_dir=data_dir, train_split=train_split)]
  cfg.batch_size = 2
  cfg.image_size = IMG
  cfg.cameras = ("image_primary",)
  cfg.scene_flow_num_points, cfg.scene_flow_horizon = K, T  # the layout's labels are checked, then not emitted
  cfg.scene_flow = False
  cfg.action_horizon = 2
  cfg.future_offsets, cfg.future_cameras = (2,), ("image_primary",)
  cfg.hide_actions = hide_actions
  cfg.stats_cache_dir = str(tmp_path / "stats")
  cfg.shuffle_buffer_size = 4
  cfg.num_parallel_calls = cfg.num_parallel_reads = 1
  return cfg


def test_hidden_actions_and_episode_slices_in_the_pipeline_and_the_statistics_cache(sim_data, tmp_path):
  labelled = _data_cfg(sim_data, tmp_path, "train[:1]", False)
  free = _data_cfg(sim_data, tmp_path, "train[1:]", True)
  free_batch = next(pipeline.make_train_iterator(free, seed=0, process_index=0, process_count=1))
  assert not set(ACTION_KEYS) & set(free_batch)
  assert free_batch[specs.OBSERVATION][specs.FUTURE]["image_primary"].shape == (2, 1) + IMG + (3,)
  it = pipeline.make_train_iterator(labelled, seed=0, process_index=0, process_count=1)
  assert set(ACTION_KEYS) <= set(next(it))
  stats_labelled = it.statistics["lamp_sim_lptst"]
  stats_free = pipeline.dataset_statistics(free)["lamp_sim_lptst"]
  # Each selection has its own statistics: the labelled one the first episode's, the action-free one no action.
  assert (stats_labelled.num_trajectories, stats_labelled.num_transitions) == (1, SIM_LENGTHS[0])
  assert (stats_free.num_trajectories, stats_free.num_transitions) == (2, sum(SIM_LENGTHS[1:]))
  assert np.all(np.asarray(stats_free.action.std) == 0) and np.any(np.asarray(stats_labelled.action.std) > 0)
  whole = _data_cfg(sim_data, tmp_path, "train", False)
  stats_whole = pipeline.dataset_statistics(whole)["lamp_sim_lptst"]
  assert stats_whole.num_trajectories == 3
  names = sorted(os.listdir(tmp_path / "stats"))
  assert len(names) == 3, names
  assert normalization.selection_key(whole.datasets[0], whole) == ""
  keys = {normalization.selection_key(c.datasets[0], c) for c in (labelled, free, whole)}
  assert len(keys) == 3


def test_a_sliced_train_split_without_a_val_split_is_an_error_naming_the_fix(tmp_path):
  rng = np.random.default_rng(5)
  episodes = [synthetic.lamp_sim_episode(rng, i, n, IMG, K, T) for i, n in enumerate(SIM_LENGTHS)]
  no_val = synthetic.write("lamp_sim_lpnoval", str(tmp_path / "rlds"), synthetic.lamp_sim_features(IMG, K, T),
                           episodes, num_shards=1)
  cfg = _data_cfg(no_val, tmp_path, "train[:1]", False)
  cfg.datasets[0].name = "lamp_sim_lpnoval"
  with pytest.raises(errors.DataError, match=r"train_split 'train\[:1\]' is a slice .* give the dataset entry's "
                     "val_split"):
    pipeline.dataset_statistics(cfg)
  cfg.datasets[0].val_split = "train[2:]"
  assert pipeline.dataset_statistics(cfg)["lamp_sim_lpnoval"].num_trajectories == 1


def test_generated_data_directory_reaches_the_stages_dataset_entries():
  _, c = _config_file("sim", "smoke_latent_pretraining")
  experiment.point_data_config_at(c, "/data/lamp_sim_tabletop4/1.0.0")
  assert c.data.pipeline.datasets[0].data_dir == "/data/lamp_sim_tabletop4/1.0.0"
  assert c.stages.latent.data_overrides.datasets[0].data_dir == "/data/lamp_sim_tabletop4/1.0.0"


# ------------------------------------------------------------------------------------------ configs
def test_sim_variants_split_the_episodes_and_share_the_labelled_budget():
  module, pre = _config_file("sim", "latent_pretraining")
  _, base = _config_file("sim", "small_labelled")
  _, no_motion = _config_file("sim", "no_motion")
  assert module.ABLATION_METHODS["latent_pretraining"] == ("latent_pretraining", "smoke_latent_pretraining")
  assert module.ABLATION_METHODS["small_labelled"] == ("small_labelled", "smoke_small_labelled")
  assert {"latent_pretraining", "small_labelled", "smoke_latent_pretraining", "smoke_small_labelled"} <= set(
      module.VARIANTS)
  assert module.episode_split(600, 0.05, 60) == ("train[:60]", "train[60:570]", "train[570:]")
  with pytest.raises(ValueError, match="LABELLED_EPISODES=600"):
    module.episode_split(600, 0.05, 600)
  assert pre.stage_order == ("latent", "action") and base.stage_order == ("action",)
  assert pre.stages.latent.steps + pre.stages.action.steps == no_motion.stages.action.steps
  assert pre.stages.action.steps == base.stages.action.steps
  assert pre.stages.action.optimizer.to_dict() == base.stages.action.optimizer.to_dict()
  labelled = pre.data.pipeline.datasets[0]
  assert labelled.to_dict() == base.data.pipeline.datasets[0].to_dict()
  assert (labelled.train_split, labelled.val_split) == ("train[:60]", "train[570:]")
  free = pre.stages.latent.data_overrides
  assert free.hide_actions and free.datasets[0].train_split == "train[60:570]"
  assert r"^lam/" in pre.stages.latent.frozen and r"^action_expert/" in pre.stages.latent.frozen
  assert r"^latent_head/" in pre.stages.action.frozen
  assert float(pre.stages.action.model_overrides.loss.weights.latent_codes) == 0.0
  with pytest.raises(ValueError, match="init.lam.path"):
    pretrained.active_entries(pre)
  for variants in (("no_motion", "latent_pretraining", "small_labelled"),
                   ("smoke_no_motion", "smoke_latent_pretraining", "smoke_small_labelled")):
    dirs = {experiment.sim_dataset_dir(_config_file("sim", v)[1], "/unused") for v in variants}
    assert len(dirs) == 1, (variants, dirs)  # one generated dataset, split by the dataset entries
  for name in pre.stage_order:  # each stage's data gives its model what it reads
    staged = defaults.stage_model_config(pre, name)
    data = copy.deepcopy(pre.data.pipeline)
    defaults.apply_overrides(data, pre.stages[name].data_overrides, name)
    assert data_config.check_requirements(data, registry.for_config(staged).data_requirements(staged)) == []


def test_the_grounded_pair_pretrains_the_encoder_past_its_trunk_at_the_same_labelled_budget():
  """configs/sim_film_cnn_latent.py: on the FiLM-CNN policy latent pretraining can only help through the encoder, so
  both arms freeze only stage 0's keypoint trunk (in the new 'latent' stage too), the 'latent' stage trains encoder
  parameters that the 'action' stage then trains as well, and the pair shares stage 0, the labelled episodes, the
  'action' stage and the evaluation (its total the ':film_cnn_trunk_no_motion' budget)."""
  import re

  import flax.linen as nn

  from lamp_jax.models import film_cnn

  _, pre = _config_file("sim", "film_cnn_trunk_latent_pretraining")
  _, base = _config_file("sim", "film_cnn_trunk_small_labelled")
  _, policy = _config_file("sim", "film_cnn_trunk_no_motion")
  suite, _ = _config_file("sim_film_cnn_latent", "film_cnn_trunk_small_labelled")
  assert suite.ABLATION_METHODS == {
      "latent_pretraining": ("film_cnn_trunk_latent_pretraining", "smoke_film_cnn_trunk_latent_pretraining"),
      "small_labelled": ("film_cnn_trunk_small_labelled", "smoke_film_cnn_trunk_small_labelled")}
  assert pre.stage_order == ("latent", "action") and base.stage_order == ("action",)
  assert pre.stages.latent.steps + pre.stages.action.steps == policy.stages.action.steps
  assert pre.stages.action.steps == base.stages.action.steps
  assert pre.stages.action.optimizer.to_dict() == base.stages.action.optimizer.to_dict()
  assert pre.data.pipeline.datasets[0].to_dict() == base.data.pipeline.datasets[0].to_dict()
  assert pre.data.pipeline.datasets[0].train_split == "train[:60]"
  for c in (pre, base):
    assert c.model.vlm.kind == "film_cnn" and c.grounding.to_dict() == policy.grounding.to_dict()
    assert c.eval.to_dict() == policy.eval.to_dict()
  encoder_cfg = film_cnn.config_from_dict(pre.model.vlm, int(pre.model.max_token_len), len(pre.model.image_keys))
  trunk = film_cnn.keypoint_trunk_pattern(encoder_cfg)
  for c in (pre, base):
    assert all(trunk in c.stages[s].frozen and "^vlm/" not in c.stages[s].frozen for s in c.stage_order)
  size, cameras, words = int(pre.model.image_size), len(pre.model.image_keys), int(pre.model.max_token_len)
  shapes = nn.unbox(jax.eval_shape(film_cnn.FiLMCNNEncoder(encoder_cfg).init, jax.random.key(0),
                                   jnp.zeros((1, cameras, size, size, 3)), jnp.ones((1, cameras), bool),
                                   jnp.ones((1, words), jnp.int32), jnp.ones((1, words), bool)))["params"]
  names = ["vlm/" + "/".join(str(getattr(k, "key", k)) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(shapes)[0]]

  def trained(stage):
    return {n for n in names if not any(re.search(p, n) for p in pre.stages[stage].frozen)}

  assert trained("latent") and trained("latent") == trained("action"), (trained("latent"), trained("action"))
  assert all(re.search(trunk, n) for n in set(names) - trained("latent"))


def test_a_latent_stage_that_reads_actions_is_rejected_naming_hide_actions():
  _, c = _config_file("sim", "smoke_latent_pretraining")
  preflight.check_run_config(c)
  c.stages.latent.model_overrides.loss.weights.action = 1.0
  with pytest.raises(preflight.ConfigError, match=r"data\.pipeline\.hide_actions=True"):
    preflight.check_run_config(c)


# ------------------------------------------------------------------------------------------ through the trainer
def _two_stage_config() -> ml_collections.ConfigDict:
  """Both stages on synthetic batches (the 'latent' stage's are action-free), the LAM frozen at its random
  initialisation (init path '': nothing loaded)."""
  c = defaults.base_config()
  c.model = _tiny(latent_stage=False)
  c.data.global_batch_size = 3
  c.logging.measure_roof = False
  c.logging.progress_bar = False
  c.logging.every_steps = 1
  c.checkpoint.every_steps = 2
  c.checkpoint.async_save = False
  optimizer = defaults.optimizer_config(lr=1e-3, end_lr=1e-4, warmup_steps=0, weight_decay=1e-4, clip_norm=1.0)
  c.stage_order = ("latent", "action")
  c.stages = ml_collections.ConfigDict(dict(
      latent=defaults.stage_config(2, frozen=(r"^lam/", r"^action_expert/"), optimizer=optimizer,
                                   model_overrides=dict(loss=dict(weights=dict(action=0.0, latent_codes=1.0)))),
      action=defaults.stage_config(2, frozen=(r"^lam/", r"^latent_head/"), optimizer=optimizer,
                                   model_overrides=dict(loss=dict(weights=dict(action=1.0, latent_codes=0.0))))))
  c.init = ml_collections.ConfigDict(dict(lam=pretrained.init_entry("checkpoint", "lam", path="", source="/")))
  return c


def _run_stage(config, workdir):
  t = trainer_lib.Trainer(config, str(workdir))
  try:
    before = jax.device_get(t.initial_state(t.stage(0)))
    after = jax.device_get(t.train())
  finally:
    t.close()
  return before, after


@pytest.mark.slow  # two stages through the trainer (about a minute on a 2-core host)
def test_both_stages_train_through_the_trainer(tmp_path):
  config = _two_stage_config()
  latent_only = copy.deepcopy(config)
  latent_only.stage_order = ("latent",)
  initial, after_latent = _run_stage(latent_only, tmp_path / "latent")
  _, final = _run_stage(config, tmp_path / "both")
  jax.tree.map(np.testing.assert_array_equal, after_latent.params["lam"], initial.params["lam"])
  jax.tree.map(np.testing.assert_array_equal, after_latent.params["action_expert"], initial.params["action_expert"])
  assert tree_stats.sum_abs_difference(after_latent.params["latent_head"], initial.params["latent_head"]) > 0
  assert tree_stats.sum_abs_difference(after_latent.params["vlm"], initial.params["vlm"]) > 0
  # Stage 'action': the Action Expert learns; the LAM and the code head stay as the latent stage left them.
  jax.tree.map(np.testing.assert_array_equal, final.params["lam"], initial.params["lam"])
  jax.tree.map(np.testing.assert_array_equal, final.params["latent_head"], after_latent.params["latent_head"])
  assert tree_stats.sum_abs_difference(final.params["action_expert"], initial.params["action_expert"]) > 0
  assert int(final.step) == 4
