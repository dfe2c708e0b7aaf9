"""Every probe of a latent action model on arrays, as one JSON-able report, and its PNG plots.

  report = probe.run_probes(z, actions, split, codes=codes, codebook_size=16)      # config: default_config()
  json.dump(report, open("probe.json", "w"), indent=1)
  probe.write_plots(report, "plots/", z=z[split == "test"], actions=actions[split == "test"])

Inputs are arrays only (no model code): z float[N, ...] latents (pre-quantisation embeddings or the quantised
code vectors, flattened per sample), actions float[N, Da] probing targets (``probe.targets``: MVP-LAM's net
relative action), split str[N] split name per row, optionally codes int[N, L] with their codebook size.

Splits (config fields): ``train_split`` trains the linear probes; ``heldout_split`` is their held-out score;
the MI estimators and the code statistics use the rows of ``mi_splits`` (the neural estimators split those rows
again, per seed, into their own train / validation / test). Every other name in ``split`` (in none of these
fields) is an out-of-distribution split, scored by the same probes.

A command-line tool only has to load a checkpoint, compute (z, codes, actions, split) and call ``run_probes``
with ``default_config()`` overridden by its flags, then ``write_plots``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import ml_collections
import numpy as np

from lamp_jax.probe import codes as codes_lib
from lamp_jax.probe import arrays, ksg, linear_probe, mutual_information, neural_mi

REPORT_VERSION = 1


def default_config() -> ml_collections.ConfigDict:
  """The report's settings; the estimator sections hold the estimators' dataclass defaults (MVP-LAM's)."""
  config = ml_collections.ConfigDict()
  config.methods = mutual_information.METHODS
  config.seeds = (0, 1, 2)
  config.mismatch = True
  config.train_split = "train"
  config.heldout_split = "test"
  config.mi_splits = ("train", "test")
  config.inverse_probe = True
  config.probe_seed = 0
  # Read by the checkpoint loader (python -m lamp_jax.probe), not by run_probes: at most this many rows per episode
  # in each split, evenly spaced in time (lam_latents.encode_batches; 0: no limit). Recorded here with the report.
  config.max_rows_per_episode = 0
  config.ksg = dataclasses.asdict(ksg.KSGConfig())
  config.neural = dataclasses.asdict(neural_mi.NeuralMIConfig())
  config.linear = dataclasses.asdict(linear_probe.LinearProbeConfig())
  return config


def _dataclass_from(cls, section: ml_collections.ConfigDict | Mapping[str, Any], name: str):
  """``cls(**section)`` with an error naming the config section and its unknown keys."""
  values = dict(section)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"config.{name}: unknown keys {unknown}; {cls.__name__} has {sorted(known)}")
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _split_rows(split: np.ndarray, names, field: str) -> np.ndarray:
  present = set(np.unique(split).tolist())
  missing = [n for n in names if n not in present]
  if missing:
    raise ValueError(f"config.{field} names {missing}, absent from split (present: {sorted(present)})")
  return np.isin(split, list(names))


