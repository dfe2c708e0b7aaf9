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

Observations are validated against the model the checkpoint holds (``observation_spec``, also what
``lamp_jax.serve`` checks requests against): every camera the model was trained with is present as uint8[h, w, 3]
(any h, w when the run had a data pipeline, whose resize the policy repeats; exactly the model's image size
otherwise), ``state`` is float32 of exactly the trained proprio length, and every value is finite. Errors name the
entry. Keys the policy does not read are ignored here (the server rejects them).

Loading verifies the parameters against the checkpoint's checksums (``training/checkpoints.py``); without an
explicit ``step`` a corrupted latest step is reported (a warning naming it) and the newest intact one is served.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.training import checkpoints as ckpt_lib
from lamp_jax.training import defaults
from lamp_jax.training import host_batch


class CheckpointPolicy:
  """Policy from a training checkpoint directory (``<workdir>/checkpoints`` or the workdir itself).

  Args:
    checkpoint_dir: the run's checkpoint directory (or its workdir).
    step: checkpoint step (default: latest).
    use_ema: use the EMA parameters when the checkpoint has them (default True).
    seed: seed of the sampling noise (the noise key advances at every call).
    stage: which stage's model config to use (default: the run's last stage).
    training_parts: keep the parameters and config of the model's training-only parts (``ModelLibrary.
      inference_params`` drops them by default; e.g. ``motion_image_report`` decodes with the motion-image head).
  """

  def __init__(self, checkpoint_dir: str, step: int | None = None, use_ema: bool = True, seed: int = 0,
               stage: str | None = None, training_parts: bool = False):
    directory = os.path.abspath(checkpoint_dir)
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    if os.path.isdir(os.path.join(directory, "checkpoints")):
      directory = os.path.join(directory, "checkpoints")
    checkpointer = ckpt_lib.Checkpointer(directory, read_only=True, async_save=False)
    try:
      if step is not None:
        candidates = [int(step)]
      else:
        candidates = sorted(checkpointer.all_steps(), reverse=True)
        if not candidates:
          raise FileNotFoundError(f"no checkpoint in {directory}")
      corrupted = []
      for step in candidates:
        try:
          config, model_cfg, lib, key, params, norm_json = self._load(checkpointer, step, use_ema, stage)
          break
        except ckpt_lib.CheckpointCorruptError as e:
          if len(candidates) == 1:
            raise
          logging.warning("%s; trying the previous step", e)
          corrupted.append(str(e))
      else:
        raise ckpt_lib.NoIntactCheckpointError(f"no intact checkpoint in {directory}: " + " | ".join(corrupted))
    finally:
      checkpointer.close()
    self._setup(config, model_cfg, lib, params, norm_json, seed, training_parts)
    self.step = step
    self.params_key = key
    self.checkpoint_dir = directory
    self.skipped_corrupted = corrupted

  @classmethod
  def from_params(cls, config: ml_collections.ConfigDict, params: Any, norm_stats_json: dict, seed: int = 0,
                  stage: str | None = None, training_parts: bool = False) -> "CheckpointPolicy":
    """A policy over in-memory parameters (the trainer's periodic evaluation)."""
    self = cls.__new__(cls)
    model_cfg, lib = cls._model_config(config, stage)
    self._setup(config, model_cfg, lib, params, norm_stats_json, seed, training_parts)
    self.step = None
    self.params_key = "params"
    self.checkpoint_dir = None
    self.skipped_corrupted = []
    return self

  # -- construction --------------------------------------------------------------------------------------

  @classmethod
  def _load(cls, checkpointer, step: int, use_ema: bool, stage: str | None):
    """(config, model config, library, params key, verified params, norm stats JSON) of one step."""
    _, config_json, norm_json = checkpointer.restore_json(step)
    config = ckpt_lib.config_from_json(config_json)
    model_cfg, lib = cls._model_config(config, stage)
    abstract = cls._abstract_params(lib, config, model_cfg)
    has_ema = float(config.ema.decay) > 0
    key = "ema_params" if (use_ema and has_ema) else "params"
    return config, model_cfg, lib, key, checkpointer.restore_params(step, abstract, key=key), norm_json

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

  def _setup(self, config, model_cfg, lib, params, norm_json, seed, training_parts=False):
    self.config = config
    if not training_parts:  # only what sample_actions reads: training-only parts (an auxiliary head, a latent
      # action model) are neither arguments of the jitted call nor kept on the device
      params, model_cfg = lib.inference_params(model_cfg, params)
    self.model_cfg = model_cfg
    self.lib = lib
    self.model = lib.build(model_cfg)
    self.params = jax.tree.map(jnp.asarray, params)
    self.data_cfg = config.data.pipeline if config.data.kind == "pipeline" else None
    self.tokenizer = host_batch.make_tokenizer(config, model_cfg)
    self.max_len = host_batch.text_length(config, model_cfg)
    self.truncate = bool(config.tokenizer.get("truncate", False))  # as in training (host_batch.HostBatchPreparer)
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
    self._instruction = None

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

  # -- observations ---------------------------------------------------------------------------------------

  @property
  def state_dim(self) -> int:
    """Length of the raw ``state`` the model was trained on: the dataset statistics' proprio length (a data
    pipeline normalises and pads it to ``max_proprio_dim``), else the model's ``proprio_dim``."""
    if self.stats is not None:
      return int(np.asarray(self.stats.proprio.mean).shape[-1])
    return int(self.proprio_dim)

  @property
  def camera_map(self) -> dict[str, str]:
    """{camera the model reads: observation key that carries it} ('image_primary' -> 'image_0' for the sim)."""
    if self.preprocessor is not None:
      return {cam: self.preprocessor.image_keys.get(cam, "") for cam in self.cameras}
    reads = set(self.lib.data_requirements(self.model_cfg).cameras)
    return {cam: cam for cam in self.cameras if cam in reads}

  def observation_spec(self) -> dict:
    """{observation key: ``lamp_jax.serving.server.ArraySpec``} the model accepts: every camera it was trained
    with (required), ``state`` float32[state_dim] (required); float values must be finite."""
    from lamp_jax.serving import server as server_lib  # pylint: disable=g-import-not-at-top  (numpy + websockets)

    image_shape = (None, None, 3) if self.preprocessor is not None else (self.image_size, self.image_size, 3)
    spec = {key: server_lib.ArraySpec("uint8", image_shape, required=True, max_dim=4096)
            for key in sorted({k for k in self.camera_map.values() if k})}
    spec["state"] = server_lib.ArraySpec("float32", (self.state_dim,), required=True, finite=True)
    return spec

  def check_observation(self, observation: Any) -> None:
    """ValueError naming the entry when ``observation`` does not fit ``observation_spec`` (extra keys are
    ignored)."""
    if not isinstance(observation, dict):
      raise ValueError(f"observation must be a dict of arrays, got {type(observation).__name__}")
    spec = self.observation_spec()
    missing = [k for k, s in spec.items() if s.required and k not in observation]
    if missing:
      raise ValueError(f"missing observation keys {missing} (this model reads {sorted(spec)})")
    for key, entry in spec.items():
      if key in observation:
        entry.check(key, np.asarray(observation[key]))

  # -- policy interface -----------------------------------------------------------------------------------

  def reset(self, instruction: str) -> None:
    """Starts an episode. On any error the policy stays without an instruction (calls fail until a reset
    succeeds)."""
    from lamp_jax import tokenizer as tokenizer_lib

    self._tokens = None
    self._instruction = None
    self._history.clear()
    if self.preprocessor is not None:
      self.preprocessor.reset()
    if not isinstance(instruction, str) or not instruction.strip():
      raise ValueError(f"instruction must be a non-empty string, got {instruction!r:.80}")
    try:
      instruction.encode("utf-8")
    except UnicodeEncodeError as e:
      raise ValueError(f"instruction is not valid UTF-8 text (character {instruction[e.start]!r} at offset "
                       f"{e.start})") from None
    tokens, mask = tokenizer_lib.tokenize_prompts(self.tokenizer, [instruction], self.max_len,
                                                 truncate=self.truncate)
    self._tokens = (tokens, mask)
    self._instruction = instruction

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
      raise RuntimeError("CheckpointPolicy.reset(instruction) must be called (and succeed) before the first "
                         "observation")
    self.check_observation(observation)
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
