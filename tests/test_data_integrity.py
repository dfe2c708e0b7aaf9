"""Nothing lost without a word: every way data could silently go missing or wrong is an error naming the file /
episode / key, or a counted, logged skip (``skip_bad``). Each test failed on the pipeline before its fix."""

import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from lamp_jax.data import config as data_config
from lamp_jax.data import errors, normalization, pipeline, rlds, synthetic

IMG = (16, 16)
LENGTHS = [4, 5, 6, 4, 5]
K, T = 4, 3


def _bridge(root, name, seed, lengths=LENGTHS, num_shards=2, image_size=IMG, **features):
  rng = np.random.default_rng(seed)
  episodes = [synthetic.bridge_episode(rng, i, n, image_size, missing_cameras=(), num_cameras=1)
              for i, n in enumerate(lengths)]
  return synthetic.write(name, str(root), synthetic.bridge_features(image_size, num_cameras=1, **features),
                         episodes, num_shards=num_shards)


def _cfg(path, tmp_path, name, standardize="bridge_dataset", **overrides):
  cfg = data_config.default_data_config()
  image_keys = {"image_secondary": "", "image_wrist": ""} if standardize == "bridge_dataset" else {}
  cfg.datasets = [data_config.dataset_entry(name, data_dir=path, standardize=standardize, image_keys=image_keys)]
  cfg.update(dict(batch_size=2, image_size=(8, 8), cameras=("image_primary",), stats_cache_dir=str(tmp_path / "st"),
                  shuffle_buffer_size=4, num_parallel_calls=1, num_parallel_reads=1, val_fraction=0.0,
                  scene_flow_num_points=K, scene_flow_horizon=T))
  cfg.update(overrides)
  return cfg


def _shards(path):
  return sorted(os.path.join(path, f) for f in os.listdir(path) if ".tfrecord-" in f)


def _rewrite(shard, keep=None, edit=None):
  """Rewrite a TFRecord shard with valid framing: keep the first ``keep`` records, ``edit(index, example)``."""
  records = [r.numpy() for r in tf.data.TFRecordDataset(shard)]
  if keep is not None:
    records = records[:keep]
  with tf.io.TFRecordWriter(shard) as writer:
    for index, raw in enumerate(records):
      if edit is not None:
        example = tf.train.Example.FromString(raw)
        edit(index, example)
        raw = example.SerializeToString()
      writer.write(raw)


def _iterate(cfg, batches=3):
  it = pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1)
  for _ in range(batches):
    next(it)
  return it


def test_stats_cache_keyed_on_file_contents(tmp_path):
  """A dataset regenerated with another seed (same name, version, features and record counts) gets new stats."""
  path = _bridge(tmp_path / "a", "tst_regen", seed=0)
  cfg = _cfg(path, tmp_path, "tst_regen")
  first = pipeline.dataset_statistics(cfg)["tst_regen"]
  assert first.source == "computed"
  regenerated = _bridge(tmp_path / "b", "tst_regen", seed=1)
  shutil.rmtree(path)
  shutil.copytree(regenerated, path)
  second = pipeline.dataset_statistics(cfg)["tst_regen"]
  assert second.source == "computed" and second.hash != first.hash
  assert not np.allclose(second.action.mean, first.action.mean)
  assert pipeline.dataset_statistics(cfg)["tst_regen"].source == "cache"  # unchanged files: the cache is used
  # The old statistics as an explicit file: refused, naming the file.
  old = tmp_path / "old_stats.json"
  old.write_text(first.to_json())
  cfg.datasets[0].stats_path = str(old)
  with pytest.raises(errors.DataError, match="does not match the dataset") as info:
    pipeline.dataset_statistics(cfg)
  assert str(old) in str(info.value)
  # Verified on load: a cache file under the right name whose recorded hash is another one is recomputed.
  cfg.datasets[0].stats_path = ""
  opened = rlds.open_dataset(cfg.datasets[0], cfg)
  cached = normalization.cache_path(cfg.stats_cache_dir, "tst_regen", opened.info_hash())
  with open(cached, "w") as f:
    f.write(first.to_json())
  assert pipeline.dataset_statistics(cfg)["tst_regen"].source == "computed"


def test_shard_truncated_at_a_record_boundary(tmp_path):
  path = _bridge(tmp_path, "tst_short", seed=0)
  shard = _shards(path)[1]
  promised = len(list(tf.data.TFRecordDataset(shard)))
  _rewrite(shard, keep=promised - 1)  # a valid file, one whole episode short
  with pytest.raises(errors.DataError, match=f"{promised - 1} records.*promises {promised}") as info:
    _iterate(_cfg(path, tmp_path, "tst_short"))
  assert shard in str(info.value) and "tst_short" in str(info.value)
  it = _iterate(_cfg(path, tmp_path / "skip", "tst_short", skip_bad=True), batches=12)
  assert it.skip_counts()["tst_short"][errors.MISSING_RECORDS] == 1


