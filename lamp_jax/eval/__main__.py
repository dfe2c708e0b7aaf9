"""python -m lamp_jax.eval --policy=expert|random|checkpoint:DIR --suite=tabletop4 --episodes-per-task=N"""

from __future__ import annotations

import argparse
import json

from lamp_jax.eval import policies, sim_eval
from lamp_jax.sim import tasks


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description="Closed-loop evaluation on the built-in MuJoCo tabletop benchmark. "
                              "Prints per-task success, the mean and Wilson 95%% intervals as JSON. Evaluation "
                              f"seeds start at {tasks.EVAL_SEED_OFFSET} (demonstrations use seeds below "
                              f"{tasks.DEMO_SEED_LIMIT}).")
  p.add_argument("--policy", default="expert", help="'expert', 'random' or 'checkpoint:DIR'")
  p.add_argument("--suite", default="tabletop4", choices=sorted(tasks.SUITES))
  p.add_argument("--episodes-per-task", type=int, default=10)
  p.add_argument("--execute-steps", type=int, default=None, help="k: execute k of the H actions of each chunk "
                 "(default: all H)")
  p.add_argument("--image-size", type=int, default=None, help="default: the policy's image_size, else 64")
  p.add_argument("--seed-offset", type=int, default=None, help=f"first task seed (default {tasks.EVAL_SEED_OFFSET}; "
                 "with --demonstration-seeds 0)")
  p.add_argument("--demonstration-seeds", action="store_true", help="diagnostic: run the demonstrations' own "
                 "task seeds (the train / held-out gap); the JSON says seed_kind=demonstration")
  p.add_argument("--video-dir", default=None, help="write episode videos here")
  p.add_argument("--videos-per-task", type=int, default=1)
  p.add_argument("--video-format", default="mp4", choices=["mp4", "gif"])
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--out", default=None, help="also write the full result, with each episode's outcome label "
                 "(failure_modes), to this JSON file; stdout leaves the per-episode list out")
  args = p.parse_args(argv)
  policy = policies.make_policy(args.policy)
  result = sim_eval.evaluate(policy, suite=args.suite, episodes_per_task=args.episodes_per_task,
                             execute_steps=args.execute_steps, image_size=args.image_size,
                             seed_offset=(args.seed_offset if args.seed_offset is not None else
                                          0 if args.demonstration_seeds else tasks.EVAL_SEED_OFFSET),
                             demonstration_seeds=args.demonstration_seeds, video_dir=args.video_dir,
                             videos_per_task=args.videos_per_task, video_format=args.video_format,
                             progress=not args.no_progress)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  print(json.dumps({k: v for k, v in result.items() if k != "episode_outcomes"}, indent=1))


if __name__ == "__main__":
  from lamp_jax import allocator

  allocator.reexec_with_tcmalloc("lamp_jax.eval")  # XLA:CPU runs 1.75x faster on it (allocator.py)
  main()
