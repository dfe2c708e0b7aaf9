"""Initialisation of a fresh train state by parameter subtree (``config.init``), straight into the shardings.

``config.init`` holds named entries (``init_entry``), each loading one subtree of this model from a file:

  target     '/'-joined parameter path of the subtree to fill ('vlm', 'motion_expert', 'lam/encoder', ...)
  kind       'big_vision_npz'  a big_vision PaliGemma ``.npz`` (local or gs://) into a PaliGemma subtree
             'hf_paligemma'    a Hugging Face PaliGemma safetensors directory into a PaliGemma subtree
             'checkpoint'      any subtree of another lamp_jax run (its workdir or checkpoint directory), e.g. a
                               trained latent action model into a policy, a stage-1 Motion Expert into a new run
             'params_npz'      a flat ``.npz`` of '/'-joined parameter paths (e.g. the encoder trained by the
                               grounding stage 0, ``training/grounding.py``)
  path       the file / directory; '' = entry off; None (a placeholder) = required: an error naming the field
  source     ('checkpoint') the subtree of the other run's parameters (default: ``target``); ('params_npz') the
             subtree of the file's tree ('' = all of it)
  step       ('checkpoint') its step (-1 = latest);  ema: read its EMA parameters
  keep_init  regexes (on paths relative to ``target``) of parameters deliberately left to their random init

The PaliGemma kinds read the model config found at the target's path in the model config (``model.vlm`` for
target 'vlm'); where that section describes a stand-alone SigLIP tower (``name: 'siglip'``, e.g. a latent action
model's ``model.image_encoder`` for target 'image_encoder'), 'big_vision_npz' loads the file's image tower
(``img/``) alone. Loading is strict: every parameter of the target subtree is loaded or listed in ``keep_init``,
and a missing, extra or mis-shaped tensor is an error naming every one (``models/weights/strict.py``). Each
process reads the file once on the host and every device receives only its own shard
(``jax.make_array_from_callback``), so a 3B VLM starts on a pod without any device holding a full copy. The
EMA copy (if any) gets the same values. Only a fresh state is initialised this way: a resumed run restores its
own checkpoint instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np

from lamp_jax.models import registry
from lamp_jax.models.weights import strict
from lamp_jax.training import checkpoints as ckpt_lib
from lamp_jax.training import defaults

KINDS = ("big_vision_npz", "hf_paligemma", "checkpoint", "params_npz")


def init_entry(kind: str, target: str, path: str | None = "", *, source: str = "", step: int = -1,
               ema: bool = False, keep_init=()) -> ml_collections.ConfigDict:
  """One ``config.init`` entry (see the module docstring). ``path=None`` makes the path required."""
  entry = ml_collections.ConfigDict(dict(kind=kind, target=target, source=source, step=step, ema=ema,
                                         keep_init=tuple(keep_init)))
  entry.path = ml_collections.config_dict.placeholder(str) if path is None else path
  return entry


def _local_copy(path: str, tmpdir: str, field: str) -> str:
  """gs:// (or any tf.io.gfile URL) -> a local copy; local paths are returned unchanged (checked to exist)."""
  if "://" not in path:
    if not os.path.exists(path):
      raise FileNotFoundError(f"config field {field}: {path} does not exist")
    return path
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only for remote files)

  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"config field {field}: {path} does not exist")
  local = os.path.join(tmpdir, os.path.basename(path.rstrip("/")))
  if tf.io.gfile.isdir(path):
    os.makedirs(local)
    for name in tf.io.gfile.listdir(path):
      tf.io.gfile.copy(os.path.join(path, name), os.path.join(local, name), overwrite=True)
  else:
    tf.io.gfile.copy(path, local, overwrite=True)
  return local


def _subtree(tree: Any, path: str, what: str, field: str) -> Any:
  for part in [p for p in path.split("/") if p]:
    if not isinstance(tree, dict) or part not in tree:
      keys = sorted(tree) if isinstance(tree, dict) else []
      raise ValueError(f"config field {field}: {what} has no subtree {path!r} (at {part!r}; keys: {keys})")
    tree = tree[part]
  return tree


def _with_subtree(tree: dict, path: str, value: Any) -> dict:
  parts = [p for p in path.split("/") if p]
  if not parts:
    return value
  out = dict(tree)
  out[parts[0]] = _with_subtree(tree[parts[0]], "/".join(parts[1:]), value)
  return out


def _model_config_at(model_cfg: ml_collections.ConfigDict, target: str, field: str) -> ml_collections.ConfigDict:
  cfg = model_cfg
  for part in [p for p in target.split("/") if p]:
    if not isinstance(cfg, ml_collections.ConfigDict) or part not in cfg:
      raise ValueError(f"config field {field}: the model config has no section model.{target.replace('/', '.')} "
                       "describing the PaliGemma to load")
    cfg = cfg[part]
  return cfg


