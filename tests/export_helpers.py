"""Helpers of the export / PyTorch tests: random LaMP parameters, run configs and checkpoints written directly
(no training), statistics and raw simulator observations."""

from __future__ import annotations

import functools
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
import torch

from lamp_jax import export
from lamp_jax import specs
from lamp_jax.data import normalization
from lamp_jax.eval import checkpoint_policy
from lamp_jax.models import registry
from lamp_jax.training import checkpoints as ckpt_lib
from lamp_jax.training import defaults
from lamp_jax.training import trainer as trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA CPU compilation dominates the JAX side of these tests; the unoptimised backend compiles several times
# faster with the same semantics (tests/test_lamp.py does the same).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
  """One torch intra-op thread for a test module (restored after): on the shared 2-core host torch's OpenMP pool
  is 10-100x slower than one thread under load (``bench --what=torch_export``). Import it into a test module."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def sim_config(variant: str = ""):
  """configs/sim.py's run config of ``variant``."""
  spec = importlib.util.spec_from_file_location("sim_config", os.path.join(REPO, "configs", "sim.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


@functools.lru_cache(maxsize=16)
def _abstract_params(model_json: str):
  model_cfg = export.model_config_from_json(json.loads(model_json))
  return registry.for_config(model_cfg).abstract_params(model_cfg)


def random_params(model_cfg, seed: int = 0, scale: float = 0.15):
  """Random parameters (numpy, the abstract tree's dtypes) from the abstract tree: no init compilation. The whole
  training tree (training-only parts such as LAFP's frozen LAM included: what a checkpoint holds)."""
  abstract = _abstract_params(model_cfg.to_json_best_effort(sort_keys=True))  # cached per config
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda s: np.asarray(rs.normal(0.0, scale, s.shape), s.dtype), abstract)


def statistics_json(dataset: str, seed: int = 0) -> dict:
  """DatasetStatistics JSON of ``dataset`` with random, well-conditioned action / proprio statistics."""
  rs = np.random.RandomState(seed)
  action = rs.normal(size=(500, specs.ACTION_DIM)) * rs.uniform(0.1, 2.0, specs.ACTION_DIM) + rs.normal(
      size=specs.ACTION_DIM)
  proprio = rs.normal(size=(500, specs.SIM_STATE_DIM)) * rs.uniform(0.1, 2.0, specs.SIM_STATE_DIM)
  stats = normalization.DatasetStatistics(
      dataset=dataset, hash="test", action=normalization.ArrayStats.of(action),
      proprio=normalization.ArrayStats.of(proprio), num_transitions=500, num_trajectories=5)
  return json.loads(stats.to_json())


def write_checkpoint(workdir, config, params, *, ema_params=None, norm_stats=None, step: int = 3) -> str:
  """A checkpoint as the trainer writes it (state / meta / config / norm_stats) holding ``params``."""
  directory = ckpt_lib.checkpoint_dir(str(workdir))
  checkpointer = ckpt_lib.Checkpointer(directory, async_save=False)
  state = {"step": np.int32(step), "params": params,
           "ema_params": params if ema_params is None else ema_params}
  stage = config.stage_order[-1]
  checkpointer.save(step, state, {"step": step, "stage_index": len(config.stage_order) - 1, "stage_name": stage},
                    ckpt_lib.config_to_json(config), norm_stats or {})
  checkpointer.wait()
  checkpointer.close()
  return directory


def sim_checkpoint(workdir, variant: str = "smoke", seed: int = 0, ema_decay: float = 0.999):
  """A configs/sim.py run (``variant``) checkpointed with random parameters and statistics.

  Returns (run config, stage model config, params, ema params)."""
  config = sim_config(variant)
  config.ema.decay = ema_decay
  model_cfg = defaults.stage_model_config(config, config.stage_order[-1])
  params = random_params(model_cfg, seed)
  ema = random_params(model_cfg, seed + 1)
  name = config.data.pipeline.datasets[0].name
  write_checkpoint(workdir, config, params, ema_params=ema, norm_stats={name: statistics_json(name, seed)})
  return config, model_cfg, params, ema


def raw_observation(rng: np.random.Generator, size=(48, 40)) -> dict:
  """A simulator observation: image_0 (front) and image_2 (wrist) uint8[h, w, 3], state float32[8]."""
  return {"image_0": rng.integers(0, 256, size + (3,), dtype=np.uint8),
          "image_2": rng.integers(0, 256, size + (3,), dtype=np.uint8),
          "state": rng.normal(size=specs.SIM_STATE_DIM).astype(np.float32)}


class FixedNoiseCheckpointPolicy(checkpoint_policy.CheckpointPolicy):
  """The JAX checkpoint policy with ``noise`` injected into ``sample_actions`` (same preprocessing and
  un-normalisation; compiled once with the fast backend). Set ``policy.noise`` before the first call."""

  noise: dict
  _compiled = None

  def __call__(self, observation):
    batch = self.observation_batch(observation)
    if self._compiled is None:
      fn = lambda p, b, n: self.model.apply({"params": p}, b, jax.random.key(0), noise=n,  # noqa: E731
                                            method="sample_actions")
      self._compiled = jax.jit(fn).lower(self.params, batch, self.noise).compile(FAST_COMPILE)
    actions = np.asarray(self._compiled(self.params, batch, self.noise), np.float32)[0]
    return np.asarray(self.preprocessor.unnormalize_actions(actions)[:, :specs.ACTION_DIM], np.float32)
