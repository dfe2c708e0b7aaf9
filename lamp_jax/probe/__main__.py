r"""Probe a trained latent action model: MI by estimator, linear-probe NMSE, code statistics (JSON) and plots.

  python -m lamp_jax.probe --checkpoint=/tmp/lam_sim_mvp --batches=16 --test_batches=8 --out=/tmp/probe
  python -m lamp_jax.probe --checkpoint=/tmp/lam_sim_mvp --step=1000 --view=image_secondary \
      --config.data.pipeline.datasets.0.data_dir=/data --probe.methods="('ksg', 'ba')" --probe.neural.max_steps=3000 \
      --probe.neural.hidden_dim=256 --probe.neural.depth=3 --probe.neural.batch_size=512

Restores the LAM (verified against its checksums, every parameter array checked against the model the config
builds), reads (o_t, o_{t+k}) pairs of one view from the checkpoint's own data pipeline (``--batches`` training
batches: split 'train'; up to ``--test_batches`` batches of the held-out validation episodes: split 'test'),
encodes them with ``encode_latent`` (jitted, one batch at a time), builds MVP-LAM's net relative action target
from each pair's action chunk (``lamp_jax/probe/lam_latents.py``), runs ``probe.run_probes`` and prints its
JSON report; ``--out`` also receives report.json and the plots (mi.png, code_usage.png, latent_pca.png).
``source.labelling`` is the latent-labelling throughput of the read-and-encode pass (examples/s, CPU-s per 1000
examples; pipeline start and compilation included).

Overrides (parsed before the flags, typed like the field they set):
  --config.<field>=<value>   the checkpoint's stored run config (e.g. the data directory on this machine);
                             a list element by its index: --config.data.pipeline.datasets.0.data_dir=/data
  --probe.<field>=<value>    the report's settings (``probe.default_config()``: methods, seeds, mismatch,
                             ksg.*, neural.*, linear.*). The neural defaults are the paper's accelerator
                             settings (hours on a CPU): see docs/probing.md for CPU settings.
                             --probe.max_rows_per_episode=N keeps at most N rows per episode in each split,
                             evenly spaced in time (0, the default: every row).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Sequence

from absl import app, flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The LAM run's workdir or its checkpoints/ directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_BATCHES = flags.DEFINE_integer("batches", 8, "Training-stream batches to encode (split 'train').")
_TEST_BATCHES = flags.DEFINE_integer("test_batches", 4, "At most this many batches of validation episodes "
                                     "(split 'test', one pass).")
_VIEW = flags.DEFINE_string("view", None, "Camera whose pairs are probed (default: the model's first view).")
_OFFSET_INDEX = flags.DEFINE_integer("offset_index", 0, "Which of model.future_offsets is the pair's k.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the data stream and the quantiser's key.")
_OUT = flags.DEFINE_string("out", None, "Directory for report.json and the PNG plots (default: none written).")
_EMA = flags.DEFINE_bool("ema", True, "Probe the EMA parameters when the run kept them (--noema: the raw ones).")
_PROGRESS = flags.DEFINE_bool("progress", True, "tqdm progress bars (on stderr).")

PREFIXES = ("--config.", "--probe.")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """(argv without the overrides, --config.* overrides, --probe.* overrides) as 'field=value' strings."""
  rest, config, probe_cfg = [], [], []
  for arg in argv:
    if arg.startswith("--config."):
      config.append(arg[len("--config."):])
    elif arg.startswith("--probe."):
      probe_cfg.append(arg[len("--probe."):])
    else:
      rest.append(arg)
  return rest, config, probe_cfg


def probe_checkpoint(checkpoint: str, *, step: int | None = None, config_overrides: Sequence[str] = (),
                     probe_overrides: Sequence[str] = (), batches: int = 8, test_batches: int = 4,
                     view: str | None = None, offset_index: int = 0, seed: int = 0, out: str | None = None,
                     use_ema: bool = True, progress: bool = True) -> dict[str, Any]:
  """The command without flags: the report (``run_probes``' dict plus 'source': checkpoint, step, view, k, rows,
  dropped pairs, repeated rows left out and rows thinned per split, episodes and rows per episode per split); with
  ``out`` also report.json and the plots there."""
  from lamp_jax import probe
  from lamp_jax.probe import lam_latents

  lam = lam_latents.load_lam(checkpoint, step=step, overrides=config_overrides, use_ema=use_ema)
  probe_config = lam_latents.apply_overrides(probe.default_config(), list(probe_overrides))
  wall, cpu = time.perf_counter(), time.process_time()
  latents = lam_latents.latents_from_checkpoint(lam, view=view, offset_index=offset_index, train_batches=batches,
                                                test_batches=test_batches, seed=seed, progress=progress,
                                                max_rows_per_episode=int(probe_config.max_rows_per_episode))
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  examples = sum(latents["examples"].values())
  report = probe.run_probes(latents["z"], latents["targets"], latents["split"], codes=latents["codes"],
                            codebook_size=latents["codebook_size"], config=probe_config)
  report["source"] = {
      "checkpoint": lam.directory, "step": lam.step, "params": lam.params_key, "view": latents["view"],
      "stride": latents["stride"], "dataset": latents["dataset"], "examples": latents["examples"],
      "dropped_pairs": latents["dropped"], "duplicate_rows_dropped": latents["duplicates"],
      "repeats_by": latents["repeats_by"], "max_rows_per_episode": latents["max_rows_per_episode"],
      "thinned_rows": latents["thinned"],
      "episodes": {n: r["episodes"] for n, r in latents["rows_per_episode"].items()},
      "rows_per_episode": {n: {"mean": r["mean"], "max": r["max"]} for n, r in latents["rows_per_episode"].items()},
      "latent": "pre-quantisation z, flattened [L * Dc]",
      "target": "net relative action over k (probe.targets), z-scored with the train rows' statistics",
      "target_dims": list(latents["target_names"]), "constant_dims_left_out": list(latents["constant_dims"]),
      # Latent labelling throughput: the pipeline reads (o_t, o_t+k) and encode_latent labels it; the time
      # includes the pipeline's start and the encoder's compilation (use many --batches for a steady rate).
      "labelling": {"examples": examples, "wall_s": wall, "cpu_s": cpu, "examples_per_s": examples / wall,
                    "cpu_s_per_1000_examples": 1000.0 * cpu / max(examples, 1)},
  }
  if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "report.json"), "w") as fh:
      json.dump(report, fh, indent=1)
    test = latents["split"] == probe_config.heldout_split
    report["plots"] = probe.write_plots(report, out, z=latents["z"][test], actions=latents["targets"][test])
  return report


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
  if not _CHECKPOINT.value:
    raise app.UsageError("--checkpoint is required (the LAM run's workdir)")
  report = probe_checkpoint(
      _CHECKPOINT.value, step=_STEP.value, config_overrides=_OVERRIDES["config"],
      probe_overrides=_OVERRIDES["probe"], batches=_BATCHES.value, test_batches=_TEST_BATCHES.value,
      view=_VIEW.value, offset_index=_OFFSET_INDEX.value, seed=_SEED.value, out=_OUT.value,
      use_ema=_EMA.value, progress=_PROGRESS.value)
  sys.stdout.write(json.dumps(report, indent=1) + "\n")
  sys.stdout.flush()


_OVERRIDES: dict[str, list[str]] = {"config": [], "probe": []}


def run(argv: Sequence[str] | None = None) -> None:
  rest, _OVERRIDES["config"], _OVERRIDES["probe"] = split_overrides(list(sys.argv if argv is None else argv))
  app.run(main, argv=rest)


if __name__ == "__main__":
  run()
