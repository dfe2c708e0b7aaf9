"""Linear probes (lamp_jax.probe.linear_probe): PCA round trips, NMSE against closed-form answers and against
ordinary least squares."""

import dataclasses

import numpy as np
import pytest

from lamp_jax.probe import linear_probe

# 2100 rows / batch 128: 17 steps per epoch, 510 steps in all (the paper's batch 512 trains too few steps on
# a few thousand rows; see test_paper_defaults_undertrain_small_sets).
FAST = linear_probe.LinearProbeConfig(n_components=7, batch_size=128, learning_rate=1e-2)
NOISE_FRACTION = 0.3


def linear_task(rows, z_dim=11, a_dim=3, shift=0.0, seed=0):
  """a = W z + noise with noise carrying NOISE_FRACTION of each action dimension's variance; z of rank 7."""
  weights = np.random.default_rng(100).normal(size=(7, a_dim))
  basis = np.linalg.qr(np.random.default_rng(101).normal(size=(z_dim, 7)))[0].T  # [7, z_dim] orthonormal rows
  rng = np.random.default_rng(seed)
  factors = rng.normal(size=(rows, 7)) * np.linspace(2.0, 0.5, 7) + shift
  signal = factors @ weights
  signal_var = (np.linspace(2.0, 0.5, 7)**2) @ weights**2
  noise = rng.normal(size=(rows, a_dim)) * np.sqrt(NOISE_FRACTION / (1 - NOISE_FRACTION) * signal_var)
  return factors @ basis, signal + noise


def test_pca_round_trip_and_orthonormality():
  z, _ = linear_task(500)  # rank 7 in 11 dimensions
  pca = linear_probe.fit_pca(z, 7)
  np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(7), atol=1e-10)
  np.testing.assert_allclose(pca.inverse_transform(pca.transform(z)), z, atol=1e-10)
  np.testing.assert_allclose(pca.explained_variance_ratio, 1.0, atol=1e-12)
  assert np.all(np.diff(pca.explained_variance) <= 0)
  np.testing.assert_allclose(pca.transform(z).var(0), pca.explained_variance, rtol=1e-10)
  # Fewer components: the reconstruction error is exactly the variance left out.
  pca3 = linear_probe.fit_pca(z, 3)
  residual = np.mean(np.sum(np.square(pca3.inverse_transform(pca3.transform(z)) - z), axis=1))
  np.testing.assert_allclose(residual, pca.explained_variance[3:].sum(), rtol=1e-8)
  # More components than dimensions: clamped.
  assert linear_probe.fit_pca(z[:, :4], 64).components.shape == (4, 4)
  with pytest.raises(ValueError, match="PCA fitted on 11 dimensions was given 4"):
    pca.transform(z[:, :4])


def test_fewer_train_rows_than_latent_dims_keeps_heldout_finite():
  """The bug: with N train rows < D latent dims the PCA kept its N-th direction (rank N - 1 once centred, so
  pure rounding noise), the probe standardised it by ~1e-15 and held-out NMSE came out ~1e28."""
  rng = np.random.default_rng(3)
  z = rng.normal(size=(41 + 199, 97))
  a = z @ rng.normal(size=(97, 3)) + 0.1 * rng.normal(size=(240, 3))
  pca = linear_probe.fit_pca(z[:41], 64)
  assert pca.components.shape == (40, 97)  # the centred train split's rank
  config = dataclasses.replace(FAST, n_components=64, batch_size=32, epochs=30)
  result = linear_probe.forward_probe(z[:41], a[:41], {"heldout": (z[41:], a[41:])}, config)
  assert result.input_dim == 40
  # 40 inputs + bias fit 41 rows exactly; held out, a minimum-norm interpolation explains part of a: NMSE < 1.
  assert result.nmse_least_squares["train"] < 1e-20
  assert 0.0 < result.nmse["heldout"] < 1.0 and 0.0 < result.nmse_least_squares["heldout"] < 1.0
  with pytest.raises(ValueError, match="all 5 rows are equal"):
    linear_probe.fit_pca(np.ones((5, 3)), 2)


def test_nmse_definition():
  targets = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 16.0]])
  # Predicting the split's mean scores 1; errors are pooled over dimensions: (Σ MSE) / (Σ Var).
  assert linear_probe.nmse(np.tile(targets.mean(0), (3, 1)), targets)[0] == pytest.approx(1.0)
  pooled, per_dim = linear_probe.nmse(targets + [[1.0, 0.0]] * 3, targets)
  var = targets.var(0)
  assert pooled == pytest.approx(1.0 / var.sum())
  np.testing.assert_allclose(per_dim, [1.0 / var[0], 0.0])
  with pytest.raises(ValueError, match="zero variance"):
    linear_probe.nmse(np.zeros((3, 1)), np.ones((3, 1)))


