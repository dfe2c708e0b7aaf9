"""Grounding stage 0: labelled renders (sim/grounding.py), the heatmap loss and its training (training/grounding.py),
and the 'params_npz' init entry that hands the encoder to the policy run."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lamp_jax.models import film_cnn
from lamp_jax.sim import grounding as grounding_data
from lamp_jax.sim import tasks
from lamp_jax.training import grounding


@pytest.fixture(scope="module")
def scenes():
  return grounding_data.render_scenes(9, 32, ("front", "wrist"), progress=False)


def test_front_labels_land_on_the_named_objects(scenes):
  """In the front camera (the hand never hides the whole object there) the pixel at each valid label shows the
  role's colour: the named object's for 'object', the named plate / bottom cube's for 'receptacle'; the drawer's
  handle is dark. Labels are invalid exactly where the family has no such role."""
  size = scenes["images"].shape[2]
  families = tasks.suite_families("tabletop4")
  checked = 0
  for i in range(len(scenes["images"])):
    family = families[scenes["family"][i]]
    task = tasks.sample_task(family, grounding_data.GROUNDING_SEED_OFFSET + i)
    assert scenes["instructions"][i] == task.instruction
    if family in ("push", "drawer"):
      assert not scenes["valid"][i, :, 1].any()
    for k, role in enumerate(grounding_data.ROLES):
      if not scenes["valid"][i, 0, k] or family == "drawer":
        continue
      name = task.params["object" if role == "object" else "receptacle"]
      col, row = np.clip((scenes["uv"][i, 0, k] * size).astype(int), 0, size - 1)
      patch = scenes["images"][i, 0, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].reshape(-1, 3) / 255.0
      distance = np.abs(patch - np.asarray(task.colors[name][:3])).sum(-1).min()
      assert distance < 0.35, (task.instruction, role, distance)
      checked += 1
  assert checked >= 6
  assert scenes["valid"][:, 0, 0].all()  # the object is always in the front view


def test_heatmap_targets_expect_the_label_exactly():
  """Bilinear soft labels sum to one, put all weight on one cell at a cell centre, and their expected position is
  the label itself (inside the outermost cell centres); outside, it is clamped to the outermost centre."""
  side = 7
  uv = jnp.asarray([[0.31, 0.77], [(2 + 0.5) / side, (4 + 0.5) / side], [0.5, 0.5], [0.02, 0.99]])
  targets = grounding.heatmap_targets(uv, side)
  assert targets.shape == (4, side * side)
  np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
  assert float(targets[1, 4 * side + 2]) == pytest.approx(1.0)
  expected = grounding.expected_uv(jnp.log(jnp.maximum(targets, 1e-30)))
  np.testing.assert_allclose(expected[:3], uv[:3], atol=1e-5)
  np.testing.assert_allclose(expected[3], [0.5 / side, (side - 0.5) / side], atol=1e-5)


def test_heatmap_loss_ignores_invalid_labels_and_is_minimal_at_the_target():
  side = 5
  rs = np.random.RandomState(0)
  uv = jnp.asarray(rs.uniform(0, 1, (3, 2, 2, 2)), jnp.float32)
  valid = jnp.asarray(rs.rand(3, 2, 2) > 0.4)
  logits = jnp.asarray(rs.normal(size=(3, 2, 2, side * side)), jnp.float32)
  loss = grounding.heatmap_loss(logits, uv, valid)
  moved = jnp.where(valid[..., None], uv, 0.123)
  np.testing.assert_allclose(grounding.heatmap_loss(logits, moved, valid), loss, rtol=1e-6)
  # The cross-entropy of soft labels is smallest for logits = log(targets): then it is their entropy.
  perfect = jnp.log(jnp.maximum(grounding.heatmap_targets(uv, side), 1e-12))
  assert float(grounding.heatmap_loss(perfect, uv, valid)) < float(loss)


@pytest.mark.slow  # ~120 s at load 7 on the 2-core box
def test_stage0_learns_and_its_encoder_loads_into_the_policy(scenes, tmp_path):
  """A few steps on the rendered scenes lower the training loss; the saved encoder loads strictly into LaMP's
  'vlm' subtree through a 'params_npz' init entry, value for value."""
  from lamp_jax import tokenizer as tokenizer_lib
  from lamp_jax.models import lamp_config, registry
  from lamp_jax.models.weights import strict
  from lamp_jax.training import pretrained

  model_cfg = lamp_config.model_config("tiny")
  model_cfg.vlm.update(dict(kind="film_cnn", vocab_size=40, image_size=32))
  model_cfg.vlm.film_cnn.update(dict(width=15, channels=(5, 7), kernels=(4, 3), strides=(4, 2), text_width=9,
                                     cond_width=11, keypoints=3))
  model_cfg.max_token_len = 12  # the longest instruction: 10 words + bos + separator
  model_cfg.motion.cond_len = lamp_config.prefix_length(model_cfg)
  data = dict(scenes, cameras=("front", "wrist"), roles=grounding_data.ROLES)
  words = tokenizer_lib.WordTokenizer(tasks.INSTRUCTION_WORDS)
  data["tokens"], data["token_mask"] = tokenizer_lib.tokenize_prompts(
      words, [str(t) for t in data["instructions"]], int(model_cfg.max_token_len))
  encoder_cfg = film_cnn.config_from_dict(model_cfg.vlm, int(model_cfg.max_token_len), 2)
  g = ml_collections.ConfigDict(dict(heldout=3, steps=12, batch_size=4, lr=3e-3, weight_decay=0.0, eval_every=6))
  params, result = grounding.train_encoder(data, encoder_cfg, g, seed=0, log=lambda _: None)
  assert [c["step"] for c in result["curve"]] == [6, 12]
  assert set(result["heldout"]) <= {f"{c}/{r}" for c in ("front", "wrist") for r in grounding_data.ROLES}
  assert result["curve"][-1]["train_loss"] < np.log(encoder_cfg.stage_size(encoder_cfg.keypoint_stage) ** 2)

  path = os.path.join(tmp_path, "encoder.npz")
  np.savez(path, **{k: np.asarray(v) for k, v in strict.flatten(params).items()})
  lamp = registry.get("lamp")
  entry = pretrained.init_entry("params_npz", "vlm", path)
  loaded = pretrained.load_entry(entry, "init.grounding", model_cfg)
  abstract = lamp.abstract_params(model_cfg)["vlm"]
  assert jax.tree.structure(loaded) == jax.tree.structure(abstract)
  for (name, value), (_, like) in zip(sorted(strict.flatten(loaded).items()), sorted(strict.flatten(abstract).items())):
    assert value.shape == like.shape, name
  np.testing.assert_array_equal(loaded["conv_0"]["kernel"], params["conv_0"]["kernel"])


def test_grounding_drift_compares_a_policy_encoder_with_stage_0(tmp_path, monkeypatch):
  """eval/grounding_drift.py: the stage-0 encoder against itself drifts by exactly 0 px; an encoder whose keypoint
  logits are zeroed (a uniform heatmap: every keypoint at the image centre) is scored on the same held-out scenes
  and drifts; without a stage-0 file only the checkpoint is scored. The bug it guards: the check the closing notes
  ran as an ad-hoc script (the policy stages moved the keypoints 2.2 -> 42 px) now runs after every grounded run."""
  from configs import sim
  from lamp_jax.eval import grounding_drift
  from lamp_jax.models.weights import strict
  from lamp_jax.training import defaults

  monkeypatch.setenv("LAMP_JAX_CACHE", str(tmp_path))
  config = sim.get_config("smoke_film_cnn")
  config.grounding.update(dict(scenes=11, heldout=5, steps=3, batch_size=3, eval_every=3))
  config.logging.progress_bar = False
  model_cfg = defaults.stage_model_config(config, config.stage_order[0])
  data, encoder_cfg, heldout = grounding.heldout_scenes(config, model_cfg, grounding_drift._load_scenes,
                                                        grounding_data.ROLES)
  assert list(heldout) == [6, 7, 8, 9, 10]
  params, _ = grounding.train_encoder(data, encoder_cfg, config.grounding, seed=0, log=lambda _: None)
  path = str(tmp_path / grounding.PARAMS_FILE)
  np.savez(path, **{k: np.asarray(v) for k, v in strict.flatten(params).items()})

  same = grounding_drift.drift(config, grounding.load_params(path), path)
  assert same["heldout_scenes"] == 5 and same["checkpoint"] == same["stage0"]
  assert same["rmse_change_px"] and set(same["rmse_change_px"].values()) == {0.0}

  moved = jax.tree.map(np.array, params)
  moved["keypoint_logits"]["kernel"][:] = 0.0
  moved["keypoint_logits"]["bias"][:] = 0.0
  drifted = grounding_drift.drift(config, moved, path)
  assert drifted["stage0"] == same["stage0"]
  assert any(abs(v) > 0.1 for v in drifted["rmse_change_px"].values()), drifted["rmse_change_px"]
  alone = grounding_drift.drift(config, moved, None)
  assert alone["stage0"] is None and alone["checkpoint"] == drifted["checkpoint"]

  # The run's own check after training (experiment.check_grounding_drift): the state's EMA 'vlm' when it has one.
  from types import SimpleNamespace
  from lamp_jax import experiment
  workdir = tmp_path / "run"
  (workdir / "grounding").mkdir(parents=True)
  os.replace(path, grounding_drift.stage0_file(str(workdir)))
  state = SimpleNamespace(params={"vlm": params}, ema_params={"vlm": moved}, step=np.int32(7))
  written = experiment.check_grounding_drift(SimpleNamespace(config=config), state, str(workdir))
  with open(workdir / "grounding" / grounding_drift.AFTER_POLICY_FILE) as fh:
    assert json.load(fh) == written
  assert written["step"] == 7 and written["params"] == "ema_params"
  assert written["checkpoint"] == drifted["checkpoint"] and written["stage0"] == same["stage0"]


@pytest.mark.parametrize("variant", ["film_cnn_trunk"])
def test_the_frozen_trunk_is_exactly_what_stage_0_trains(variant):
  """film_cnn.keypoint_trunk_pattern (frozen by the ':film_cnn_trunk' variants) must cover every encoder parameter
  that the stage-0 loss reaches, and nothing else: then the keypoints stay where stage 0 put them, and every
  parameter stage 0 never trains (the last conv stage, the token projections) learns with the policy. Gradients of
  stage 0's role logits with respect to random (nowhere-zero) encoder parameters tell which is which. (A first
  pattern that froze every conv stage failed here: the keypoints read the stage before the last.)"""
  import re

  from configs import sim
  from lamp_jax.training import defaults

  config = sim.get_config(variant)
  model_cfg = defaults.stage_model_config(config, config.stage_order[-1])
  encoder_cfg = film_cnn.config_from_dict(model_cfg.vlm, int(model_cfg.max_token_len), len(model_cfg.image_keys))
  module = film_cnn.FiLMCNNEncoder(encoder_cfg)
  pattern = film_cnn.keypoint_trunk_pattern(encoder_cfg)
  rng = np.random.default_rng(0)
  size = int(model_cfg.image_size)
  images = jnp.asarray(rng.uniform(-1, 1, (2, len(model_cfg.image_keys), size, size, 3)), jnp.float32)
  image_mask = jnp.ones(images.shape[:2], bool)
  tokens = jnp.asarray(rng.integers(1, 20, (2, int(model_cfg.max_token_len))), jnp.int32)
  token_mask = jnp.ones(tokens.shape, bool)
  # Shapes only (eval_shape compiles nothing), then ONE jitted program for the gradients' largest magnitudes: op-by-op
  # evaluation of the init and the backward pass compiled each op alone (56 s of the suite's time on a cold cache).
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), images, image_mask, tokens, token_mask))["params"]
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.2, x.shape), x.dtype), shapes)
  logits_fn = grounding.role_logits_fn(module, len(grounding_data.ROLES))
  logits_shape = jax.eval_shape(logits_fn, params, images, image_mask, tokens, token_mask).shape
  weights = jnp.asarray(rng.normal(size=logits_shape))
  grad_fn = jax.grad(lambda p: jnp.sum(weights * logits_fn(p, images, image_mask, tokens, token_mask)))
  largest = jax.jit(lambda p: jax.tree.map(lambda g: jnp.max(jnp.abs(g)), grad_fn(p)))(params)
  reached, frozen = set(), set()
  for path, g in jax.tree_util.tree_flatten_with_path(largest)[0]:
    name = "vlm/" + "/".join(str(getattr(k, "key", k)) for k in path)
    if float(g) > 0:
      reached.add(name)
    if re.search(pattern, name):
      frozen.add(name)
  assert reached == frozen, (sorted(reached - frozen), sorted(frozen - reached))
  assert "vlm/grid_proj/dense/kernel" not in frozen and "vlm/conv_0/kernel" in frozen
  for name in config.stage_order:  # the variant freezes the trunk, not the whole encoder, in every policy stage
    assert pattern in config.stages[name].frozen and "^vlm/" not in config.stages[name].frozen
