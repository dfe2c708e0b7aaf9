"""KSG (lamp_jax.probe.ksg) against a brute-force reference and against closed-form MI of Gaussian tasks.

Tolerance (stated in lamp_jax/probe/ksg.py's bias table too): at n = 3000 and low dimension (z, a of 1-3
dimensions each) KSG lands within 0.1 bits of the true MI; on independent variables within 0.05 bits of 0.
"""

import math

import numpy as np
import pytest
from scipy import special

from lamp_jax.probe import arrays, gaussian_tasks, ksg

KSG_TOLERANCE_BITS = 0.1
NO_PROJECTION = ksg.KSGConfig(projection_dim=None)


def ksg_reference_bits(z, a, k):
  """KSG estimator 1 from full max-norm distance matrices (O(N²)): no trees, no tricks."""
  n = len(z)
  dist_z = np.abs(z[:, None, :] - z[None, :, :]).max(-1)
  dist_a = np.abs(a[:, None, :] - a[None, :, :]).max(-1)
  radius = np.sort(np.maximum(dist_z, dist_a), axis=1)[:, k]  # column 0: the point itself
  n_z = (dist_z < radius[:, None]).sum(1) - 1
  n_a = (dist_a < radius[:, None]).sum(1) - 1
  nats = special.digamma(k) + special.digamma(n) - np.mean(special.digamma(n_z + 1) + special.digamma(n_a + 1))
  return nats / math.log(2)


@pytest.mark.parametrize("backend", ksg.BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_matches_numpy_reference(k, backend):
  z, a = gaussian_tasks.linear_gaussian_channel(z_dim=3, a_dim=2, noise_std=0.7, seed=5).sample(257, seed=11)
  np.testing.assert_allclose(ksg.ksg_nats(z, a, k, backend) / math.log(2), ksg_reference_bits(z, a, k), atol=1e-12)
  # Ties: rounded values give many equal distances; both backends count them as the reference does.
  z_round, a_round = np.round(z, 1) + 1e-3 * np.arange(len(z))[:, None], np.round(a, 1)
  np.testing.assert_allclose(ksg.ksg_nats(z_round, a_round, k, backend) / math.log(2),
                             ksg_reference_bits(z_round, a_round, k), atol=1e-12)
  # The public entry point = the reference on z-scored inputs (no jitter, no projection).
  config = ksg.KSGConfig(k=k, projection_dim=None, jitter=0.0, backend=backend)
  expected = ksg_reference_bits(arrays.standardize(z, "z"), arrays.standardize(a, "a"), k)
  np.testing.assert_allclose(ksg.ksg_mutual_information(z, a, config).bits, expected, atol=1e-12)


@pytest.mark.parametrize("task", [
    gaussian_tasks.correlated_gaussian((0.9,)),
    gaussian_tasks.correlated_gaussian((0.8, 0.5)),
    gaussian_tasks.linear_gaussian_channel(z_dim=3, a_dim=2, noise_std=1.0, seed=3),
], ids=lambda t: t.name)
def test_close_to_closed_form_at_low_dimension(task):
  z, a = task.sample(3000, seed=1)
  result = ksg.ksg_mutual_information(z, a, NO_PROJECTION)
  assert result.num_points == 3000
  assert abs(result.bits - task.bits) < KSG_TOLERANCE_BITS, (task.name, result.bits, task.bits)


def test_independent_is_near_zero():
  z, a = gaussian_tasks.independent_gaussian(z_dim=3, a_dim=2).sample(3000, seed=2)
  assert abs(ksg.ksg_mutual_information(z, a, NO_PROJECTION).bits) < 0.05


def test_invariant_to_per_dimension_affine_maps_and_flattening():
  z, a = gaussian_tasks.correlated_gaussian((0.7, 0.4)).sample(1009, seed=3)
  base = ksg.ksg_mutual_information(z, a, NO_PROJECTION).bits
  rescaled = ksg.ksg_mutual_information(z * [13.0, 0.07] - 5.0, a * [0.3, 170.0] + 2.0, NO_PROJECTION).bits
  np.testing.assert_allclose(rescaled, base, atol=1e-3)
  # float[N, L, D] latents are flattened per sample.
  np.testing.assert_allclose(ksg.ksg_mutual_information(z.reshape(-1, 1, 2), a, NO_PROJECTION).bits, base)


def test_projection_is_seeded_and_keeps_a_lower_bound():
  # One informative latent dimension among 15 noise dimensions; the projection to 4 mixes it with noise.
  task = gaussian_tasks.correlated_gaussian((0.95,))
  z_info, a = task.sample(2000, seed=4)
  z = np.concatenate([z_info, np.random.default_rng(5).normal(size=(2000, 15))], axis=1)
  config = ksg.KSGConfig(projection_dim=4)
  first = ksg.ksg_mutual_information(z, a, config, seed=7)
  assert first.z_dim == 4
  assert first.bits == ksg.ksg_mutual_information(z, a, config, seed=7).bits  # same seed, same projection
  assert first.bits != ksg.ksg_mutual_information(z, a, config, seed=8).bits
  assert first.bits < task.bits + KSG_TOLERANCE_BITS
  # A latent already at or below the projection dimension is used as is.
  assert ksg.ksg_mutual_information(z_info, a, config).z_dim == 1


def test_discrete_latents_need_jitter():
  rng = np.random.default_rng(6)
  codes = rng.integers(0, 3, size=(500, 2)).astype(np.float64)
  a = codes @ [[1.0], [2.0]] + 0.1 * rng.normal(size=(500, 1))
  with pytest.raises(ValueError, match="exact duplicates"):
    ksg.ksg_mutual_information(codes, np.round(a), ksg.KSGConfig(projection_dim=None, jitter=0.0))
  # With the default jitter the estimate exists and is positive (z determines a up to small noise).
  assert ksg.ksg_mutual_information(codes, a, ksg.KSGConfig(projection_dim=None)).bits > 1.0


def test_bad_inputs_are_named():
  z = np.zeros((10, 2))
  with pytest.raises(ValueError, match="z has 10 samples but a has 9"):
    ksg.ksg_mutual_information(z, np.zeros((9, 1)))
  with pytest.raises(ValueError, match="k < N"):
    ksg.ksg_nats(z[:3], z[:3], k=3)
  z[4, 1] = np.nan
  with pytest.raises(ValueError, match=r"z: non-finite value at index \(4, 1\)"):
    ksg.ksg_mutual_information(z, np.ones((10, 1)))


def test_gaussian_task_closed_forms_match_sample_covariance():
  # For jointly Gaussian (z, a): I = ½ log(det Σ_z det Σ_a / det Σ) — check each closed form on 200 000 samples.
  for task in (gaussian_tasks.correlated_gaussian((0.8, 0.3)),
               gaussian_tasks.linear_gaussian_channel(z_dim=5, a_dim=3, noise_std=0.6, seed=1)):
    z, a = task.sample(200_000, seed=0)
    cov = np.cov(np.concatenate([z, a], 1), rowvar=False)
    dz = z.shape[1]
    logdet = lambda m: np.linalg.slogdet(m)[1]
    empirical = 0.5 * (logdet(cov[:dz, :dz]) + logdet(cov[dz:, dz:]) - logdet(cov))
    np.testing.assert_allclose(empirical, task.nats, atol=0.01)
    np.testing.assert_allclose(gaussian_tasks.gaussian_total_correlation_nats(cov[dz:, dz:]),
                               task.a_total_correlation_nats, atol=0.01)