def test_non_finite_scene_flow_query_is_caught(tmp_path):
  rng = np.random.default_rng(0)
  episodes = [synthetic.lamp_sim_episode(rng, i, n, IMG, K, T) for i, n in enumerate([4, 5, 4])]
  episodes[1]["steps"][2]["scene_flow_query"][3, 0] = np.inf
  path = synthetic.write("lamp_sim_nanq", str(tmp_path), synthetic.lamp_sim_features(IMG, K, T), episodes,
                         num_shards=1)
  with pytest.raises(errors.DataError, match="NaN/inf values \\(first at step 2\\)") as info:
    _iterate(_cfg(path, tmp_path, "lamp_sim_nanq", standardize=""))
  assert "key 'steps/scene_flow_query'" in str(info.value) and "episode 1" in str(info.value)
  it = _iterate(_cfg(path, tmp_path / "skip", "lamp_sim_nanq", standardize="", skip_bad=True))
  assert it.skip_counts()["lamp_sim_nanq"][errors.NON_FINITE] == 1


def test_every_float_key_of_a_standardisation_is_checked():
  from lamp_jax.data import datasets

  class Cfg:
    scene_flow_num_points, scene_flow_horizon = K, T
    cameras = ("image_primary", "image_wrist")  # the pipeline config always names its cameras

  for name in ("bridge_dataset", "bridge", "lamp_sim_x", "libero_x"):
    std = datasets.get(name)
    floats = {key for key, (_, kind) in std.requirements(Cfg, std.image_keys).items() if kind == "float"}
    assert floats and floats <= set(rlds.finite_keys(std.requirements(Cfg, std.image_keys))), name


def test_undecodable_jpeg_names_file_and_episode_and_is_skippable(tmp_path):
  path = _bridge(tmp_path, "tst_jpeg", seed=0, num_shards=1)
  shard = _shards(path)[0]

  def corrupt(index, example):
    if index == 1:
      images = example.features.feature["steps/observation/image_0"].bytes_list.value
      images[2] = images[2][: len(images[2]) // 2]  # truncated JPEG: libjpeg fails on it

  _rewrite(shard, edit=corrupt)
  with pytest.raises(errors.DataError) as info:
    _iterate(_cfg(path, tmp_path, "tst_jpeg"))
  text = str(info.value)
  assert shard in text and "episode 1" in text and "steps/observation/image_0" in text and "step 2" in text
  it = _iterate(_cfg(path, tmp_path / "skip", "tst_jpeg", skip_bad=True), batches=10)
  assert it.skip_counts()["tst_jpeg"][errors.CORRUPT_IMAGE] == 1


def test_a_bad_episode_is_counted_once_per_dataset(tmp_path):
  rng = np.random.default_rng(0)
  episodes = [synthetic.bridge_episode(rng, i, n, IMG, missing_cameras=(), num_cameras=1)
              for i, n in enumerate([4, 5, 4])]
  episodes[1]["steps"][2]["action"] = np.array([0, np.nan, 0, 0, 0, 0, 1], np.float32)
  path = synthetic.write("tst_once", str(tmp_path), synthetic.bridge_features(IMG, num_cameras=1), episodes,
                         num_shards=1)
  # 3 + 3 usable frames per pass, batch 2: 30 batches are 10 passes over the data.
  it = _iterate(_cfg(path, tmp_path, "tst_once", skip_bad=True, shuffle_buffer_size=1), batches=30)
  assert it.skip_counts() == {"tst_once": {errors.NON_FINITE: 1}}
  assert it.skips.occurrences()["tst_once"][errors.NON_FINITE] >= 5  # skipped again on every pass, counted apart


@pytest.mark.parametrize("stored, channels", [((20, 32), 3), ((16, 16), 1)])
def test_image_size_or_channel_mismatch_is_logged_or_an_error(tmp_path, caplog, stored, channels):
  rng = np.random.default_rng(0)
  episodes = [synthetic.bridge_episode(rng, i, n, stored, missing_cameras=(), num_cameras=1)
              for i, n in enumerate([4, 5])]
  if channels == 1:
    for episode in episodes:
      for step in episode["steps"]:
        step["observation"]["image_0"] = step["observation"]["image_0"][..., :1]
  name = f"tst_mismatch{channels}"
  path = synthetic.write(name, str(tmp_path), synthetic.bridge_features(stored, num_cameras=1, channels=channels),
                         episodes, num_shards=1)
  what = "aspect ratio" if channels == 3 else "1 channel"
  with pytest.raises(errors.DataError, match=f"{what}.*image_mismatch") as info:
    _iterate(_cfg(path, tmp_path, name, image_mismatch="error"), batches=1)
  assert "steps/observation/image_0" in str(info.value) and f"{stored[0]}x{stored[1]}" in str(info.value)
  with caplog.at_level(logging.WARNING, logger="lamp_jax.data"):
    _iterate(_cfg(path, tmp_path / "log", name), batches=2)
  logged = [r.getMessage() for r in caplog.records if "steps/observation/image_0" in r.getMessage()]
  assert len(logged) == 1 and what in logged[0] and f"{stored[0]}x{stored[1]}" in logged[0]
