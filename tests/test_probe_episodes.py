"""Probe rows by episode (lamp_jax/probe/episodes.py) and the loader's use of frame ids
(``lam_latents.encode_batches``) on a tiny randomly initialised LAM: repeats found by (episode_key, step_index)
even when augmentation changed the pixels, the value check as the fallback without frame ids, and per-episode
thinning (at most N rows per episode, evenly spaced in time, independent of the stream's order)."""

import jax
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.models import lam as lam_model
from lamp_jax.models import lam_config
from lamp_jax.probe import episodes
from lamp_jax.probe import lam_latents

VIEW = specs.IMAGE_PRIMARY


@pytest.fixture(scope="module")
def lam():
  cfg = lam_config.model_config("tiny")
  params = lam_model.LIBRARY.init_params(cfg, jax.random.key(0), lam_model.dummy_batch(cfg, 2, 0))
  return lam_latents.LoadedLAM(config=None, model_cfg=cfg, model=lam_model.LIBRARY.build(cfg), params=params, step=0,
                               directory="", params_key="params", stage="main")


def _batch(lam, keys, steps, seed):
  """A colour-shift batch of len(keys) examples with frame ids and a random action chunk of k steps."""
  batch = lam_model.dummy_batch(lam.model_cfg, len(keys), seed)
  k = int(lam.model_cfg.future_offsets[0])
  batch[specs.ACTION] = np.random.default_rng(seed).normal(size=(len(keys), k, 7)).astype(np.float32)
  batch[specs.EPISODE_KEY] = np.array([key.encode() for key in keys], dtype=object)
  batch[specs.STEP_INDEX] = np.asarray(steps, np.int32)
  return batch


def _augmented(batch, seed):
  """The same frames (same ids, same actions) with other pixels: noise on the current and the future images."""
  rng = np.random.default_rng(seed)
  obs = batch[specs.OBSERVATION]
  noisy = lambda x: np.clip(x.astype(np.int32) + rng.integers(-12, 13, x.shape), 0, 255).astype(np.uint8)  # noqa: E731
  out_obs = {**obs, VIEW: noisy(obs[VIEW]), specs.FUTURE: {**obs[specs.FUTURE], VIEW: noisy(obs[specs.FUTURE][VIEW])}}
  return {**batch, specs.OBSERVATION: out_obs}


def _without_ids(batch):
  return {k: v for k, v in batch.items() if k not in (specs.EPISODE_KEY, specs.STEP_INDEX)}


def test_first_identities_keeps_the_first_row_of_each_episode_and_step():
  keys = np.array([b"a:0", b"a:0", b"b:0", "a:0", b"a:1", b"b:0"], dtype=object)  # bytes and str of one key
  steps = np.array([3, 4, 3, 3, 3, 3])
  np.testing.assert_array_equal(episodes.first_identities(keys, steps), [0, 1, 2, 4])
  assert episodes.first_identities(keys[:0], steps[:0]).shape == (0,)
  with pytest.raises(ValueError, match=r"step_index has shape \(2,\), episode_key \(6,\)"):
    episodes.first_identities(keys, steps[:2])


def test_thinning_keeps_the_middle_row_of_n_equal_parts_of_each_episode():
  # Episode 'a': steps 0..5 in a shuffled order; 'b': 2 rows (under the limit, all kept).
  keys = np.array(["a", "b", "a", "a", "a", "b", "a", "a"])
  steps = np.array([5, 7, 0, 3, 1, 2, 4, 2])
  kept = episodes.thin_per_episode(keys, steps, 2)
  # 6 rows of 'a' in two parts of 3: the middle rows are steps 1 and 4 (indices 4 and 6).
  np.testing.assert_array_equal(kept, [1, 4, 5, 6])
  # Three parts of 2: steps 1, 3, 5 of 'a' (indices 3, 4, 0), and both rows of 'b'.
  np.testing.assert_array_equal(episodes.thin_per_episode(keys, steps, 3), [0, 1, 3, 4, 5])
  np.testing.assert_array_equal(episodes.thin_per_episode(keys, steps, 0), np.arange(8))
  with pytest.raises(ValueError, match=r"max_rows_per_episode=-1"):
    episodes.thin_per_episode(keys, steps, -1)


def test_episode_index_and_rows_per_episode():
  index, names = episodes.episode_index(np.array([b"x:1", b"x:0", b"x:1", b"y:0"], dtype=object))
  np.testing.assert_array_equal(index, [0, 1, 0, 2])
  assert names == ("x:1", "x:0", "y:0") and index.dtype == np.int32
  assert episodes.rows_per_episode(np.array(["x", "y", "x", "x"])) == {"episodes": 2, "mean": 2.0, "max": 3}
  assert episodes.rows_per_episode(np.array([], dtype=str)) == {"episodes": 0, "mean": 0.0, "max": 0}


