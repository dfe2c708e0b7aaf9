r"""Every method of the family on one benchmark, at the same budget, data and seeds: one table.

  python -m lamp_jax.ablate --methods=lamp,no_motion,pi0 --seeds=3 --workdir=workdir/ablate
  python -m lamp_jax.ablate --methods=all --seeds=3 --workdir=workdir/ablate --budget=smoke   # minutes: a dry run

For each (method, seed) the run lives in ``<workdir>/<method>/seed<k>``: it is trained and evaluated with
``python -m lamp_jax.train --config=<suite config>:<variant> --config.seed=<k>`` (a subprocess per run), resumed
when interrupted, or collected when it has already finished (its ``eval_results.json`` holds the final step).
The suite config (``--suite_config``, default ``configs/sim.py``, the built-in ``tabletop4`` benchmark) declares its
methods in ``ABLATION_METHODS = {method: (variant, smoke variant)}``; the variants of one suite share data,
step budget and evaluation. A requested method the suite does not declare (not built yet) is listed as missing.
Extra ``--config.<field>=<value>`` overrides go to every method whose config has the field (e.g.
``--config.init.lam.path=<LAM run>`` reaches only the methods that load a latent action model); the others are
named in the log, and an override no requested method has is an error.

Prints, per method: success per task family and the mean with 95 % Wilson intervals over every (seed, episode)
trial, the mean and spread of the per-seed means, training wall time, final loss terms; and for each method the
difference of its mean success to the first method's with a 95 % interval (Newcombe's score interval for two
independent proportions); how each method's episodes ended (``eval/failure_modes.py``, summed over seeds). Writes
``<workdir>/ablation.json``, ``<workdir>/ablation_success.png`` and ``<workdir>/ablation_outcomes.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

from lamp_jax.eval import failure_modes
from lamp_jax.eval import plots
from lamp_jax.eval import stats
from lamp_jax.training import metrics as metrics_lib

# Every method of the family, in table order; a suite config declares those it has.
FAMILY = ("lamp", "no_motion", "pi0", "motion_image", "pi0_motion_image", "lam", "small_labelled",
          "latent_pretraining", "pi0_small_labelled", "pi0_latent_pretraining", "lara",
          "lara_frozen_lam", "lafp", "lafp_bc")


def load_suite(path: str) -> tuple[dict, str]:
  """(``ABLATION_METHODS`` of the suite config file, its path)."""
  methods, _ = _suite_module(path)
  return methods, path


def _suite_module(path: str):
  """(``ABLATION_METHODS``, the imported suite config module)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--suite_config {path} does not exist")
  spec = importlib.util.spec_from_file_location("_lamp_ablate_suite", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  methods = vars(module).get("ABLATION_METHODS")
  if not isinstance(methods, dict):
    raise ValueError(f"{path} declares no ABLATION_METHODS = {{method: (variant, smoke variant)}}")
  return methods, module


def _has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, IndexError):
      return False
  return True


def overrides_per_method(suite_config: str, variants: dict[str, str], extra: list[str]) -> dict[str, list[str]]:
  """The ``--config.<field>=<value>`` overrides each method's run gets: those whose field its variant's config has.

  One command trains methods whose configs differ (only the LAM-based ones have ``init.lam.path``): an override is
  passed to every method that has the field and named, per method, where it is not passed. An override that no
  requested method has is an error (a typo would otherwise change nothing), raised before anything trains.
  ``variants``: {method: variant of the suite config}."""
  if not extra:
    return {m: [] for m in variants}
  _, module = _suite_module(suite_config)
  get_config = getattr(module, "get_config", None)
  if get_config is None:
    raise ValueError(f"{suite_config} has no get_config(variant): cannot check the overrides {extra}")
  fields = {}
  for arg in extra:
    field = arg[len("--config."):].split("=", 1)[0]
    if not field:
      raise ValueError(f"override {arg!r} names no config field")
    fields[arg] = field
  configs = {m: get_config(v) for m, v in variants.items()}
  routed = {m: [a for a in extra if _has_field(c, fields[a])] for m, c in configs.items()}
  unused = [a for a in extra if not any(a in r for r in routed.values())]
  if unused:
    raise ValueError(f"no requested method's config has the field of {unused} (methods: {sorted(variants)}; "
                     f"suite {suite_config})")
  return routed


def run_dir(workdir: str, method: str, seed: int) -> str:
  return os.path.join(workdir, method, f"seed{seed}")


def _finished(directory: str) -> dict | None:
  path = os.path.join(directory, "eval_results.json")
  if not os.path.exists(path):
    return None
  with open(path) as fh:
    return json.load(fh)


