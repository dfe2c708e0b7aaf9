"""A trained checkpoint behind the evaluator's policy interface (see ``lamp_jax/eval/policies.py``).

  policy = CheckpointPolicy("/tmp/run/checkpoints")      # latest step; EMA parameters when the run has them
  policy.reset("put the red cube on the plate")
  actions = policy(observation)                           # float32[H, 7], un-normalised env actions

Everything needed is read from the checkpoint: the run config (model library + model config, data config,
tokenizer), the normalisation statistics and the parameters. One observation of the simulator (``image_<k>``
uint8[h, w, 3] per camera, ``state`` float32[8]) becomes a one-example batch exactly as the data pipeline
builds training batches (``lamp_jax.data.inference.ObservationPreprocessor``: camera mapping of the dataset's
standardisation, bilinear resize, proprio normalisation with the dataset's mask, observation window with pad
mask); the model's ``sample_actions``
(jitted once) gives a normalised chunk that is un-normalised with the same statistics.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.training import checkpoints as ckpt_lib
from lamp_jax.training import defaults
from lamp_jax.training import trainer as trainer_lib


class CheckpointReadError(ValueError):
  """The parameters of a checkpoint step cannot be read (a truncated, corrupt or incomplete checkpoint)."""

  def __init__(self, directory: str, step: int, key: str, cause: Exception):
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    first_line = first_line.split(" See full TensorStore details")[0]
    arrays = sorted(set(re.findall(r"'path': '([^']+?)/?'", str(cause))) - {""})
    arrays = [a.replace(".", "/") for a in arrays if a.startswith(key)]
    where = f" (array {', '.join(arrays)})" if arrays else ""
    super().__init__(f"checkpoint {directory} step {step}: cannot read {key!r}{where}: {first_line[:300]} -- the "
                     "checkpoint is truncated, corrupt or was not written completely")


class CheckpointPolicy:
  """Policy from a training checkpoint directory (``<workdir>/checkpoints`` or the workdir itself).

  Args:
    checkpoint_dir: the run's checkpoint directory (or its workdir).
    step: checkpoint step (default: latest).
    use_ema: use the EMA parameters when the checkpoint has them (default True).
    seed: seed of the sampling noise (the noise key advances at every call).
    stage: which stage's model config to use (default: the run's last stage).
  """

  def __init__(self, checkpoint_dir: str, step: int | None = None, use_ema: bool = True, seed: int = 0,
               stage: str | None = None):
    directory = os.path.abspath(checkpoint_dir)
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if os.path.isdir(os.path.join(directory, "checkpoints")):
      directory = os.path.join(directory, "checkpoints")
    checkpointer = ckpt_lib.Checkpointer(directory, read_only=True, async_save=False)
    try:
      step = checkpointer.latest_step() if step is None else int(step)
      if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
      meta, config_json, norm_json = checkpointer.restore_json(step)
      config = ckpt_lib.config_from_json(config_json)
      model_cfg, lib = self._model_config(config, stage)
      abstract = self._abstract_params(lib, config, model_cfg)
      has_ema = float(config.ema.decay) > 0
      key = "ema_params" if (use_ema and has_ema) else "params"
      try:
        params = checkpointer.restore_params(step, abstract, key=key)
      except Exception as e:  # orbax / TensorStore raise bare Exceptions with pages of store specs
        raise CheckpointReadError(directory, step, key, e) from e
    finally:
      checkpointer.close()
    self._setup(config, model_cfg, lib, params, norm_json, seed)
    self.step = step
    self.params_key = key
    self.checkpoint_dir = directory

  @classmethod
  def from_params(cls, config: ml_collections.ConfigDict, params: Any, norm_stats_json: dict, seed: int = 0,
                  stage: str | None = None) -> "CheckpointPolicy":
    """A policy over in-memory parameters (the trainer's periodic evaluation)."""
    self = cls.__new__(cls)
    model_cfg, lib = cls._model_config(config, stage)
    self._setup(config, model_cfg, lib, params, norm_stats_json, seed)
    self.step = None
    self.params_key = "params"
    self.checkpoint_dir = None
    return self

  # -- construction --------------------------------------------------------------------------------------

  @staticmethod
  def _model_config(config: ml_collections.ConfigDict, stage: str | None):
    lib = defaults.model_library(config)
    if "sample_actions" not in lib.methods:
      raise ValueError(f"config field model.name={lib.name!r}: this model has no sample_actions (not a policy)")
    stage = stage or config.stage_order[-1]
    if stage not in config.stages:
      raise ValueError(f"stage {stage!r} is not in the checkpoint's config (stages: {list(config.stages)})")
    return defaults.stage_model_config(config, stage), lib

  @staticmethod
  def _abstract_params(lib, config, model_cfg):
    del config
    device = jax.local_devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        lib.abstract_params(model_cfg))

  def _setup(self, config, model_cfg, lib, params, norm_json, seed):
    self.config = config
    self.model_cfg = model_cfg
    self.model = lib.build(model_cfg)
    self.params = jax.tree.map(jnp.asarray, params)
    self.data_cfg = config.data.pipeline if config.data.kind == "pipeline" else None
    self.tokenizer = trainer_lib.make_tokenizer(config, model_cfg)
    self.max_len = trainer_lib.text_length(config, model_cfg)
    self.truncate = bool(config.tokenizer.get("truncate", False))  # as in training (trainer.HostBatchPreparer)
    self.action_horizon = int(model_cfg.get("action_horizon", 0) or self.data_cfg.action_horizon)
    self.window = (int(self.data_cfg.window_size) if self.data_cfg is not None
                   else int(model_cfg.get("window", 1)))
    self.stats = None
    self.preprocessor = None
    self.norm_stats_json = dict(norm_json or {})  # as saved with the checkpoint (lamp_jax.export writes it out)
    if self.data_cfg is not None:
      self._setup_data(norm_json)
    else:
      self.image_size = int(model_cfg.get("image_size", 64))
      self.cameras = tuple(model_cfg.get("image_keys", (specs.IMAGE_PRIMARY,)))
      self.proprio_dim = int(model_cfg.get("proprio_dim", specs.SIM_STATE_DIM))
    self._rng = jax.random.PRNGKey(seed)
    self._sample = jax.jit(lambda p, b, r: self.model.apply({"params": p}, b, r, method="sample_actions"))
    self._history = collections.deque(maxlen=self.window)
    self._tokens = None

  def _setup_data(self, norm_json: dict):
    """Observation preprocessing and action un-normalisation: ``lamp_jax.data.inference`` (the tested twin of
    the pipeline's eval-time frame transforms), with the checkpoint's statistics."""
    import json

    from lamp_jax.data import inference, normalization

    d = self.data_cfg
    if len(d.datasets) != 1:
      raise ValueError(f"CheckpointPolicy evaluates single-dataset runs; the checkpoint's data.pipeline.datasets "
                       f"has {len(d.datasets)} entries")
    entry = d.datasets[0]
    if entry.name not in norm_json:
      raise ValueError(f"checkpoint has no normalisation statistics for dataset {entry.name!r} "
                       f"(has: {sorted(norm_json)})")
    self.stats = normalization.DatasetStatistics.from_json(json.dumps(norm_json[entry.name]))
    self.preprocessor = inference.ObservationPreprocessor(
        d, self.stats, standardize=entry.standardize or entry.name, image_keys=dict(entry.image_keys) or None,
        action_mask=tuple(entry.action_normalization_mask) or None,
        proprio_mask=tuple(entry.proprio_normalization_mask) or None)
    self.cameras = tuple(d.cameras)
    self.image_size = int(d.image_size[0])
    self.proprio_dim = int(d.max_proprio_dim)

  # -- policy interface -----------------------------------------------------------------------------------

  def reset(self, instruction: str) -> None:
    from lamp_jax import tokenizer as tokenizer_lib

    tokens, mask = tokenizer_lib.tokenize_prompts(self.tokenizer, [instruction], self.max_len,
                                                 truncate=self.truncate)
    self._tokens = (tokens, mask)
    self._instruction = instruction
    self._history.clear()
    if self.preprocessor is not None:
      self.preprocessor.reset()

  def _frame(self, observation: dict) -> dict:
    """Model-config preprocessing for runs on synthetic data (no data pipeline, no statistics)."""
    images = {}
    for cam in self.cameras:
      if cam in observation:
        images[cam] = (np.asarray(observation[cam], np.uint8), True)
      else:
        images[cam] = (np.zeros((self.image_size, self.image_size, 3), np.uint8), False)
    state = np.asarray(observation["state"], np.float32)
    proprio = np.zeros((self.proprio_dim,), np.float32)
    proprio[:min(len(state), self.proprio_dim)] = state[:self.proprio_dim]
    return {"images": images, "proprio": proprio}

  def observation_batch(self, observation: dict) -> dict:
    """One observation -> a one-example batch (specs.py layout), appending it to the window history."""
    if self._tokens is None:
      raise RuntimeError("CheckpointPolicy.reset(instruction) must be called before the first observation")
    tokens, mask = self._tokens
    if self.preprocessor is not None:
      batch = self.preprocessor(observation, self._instruction)
      batch[specs.TASK] = {specs.TOKENS: tokens, specs.TOKEN_MASK: mask}
      return batch
    self._history.append(self._frame(observation))
    frames = list(self._history)
    pad = self.window - len(frames)
    pad_mask = np.array([False] * pad + [True] * len(frames))
    frames = [frames[0]] * pad + frames
    obs = {specs.IMAGE_MASK: {}}
    for cam in self.cameras:
      obs[cam] = np.stack([f["images"][cam][0] for f in frames])[None]
      obs[specs.IMAGE_MASK][cam] = np.array([[f["images"][cam][1] for f in frames]])
    obs[specs.PROPRIO] = np.stack([f["proprio"] for f in frames])[None]
    obs[specs.TIMESTEP_PAD_MASK] = pad_mask[None]
    return {specs.OBSERVATION: obs, specs.TASK: {specs.TOKENS: tokens, specs.TOKEN_MASK: mask}}

  def __call__(self, observation: dict) -> np.ndarray:
    batch = self.observation_batch(observation)
    self._rng, rng = jax.random.split(self._rng)
    actions = np.asarray(self._sample(self.params, batch, rng), np.float32)[0]  # [H, A]
    if self.preprocessor is not None:
      actions = self.preprocessor.unnormalize_actions(actions)
    return np.asarray(actions[:, :specs.ACTION_DIM], np.float32)
