"""Usage statistics of a VQ latent action's discrete codes int[N, L] (N samples, L codes each, codebook size C).

  usage / usage_per_position   how often each code occurs (all positions pooled / per position)
  code_entropy_bits            entropy of the pooled code distribution; per position too
  perplexity                   exp of the code entropy in nats = 2 ** bits: the effective number of codes
                               in use (uniform over C codes: C; one code: 1)
  dead_codes                   codes never used (pooled over positions)
  latent_entropy_bits          entropy of the whole latent, the L-tuple of codes, as empirical distribution
                               over the distinct tuples (MVP-LAM reports it next to the MI so that a larger MI
                               is not only a larger marginal entropy). At most log2(N): with N samples a
                               plug-in estimate saturates there, and it is biased low when C ** L is not ≪ N.

All entropies are plug-in (empirical frequencies), in bits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class CodeStatistics:
  """Code usage of int[N, L] codes with a codebook of ``codebook_size`` (attributes: module docstring)."""

  num_samples: int
  code_length: int
  codebook_size: int
  usage: np.ndarray  # int64[C]
  usage_per_position: np.ndarray  # int64[L, C]
  code_entropy_bits: float
  perplexity: float
  code_entropy_bits_per_position: np.ndarray  # float64[L]
  perplexity_per_position: np.ndarray  # float64[L]
  dead_codes: np.ndarray  # int64[K] code ids never used
  latent_entropy_bits: float
  num_distinct_latents: int

  @property
  def dead_fraction(self) -> float:
    return self.dead_codes.size / self.codebook_size

  def to_dict(self) -> dict[str, Any]:
    """JSON-able (arrays as lists)."""
    return {f.name: (lambda v: v.tolist() if isinstance(v, np.ndarray) else v)(getattr(self, f.name))
            for f in dataclasses.fields(self)} | {"dead_fraction": self.dead_fraction}


def entropy_bits(counts: np.ndarray) -> float:
  """Entropy in bits of the empirical distribution with (non-negative) ``counts``."""
  counts = np.asarray(counts, np.float64)
  total = counts.sum()
  if total <= 0:
    raise ValueError("entropy of an empty histogram (all counts 0)")
  p = counts[counts > 0] / total
  return float(-np.sum(p * np.log2(p)))


def check_codes(codes: np.ndarray, codebook_size: int) -> np.ndarray:
  """int64[N, L] from int[N, L] or int[N] codes; errors name the first out-of-range entry."""
  codes = np.asarray(codes)
  if not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
  if codes.ndim == 1:
    codes = codes[:, None]
  if codes.ndim != 2 or codes.shape[0] == 0:
    raise ValueError(f"codes must be int[N, L] with N > 0, got shape {codes.shape}")
  if codebook_size < 1:
    raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
  bad = (codes < 0) | (codes >= codebook_size)
  if bad.any():
    row, col = (int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"codes[{row}, {col}] = {int(codes[row, col])} is outside the codebook [0, {codebook_size}) "
                     f"({int(bad.sum())} entries out of range)")
  return codes.astype(np.int64)


def code_statistics(codes: np.ndarray, codebook_size: int) -> CodeStatistics:
  """Usage histogram, entropies, perplexities and dead codes of ``codes`` int[N, L] (or int[N])."""
  codes = check_codes(codes, codebook_size)
  n, length = codes.shape
  per_position = np.stack([np.bincount(codes[:, l], minlength=codebook_size) for l in range(length)])
  usage = per_position.sum(0)
  entropy = entropy_bits(usage)
  entropy_per_position = np.array([entropy_bits(row) for row in per_position])
  _, tuple_counts = np.unique(codes, axis=0, return_counts=True)
  return CodeStatistics(
      num_samples=int(n), code_length=int(length), codebook_size=int(codebook_size), usage=usage,
      usage_per_position=per_position, code_entropy_bits=entropy, perplexity=float(2.0**entropy),
      code_entropy_bits_per_position=entropy_per_position, perplexity_per_position=2.0**entropy_per_position,
      dead_codes=np.flatnonzero(usage == 0), latent_entropy_bits=entropy_bits(tuple_counts),
      num_distinct_latents=int(tuple_counts.size))


def max_latent_entropy_bits(codebook_size: int, code_length: int, num_samples: int) -> float:
  """The largest value ``latent_entropy_bits`` can take: min(L·log2 C, log2 N)."""
  return min(code_length * math.log2(codebook_size), math.log2(num_samples))