def run_probes(z: np.ndarray, actions: np.ndarray, split: np.ndarray, codes: np.ndarray | None = None,
               codebook_size: int | None = None, config: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """Runs the MI estimators, the forward / inverse linear probes and the code statistics.

  Args:
    z: float[N, ...] latent actions.
    actions: float[N, Da] probing targets, row-aligned with z.
    split: str[N] split name of each row (see the module docstring).
    codes: int[N, L] discrete codes of the same rows (optional).
    codebook_size: C, required with ``codes``.
    config: ``default_config()`` or an override of it.

  Returns:
    A JSON-able dict: 'summary' (headline numbers), 'mutual_information' (per method, per seed, mismatch),
    'linear_probe' and 'inverse_probe' (NMSE per split, closed-form reference), 'codes', 'rows', 'config'.
  """
  config = config if config is not None else default_config()
  z, actions = arrays.paired_inputs(z, actions, ("z", "actions"))
  split = np.asarray(split).astype(str).reshape(-1)
  if split.shape[0] != z.shape[0]:
    raise ValueError(f"split has {split.shape[0]} entries but z has {z.shape[0]} rows")
  unknown_methods = [m for m in config.methods if m not in mutual_information.METHODS]
  if unknown_methods:
    raise ValueError(f"config.methods: unknown {unknown_methods}; choose from {mutual_information.METHODS}")
  if codes is not None:
    if codebook_size is None:
      raise ValueError("codes given without codebook_size")
    codes = codes_lib.check_codes(codes, codebook_size)
    if codes.shape[0] != z.shape[0]:
      raise ValueError(f"codes has {codes.shape[0]} rows but z has {z.shape[0]}")
  ksg_config = _dataclass_from(ksg.KSGConfig, config.ksg, "ksg")
  neural_config = _dataclass_from(neural_mi.NeuralMIConfig, config.neural, "neural")
  linear_config = _dataclass_from(linear_probe.LinearProbeConfig, config.linear, "linear")

  mi_rows = _split_rows(split, config.mi_splits, "mi_splits")
  train_rows = _split_rows(split, (config.train_split,), "train_split")
  _split_rows(split, (config.heldout_split,), "heldout_split")
  in_distribution = {config.train_split, config.heldout_split, *config.mi_splits}
  eval_names = [config.heldout_split] + sorted(set(split.tolist()) - in_distribution)
  ood_names = eval_names[1:]
  eval_sets = {name: (z[split == name], actions[split == name]) for name in eval_names}

  report: dict[str, Any] = {
      "version": REPORT_VERSION,
      "rows": {name: int((split == name).sum()) for name in sorted(set(split.tolist()))},
      "latent_dim": int(z.shape[1]), "action_dim": int(actions.shape[1]),
      "mi_rows": int(mi_rows.sum()), "heldout_split": config.heldout_split, "ood_splits": ood_names,
  }
  report["mutual_information"] = {
      method: mutual_information.estimate_mutual_information(z[mi_rows], actions[mi_rows], method, config.seeds,
                                                             ksg_config, neural_config, config.mismatch).to_dict()
      for method in config.methods}
  forward = linear_probe.forward_probe(z[train_rows], actions[train_rows], eval_sets, linear_config,
                                      config.probe_seed)
  report["linear_probe"] = forward.to_dict()
  inverse = None
  if config.inverse_probe:
    inverse = linear_probe.inverse_probe(z[train_rows], actions[train_rows], eval_sets, linear_config,
                                         config.probe_seed)
    report["inverse_probe"] = inverse.to_dict()
  code_stats = None
  if codes is not None:
    code_stats = codes_lib.code_statistics(codes[mi_rows], codebook_size)
    report["codes"] = code_stats.to_dict()
  report["summary"] = {
      "mi_bits": {m: {"mean": r["bits_mean"], "std": r["bits_std"], "mismatch_mean": r["mismatch_bits_mean"]}
                  for m, r in report["mutual_information"].items()},
      "nmse_heldout": forward.nmse[config.heldout_split],
      "nmse_ood": {name: forward.nmse[name] for name in ood_names},
      "inverse_nmse_heldout": None if inverse is None else inverse.nmse[config.heldout_split],
      "perplexity": None if code_stats is None else code_stats.perplexity,
      "latent_entropy_bits": None if code_stats is None else code_stats.latent_entropy_bits,
  }
  report["config"] = config.to_dict()
  return _jsonable(report)


def _jsonable(value: Any) -> Any:
  """Plain Python containers and numbers (numpy scalars / arrays and tuples converted)."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return _jsonable(value.tolist())
  if isinstance(value, np.generic):
    return value.item()
  return value


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def plot_mi_bars(report: Mapping[str, Any], path: str) -> str:
  """Bars of I(z; a) per estimator (mean ± std over seeds) next to its mismatch score; writes ``path``."""
  plt = _pyplot()
  mi = report["mutual_information"]
  methods = list(mi)
  x = np.arange(len(methods))
  fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2, 3.5))
  ax.bar(x - 0.2, [mi[m]["bits_mean"] for m in methods], 0.4, yerr=[mi[m]["bits_std"] for m in methods],
         capsize=4, label="paired")
  if all(mi[m]["mismatch_bits_mean"] is not None for m in methods):
    ax.bar(x + 0.2, [mi[m]["mismatch_bits_mean"] for m in methods], 0.4,
           yerr=[mi[m]["mismatch_bits_std"] for m in methods], capsize=4, color="0.7", label="shuffled (mismatch)")
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xticks(x, [m.upper() for m in methods])
  ax.set_ylabel("I(z; a) [bits]")
  ax.legend(frameon=False)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_code_usage(code_stats: Mapping[str, Any], path: str) -> str:
  """Histogram of code usage (pooled over positions), with perplexity and dead codes; writes ``path``."""
  plt = _pyplot()
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  usage = np.asarray(code_stats["usage"], np.float64)
  fig, ax = plt.subplots(figsize=(max(5.5, 0.12 * usage.size + 2), 3.4))
  ax.bar(np.arange(usage.size), usage / usage.sum(), width=0.9)
  ax.axhline(1 / usage.size, color="k", ls="--", lw=0.8, label="uniform")
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlim(-0.6, usage.size - 0.4)
  ax.set_xlabel("code")
  ax.set_ylabel("frequency")
  ax.set_title(f"perplexity {code_stats['perplexity']:.2f} of {code_stats['codebook_size']} codes · "
               f"{len(code_stats['dead_codes'])} dead\nlatent entropy {code_stats['latent_entropy_bits']:.2f} bits "
               f"({code_stats['num_distinct_latents']} distinct latents)", fontsize=9)
  ax.legend(frameon=False, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def plot_latent_pca(z: np.ndarray, actions: np.ndarray, path: str, action_dim: int = 0,
                    max_points: int = 5000, seed: int = 0) -> str:
  """2-D PCA embedding of z coloured by ``actions[:, action_dim]`` (at most ``max_points``); writes ``path``."""
  plt = _pyplot()
  z, actions = arrays.paired_inputs(z, actions, ("z", "actions"))
  if not 0 <= action_dim < actions.shape[1]:
    raise ValueError(f"action_dim={action_dim} is outside the {actions.shape[1]} action dimensions")
  if z.shape[0] > max_points:
    keep = np.random.default_rng(seed).choice(z.shape[0], max_points, replace=False)
    z, actions = z[keep], actions[keep]
  pca = linear_probe.fit_pca(z, 2)
  xy = pca.transform(z)
  if xy.shape[1] == 1:
    xy = np.c_[xy, np.zeros(len(xy))]
  fig, ax = plt.subplots(figsize=(4.6, 4))
  points = ax.scatter(xy[:, 0], xy[:, 1], c=actions[:, action_dim], s=4, cmap="coolwarm")
  fig.colorbar(points, ax=ax, label=f"action[{action_dim}]")
  ax.set_xlabel("PC 1")
  ax.set_ylabel("PC 2")
  ax.set_title(f"latent PCA ({100 * pca.explained_variance_ratio:.0f} % of variance)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def write_plots(report: Mapping[str, Any], out_dir: str, z: np.ndarray | None = None,
                actions: np.ndarray | None = None, action_dim: int = 0) -> list[str]:
  """Writes mi.png, code_usage.png (when the report has codes) and latent_pca.png (when z and actions are given)
  into ``out_dir``; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = [plot_mi_bars(report, os.path.join(out_dir, "mi.png"))] if report.get("mutual_information") else []
  if report.get("codes") is not None:
    paths.append(plot_code_usage(report["codes"], os.path.join(out_dir, "code_usage.png")))
  if z is not None and actions is not None:
    paths.append(plot_latent_pca(z, actions, os.path.join(out_dir, "latent_pca.png"), action_dim))
  return paths
