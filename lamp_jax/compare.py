r"""Side-by-side closed-loop success of several runs (e.g. LaMP vs the w/o-motion ablation).

  python -m lamp_jax.compare --workdirs=/tmp/lamp_sim,/tmp/lamp_sim_no_motion [--names=LaMP,w/o\ motion]
      [--out=/tmp/compare.png] [--json]

Reads each workdir's ``eval_results.json`` (written by ``python -m lamp_jax.train`` after training), prints
the per-task table with 95 % CIs and how each run's episodes ended (``eval/failure_modes.py``), and writes a
grouped bar plot of success and a stacked bar plot of the outcomes (``compare_outcomes.png`` beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def load_results(workdirs: list[str], names: list[str] | None = None) -> dict[str, dict]:
  names = names or [os.path.basename(os.path.abspath(w)) for w in workdirs]
  if len(names) != len(workdirs):
    raise ValueError(f"--names has {len(names)} entries for {len(workdirs)} workdirs")
  out = {}
  for name, workdir in zip(names, workdirs):
    path = os.path.join(workdir, "eval_results.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} does not exist: run `python -m lamp_jax.train ... --workdir={workdir}` "
                              "with evaluation enabled first")
    with open(path) as fh:
      out[name] = json.load(fh)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdirs", required=True, help="comma-separated run workdirs")
  p.add_argument("--names", default="", help="comma-separated column names (default: workdir basenames)")
  p.add_argument("--out", default="", help="PNG path of the grouped success plot ('' = next to the first run)")
  p.add_argument("--json", action="store_true", help="print the table as JSON instead of text")
  args = p.parse_args(argv)
  workdirs = [w for w in args.workdirs.split(",") if w]
  names = [n for n in args.names.split(",") if n] or None
  from lamp_jax import experiment
  from lamp_jax.eval import failure_modes
  from lamp_jax.eval import plots

  results = load_results(workdirs, names)
  out = args.out or os.path.join(workdirs[0], "plots", "compare_success.png")
  plots.success_per_task(results, out, title="closed-loop success: " + " vs ".join(results))
  outcomes_png = plots.outcomes_per_task(results, os.path.join(os.path.dirname(out), "compare_outcomes.png"))
  if args.json:
    print(json.dumps({n: {"mean_success": r["mean_success"], "ci95": r["ci95"],
                          "per_task": {t: {"success_rate": v["success_rate"], "ci95": v["ci95"],
                                           **({"outcomes": v["outcomes"]} if "outcomes" in v else {})}
                                       for t, v in r["per_task"].items()}} for n, r in results.items()},
                     indent=1))
  else:
    print(experiment.format_table(results))
    for name, r in results.items():
      if any("outcomes" in v for v in r["per_task"].values()):
        print(f"\nhow the episodes of {name} ended:\n" + failure_modes.format_outcomes(r))
    print(f"plot: {out}" + (f", {outcomes_png}" if outcomes_png else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
