r"""Rendered LIBERO demonstrations -> an RLDS (tfds) dataset in the ``lamp_sim`` layout (run in our JAX venv).

  python -m lamp_jax.libero.rlds_export --suite-dir=/data/libero_demos/libero_spatial --out=/data/tfds \
      [--val-episodes-per-task=2]

reads ``<suite-dir>/render/task<j>_ep<i>.npz`` (written by ``lamp_jax.libero.generate`` in the LIBERO venv) and
writes ``<out>/libero_<suite>_scripted/1.0.0`` (e.g. ``libero_spatial_scripted``) with the features of
``lamp_jax.sim.rlds_export.features`` (see ``lamp_jax/specs.py``): image_0 agentview, image_1 zeros
(``has_image_1`` False), image_2 wrist; state float32[8] (eef xyz, rpy, finger opening, gripper command in [0, 1]);
action float32[7] (LIBERO controller input: Δpos, Δaxis-angle in [-1, 1]; gripper in [0, 1], 1 = open); scene flow
of the 20 x 20 (K) grid in the agentview camera over T future steps; camera intrinsics / extrinsics 0 (agentview)
and 2 (wrist, at step 0). Episode metadata ``task_family`` is the LIBERO task name, ``seed`` the initial-state
seed. The last ``--val-episodes-per-task`` demonstrations of every task form the 'val' split.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import sys

import numpy as np

VERSION = "1.0.0"
_NAME = re.compile(r"task(\d+)_ep(\d+)\.npz$")


def dataset_name(suite: str) -> str:
  if not suite.startswith("libero_"):
    raise ValueError(f"LIBERO suite names start with 'libero_', got {suite!r}")
  return f"{suite}_scripted"


def episode_example(path: str, suite: str) -> dict:
  """One rendered npz -> the RLDS example dict."""
  with np.load(path) as f:
    ep = {k: f[k] for k in f.files}
  m = len(ep["action"])
  if m == 0:
    raise ValueError(f"{path}: episode has no steps")
  zeros = np.zeros_like(ep["image_0"][0])
  instruction = str(ep["language_instruction"])
  steps = []
  for t in range(m):
    last = t == m - 1
    steps.append({
        "observation": {"image_0": ep["image_0"][t], "image_1": zeros, "image_2": ep["image_2"][t],
                        "state": ep["state"][t]},
        "action": ep["action"][t], "language_instruction": instruction,
        "scene_flow": ep["scene_flow"][t], "scene_flow_query": ep["scene_flow_query"][t],
        "scene_flow_mask": ep["scene_flow_mask"][t], "scene_flow_query_mask": ep["scene_flow_query_mask"][t],
        "is_first": t == 0, "is_last": last, "is_terminal": bool(last and ep["success"]),
        "reward": np.float32(1.0 if (last and ep["success"]) else 0.0), "discount": np.float32(1.0),
    })
  task_id = int(_NAME.search(path).group(1))
  meta = {"file_path": f"libero/{suite}/task{task_id:02d}/{int(ep['seed'])}", "task_family": f"task{task_id:02d}",
          "seed": np.int64(ep["seed"]), "success": bool(ep["success"]), "has_image_0": True, "has_image_1": False,
          "has_image_2": True, "has_language": True}
  identity = np.eye(4, dtype=np.float32)
  for k in range(3):
    meta[f"camera_intrinsics_{k}"] = ep.get(f"camera_intrinsics_{k}", np.zeros((3, 3), np.float32))
    meta[f"camera_extrinsics_{k}"] = ep.get(f"camera_extrinsics_{k}", identity)
  return {"steps": steps, "episode_metadata": meta}


def export(suite_dir: str, out: str, val_per_task: int = 0) -> dict:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from lamp_jax.sim import rlds_export as sim_export  # pylint: disable=g-import-not-at-top

  suite = os.path.basename(os.path.normpath(suite_dir))
  files = sorted(glob.glob(os.path.join(suite_dir, "render", "task*_ep*.npz")))
  if not files:
    raise FileNotFoundError(f"no rendered episodes in {os.path.join(suite_dir, 'render')}")
  by_task: dict[int, list[str]] = {}
  for f in files:
    by_task.setdefault(int(_NAME.search(f).group(1)), []).append(f)
  splits = {"train": [], "val": []}
  for task_files in by_task.values():
    cut = len(task_files) - val_per_task if val_per_task else len(task_files)
    splits["train"] += task_files[:cut]
    splits["val"] += task_files[cut:]
  splits = {k: v for k, v in splits.items() if v}
  with np.load(files[0]) as f:
    size = int(f["image_0"].shape[1])
    num_points, horizon = int(f["scene_flow"].shape[1]), int(f["scene_flow"].shape[2])

  def examples(split):
    for path in splits[split]:
      yield os.path.basename(path), episode_example(path, suite)

  name = dataset_name(suite)
  with contextlib.redirect_stdout(sys.stderr):
    tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version=VERSION, features=sim_export.features(size, num_points, horizon),
        split_datasets={split: examples(split) for split in splits}, data_dir=out,
        description=f"LIBERO {suite}: scripted demonstrations (lamp_jax.libero) with exact scene flow "
                    f"(K={num_points}, T={horizon}), {size}x{size} images.",
        disable_shuffling=True)
  return {"dataset": name, "path": os.path.join(out, name, VERSION),
          "episodes": {k: len(v) for k, v in splits.items()}, "image_size": size, "num_points": num_points,
          "flow_horizon": horizon}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--suite-dir", required=True, help="<generate --out>/<suite>")
  p.add_argument("--out", required=True, help="tfds data_dir")
  p.add_argument("--val-episodes-per-task", type=int, default=0)
  args = p.parse_args(argv)
  print(json.dumps(export(args.suite_dir, args.out, args.val_episodes_per_task), indent=1))


if __name__ == "__main__":
  main()
