r"""Compare probe reports over training seeds: mean and 95 % t-interval per variant, Welch differences.

  python -m lamp_jax.probe.compare \
      --group=single=RUN_single_s0/probe,RUN_single_s1/probe,RUN_single_s2/probe \
      --group=mvp=RUN_mvp_s0/probe,RUN_mvp_s1/probe,RUN_mvp_s2/probe \
      --difference=mvp,single [--format=markdown]

Each PATH is a ``report.json`` written by ``python -m lamp_jax.probe --out=DIR`` (or its directory): one trained
LAM (one training seed) each. Per run the headline numbers of the report's 'summary' are read (``METRICS``: MI in
bits by estimator, already the mean over the probe's own estimator seeds; held-out linear-probe NMSE; code
perplexity ...); per group the mean over runs and the half-width of the 95 % Student t-interval (spread across
training seeds, which is the paper's "mean ± CI over seeds"); per ``--difference=A,B`` the difference A - B of the
group means with its 95 % Welch interval (unequal variances). Default differences: every group minus the first.

Runs are comparable only when probed the same way (KSG, for one, depends on how rows were sampled:
docs/probing.md), so the reports' 'config' sections (methods, seeds, estimator settings, max_rows_per_episode)
must be equal; ``--allow_config_mismatch`` turns that error into a listed warning in the output. A metric must be
present in every run of a group or in none (a run probed without BA next to runs with BA is an error naming the
file). Prints JSON (``--format=json``, the default) or markdown tables.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats as scipy_stats

REPORT_FILE = "report.json"


def t_interval(values: Sequence[float | None]) -> tuple[float, float]:
  """(mean, half-width of the 95 % Student t-interval) of the finite entries of ``values`` (one per seed).

  None and non-finite entries are left out; the half-width is nan for fewer than 2 values, the mean nan for none.
  """
  finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  if finite.size == 0:
    return float("nan"), float("nan")
  if finite.size < 2:
    return float(finite.mean()), float("nan")
  half = scipy_stats.t.ppf(0.975, finite.size - 1) * finite.std(ddof=1) / math.sqrt(finite.size)
  return float(finite.mean()), float(half)


def welch_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
  """(mean(a) - mean(b), half-width of its 95 % Welch t-interval): two groups of seeds, unequal variances.

  Needs at least 2 values per group (raises ValueError otherwise); two groups without spread give half-width 0.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.size < 2 or b.size < 2:
    raise ValueError(f"Welch's interval needs at least 2 values per group, got {a.size} and {b.size}")
  var_a, var_b = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  if var_a + var_b == 0.0:
    return float(a.mean() - b.mean()), 0.0
  dof = (var_a + var_b) ** 2 / (var_a ** 2 / (a.size - 1) + var_b ** 2 / (b.size - 1))
  return float(a.mean() - b.mean()), float(scipy_stats.t.ppf(0.975, dof) * math.sqrt(var_a + var_b))


def _mi(method: str, field: str) -> Callable[[Mapping[str, Any]], float | None]:
  return lambda summary: summary.get("mi_bits", {}).get(method, {}).get(field)


# name -> (reads the value from a report's 'summary', what it is). Higher MI / lower NMSE = more action-centric.
METRICS: dict[str, tuple[Callable[[Mapping[str, Any]], float | None], str]] = {
    "ksg_bits": (_mi("ksg", "mean"), "I(z; a), KSG, bits"),
    "ba_bits": (_mi("ba", "mean"), "I(z; a), Barber-Agakov lower bound, bits"),
    "mine_bits": (_mi("mine", "mean"), "I(z; a), MINE (Donsker-Varadhan), bits"),
    "ksg_mismatch_bits": (_mi("ksg", "mismatch_mean"), "KSG on shuffled pairs (sanity: about 0)"),
    "ba_mismatch_bits": (_mi("ba", "mismatch_mean"), "BA on shuffled pairs"),
    "mine_mismatch_bits": (_mi("mine", "mismatch_mean"), "MINE on shuffled pairs"),
    "nmse_heldout": (lambda s: s.get("nmse_heldout"), "linear probe z -> a, held-out NMSE"),
    "inverse_nmse_heldout": (lambda s: s.get("inverse_nmse_heldout"), "inverse probe a -> z, held-out NMSE"),
    "perplexity": (lambda s: s.get("perplexity"), "code perplexity"),
    "latent_entropy_bits": (lambda s: s.get("latent_entropy_bits"), "entropy of whole latents (code tuples), bits"),
}


