"""Success-rate statistics."""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion (default 95 %). Returns (low, high); (0, 1) for 0 trials."""
  if trials < 0 or successes < 0 or successes > trials:
    raise ValueError(f"need 0 <= successes <= trials, got successes={successes}, trials={trials}")
  if trials == 0:
    return 0.0, 1.0
  p = successes / trials
  denom = 1.0 + z * z / trials
  centre = (p + z * z / (2 * trials)) / denom
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
  return max(0.0, centre - half), min(1.0, centre + half)


def tasks_of(results: dict[str, dict]) -> list[str]:
  """The tasks of several evaluation results ({run: {'per_task': {task: ...}}}), in first-seen order."""
  tasks: list[str] = []
  for result in results.values():
    tasks.extend(t for t in result["per_task"] if t not in tasks)
  return tasks
