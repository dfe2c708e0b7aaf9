"""Future frames (data.future_offsets / future_cameras) and synchronized third-person views, on hand-computed
trajectories: a tiny Bridge-layout dataset with three third-person cameras, stored losslessly (PNG)."""

import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.data import config as data_config
from lamp_jax.data import errors, pipeline, synthetic

IMG = (18, 22)
LENGTHS = [6, 2, 7, 4]  # episode 1 is shorter than every offset
OFFSETS = (1, 3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("rlds_future")
  rng = np.random.default_rng(5)
  episodes = [synthetic.bridge_episode(rng, i, n, IMG, missing_cameras=(3,)) for i, n in enumerate(LENGTHS)]
  path = synthetic.write("tst_future", str(root), synthetic.bridge_features(IMG, encoding_format="png"), episodes,
                         num_shards=2)
  return {"path": path, "episodes": episodes}


def make_cfg(data, tmp_path, **overrides):
  cfg = data_config.default_data_config()
  cfg.datasets = [data_config.dataset_entry("tst_future", data_dir=data["path"], standardize="bridge_dataset",
                                            standardize_kwargs={"binarize_gripper": False, "relabel_actions": False})]
  cfg.update(dict(batch_size=3, image_size=IMG, action_horizon=3, stats_cache_dir=str(tmp_path / "st"),
                  cameras=("image_primary", "image_secondary", "image_tertiary"), future_offsets=OFFSETS,
                  future_cameras=("image_primary", "image_tertiary"), proprio_normalization="none",
                  action_normalization="none", shuffle_buffer_size=8, num_parallel_calls=2, num_parallel_reads=1,
                  scene_flow=False, val_fraction=0.0))
  cfg.update(overrides)
  return cfg


def locate(data, proprio_row):
  for e, episode in enumerate(data["episodes"]):
    for t, step in enumerate(episode["steps"]):
      if np.abs(step["observation"]["state"] - proprio_row[:7]).max() < 1e-6:
        return e, t
  raise AssertionError("frame not found")


def test_future_frames_and_synchronized_views_hand_computed(data, tmp_path):
  cfg = make_cfg(data, tmp_path)
  cfg.datasets[0].val_split = "train"
  batches = list(pipeline.make_val_iterator(cfg, seed=0, process_index=0, process_count=1, repeat=False))
  seen = set()
  for batch in batches:
    obs = batch["observation"]
    assert set(obs[specs.FUTURE]) == {"image_primary", "image_tertiary"}
    assert obs[specs.FUTURE]["image_primary"].shape == (3, len(OFFSETS)) + IMG + (3,)
    assert obs[specs.FUTURE_PAD_MASK].shape == (3, len(OFFSETS)) and obs[specs.FUTURE_PAD_MASK].dtype == bool
    assert "scene_flow" not in batch and "has_scene_flow" not in batch  # data.scene_flow=False
    for b in range(3):
      e, t = locate(data, obs["proprio"][b, -1])
      seen.add((e, t))
      steps, length = data["episodes"][e]["steps"], LENGTHS[e]
      for camera, key in (("image_primary", "image_0"), ("image_secondary", "image_1"),
                          ("image_tertiary", "image_2")):  # three views of the same step
        np.testing.assert_array_equal(obs[camera][b, -1], steps[t]["observation"][key])
      for f, k in enumerate(OFFSETS):
        index = min(t + k, length - 1)  # past the end: the episode's last frame, pad mask False
        assert obs[specs.FUTURE_PAD_MASK][b, f] == (t + k <= length - 1)
        np.testing.assert_array_equal(obs[specs.FUTURE]["image_primary"][b, f], steps[index]["observation"]["image_0"])
        np.testing.assert_array_equal(obs[specs.FUTURE]["image_tertiary"][b, f],
                                      steps[index]["observation"]["image_2"])
  assert len(seen) == len(batches) * 3 == sum(LENGTHS) // 3 * 3


def test_future_frames_get_the_current_frames_augmentation(data, tmp_path):
  """At the last step t = L - 1 every future frame is the current frame itself: equal only if augmented alike."""
  cfg = make_cfg(data, tmp_path, batch_size=4, augment_cameras=("image_primary", "image_tertiary"))
  it = pipeline.make_train_iterator(cfg, seed=3, process_index=0, process_count=1)
  checked, differ = 0, 0
  for _ in range(12):
    batch = next(it)
    obs = batch["observation"]
    for b in range(4):
      e, t = locate(data, obs["proprio"][b, -1])
      if t == LENGTHS[e] - 1:
        for camera in ("image_primary", "image_tertiary"):
          for f in range(len(OFFSETS)):
            np.testing.assert_array_equal(obs[specs.FUTURE][camera][b, f], obs[camera][b, -1])
        differ += not np.array_equal(obs["image_primary"][b, -1], data["episodes"][e]["steps"][t]["observation"]
                                     ["image_0"])
        checked += 1
  assert checked >= 4 and differ == checked  # augmented (cropped / jittered), identically for current and future


def test_future_cameras_must_be_read_and_offsets_positive(data, tmp_path):
  with pytest.raises(errors.DataError, match="data.future_cameras has \\['image_wrist'\\]"):
    pipeline.make_train_iterator(make_cfg(data, tmp_path, future_cameras=("image_wrist",)), seed=0,
                                 process_index=0, process_count=1)
  with pytest.raises(errors.DataError, match="data.future_offsets=\\(0,\\)"):
    pipeline.make_train_iterator(make_cfg(data, tmp_path, future_offsets=(0,)), seed=0, process_index=0,
                                 process_count=1)


def test_no_future_keys_and_nothing_decoded_when_empty(data, tmp_path):
  cfg = make_cfg(data, tmp_path, future_offsets=(), future_cameras=())
  batch = next(pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1))
  assert specs.FUTURE not in batch["observation"] and specs.FUTURE_PAD_MASK not in batch["observation"]