def report_path(path: str) -> str:
  """``path`` itself, or ``path/report.json`` for a directory; FileNotFoundError naming both otherwise."""
  candidate = os.path.join(path, REPORT_FILE) if os.path.isdir(path) else path
  if not os.path.isfile(candidate):
    raise FileNotFoundError(f"no probe report at {path!r} (expected a {REPORT_FILE} or a directory holding one, "
                            "as written by python -m lamp_jax.probe --out=DIR)")
  return candidate


def load_report(path: str) -> dict[str, Any]:
  """The report at ``path`` (file or directory); ValueError naming the file when it is not a probe report."""
  path = report_path(path)
  with open(path) as fh:
    try:
      report = json.load(fh)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not JSON ({e})") from None
  if not isinstance(report, dict) or "summary" not in report or "config" not in report:
    raise ValueError(f"{path}: not a probe report (no 'summary' / 'config'; "
                     "write one with python -m lamp_jax.probe --out=DIR)")
  report["_path"] = path
  return report


def _config_differences(reports: Sequence[Mapping[str, Any]]) -> list[str]:
  """'key: value in A vs value in B' for every top-level key of 'config' that differs from the first report's."""
  first = reports[0]
  lines = []
  for r in reports[1:]:
    for key in sorted(set(first["config"]) | set(r["config"])):
      if first["config"].get(key) != r["config"].get(key):
        lines.append(f"config.{key}: {first['config'].get(key)!r} in {first['_path']} vs "
                     f"{r['config'].get(key)!r} in {r['_path']}")
  return lines


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def compare_reports(groups: Mapping[str, Sequence[Mapping[str, Any]]],
                    differences: Sequence[tuple[str, str]] | None = None,
                    allow_config_mismatch: bool = False) -> dict[str, Any]:
  """Per group and metric the values over runs, their mean and t-interval half-width; Welch differences.

  Args:
    groups: label -> the loaded reports of its runs (``load_report``), one per training seed.
    differences: (A, B) label pairs, each giving A - B; None: every group minus the first.
    allow_config_mismatch: list differing probe settings under 'warnings' instead of raising.

  Returns:
    JSON-able dict: 'groups' {label: {'runs': [paths], 'metrics': {name: {'values', 'mean', 'half_width'}}}},
    'differences' [{'a', 'b', 'metric', 'difference', 'half_width', 'low', 'high'}], 'metrics' (descriptions),
    'warnings'.
  """
  if not groups:
    raise ValueError("no groups to compare")
  labels = list(groups)
  empty = [label for label in labels if not groups[label]]
  if empty:
    raise ValueError(f"groups without runs: {empty}")
  all_reports = [r for label in labels for r in groups[label]]
  warnings = _config_differences(all_reports)
  if warnings and not allow_config_mismatch:
    raise ValueError("the reports were probed with different settings, so their figures are not comparable:\n  "
                     + "\n  ".join(warnings) + "\n(pass allow_config_mismatch / --allow_config_mismatch to compare "
                     "anyway)")
  out_groups: dict[str, Any] = {}
  for label in labels:
    metrics = {}
    for name, (read, _) in METRICS.items():
      values = [read(r["summary"]) for r in groups[label]]
      present = [_is_number(v) for v in values]
      if not any(present):
        continue
      if not all(present):
        missing = [r["_path"] for r, ok in zip(groups[label], present) if not ok]
        raise ValueError(f"group {label!r}: metric {name!r} is in some runs but not in {missing} "
                         "(probe every run with the same --probe.methods)")
      mean, half = t_interval(values)
      metrics[name] = {"values": values, "mean": mean, "half_width": None if math.isnan(half) else half}
    out_groups[label] = {"runs": [r["_path"] for r in groups[label]], "metrics": metrics}
  pairs = [(label, labels[0]) for label in labels[1:]] if differences is None else list(differences)
  out_differences = []
  for a, b in pairs:
    for label in (a, b):
      if label not in out_groups:
        raise ValueError(f"difference {a},{b}: no group {label!r} (groups: {labels})")
    for name in METRICS:
      metric_a, metric_b = out_groups[a]["metrics"].get(name), out_groups[b]["metrics"].get(name)
      if metric_a is None or metric_b is None or len(metric_a["values"]) < 2 or len(metric_b["values"]) < 2:
        continue
      diff, half = welch_interval(metric_a["values"], metric_b["values"])
      out_differences.append({"a": a, "b": b, "metric": name, "difference": diff, "half_width": half,
                              "low": diff - half, "high": diff + half})
  return {"groups": out_groups, "differences": out_differences,
          "metrics": {name: description for name, (_, description) in METRICS.items()}, "warnings": warnings}


