"""One experiment end to end: (generate the simulator dataset) -> (train its prerequisites once) -> train the
stages -> (closed-loop eval) -> success table + plots. Called by ``python -m lamp_jax.train``.

Outputs in the workdir: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``eval_results.json`` (final
closed-loop evaluation), ``plots/loss_curves.png`` and ``plots/success_per_task.png``; for a model whose library
reports held-out figures (``ModelLibrary.report``, e.g. a VAE): ``report.json`` and ``plots/report.png``.
Prerequisites (``config.prerequisites``, ``training/prerequisites.py``; e.g. the VAE of a motion-image policy)
are trained first, once, in their own directories, and their results written into this run's config.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from typing import Any

import jax
import ml_collections

from lamp_jax.eval import stats
from lamp_jax.perf import roofline
from lamp_jax.training import preflight
from lamp_jax.training import prerequisites as prerequisites_lib
from lamp_jax.training import trainer as trainer_lib


def is_main_process() -> bool:
  return jax.process_index() == 0


# --------------------------------------------------------------------------------------- simulator data --


def generation_flags(config: ml_collections.ConfigDict) -> list[str]:
  """Flags of ``lamp_jax.sim.generate``: the label shapes the pipeline reads (image size, scene-flow points and
  horizon, from ``data.pipeline``) and then ``sim_data.extra_flags``. Deriving the shapes from the data config
  keeps the generated labels and the model in step (``defaults.validate`` ties the data config to the model)."""
  d = config.data.pipeline
  height, width = (int(v) for v in d.image_size)
  if height != width:
    raise ValueError(f"config field data.pipeline.image_size={tuple(d.image_size)}: the simulator renders square "
                     "images")
  derived = [f"--image-size={height}", f"--num-points={int(d.scene_flow_num_points)}",
             f"--flow-steps={int(d.scene_flow_horizon)}"]
  if d.get("optical_flow", False):
    # Exact flow images spanning the action chunk (k = data.action_horizon), with the data's normaliser.
    derived.append(f"--optical-flow-steps={int(d.action_horizon)}")
    if float(d.get("optical_flow_max_magnitude", 0.0)) > 0:
      derived.append(f"--optical-flow-max-magnitude={float(d.optical_flow_max_magnitude)}")
  extra = [str(f) for f in config.sim_data.extra_flags]
  for flag in extra:
    if flag.split("=")[0] in ("--image-size", "--num-points", "--flow-steps", "--optical-flow-steps",
                              "--optical-flow-max-magnitude"):
      raise ValueError(f"config field sim_data.extra_flags: {flag} is derived from data.pipeline (image_size, "
                       "scene_flow_num_points, scene_flow_horizon, optical_flow with action_horizon and "
                       "optical_flow_max_magnitude); set it there instead")
  return derived + extra


def sim_dataset_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The tfds data_dir of the generated dataset: ``sim_data.out_dir`` (relative to the workdir) or, when
  empty, a shared cache entry keyed by the generation settings (so LaMP and its ablation use the same data)."""
  s = config.sim_data
  if s.out_dir:
    return s.out_dir if os.path.isabs(s.out_dir) else os.path.join(os.path.abspath(workdir), s.out_dir)
  from lamp_jax.sim import rlds_export  # pylint: disable=g-import-not-at-top

  key = json.dumps({"suite": s.suite, "episodes": int(s.episodes), "flags": generation_flags(config),
                    "format": rlds_export.FORMAT_VERSION}, sort_keys=True)
  root = os.environ.get("LAMP_JAX_CACHE", "") or os.path.join(os.path.expanduser("~"), ".cache", "lamp_jax")
  return os.path.join(root, "sim_data", f"{s.suite}_{int(s.episodes)}ep_{hashlib.sha1(key.encode()).hexdigest()[:8]}")


def dataset_version_dir(data_dir: str, suite: str) -> str:
  from lamp_jax import specs

  return os.path.join(data_dir, f"{specs.SIM_DATASET_PREFIX}{suite}", "1.0.0")


