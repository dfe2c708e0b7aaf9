"""Latent actions of a trained LAM checkpoint on its own data: what ``python -m lamp_jax.probe`` and the notebook
probe (``notebooks/probe_latent_actions.ipynb``).

  lam = load_lam("/tmp/lam_sim_mvp")                                  # verified, strict; checks model.name
  out = latents_from_checkpoint("/tmp/lam_sim_mvp", train_batches=8, test_batches=4)
  report = probe.run_probes(out["z"], out["targets"], out["split"], codes=out["codes"],
                            codebook_size=out["codebook_size"])

Rows: every example of ``train_batches`` batches of the checkpoint's training pipeline (split 'train') and of up
to ``test_batches`` batches of its validation episodes (split 'test': ``data.val_fraction`` / the dataset's 'val'
split, one pass, never the training episodes). A row is the pair (o_t, o_{t+k}) of one view, k =
``model.future_offsets[offset_index]``: the current frame and the future frame of the batch, as the model
trains on them. Rows whose pair is not valid (``future_pad_mask`` False: t + k past the episode end, so a pair
never crosses an episode end; or the camera missing, ``image_mask`` False) are dropped and counted.

Rows by episode: the probe's data config turns ``data.frame_ids`` on, so every row keeps its frame's identity
(``episode_key`` '<TFRecord file>:<record>', ``step_index`` t). A row whose (episode_key, step_index) already
occurred in its split (a split is encoded for one view and one offset: this names the pair) is a repeat and is left
out, even when image augmentation gave it other pixels and so another latent: the training stream repeats its pairs
once ``train_batches`` outruns one pass over the episodes, and the k-nearest-neighbour estimator reads a repeated
row as a (near-)zero-distance neighbour. ``duplicates`` counts them per split, ``repeats_by`` says which check ran:
'identity', or 'value' for batches without frame ids (``encode_batches`` on user batches: a row repeating an
earlier row's latent and action chunk byte for byte, ``first_occurrences``; blind to repeats under augmentation).
``max_rows_per_episode`` (> 0) then keeps at most that many rows per episode in each split, evenly spaced in time
(``episodes.thin_per_episode``; no seed), and ``thinned`` counts the rest; ``rows_per_episode`` gives the distinct
episodes and the mean / max rows per episode of each split, and the arrays 'episode' / 'step_index' each row's
episode and step. (Measured on a simulator LAM before this change, with the exact-value check: 200 batches of 64
gave KSG 9.52 bits with the repeats and 7.86 without them, against 2.62 at 32 batches; the rest of the rise is the
number of rows per episode, see docs/probing.md: compare KSG figures only at equal rows and sampling.)

Probing target (``probe.targets``, MVP-LAM): the batch's action chunk a_t .. a_{t+k-1} (the LAM configs keep
``data.action_horizon`` = the largest offset; inside the episode whenever the pair is valid) de-normalised with
the pipeline's statistics and mode (``data.action_normalization``: 'normal', 'bounds', ...), the six continuous
deltas summed and the last gripper kept (``probe.net_action``), z-scored with the train rows' statistics;
dimensions constant on the train rows (no information, no entropy) are left out and named.

The test rows are whole held-out episodes (no episode is in both splits). Single-dataset runs only (one dataset's
statistics de-normalise the actions).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import os
from typing import Any, Iterable, Sequence

import jax
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.probe import episodes as episodes_lib
from lamp_jax.probe import targets as targets_lib

LAM_NAME = "lam"
TRAIN, TEST = "train", "test"
ACTION_NAMES = ("dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")  # specs.py's action layout


@dataclasses.dataclass
class LoadedLAM:
  """A restored latent action model.

  Attributes:
    config: the run config (the checkpoint's, with the overrides applied).
    model_cfg: the model config of ``stage`` (compute dtype and the stage's model overrides applied).
    model: the linen module (``LatentActionModel``).
    params: the verified parameters (``params_key`` of the state).
    step, directory, params_key, stage: where they came from.
  """

  config: ml_collections.ConfigDict
  model_cfg: ml_collections.ConfigDict
  model: Any
  params: Any
  step: int
  directory: str
  params_key: str
  stage: str


# ------------------------------------------------------------------------------------------------- config --


def _parse_value(text: str, current: Any, field: str) -> Any:
  """A flag's text as the type of the field it overrides (tuples, ints, floats, bools, strings)."""
  if isinstance(current, bool):
    low = text.strip().lower()
    if low not in ("true", "false", "1", "0"):
      raise ValueError(f"--config.{field}={text!r}: expected a bool (true / false)")
    return low in ("true", "1")
  if isinstance(current, str) or current is None:
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
    return value if current is None else text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise ValueError(f"--config.{field}={text!r}: not a literal of the field's type {type(current).__name__}") from e
  if value is None:  # optional fields (e.g. patience, n_components)
    return None
  if isinstance(current, (tuple, list)):
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  elif isinstance(current, float) and isinstance(value, int):
    value = float(value)
  elif type(value) is not type(current):
    raise ValueError(f"--config.{field}={text!r}: the field holds a {type(current).__name__}, got a "
                     f"{type(value).__name__}")
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``'a.b.c=value'`` overrides (the text of ``--config.a.b.c=value`` flags).

  Fields must exist; an integer path element indexes a list (``data.pipeline.datasets.0.data_dir=...``).
  Values are parsed as the field's type (``None`` is accepted for any field).
  """
  config = copy.deepcopy(config)
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"--config.{item}: expected --config.<field>=<value>")
    field, text = item.split("=", 1)
    parts = field.split(".")
    node: Any = config
    for i, part in enumerate(parts[:-1]):
      node = _child(node, part, ".".join(parts[:i + 1]))
    last = parts[-1]
    current = _child(node, last, field)
    value = _parse_value(text, current, field)
    node[int(last) if isinstance(node, list) else last] = value
  return config


def _child(node: Any, part: str, field: str) -> Any:
  if isinstance(node, (list, tuple)):
    if not part.isdigit() or int(part) >= len(node):
      raise ValueError(f"--config.{field}: {part!r} is not an index of a list of {len(node)} entries")
    return node[int(part)]
  if part not in node:
    raise ValueError(f"--config.{field}: no such config field (fields there: {sorted(node.keys())})")
  return node[part]


# ------------------------------------------------------------------------------------------------ loading --


def checkpoint_directory(path: str) -> str:
  """``<workdir>/checkpoints`` when ``path`` is a workdir, else ``path`` (which must exist)."""
  directory = os.path.abspath(path)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  return directory


def load_lam(checkpoint: str, step: int | None = None, overrides: Sequence[str] = (), use_ema: bool = True,
             stage: str | None = None) -> LoadedLAM:
  """Restores a LAM from a training checkpoint (its workdir or checkpoint directory).

  Args:
    checkpoint: the run's workdir or ``<workdir>/checkpoints``.
    step: the step to restore (default: the latest).
    overrides: ``'field=value'`` overrides of the stored run config (``apply_overrides``).
    use_ema: the EMA parameters when the run kept them.
    stage: whose model config (default: the run's last stage).

  The parameters are checked array by array against the model the config builds (missing, extra, other shape:
  ``CheckpointMismatchError``) and verified against the step's checksums (``CheckpointCorruptError``).
  Raises ValueError naming ``model.name`` when the checkpoint holds another model than a LAM.
  """
  from lamp_jax.training import checkpoint_compat
  from lamp_jax.training import checkpoints as ckpt_lib
  from lamp_jax.training import defaults

  directory = checkpoint_directory(checkpoint)
  checkpointer = ckpt_lib.Checkpointer(directory, read_only=True, async_save=False)
  try:
    if step is None:
      steps = checkpointer.all_steps()
      if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
      step = max(steps)
    step = int(step)
    _, config_json, _ = checkpointer.restore_json(step)
    config = apply_overrides(ckpt_lib.config_from_json(config_json), overrides)
    name = config.model.get("name", None)
    if name != LAM_NAME:
      raise ValueError(f"checkpoint step {step} in {directory} holds config field model.name={name!r}, not a latent "
                       f"action model ('{LAM_NAME}'): the probes read encode_latent (configs/lam.py trains one)")
    stage = stage or config.stage_order[-1]
    if stage not in config.stages:
      raise ValueError(f"stage {stage!r} is not in the checkpoint's config (stages: {list(config.stages)})")
    model_cfg = defaults.stage_model_config(config, stage)
    lib = defaults.model_library(config)
    key = "ema_params" if (use_ema and float(config.ema.decay) > 0) else "params"
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            lib.abstract_params(model_cfg))
    stored = {p: v for p, v in checkpointer.state_layout(step).items() if p.startswith(key + "/")}
    wanted = {f"{key}/{p}": v for p, v in checkpoint_compat.abstract_layout(abstract).items()}
    differ = checkpoint_compat.layout_diff(stored, wanted)
    if differ:
      raise checkpoint_compat.CheckpointMismatchError(
          f"checkpoint step {step} in {directory}: {key} differ from the LAM its config builds ({len(differ)} "
          f"arrays):\n    " + "\n    ".join(differ[:checkpoint_compat.MAX_LISTED]))
    params = checkpointer.restore_params(step, abstract, key=key)
  finally:
    checkpointer.close()
  return LoadedLAM(config=config, model_cfg=model_cfg, model=lib.build(model_cfg), params=params, step=step,
                   directory=directory, params_key=key, stage=stage)


def encode_fn(lam: LoadedLAM, view: str, offset_index: int):
  """Jitted ``(params, batch, rng) -> encode_latent(batch, rng, view=view, offset_index=offset_index)``."""
  model = lam.model
  return jax.jit(lambda p, b, r: model.apply({"params": p}, b, r, view=view, offset_index=offset_index,
                                             method="encode_latent"))


def model_inputs(batch: dict, view: str) -> dict:
  """The part of a pipeline batch ``encode_latent`` reads for ``view`` (no text, no other cameras)."""
  obs = batch[specs.OBSERVATION]
  out = {view: obs[view], specs.FUTURE: {view: obs[specs.FUTURE][view]},
         specs.FUTURE_PAD_MASK: obs[specs.FUTURE_PAD_MASK]}
  if specs.IMAGE_MASK in obs and view in obs[specs.IMAGE_MASK]:
    out[specs.IMAGE_MASK] = {view: obs[specs.IMAGE_MASK][view]}
  return {specs.OBSERVATION: out}


# --------------------------------------------------------------------------------------------- the latents --


def first_occurrences(*columns: np.ndarray) -> np.ndarray:
  """Indices (ascending) of the rows of ``columns`` (arrays with the same first dimension N) that do not repeat an
  earlier row exactly, byte for byte across every column: int64[M], M <= N."""
  n = columns[0].shape[0]
  if n == 0:
    return np.zeros((0,), np.int64)
  rows = np.concatenate([np.ascontiguousarray(c).reshape(n, -1).view(np.uint8).reshape(n, -1) for c in columns],
                        axis=1)
  _, first = np.unique(rows, axis=0, return_index=True)
  return np.sort(first).astype(np.int64)


def _frame_ids(batch: dict, i: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
  """The batch's (episode_key [n], step_index int64[n]), or None when it carries neither."""
  has = [key in batch for key in (specs.EPISODE_KEY, specs.STEP_INDEX)]
  if not any(has):
    return None
  if not all(has):
    present, absent = (specs.EPISODE_KEY, specs.STEP_INDEX) if has[0] else (specs.STEP_INDEX, specs.EPISODE_KEY)
    raise ValueError(f"batch {i} carries {present!r} but not {absent!r}: frame ids come as a pair "
                     "(config field data.pipeline.frame_ids)")
  keys = episodes_lib.as_keys(batch[specs.EPISODE_KEY], f"batch {i}'s {specs.EPISODE_KEY!r}")
  steps = np.asarray(batch[specs.STEP_INDEX])
  if keys.shape != (n,) or steps.shape != (n,):
    raise ValueError(f"batch {i}: {specs.EPISODE_KEY!r} {keys.shape} and {specs.STEP_INDEX!r} {steps.shape} must "
                     f"have shape [{n}] (one per example)")
  return keys, steps.astype(np.int64)


def encode_batches(lam: LoadedLAM, batches: Iterable[dict], *, view: str, offset_index: int, seed: int = 0,
                   progress: bool = False, desc: str = "", drop_duplicates: bool = True,
                   max_rows_per_episode: int = 0) -> dict[str, Any]:
  """``encode_latent`` of every example of ``batches`` (numpy, specs layout).

  Repeats: with frame ids in the batches (``episode_key`` and ``step_index``, ``data.frame_ids``) a row is a repeat
  when its (episode_key, step_index) occurred in an earlier row (this call encodes one view and one offset: the
  identity of the pair; ``episodes.first_identities``), whatever its pixels; without them, when its z and action
  repeat an earlier row's byte for byte (``first_occurrences``; misses repeats under augmentation). Thinning
  (``max_rows_per_episode`` > 0, needs frame ids) then keeps at most that many rows per episode, evenly spaced in
  time (``episodes.thin_per_episode``).

  Returns the VALID rows only: 'z' float32[N, L * Dc] (pre-quantisation latent, flattened), 'codes' int32[N, L],
  'quantized' float32[N, L * Dc], 'action' float32[N, k, A] (the normalised chunk's first k steps, k the pair's
  offset; absent when the batches carry no action), with frame ids 'episode_key' str[N] and 'step_index' int32[N];
  and 'dropped' (invalid pairs), 'examples' (all examples), 'duplicates' (valid rows left out as repeats; always 0
  with ``drop_duplicates=False``), 'repeats_by' ('identity' | 'value' | 'none': which check ran), 'thinned' (rows
  left out by the per-episode limit), 'rows_per_episode' ({'episodes', 'mean', 'max'} of the rows returned; None
  without frame ids).
  """
  if int(max_rows_per_episode) < 0:
    raise ValueError(f"max_rows_per_episode={max_rows_per_episode}: expected >= 0 (0: no limit)")
  fn = encode_fn(lam, view, offset_index)
  k = int(lam.model_cfg.future_offsets[offset_index])
  rng = jax.random.key(seed)
  z, codes, quantized, actions, keys, steps = [], [], [], [], [], []
  examples = dropped = 0
  with_ids = None  # whether the batches carry frame ids (all or none)
  if progress:
    import tqdm

    batches = tqdm.tqdm(batches, desc=desc or f"encode_latent {view}", unit="batch")
  for i, batch in enumerate(batches):
    out = jax.device_get(fn(lam.params, model_inputs(batch, view), jax.random.fold_in(rng, i)))
    valid = np.asarray(out["valid"], bool)
    n = valid.size
    ids = _frame_ids(batch, i, n)
    if with_ids is None:
      with_ids = ids is not None
    elif with_ids != (ids is not None):
      raise ValueError(f"batch {i} {'carries' if ids is not None else 'lacks'} {specs.EPISODE_KEY!r} / "
                       f"{specs.STEP_INDEX!r}, unlike batch 0: frame ids must be in every batch or in none")
    examples += n
    dropped += int((~valid).sum())
    z.append(np.asarray(out["latent"]).reshape(n, -1)[valid])
    codes.append(np.asarray(out["codes"]).reshape(n, -1)[valid])
    quantized.append(np.asarray(out["quantized"]).reshape(n, -1)[valid])
    if ids is not None:
      keys.append(ids[0][valid])
      steps.append(ids[1][valid])
    if specs.ACTION in batch:
      action = np.asarray(batch[specs.ACTION])
      if action.shape[1] < k:
        raise ValueError(f"batch['action'] holds chunks of {action.shape[1]} steps; the pair's offset k={k} needs "
                         f"{k} (config field data.pipeline.action_horizon >= {k})")
      actions.append(action[:, :k][valid])
  if not z:
    raise ValueError("no batch to encode (0 batches)")
  if int(max_rows_per_episode) > 0 and not with_ids:
    raise ValueError(f"max_rows_per_episode={max_rows_per_episode} needs the episode of every row: the batches carry "
                     f"no {specs.EPISODE_KEY!r} / {specs.STEP_INDEX!r} (config field data.pipeline.frame_ids=True)")
  out = {"z": np.concatenate(z).astype(np.float32), "codes": np.concatenate(codes).astype(np.int32),
         "quantized": np.concatenate(quantized).astype(np.float32)}
  if actions:
    out["action"] = np.concatenate(actions).astype(np.float32)
  if with_ids:
    out["episode_key"] = np.concatenate(keys).astype(str)
    out["step_index"] = np.concatenate(steps).astype(np.int32)
  valid_rows = out["z"].shape[0]
  repeats_by = "none"
  if drop_duplicates:
    if with_ids:
      repeats_by, keep = "identity", episodes_lib.first_identities(out["episode_key"], out["step_index"])
    else:
      repeats_by = "value"
      keep = first_occurrences(out["z"], out["action"]) if actions else first_occurrences(out["z"])
    out = {key: value[keep] for key, value in out.items()}
  unique_rows = out["z"].shape[0]
  if int(max_rows_per_episode) > 0:
    keep = episodes_lib.thin_per_episode(out["episode_key"], out["step_index"], int(max_rows_per_episode))
    out = {key: value[keep] for key, value in out.items()}
  out.update(dropped=dropped, examples=examples, duplicates=valid_rows - unique_rows, repeats_by=repeats_by,
             thinned=unique_rows - out["z"].shape[0],
             rows_per_episode=episodes_lib.rows_per_episode(out["episode_key"]) if with_ids else None)
  return out


def reconstruct_future(lam: LoadedLAM, batch: dict, *, view: str | None = None, offset_index: int = 0,
                       seed: int = 0) -> dict[str, np.ndarray]:
  """The forward model's prediction of o_{t+k} from o_t and the quantised latent of (o_t, o_{t+k}), one view.

  Only for pixel targets (``model.target == 'pixels'``: the sim / tiny / moto / lara variants); a 'features'
  target predicts encoder features, not a picture. The same computation as the loss's self-view term.

  Returns: 'current', 'future', 'predicted' uint8[B, S, S, 3]; 'mse' float32[B] (per pair, in the model's [-1, 1]
  pixel units: the reconstruction term's per-pair error); 'valid' bool[B]; 'codes' int32[B, L].
  """
  from lamp_jax.models import lam as lam_model

  cfg = lam.model_cfg
  if cfg.target != "pixels":
    raise ValueError(f"config field model.target={cfg.target!r}: the forward model predicts image-encoder features, "
                     "not pixels; there is no picture to show")
  view = view or tuple(cfg.views)[0]
  size, patch = int(cfg.image_size), int(cfg.pixel_patch_size)

  def decode(module, inputs, rng):
    current, future, valid = module._frames(inputs, (view,))  # pylint: disable=protected-access
    pick = slice(offset_index, offset_index + 1)
    future, valid = future[:, :, pick], valid[:, :, pick]
    b = current.shape[1]
    z, quantised, _, _ = module._latents(current, future, valid, rng)  # pylint: disable=protected-access
    context = lam_model.patchify(current.reshape(b, size, size, 3), patch)
    target = lam_model.patchify(future.reshape(b, size, size, 3), patch)
    predicted = module.fdm(context, lam_model.decoder_latent(cfg, z, quantised).reshape(b, *z.shape[2:]))
    mse = jax.numpy.mean(jax.numpy.square(predicted - target), axis=(1, 2))
    as_uint8 = lambda x: (  # noqa: E731
        jax.numpy.clip(jax.numpy.round((x + 1.0) * 127.5), 0, 255).astype(jax.numpy.uint8))
    return {"current": as_uint8(current[0]), "future": as_uint8(future.reshape(b, size, size, 3)),
            "predicted": as_uint8(lam_model.unpatchify(predicted, patch, size)), "mse": mse,
            "valid": valid.reshape(b), "codes": quantised["codes"].reshape(b, -1)}

  fn = jax.jit(lambda p, x, r: lam.model.apply({"params": p}, x, r, method=decode))
  out = jax.device_get(fn(lam.params, model_inputs(batch, view), jax.random.key(seed)))
  return {k: np.asarray(v) for k, v in out.items()}


def _take(iterator, n: int):
  for _ in range(n):
    try:
      yield next(iterator)
    except StopIteration:
      return


def data_config(lam: LoadedLAM, view: str | None = None) -> ml_collections.ConfigDict:
  """The checkpoint's pipeline config of ``lam.stage`` (global batch size, the stage's data overrides), checked
  against what the LAM reads and against the probed ``view`` (default: the model's first), with ``frame_ids`` on:
  every batch carries its examples' ``episode_key`` and ``step_index`` (repeats by identity, rows by episode)."""
  from lamp_jax.data import config as data_config_lib
  from lamp_jax.training import defaults

  config = lam.config
  view = view or tuple(lam.model_cfg.views)[0]
  if config.data.kind != "pipeline":
    raise ValueError(f"the checkpoint's config field data.kind={config.data.kind!r}: probing reads frame pairs and "
                     "actions from a data pipeline (data.kind='pipeline'); retrain on a dataset or override "
                     "--config.data.kind=pipeline and --config.data.pipeline.*")
  d = copy.deepcopy(config.data.pipeline)
  with d.unlocked():
    d.batch_size = int(config.data.global_batch_size)
    defaults.apply_overrides(d, config.stages[lam.stage].data_overrides, f"stages.{lam.stage}.data_overrides")
    d.frame_ids = True  # after the overrides: the probe always reads its rows' identity
  if len(d.datasets) != 1:
    raise ValueError(f"probing reads single-dataset runs (rows are de-normalised with one dataset's statistics); "
                     f"config field data.pipeline.datasets has {len(d.datasets)} entries")
  requirements = defaults.model_library(config).data_requirements(lam.model_cfg)
  problems = data_config_lib.check_requirements(d, requirements)
  if view not in tuple(d.cameras) or view not in tuple(d.get("future_cameras", ())):
    problems.append(f"data.cameras={tuple(d.cameras)} / data.future_cameras={tuple(d.get('future_cameras', ()))} "
                    f"do not read the probed view {view!r}")
  if problems:
    raise ValueError("the checkpoint's data config does not give the LAM its pairs:\n  " + "\n  ".join(problems))
  return d


def latents_from_checkpoint(checkpoint: str | LoadedLAM, *, step: int | None = None, overrides: Sequence[str] = (),
                            view: str | None = None, offset_index: int = 0, train_batches: int = 8,
                            test_batches: int = 4, seed: int = 0, progress: bool = True,
                            max_rows_per_episode: int = 0) -> dict[str, Any]:
  """Latents, codes and MVP-LAM action targets of a LAM checkpoint on its own data (module docstring).

  Args:
    checkpoint: workdir / checkpoint directory, or an already ``load_lam``-ed model.
    step, overrides: as ``load_lam`` (ignored when ``checkpoint`` is loaded).
    view: the camera whose pairs are encoded (default: the model's first view).
    offset_index: which of ``model.future_offsets`` is k.
    train_batches: batches of the training stream (split 'train').
    test_batches: at most this many batches of the validation episodes (split 'test', one pass).
    seed: seed of the training stream's shuffle and of the quantiser's key.
    progress: tqdm bars.
    max_rows_per_episode: at most this many rows per episode in each split, evenly spaced in time (0: no limit;
      ``episodes.thin_per_episode``).

  Returns:
    dict: 'z' float32[N, L * Dc], 'codes' int32[N, L], 'quantized' float32[N, L * Dc], 'actions' float32[N, k, A]
    (normalised chunks), 'net_actions' float64[N, 7] (raw net action over k), 'targets' float64[N, D] (z-scored
    with the train rows' ``HorizonStatistics``; the D dimensions that vary on the train rows, named by
    'target_names'; 'constant_dims' names the others), 'split' str[N] ('train' | 'test'), 'horizon_stats', 'view',
    'stride' (k), 'codebook_size', 'code_length', 'code_dim', 'step', 'dropped' {split: invalid pairs},
    'duplicates' {split: repeated rows left out (same episode and step)}, 'examples' {split: examples read},
    'dataset'; by episode: 'episode' int32[N] (index into 'episode_keys', a tuple of '<file>:<record>' keys in
    order of first appearance, train episodes first), 'step_index' int32[N] (t of the row's pair),
    'repeats_by' {split: 'identity'}, 'thinned' {split: rows left out by ``max_rows_per_episode``},
    'rows_per_episode' {split: {'episodes', 'mean', 'max'}}, 'max_rows_per_episode'.
  """
  from lamp_jax.data import datasets as datasets_lib
  from lamp_jax.data import normalization
  from lamp_jax.data import pipeline

  lam = checkpoint if isinstance(checkpoint, LoadedLAM) else load_lam(checkpoint, step=step, overrides=overrides)
  views = tuple(lam.model_cfg.views)
  view = view or views[0]
  if view not in views:
    raise ValueError(f"view {view!r} is not one of the checkpoint's config field model.views={views}")
  if not 0 <= offset_index < len(lam.model_cfg.future_offsets):
    raise ValueError(f"offset_index={offset_index}: model.future_offsets={tuple(lam.model_cfg.future_offsets)}")
  d = data_config(lam, view)
  entry = d.datasets[0]
  k = int(lam.model_cfg.future_offsets[offset_index])
  parts = {}
  train_it = pipeline.make_train_iterator(d, seed=int(lam.config.seed) + int(seed), process_index=0,
                                          process_count=1)
  try:
    parts[TRAIN] = encode_batches(lam, _take(train_it, int(train_batches)), view=view, offset_index=offset_index,
                                  seed=seed, progress=progress, desc="train pairs",
                                  max_rows_per_episode=max_rows_per_episode)
    stats = train_it.statistics[entry.name]
  finally:
    train_it.close()
  val_it = pipeline.make_val_iterator(d, seed=int(seed), process_index=0, process_count=1, repeat=False)
  try:
    test_batches_read = list(_take(val_it, int(test_batches)))
  finally:
    val_it.close()
  if not test_batches_read:
    raise ValueError(f"dataset {entry.name!r} gave no validation batch of {d.batch_size} examples (split 'test' "
                     f"= held-out episodes: config field data.pipeline.val_fraction={d.val_fraction}, or the "
                     "dataset's 'val' split); probing needs held-out rows")
  parts[TEST] = encode_batches(lam, test_batches_read, view=view, offset_index=offset_index, seed=seed + 1,
                               progress=progress, desc="test pairs", max_rows_per_episode=max_rows_per_episode)
  for name, part in parts.items():
    if part["z"].shape[0] == 0:
      raise ValueError(
          f"no valid ({view!r}, future) pair in the {part['examples']} {name} examples of dataset {entry.name!r}: "
          f"every pair is padded (future_pad_mask False: episodes shorter than k={k}) or the camera is missing "
          f"(observation/image_mask False): does the dataset have the view {view!r} (config field "
          f"data.pipeline.cameras={tuple(d.cameras)})?")
    if "action" not in part:
      raise ValueError(f"the {name} batches carry no 'action': the probing target needs the action chunk")
    if "episode_key" not in part:
      raise ValueError(f"the {name} batches carry no {specs.EPISODE_KEY!r} although the probe's data config sets "
                       "data.pipeline.frame_ids=True")
  standardization = datasets_lib.get(entry.standardize or entry.name)
  mask = tuple(entry.get("action_normalization_mask", ()) or standardization.action_normalization_mask) or None
  net = {}
  for name, part in parts.items():
    raw = normalization.unnormalize_actions(part["action"], stats, str(d.action_normalization), mask)
    if raw.shape[-1] < targets_lib.ACTION_DIM:
      raise ValueError(f"dataset {entry.name!r} has {raw.shape[-1]}-D actions; the probing target needs the 7-D "
                       "end-effector layout (lamp_jax/specs.py)")
    net[name] = targets_lib.net_action(raw[..., :targets_lib.ACTION_DIM])
  horizon = targets_lib.HorizonStatistics.of(net[TRAIN], k)
  varying = horizon.varying_dims()  # the constant ones are left out of the targets and named
  order = (TRAIN, TEST)
  cat = lambda key: np.concatenate([parts[n][key] for n in order])  # noqa: E731
  episode, episode_keys = episodes_lib.episode_index(cat("episode_key"))
  return {
      "z": cat("z"), "codes": cat("codes"), "quantized": cat("quantized"), "actions": cat("action"),
      "net_actions": np.concatenate([net[n] for n in order]),
      "targets": horizon.normalize(np.concatenate([net[n] for n in order]))[:, varying],
      "target_names": tuple(ACTION_NAMES[i] for i in varying),
      "constant_dims": tuple(ACTION_NAMES[i] for i in range(targets_lib.ACTION_DIM) if i not in set(varying)),
      "split": np.concatenate([np.full(parts[n]["z"].shape[0], n) for n in order]),
      "horizon_stats": horizon, "view": view, "stride": k, "offset_index": offset_index,
      "codebook_size": int(lam.model_cfg.vq.num_codes), "code_length": int(lam.model_cfg.vq.code_length),
      "code_dim": int(lam.model_cfg.vq.code_dim), "step": lam.step, "checkpoint": lam.directory,
      "dropped": {n: int(parts[n]["dropped"]) for n in order},
      "duplicates": {n: int(parts[n]["duplicates"]) for n in order},
      "examples": {n: int(parts[n]["examples"]) for n in order},
      "episode": episode, "episode_keys": episode_keys, "step_index": cat("step_index"),
      "repeats_by": {n: parts[n]["repeats_by"] for n in order}, "thinned": {n: int(parts[n]["thinned"]) for n in order},
      "rows_per_episode": {n: parts[n]["rows_per_episode"] for n in order},
      "max_rows_per_episode": int(max_rows_per_episode),
      "dataset": entry.name, "lam": lam,
  }