def _cell(mean: float, half: float | None) -> str:
  return f"{mean:.3g}" if half is None else f"{mean:.3g} ± {half:.2g}"


def markdown_tables(result: Mapping[str, Any]) -> str:
  """Two markdown tables: group x metric (mean ± half-width, runs), and the differences with their intervals."""
  names = [n for n in METRICS if any(n in g["metrics"] for g in result["groups"].values())]
  lines = ["| group | runs | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 2)]
  for label, group in result["groups"].items():
    cells = [_cell(group["metrics"][n]["mean"], group["metrics"][n]["half_width"]) if n in group["metrics"]
             else "–" for n in names]
    lines.append(f"| {label} | {len(group['runs'])} | " + " | ".join(cells) + " |")
  if result["differences"]:
    lines += ["", "| difference | metric | value | 95 % Welch interval |", "| --- | --- | --- | --- |"]
    for d in result["differences"]:
      lines.append(f"| {d['a']} − {d['b']} | {d['metric']} | {d['difference']:+.3g} | "
                   f"[{d['low']:+.3g}, {d['high']:+.3g}] |")
  for w in result["warnings"]:
    lines.append(f"\nwarning: {w}")
  return "\n".join(lines)


def parse_group(spec: str) -> tuple[str, list[str]]:
  """'LABEL=PATH[,PATH...]' -> (label, paths); ValueError naming the flag value otherwise."""
  label, sep, paths = spec.partition("=")
  paths_list = [p for p in paths.split(",") if p]
  if not sep or not label or not paths_list:
    raise ValueError(f"--group={spec!r}: expected LABEL=PATH[,PATH...]")
  return label, paths_list


def parse_difference(spec: str) -> tuple[str, str]:
  """'A,B' -> (A, B), meaning A - B."""
  parts = spec.split(",")
  if len(parts) != 2 or not all(parts):
    raise ValueError(f"--difference={spec!r}: expected A,B (two group labels; the difference is A - B)")
  return parts[0], parts[1]


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (module docstring); ``argv`` as sys.argv (None: sys.argv)."""
  from absl import app, flags

  group = flags.DEFINE_multi_string("group", None, "LABEL=PATH[,PATH...]: the probe reports of one variant, one "
                                    "per training seed (a report.json or the --out directory of the probe).")
  difference = flags.DEFINE_multi_string("difference", None, "A,B: report A - B with its 95 % Welch interval "
                                         "(repeatable; default: every group minus the first).")
  allow_mismatch = flags.DEFINE_bool("allow_config_mismatch", False,
                                     "Compare reports probed with different settings (listed under 'warnings').")
  output_format = flags.DEFINE_enum("format", "json", ["json", "markdown"], "Output format.")

  def run(args: Sequence[str]) -> None:
    if len(args) > 1:
      raise app.UsageError(f"unexpected arguments {list(args[1:])}")
    if not group.value:
      raise app.UsageError("at least one --group=LABEL=PATH[,PATH...] is required")
    groups: dict[str, list[dict]] = {}
    for spec in group.value:
      label, paths = parse_group(spec)
      if label in groups:
        raise app.UsageError(f"--group: label {label!r} given twice")
      groups[label] = [load_report(p) for p in paths]
    pairs = [parse_difference(s) for s in difference.value] if difference.value else None
    result = compare_reports(groups, pairs, allow_config_mismatch=allow_mismatch.value)
    text = markdown_tables(result) if output_format.value == "markdown" else json.dumps(result, indent=1)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

  app.run(run, argv=argv)


if __name__ == "__main__":
  main()
