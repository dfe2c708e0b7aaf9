"""Optional optical-flow images through the data pipeline (data.optical_flow), on tiny lamp_sim-layout datasets.

The dataset with flow stores lossless PNGs; its optical_flow image of step t is image_0 of step t with the channels
rotated (synthetic.optical_flow_image), so any crop applied to both gives the same pixels up to that rotation.
"""

import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax import flow_image
from lamp_jax.data import config as data_config
from lamp_jax.data import errors, flow_estimation, frame_transforms, pipeline, synthetic

IMG = (20, 24)
K, T = 4, 3
LENGTHS = [5, 4, 6]
ROTATE = [2, 0, 1]  # optical_flow[..., c] = image_0[..., ROTATE[c]]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("rlds_optical_flow")
  rng = np.random.default_rng(3)
  with_flow = [synthetic.lamp_sim_episode(rng, i, n, IMG, K, T, optical_flow=True) for i, n in enumerate(LENGTHS)]
  without = [synthetic.lamp_sim_episode(rng, i, n, IMG, K, T) for i, n in enumerate(LENGTHS)]
  return {
      "flow": synthetic.write("lamp_sim_flow", str(root),
                              synthetic.lamp_sim_features(IMG, K, T, optical_flow=True, encoding_format="png"),
                              with_flow, num_shards=1),
      "noflow": synthetic.write("lamp_sim_noflow", str(root), synthetic.lamp_sim_features(IMG, K, T), without,
                                num_shards=1),
      "flow_eps": with_flow,
      # Lossless frames without flow images (the estimator's input is then exactly the raw frames), and a
      # dataset with a single-frame episode (no frame t + k to estimate flow to).
      "png_noflow": synthetic.write("lamp_sim_pngnoflow", str(root),
                                    synthetic.lamp_sim_features(IMG, K, T, encoding_format="png"), without,
                                    num_shards=1),
      "noflow_eps": without,
      "single": synthetic.write("lamp_sim_single", str(root), synthetic.lamp_sim_features(IMG, K, T),
                                [without[0], synthetic.lamp_sim_episode(rng, 9, 1, IMG, K, T), without[2]],
                                num_shards=1),
  }


def make_cfg(data, tmp_path, which="flow", **overrides):
  cfg = data_config.default_data_config()
  cfg.datasets = [data_config.dataset_entry(f"lamp_sim_{which}", data_dir=data[which])]
  cfg.batch_size = 5
  cfg.image_size = IMG
  cfg.cameras = ("image_primary",)
  cfg.scene_flow_num_points, cfg.scene_flow_horizon = K, T
  cfg.stats_cache_dir = str(tmp_path / "stats")
  cfg.proprio_normalization = "none"  # locate each example's (episode, step) from its raw state
  cfg.shuffle_buffer_size = 8
  cfg.num_parallel_calls = cfg.num_parallel_reads = 1
  cfg.optical_flow = True
  cfg.update(overrides)
  return cfg


def all_frames(cfg):
  """Every train frame once (validation iterator over the train split: no augmentation)."""
  cfg.datasets[0].val_split = "train"
  it = pipeline.make_val_iterator(cfg, seed=0, process_index=0, process_count=1, repeat=False)
  return list(it)


def locate(data, proprio_row, episodes="flow_eps"):
  for e, ep in enumerate(data[episodes]):
    for t, step in enumerate(ep["steps"]):
      if np.abs(step["observation"]["state"] - proprio_row).max() < 1e-6:
        return e, t
  raise AssertionError("frame not found in the raw episodes")


def test_optical_flow_of_the_current_step(data, tmp_path):
  batches = all_frames(make_cfg(data, tmp_path, window_size=2))
  seen = set()
  for batch in batches:
    assert batch[specs.OPTICAL_FLOW].shape == (5,) + IMG + (3,) and batch[specs.OPTICAL_FLOW].dtype == np.uint8
    assert batch[specs.HAS_OPTICAL_FLOW].shape == (5,) and batch[specs.HAS_OPTICAL_FLOW].dtype == bool
    assert batch[specs.HAS_OPTICAL_FLOW].all()
    for b in range(5):
      e, t = locate(data, batch["observation"]["proprio"][b, -1])
      seen.add((e, t))
      # The stored (lossless) image of the same step as the scene flow and the current camera frame.
      np.testing.assert_array_equal(batch[specs.OPTICAL_FLOW][b],
                                    data["flow_eps"][e]["steps"][t]["observation"]["optical_flow"])
      np.testing.assert_array_equal(batch[specs.SCENE_FLOW][b], data["flow_eps"][e]["steps"][t]["scene_flow"])
      np.testing.assert_array_equal(batch[specs.OPTICAL_FLOW][b],
                                    batch["observation"]["image_primary"][b, -1][..., ROTATE])
  assert len(seen) == sum(LENGTHS) // 5 * 5
  # Resized with the cameras' resize.
  out = (11, 13)
  batch = all_frames(make_cfg(data, tmp_path, image_size=out))[0]
  assert batch[specs.OPTICAL_FLOW].shape == (5,) + out + (3,)
  for b in range(5):
    e, t = locate(data, batch["observation"]["proprio"][b, -1])
    stored = data["flow_eps"][e]["steps"][t]["observation"]["optical_flow"]
    np.testing.assert_array_equal(batch[specs.OPTICAL_FLOW][b], frame_transforms.resize(stored, out).numpy())


