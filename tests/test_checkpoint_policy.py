"""CheckpointPolicy: loads the right parameters from a training checkpoint and acts like the model."""

import jax
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.eval.checkpoint_policy import CheckpointPolicy
from lamp_jax.training import trainer as trainer_lib
from tests import toy_model
from tests import toy_train_config


def test_checkpoint_policy_matches_model_and_picks_ema(tmp_path):
  config = toy_train_config.get_config("")
  t = trainer_lib.Trainer(config, str(tmp_path))
  state = jax.device_get(t.train(until_step=2))
  t.close()

  ema_policy = CheckpointPolicy(str(tmp_path))  # The workdir is accepted as well as workdir/checkpoints.
  raw_policy = CheckpointPolicy(str(tmp_path / "checkpoints"), use_ema=False)
  assert ema_policy.step == 2 and ema_policy.params_key == "ema_params" and raw_policy.params_key == "params"
  for got, want in zip(jax.tree.leaves(ema_policy.params), jax.tree.leaves(state.ema_params)):
    np.testing.assert_array_equal(np.asarray(got), want)
  for got, want in zip(jax.tree.leaves(raw_policy.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(got), want)

  rs = np.random.default_rng(0)
  cfg = config.model
  # The toy model reads no camera and a proprio of model.proprio_dim; keys it does not read are ignored.
  obs = {"state": rs.normal(size=(cfg.proprio_dim,)).astype(np.float32), "image_0": np.zeros((8, 8, 3), np.uint8)}
  with pytest.raises(RuntimeError, match="reset"):
    ema_policy(obs)
  ema_policy.reset("stack the red block on the blue block")
  actions = ema_policy(obs)
  assert actions.shape == (cfg.action_horizon, specs.ACTION_DIM) and actions.dtype == np.float32
  assert ema_policy.action_horizon == cfg.action_horizon
  # The toy policy reads the proprio (no normalisation statistics for synthetic data); the window of 2 starts
  # padded with a copy of the first frame.
  assert ema_policy.window == cfg.window == 2
  proprio = np.stack([obs["state"]] * 2)[None]
  batch = {specs.OBSERVATION: {specs.PROPRIO: proprio}}
  want = toy_model.LIBRARY.build(cfg).apply({"params": state.ema_params}, batch, jax.random.PRNGKey(0),
                                    method="sample_actions")[0]
  np.testing.assert_allclose(actions, np.asarray(want), rtol=1e-6, atol=1e-6)
  raw_policy.reset("stack the red block on the blue block")
  assert not np.allclose(raw_policy(obs), actions)  # EMA and raw parameters differ after 2 steps.


def test_checkpoint_policy_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    CheckpointPolicy(str(tmp_path / "nothing_here"))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    CheckpointPolicy(str(tmp_path))


def test_checkpoint_policy_validates_observations_against_its_model(tmp_path):
  """The toy run has no data pipeline: the model reads proprio float32[5] and no camera."""
  from lamp_jax.serving import client as client_lib
  from lamp_jax.serving import server as server_lib

  t = trainer_lib.Trainer(toy_train_config.get_config(""), str(tmp_path))
  t.train(until_step=2)
  t.close()
  policy = CheckpointPolicy(str(tmp_path))
  assert {k: v.to_json() for k, v in policy.observation_spec().items()} == {
      "state": {"dtype": "float32", "shape": [5], "required": True, "finite": True}}
  good = {"state": np.linspace(-1, 1, 5).astype(np.float32)}
  policy.reset("push the cube")
  reference = policy(good)
  for obs, error in [({"state": np.zeros(8, np.float32)}, r"observation\['state'\] has shape \[8\], expected \[5\]"),
                     ({"state": np.array([0, 1, np.nan, 0, 0], np.float32)}, "1 non-finite values"),
                     ({"image_0": np.zeros((8, 8, 3), np.uint8)}, r"missing observation keys \['state'\]")]:
    with pytest.raises(ValueError, match=error):
      policy(obs)
  # A failed reset leaves no instruction behind; a good one serves again.
  with pytest.raises(ValueError, match="not valid UTF-8"):
    policy.reset("push the \udcff cube")  # a lone surrogate: no UTF-8 encoding
  with pytest.raises(RuntimeError, match="must be called"):
    policy(good)
  policy.reset("push the cube")
  np.testing.assert_array_equal(policy(good), reference)  # window of 2: same frames -> same chunk
  # Served: the server checks requests against the same spec.
  with server_lib.PolicyServer(policy, host="127.0.0.1", port=0) as server:
    with client_lib.PolicyClient("127.0.0.1", server.port) as client:
      client.reset("push the cube")
      with pytest.raises(client_lib.PolicyServerError, match=r"observation\['state'\] has shape \[8\], expected \[5\]"):
        client.infer({"state": np.zeros(8, np.float32)})
      with pytest.raises(client_lib.PolicyServerError, match=r"unknown observation keys \['image_0'\]"):
        client.infer({"state": good["state"], "image_0": np.zeros((8, 8, 3), np.uint8)})
      assert client.infer(good).shape == (toy_train_config.get_config("").model.action_horizon, 7)
