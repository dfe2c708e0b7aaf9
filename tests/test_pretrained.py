"""config.init.paligemma_npz: a big_vision .npz replaces the VLM of a fresh, sharded train state (strictly)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lamp_jax.models import lamp
from lamp_jax.models import paligemma
from lamp_jax.models.weights import big_vision_npz
from lamp_jax.models.weights import strict
from lamp_jax.training import pretrained
from lamp_jax.training import sharding as sharding_lib
from lamp_jax.training import state as state_lib


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


def _config(path):
  return ml_collections.ConfigDict(dict(init=dict(paligemma_npz=path)))


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
  with pytest.raises(ValueError, match="init.paligemma_npz"):
    pretrained.apply_pretrained(state, shardings, ml_collections.ConfigDict(dict(
        init=dict(paligemma_npz=ml_collections.config_dict.placeholder(str)))), model_cfg)
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
