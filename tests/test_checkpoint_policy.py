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
  obs = {"state": rs.normal(size=(specs.SIM_STATE_DIM,)).astype(np.float32),
         "image_0": np.zeros((8, 8, 3), np.uint8)}
  with pytest.raises(RuntimeError, match="reset"):
    ema_policy(obs)
  ema_policy.reset("stack the red block on the blue block")
  actions = ema_policy(obs)
  cfg = config.model
  assert actions.shape == (cfg.action_horizon, specs.ACTION_DIM) and actions.dtype == np.float32
  assert ema_policy.action_horizon == cfg.action_horizon
  # The toy policy reads the proprio (no normalisation statistics for synthetic data): the state truncated to
  # proprio_dim; the window of 2 starts padded with a copy of the first frame.
  assert ema_policy.window == cfg.window == 2
  proprio = np.stack([obs["state"][:cfg.proprio_dim]] * 2)[None]
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
