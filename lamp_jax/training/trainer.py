"""The training loop: stages, one jitted sharded train step with donated state, checkpoints, metrics, eval hook.

Reproducibility contract (what makes "kill at any moment, rerun the same command" exact):
  * the RNG of step s is ``fold_in(state.rng, s)``;
  * the batch of step s is a function of (seed, stage, s): synthetic batches are drawn from that seed, the
    data pipeline is deterministic for a seed and is fast-forwarded to the step's position on resume;
  * the optimizer state, EMA and step are restored from the checkpoint into the same shardings.
So a run resumed from step N reproduces an uninterrupted run bit for bit on CPU.

Non-finite loss or gradient norm: the step leaves the state unchanged (guarded on device), the loop stops with
``NonFiniteError`` before any further checkpoint is written, so the last good checkpoint stays the latest.

Resume is checked (``train``): the checkpoint's arrays are compared with the state the config builds first
(``checkpoint_compat``: a different model is an error listing the differing parameter paths and config fields),
then restored and verified against their checksums (``checkpoints``/``integrity``). A corrupted or incomplete
latest step is reported by step and array, moved to ``<workdir>/corrupted_checkpoints/`` and the run falls back
to the newest intact step; when no step is intact the run stops (``NoIntactCheckpointError``) without touching
anything. ``metrics.jsonl`` rows of the steps replayed after the resume point are replaced, not duplicated.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lamp_jax.models import interface
from lamp_jax.models import registry
from lamp_jax.training import checkpoint_compat
from lamp_jax.training import checkpoints as ckpt_lib
from lamp_jax.training import defaults
from lamp_jax.training import host_batch
from lamp_jax.training import metrics as metrics_lib
from lamp_jax.training import optim
from lamp_jax.training import preflight
from lamp_jax.training import pretrained
from lamp_jax.training import sharding as sharding_lib
from lamp_jax.training import state as state_lib

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
  """Raised when a train step produced a non-finite loss or gradient norm."""


# ------------------------------------------------------------------------------------------------ model --


# ------------------------------------------------------------------------------------------------- data --

# Host-side preparation lives in host_batch (the preflight uses it too); these names stay importable from here.
text_length = host_batch.text_length
make_tokenizer = host_batch.make_tokenizer
HostBatchPreparer = host_batch.HostBatchPreparer


class SyntheticData:
  """Batches from the model library's ``dummy_batch``, drawn from a seed that is a function of
  (run seed, stage, step, process): reproducible from the step alone, different on every process."""

  kind = "synthetic"

  def __init__(self, lib: interface.ModelLibrary, config: ml_collections.ConfigDict, local_batch_size: int,
               process_index: int):
    self.lib = lib
    self.config = config
    self.local_batch_size = local_batch_size
    self.process_index = process_index
    self.norm_stats = None

  def batches(self, stage_index: int, stage_name: str, offset: int,
              frame_codes: interface.FrameCodes | None = None) -> Iterator[dict]:
    del frame_codes  # the library's dummy batch carries (random) cached codes where the model reads them
    model_cfg = defaults.stage_model_config(self.config, stage_name)
    step = offset
    while True:
      seed = int(np.random.SeedSequence([int(self.config.seed), stage_index, step, self.process_index])
                 .generate_state(1)[0] & 0x7FFFFFFF)
      yield jax.tree.map(np.asarray, self.lib.dummy_batch(model_cfg, self.local_batch_size, seed))
      step += 1

  def position(self, stage_index: int, offset: int) -> dict:
    return {"kind": self.kind, "stage_index": stage_index, "offset": offset,
            "rule": "batch = dummy_batch(seed=SeedSequence([seed, stage, offset, process]))"}


class PipelineData:
  """``lamp_jax.data.pipeline.make_train_iterator``: deterministic for a seed; resumed by fast-forwarding."""

  kind = "pipeline"

  def __init__(self, config: ml_collections.ConfigDict, local_batch_size: int, process_index: int,
               process_count: int):
    from lamp_jax.data import pipeline as pipeline_lib

    self.pipeline_lib = pipeline_lib
    self.config = config
    self.local_batch_size = local_batch_size
    self.process_index = process_index
    self.process_count = process_count
    self._norm_stats = None

  def stage_data_config(self, stage_name: str) -> ml_collections.ConfigDict:
    data_cfg = copy.deepcopy(self.config.data.pipeline)
    with data_cfg.unlocked():
      data_cfg.batch_size = int(self.config.data.global_batch_size)  # The pipeline splits it per process.
      defaults.apply_overrides(data_cfg, self.config.stages[stage_name].data_overrides,
                      f"stages.{stage_name}.data_overrides")
      model_cfg = defaults.stage_model_config(self.config, stage_name)
      if not registry.for_config(model_cfg).data_requirements(model_cfg).future_offsets:
        data_cfg.future_offsets, data_cfg.future_cameras = (), ()  # not decoded for a model that reads none
    return data_cfg

  def batches(self, stage_index: int, stage_name: str, offset: int,
              frame_codes: interface.FrameCodes | None = None) -> Iterator[dict]:
    """The stage's training batches; with ``frame_codes`` (``ModelLibrary.frame_codes``) every frame carries the
    encoder's cached codes, its datasets' caches built or verified first (``data.code_cache_build.ensure``)."""
    data_cfg = self.stage_data_config(stage_name)
    if frame_codes is not None:
      data_cfg = self._with_frame_codes(data_cfg, frame_codes)
    it = self.pipeline_lib.make_train_iterator(
        data_cfg, seed=int(self.config.seed) + 7919 * stage_index,
        process_index=self.process_index, process_count=self.process_count, start_batch=int(offset))
    self._norm_stats = it.statistics
    return it

  def _with_frame_codes(self, data_cfg: ml_collections.ConfigDict,
                        frame_codes: interface.FrameCodes) -> ml_collections.ConfigDict:
    """Process 0 builds or verifies the code caches; the others wait for it and verify them when they load."""
    from lamp_jax.data import code_cache_build

    if self.process_index == 0:
      data_cfg = code_cache_build.ensure(
          data_cfg, requirements=frame_codes.requirements, source=frame_codes.source, encode=frame_codes.encode,
          batch_size=int(frame_codes.batch_size), progress=bool(self.config.logging.progress_bar))
    if self.process_count > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("lamp_jax_code_cache")
      data_cfg = code_cache_build.with_source(data_cfg, frame_codes.source)
    return data_cfg

  @property
  def norm_stats(self):
    return self._norm_stats

  def position(self, stage_index: int, offset: int) -> dict:
    return {"kind": self.kind, "stage_index": stage_index, "offset": offset,
            "resume_mode": str(self.config.data.pipeline.resume_mode),
            "rule": "make_train_iterator(seed + 7919 * stage, start_batch=offset)"}


def norm_stats_to_json(stats: Any) -> dict:
  """{dataset name: statistics dict} (``DatasetStatistics.to_json``) or {} when the data has none."""
  if not stats:
    return {}
  out = {}
  for name, value in dict(stats).items():
    if hasattr(value, "to_json"):
      out[name] = json.loads(value.to_json())
    elif isinstance(value, dict):
      out[name] = jax.tree.map(lambda x: np.asarray(x).tolist() if hasattr(x, "shape") else x, value)
    else:
      raise TypeError(f"cannot serialise normalisation statistics of type {type(value).__name__}")
  return out


# ------------------------------------------------------------------------------------------------ stage --


@dataclasses.dataclass
class Stage:
  index: int
  name: str
  start: int  # global step at which the stage starts
  end: int  # global step after its last step
  model_cfg: ml_collections.ConfigDict
  model: nn.Module
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  frozen: tuple[str, ...]
  grad_accum_steps: int
  lib: interface.ModelLibrary | None = None  # for its state collections and ``after_update``


# The key of ``ModelLibrary.after_update`` is fold_in(step key, this); the loss keeps the step key itself.
AFTER_UPDATE_STREAM = 0x0AF7


def make_train_step(stage: Stage, ema_decay: float, ema_warmup: bool) -> Callable:
  """The (un-jitted) train step: (state, batch) -> (state, scalar metrics).

  Models with state collections (``ModelLibrary.state_collections``): ``compute_loss`` runs with them mutable,
  the written collections become ``state.model_state`` and ``after_update`` follows the optimizer update (its
  changes to frozen parameters are dropped; its metrics join the step's)."""
  frozen = stage.frozen
  model = stage.model
  collections = tuple(stage.lib.state_collections) if stage.lib is not None else ()

  def train_step(state: state_lib.TrainState, batch: dict):
    rng = jax.random.fold_in(state.rng, state.step)
    labels = optim.freeze_labels(state.params, frozen)

    def loss_fn(params):
      params = optim.hold_frozen(params, labels)
      if not collections:
        loss, aux = model.apply({"params": params}, batch, rng, train=True, method="compute_loss")
        return loss, (aux, None)
      variables = {"params": params, **{name: state.model_state[name] for name in collections}}
      (loss, aux), written = model.apply(variables, batch, rng, train=True, method="compute_loss",
                                         mutable=list(collections))
      return loss, (aux, {name: written[name] for name in collections})

    (loss, (aux, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = stage.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra_metrics = {}
    if collections:
      updated, model_state, extra_metrics = stage.lib.after_update(
          stage.model_cfg, params, model_state, jax.random.fold_in(rng, AFTER_UPDATE_STREAM))
      params = jax.tree.map(lambda lab, new, old: old if lab == optim.FROZEN else new, labels, updated, params)
    ema = state.ema_params
    if ema is not None:
      ema = optim.ema_update(ema, params, state.step, ema_decay, ema_warmup)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                              model_state=model_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
    metrics = {k: jnp.mean(v.astype(jnp.float32)) for k, v in aux.items()} if isinstance(aux, dict) else {}
    metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in extra_metrics.items()})
    metrics.update(loss=loss.astype(jnp.float32), grad_norm=grad_norm, finite=finite)
    return new_state, metrics

  return train_step


# ---------------------------------------------------------------------------------------------- trainer --


def enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache (every executable, however fast it compiled)."""
  if not directory:
    return
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class Trainer:
  """Runs the config's stages from scratch or from the latest checkpoint in ``<workdir>/checkpoints``.

  Args:
    config: a run config (``training/defaults.py``), checked here (``preflight.check_run_config``: every stage).
    workdir: checkpoints, metrics.jsonl, TensorBoard events and plots go here.
    data: optional data source (``SyntheticData`` / ``PipelineData`` interface) replacing the config's.
    eval_fn: optional ``eval_fn(trainer, state, step) -> dict`` of scalars, run every ``eval.every_steps``.
    mesh: optional mesh replacing the one built from ``config.mesh``.
    measure_matmul_roof: optional ``fn(dtype_name) -> FLOP/s`` of one device (``lamp_jax.perf.roofline``); with
      ``logging.measure_roof`` the loop logs ``roof_fraction`` against it (measured once).
    check_config: run ``preflight.check_run_config`` (every stage traced abstractly); False only for tools that
      never train and trace the stages themselves (``lamp_jax.perf.aot``), where ``defaults.validate`` runs.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, data=None,
               eval_fn: Callable[["Trainer", state_lib.TrainState, int], dict] | None = None,
               mesh: Mesh | None = None, measure_matmul_roof: Callable[[str], float] | None = None,
               check_config: bool = True):
    if check_config:
      preflight.check_run_config(config)  # every field of every stage, before any work (cached per config)
    else:
      defaults.validate(config)
    self.config = config
    enable_compilation_cache(str(config.compilation_cache_dir))
    self.workdir = os.path.abspath(workdir)
    self.mesh = mesh if mesh is not None else sharding_lib.make_mesh(config.mesh)
    self.rules = sharding_lib.rules_from_config(config.sharding.logical_axis_rules)
    self.process_index = jax.process_index()
    self.process_count = jax.process_count()
    self.is_main = self.process_index == 0
    batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    gbs = int(config.data.global_batch_size)
    if gbs % batch_shards:
      raise ValueError(f"config field data.global_batch_size={gbs} is not divisible by the mesh's batch "
                       f"shards (mesh.data x mesh.fsdp = {batch_shards})")
    if gbs % self.process_count:
      raise ValueError(f"config field data.global_batch_size={gbs} is not divisible by the number of "
                       f"processes ({self.process_count})")
    self.global_batch_size = gbs
    self.local_batch_size = gbs // self.process_count
    self.lib = defaults.model_library(config)
    if data is None:
      if config.data.kind == "synthetic":
        data = SyntheticData(self.lib, config, self.local_batch_size, self.process_index)
      else:
        data = PipelineData(config, self.local_batch_size, self.process_index, self.process_count)
    self.data = data
    self.eval_fn = eval_fn
    bounds = np.cumsum([0] + [int(config.stages[n].steps) for n in config.stage_order])
    self.stage_bounds = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(config.stage_order))]
    self.total_steps = int(bounds[-1])
    self.checkpointer = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(self.workdir),
                                              max_to_keep=int(config.checkpoint.max_to_keep),
                                              async_save=bool(config.checkpoint.async_save))
    self.config_json = ckpt_lib.config_to_json(config)
    self.metrics = metrics_lib.MetricsWriter(self.workdir, enabled=self.is_main,
                                             tensorboard=bool(config.logging.tensorboard),
                                             wandb_project=str(config.logging.wandb_project),
                                             config_json=self.config_json)
    self._roof = None
    self._measure_matmul_roof = measure_matmul_roof
    self._checkpoint_norm_stats = {}
    self.state_shardings = None

  # -- stages ------------------------------------------------------------------------------------------

  def stage(self, index: int) -> Stage:
    name = self.config.stage_order[index]
    scfg = self.config.stages[name]
    model_cfg = defaults.stage_model_config(self.config, name)
    decay_mask = None
    if not scfg.optimizer.decay_vectors:  # needs the logical axes (stacked layers) of the boxed params
      decay_mask = optim.weight_decay_mask(jax.eval_shape(self._init_params_fn(model_cfg), jax.random.key(0)))
    tx, schedule = optim.make_optimizer(scfg.optimizer, tuple(scfg.frozen), int(scfg.steps), decay_mask)
    start, end = self.stage_bounds[index]
    return Stage(index=index, name=name, start=start, end=end, model_cfg=model_cfg,
                 model=self.lib.build(model_cfg), tx=tx, schedule=schedule, frozen=tuple(scfg.frozen),
                 grad_accum_steps=int(scfg.optimizer.grad_accum_steps), lib=self.lib)

  def stage_index_of_checkpoint(self, step: int) -> int:
    """The stage whose optimizer a checkpoint at ``step`` holds (a stage's last step belongs to it)."""
    for i, (start, end) in enumerate(self.stage_bounds):
      if start < step <= end:
        return i
    return 0

  def init_params_fn(self, stage: Stage) -> Callable[[jax.Array], Any]:
    return self._init_params_fn(stage.model_cfg)

  def _init_batch(self, model_cfg) -> dict:
    init_batch = jax.tree.map(np.asarray, self.lib.dummy_batch(model_cfg, 1, 0))
    return HostBatchPreparer(self.config, model_cfg)(init_batch)

  def _init_params_fn(self, model_cfg) -> Callable[[jax.Array], Any]:
    init_batch = self._init_batch(model_cfg)
    # Boxed parameters: their logical axis names -> the sharding rules.
    return lambda rng: self.lib.init_variables(model_cfg, rng, init_batch)["params"]

  def init_model_state_fn(self, stage: Stage) -> Callable[[jax.Array], Any] | None:
    """``rng -> {collection: tree}`` of the model's state collections; None when it has none."""
    if not self.lib.state_collections:
      return None
    init_batch = self._init_batch(stage.model_cfg)
    return lambda rng: self.lib.init_model_state(stage.model_cfg, rng, init_batch)

  def abstract_state(self, stage: Stage) -> tuple[state_lib.TrainState, state_lib.TrainState]:
    """(abstract ``TrainState`` of ShapeDtypeStructs, its NamedShardings) of a stage; nothing is allocated."""
    return state_lib.abstract_train_state(self.init_params_fn(stage), stage.tx,
                                          jax.random.PRNGKey(int(self.config.seed)), self.mesh, self.rules,
                                          use_ema=float(self.config.ema.decay) > 0,
                                          init_model_state_fn=self.init_model_state_fn(stage))

  def abstract_batch(self, stage: Stage, global_batch: int | None = None) -> dict:
    """The stage's global batch as ``jax.ShapeDtypeStruct``s carrying the trainer's batch sharding (the tree the
    host preparer produces from the model library's ``dummy_batch``); ``global_batch`` defaults to the run's."""
    gbs = self.global_batch_size if global_batch is None else int(global_batch)
    one = HostBatchPreparer(self.config, stage.model_cfg)(
        jax.tree.map(np.asarray, self.lib.dummy_batch(stage.model_cfg, 1, 0)))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((gbs,) + x.shape[1:], x.dtype,
                                                       sharding=sharding_lib.batch_sharding(self.mesh, x.ndim)),
                        one)

  def jit_train_step(self, stage: Stage, state_shardings: state_lib.TrainState, batch_shardings: Any) -> Callable:
    """The stage's train step, jitted as the loop runs it: explicit in/out shardings, the state donated, and
    traced under the activation-sharding rules (``sharding.activation_sharding``) so the models'
    ``with_logical_constraint`` calls split activations over the batch axes."""
    step_fn = make_train_step(stage, float(self.config.ema.decay), bool(self.config.ema.warmup))
    mesh, rules = self.mesh, self.rules

    def train_step(state, batch):
      with sharding_lib.activation_sharding(mesh, rules):
        return step_fn(state, batch)

    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(train_step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, replicated), donate_argnums=(0,))

  def initial_state(self, stage: Stage) -> state_lib.TrainState:
    """A fresh state: random initialisation, then the pretrained weights of ``config.init`` (if any)."""
    pretrained.check_paths(self.config)  # Fail before initialising a large model.
    state, shardings = state_lib.create_train_state(self.init_params_fn(stage), stage.tx,
                                                    jax.random.PRNGKey(int(self.config.seed)), self.mesh,
                                                    self.rules, use_ema=float(self.config.ema.decay) > 0,
                                                    init_model_state_fn=self.init_model_state_fn(stage))
    state = pretrained.apply_pretrained(state, shardings, self.config, stage.model_cfg)
    self.state_shardings = shardings
    return state

  def restore(self, step: int) -> tuple[state_lib.TrainState, int]:
    """The verified state of checkpoint ``step`` and its stage index.

    Raises:
      checkpoint_compat.CheckpointMismatchError: the checkpoint holds another model or optimizer state than the
        config builds (lists the arrays and the config fields that differ).
      checkpoints.CheckpointCorruptError: an item is unreadable or an array fails its checksum / is non-finite.
    """
    meta, stored_config, norm_stats = self.checkpointer.restore_json(step)
    index = int(meta.get("stage_index", self.stage_index_of_checkpoint(step)))
    if not 0 <= index < len(self.config.stage_order):
      raise checkpoint_compat.CheckpointMismatchError(
          f"checkpoint step {step} in {self.checkpointer.directory} is of stage {index} "
          f"({meta.get('stage_name')!r}) but config field stage_order has {len(self.config.stage_order)} stages "
          f"{tuple(self.config.stage_order)}")
    stage = self.stage(index)
    abstract, shardings = self.abstract_state(stage)
    differing = checkpoint_compat.check_restorable(
        self.checkpointer.directory, step, self.checkpointer.state_layout(step),
        checkpoint_compat.abstract_layout(abstract), stored_config, self.config_json)
    if differing and self.is_main:
      log.warning("resuming step %d with a config that differs from the checkpoint's in %d fields "
                  "(checkpoint -> now): %s", step, len(differing), "; ".join(differing[:checkpoint_compat.MAX_LISTED]))
    state = self.checkpointer.restore_state(step, state_lib.abstract_with_shardings(abstract, shardings))
    self._checkpoint_norm_stats = norm_stats
    self.state_shardings = shardings
    return state, index

  def restore_latest_intact(self) -> tuple[state_lib.TrainState, int, int] | None:
    """(state, stage index, step) of the newest checkpoint that restores and verifies, or None without any.

    Newer corrupted steps are reported (a warning per step naming its bad arrays) and moved to
    ``<workdir>/corrupted_checkpoints`` so the run can write those steps again. Raises
    ``NoIntactCheckpointError`` (moving nothing) when every step is corrupted, and lets a
    ``CheckpointMismatchError`` through (another model is not corruption: every step would fail the same way).
    """
    corrupted: list[ckpt_lib.CheckpointCorruptError] = []
    for step in sorted(self.checkpointer.all_steps(), reverse=True):
      try:
        state, index = self.restore(step)
      except ckpt_lib.CheckpointCorruptError as e:
        corrupted.append(e)
        if self.is_main:
          log.warning("%s", e)
          print(f"[train] WARNING: {e}", flush=True)
        continue
      if corrupted:
        if self.is_main:
          for e in corrupted:
            moved = self.checkpointer.quarantine(e)
            print(f"[train] WARNING: checkpoint step {e.step} is corrupted and was moved to {moved}; falling back "
                  f"to step {step}", flush=True)
        if self.process_count > 1:
          from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

          multihost_utils.sync_global_devices("lamp_jax_quarantine")
          self.checkpointer.manager.reload()
      return state, index, step
    if corrupted:
      raise ckpt_lib.NoIntactCheckpointError(
          f"no intact checkpoint in {self.checkpointer.directory}: every step is corrupted or incomplete "
          f"(nothing was moved): " + " | ".join(str(e) for e in corrupted))
    return None

  def check_stage(self, stage: Stage) -> None:
    if stage.frozen:
      abstract, _ = self.abstract_state(stage)
      optim.check_frozen_patterns(abstract.params, stage.frozen, f"stages.{stage.name}.frozen")

  # -- checkpoints / metrics ---------------------------------------------------------------------------

  def norm_stats_json(self) -> dict:
    """The data's normalisation statistics (JSON dict): from the live data source, else from the checkpoint
    the run resumed from (a finished run that is only re-evaluated never opens its data)."""
    live = norm_stats_to_json(self.data.norm_stats)
    return live or dict(self._checkpoint_norm_stats)

  def save(self, state: state_lib.TrainState, stage: Stage) -> None:
    step = int(jax.device_get(state.step))
    meta = {"step": step, "stage_index": stage.index, "stage_name": stage.name,
            "data": self.data.position(stage.index, step - stage.start)}
    self.checkpointer.save(step, state, meta, self.config_json, self.norm_stats_json())

  def host_roof(self) -> float | None:
    """Matmul FLOP/s roof of the whole job: one device's measured roof x devices (CPU: x processes, since
    simulated CPU devices share the host's cores). None when ``logging.measure_roof`` is off or no
    ``measure_matmul_roof`` was given."""
    if self._roof is None and self._measure_matmul_roof and self.config.logging.get("measure_roof", False):
      dtype = "bfloat16" if self.config.compute_dtype == "bfloat16" else "float32"
      per_device = float(self._measure_matmul_roof(dtype) or 0.0)
      on_cpu = jax.devices()[0].platform == "cpu"
      self._roof = per_device * (self.process_count if on_cpu else jax.device_count())
    return self._roof or None

  def flops_per_step(self, stage: Stage) -> float:
    return float(self.lib.analytic_flops(stage.model_cfg, self.global_batch_size, "train_step"))

  # -- the loop ----------------------------------------------------------------------------------------

  def train(self, until_step: int | None = None) -> state_lib.TrainState:
    """Runs (or resumes) the stages; stops early, with a checkpoint, once ``until_step`` is reached."""
    until = self.total_steps if until_step is None else min(int(until_step), self.total_steps)
    self.host_roof()  # Timed once, before the step timings start.
    resumed = self.restore_latest_intact()
    if resumed is not None:
      state, index, step = resumed
      if self.is_main:
        print(f"[train] resumed from {self.checkpointer.directory} at step {step} "
              f"(stage {self.config.stage_order[index]!r})", flush=True)
    else:
      index, step = 0, 0
      stage0 = self.stage(0)
      self.check_stage(stage0)
      state = self.initial_state(stage0)
    dropped = self.metrics.start(step)
    if dropped and self.is_main:
      print(f"[train] metrics.jsonl: {dropped} rows after step {step} dropped (those steps are replayed)", flush=True)
    try:
      while index < len(self.config.stage_order) and step < until:
        stage = self.stage(index)
        if step >= stage.end:
          index += 1
          if index < len(self.config.stage_order):
            nxt = self.stage(index)
            self.check_stage(nxt)
            state, self.state_shardings = state_lib.reinit_optimizer(state, nxt.tx, self.state_shardings,
                                                                     self.mesh)
          continue
        state = self._run_stage(stage, state, step, until)
        step = int(jax.device_get(state.step))
    finally:
      self._finish_io()
    return state

  def _finish_io(self, close: bool = False) -> None:
    """Waits for the pending checkpoint and flushes (or closes) the metrics. While an error is already propagating
    their own failures are logged, not raised, so the first error is the one reported."""
    in_flight = sys.exc_info()[1] is not None
    steps = [self.checkpointer.wait] + ([self.checkpointer.close, self.metrics.close] if close else
                                        [self.metrics.flush])
    first = None
    for fn in steps:  # every step runs (a failed wait must not leave the files open)
      try:
        fn()
      except Exception as e:  # pylint: disable=broad-except
        if first is None and not in_flight:
          first = e
        else:
          log.warning("while stopping after an error, %s failed too: %s", getattr(fn, "__qualname__", fn),
                      ckpt_lib.describe_exception(e))
    if first is not None:
      raise first

  def _run_stage(self, stage: Stage, state: state_lib.TrainState, step: int, until: int) -> state_lib.TrainState:
    cfg = self.config
    # A model that reads cached codes of a frozen sub-model (loaded into ``state`` by now) names it here; the data
    # source then builds / verifies the datasets' code caches before its iterator starts.
    frame_codes = self.lib.frame_codes(stage.model_cfg, state.params)
    if frame_codes is None:
      batches = self.data.batches(stage.index, stage.name, step - stage.start)
    else:
      batches = self.data.batches(stage.index, stage.name, step - stage.start, frame_codes=frame_codes)
    prepare = HostBatchPreparer(cfg, stage.model_cfg)
    jitted = None
    flops = self.flops_per_step(stage)
    bar = None
    if self.is_main and cfg.logging.progress_bar:
      from tqdm import tqdm

      bar = tqdm(total=self.total_steps, initial=step, desc=f"train[{stage.name}]", unit="step",
                 dynamic_ncols=True)
    log_every = int(cfg.logging.every_steps)
    ckpt_every = int(cfg.checkpoint.every_steps)
    eval_every = int(cfg.eval.every_steps)
    window_start, window_steps = time.perf_counter(), 0
    pending = None  # Metrics of the previous step, checked one step late to keep dispatch asynchronous.
    try:
      stop = min(stage.end, until)
      while step < stop:
        batch = sharding_lib.global_batch_from_local(prepare(next(batches)), self.mesh)
        if jitted is None:
          jitted = self.jit_train_step(stage, self.state_shardings, jax.tree.map(lambda x: x.sharding, batch))
        state, metrics = jitted(state, batch)
        if pending is not None:
          self._check_finite(pending)
        pending = (step, metrics)
        step += 1
        window_steps += 1
        if bar is not None:
          bar.update(1)
        last = step == stop
        if step % log_every == 0 or last:
          self._check_finite(pending)
          host = jax.device_get(metrics)
          elapsed = time.perf_counter() - window_start
          scalars = {k: v for k, v in host.items() if k != "finite"}
          update = (step - 1 - stage.start) // stage.grad_accum_steps  # The update this step contributed to.
          scalars["lr"] = float(stage.schedule(update))
          scalars["examples_per_s"] = window_steps * self.global_batch_size / max(elapsed, 1e-9)
          scalars["steps_per_s"] = window_steps / max(elapsed, 1e-9)
          scalars["stage"] = stage.index
          if prepare.truncate:
            scalars["data/truncated_prompts"] = prepare.truncated_prompts
          if prepare.unknown_words:
            scalars["data/unknown_words"] = prepare.unknown_words
          if flops:
            scalars["flops_per_s"] = flops * window_steps / max(elapsed, 1e-9)
            roof = self.host_roof()
            if roof:
              scalars["roof_fraction"] = scalars["flops_per_s"] / roof
          self.metrics.write(step, scalars)
          if bar is not None:
            bar.set_postfix(loss=f"{scalars['loss']:.4f}", gn=f"{scalars['grad_norm']:.3g}")
          window_start, window_steps = time.perf_counter(), 0
        if step % ckpt_every == 0 or last:
          self._check_finite(pending)
          self.save(state, stage)
        if self.eval_fn is not None and eval_every and step % eval_every == 0 and step < self.total_steps:
          self._check_finite(pending)
          result = self.eval_fn(self, state, step)
          if result:
            self.metrics.write(step, result, split="eval")
          window_start, window_steps = time.perf_counter(), 0
      if pending is not None:
        self._check_finite(pending)
    finally:
      if bar is not None:
        bar.close()
    return state

  def _check_finite(self, pending) -> None:
    step, metrics = pending
    if not bool(jax.device_get(metrics["finite"])):
      host = jax.device_get(metrics)
      self.checkpointer.wait()
      latest = self.checkpointer.latest_step()
      raise NonFiniteError(
          f"non-finite loss or gradient at step {step + 1} (loss={float(host['loss'])}, "
          f"grad_norm={float(host['grad_norm'])}); stopped without saving. The last good checkpoint is "
          f"step {latest} in {self.checkpointer.directory}.")

  def close(self) -> None:
    self._finish_io(close=True)