def test_repeats_under_augmentation_are_found_by_identity_not_by_value(lam):
  keys, steps = ["f:0"] * 4 + ["f:1"] * 3, [0, 1, 2, 3, 0, 1, 2]
  clean = _batch(lam, keys, steps, seed=1)
  clean[specs.OBSERVATION][specs.FUTURE_PAD_MASK][2] = False  # an invalid pair: dropped, never a row
  again = _augmented(clean, seed=2)
  once = lam_latents.encode_batches(lam, [clean], view=VIEW, offset_index=0)
  assert once["repeats_by"] == "identity" and once["duplicates"] == 0 and once["dropped"] == 1
  valid = once["z"].shape[0]
  assert valid == 6
  # The augmented copy gives other latents: a value check cannot see the repeat.
  by_value = lam_latents.encode_batches(lam, [_without_ids(clean), _without_ids(again)], view=VIEW, offset_index=0)
  assert by_value["repeats_by"] == "value" and by_value["duplicates"] == 0
  assert by_value["z"].shape[0] == 2 * valid
  assert not np.any(np.all(by_value["z"][:valid] == by_value["z"][valid:], axis=1))
  # By identity every repeated row is left out and counted; the first occurrences are kept.
  both = lam_latents.encode_batches(lam, [clean, again], view=VIEW, offset_index=0)
  assert both["repeats_by"] == "identity" and both["duplicates"] == valid and both["dropped"] == 2
  for key in ("z", "codes", "quantized", "action", "step_index"):
    np.testing.assert_array_equal(both[key], once[key])
  np.testing.assert_array_equal(both["episode_key"], ["f:0"] * 3 + ["f:1"] * 3)
  np.testing.assert_array_equal(both["step_index"], [0, 1, 3, 0, 1, 2])
  assert both["rows_per_episode"] == {"episodes": 2, "mean": 3.0, "max": 3} and both["thinned"] == 0
  kept = lam_latents.encode_batches(lam, [clean, again], view=VIEW, offset_index=0, drop_duplicates=False)
  assert kept["repeats_by"] == "none" and kept["duplicates"] == 0 and kept["z"].shape[0] == 2 * valid


def test_without_frame_ids_the_value_check_drops_exact_repeats(lam):
  batch = _without_ids(_batch(lam, ["g:0"] * 5, range(5), seed=3))
  twice = lam_latents.encode_batches(lam, [batch, batch], view=VIEW, offset_index=0)
  assert twice["repeats_by"] == "value" and twice["duplicates"] == 5 and twice["z"].shape[0] == 5
  assert "episode_key" not in twice and twice["rows_per_episode"] is None
  with pytest.raises(ValueError, match=r"max_rows_per_episode=2 needs the episode of every row: .*'episode_key'"):
    lam_latents.encode_batches(lam, [batch], view=VIEW, offset_index=0, max_rows_per_episode=2)


def test_thinning_keeps_at_most_n_rows_per_episode_whatever_the_stream_order(lam):
  keys = ["e:0"] * 7 + ["e:1"] * 2 + ["e:2"] * 5
  steps = list(range(7)) + [4, 5] + list(range(10, 15))
  batches = [_batch(lam, keys[i:i + 7], steps[i:i + 7], seed=10 + i) for i in (0, 7)]
  full = lam_latents.encode_batches(lam, batches, view=VIEW, offset_index=0)
  thin = lam_latents.encode_batches(lam, batches, view=VIEW, offset_index=0, max_rows_per_episode=3)
  assert full["thinned"] == 0 and full["z"].shape[0] == 14
  _, counts = np.unique(thin["episode_key"], return_counts=True)
  assert counts.tolist() == [3, 2, 3] and thin["thinned"] == 14 - 8 and thin["duplicates"] == 0
  assert thin["rows_per_episode"] == {"episodes": 3, "mean": 8 / 3, "max": 3}
  # Evenly spaced in time: e:0's 7 steps in 3 parts -> steps 1, 3, 5; e:2's 5 steps -> 10, 12, 14.
  identity = sorted(zip(thin["episode_key"].tolist(), thin["step_index"].tolist()))
  assert identity == [("e:0", 1), ("e:0", 3), ("e:0", 5), ("e:1", 4), ("e:1", 5), ("e:2", 10), ("e:2", 12),
                      ("e:2", 14)]
  # The same frames in another order (and repeated, as a stream past one pass): the same rows.
  shuffled = lam_latents.encode_batches(lam, batches[::-1] + batches[:1], view=VIEW, offset_index=0,
                                        max_rows_per_episode=3)
  assert sorted(zip(shuffled["episode_key"].tolist(), shuffled["step_index"].tolist())) == identity
  assert shuffled["duplicates"] == 7 and shuffled["thinned"] == 6
  order = np.lexsort((thin["step_index"], thin["episode_key"]))
  order_shuffled = np.lexsort((shuffled["step_index"], shuffled["episode_key"]))
  np.testing.assert_allclose(shuffled["z"][order_shuffled], thin["z"][order], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"max_rows_per_episode=-1"):
    lam_latents.encode_batches(lam, batches, view=VIEW, offset_index=0, max_rows_per_episode=-1)


def test_frame_ids_must_come_as_a_pair_and_in_every_batch(lam):
  batch = _batch(lam, ["h:0"] * 3, range(3), seed=5)
  half = {k: v for k, v in batch.items() if k != specs.STEP_INDEX}
  with pytest.raises(ValueError, match=r"batch 0 carries 'episode_key' but not 'step_index'"):
    lam_latents.encode_batches(lam, [half], view=VIEW, offset_index=0)
  with pytest.raises(ValueError, match=r"batch 1 lacks 'episode_key' / 'step_index', unlike batch 0"):
    lam_latents.encode_batches(lam, [batch, _without_ids(batch)], view=VIEW, offset_index=0)
  bad = {**batch, specs.STEP_INDEX: np.zeros((2,), np.int32)}
  with pytest.raises(ValueError, match=r"batch 0: 'episode_key' \(3,\) and 'step_index' \(2,\) must have shape \[3\]"):
    lam_latents.encode_batches(lam, [bad], view=VIEW, offset_index=0)
