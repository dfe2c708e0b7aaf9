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


def difference_interval(successes_a: int, trials_a: int, successes_b: int, trials_b: int,
                        z: float = 1.959963984540054) -> tuple[float, float]:
  """Newcombe's hybrid score interval (his method 10) of p_a - p_b for two independent binomial proportions,
  built from the two Wilson intervals (default 95 %). Returns (low, high)."""
  p_a, p_b = successes_a / trials_a, successes_b / trials_b
  low_a, high_a = wilson_interval(successes_a, trials_a, z)
  low_b, high_b = wilson_interval(successes_b, trials_b, z)
  d = p_a - p_b
  return (d - math.sqrt((p_a - low_a) ** 2 + (high_b - p_b) ** 2),
          d + math.sqrt((high_a - p_a) ** 2 + (p_b - low_b) ** 2))
