"""Inspect a data config: dataset sizes, statistics, one batch's shapes and dtypes, throughput — as JSON.

    python -m lamp_jax.data.inspect --config=configs/<name>.py[:variant] [--config.<field>=<value> ...]
        [--num_batches=20] [--plot=batch.png]
    python -m lamp_jax.data.inspect --config=... --profile      # + CPU-ms per frame of every stage
    python -m lamp_jax.data.inspect --bench=octo [--cameras=2]  # the Octo-compatible benchmark (data.bench)

The config file exposes ``get_config(arg)`` returning a ConfigDict whose ``data`` field (or ``data.pipeline``,
as in the training configs) is the data config (``lamp_jax.data.config.default_data_config()`` layout). Throughput is measured after ``--warmup`` batches:
frames/s (examples per second of this process) and CPU-seconds per 1000 frames (process CPU time, all threads).
``--profile`` adds the per-stage profile of the training pipeline (``lamp_jax.data.profile``: read, parse, shuffle,
decode, augment, batch; cumulative CPU-ms per frame and each stage's share). ``--bench=octo`` runs
``lamp_jax.data.bench`` (its own flags follow). ``--plot`` writes a PNG grid of the batch's images (current frame, every camera) with the scene-flow tracks drawn
on the primary camera.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from lamp_jax import allocator


def load_config(config_args: list[str]):
  """The run config of ``--config=path/to/config.py[:arg]`` with its ``--config.<field>=<value>`` overrides, parsed
  exactly as every other command parses them (``ml_collections.config_flags``)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  if not any(a.startswith("--config=") for a in config_args):
    raise SystemExit("--config=configs/<name>.py[:variant] is required")
  argv = ["inspect"] + list(config_args)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "run config", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  if "data" not in config:
    raise KeyError(f"{flag_values['config'].config_filename}: get_config() returned a config without a 'data' field")
  return config


def data_config_of(config):
  """The data config inside a run config: ``config.data`` or, in the training configs, ``config.data.pipeline``."""
  data = config.data
  if "datasets" not in data and "pipeline" in data and "datasets" in data.pipeline:
    data = data.pipeline
    if "global_batch_size" in config.data:
      data.batch_size = int(config.data.global_batch_size)
  if "datasets" not in data:
    raise KeyError("the config has no data config (config.data or config.data.pipeline with a 'datasets' field)")
  return data