def ensure_sim_dataset(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Generates the dataset with ``python -m lamp_jax.sim.generate`` unless it already exists; atomic (written
  to ``<dir>.partial`` and renamed), so an interrupted generation is redone. Returns the version directory."""
  s = config.sim_data
  data_dir = sim_dataset_dir(config, workdir)
  version_dir = dataset_version_dir(data_dir, s.suite)
  if is_main_process() and not os.path.exists(os.path.join(version_dir, "dataset_info.json")):
    partial = data_dir.rstrip("/") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.dirname(partial) or ".", exist_ok=True)
    cmd = [sys.executable, "-m", "lamp_jax.sim.generate", f"--suite={s.suite}", f"--episodes={int(s.episodes)}",
           f"--out={partial}", *generation_flags(config)]
    print(f"[train] generating the simulator dataset: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True)
    if os.path.exists(data_dir):
      shutil.rmtree(data_dir)
    os.rename(partial, data_dir)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("lamp_jax_sim_dataset")
  if not os.path.exists(os.path.join(version_dir, "dataset_info.json")):
    raise FileNotFoundError(f"simulator dataset missing at {version_dir} (config field sim_data.out_dir)")
  return version_dir


def point_data_config_at(config: ml_collections.ConfigDict, version_dir: str) -> None:
  """Writes the generated dataset's directory into the (first) pipeline dataset entry, and into the stages'
  ``data_overrides.datasets`` entries of the same dataset that name no directory (e.g. a stage reading another
  episode subset of the generated data: latent-action pretraining's action-free episodes)."""
  with config.unlocked():
    first = config.data.pipeline.datasets[0]
    first.data_dir = version_dir
    for stage in config.stages.values():
      for entry in stage.data_overrides.get("datasets", ()):
        if entry.name == first.name and not entry.data_dir:
          entry.data_dir = version_dir


# ---------------------------------------------------------------------------------------- prerequisites --


def ensure_prerequisites(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Trains every ``config.prerequisites`` run that has no complete report yet (resuming it when interrupted),
  then writes each into ``config`` (its init entry's path, its ``report_fields``). Returns {name: report}."""
  reports = {}
  for name, entry in prerequisites_lib.active(config).items():
    directory = prerequisites_lib.run_dir(name, entry, workdir)
    report = prerequisites_lib.finished_report(directory, entry.config)
    if report is None:
      if is_main_process():
        print(f"[train] prerequisite {name!r}: training it in {directory}", flush=True)
      run(entry.config, directory)
      report = prerequisites_lib.finished_report(directory, entry.config)
      if report is None:
        raise RuntimeError(f"prerequisite {name!r} (config field prerequisites.{name}) finished without a complete "
                           f"{prerequisites_lib.REPORT_FILE} in {directory}: its model library must report "
                           "(ModelLibrary.report)")
    elif is_main_process():
      print(f"[train] prerequisite {name!r}: done in {directory}", flush=True)
    prerequisites_lib.apply(config, name, entry, directory, report)
    reports[name] = report
  return reports


def write_report(trainer: trainer_lib.Trainer, state, workdir: str) -> dict | None:
  """The library's held-out figures of the trained (EMA) parameters (``ModelLibrary.report``) in report.json, its
  image rows in plots/report.png; None when the library reports nothing."""
  lib = trainer.lib
  if not lib.report_batches:
    return None
  cfg = trainer.config
  model_cfg = trainer.stage(len(cfg.stage_order) - 1).model_cfg
  params = host_params(state.ema_params if state.ema_params is not None else state.params)
  if cfg.data.kind == "pipeline":
    from lamp_jax.data import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top

    data_cfg = trainer.data.stage_data_config(cfg.stage_order[-1])
    iterator = pipeline_lib.make_val_iterator(data_cfg, seed=int(cfg.seed))
    try:
      batches = [next(iterator) for _ in range(int(lib.report_batches))]
    finally:
      iterator.close()
  else:
    batches = [lib.dummy_batch(model_cfg, trainer.local_batch_size, 10_000 + i) for i in range(lib.report_batches)]
  if not is_main_process():
    return None
  report = lib.report(model_cfg, params, batches, workdir)
  if report is None:
    return None
  rows = report.pop("image_rows", None)
  if rows:
    from lamp_jax.eval import plots  # pylint: disable=g-import-not-at-top

    report["plot"] = plots.image_rows(rows, os.path.join(workdir, "plots", "report.png"),
                                      title=f"{lib.name}: held-out examples")
  report["step"] = int(jax.device_get(state.step))
  path = os.path.join(workdir, prerequisites_lib.REPORT_FILE)
  with open(path + ".tmp", "w") as fh:
    json.dump(report, fh, indent=1)
  os.replace(path + ".tmp", path)
  print(f"[train] {lib.name} report: " + ", ".join(f"{k}={v:.4g}" for k, v in report.items()
                                                    if isinstance(v, float)), flush=True)
  return report


# ----------------------------------------------------------------------------------------- grounding ----


def ground_encoder(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage 0 (``training/grounding.py``; reused when the workdir holds it), then the init entry 'grounding' that
  starts model.vlm from its encoder. Returns stage 0's result (held-out accuracy)."""
  from lamp_jax.sim import grounding as grounding_data  # pylint: disable=g-import-not-at-top
  from lamp_jax.training import defaults  # pylint: disable=g-import-not-at-top
  from lamp_jax.training import grounding  # pylint: disable=g-import-not-at-top
  from lamp_jax.training import pretrained  # pylint: disable=g-import-not-at-top

  def load_scenes(num_scenes, image_size, cameras, progress):
    return grounding_data.load_or_render(num_scenes, image_size, cameras, progress=progress)

  model_cfg = defaults.stage_model_config(config, config.stage_order[0])
  out = grounding.run(config, model_cfg, workdir, load_scenes, grounding_data.ROLES)
  if is_main_process():
    print(f"[train] grounding stage 0: held-out {json.dumps(out['result']['heldout'])}", flush=True)
  with config.unlocked():
    if config.get("init", None) is None:
      config.init = ml_collections.ConfigDict()
    config.init.grounding = pretrained.init_entry("params_npz", "vlm", out["params_path"])
  return out["result"]


def check_grounding_drift(trainer: trainer_lib.Trainer, state, workdir: str) -> dict | None:
  """Stage 0's held-out keypoint evaluation on the trained policy's (EMA) 'vlm' next to the stage-0 encoder
  (``lamp_jax.eval.grounding_drift``): printed and written to ``<workdir>/grounding/after_policy.json``."""
  from lamp_jax.eval import grounding_drift  # pylint: disable=g-import-not-at-top

  cfg = trainer.config
  use_ema = bool(cfg.eval.use_ema) and state.ema_params is not None
  vlm = host_params((state.ema_params if use_ema else state.params)["vlm"])
  if not is_main_process():
    return None
  result = grounding_drift.drift(cfg, vlm, grounding_drift.stage0_file(workdir))
  result.update(step=int(jax.device_get(state.step)), params="ema_params" if use_ema else "params")
  path = os.path.join(workdir, "grounding", grounding_drift.AFTER_POLICY_FILE)
  with open(path + ".tmp", "w") as fh:
    json.dump(result, fh, indent=1)
  os.replace(path + ".tmp", path)
  print("[train] grounding after the policy stages (held-out RMSE px, stage 0 -> now): " + ", ".join(
      f"{key} {(result['stage0'] or {}).get(key, {}).get('rmse_px', float('nan')):.2f} -> {value['rmse_px']:.2f}"
      for key, value in result["checkpoint"].items()), flush=True)
  return result


# ------------------------------------------------------------------------------------------- evaluation --


def host_params(tree: Any) -> Any:
  """Every process's copy of a (possibly sharded across processes) tree, as numpy arrays."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def evaluate_state(trainer: trainer_lib.Trainer, state, episodes_per_task: int | None = None,
                   video_dir: str | None = None) -> dict | None:
  """Closed-loop success of the state's (EMA) parameters on ``eval.suite``; result dict on process 0."""
  from lamp_jax.eval import checkpoint_policy
  from lamp_jax.eval import sim_eval

  cfg = trainer.config
  use_ema = bool(cfg.eval.use_ema) and state.ema_params is not None
  params = host_params(state.ema_params if use_ema else state.params)
  if not is_main_process():
    return None
  policy = checkpoint_policy.CheckpointPolicy.from_params(
      cfg, params, trainer.norm_stats_json(), seed=int(cfg.eval.seed))
  kwargs = {}
  if int(cfg.eval.execute_steps) > 0:
    kwargs["execute_steps"] = int(cfg.eval.execute_steps)
  return sim_eval.evaluate(policy, suite=str(cfg.eval.suite),
                           episodes_per_task=int(episodes_per_task or cfg.eval.episodes_per_task),
                           video_dir=video_dir, progress=bool(cfg.logging.progress_bar), **kwargs)


def periodic_eval(trainer: trainer_lib.Trainer, state, step: int) -> dict:
  result = evaluate_state(trainer, state, episodes_per_task=int(trainer.config.eval.periodic_episodes_per_task))
  if result is None:
    return {}
  scalars = {"mean_success": result["mean_success"]}
  scalars.update({f"success/{task}": r["success_rate"] for task, r in result["per_task"].items()})
  scalars.update({f"outcome/{task}/{label}": n / r["episodes"]  # how the episodes ended (eval/failure_modes.py)
                  for task, r in result["per_task"].items() for label, n in r.get("outcomes", {}).items()})
  print(f"[eval] step {step}: mean success {result['mean_success']:.3f}", flush=True)
  return scalars


def format_table(results: dict[str, dict]) -> str:
  """Per-task success with 95 % CIs, one column per run: {run name: sim_eval.evaluate result}."""
  names = list(results)
  tasks = stats.tasks_of(results)

  def cell(r, t):
    if t not in r["per_task"]:
      return "-"
    p = r["per_task"][t]
    lo, hi = p["ci95"]
    return f"{100 * p['success_rate']:5.1f} [{100 * lo:4.1f}, {100 * hi:5.1f}]"

  width = max(24, *(len(n) for n in names))
  head = f"{'task':<16}" + "".join(f" | {n:<{width}}" for n in names)
  lines = [head, "-" * len(head)]
  for t in tasks:
    lines.append(f"{t:<16}" + "".join(f" | {cell(results[n], t):<{width}}" for n in names))
  lines.append("-" * len(head))
  mean = []
  for n in names:
    r = results[n]
    lo, hi = r["ci95"]
    mean.append(f"{100 * r['mean_success']:5.1f} [{100 * lo:4.1f}, {100 * hi:5.1f}]")
  lines.append(f"{'mean':<16}" + "".join(f" | {m:<{width}}" for m in mean))
  lines.append("success % [95 % Wilson CI]; mean CI over all episodes; "
               + ", ".join(f"{n}: {results[n]['episodes_per_task']} episodes/task" for n in names))
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- run --


def _load_json(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as fh:
    return json.load(fh)


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Every check that needs no data, before any work (``preflight.ConfigError`` naming the field): the run config
  (``training/preflight.py``: every stage), the generation flags, the tokenizer and -- for a workdir without
  checkpoints, which starts fresh -- the files of ``config.init``."""
  checked, filled_later = _with_prerequisites_filled_in(config, workdir)
  preflight.check_run_config(checked)
  if config.sim_data.enabled:
    try:
      generation_flags(config)
    except ValueError as e:
      raise preflight.ConfigError(str(e)) from None
  fresh = not os.path.isdir(os.path.join(os.path.abspath(workdir), "checkpoints"))
  with checked.unlocked():
    for name in filled_later:  # their files are written by the prerequisite's run, after these checks
      del checked.init[name]
  preflight.check_files(checked, fresh=fresh)
  for name, entry in prerequisites_lib.active(config).items():
    try:
      preflight.check_run_config(entry.config)
    except preflight.ConfigError as e:
      raise preflight.ConfigError(f"prerequisite {name!r} (config field prerequisites.{name}.config): {e}") from None


def _with_prerequisites_filled_in(config: ml_collections.ConfigDict,
                                  workdir: str) -> tuple[ml_collections.ConfigDict, list[str]]:
  """(a copy of ``config`` as its prerequisites will leave it, the init entries they fill in): each prerequisite's
  init path is its run directory and its report fields hold the finished report's values, or 1 where it has not
  run yet (a stand-in of the field's type: the checks are about structure, not these values)."""
  checked = copy.deepcopy(config)
  filled = []
  for name, entry in prerequisites_lib.active(config).items():
    directory = prerequisites_lib.run_dir(name, entry, workdir)
    report = prerequisites_lib.finished_report(directory, entry.config) or {}
    stand_in = {key: report.get(key, 1) for _, key in entry.report_fields}
    prerequisites_lib.apply(checked, name, entry, directory, stand_in)
    if entry.init:
      filled.append(str(entry.init))
  return checked, filled


def run(config: ml_collections.ConfigDict, workdir: str, stop_after_step: int | None = None) -> dict:
  """Checks -> data (if configured) -> stages -> final evaluation (if configured) -> table + plots. Returns a
  summary."""
  workdir = os.path.abspath(workdir)
  check_config(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if config.sim_data.enabled:
    point_data_config_at(config, ensure_sim_dataset(config, workdir))
  ensure_prerequisites(config, workdir)
  if config.get("grounding", None) is not None and config.grounding.enabled:
    ground_encoder(config, workdir)
  eval_fn = periodic_eval if (config.eval.enabled and int(config.eval.every_steps) > 0) else None
  trainer = trainer_lib.Trainer(config, workdir, eval_fn=eval_fn, measure_matmul_roof=roofline.measure_matmul_roof)
  try:
    state = trainer.train(until_step=stop_after_step)
    step = int(jax.device_get(state.step))
    summary: dict[str, Any] = {"final_step": step}
    if step < trainer.total_steps:
      return {"summary": summary}
    result = None
    results_path = os.path.join(workdir, "eval_results.json")
    previous = _load_json(results_path)
    if previous is not None and previous.get("step") == step and previous.get("suite") == config.eval.suite:
      result = previous  # Rerunning a finished command: the final evaluation is already there.
      print(f"[train] run complete at step {step}; evaluation from {results_path}", flush=True)
    elif config.eval.enabled:
      result = evaluate_state(trainer, state, video_dir=os.path.join(workdir, "videos")
                              if int(config.eval.videos) else None)
    if config.get("grounding", None) is not None and config.grounding.enabled:
      check_grounding_drift(trainer, state, workdir)
    if trainer.lib.report_batches and prerequisites_lib.finished_report(workdir, config) is None:
      report = write_report(trainer, state, workdir)
      if report is not None:
        summary["report"] = {k: v for k, v in report.items() if isinstance(v, (int, float))}
  finally:
    trainer.close()
  if is_main_process():
    from lamp_jax.eval import plots

    if result is not None:
      result["step"] = step
      with open(results_path + ".tmp", "w") as fh:
        json.dump(result, fh, indent=1)
      os.replace(results_path + ".tmp", results_path)
      print(format_table({os.path.basename(workdir): result}), flush=True)
      if "episode_outcomes" in result:  # simulator results: how the episodes ended (eval/failure_modes.py)
        from lamp_jax.eval import failure_modes

        print("[eval] outcomes per task:\n" + failure_modes.format_outcomes(result), flush=True)
      summary.update(mean_success=result["mean_success"], ci95=result["ci95"])
    summary["plots"] = plots.write_run_plots(workdir)
  return {"summary": summary, "eval": result}


