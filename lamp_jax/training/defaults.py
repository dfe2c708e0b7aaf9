"""The run-config schema every ``configs/*.py`` starts from, and its validation.

Fields (``ml_collections.ConfigDict``; every one can be overridden as ``--config.<path>=value``):
  seed                  int: model init, per-step RNG and data order all derive from it
  compilation_cache_dir JAX persistent compilation cache ('' = off): reruns / resumes skip XLA compiles
  model                 the model config; ``model.name`` names its library (``lamp_jax/models/registry.py``),
                        e.g. ``registry.get('lamp').model_config('sim')``
  compute_dtype         'float32' | 'bfloat16' activations (parameters stay float32); written into every
                        ``dtype`` field of the model config
  data.kind             'synthetic' (``dummy_batch`` per (seed, step): benchmarks, tests) | 'pipeline'
                        (``lamp_jax.data.pipeline.make_train_iterator(data.pipeline, ...)``)
  data.global_batch_size  examples per train step over all processes
  data.pipeline         the data pipeline config (kind 'pipeline' only)
  tokenizer             kind 'bytes' | 'sentencepiece' · path · max_len (used when the model config has no
                        ``max_token_len``): host-side tokenisation of ``task/language_instruction``
  mesh.{data,fsdp,tensor}  mesh axis sizes; one may be -1 (the remaining devices)
  sharding.logical_axis_rules  ((logical, mesh axes), ...) — see ``training/sharding.py``
  stage_order           names of the stages to run, in order (one run chains them)
  stages.<name>         steps · frozen (regexes) · model_overrides (ConfigDict merged into ``model``) ·
                        data_overrides (merged into ``data.pipeline``) · optimizer (see ``training/optim.py``)
  ema.decay             EMA decay (0 = no EMA) · ema.warmup
  checkpoint            every_steps · max_to_keep · async_save
  logging               every_steps · tensorboard · wandb_project · progress_bar · measure_roof (time
                        the host's matmul roof once for the 'roof_fraction' metric)
  eval                  enabled · suite · episodes_per_task (final evaluation) · every_steps (0 = only
                        after training) · periodic_episodes_per_task · execute_steps (actions executed per
                        chunk, 0 = all H) · use_ema · videos (1 = write one video per task) · seed (noise)
  init                  (optional) named entries that load parameter subtrees from files before training
                        (``training/pretrained.py``: PaliGemma .npz / HF safetensors, another run's checkpoint)
  sim_data              enabled · suite · episodes · out_dir (tfds data_dir, relative to the workdir unless
                        absolute; '' = shared cache keyed by the settings) · extra_flags (more
                        ``lamp_jax.sim.generate`` flags, e.g. '--image-size=64')
  grounding             stage 0 of a FiLM-CNN encoder on labelled simulator renders (``training/grounding.py``):
                        enabled · scenes · heldout · steps · batch_size · lr · weight_decay · eval_every; the
                        run then initialises model.vlm from it (init entry 'grounding')
"""

from __future__ import annotations

import copy

import ml_collections

from lamp_jax import tokenizer as tokenizer_lib
from lamp_jax.data import config as data_config
from lamp_jax.models import interface
from lamp_jax.models import registry
from lamp_jax.training import sharding as sharding_lib


def optimizer_config(lr: float = 1e-4, end_lr: float = 1e-6, warmup_steps: int = 0, weight_decay: float = 1e-4,
                     clip_norm: float = 1.0) -> ml_collections.ConfigDict:
  """AdamW defaults = released LaMP stage 2 (0.9 / 0.95, 1e-4 cosine to 1e-6, clip 1.0)."""
  return ml_collections.ConfigDict(dict(
      lr=lr, end_lr=end_lr, warmup_steps=warmup_steps, decay_steps=0, b1=0.9, b2=0.95, eps=1e-8,
      weight_decay=weight_decay, decay_vectors=True, clip_norm=clip_norm, grad_accum_steps=1))


