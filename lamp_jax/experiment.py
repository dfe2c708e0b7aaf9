"""One experiment end to end: (generate the simulator dataset) -> train the stages -> (closed-loop eval) ->
success table + plots. Called by ``python -m lamp_jax.train``.

Outputs in the workdir: ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``eval_results.json`` (final
closed-loop evaluation), ``plots/loss_curves.png`` and ``plots/success_per_task.png``.
"""

from __future__ import annotations

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
  extra = [str(f) for f in config.sim_data.extra_flags]
  for flag in extra:
    if flag.split("=")[0] in ("--image-size", "--num-points", "--flow-steps"):
      raise ValueError(f"config field sim_data.extra_flags: {flag} is derived from data.pipeline (image_size, "
                       "scene_flow_num_points, scene_flow_horizon); set it there instead")
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
  """Writes the generated dataset's directory into the (first) pipeline dataset entry."""
  with config.unlocked():
    config.data.pipeline.datasets[0].data_dir = version_dir


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
  preflight.check_run_config(config)
  if config.sim_data.enabled:
    try:
      generation_flags(config)
    except ValueError as e:
      raise preflight.ConfigError(str(e)) from None
  preflight.check_files(config, fresh=not os.path.isdir(os.path.join(os.path.abspath(workdir), "checkpoints")))


def run(config: ml_collections.ConfigDict, workdir: str, stop_after_step: int | None = None) -> dict:
  """Checks -> data (if configured) -> stages -> final evaluation (if configured) -> table + plots. Returns a
  summary."""
  workdir = os.path.abspath(workdir)
  check_config(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if config.sim_data.enabled:
    point_data_config_at(config, ensure_sim_dataset(config, workdir))
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
      summary.update(mean_success=result["mean_success"], ci95=result["ci95"])
    summary["plots"] = plots.write_run_plots(workdir)
  return {"summary": summary, "eval": result}


