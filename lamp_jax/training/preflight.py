"""Every check a run config must pass before any work starts (data generation, initialisation, training).

``check_run_config(config)`` runs, in order, and raises ``ConfigError`` ("config field <full.path>: <what>") at the
first problem:

  1. unknown keys in the sections with a fixed schema (``defaults.base_config``: tokenizer, mesh, sharding, ema,
     checkpoint, logging, eval, sim_data, every stage and its optimizer; ``data.pipeline`` against
     ``data.config.default_data_config``); ``stages.<name>.{model,data}_overrides`` against ``model`` /
     ``data.pipeline``. (Unknown keys given on the command line are rejected by ``lamp_jax.train`` itself.);
  2. the values ``defaults.validate`` checks (kinds, positive sizes, stage list, mesh, data <-> model);
  3. ``config.init`` entries (``pretrained.active_entries``: required paths set, known kinds);
  4. per stage of ``stage_order``: its model config builds (``defaults.stage_model_config`` + ``registry``), its
     data overrides still match what that model reads, its optimizer builds, the parameters and one
     ``compute_loss`` call trace abstractly (``jax.eval_shape``: no array is
     allocated, so the loss weights are checked against the model's terms), its ``frozen`` regexes each match a
     parameter, and the ``init`` targets exist in the model.

``check_files(config)`` adds what needs files (the tokenizer, which must fit each stage's vocabulary, and the
local files of ``config.init``); ``lamp_jax.train`` runs it before any work for a workdir that starts fresh.

The abstract trace is the only non-trivial cost (about a second per stage for the simulator's LaMP on a CPU,
nothing next to generating data or compiling the train step); a config that passed is remembered for the process
(keyed by its JSON), so the trainer's own call is free after the experiment's.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lamp_jax.models import registry
from lamp_jax.training import defaults
from lamp_jax.training import host_batch
from lamp_jax.training import optim
from lamp_jax.training import pretrained

# Sections with a closed set of fields (``defaults.base_config``). The top level and ``data`` stay open: a config
# file may add its own sections (configs/libero.py's ``libero.suite``, configs/bridge.py's ``data.data_dir``) that
# its other fields reference; ``model`` belongs to the library, ``init`` holds named entries.
_CLOSED = ("tokenizer", "mesh", "sharding", "ema", "checkpoint", "logging", "eval", "sim_data")
_PASSED: set[str] = set()


class ConfigError(ValueError):
  """A run config that cannot work; the message starts with 'config field <full.path>:' and is one line."""


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def _error(field: str, what: str) -> ConfigError:
  return ConfigError(_one_line(f"config field {field}: {what}"))


def _as_config_error(e: Exception, field: str) -> ConfigError:
  """A check's exception as a ConfigError; messages that name no field get ``field``."""
  text = _one_line(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
  if text.startswith("config field"):
    return ConfigError(text)
  return _error(field, f"{type(e).__name__}: {text}")


def _check_keys(node: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, path: str) -> None:
  for key, value in node.items():
    full = f"{path}.{key}" if path else str(key)
    if key not in schema:
      close = difflib.get_close_matches(str(key), [str(k) for k in schema.keys()], n=1)
      hint = f" (did you mean {close[0]!r}?)" if close else ""
      raise _error(full, f"unknown field{hint}; fields of {path or 'the run config'}: {sorted(schema.keys())}")
    if isinstance(value, ml_collections.ConfigDict) and isinstance(schema[key], ml_collections.ConfigDict):
      _check_keys(value, schema[key], full)


def check_keys(config: ml_collections.ConfigDict) -> None:
  """Unknown fields anywhere in the run config's own sections, named by their full path."""
  schema = defaults.base_config()
  for section in _CLOSED:
    if section in config and isinstance(config[section], ml_collections.ConfigDict):
      _check_keys(config[section], schema[section], section)
  stage_schema = defaults.stage_config(1)
  for name, stage in config.stages.items():
    if not isinstance(stage, ml_collections.ConfigDict):
      raise _error(f"stages.{name}", f"is {type(stage).__name__}, not a stage (training.defaults.stage_config)")
    for key in stage.keys():
      if key not in stage_schema:
        raise _error(f"stages.{name}.{key}", f"unknown field; fields of a stage: {sorted(stage_schema.keys())}")
    _check_keys(stage.optimizer, stage_schema.optimizer, f"stages.{name}.optimizer")
  if config.data.kind == "pipeline":
    from lamp_jax.data import config as data_config  # pylint: disable=g-import-not-at-top

    _check_keys(config.data.pipeline, data_config.default_data_config(), "data.pipeline")


def _stage_data_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  data_cfg = copy.deepcopy(config.data.pipeline)
  with data_cfg.unlocked():
    defaults.apply_overrides(data_cfg, config.stages[name].data_overrides, f"stages.{name}.data_overrides")
  return data_cfg


def _abstract_batch(config, lib, model_cfg) -> dict:
  """A one-example batch as the trainer's host preparer makes it (tokens, no strings), as ShapeDtypeStructs."""

  batch = host_batch.HostBatchPreparer(config, model_cfg)(jax.tree.map(np.asarray, lib.dummy_batch(model_cfg, 1, 0)))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), batch)


