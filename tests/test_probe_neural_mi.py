"""Barber–Agakov and MINE (lamp_jax.probe.neural_mi) on Gaussian tasks with closed-form MI, and the seed /
mismatch aggregation of lamp_jax.probe.mutual_information.

Tolerances (an MLP with one hidden layer of 64, 600 steps, 3000 pairs: loose bounds): a lower bound may exceed
the truth only by estimation noise on the test split, ``ABOVE_TRUTH_BITS`` = 0.1; it should come within
``BELOW_TRUTH_BITS`` = 0.3 (BA) / 0.35 (MINE) of it. The diagonal-marginal BA is NOT a lower bound: it exceeds
the full-covariance BA by exactly the train actions' total correlation.
"""

import dataclasses

import numpy as np
import pytest

from lamp_jax.probe import arrays, gaussian_tasks, ksg, mutual_information, neural_mi

SMALL = neural_mi.NeuralMIConfig(batch_size=256, max_steps=600, hidden_dim=64, depth=2, eval_every=50,
                                 patience=4)
N = 3000  # every test: one compilation per (method, action dimension) in the process
ABOVE_TRUTH_BITS = 0.1
BELOW_TRUTH_BITS = {"ba": 0.3, "mine": 0.35}
CORRELATED = gaussian_tasks.correlated_gaussian((0.9, 0.6))  # 1.520 bits
CHANNEL = gaussian_tasks.linear_gaussian_channel(z_dim=5, a_dim=3, noise_std=0.6, seed=2)  # 1.923 bits


@pytest.mark.parametrize("method", neural_mi.METHODS)
def test_bounds_on_correlated_gaussians(method):
  z, a = CORRELATED.sample(N, seed=1)
  result = neural_mi.estimate(method, z, a, SMALL, seed=0)
  assert CORRELATED.bits - BELOW_TRUTH_BITS[method] < result.bits < CORRELATED.bits + ABOVE_TRUTH_BITS, result
  assert (result.num_train, result.num_val, result.num_test) == (2100, 450, 450)


def test_mine_on_linear_gaussian_channel():
  z, a = CHANNEL.sample(N, seed=1)
  result = neural_mi.mine(z, a, SMALL, seed=0)
  assert CHANNEL.bits - BELOW_TRUTH_BITS["mine"] < result.bits < CHANNEL.bits + ABOVE_TRUTH_BITS, result


def test_ba_diagonal_marginal_overstates_by_the_total_correlation():
  # a = W z + noise has correlated dimensions (total correlation 0.241 bits): the paper's diagonal H(a) plug-in
  # overstates H(a) by that much; the full-covariance fit does not.
  assert CHANNEL.a_total_correlation_bits > 0.2
  z, a = CHANNEL.sample(N, seed=1)
  full = neural_mi.barber_agakov(z, a, dataclasses.replace(SMALL, ba_marginal="full"), seed=0)
  diagonal = neural_mi.barber_agakov(z, a, SMALL, seed=0)
  assert CHANNEL.bits - BELOW_TRUTH_BITS["ba"] < full.bits < CHANNEL.bits + ABOVE_TRUTH_BITS, full
  # Same seed, same trained q(a | z): the difference is the marginal term alone, H_diag - H_full of the
  # (z-scored) train actions = their sample total correlation.
  splits = neural_mi.split_indices(N, SMALL, seed=0)
  a_train = arrays.standardize(a[splits.train], "a")
  total_correlation = (neural_mi.gaussian_entropy_nats(a_train, diagonal=True)
                       - neural_mi.gaussian_entropy_nats(a_train, diagonal=False)) / np.log(2)
  np.testing.assert_allclose(diagonal.bits - full.bits, total_correlation, atol=1e-5)
  np.testing.assert_allclose(total_correlation, CHANNEL.a_total_correlation_bits, atol=0.05)
  assert diagonal.bits > CHANNEL.bits


@pytest.mark.parametrize("method", neural_mi.METHODS)
def test_independent_variables_give_about_zero(method):
  # BA's test-split estimate has a spread of ~0.1 bit at 450 test rows: averaged over three seeds.
  z, a = gaussian_tasks.independent_gaussian(z_dim=3, a_dim=2).sample(N, seed=2)
  bits = [neural_mi.estimate(method, z, a, SMALL, seed=s).bits for s in range(3)]
  assert abs(np.mean(bits)) < 0.07, bits


def test_early_stopping_keeps_the_best_validation_checkpoint():
  z, a = gaussian_tasks.independent_gaussian(z_dim=3, a_dim=2).sample(N, seed=3)
  config = dataclasses.replace(SMALL, patience=2, max_steps=2000)
  result = neural_mi.barber_agakov(z, a, config, seed=1)
  steps = [step for step, _ in result.history]
  assert steps == list(range(config.eval_every, result.steps + 1, config.eval_every))
  assert result.steps < config.max_steps  # nothing to learn: validation stops improving
  best_step, best_bits = max(result.history, key=lambda h: h[1])
  assert (result.best_step, result.val_bits) == (best_step, best_bits)
  assert result.steps - result.best_step == config.patience * config.eval_every


def test_splits_partition_the_rows():
  splits = neural_mi.split_indices(1009, SMALL, seed=4)
  rows = np.concatenate([splits.train, splits.val, splits.test])
  np.testing.assert_array_equal(np.sort(rows), np.arange(1009))
  assert (splits.train.size, splits.val.size) == (706, 151)
  with pytest.raises(ValueError, match="the val split of 5 rows has fewer than 2 rows"):
    neural_mi.split_indices(5, SMALL, seed=0)
  with pytest.raises(ValueError, match="leave a test split"):
    neural_mi.NeuralMIConfig(train_fraction=0.9, val_fraction=0.1)


def test_seeds_and_mismatch_aggregation():
  z, a = CORRELATED.sample(2000, seed=5)
  config = ksg.KSGConfig(projection_dim=None)
  estimate = mutual_information.estimate_mutual_information(z, a, "ksg", seeds=(3, 7, 11), ksg_config=config)
  direct = [ksg.ksg_mutual_information(z, a, config, seed=s).bits for s in (3, 7, 11)]
  np.testing.assert_allclose(estimate.bits_per_seed, direct)
  np.testing.assert_allclose(estimate.bits_mean, np.mean(direct))
  np.testing.assert_allclose(estimate.bits_std, np.std(direct, ddof=1))
  shuffled = [ksg.ksg_mutual_information(z, mutual_information.shuffled_pairs(a, s), config, seed=s).bits
              for s in (3, 7, 11)]
  np.testing.assert_allclose(estimate.mismatch_bits_per_seed, shuffled)
  assert abs(estimate.mismatch_bits_mean) < 0.05 < CORRELATED.bits - 0.1 < estimate.bits_mean
  assert estimate.to_dict()["bits_per_seed"] == list(estimate.bits_per_seed)


def test_neural_mismatch_is_about_zero():
  z, a = CORRELATED.sample(N, seed=6)
  estimate = mutual_information.estimate_mutual_information(z, a, "mine", seeds=(0,), neural_config=SMALL)
  assert estimate.bits_std == 0.0 and estimate.details[0]["num_test"] == 450
  assert abs(estimate.mismatch_bits_mean) < 0.05
  assert estimate.bits_mean > CORRELATED.bits - BELOW_TRUTH_BITS["mine"]
