"""Latent-action pretraining (models/latent_pretraining.py) on the π0 policy (models/pi0.py): the code
cross-entropy against a computation from the parameters (the head on the VLM's last hidden states, the frozen LAM's
``encode_latent`` codes), the action term unchanged by the head, where gradients go (never into the LAM; the
'latent' stage never into the expert), the 'latent' stage on action-free batches, sampling and the export
untouched, analytic FLOPs, field checks, and the configs/sim.py variants."""

import copy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lamp_jax import export
from lamp_jax import specs
from lamp_jax.data import config as data_config
from lamp_jax.models import lam_config
from lamp_jax.models import latent_pretraining as lp
from lamp_jax.models import paligemma
from lamp_jax.models import pi0_config
from lamp_jax.models import registry
from lamp_jax.models.weights import strict
from lamp_jax.training import defaults
from lamp_jax.training import preflight
from lamp_jax.training import pretrained
from tests import tree_stats

pi0 = registry.get("pi0")
B = 3
ACTION_KEYS = (specs.ACTION, specs.ACTION_PAD_MASK)
FAST_COMPILE = {"xla_backend_optimization_level": 0}
PLAIN = pi0.model_config("tiny")


def _tiny(*, latent_stage: bool, num_heads: int = 3) -> ml_collections.ConfigDict:
  """The tiny π0 (prefix width 48) with the option and a tiny single-view LAM (7 codes, code_length 3, code_dim
  11). ``latent_stage``: the 'latent' stage's weights (only 'latent_codes'); else both terms at odd weights."""
  cfg = pi0.model_config("tiny")
  lam = lam_config.model_config("tiny")
  lam.views = (specs.IMAGE_PRIMARY,)
  lam.future_offsets = (3,)
  lam.loss.weights.cross_view = 0.0
  lp.add(cfg, lam, num_heads=num_heads)
  cfg.loss.weights.update(dict(action=0.0, latent_codes=1.0) if latent_stage else dict(action=0.7, latent_codes=1.3))
  return cfg


LATENT, BOTH = _tiny(latent_stage=True), _tiny(latent_stage=False)
PLAIN_BOTH = copy.deepcopy(PLAIN)  # BOTH without the option
PLAIN_BOTH.loss.weights.action = 0.7


def _random_params(cfg, seed=0, scale=0.15):
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, scale, s.shape), s.dtype), pi0.abstract_params(cfg))


def _jit(fn, *args):
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)(*args)


def _norm(tree) -> float:
  return tree_stats.sum_abs(tree)


@pytest.fixture(scope="module")
def setup():
  """(params of the option's tree, batch with actions and the LAM's future frames; example 1 has no valid pair)."""
  params = _random_params(BOTH)
  batch = pi0.dummy_batch(BOTH, B, seed=4)
  batch[specs.OBSERVATION][specs.FUTURE_PAD_MASK] = np.array([[True], [False], [True]])
  return params, batch


def test_parameter_tree_inference_config_and_data_requirements():
  assert set(pi0.abstract_params(BOTH)) == {"vlm", "action_expert"} | set(lp.TOP_LEVEL)
  inference = pi0.inference_config(BOTH)
  assert inference.to_dict() == PLAIN_BOTH.to_dict() and "latent_pretraining" in BOTH  # BOTH left as it was
  latent, both = pi0.data_requirements(LATENT), pi0.data_requirements(BOTH)
  assert latent.action_horizon == 0 and latent.action_dim == 0 and latent.actions_optional
  assert both.action_horizon == PLAIN.action_horizon and not both.actions_optional
  for req in (latent, both):
    assert req.future_offsets == (3,) and req.future_cameras == (specs.IMAGE_PRIMARY,)
  assert not set(ACTION_KEYS) & set(pi0.dummy_batch(LATENT, 2))  # action-free, like the 'latent' stage's data
  assert specs.FUTURE in pi0.dummy_batch(BOTH, 2)[specs.OBSERVATION]