def stage_config(steps: int, frozen=(), model_overrides: dict | None = None, data_overrides: dict | None = None,
                 optimizer: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      steps=steps, frozen=tuple(frozen),
      model_overrides=ml_collections.ConfigDict(model_overrides or {}),
      data_overrides=ml_collections.ConfigDict(data_overrides or {}),
      optimizer=optimizer or optimizer_config()))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.compilation_cache_dir = ""
  c.model = ml_collections.ConfigDict()
  c.compute_dtype = "float32"
  c.data = ml_collections.ConfigDict(dict(kind="synthetic", global_batch_size=8,
                                          pipeline=ml_collections.ConfigDict()))
  c.tokenizer = tokenizer_lib.default_config()
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.sharding = ml_collections.ConfigDict(dict(logical_axis_rules=tuple(sharding_lib.DEFAULT_RULES)))
  c.stage_order = ("main",)
  c.stages = ml_collections.ConfigDict(dict(main=stage_config(100)))
  c.ema = ml_collections.ConfigDict(dict(decay=0.0, warmup=True))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, max_to_keep=2, async_save=True))
  c.logging = ml_collections.ConfigDict(dict(every_steps=10, tensorboard=True, wandb_project="",
                                             progress_bar=True, measure_roof=True))
  c.eval = ml_collections.ConfigDict(dict(enabled=False, every_steps=0, suite="", episodes_per_task=10,
                                          periodic_episodes_per_task=2, execute_steps=0, use_ema=True,
                                          videos=0, seed=0))
  c.sim_data = ml_collections.ConfigDict(dict(enabled=False, suite="", episodes=0, out_dir="",
                                              extra_flags=()))
  c.grounding = ml_collections.ConfigDict(dict(enabled=False, scenes=4000, heldout=400, steps=600, batch_size=32,
                                               lr=1e-3, weight_decay=1e-4, eval_every=200))
  return c


_KINDS = ("synthetic", "pipeline")


def _check_override_fields(base, overrides, field: str, target: str) -> None:
  for key, value in overrides.items():
    if key not in base:
      raise ValueError(f"config field {field}.{key}: is not a field of {target} (fields: {sorted(base.keys())})")
    if isinstance(base[key], ml_collections.ConfigDict) and isinstance(value, (dict, ml_collections.ConfigDict)):
      _check_override_fields(base[key], value, f"{field}.{key}", f"{target}.{key}")
_DTYPES = ("float32", "bfloat16")


def _check_model_matches_data(c: ml_collections.ConfigDict, fail) -> None:
  """The pipeline must produce what the model reads (``ModelLibrary.data_requirements``, checked by
  ``data.config.check_requirements``): a model override on the command line (e.g.
  ``--config.model.motion.num_keypoints=256``) that is not mirrored in ``data.pipeline`` is rejected here, naming
  every field, instead of failing later with a shape error (or, for the generated simulator data, reading stale
  labels)."""
  problems = data_config.check_requirements(c.data.pipeline, registry.for_config(c.model).data_requirements(c.model))
  if problems:
    fail("data.pipeline", "does not give the model what it reads: " + "; ".join(
        p.replace("data.", "data.pipeline.", 1) for p in problems))


def check_model_matches_data(c: ml_collections.ConfigDict) -> None:
  """``data.pipeline`` against what ``model`` reads (ValueError naming the data field)."""
  def fail(field, msg):
    raise ValueError(f"config field {field}: {msg}")

  _check_model_matches_data(c, fail)