def describe(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(describe(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = {"shape": list(np.shape(value)), "dtype": str(np.asarray(value).dtype)}
  return out


def plot_batch(batch, path: str, cameras, max_rows: int = 6) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from lamp_jax import specs

  obs = batch[specs.OBSERVATION]
  rows = min(max_rows, obs[cameras[0]].shape[0])
  fig, axes = plt.subplots(rows, len(cameras), figsize=(2.6 * len(cameras), 2.6 * rows), squeeze=False)
  texts = batch[specs.TASK][specs.LANGUAGE_INSTRUCTION]
  for r in range(rows):
    for c, camera in enumerate(cameras):
      ax = axes[r][c]
      image = obs[camera][r, -1]
      h, w = image.shape[:2]
      ax.imshow(image, extent=(0, w, h, 0))  # pixel i covers [i, i + 1): the UV convention
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(camera, fontsize=8)
      if c == 0:
        text = texts[r].decode("utf-8", "replace") if isinstance(texts[r], bytes) else str(texts[r])
        ax.set_ylabel(text[:28], fontsize=7)
      if camera == specs.IMAGE_PRIMARY and batch[specs.HAS_SCENE_FLOW][r]:
        flow = batch[specs.SCENE_FLOW][r]  # [K, T, 3]
        mask = batch[specs.SCENE_FLOW_MASK][r]
        query = batch[specs.SCENE_FLOW_QUERY][r]
        colors = plt.cm.hsv(np.linspace(0, 1, flow.shape[0], endpoint=False))
        for k in range(flow.shape[0]):
          if batch[specs.SCENE_FLOW_QUERY_MASK][r, k]:
            ax.plot(query[k, 0] * w, query[k, 1] * h, ".", color=colors[k], markersize=2)
          uv = np.where(mask[k][:, None], flow[k, :, :2], np.nan)
          ax.plot(uv[:, 0] * w, uv[:, 1] * h, "-", color=colors[k], linewidth=0.6)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a.startswith("--bench") for a in argv):
    bench_args = [a for a in argv if not a.startswith("--bench")]
    if "--bench=octo" not in argv:
      raise SystemExit("--bench takes one value: --bench=octo (the Octo-compatible benchmark, lamp_jax.data.bench)")
    from lamp_jax.data import bench

    return bench.main(bench_args)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="configs/<name>.py[:variant] with config.data; "
                      "--config.<field>=<value> overrides follow, as for every command")
  parser.add_argument("--split", default="train", choices=["train", "val"])
  parser.add_argument("--num_batches", type=int, default=20, help="batches timed after warm-up")
  parser.add_argument("--warmup", type=int, default=3, help="batches before timing starts")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--batch_size", type=int, default=0, help="override data.batch_size")
  parser.add_argument("--plot", default="", help="write a PNG grid of one batch here")
  parser.add_argument("--output", default="", help="also write the JSON here")
  parser.add_argument("--profile", action="store_true", help="add the per-stage profile (lamp_jax.data.profile)")
  parser.add_argument("--profile_frames", type=int, default=2048, help="frames timed per profiled stage")
  parser.add_argument("--bench", default="", help="'octo': run the Octo-compatible benchmark (lamp_jax.data.bench)")
  args, unknown = parser.parse_known_args(argv)
  overrides = [a for a in unknown if a.startswith("--config.")]
  if len(overrides) != len(unknown):
    parser.error(f"unrecognized arguments: {' '.join(a for a in unknown if a not in overrides)}")
  config_args = [f"--config={args.config}"] + overrides

  from tqdm import tqdm

  from lamp_jax.data import pipeline

  config = load_config(config_args)
  data_cfg = data_config_of(config)
  if args.batch_size:
    data_cfg.batch_size = args.batch_size
  opened = pipeline.open_datasets(data_cfg)
  make = pipeline.make_train_iterator if args.split == "train" else pipeline.make_val_iterator
  iterator = make(data_cfg, seed=args.seed, process_index=0, process_count=1)
  report = {"config": args.config, "split": args.split, "datasets": {}}
  for o, weight in zip(opened, iterator.weights):
    stats = iterator.statistics[o.name]
    report["datasets"][o.name] = {
        "directory": o.directory, "standardization": o.standardization.name, "weight": float(weight),
        "splits": {name: int(split.num_examples) for name, split in o.builder.info.splits.items()},
        "num_trajectories": stats.num_trajectories, "num_transitions": stats.num_transitions,
        "statistics_source": stats.source, "statistics_hash": stats.hash,
        "action": {k: np.round(v, 5).tolist() for k, v in stats.action.to_dict().items()},
        "proprio": {k: np.round(v, 5).tolist() for k, v in stats.proprio.to_dict().items()},
    }
  batch = None
  for _ in tqdm(range(args.warmup), desc="warm-up", disable=not sys.stderr.isatty()):
    batch = next(iterator)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in tqdm(range(args.num_batches), desc="timing", disable=not sys.stderr.isatty()):
    batch = next(iterator)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  if batch is None:
    batch = next(iterator)
  frames = args.num_batches * iterator.per_process_batch
  report["batch"] = describe(batch)
  report["throughput"] = {
      "batches": args.num_batches, "batch_size": iterator.per_process_batch, "seconds": round(wall, 3),
      "frames_per_s": round(frames / wall, 2) if wall > 0 else None,
      "cpu_s_per_1000_frames": round(1000 * cpu / frames, 3) if frames else None,
      "image_size": list(data_cfg.image_size), "augment": bool(data_cfg.augment and args.split == "train"),
      "action_horizon": int(data_cfg.action_horizon), "cpu_count": os.cpu_count(),
  }
  report["skipped"] = iterator.skip_counts()  # distinct bad episodes / files per dataset and kind
  report["skipped_occurrences"] = iterator.skips.occurrences()  # every skip, pass after pass
  if args.profile:
    from lamp_jax.data import profile

    report["profile"] = profile.stage_profile(data_cfg, seed=args.seed, num_frames=args.profile_frames)
    print(profile.format_table(report["profile"]), file=sys.stderr)
  if args.plot:
    plot_batch(batch, args.plot, tuple(data_cfg.cameras))
    report["plot"] = args.plot
  text = json.dumps(report, indent=1)
  print(text)
  if args.output:
    with open(args.output, "w") as f:
      f.write(text)
  return report


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc("lamp_jax.data.inspect")  # the allocator of lamp_jax.train's process (allocator.py)
  main()
