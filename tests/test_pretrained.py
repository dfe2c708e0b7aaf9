"""config.init: parameter subtrees of a fresh, sharded train state loaded strictly from a big_vision .npz or from
another run's checkpoint."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lamp_jax.models import paligemma
from lamp_jax.models import registry
from lamp_jax.models.weights import big_vision_npz
from lamp_jax.models.weights import strict
from lamp_jax.training import pretrained
from lamp_jax.training import sharding as sharding_lib
from lamp_jax.training import state as state_lib

lamp = registry.get("lamp")


def _random_like(abstract, seed):
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda a: rs.standard_normal(a.shape).astype(np.float32), abstract)


@pytest.fixture(scope="module")
def fresh():
  """A fresh train state whose 'vlm' is the tiny LaMP's PaliGemma (random values of the model's shapes)."""
  model_cfg = lamp.model_config("tiny")
  vlm_abstract = paligemma.abstract_params(model_cfg.vlm)
  params = {"vlm": _random_like(vlm_abstract, 0), "action_expert": {"w": np.ones((3, 5), np.float32)}}
  mesh = sharding_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1)))
  replicated = NamedSharding(mesh, PartitionSpec())
  param_sh = jax.tree.map(lambda _: replicated, params)
  put = lambda tree: jax.tree.map(lambda x, s: jax.device_put(x, s), tree, param_sh)  # noqa: E731
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=put(params), opt_state=(),
                               ema_params=put(params), rng=jax.random.PRNGKey(0))
  shardings = state_lib.TrainState(step=replicated, params=param_sh, opt_state=(), ema_params=param_sh,
                                   rng=replicated)
  other = _random_like(vlm_abstract, 1)
  return model_cfg, state, shardings, other




def _config(path, **kw):
  return ml_collections.ConfigDict(dict(init=dict(vlm=pretrained.init_entry("big_vision_npz", "vlm", path, **kw))))


def test_npz_replaces_vlm_params_and_ema_only(fresh, tmp_path):
  model_cfg, state, shardings, other = fresh
  path = str(tmp_path / "pt.npz")
  big_vision_npz.save(other, path)
  new = pretrained.apply_pretrained(state, shardings, _config(path), model_cfg)
  for tree in (new.params["vlm"], new.ema_params["vlm"]):
    got, want = strict.flatten(jax.device_get(tree)), strict.flatten(other)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], np.asarray(want[k], np.float32), err_msg=k)
  before = strict.flatten(jax.device_get(state.params["vlm"]))
  assert any(not np.array_equal(before[k], want[k]) for k in want)  # the random init really was replaced
  np.testing.assert_array_equal(jax.device_get(new.params["action_expert"]["w"]), 1.0)
  flat_sh = jax.tree.leaves(shardings.params["vlm"])
  assert [x.sharding for x in jax.tree.leaves(new.params["vlm"])] == flat_sh


def test_unset_is_a_no_op_and_missing_required_path_is_named(fresh, tmp_path):
  model_cfg, state, shardings, _ = fresh
  assert pretrained.apply_pretrained(state, shardings, _config(""), model_cfg) is state
  with pytest.raises(ValueError, match=r"init\.vlm\.path must be set"):
    pretrained.apply_pretrained(state, shardings, _config(None), model_cfg)
  with pytest.raises(FileNotFoundError):
    pretrained.apply_pretrained(state, shardings, _config(str(tmp_path / "missing.npz")), model_cfg)


def test_a_file_missing_a_tensor_is_rejected(fresh, tmp_path):
  model_cfg, state, shardings, other = fresh
  flat = strict.flatten(other)
  flat.pop(sorted(flat)[0])
  path = str(tmp_path / "bad.npz")
  big_vision_npz.save(strict.unflatten(flat), path)
  with pytest.raises(strict.StrictLoadError):
    pretrained.apply_pretrained(state, shardings, _config(path), model_cfg)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """A finished 4-step toy run (its workdir and final parameters)."""
  from lamp_jax.training import trainer as trainer_lib
  from tests import toy_train_config

  workdir = str(tmp_path_factory.mktemp("source_run"))
  config = toy_train_config.get_config("")
  config.checkpoint.async_save = False
  t = trainer_lib.Trainer(config, workdir)
  try:
    final = jax.device_get(t.train())
  finally:
    t.close()
  return workdir, final


def _toy_initial_state(init: dict, variant: str = "tiny", tmp_path=None):
  from lamp_jax.training import trainer as trainer_lib
  from tests import toy_model, toy_train_config

  config = toy_train_config.get_config("")
  config.model = toy_model.model_config(variant)
  config.init = ml_collections.ConfigDict(init)
  t = trainer_lib.Trainer(config, str(tmp_path))
  try:
    return jax.device_get(t.initial_state(t.stage(0)))
  finally:
    t.close()


def test_checkpoint_subtrees_load_into_named_targets(toy_run, tmp_path):
  workdir, source = toy_run
  state = _toy_initial_state(dict(
      motion=pretrained.init_entry("checkpoint", "motion_in", workdir),
      renamed=pretrained.init_entry("checkpoint", "action_in", workdir, source="action_in", ema=True)), tmp_path=tmp_path)
  fresh = _toy_initial_state({}, tmp_path=tmp_path / "fresh")
  for tree in (state.params, state.ema_params):
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(tree["motion_in"]["dense"][name], source.params["motion_in"]["dense"][name])
  np.testing.assert_array_equal(state.params["action_in"]["dense"]["kernel"],
                                source.ema_params["action_in"]["dense"]["kernel"])
  # Everything else keeps its random initialisation.
  np.testing.assert_array_equal(state.params["motion_out"]["dense"]["kernel"],
                                fresh.params["motion_out"]["dense"]["kernel"])
  assert not np.array_equal(fresh.params["motion_in"]["dense"]["kernel"], source.params["motion_in"]["dense"]["kernel"])


def test_keep_init_and_strict_errors_name_every_path(toy_run, tmp_path):
  workdir, source = toy_run
  state = _toy_initial_state(dict(all=pretrained.init_entry("checkpoint", "", workdir, keep_init=(r"^action_",))),
                             tmp_path=tmp_path / "a")
  fresh = _toy_initial_state({}, tmp_path=tmp_path / "b")
  np.testing.assert_array_equal(state.params["motion_mlp"]["dense"]["kernel"],
                                source.params["motion_mlp"]["dense"]["kernel"])
  np.testing.assert_array_equal(state.params["action_mlp"]["dense"]["kernel"],
                                fresh.params["action_mlp"]["dense"]["kernel"])
  # A wider model: every mis-shaped tensor of the subtree is named.
  with pytest.raises(strict.StrictLoadError, match=r"motion_in.*\n?.*(kernel|bias)") as err:
    _toy_initial_state(dict(m=pretrained.init_entry("checkpoint", "motion_in", workdir)), "sim", tmp_path / "c")
  assert len(err.value.mismatched) == 2 and "init.m" in str(err.value)
  # A subtree the other run does not have.
  with pytest.raises(ValueError, match=r"init\.m\.source.*no subtree 'lam'"):
    _toy_initial_state(dict(m=pretrained.init_entry("checkpoint", "motion_in", workdir, source="lam")),
                       tmp_path=tmp_path / "d")
  # Source and target subtrees with different parameter names.
  with pytest.raises(strict.StrictLoadError, match="missing"):
    _toy_initial_state(dict(m=pretrained.init_entry("checkpoint", "motion_in", workdir, source="action_norm")),
                       tmp_path=tmp_path / "e")