def test_nmse_is_the_noise_fraction_on_a_linear_task():
  z, a = linear_task(2100, seed=1)
  heldout, ood = linear_task(900, seed=2), linear_task(900, shift=1.5, seed=3)
  result = linear_probe.forward_probe(z, a, {"heldout": heldout, "ood": ood}, FAST)
  for split in ("train", "heldout", "ood"):
    assert result.nmse[split] == pytest.approx(NOISE_FRACTION, abs=0.04), (split, result.nmse)
    # The trained probe reaches the least-squares optimum on the same features.
    assert result.nmse[split] == pytest.approx(result.nmse_least_squares[split], abs=0.005)
  np.testing.assert_allclose(result.nmse_per_dim["heldout"], NOISE_FRACTION, atol=0.06)
  assert (result.input_dim, result.target_dim) == (7, 3)
  assert result.pca_explained_variance_ratio == pytest.approx(1.0)
  assert result.num_rows == {"train": 2100, "heldout": 900, "ood": 900}


def test_independent_targets_give_nmse_about_one():
  z, _ = linear_task(2100, seed=4)
  rng = np.random.default_rng(5)
  result = linear_probe.forward_probe(z, rng.normal(size=(2100, 3)),
                                      {"heldout": (linear_task(900, seed=6)[0], rng.normal(size=(900, 3)))}, FAST)
  assert 0.98 < result.nmse["heldout"] < 1.04
  assert result.nmse["train"] <= 1.0


def test_a_probe_that_misses_an_ood_shift_scores_above_one():
  z, a = linear_task(2100, seed=7)
  z_ood, a_ood = linear_task(900, seed=8)
  result = linear_probe.forward_probe(z, a, {"ood": (z_ood, a_ood + 3.0 * a.std(0))}, FAST)
  assert result.nmse["ood"] > 5.0  # its variance is unchanged, its mean is off by 3 std per dimension


def test_inverse_probe_measures_what_the_action_does_not_explain():
  # z = [action-driven part (3 dims), exogenous noise (4 dims, variance v)]: a -> z explains the first part only.
  rng = np.random.default_rng(9)
  a = rng.normal(size=(3000, 3))
  mixing = np.random.default_rng(10).normal(size=(3, 3))
  noise_std = 0.8
  z = np.concatenate([a @ mixing, noise_std * rng.normal(size=(3000, 4))], axis=1)
  config = dataclasses.replace(FAST, n_components=None)
  result = linear_probe.inverse_probe(z[:2100], a[:2100], {"heldout": (z[2100:], a[2100:])}, config)
  expected = 4 * noise_std**2 / (4 * noise_std**2 + np.sum(mixing**2))
  assert result.nmse["heldout"] == pytest.approx(expected, abs=0.03)
  assert (result.input_dim, result.target_dim) == (3, 7)
  # A latent that is a function of the action alone is recovered: inverse NMSE ≈ 0.
  minimal = linear_probe.inverse_probe(z[:2100, :3], a[:2100], {"heldout": (z[2100:, :3], a[2100:])}, config)
  assert minimal.nmse["heldout"] < 0.01


def test_paper_defaults_undertrain_small_sets():
  # Batch 512, lr 1e-3, 30 epochs on 2100 rows = 150 steps: the closed-form reference shows the gap.
  z, a = linear_task(2100, seed=11)
  defaults = dataclasses.replace(linear_probe.LinearProbeConfig(), n_components=7)
  result = linear_probe.forward_probe(z, a, {"heldout": linear_task(900, seed=12)}, defaults)
  assert result.nmse_least_squares["heldout"] == pytest.approx(NOISE_FRACTION, abs=0.04)
  assert result.nmse["heldout"] > result.nmse_least_squares["heldout"] + 0.1


def test_config_and_split_errors():
  with pytest.raises(ValueError, match="LinearProbeConfig.schedule"):
    linear_probe.LinearProbeConfig(schedule="linear")
  z, a = linear_task(50)
  with pytest.raises(ValueError, match="'train' is reserved"):
    linear_probe.forward_probe(z, a, {"train": (z, a)}, FAST)
