"""Per-stage profile of the input pipeline: where the CPU time per frame goes (read, parse, decode, augment, batch).

The pipeline is built cut after each stage (``pipeline.make_dataset(stop_after=...)``) and every cut is timed on
its own for the same number of frames, after a warm-up that fills the shuffle buffer:

  read     serialized episodes from the files (host reader, record checks, episode validation)
  parse    + deserialise, standardise, normalise, chunk into per-step frames (images still encoded)
  shuffle  + the frame shuffle buffer
  decode   + image decode and resize to the output size (no augmentation)
  augment  + train-time augmentation (decode at the stored size, random resized crop, colour jitter)
  batch    + batching and the conversion to numpy batches (what the training loop receives)

Each row gives the cumulative CPU-ms per frame (process CPU time, all threads) and frames/s of the pipeline cut
there, and ``delta_cpu_ms``: its difference to the previous row, the cost of that stage. Frames of the 'read'
stage are counted as episodes x the mean episode length of the statistics. Stages before 'batch' are drained in
C++ (each element mapped to a constant, 256 to a batch) so that Python's per-element overhead is not counted.
The figures are noisy on a shared machine: run a few rounds (``rounds``) and read the medians.
"""

from __future__ import annotations

import statistics as stats_lib
import time

import numpy as np
import tensorflow as tf

from lamp_jax.data import pipeline


def _drain(counts, frames_per_element: float, num_frames: int, warmup_frames: int) -> dict:
  """Consume ``warmup_frames`` then time ``num_frames`` frames of ``counts`` (an iterable of element counts).

  Returns cpu_ms_per_frame and frames_per_s."""
  def elements(n_frames):
    return max(1, int(np.ceil(n_frames / frames_per_element)))

  iterator = iter(counts)
  done = 0
  while done < elements(warmup_frames):
    done += int(next(iterator))
  wall, cpu = time.perf_counter(), time.process_time()
  done = 0
  target = elements(num_frames)
  while done < target:
    done += int(next(iterator))
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  frames = done * frames_per_element
  return {"cpu_ms_per_frame": 1000.0 * cpu / frames, "frames_per_s": frames / wall, "frames": frames}


def _counted(dataset, stage: str):
  """Elements of a cut pipeline -> element counts: in C++, 256 a time, before 'batch'; 'batch' yields 1 per numpy
  batch (the conversion the training loop pays is counted)."""
  if stage == "batch":
    return (1 for _ in dataset.as_numpy_iterator())
  return dataset.map(lambda *_: tf.constant(1, tf.int64)).batch(256).map(tf.reduce_sum)


def stage_profile(data_cfg, *, seed: int = 0, num_frames: int = 2048, warmup_frames: int | None = None,
                  rounds: int = 1, stages=pipeline.STAGES) -> dict:
  """Profile the training pipeline of ``data_cfg`` stage by stage (module docstring).

  Args:
    data_cfg: the data config (statistics are computed or loaded first, outside the timing).
    num_frames: frames timed per stage and round.
    warmup_frames: frames consumed before timing (default: the shuffle buffer plus two batches).
    rounds: rounds over all stages (interleaved); the medians are reported.
  Returns:
    {'stages': [{'stage', 'cpu_ms_per_frame', 'delta_cpu_ms', 'frames_per_s'}...], 'rounds', 'num_frames'}.
  """
  if warmup_frames is None:
    warmup_frames = int(data_cfg.shuffle_buffer_size) + 2 * int(data_cfg.batch_size)
  opened = pipeline.open_datasets(data_cfg)
  statistics = pipeline.dataset_statistics(data_cfg, opened)
  mean_length = (sum(s.num_transitions for s in statistics.values()) /
                 max(1, sum(s.num_trajectories for s in statistics.values())))
  runs: dict[str, list] = {stage: [] for stage in stages}
  for _ in range(max(1, int(rounds))):
    for stage in stages:
      dataset, _, _, _, per_process = pipeline.make_dataset(data_cfg, seed=seed, process_index=0, process_count=1,
                                                            train=True, repeat=True, stop_after=stage)
      per_element = {"read": mean_length, "batch": float(per_process)}.get(stage, 1.0)
      runs[stage].append(_drain(_counted(dataset, stage), per_element, num_frames, warmup_frames))
  rows, previous = [], 0.0
  for stage in stages:
    cpu = stats_lib.median(r["cpu_ms_per_frame"] for r in runs[stage])
    rows.append({"stage": stage, "cpu_ms_per_frame": round(cpu, 4), "delta_cpu_ms": round(cpu - previous, 4),
                 "frames_per_s": round(stats_lib.median(r["frames_per_s"] for r in runs[stage]), 1)})
    previous = cpu
  return {"stages": rows, "rounds": int(rounds), "num_frames": int(num_frames), "warmup_frames": warmup_frames,
          "mean_episode_length": round(mean_length, 2)}


def format_table(profile: dict) -> str:
  """The profile as an aligned text table (one row per stage)."""
  lines = [f"{'stage':8s} {'CPU-ms/frame':>13s} {'delta':>8s} {'frames/s':>9s}"]
  for row in profile["stages"]:
    lines.append(f"{row['stage']:8s} {row['cpu_ms_per_frame']:13.3f} {row['delta_cpu_ms']:8.3f} "
                 f"{row['frames_per_s']:9.1f}")
  return "\n".join(lines)