def _tower_section(model_cfg: ml_collections.ConfigDict, target: str) -> ml_collections.ConfigDict | None:
  """The config section at the target's path when it describes a stand-alone SigLIP tower (``name: 'siglip'``)."""
  cfg = model_cfg
  for part in [p for p in target.split("/") if p]:
    cfg = cfg.get(part, None) if isinstance(cfg, ml_collections.ConfigDict) else None
  return cfg if isinstance(cfg, ml_collections.ConfigDict) and cfg.get("name", None) == "siglip" else None


def _section(cfg: Any, path: str) -> Any:
  """The config section at a '/'-joined parameter path ('' or '/': the whole config; None when absent)."""
  for part in [p for p in path.split("/") if p]:
    cfg = cfg.get(part, None) if isinstance(cfg, ml_collections.ConfigDict) else None
  return cfg


def config_notes(entry: ml_collections.ConfigDict, field: str, model_cfg: ml_collections.ConfigDict,
                 limit: int = 12) -> list[str]:
  """For a 'checkpoint' entry whose target has a config section here (``model.<target>``, e.g. model.lam for
  target 'lam') and whose source has one in the other run: the config fields that differ, named
  (``model.lam.vq.code_dim=11 here, 13 in the checkpoint``), at most ``limit``. [] otherwise."""
  if str(entry.kind) != "checkpoint":
    return []
  here = _section(model_cfg, str(entry.target))
  if not isinstance(here, ml_collections.ConfigDict):
    return []
  _, other_model = _checkpoint_config(entry, field)
  there = _section(other_model, str(entry.source or entry.target))
  if not isinstance(there, ml_collections.ConfigDict):
    return []
  flat_here, flat_there = strict.flatten(here.to_dict(), "."), strict.flatten(there.to_dict(), ".")
  prefix = "model." + ".".join(p for p in str(entry.target).split("/") if p)
  notes = []
  for key in sorted(set(flat_here) | set(flat_there)):
    a, b = flat_here.get(key, "<absent>"), flat_there.get(key, "<absent>")
    if (list(a) if isinstance(a, (tuple, list)) else a) != (list(b) if isinstance(b, (tuple, list)) else b):
      notes.append(f"config field {prefix}.{key}={a!r} here, {b!r} in the checkpoint's model config")
  if len(notes) > limit:
    notes = notes[:limit] + [f"... and {len(notes) - limit} more differing field(s)"]
  return notes


def _checkpoint_dir(entry: ml_collections.ConfigDict, field: str) -> str:
  directory = os.path.abspath(entry.path)
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"config field {field}.path: no checkpoint directory {directory}")
  return directory


@contextlib.contextmanager
def _open_run(entry: ml_collections.ConfigDict, field: str):
  """Yields (checkpointer, step, run config, model config of the step's stage) of the run an entry reads."""
  directory = _checkpoint_dir(entry, field)
  checkpointer = ckpt_lib.Checkpointer(directory, read_only=True, async_save=False)
  try:
    step = checkpointer.latest_step() if int(entry.step) < 0 else int(entry.step)
    if step is None or step not in checkpointer.all_steps():
      raise FileNotFoundError(f"config field {field}: no checkpoint step {entry.step} in {directory} "
                              f"(steps: {checkpointer.all_steps()})")
    meta, config_json, _ = checkpointer.restore_json(step)
    config = ckpt_lib.config_from_json(config_json)
    stage = str(meta.get("stage_name", config.stage_order[-1]))
    yield checkpointer, step, config, defaults.stage_model_config(config, stage)
  finally:
    checkpointer.close()


def _checkpoint_config(entry: ml_collections.ConfigDict, field: str) -> tuple[ml_collections.ConfigDict,
                                                                             ml_collections.ConfigDict]:
  """(run config, model config of its checkpoint's stage) of the run an entry reads."""
  with _open_run(entry, field) as (_, _, config, model_cfg):
    return config, model_cfg


def _read_checkpoint(entry: ml_collections.ConfigDict, field: str) -> dict:
  """The (EMA) parameters of another lamp_jax run, as host numpy arrays."""
  with _open_run(entry, field) as (checkpointer, step, config, model_cfg):
    abstract = registry.for_config(model_cfg).abstract_params(model_cfg)
    key = "ema_params" if entry.ema else "params"
    if entry.ema and float(config.ema.decay) <= 0:
      raise ValueError(f"config field {field}.ema: the run in {os.path.abspath(entry.path)} keeps no EMA "
                       "parameters")
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)
    return jax.device_get(checkpointer.restore_params(step, abstract, key=key))