def train_and_evaluate(suite_config: str, variant: str, seed: int, directory: str, extra: list[str]) -> float:
  """Runs (or resumes) one training command; returns its wall time in seconds (added to earlier attempts)."""
  os.makedirs(directory, exist_ok=True)
  cmd = [sys.executable, "-m", "lamp_jax.train", f"--config={suite_config}:{variant}" if variant else
         f"--config={suite_config}", f"--config.seed={seed}", f"--workdir={directory}", *extra]
  print(f"[ablate] {' '.join(cmd[1:])}", flush=True)
  start = time.perf_counter()
  subprocess.run(cmd, check=True)
  seconds = time.perf_counter() - start
  timing_path = os.path.join(directory, "ablate_wall_time.json")
  previous = json.load(open(timing_path)) if os.path.exists(timing_path) else {"seconds": 0.0}
  total = float(previous["seconds"]) + seconds
  with open(timing_path, "w") as fh:
    json.dump({"seconds": total}, fh)
  return total


def final_losses(directory: str) -> dict[str, float]:
  """The last logged value of every 'loss*' metric of a run (per stage the loss terms differ: the last non-zero)."""
  out: dict[str, float] = {}
  for row in metrics_lib.read_jsonl(os.path.join(directory, "metrics.jsonl")):
    if row.get("split") != "train":
      continue
    for key, value in row.items():
      if key.startswith("loss") and isinstance(value, (int, float)) and value != 0:
        out[key] = float(value)
  return out


def pooled(results: list[dict]) -> dict:
  """One evaluation result over several seeds' results: successes and episodes summed per task."""
  per_task: dict[str, dict] = {}
  for result in results:
    for task, r in result["per_task"].items():
      p = per_task.setdefault(task, {"successes": 0, "episodes": 0, "outcomes": {}})
      p["successes"] += int(r["successes"])
      p["episodes"] += int(r["episodes"])
      for label, n in r.get("outcomes", {}).items():  # how the episodes ended (eval/failure_modes.py)
        p["outcomes"][label] = p["outcomes"].get(label, 0) + int(n)
  for task, p in per_task.items():
    counted = sum(p["outcomes"].values())
    if counted != p["episodes"]:  # results written before outcomes were recorded: leave the counts out
      p.pop("outcomes")
    else:
      p["outcomes"] = {label: p["outcomes"][label] for label in failure_modes.OUTCOMES if label in p["outcomes"]}
    p["success_rate"] = p["successes"] / p["episodes"]
    p["ci95"] = [round(v, 4) for v in stats.wilson_interval(p["successes"], p["episodes"])]
  successes = sum(p["successes"] for p in per_task.values())
  episodes = sum(p["episodes"] for p in per_task.values())
  seed_means = [float(r["mean_success"]) for r in results]
  return {
      "per_task": per_task,
      "mean_success": float(np.mean([p["success_rate"] for p in per_task.values()])),
      "ci95": [round(v, 4) for v in stats.wilson_interval(successes, episodes)],
      "successes": successes, "episodes": episodes,
      "episodes_per_task": sum(int(r["episodes_per_task"]) for r in results),
      "seed_means": seed_means, "seed_mean_std": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else 0.0,
  }


def format_table(summary: dict) -> str:
  methods = [m for m in summary["methods"] if summary["methods"][m]["status"] == "done"]
  tasks = stats.tasks_of({m: summary["methods"][m]["pooled"] for m in methods})
  lines = []
  width = 22

  def cell(p):
    lo, hi = p["ci95"]
    return f"{100 * p['success_rate']:5.1f} [{100 * lo:4.1f},{100 * hi:5.1f}]"

  head = f"{'':<24}" + "".join(f" | {t:<{width}}" for t in tasks) + f" | {'mean':<{width}}"
  lines += [head, "-" * len(head)]
  for m in methods:
    r = summary["methods"][m]
    p = r["pooled"]
    row = f"{m:<24}" + "".join(f" | {cell(p['per_task'][t]) if t in p['per_task'] else '-':<{width}}" for t in tasks)
    lo, hi = p["ci95"]
    row += f" | {100 * p['mean_success']:5.1f} [{100 * lo:4.1f},{100 * hi:5.1f}]"
    lines.append(row)
  lines.append("-" * len(head))
  for m in methods:
    r = summary["methods"][m]
    p = r["pooled"]
    diff = r.get("difference_to_first")
    diff_text = (f"{100 * diff['difference']:+.1f} [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}] "
                 f"vs {methods[0]}") if diff else ""
    seeds = ", ".join(f"{100 * s:.1f}" for s in p["seed_means"])
    lines.append(f"{m}: seeds {len(p['seed_means'])} (means {seeds}; std {100 * p['seed_mean_std']:.1f}), "
                 f"{p['episodes']} episodes, train wall {r['wall_minutes']:.1f} min (mean per seed) {diff_text}")
    if r["final_losses"]:
      lines.append("    final " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(r["final_losses"].items())))
    if all("outcomes" in t for t in p["per_task"].values()):
      lines.append("    ended: " + failure_modes.format_outcomes(p).replace("\n", "; "))
  for m, r in summary["methods"].items():
    if r["status"] != "done":
      lines.append(f"{m}: {r['status']}")
  lines.append("success % [95 % Wilson CI] over every (seed, episode); difference: Newcombe 95 % interval")
  return "\n".join(lines)