def test_train_crop_is_image_primarys(data, tmp_path):
  cfg = make_cfg(data, tmp_path, image_size=(13, 11), crop_scale=(0.3, 0.6), crop_ratio=(0.7, 1.4),
                 brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0)
  it = pipeline.make_train_iterator(cfg, seed=4, process_index=0, process_count=1)
  cropped = 0
  for _ in range(3):
    batch = next(it)
    flow, primary = batch[specs.OPTICAL_FLOW], batch["observation"]["image_primary"][:, -1][..., ROTATE]
    # Same box, same resampling; the camera path also passes its (identity) colour jitter: x / 255 * 255 in
    # float32 may move a value sitting exactly on a rounding boundary by one level.
    assert np.abs(flow.astype(int) - primary.astype(int)).max() <= 1
    assert np.mean(flow == primary) > 0.99
    for b in range(5):
      e, t = locate(data, batch["observation"]["proprio"][b, -1])
      stored = data["flow_eps"][e]["steps"][t]["observation"]["optical_flow"]
      cropped += not np.array_equal(flow[b], frame_transforms.resize(stored, (13, 11)).numpy())
  assert cropped == 15  # the crop really was applied (area <= 0.6), not a plain resize of both


def test_datasets_without_optical_flow_and_switch_off(data, tmp_path):
  batch = next(pipeline.make_train_iterator(make_cfg(data, tmp_path, which="noflow"), seed=0, process_index=0,
                                            process_count=1))
  assert not batch[specs.HAS_OPTICAL_FLOW].any()
  assert batch[specs.OPTICAL_FLOW].shape == (5,) + IMG + (3,) and not batch[specs.OPTICAL_FLOW].any()
  # A mixture of both: has_optical_flow per example, zeros exactly where it is False.
  cfg = make_cfg(data, tmp_path, batch_size=12)
  cfg.datasets.append(data_config.dataset_entry("lamp_sim_noflow", data_dir=data["noflow"]))
  batch = next(pipeline.make_train_iterator(cfg, seed=1, process_index=0, process_count=1))
  has = batch[specs.HAS_OPTICAL_FLOW]
  assert has.any() and not has.all()
  assert not batch[specs.OPTICAL_FLOW][~has].any()
  assert all(batch[specs.OPTICAL_FLOW][b].any() for b in np.flatnonzero(has))
  # Switched off: no keys.
  cfg = make_cfg(data, tmp_path, optical_flow=False)
  batch = next(pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1))
  assert specs.OPTICAL_FLOW not in batch and specs.HAS_OPTICAL_FLOW not in batch


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_estimated_flow_images_for_datasets_without_them(data, tmp_path, method):
  """data.optical_flow_estimator: each frame's flow image is EpisodeFlowImages over its episode's stored frames
  (k = action_horizon, clamped at the last frame, the default normaliser of the stored width), computed before the
  frame shuffle; datasets that store exact flow images keep them."""
  horizon = 2
  cfg = make_cfg(data, tmp_path, which="png_noflow", optical_flow_estimator=method, action_horizon=horizon)
  expected = [flow_estimation.EpisodeFlowImages(k=horizon, max_magnitude=flow_image.default_max_magnitude(IMG[1]),
                                                method=method)(
                  np.stack([step["observation"]["image_0"] for step in ep["steps"]]))
              for ep in data["noflow_eps"]]
  seen = set()
  for batch in all_frames(cfg):
    assert batch[specs.HAS_OPTICAL_FLOW].all()
    for b in range(5):
      e, t = locate(data, batch["observation"]["proprio"][b, -1], "noflow_eps")
      seen.add((e, t))
      np.testing.assert_array_equal(batch[specs.OPTICAL_FLOW][b], expected[e][t])
  assert len(seen) == sum(LENGTHS)
  assert any(image.std() > 0 for images in expected for image in images)  # not a constant image
  # Stored exact flow wins over the estimator.
  batch = all_frames(make_cfg(data, tmp_path, optical_flow_estimator=method, action_horizon=horizon))[0]
  for b in range(5):
    e, t = locate(data, batch["observation"]["proprio"][b, -1])
    np.testing.assert_array_equal(batch[specs.OPTICAL_FLOW][b],
                                  data["flow_eps"][e]["steps"][t]["observation"]["optical_flow"])


def test_single_frame_episodes_raise_or_are_counted_and_unknown_estimators_are_named(data, tmp_path):
  cfg = make_cfg(data, tmp_path, which="single", optical_flow_estimator="dis", action_horizon=2)
  with pytest.raises(errors.DataError, match=r"1 frame has no frame t \+ k") as info:
    next(pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1))
  # Raised inside the tf.data reader: the message names the dataset, episode and key (the kind is in the counts).
  assert "dataset 'lamp_sim_single'" in str(info.value) and "episode 1" in str(info.value)
  assert "key 'steps/observation/image_0'" in str(info.value)
  cfg.skip_bad = True
  it = pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1)
  assert next(it)[specs.HAS_OPTICAL_FLOW].all()
  assert it.skip_counts()["lamp_sim_single"][errors.SINGLE_FRAME] == 1
  with pytest.raises(errors.DataError, match=r"data\.optical_flow_estimator='raft' is not one of"):
    pipeline.make_train_iterator(make_cfg(data, tmp_path, which="noflow", optical_flow_estimator="raft"), seed=0,
                                 process_index=0, process_count=1)