def validate(c: ml_collections.ConfigDict) -> None:
  """Rejects inconsistent values at start, naming the config field."""
  def fail(field, msg):
    raise ValueError(f"config field {field}: {msg}")

  if c.compute_dtype not in _DTYPES:
    fail("compute_dtype", f"{c.compute_dtype!r} is not one of {_DTYPES}")
  if c.data.kind not in _KINDS:
    fail("data.kind", f"{c.data.kind!r} is not one of {_KINDS}")
  if int(c.data.global_batch_size) <= 0:
    fail("data.global_batch_size", f"must be positive, got {c.data.global_batch_size}")
  if not c.stage_order:
    fail("stage_order", "is empty: name at least one stage")
  for name in c.stage_order:
    if name not in c.stages:
      fail("stage_order", f"stage {name!r} has no entry in config.stages (stages: {sorted(c.stages.keys())})")
    s = c.stages[name]
    if int(s.steps) <= 0:
      fail(f"stages.{name}.steps", f"must be positive, got {s.steps}")
    o = s.optimizer
    if float(o.lr) < 0 or float(o.end_lr) < 0:
      fail(f"stages.{name}.optimizer.lr", "learning rates must be >= 0")
    if int(o.grad_accum_steps) < 1:
      fail(f"stages.{name}.optimizer.grad_accum_steps", f"must be >= 1, got {o.grad_accum_steps}")
    if int(s.steps) % int(o.grad_accum_steps):
      fail(f"stages.{name}.steps", f"{s.steps} is not a multiple of optimizer.grad_accum_steps "
           f"{o.grad_accum_steps}")
    if int(o.warmup_steps) < 0:
      fail(f"stages.{name}.optimizer.warmup_steps", "must be >= 0")
    if not 0.0 <= float(o.b1) < 1.0 or not 0.0 <= float(o.b2) < 1.0:
      fail(f"stages.{name}.optimizer.b1/b2", "must lie in [0, 1)")
    _check_override_fields(c.model, s.model_overrides, f"stages.{name}.model_overrides", "config.model")
    if c.data.kind == "pipeline":
      _check_override_fields(c.data.pipeline, s.data_overrides, f"stages.{name}.data_overrides",
                             "config.data.pipeline")
    elif len(s.data_overrides):
      fail(f"stages.{name}.data_overrides", "only applies to data.kind='pipeline'")
  if not 0.0 <= float(c.ema.decay) < 1.0:
    fail("ema.decay", f"must lie in [0, 1), got {c.ema.decay}")
  if int(c.checkpoint.every_steps) <= 0:
    fail("checkpoint.every_steps", "must be positive")
  if int(c.checkpoint.max_to_keep) < 1:
    fail("checkpoint.max_to_keep", "must be >= 1")
  if int(c.logging.every_steps) <= 0:
    fail("logging.every_steps", "must be positive")
  if c.eval.enabled and not c.eval.suite:
    fail("eval.suite", "eval.enabled is True but no suite is named")
  if c.eval.enabled and int(c.eval.episodes_per_task) <= 0:
    fail("eval.episodes_per_task", "must be positive")
  if c.eval.enabled and c.data.kind != "pipeline":
    fail("eval.enabled", "closed-loop evaluation needs data.kind='pipeline' (normalisation statistics)")
  if c.sim_data.enabled and c.data.kind != "pipeline":
    fail("sim_data.enabled", "generated data is read by the pipeline: set data.kind='pipeline'")
  if c.sim_data.enabled and (not c.sim_data.suite or int(c.sim_data.episodes) <= 0):
    fail("sim_data.suite" if not c.sim_data.suite else "sim_data.episodes", "needed when sim_data.enabled")
  if c.data.kind == "pipeline":
    _check_model_matches_data(c, fail)
  sharding_lib.rules_from_config(c.sharding.logical_axis_rules)
  for name in sharding_lib.MESH_AXES:
    v = int(c.mesh[name])
    if v == 0 or v < -1:
      fail(f"mesh.{name}", f"must be a positive size or -1, got {v}")


# ------------------------------------------------------------------------------------------ model of a stage
def model_library(config: ml_collections.ConfigDict) -> interface.ModelLibrary:
  """The model library of a run config (``config.model.name``; ``models/registry.py``)."""
  return registry.for_config(config.model)


def apply_overrides(base: ml_collections.ConfigDict, overrides, field: str) -> None:
  """Recursively writes ``overrides`` (dict / ConfigDict) into ``base``; unknown keys raise naming ``field``."""
  for key, value in overrides.items():
    if key not in base:
      raise ValueError(f"config field {field}.{key} is not a field of the target config "
                       f"(fields: {sorted(base.keys())})")
    if isinstance(base[key], ml_collections.ConfigDict) and isinstance(value, (dict, ml_collections.ConfigDict)):
      apply_overrides(base[key], value, f"{field}.{key}")
    else:
      base[key] = value


def _set_dtype_fields(cfg: ml_collections.ConfigDict, dtype: str) -> None:
  """Writes ``dtype`` into every field named 'dtype' of ``cfg`` and its sub-configs."""
  for key, value in cfg.items():
    if isinstance(value, ml_collections.ConfigDict):
      _set_dtype_fields(value, dtype)
    elif key == "dtype":
      cfg[key] = dtype


def stage_model_config(config: ml_collections.ConfigDict, stage_name: str) -> ml_collections.ConfigDict:
  """``config.model`` with the compute dtype (written into every ``dtype`` field of the model config) and the
  stage's ``model_overrides`` applied."""
  model_cfg = copy.deepcopy(config.model)
  with model_cfg.unlocked():
    _set_dtype_fields(model_cfg, str(config.compute_dtype))
    apply_overrides(model_cfg, config.stages[stage_name].model_overrides, f"stages.{stage_name}.model_overrides")
  return model_cfg
