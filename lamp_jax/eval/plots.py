"""PNG plots of a run (matplotlib, Agg): loss curves from ``metrics.jsonl``, success per task and how the episodes
ended (``failure_modes`` outcome labels) from ``eval_results.json``; the side-by-side plots of several runs
(``python -m lamp_jax.compare``); rows of images (flow images: true, reconstructed, predicted) with ``image_rows``."""

from __future__ import annotations

import json
import os

import numpy as np

from lamp_jax.eval import failure_modes
from lamp_jax.eval import stats
from lamp_jax.training import metrics as metrics_lib

_LOSS_PREFIXES = ("loss",)


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def loss_curves(workdir: str, out_path: str) -> str | None:
  """Every 'loss*' metric against the step (one line per term, stage boundaries dashed)."""
  records = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r.get("split") == "train"]
  if not records:
    return None
  by_step = {}
  for r in records:  # After a resume, later records of a step replace earlier ones.
    by_step[r["step"]] = r
  steps = sorted(by_step)
  keys = sorted({k for r in by_step.values() for k in r if k.startswith(_LOSS_PREFIXES)})
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for key in keys:  # Terms switched off in a stage are logged as 0: not drawn there.
    xs = [s for s in steps if isinstance(by_step[s].get(key), float) and by_step[s][key] > 0]
    if xs:
      axes[0].plot(xs, [by_step[s][key] for s in xs], label=key, lw=1, marker="." if len(xs) < 30 else None)
  axes[0].set_yscale("log")
  axes[0].set_xlabel("step")
  axes[0].set_title("training losses")
  axes[0].legend(fontsize=8)
  for key in ("grad_norm", "lr"):
    xs = [s for s in steps if isinstance(by_step[s].get(key), float)]
    if xs:
      axes[1].plot(xs, [by_step[s][key] for s in xs], label=key, lw=1)
  axes[1].set_yscale("log")
  axes[1].set_xlabel("step")
  axes[1].set_title("gradient norm and learning rate")
  axes[1].legend(fontsize=8)
  stages = [by_step[s].get("stage") for s in steps]
  for i in range(1, len(steps)):
    if stages[i] != stages[i - 1]:
      for ax in axes:
        ax.axvline(steps[i - 1], color="gray", ls="--", lw=0.8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def success_per_task(results: dict[str, dict], out_path: str, title: str = "closed-loop success") -> str:
  """Grouped bars (one group per task, one bar per run) with 95 % CI whiskers; the mean as the last group."""
  names = list(results)
  tasks = stats.tasks_of(results)
  groups = tasks + ["mean"]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(1.6 * len(groups) + 2, 4))
  width = 0.8 / max(len(names), 1)
  x = np.arange(len(groups))
  for i, name in enumerate(names):
    r = results[name]
    vals, lo, hi = [], [], []
    for g in groups:
      if g == "mean":
        v, (l, h) = r["mean_success"], r["ci95"]
      elif g in r["per_task"]:
        v, (l, h) = r["per_task"][g]["success_rate"], r["per_task"][g]["ci95"]
      else:
        v, l, h = 0.0, 0.0, 0.0
      vals.append(100 * v)
      lo.append(100 * max(v - l, 0.0))
      hi.append(100 * max(h - v, 0.0))
    ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=3, label=name)
  ax.set_xticks(x)
  ax.set_xticklabels(groups)
  ax.set_ylim(0, 105)
  ax.set_ylabel("success %")
  ax.set_title(title)
  ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def outcomes_per_task(results: dict[str, dict], out_path: str, title: str = "how the episodes ended") -> str | None:
  """One stacked horizontal bar per (task, run): the fraction of its episodes with each outcome label
  (``failure_modes.OUTCOMES``, one colour per label). None when no result carries outcome counts."""
  rows = [(task, name, results[name]["per_task"][task].get("outcomes"), results[name]["per_task"][task]["episodes"])
          for task in stats.tasks_of(results) for name in results if task in results[name]["per_task"]]
  rows = [r for r in rows if r[2]]
  if not rows:
    return None
  plt = _pyplot()
  colours = dict(zip(failure_modes.OUTCOMES, ("#2ca02c", "#d62728", "#ff7f0e", "#bcbd22", "#9467bd", "#8c564b",
                                               "#e377c2", "#17becf", "#1f77b4", "#7f7f7f")))  # success green
  fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5))
  y = np.arange(len(rows))[::-1]
  drawn = set()
  for yi, (task, name, counts, episodes) in zip(y, rows):
    left = 0.0
    for label in failure_modes.OUTCOMES:
      share = 100.0 * counts.get(label, 0) / episodes
      if share > 0:
        ax.barh(yi, share, left=left, color=colours[label], label=None if label in drawn else label)
        drawn.add(label)
        left += share
  ax.set_yticks(y)
  ax.set_yticklabels([f"{task} · {name}" if len(results) > 1 else task for task, name, _, _ in rows], fontsize=8)
  ax.set_xlim(0, 100)
  ax.set_xlabel("% of episodes")
  ax.set_title(title)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return out_path


def image_rows(rows: dict[str, np.ndarray], out_path: str, title: str = "") -> str:
  """One labelled row per entry of ``rows`` (label -> uint8[N, H, W, 3]; rows may differ in N), columns aligned
  (column j of every row shows example j). Returns ``out_path``."""
  if not rows:
    raise ValueError("image_rows needs at least one row")
  for label, images in rows.items():
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise ValueError(f"image_rows: row {label!r} must be uint8[N, H, W, 3], got {images.dtype}{list(images.shape)}")
  columns = max(len(v) for v in rows.values())
  plt = _pyplot()
  fig, axes = plt.subplots(len(rows), columns, figsize=(1.5 * columns + 1.0, 1.6 * len(rows) + 0.4), squeeze=False)
  for i, (label, images) in enumerate(rows.items()):
    for j in range(columns):
      ax = axes[i][j]
      ax.set_xticks([])
      ax.set_yticks([])
      if j < len(images):
        ax.imshow(np.asarray(images[j]), interpolation="nearest")
      else:
        ax.axis("off")
    axes[i][0].set_ylabel(label, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=110)
  plt.close(fig)
  return out_path


def write_run_plots(workdir: str) -> list[str]:
  """plots/loss_curves.png and (after an evaluation) plots/success_per_task.png and plots/outcomes_per_task.png;
  returns the paths written."""
  out = []
  path = loss_curves(workdir, os.path.join(workdir, "plots", "loss_curves.png"))
  if path:
    out.append(path)
  results_path = os.path.join(workdir, "eval_results.json")
  if os.path.exists(results_path):
    with open(results_path) as fh:
      result = json.load(fh)
    named = {os.path.basename(os.path.abspath(workdir)): result}
    out.append(success_per_task(named, os.path.join(workdir, "plots", "success_per_task.png")))
    path = outcomes_per_task(named, os.path.join(workdir, "plots", "outcomes_per_task.png"))
    if path:
      out.append(path)
  return out