def _structure_key(model_cfg: ml_collections.ConfigDict) -> str:
  """The model config without its loss weights: stages that differ only in term weights (LaMP's motion / action
  stages) share one parameter tree (``__call__`` creates every parameter whatever the weights: interface.py)."""
  cfg = copy.deepcopy(model_cfg)
  if "loss" in cfg and "weights" in cfg.loss:
    with cfg.unlocked():
      del cfg.loss["weights"]
  return cfg.to_json_best_effort(sort_keys=True)


def check_stage(config: ml_collections.ConfigDict, name: str, params_cache: dict | None = None) -> Any:
  """The checks of one stage (4. above). Returns the stage's abstract parameters. ``params_cache`` shares the
  abstract parameter trees between stages of one config."""
  params_cache = {} if params_cache is None else params_cache
  field = f"stages.{name}"
  try:
    model_cfg = defaults.stage_model_config(config, name)
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    raise _as_config_error(e, f"{field}.model_overrides") from None
  try:
    lib = registry.for_config(model_cfg)
    lib.check_config(model_cfg)
  except (ValueError, TypeError, ImportError) as e:
    raise _as_config_error(e, "model.name") from None
  if config.data.kind == "pipeline" and len(config.stages[name].data_overrides):
    staged = copy.deepcopy(config)
    with staged.unlocked():
      staged.model = model_cfg
      staged.data.pipeline = _stage_data_config(config, name)
    try:
      defaults.check_model_matches_data(staged)
    except ValueError as e:
      raise _as_config_error(e, f"{field}.data_overrides") from None
  scfg = config.stages[name]
  try:
    optim.make_optimizer(scfg.optimizer, tuple(scfg.frozen), int(scfg.steps))
  except (ValueError, TypeError) as e:
    raise _as_config_error(e, f"{field}.optimizer") from None
  rng = jax.ShapeDtypeStruct((2,), np.uint32)
  try:  # Anything the model raises while building or tracing is this stage's model config not working.
    batch = _abstract_batch(config, lib, model_cfg)
    model = lib.build(model_cfg)
    key = _structure_key(model_cfg)
    if key not in params_cache:
      params_cache[key] = nn.unbox(jax.eval_shape(lambda r, b: model.init(r, b, r), rng, batch))["params"]
    params = params_cache[key]
    jax.eval_shape(lambda p, b, r: model.apply({"params": p}, b, r, train=True, method="compute_loss"),
                   params, batch, rng)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{_as_config_error(e, 'model')} (the model of stage {name!r})") from None
  try:
    optim.check_frozen_patterns(params, tuple(scfg.frozen), f"{field}.frozen")
  except ValueError as e:
    raise _as_config_error(e, f"{field}.frozen") from None
  return params


def _check_init_targets(config: ml_collections.ConfigDict, params: Any) -> None:
  for field, entry in pretrained.active_entries(config).items():
    if str(entry.kind) not in pretrained.KINDS:
      raise _error(f"{field}.kind", f"{entry.kind!r} is not one of {pretrained.KINDS}")
    node = params
    for part in [p for p in str(entry.target).split("/") if p]:
      if not isinstance(node, dict) or part not in node:
        keys = sorted(node) if isinstance(node, dict) else []
        raise _error(f"{field}.target", f"the model has no parameter subtree {entry.target!r} (at {part!r}; "
                     f"keys there: {keys})")
      node = node[part]


def check_run_config(config: ml_collections.ConfigDict) -> None:
  """All checks of the module docstring; ``ConfigError`` at the first problem. Cheap to call again."""
  key = hashlib.sha1(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()
  if key in _PASSED:
    return
  check_keys(config)
  try:
    defaults.validate(config)
  except (ValueError, TypeError, KeyError) as e:
    raise _as_config_error(e, "(run config)") from None
  try:
    pretrained.active_entries(config)
  except ValueError as e:
    raise _as_config_error(e, "init") from None
  params_cache = {}
  for name in config.stage_order:
    params = check_stage(config, name, params_cache)
    if name == config.stage_order[0]:
      _check_init_targets(config, params)  # a fresh state is initialised (and loaded) for the first stage
  _PASSED.add(key)


def check_files(config: ml_collections.ConfigDict, fresh: bool = True) -> None:
  """The checks that read files: the tokenizer builds and fits each stage's vocabulary; with ``fresh`` (a run
  without checkpoints) every local ``config.init`` file exists. ``ConfigError`` naming the field."""

  for name in config.stage_order:
    try:
      host_batch.make_tokenizer(config, defaults.stage_model_config(config, name))
    except (ValueError, TypeError, OSError) as e:
      raise _as_config_error(e, "tokenizer") from None
  if fresh:
    try:
      pretrained.check_paths(config)
    except FileNotFoundError as e:
      raise _as_config_error(e, "init") from None