def test_latent_term_is_the_heads_cross_entropy_against_the_lams_codes_and_the_action_term_is_unchanged(setup):
  """The 'latent' stage's loss = the code cross-entropy of the head on ``encode`` (the VLM's last hidden states)
  against the LAM library's own ``encode_latent`` codes over the valid pairs, on a batch without actions; with both
  terms, 'action' equals the plain π0's on the same parameters and key, and the total is the weighted sum."""
  params, batch = setup
  rng = jax.random.key(6)
  free = {k: v for k, v in batch.items() if k not in ACTION_KEYS}
  latent_model, both_model = pi0.build(LATENT), pi0.build(BOTH)
  lam_model = registry.for_config(BOTH.lam).build(BOTH.lam)

  def reference(p, b, f):
    logits = latent_model.apply({"params": p}, b, method=lambda m, bb: m.latent_head(*m.encode(bb)))
    lam_key = jax.random.fold_in(rng, lp._LAM_STREAM)  # pylint: disable=protected-access
    codes = lam_model.apply({"params": p["lam"]}, b, lam_key, method="encode_latent")
    return {"logits": logits, "codes": codes["codes"], "valid": codes["valid"],
            "latent_stage": latent_model.apply({"params": p}, f, rng, method="compute_loss"),
            "both": both_model.apply({"params": p}, b, rng, method="compute_loss"),
            "plain": pi0.build(PLAIN).apply({"params": {k: p[k] for k in ("vlm", "action_expert")}}, b, rng,
                                            method="compute_loss")}

  out = _jit(reference, params, batch, free)
  np.testing.assert_array_equal(np.asarray(out["valid"]), [True, False, True])
  codes = np.asarray(out["codes"])
  assert codes.shape == (B, 3) and codes.max() < 7
  log_p = np.asarray(jax.nn.log_softmax(out["logits"], -1))
  assert log_p.shape == (B, 3, 7)
  expected = -np.mean([log_p[b, t, codes[b, t]] for b in (0, 2) for t in range(3)])
  loss, metrics = out["latent_stage"]
  np.testing.assert_allclose(float(metrics["loss/latent_codes"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(metrics["loss/action"]) == 0.0 and float(metrics["latent/valid_pairs"]) == pytest.approx(2 / 3)
  hits = np.mean([np.argmax(log_p[b, t]) == codes[b, t] for b in (0, 2) for t in range(3)])
  np.testing.assert_allclose(float(metrics["latent/code_accuracy"]), hits, rtol=1e-6)
  both_loss, both_metrics = out["both"]
  plain_loss, _ = out["plain"]
  np.testing.assert_allclose(float(both_metrics["loss/action"]), float(plain_loss), rtol=1e-6)
  np.testing.assert_allclose(float(both_metrics["loss/latent_codes"]), expected, rtol=1e-5)
  np.testing.assert_allclose(float(both_loss), 0.7 * float(plain_loss) + 1.3 * expected, rtol=1e-5)


def _grads(cfg, params, batch):
  loss = lambda p, b: pi0.build(cfg).apply({"params": p}, b, jax.random.key(1), method="compute_loss")[0]  # noqa: E731
  return _jit(jax.grad(loss), params, batch)


def test_latent_stage_gradients_reach_the_vlm_and_the_head_only(setup):
  """'latent' stage: the head and the VLM; not the expert (it does not run) nor the LAM (its codes are integers and
  stop-gradiented)."""
  params, batch = setup
  grads = _grads(LATENT, params, {k: v for k, v in batch.items() if k not in ACTION_KEYS})
  assert _norm(grads["lam"]) == 0.0 and _norm(grads["action_expert"]) == 0.0
  assert _norm(grads["latent_head"]) > 0 and _norm(grads["vlm"]) > 0


@pytest.mark.slow  # a second backward compilation of π0 + the LAM (~30 s at load 7 on the 2-core box)
def test_with_both_terms_gradients_reach_the_expert_too_never_the_lam(setup):
  params, batch = setup
  grads = _grads(BOTH, params, batch)
  assert _norm(grads["lam"]) == 0.0
  assert min(_norm(grads[k]) for k in ("latent_head", "vlm", "action_expert")) > 0


def test_the_action_stage_needs_actions_and_fields_are_checked_naming_them(setup):
  params, batch = setup
  free = {k: v for k, v in batch.items() if k not in ACTION_KEYS}
  with pytest.raises(ValueError, match=r"model\.loss\.weights\.action > 0 but the batch has no 'action'"):
    jax.eval_shape(lambda p: pi0.build(BOTH).apply({"params": p}, free, jax.random.key(1), method="compute_loss"),
                   params)
  with pytest.raises(ValueError, match=r"model\.latent_pretraining\.num_heads=5 must be >= 1 and divide the prefix "
                     r"width 48"):
    pi0.build(_tiny(latent_stage=True, num_heads=5))
  wrong_size = copy.deepcopy(LATENT)
  wrong_size.lam.image_size = 16
  with pytest.raises(ValueError, match=r"model\.lam\.image_size=16"):
    pi0.build(wrong_size)
  lara_cfg = pi0.model_config("tiny")
  lara_cfg.lara = ml_collections.ConfigDict(dict(block_from_end=0, joint=True))
  with pytest.raises(ValueError, match=r"model\.lara"):
    lp.add(lara_cfg, lam_config.model_config("tiny"))


def test_sample_actions_and_the_export_are_unchanged_by_the_head(setup, tmp_path):
  params, batch = setup
  params = jax.tree.map(np.asarray, params)
  policy = {k: v for k, v in params.items() if k not in lp.TOP_LEVEL}
  noise = {"action": np.random.RandomState(1).randn(B, PLAIN.action_horizon, PLAIN.action_dim).astype(np.float32)}

  def sample(p, pp, b):
    return [pi0.build(cfg).apply({"params": q}, b, jax.random.key(5), method="sample_actions", noise=noise)
            for cfg, q in ((BOTH, p), (PLAIN, pp))]

  with_head, plain = _jit(sample, params, policy, batch)
  np.testing.assert_array_equal(np.asarray(with_head), np.asarray(plain))
  assert np.abs(np.asarray(plain)).max() > 0.1
  inputs = {"cameras": list(PLAIN.image_keys), "camera_keys": {c: c for c in PLAIN.image_keys},
            "image_size": [PLAIN.image_size] * 2, "resize": False, "state_key": "state",
            "proprio_dim": PLAIN.proprio_dim, "state_dim": None}
  tokenizer = {"kind": "bytes", "words": "", "path": "", "max_len": PLAIN.max_token_len, "truncate": True}
  kw = dict(inputs=inputs, normalization=None, tokenizer=tokenizer, source={"test": True})
  info = export.export_params(params, BOTH, str(tmp_path / "head"), **kw)
  export.export_params(policy, PLAIN_BOTH, str(tmp_path / "plain"), **kw)
  back, model_cfg, config = export.load_export(str(tmp_path / "head"))
  assert set(back) == {"vlm", "action_expert"} and "latent_pretraining" not in config["model"]
  assert "lam" not in config["model"] and model_cfg.to_dict() == PLAIN_BOTH.to_dict()
  assert info["tensors"] == len(export.layout(PLAIN)[0])
  with open(tmp_path / "plain" / "model.safetensors", "rb") as a, open(tmp_path / "head" / "model.safetensors",
                                                                      "rb") as b:
    assert a.read() == b.read()
  for name, value in strict.flatten(back).items():
    np.testing.assert_array_equal(value, strict.flatten(params)[name])


def test_analytic_flops_count_the_head_and_the_frozen_lam():
  """A train step with the option costs latent_pretraining.train_flops more (the LAM's encode_latent + 3 x the
  head); the 'latent' stage runs no expert; sampling costs the same as the plain π0."""
  width = paligemma.config_from_dict(PLAIN.vlm).llm.width
  prefix = pi0_config.prefix_length(PLAIN)
  extra = lp.train_flops(BOTH, 1, {"latent_codes": 1.3}, prefix, width)
  assert extra > 0
  np.testing.assert_allclose(pi0.analytic_flops(BOTH, 2, "train_step"),
                             pi0.analytic_flops(PLAIN_BOTH, 2, "train_step") + 2 * extra)
  vlm = pi0.analytic_flops(PLAIN, 1, "sample_actions") - int(PLAIN.num_inference_steps) * (
      pi0.analytic_flops(PLAIN, 1, "sample_actions") - pi0.analytic_flops(_one_step(PLAIN), 1, "sample_actions"))
  np.testing.assert_allclose(pi0.analytic_flops(LATENT, 1, "train_step"), 3 * vlm + extra)
  assert pi0.analytic_flops(BOTH, 1, "sample_actions") == pi0.analytic_flops(PLAIN, 1, "sample_actions")


def _one_step(cfg):
  cfg = copy.deepcopy(cfg)
  cfg.num_inference_steps = int(cfg.num_inference_steps) - 1
  return cfg


# ------------------------------------------------------------------------------------------ configs
def _sim(variant):
  from configs import sim  # pylint: disable=g-import-not-at-top

  return sim, sim.get_config(variant)


@pytest.mark.parametrize("smoke", ["", "smoke_"])
def test_sim_variants_are_pis_on_the_labelled_split_with_the_latent_stage(smoke):
  """pi0_latent_pretraining = π0 + the option: π0's model, data, total steps and optimizer, the episodes split as
  LaMP's latent_pretraining (the same generated dataset), the 'latent' stage (only 'latent_codes'; ^lam/ and
  ^action_expert/ frozen) on the action-free episodes, then π0's 'action' stage on the labelled ones; its baseline
  pi0_small_labelled is π0's 'action' stage alone on the labelled episodes."""
  sim, pre = _sim(smoke + "pi0_latent_pretraining")
  _, base = _sim(smoke + "pi0_small_labelled")
  _, plain = _sim(smoke + "pi0")
  _, lamp_pre = _sim(smoke + "latent_pretraining")
  assert sim.ABLATION_METHODS["pi0_latent_pretraining"] == ("pi0_latent_pretraining", "smoke_pi0_latent_pretraining")
  assert sim.ABLATION_METHODS["pi0_small_labelled"] == ("pi0_small_labelled", "smoke_pi0_small_labelled")
  defaults.validate(pre)
  assert pre.model.name == "pi0" and lp.enabled(pre.model)
  assert pi0.inference_config(pre.model).to_dict() == plain.model.to_dict() == base.model.to_dict()
  assert pre.stage_order == ("latent", "action") and base.stage_order == ("action",)
  assert pre.stages.latent.steps + pre.stages.action.steps == plain.stages.action.steps
  assert pre.stages.action.steps == base.stages.action.steps
  assert pre.stages.action.optimizer.to_dict() == base.stages.action.optimizer.to_dict() == \
      plain.stages.action.optimizer.to_dict()
  latent, action = (defaults.stage_model_config(pre, s) for s in pre.stage_order)
  assert dict(latent.loss.weights) == {"action": 0.0, "latent_codes": 1.0}
  assert dict(action.loss.weights) == {"action": 1.0, "latent_codes": 0.0}
  assert action.loss.action_repeats == plain.stages.action.model_overrides.loss.action_repeats
  assert r"^lam/" in pre.stages.latent.frozen and r"^action_expert/" in pre.stages.latent.frozen
  assert r"^latent_head/" in pre.stages.action.frozen and r"^lam/" in pre.stages.action.frozen
  labelled, free = pre.data.pipeline.datasets[0], pre.stages.latent.data_overrides
  lamp_labelled = lamp_pre.data.pipeline.datasets[0]
  assert (labelled.train_split, labelled.val_split) == (lamp_labelled.train_split, lamp_labelled.val_split)
  assert labelled.to_dict() == base.data.pipeline.datasets[0].to_dict()
  assert free.hide_actions and free.datasets[0].train_split == lamp_pre.stages.latent.data_overrides.datasets[
      0].train_split
  assert pre.model.lam.to_dict() == lamp_pre.model.lam.to_dict()
  for name in pre.stage_order:  # each stage's data gives its model what it reads
    staged = defaults.stage_model_config(pre, name)
    data = copy.deepcopy(pre.data.pipeline)
    defaults.apply_overrides(data, pre.stages[name].data_overrides, name)
    assert data_config.check_requirements(data, pi0.data_requirements(staged)) == []
  if smoke:
    preflight.check_run_config(pre)
  else:
    with pytest.raises(ValueError, match="init.lam.path"):  # the trained LAM run is required
      pretrained.active_entries(pre)


# ------------------------------------------------------------------------------------------ through the trainer
@pytest.mark.slow  # two stages of the tiny π0 + LAM through the trainer (6.5 min at load 6 on the 2-core box)
def test_both_stages_train_through_the_trainer(tmp_path):
  """Stage 'latent' (action-free synthetic batches) trains the head and the VLM, not the expert nor the LAM; stage
  'action' trains the expert, leaving the LAM and the head as they were."""
  from lamp_jax.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top

  c = defaults.base_config()
  c.model = copy.deepcopy(BOTH)
  c.data.global_batch_size = 3
  c.logging.measure_roof = c.logging.progress_bar = False
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

  def run(config, workdir):
    t = trainer_lib.Trainer(config, str(workdir))
    try:
      return jax.device_get(t.initial_state(t.stage(0))), jax.device_get(t.train())
    finally:
      t.close()

  latent_only = copy.deepcopy(c)
  latent_only.stage_order = ("latent",)
  initial, after_latent = run(latent_only, tmp_path / "latent")
  _, final = run(c, tmp_path / "both")
  changed = lambda a, b, k: tree_stats.sum_abs_difference(a.params[k], b.params[k]) > 0  # noqa: E731
  jax.tree.map(np.testing.assert_array_equal, after_latent.params["lam"], initial.params["lam"])
  jax.tree.map(np.testing.assert_array_equal, after_latent.params["action_expert"], initial.params["action_expert"])
  assert changed(after_latent, initial, "latent_head") and changed(after_latent, initial, "vlm")
  jax.tree.map(np.testing.assert_array_equal, final.params["lam"], initial.params["lam"])
  jax.tree.map(np.testing.assert_array_equal, final.params["latent_head"], after_latent.params["latent_head"])
  assert changed(final, initial, "action_expert") and int(final.step) == 4