def load_entry(entry: ml_collections.ConfigDict, field: str, model_cfg: ml_collections.ConfigDict) -> dict:
  """The host numpy tree of one entry's target subtree (before the strict comparison)."""
  kind = str(entry.kind)
  if kind not in KINDS:
    raise ValueError(f"config field {field}.kind={kind!r} is not one of {KINDS}")
  if kind == "checkpoint":
    return _subtree(_read_checkpoint(entry, field), str(entry.source or entry.target), f"the run in {entry.path}",
                    f"{field}.source")
  if kind == "params_npz":
    if "://" in str(entry.path):
      raise ValueError(f"config field {field}.path: kind 'params_npz' reads local files only, got {entry.path}")
    with np.load(_local_copy(str(entry.path), "", f"{field}.path")) as flat:
      tree = strict.unflatten({name: flat[name] for name in flat.files})
    return _subtree(tree, str(entry.source), f"the file {entry.path}", f"{field}.source")
  from lamp_jax.models.weights import big_vision_npz  # pylint: disable=g-import-not-at-top
  from lamp_jax.models.weights import hf_paligemma  # pylint: disable=g-import-not-at-top

  section = _tower_section(model_cfg, str(entry.target))
  if section is not None and kind == "big_vision_npz":
    loader = big_vision_npz.load_image_tower
  else:
    loader = big_vision_npz.load if kind == "big_vision_npz" else hf_paligemma.load
    section = _model_config_at(model_cfg, str(entry.target), f"{field}.target")
  with tempfile.TemporaryDirectory(prefix="lamp_init_") as tmpdir:
    return loader(_local_copy(str(entry.path), tmpdir, f"{field}.path"), section)


def _place(flat_host: dict, flat_sharding: dict, flat_abstract: dict) -> dict:
  """Host numpy arrays -> jax Arrays in their shardings (each device gets only its slice)."""
  out = {}
  for name, like in flat_abstract.items():
    x = np.asarray(flat_host[name], dtype=like.dtype)
    out[name] = jax.make_array_from_callback(x.shape, flat_sharding[name], lambda index, x=x: x[index])
  return out


def active_entries(config: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{field: entry} of the entries with a path; a required (None) path is an error naming the field."""
  init = config.get("init", None)
  if init is None:
    return {}
  out = {}
  for name, entry in init.items():
    field = f"init.{name}"
    if not isinstance(entry, ml_collections.ConfigDict) or "kind" not in entry:
      raise ValueError(f"config field {field} is not an init entry (lamp_jax.training.pretrained.init_entry)")
    if entry.path is None:
      raise ValueError(f"config field {field}.path must be set (this config loads model.{entry.target} from a "
                       f"{entry.kind} file), e.g. --config.{field}.path=...")
    if entry.path:
      out[field] = entry
  return out


def check_paths(config: ml_collections.ConfigDict) -> None:
  """Fails before any work when a configured local file is missing (remote paths are checked when read)."""
  for field, entry in active_entries(config).items():
    if "://" not in str(entry.path) and not os.path.exists(str(entry.path)):
      raise FileNotFoundError(f"config field {field}.path: {entry.path} does not exist")


def apply_pretrained(state, shardings, config: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict):
  """Returns ``state`` with every active ``config.init`` entry's subtree loaded (unchanged when none is set).

  Args:
    state: a freshly initialised ``TrainState``.
    shardings: its shardings (``TrainState`` of NamedShardings).
    config: the run config (reads ``init``).
    model_cfg: the stage's model config.
  """
  entries = active_entries(config)
  if not entries:
    return state
  params, ema = state.params, state.ema_params
  for field, entry in entries.items():
    target = str(entry.target)
    abstract = jax.eval_shape(lambda p: p, _subtree(params, target, "the model", f"{field}.target"))
    flat_abstract = strict.flatten(abstract)
    keep = [re.compile(p) for p in entry.keep_init]
    kept = {n for n in flat_abstract if any(p.search(n) for p in keep)}
    host = strict.flatten(load_entry(entry, field, model_cfg))
    source = f"{entry.path} ({field}, target {target!r})"
    try:
      strict.check_names(source, set(flat_abstract) - kept, set(host) - kept, optional=())
      mismatched = [problem for name in sorted(set(flat_abstract) - kept)
                    if (problem := strict.check_tensor(name, host[name], tuple(flat_abstract[name].shape)))]
      if mismatched:
        raise strict.StrictLoadError(source, mismatched=mismatched)
    except strict.StrictLoadError as e:
      notes = config_notes(entry, field, model_cfg)
      if not notes:
        raise
      raise strict.StrictLoadError(e.source, missing=e.missing, unexpected=e.unexpected, mismatched=e.mismatched,
                                   notes=notes) from e
    load = {n: flat_abstract[n] for n in flat_abstract if n not in kept}
    flat_sh = strict.flatten(_subtree(shardings.params, target, "the model", f"{field}.target"))
    flat_params = strict.flatten(_subtree(params, target, "the model", f"{field}.target"))
    flat_params.update(_place(host, flat_sh, load))
    params = _with_subtree(params, target, strict.unflatten(flat_params))
    if ema is not None:
      flat_sh = strict.flatten(_subtree(shardings.ema_params, target, "the model", f"{field}.target"))
      flat_ema = strict.flatten(_subtree(ema, target, "the model", f"{field}.target"))
      flat_ema.update(_place(host, flat_sh, load))
      ema = _with_subtree(ema, target, strict.unflatten(flat_ema))
  return state.replace(params=params, ema_params=ema)
