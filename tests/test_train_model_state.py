"""Models with state collections through the one trainer (configs/lam.py:smoke, the 'lam' library): the state
is carried, checkpointed and resumed bit for bit, ``after_update`` runs in the step and leaves frozen parameters
alone, its metrics are logged; a frozen SigLIP tower loads from a PaliGemma .npz through ``config.init``."""

import json
import os
import tempfile

import jax
import ml_collections
import numpy as np
import pytest

from configs import lam as lam_configs
from lamp_jax.models import registry
from lamp_jax.models import vq as vq_lib
from lamp_jax.training import defaults
from lamp_jax.training import pretrained
from lamp_jax.training import trainer as trainer_lib


def _config(**stage):
  c = lam_configs.get_config("smoke")
  c.compilation_cache_dir = os.path.join(tempfile.gettempdir(), "lamp_jax_tests_xla_cache")
  c.checkpoint.async_save = False
  c.checkpoint.every_steps = 2
  c.logging.tensorboard = False
  c.stages.main.steps = 4
  for key, value in stage.items():
    c.stages.main[key] = value
  return c


def _run(config, workdir, until=None):
  t = trainer_lib.Trainer(config, str(workdir))
  try:
    return jax.device_get(t.train(until_step=until))
  finally:
    t.close()


def _assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_state_is_carried_logged_and_resumed_bit_exactly(tmp_path):
  config = _config()
  straight = _run(config, tmp_path / "straight")
  k = int(config.model.vq.num_codes)
  state = straight.model_state[vq_lib.STATE]["vq"]
  # The first step initialised every code from data (K replacements), and usage statistics moved.
  assert int(state["restarts"]) >= k and bool(state["codebook_ready"]) and bool(state["recent_filled"])
  assert not np.allclose(state["usage"], 1.0 / k)
  lines = [json.loads(x) for x in open(tmp_path / "straight" / "metrics.jsonl")]
  assert lines[0]["vq/restarted_codes"] == k and "vq/perplexity" in lines[0] and "vq/collapse_events" in lines[-1]
  first = _run(config, tmp_path / "resumed", until=2)
  assert int(first.step) == 2
  resumed = _run(config, tmp_path / "resumed")
  assert int(resumed.step) == int(straight.step) == 4
  _assert_trees_equal(straight.params, resumed.params)
  _assert_trees_equal(straight.model_state, resumed.model_state)
  _assert_trees_equal(straight.opt_state, resumed.opt_state)


def test_after_update_leaves_frozen_parameters_alone(tmp_path):
  config = _config(frozen=(r"^vq/",), steps=2)
  t = trainer_lib.Trainer(config, str(tmp_path / "run"))
  try:
    initial = jax.device_get(t.initial_state(t.stage(0)))
    final = jax.device_get(t.train())
  finally:
    t.close()
  np.testing.assert_array_equal(initial.params["vq"]["codebook"], final.params["vq"]["codebook"])
  assert not np.array_equal(initial.params["fdm"]["output_proj"]["dense"]["kernel"],
                            final.params["fdm"]["output_proj"]["dense"]["kernel"])
  assert int(final.model_state[vq_lib.STATE]["vq"]["restarts"]) > 0  # the state moved, the codebook did not


def test_init_entry_loads_a_paligemma_tower_into_the_image_encoder(tmp_path):
  from lamp_jax.models import paligemma
  from lamp_jax.models.weights import big_vision_npz, strict

  lib = registry.get("lam")
  model_cfg = lib.model_config("tiny")
  model_cfg.idm_input = model_cfg.target = "features"
  model_cfg.image_size = 24
  rs = np.random.RandomState(0)
  vlm_params = jax.tree.map(lambda x: rs.normal(size=x.shape).astype(np.float32),
                            paligemma.abstract_params(paligemma.default_config_dict("tiny")))
  big_vision_npz.save(vlm_params, tmp_path / "pg.npz")
  entry = pretrained.init_entry("big_vision_npz", "image_encoder", str(tmp_path / "pg.npz"))
  tree = pretrained.load_entry(entry, "init.image_encoder", model_cfg)
  expected = strict.flatten(lib.abstract_params(model_cfg)["image_encoder"])
  loaded = strict.flatten(tree)
  assert set(loaded) == set(expected)
  np.testing.assert_array_equal(loaded["Transformer/encoder_norm/scale"],
                                vlm_params["img"]["Transformer"]["encoder_norm"]["scale"])


def test_lam_configs_validate_and_match_their_data():
  for variant in lam_configs.VARIANTS:
    c = lam_configs.get_config(variant)
    if c.get("init", None) is not None:  # the required tower path is the one field left to the user
      with pytest.raises(ValueError, match="init.image_encoder.path must be set"):
        pretrained.active_entries(c)
      c.init.image_encoder.path = "/tmp/pg.npz"
    defaults.validate(c)
    m = c.model
    frozen = tuple(c.stages.main.frozen)
    assert frozen == ((r"^image_encoder/",) if "image_encoder" in registry.get("lam").abstract_params(m) else ())
    if variant in lam_configs.SIM_VIEWS or variant in lam_configs.BRIDGE_VIEWS:
      assert tuple(c.data.pipeline.cameras) == tuple(m.views) and not c.data.pipeline.augment
      assert (float(m.loss.weights.cross_view) > 0) == ("mvp" in variant and "no_cross" not in variant)
  with pytest.raises(ValueError, match="unknown variant 'nope' of configs/lam.py"):
    lam_configs.get_config("nope")
