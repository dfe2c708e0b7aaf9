"""Code usage statistics (lamp_jax.probe.codes) on distributions with known entropy."""

import math

import numpy as np
import pytest

from lamp_jax.probe import codes


def test_uniform_usage_has_perplexity_codebook_size():
  c, length = 13, 3
  # Every code equally often at every position; the 13**1 distinct rows repeated 7 times.
  grid = np.stack([(np.arange(13 * 7) + shift) % c for shift in range(length)], axis=1)
  stats = codes.code_statistics(grid, c)
  assert stats.perplexity == pytest.approx(c)
  np.testing.assert_allclose(stats.perplexity_per_position, c)
  assert stats.code_entropy_bits == pytest.approx(math.log2(c))
  assert stats.dead_codes.size == 0 and stats.dead_fraction == 0.0
  np.testing.assert_array_equal(stats.usage, np.full(c, 7 * length))
  # Rows are (i, i+1, i+2) mod 13: 13 distinct latents, equally likely.
  assert stats.num_distinct_latents == c
  assert stats.latent_entropy_bits == pytest.approx(math.log2(c))


def test_single_code_has_perplexity_one_and_the_rest_dead():
  stats = codes.code_statistics(np.full((31, 4), 5), codebook_size=7)
  assert stats.perplexity == pytest.approx(1.0)
  assert stats.code_entropy_bits == 0.0 and stats.latent_entropy_bits == 0.0
  np.testing.assert_array_equal(stats.dead_codes, [0, 1, 2, 3, 4, 6])
  assert stats.dead_fraction == pytest.approx(6 / 7)


def test_known_skewed_distribution_and_independent_positions():
  # Position 0 uses codes {0, 1} with p = (3/4, 1/4), position 1 is uniform over {0, 1, 2, 3}, all combinations
  # equally often: the latent entropy is the sum of the position entropies.
  p0 = np.array([0] * 3 + [1])
  rows = np.array([(a, b) for a in p0 for b in range(4)])
  stats = codes.code_statistics(rows, codebook_size=5)
  h0 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
  np.testing.assert_allclose(stats.code_entropy_bits_per_position, [h0, 2.0])
  assert stats.latent_entropy_bits == pytest.approx(h0 + 2.0)
  pooled = np.array([16, 8, 4, 4]) / 32  # codes 0..3 over both positions (code 4 unused)
  assert stats.code_entropy_bits == pytest.approx(-np.sum(pooled * np.log2(pooled)))  # 1.75 bits
  np.testing.assert_array_equal(stats.dead_codes, [4])
  assert stats.to_dict()["usage_per_position"] == [[12, 4, 0, 0, 0], [4, 4, 4, 4, 0]]
  assert codes.max_latent_entropy_bits(5, 2, 16) == pytest.approx(4.0)


def test_out_of_range_codes_are_named():
  bad = np.zeros((4, 2), np.int32)
  bad[2, 1] = 9
  with pytest.raises(ValueError, match=r"codes\[2, 1\] = 9 is outside the codebook \[0, 8\)"):
    codes.code_statistics(bad, 8)
  with pytest.raises(ValueError, match="must be integers"):
    codes.code_statistics(np.zeros((4, 2)), 8)