def ablate(methods: list[str], seeds: int, workdir: str, suite_config: str, budget: str, extra: list[str],
           collect_only: bool = False) -> dict:
  declared, suite_config = load_suite(suite_config)
  workdir = os.path.abspath(workdir)
  summary = {"suite_config": suite_config, "budget": budget, "seeds": seeds, "methods": {}}
  variants = {m: declared[m][1 if budget == "smoke" else 0] for m in methods if m in declared}
  routed = overrides_per_method(suite_config, variants, [] if collect_only else extra)
  for method in methods:
    if method not in declared:
      summary["methods"][method] = {"status": f"missing: {suite_config} declares no variant for it (not built "
                                              f"yet; declared: {sorted(declared)})"}
      continue
    variant = variants[method]
    skipped = [a for a in extra if a not in routed[method]] if not collect_only else []
    if skipped:
      print(f"[ablate] {method}: not passed (its config has no such field): {' '.join(skipped)}", flush=True)
    results, walls, losses = [], [], {}
    for seed in range(seeds):
      directory = run_dir(workdir, method, seed)
      result = _finished(directory)
      if result is None and not collect_only:
        train_and_evaluate(suite_config, variant, seed, directory, routed[method])
        result = _finished(directory)
      if result is None:
        break
      results.append(result)
      timing = os.path.join(directory, "ablate_wall_time.json")
      walls.append(json.load(open(timing))["seconds"] if os.path.exists(timing) else float("nan"))
      for key, value in final_losses(directory).items():
        losses.setdefault(key, []).append(value)
    if len(results) < seeds:
      summary["methods"][method] = {"status": f"incomplete: {len(results)} of {seeds} seeds evaluated"}
      continue
    summary["methods"][method] = {
        "status": "done", "variant": variant, "overrides": routed[method], "pooled": pooled(results),
        "wall_minutes": float(np.nanmean(walls)) / 60 if not np.all(np.isnan(walls)) else float("nan"),
        "final_losses": {k: float(np.mean(v)) for k, v in losses.items()},
    }
  done = [m for m in summary["methods"] if summary["methods"][m]["status"] == "done"]
  if done:
    first = summary["methods"][done[0]]["pooled"]
    for m in done[1:]:
      p = summary["methods"][m]["pooled"]
      low, high = stats.difference_interval(p["successes"], p["episodes"], first["successes"], first["episodes"])
      summary["methods"][m]["difference_to_first"] = {
          "difference": p["successes"] / p["episodes"] - first["successes"] / first["episodes"],
          "ci95": [round(low, 4), round(high, 4)]}
    summary["plot"] = plots.success_per_task({m: summary["methods"][m]["pooled"] for m in done},
                                             os.path.join(workdir, "ablation_success.png"),
                                             title=f"{len(done)} methods, {seeds} seeds")
    outcomes_png = plots.outcomes_per_task({m: summary["methods"][m]["pooled"] for m in done},
                                           os.path.join(workdir, "ablation_outcomes.png"))
    if outcomes_png:
      summary["outcomes_plot"] = outcomes_png
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "ablation.json"), "w") as fh:
    json.dump(summary, fh, indent=1)
  return summary


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--methods", default="all", help=f"comma-separated, or 'all' ({', '.join(FAMILY)})")
  p.add_argument("--seeds", type=int, default=3, help="training seeds per method (0 .. seeds - 1)")
  p.add_argument("--workdir", required=True, help="runs go to <workdir>/<method>/seed<k>")
  p.add_argument("--suite_config", default="configs/sim.py", help="the benchmark's config (ABLATION_METHODS)")
  p.add_argument("--budget", default="default", choices=["default", "smoke"],
                 help="'smoke': each method's smoke variant (tiny models, a few steps: proves the table end to end)")
  p.add_argument("--collect_only", action="store_true", help="train nothing: tabulate the finished runs")
  args, extra = p.parse_known_args(argv)
  bad = [a for a in extra if not a.startswith("--config.")]
  if bad:
    p.error(f"unrecognized arguments: {' '.join(bad)} (only --config.<field>=<value> overrides are passed on)")
  methods = list(FAMILY) if args.methods == "all" else [m for m in args.methods.split(",") if m]
  if args.seeds < 1:
    p.error("--seeds must be >= 1")
  summary = ablate(methods, args.seeds, args.workdir, args.suite_config, args.budget, extra, args.collect_only)
  print(format_table(summary))
  print(f"written: {os.path.join(os.path.abspath(args.workdir), 'ablation.json')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
