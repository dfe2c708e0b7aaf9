r"""Generate scripted demonstrations with exact scene-flow labels as an RLDS (tfds) dataset.

  python -m lamp_jax.sim.generate --suite=tabletop4 --episodes=400 --out=DATA_DIR

writes ``<out>/lamp_sim_<suite>/1.0.0`` (read it with ``tfds.builder_from_directory``; layout in
``lamp_jax.specs``). Episodes cycle through the suite's task families (episode i -> family i % F, task seed
``--seed + i // F``); a failed expert episode is retried with seed + r * RETRY_STRIDE (r = 1, 2, ...), so the
dataset is deterministic for a given ``--seed`` whatever ``--workers`` is. Demonstration seeds stay below
``tasks.DEMO_SEED_LIMIT``; closed-loop evaluation uses seeds from ``tasks.EVAL_SEED_OFFSET`` up (disjoint).

Suites (``tasks.SUITES``): tabletop4 (all four families: put_on_plate, stack, push, drawer; the default),
pick_place (put_on_plate, stack), push, drawer.

Defaults: 64 x 64 images, K = 64 query points (8 x 8), T = 16 flow steps, 400 episodes (100 per family, ~6.8k
steps), expert noise 0.003 m; they generate in about 4-5 minutes on two (busy) CPU cores.

Multi-view data (latent action models; the defaults leave the layout unchanged, ``rlds_export`` documents it):
  --randomize-cameras        per-episode random poses of the third-person cameras (front, side, top), drawn from
                             the episode seed, fixed within the episode; implies --camera-params-per-step
  --cameras=front,side,top   a third synchronised third-person camera ('top' -> image_3); 'wrist' is optional
  --camera-params-per-step   steps/camera_intrinsics_<k> and steps/camera_extrinsics_<k> of every image

Exploration ("play") data for latent action models: ``--policy=explore`` records the random ``experts.Explorer``
(random TCP velocities held for a few steps, random yaw, random gripper flips) for ``--explore-steps`` steps per
episode instead of the scripted expert: its actions are random given the frame. Episodes are not retried (success
is recorded, not required).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import time

from lamp_jax import flow_image
from lamp_jax.sim import tasks as tasks_lib

RETRY_STRIDE = 200_000
MAX_RETRIES = 4

_WORKER_ENV = None
_WORKER_CFG = None


def _init_worker(cfg: dict) -> None:
  global _WORKER_ENV, _WORKER_CFG
  os.environ.setdefault("MUJOCO_GL", "egl")
  from lamp_jax.sim import env as env_lib  # pylint: disable=g-import-not-at-top

  _WORKER_CFG = cfg
  # Workers never import TensorFlow, so they can render in-process (faster than the render subprocess).
  _WORKER_ENV = env_lib.TabletopEnv(image_size=cfg["image_size"], render=True, cameras=tuple(cfg["cameras"]),
                                    render_backend="inprocess")


def _make_episode(job: tuple[str, int]):
  """Worker: one expert episode (with retries on failure) -> (key, example, attempts)."""
  from lamp_jax.sim import rlds_export  # pylint: disable=g-import-not-at-top

  family, seed = job
  cfg = _WORKER_CFG
  example = None
  for attempt in range(MAX_RETRIES + 1):
    episode_seed = seed + attempt * RETRY_STRIDE
    example = rlds_export.record_episode(_WORKER_ENV, cfg["suite"], family, episode_seed, cfg["num_points"],
                                         cfg["flow_steps"], noise=cfg["noise"],
                                         optical_flow_steps=cfg["optical_flow_steps"],
                                         optical_flow_max_magnitude=cfg["optical_flow_max_magnitude"],
                                         randomize_cameras=cfg.get("randomize_cameras", False),
                                         camera_params_per_step=cfg.get("camera_params_per_step", False),
                                         **({"policy": "explore", "explore_steps": cfg["explore_steps"]}
                                            if cfg.get("policy") == "explore" else {}))
    if example["episode_metadata"]["success"] or cfg.get("policy") == "explore":  # exploration is never retried
      break
  return f"{family}_{example['episode_metadata']['seed']}", example, attempt + 1


def jobs_for(suite: str, episodes: int, first_index: int, seed: int) -> list[tuple[str, int]]:
  families = tasks_lib.suite_families(suite)
  out = []
  for i in range(first_index, first_index + episodes):
    s = seed + i // len(families)
    if s >= RETRY_STRIDE:
      raise ValueError(f"task seed {s} >= {RETRY_STRIDE}: use a smaller --seed / --episodes")
    out.append((families[i % len(families)], s))
  return out


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--suite", default="tabletop4", choices=sorted(tasks_lib.SUITES))
  p.add_argument("--episodes", type=int, default=400, help="training episodes (split 'train')")
  p.add_argument("--val-episodes", type=int, default=0, help="extra episodes in split 'val' (0: no val split)")
  p.add_argument("--out", required=True, help="tfds data_dir; the dataset goes to <out>/lamp_sim_<suite>/1.0.0")
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--num-points", type=int, default=64, help="K scene-flow query points (a perfect square)")
  p.add_argument("--flow-steps", type=int, default=16, help="T future scene-flow steps")
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--noise", type=float, default=0.003, help="expert action noise std (m per step)")
  p.add_argument("--optical-flow-steps", type=int, default=0,
                 help="k > 0 adds steps/observation/optical_flow (HSV flow image from t to t+k)")
  p.add_argument("--optical-flow-max-magnitude", type=float, default=0.0,
                 help="flow-image normaliser in pixels (saturation = |flow| / this); 0: the paper's 64 px at 224 px "
                      "width, scaled to --image-size (lamp_jax.flow_image.default_max_magnitude)")
  p.add_argument("--cameras", default="front,side,wrist",
                 help="cameras to render (others are zeros; 'top' adds image_3)")
  p.add_argument("--randomize-cameras", action="store_true",
                 help="random third-person camera poses per episode (from its seed); implies --camera-params-per-step")
  p.add_argument("--camera-params-per-step", action="store_true",
                 help="record every image's intrinsics / extrinsics at every step")
  p.add_argument("--policy", default="expert", choices=["expert", "explore"],
                 help="'explore': random exploration episodes (actions random given the frame) instead of the expert")
  p.add_argument("--explore-steps", type=int, default=None,
                 help="steps per exploration episode (--policy=explore; default experts.EXPLORE_STEPS)")
  args = p.parse_args(argv)
  from lamp_jax.sim import env as env_lib  # pylint: disable=g-import-not-at-top

  unknown = [c for c in args.cameras.split(",") if c and c not in env_lib.CAMERA_NAMES]
  if unknown:
    p.error(f"--cameras: unknown camera(s) {unknown} (known: {','.join(env_lib.CAMERA_NAMES)})")
  side = int(round(args.num_points**0.5))
  if side * side != args.num_points:
    p.error(f"--num-points={args.num_points} is not a perfect square")
  if args.episodes < 1 or args.val_episodes < 0 or args.workers < 1 or args.flow_steps < 1:
    p.error("--episodes, --workers and --flow-steps must be >= 1 and --val-episodes >= 0")
  if args.explore_steps is None:
    from lamp_jax.sim import experts  # pylint: disable=g-import-not-at-top

    args.explore_steps = experts.EXPLORE_STEPS
  if args.explore_steps < 1:
    p.error(f"--explore-steps={args.explore_steps} must be >= 1")
  if args.optical_flow_max_magnitude < 0:
    p.error(f"--optical-flow-max-magnitude={args.optical_flow_max_magnitude} must be >= 0 (0 = default)")
  return args


def generate(args: argparse.Namespace) -> dict:
  """Generate and write the dataset; returns a summary dict."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  from lamp_jax.sim import rlds_export  # pylint: disable=g-import-not-at-top

  target = os.path.join(args.out, rlds_export.dataset_name(args.suite), rlds_export.VERSION)
  if os.path.exists(target):
    raise FileExistsError(f"{target} already exists: delete it or choose another --out")

  cfg = {"suite": args.suite, "image_size": args.image_size, "num_points": args.num_points,
         "flow_steps": args.flow_steps, "noise": args.noise, "optical_flow_steps": args.optical_flow_steps,
         "optical_flow_max_magnitude": (args.optical_flow_max_magnitude
                                        or flow_image.default_max_magnitude(args.image_size)),
         "cameras": [c for c in args.cameras.split(",") if c]}
  # Multi-view options enter the config (and the dataset description) only when used: default datasets are as
  # before.
  if args.randomize_cameras:
    cfg["randomize_cameras"] = True
  if args.randomize_cameras or args.camera_params_per_step:
    cfg["camera_params_per_step"] = True
  if args.policy == "explore":
    cfg["policy"], cfg["explore_steps"] = "explore", args.explore_steps
  splits = {"train": jobs_for(args.suite, args.episodes, 0, args.seed)}
  if args.val_episodes:
    splits["val"] = jobs_for(args.suite, args.val_episodes, args.episodes, args.seed)
  stats = {"episodes": 0, "steps": 0, "successes": 0, "retries": 0, "per_family": {}}
  # 'spawn': workers never inherit TensorFlow / EGL state from this process.
  ctx = multiprocessing.get_context("spawn")
  pool = ctx.Pool(args.workers, initializer=_init_worker, initargs=(cfg,))

  def examples(split: str):
    jobs = splits[split]
    for key, example, attempts in tqdm(pool.imap(_make_episode, jobs), total=len(jobs), desc=f"{split} episodes",
                                       file=sys.stderr):
      meta = example["episode_metadata"]
      fam = stats["per_family"].setdefault(meta["task_family"], {"episodes": 0, "successes": 0})
      fam["episodes"] += 1
      fam["successes"] += int(meta["success"])
      stats["episodes"] += 1
      stats["steps"] += len(example["steps"])
      stats["successes"] += int(meta["success"])
      stats["retries"] += attempts - 1
      yield key, example

  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  start = time.time()
  try:
    with contextlib.redirect_stdout(sys.stderr):  # tfds prints progress to stdout: keep stdout for the JSON
      tfds.dataset_builders.store_as_tfds_dataset(
          name=rlds_export.dataset_name(args.suite),
          version=rlds_export.VERSION,
          features=rlds_export.features(args.image_size, args.num_points, args.flow_steps,
                                        optical_flow=args.optical_flow_steps > 0,
                                        images=rlds_export.num_images(cfg["cameras"]),
                                        camera_params_per_step=cfg.get("camera_params_per_step", False)),
          split_datasets={split: examples(split) for split in splits},
          data_dir=args.out,
          description=(f"lamp_jax tabletop benchmark, suite '{args.suite}': scripted demonstrations with exact "
                       f"3D scene flow (K={args.num_points}, T={args.flow_steps}). Config: {json.dumps(cfg)}; "
                       f"seed={args.seed}."),
          disable_shuffling=True,
      )
  finally:
    pool.close()
    pool.join()
  stats["seconds"] = round(time.time() - start, 1)
  stats["path"] = target
  return stats


def main(argv=None) -> None:
  args = parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
  print(json.dumps(generate(args), indent=1))


if __name__ == "__main__":
  main()
