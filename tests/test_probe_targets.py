"""MVP-LAM's net relative action target and (t, t + k) pair indices (lamp_jax.probe.targets), by hand."""

import numpy as np
import pytest

from lamp_jax.probe import targets

MEAN = np.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5])
STD = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5])


def test_net_relative_action_by_hand():
  windows = np.zeros((2, 3, 7))
  windows[0] = [[0.5, 1, 0, 0, 0, 0, 1],    # raw (1.1, 1, 0, 0, 0, 0, 1.0)
                [-0.5, 0, 2, 0, 0, 0, -1],  # raw (-0.9, 0, 2, 0, 0, 0, 0.0)
                [0, 0, 0, 1, 0, 0, -1]]     # raw (0.1, 0, 0, 1, 0, 0, 0.0)
  # windows[1] = 0: every step is the dataset mean (0.1, 0, 0, 0, 0, 0, 0.5).
  raw = targets.denormalize(windows, MEAN, STD)
  np.testing.assert_allclose(raw[0, 0], [1.1, 1, 0, 0, 0, 0, 1.0])
  net = targets.net_action(raw)
  # Continuous dims summed over the 3 steps, the gripper is the LAST step's command.
  np.testing.assert_allclose(net, [[0.3, 1, 2, 1, 0, 0, 0.0], [0.3, 0, 0, 0, 0, 0, 0.5]], atol=1e-12)
  normalized, stats = targets.net_relative_action_targets(windows, MEAN, STD)
  assert stats.horizon == 3
  np.testing.assert_allclose(stats.mean, [0.3, 0.5, 1, 0.5, 0, 0, 0.25], atol=1e-12)
  np.testing.assert_allclose(stats.std, [0, 0.5, 1, 0.5, 0, 0, 0.25], atol=1e-12)
  # Constant dimensions stay 0 (the eps keeps them finite).
  np.testing.assert_allclose(normalized, [[0, 1, 1, 1, 0, 0, -1], [0, -1, -1, -1, 0, 0, 1]], atol=1e-6)
  # Another split normalised with these statistics.
  again, same = targets.net_relative_action_targets(windows[:1], MEAN, STD, stats=stats)
  assert same is stats
  np.testing.assert_allclose(again, normalized[:1], atol=1e-6)


def test_horizon_one_keeps_the_step():
  window = np.random.default_rng(0).normal(size=(5, 1, 7))
  np.testing.assert_allclose(targets.net_action(targets.denormalize(window, MEAN, STD)),
                             window[:, 0] * STD + MEAN)


def test_shape_errors_name_the_array():
  with pytest.raises(ValueError, match=r"expected actions float\[N, k >= 1, 7\]"):
    targets.net_action(np.zeros((4, 7)))
  with pytest.raises(ValueError, match="need mean and std of shape"):
    targets.denormalize(np.zeros((4, 2, 7)), MEAN[:6], STD)


def test_transition_pairs_stay_inside_episodes():
  lengths = [3, 1, 4]  # rows 0-2 | 3 | 4-7
  pairs = targets.transition_pairs(lengths, stride=2)
  np.testing.assert_array_equal(pairs.first, [0, 4, 5])
  np.testing.assert_array_equal(pairs.second, [2, 6, 7])
  np.testing.assert_array_equal(pairs.episode, [0, 2, 2])
  assert pairs.skipped == 0
  actions = np.arange(8.0)[:, None] * np.ones(7)
  np.testing.assert_array_equal(targets.action_windows(actions, pairs)[:, :, 0], [[0, 1], [4, 5], [5, 6]])


def test_crossing_starts_are_an_error_or_a_counted_skip():
  lengths = [3, 1, 4]
  with pytest.raises(ValueError, match=r"pair \(row 1, row 3\) crosses the end of episode 0 \(rows 0..2\)"):
    targets.transition_pairs(lengths, stride=2, starts=[0, 1, 3, 5])
  pairs = targets.transition_pairs(lengths, stride=2, starts=[0, 1, 3, 5], on_cross="skip")
  np.testing.assert_array_equal(pairs.first, [0, 5])
  np.testing.assert_array_equal(pairs.episode, [0, 2])
  assert pairs.skipped == 2
  with pytest.raises(ValueError, match="start row 8 is outside the 8 rows"):
    targets.transition_pairs(lengths, stride=1, starts=[8])
  with pytest.raises(ValueError, match="stride must be >= 1"):
    targets.transition_pairs(lengths, stride=0)
