"""Normalisation (round trips, masks, near-constant dims, cache) and bad data -> clear errors or counted skips."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from lamp_jax.data import config as data_config
from lamp_jax.data import errors, normalization, pipeline, rlds, synthetic

IMG = (16, 16)


def _stats(values):
  return normalization.DatasetStatistics(dataset="d", hash="h", action=normalization.ArrayStats.of(values),
                                         proprio=normalization.ArrayStats.of(values), num_transitions=len(values),
                                         num_trajectories=1)


@pytest.mark.parametrize("mode", ["normal", "bounds", "bounds_minmax"])
def test_normalisation_round_trip_masks_and_constant_dims(mode):
  rng = np.random.default_rng(0)
  x = rng.normal([1.0, -2.0, 0.3, 5.0, 0.5], [0.5, 3.0, 1e-9, 0.0, 0.4], size=(301, 5)).astype(np.float32)
  stats = _stats(x)
  mask = (True, True, True, True, False)  # last dim ("gripper") left raw
  y = normalization.normalize_actions(x, stats, mode, mask)
  assert np.isfinite(y).all()
  np.testing.assert_array_equal(y[:, 4], x[:, 4])
  np.testing.assert_allclose(y[:, 2:4], 0.0, atol=1e-5)  # near-constant dims are safe
  if mode == "normal":
    np.testing.assert_allclose(y[:, :2].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y[:, :2].std(0), 1.0, atol=1e-3)
  else:
    assert np.abs(y[:, :4]).max() <= 1.0
  # The TF graph version is the same function.
  y_tf = normalization.normalize(tf.constant(x), stats.action, mode, mask, xp=tnp).numpy()
  np.testing.assert_allclose(y_tf, y, atol=1e-6)
  back = normalization.unnormalize_actions(np.pad(y, ((0, 0), (0, 3))), stats, mode, mask)  # padded A
  inside = (x >= stats.action.p01) & (x <= stats.action.p99) if mode == "bounds" else np.ones_like(x, bool)
  np.testing.assert_allclose(back[:, :2][inside[:, :2]], x[:, :2][inside[:, :2]], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(back[:, 3], x[:, 3], atol=1e-5)  # the constant comes back
  np.testing.assert_array_equal(back[:, 4], x[:, 4])
  again = normalization.DatasetStatistics.from_json(stats.to_json())
  np.testing.assert_allclose(normalization.normalize_actions(x, again, mode, mask), y, atol=1e-6)


def _write(root, name, episodes, **kwargs):
  features = kwargs.pop("features", None) or synthetic.bridge_features(IMG, num_cameras=1)
  return synthetic.write(name, str(root), features, episodes, **kwargs)


def _episodes(lengths, rng, **kwargs):
  return [synthetic.bridge_episode(rng, i, n, IMG, missing_cameras=(), num_cameras=1, **kwargs)
          for i, n in enumerate(lengths)]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad")
  rng = np.random.default_rng(0)
  good = _write(root, "tst_err_good", _episodes([4, 5, 6, 4], rng), num_shards=2)
  corrupt = str(root / "tst_err_corrupt")
  shutil.copytree(good, corrupt)
  shard = sorted(f for f in os.listdir(corrupt) if "tfrecord-00001" in f)[0]
  with open(os.path.join(corrupt, shard), "r+b") as f:
    f.truncate(os.path.getsize(os.path.join(corrupt, shard)) // 2)
  nan_eps = _episodes([4, 5, 4], rng)
  nan_eps[1]["steps"][2]["action"] = np.array([0, np.nan, 0, 0, 0, 0, 1], np.float32)
  zero_eps = _episodes([4, 0, 5], rng)
  return {"good": good, "corrupt": corrupt, "corrupt_shard": os.path.join(corrupt, shard),
          "nan": _write(root, "tst_err_nan", nan_eps, num_shards=1),
          "zero": _write(root, "tst_err_zero", zero_eps, num_shards=1),
          "state5": _write(root, "tst_err_state5", [
              synthetic.bridge_episode(rng, 0, 4, IMG, missing_cameras=(), num_cameras=1, state_dim=5)],
                           features=synthetic.bridge_features(IMG, num_cameras=1, state_dim=5), num_shards=1),
          "oxe": synthetic.write("tst_err_oxe", str(root), synthetic.oxe_bridge_features(IMG),
                                 [synthetic.oxe_bridge_episode(rng, 0, 4, IMG)], num_shards=1)}


def cfg_for(path, tmp_path, name="tst_err", standardize="bridge_dataset", **overrides):
  cfg = data_config.default_data_config()
  cfg.datasets = [data_config.dataset_entry(name, data_dir=path, standardize=standardize,
                                            image_keys={"image_secondary": "", "image_wrist": ""})]
  cfg.update(dict(batch_size=2, image_size=(8, 8), cameras=("image_primary",), stats_cache_dir=str(tmp_path),
                  shuffle_buffer_size=4, num_parallel_calls=1, num_parallel_reads=1, val_fraction=0.0))
  cfg.update(overrides)
  return cfg


def test_stats_cached_and_reused(bad, tmp_path):
  cfg = cfg_for(bad["good"], tmp_path)
  opened = rlds.open_dataset(cfg.datasets[0], cfg)
  calls = []

  def compute():
    calls.append(1)
    return pipeline._stats_pass(opened, cfg, errors.SkipCounter())

  first = normalization.compute_or_load_stats(opened, cfg, compute_fn=compute)
  second = normalization.compute_or_load_stats(opened, cfg, compute_fn=compute)
  assert len(calls) == 1 and (first.source, second.source) == ("computed", "cache")
  assert first.num_trajectories == 4 and first.num_transitions == 19 - 4  # relabelling drops one step each
  np.testing.assert_allclose(second.action.p99, first.action.p99, rtol=1e-6)
  # A changed standardisation (kwargs) is another hash: computed again.
  cfg.datasets[0].standardize_kwargs = {"relabel_actions": False}
  third = normalization.compute_or_load_stats(rlds.open_dataset(cfg.datasets[0], cfg), cfg, compute_fn=lambda: (
      calls.append(1) or (np.zeros((3, 7)), np.zeros((3, 7)), 1)))
  assert third.source == "computed" and len(calls) == 2
  # A statistics file that belongs to another dataset / standardisation: clear error naming the file.
  other = tmp_path / "other_stats.json"
  other.write_text(first.to_json())
  cfg.datasets[0].stats_path = str(other)
  with pytest.raises(errors.DataError, match="does not match the dataset.*" + first.hash) as info:
    normalization.compute_or_load_stats(rlds.open_dataset(cfg.datasets[0], cfg), cfg, compute_fn=compute)
  assert str(other) in str(info.value)


def test_corrupt_shard_raises_or_is_counted(bad, tmp_path):
  with pytest.raises(errors.DataError, match="corrupt or truncated") as info:
    pipeline.make_train_iterator(cfg_for(bad["corrupt"], tmp_path), seed=0, process_index=0, process_count=1)
  assert bad["corrupt_shard"] in str(info.value) and "tst_err" in str(info.value)
  it = pipeline.make_train_iterator(cfg_for(bad["corrupt"], tmp_path, skip_bad=True), seed=0, process_index=0,
                                    process_count=1)
  for _ in range(3):
    next(it)
  assert it.skips.total(errors.CORRUPT_FILE) >= 1


def test_non_finite_values_raise_or_are_counted(bad, tmp_path):
  with pytest.raises(errors.DataError, match="NaN/inf") as info:
    pipeline.make_train_iterator(cfg_for(bad["nan"], tmp_path), seed=0, process_index=0, process_count=1)
  assert "key 'steps/action'" in str(info.value) and "episode 1" in str(info.value)
  assert "first at step 2" in str(info.value)
  it = pipeline.make_train_iterator(cfg_for(bad["nan"], tmp_path, skip_bad=True), seed=0, process_index=0,
                                    process_count=1)
  batch = next(it)
  assert np.isfinite(batch["action"]).all()
  assert it.skip_counts()["tst_err"][errors.NON_FINITE] >= 1


def test_zero_length_episode_raises_or_is_counted(bad, tmp_path):
  with pytest.raises(errors.DataError, match="episode has 0 steps") as info:
    pipeline.make_train_iterator(cfg_for(bad["zero"], tmp_path), seed=0, process_index=0, process_count=1)
  assert "episode 1" in str(info.value)
  it = pipeline.make_train_iterator(cfg_for(bad["zero"], tmp_path, skip_bad=True), seed=0, process_index=0,
                                    process_count=1)
  next(it)
  assert it.skip_counts()["tst_err"][errors.ZERO_LENGTH] >= 1


def test_schema_errors_name_dataset_and_key(bad, tmp_path):
  with pytest.raises(errors.DataError, match=r"key 'steps/observation/state': wrong shape \(5,\)"):
    rlds.open_dataset(cfg_for(bad["state5"], tmp_path).datasets[0], cfg_for(bad["state5"], tmp_path))
  cfg = cfg_for(bad["oxe"], tmp_path)  # OXE layout read with the Bridge V2 standardisation
  cfg.datasets[0].image_keys = {"image_primary": "image"}
  with pytest.raises(errors.DataError, match="dataset 'tst_err'.*key 'steps/action': missing key"):
    rlds.open_dataset(cfg.datasets[0], cfg)
  cfg = cfg_for(bad["good"], tmp_path, name="no_such_dataset", standardize="")
  with pytest.raises(errors.DataError, match="dataset 'no_such_dataset': unknown dataset name"):
    pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1)


def test_per_episode_missing_key_and_bad_shape(bad, tmp_path):
  cfg = cfg_for(bad["good"], tmp_path)
  opened = rlds.open_dataset(cfg.datasets[0], cfg)
  raw = next(iter(tf.data.TFRecordDataset(rlds.file_instructions(opened, "train", 0)[0].filename))).numpy()
  example = tf.train.Example.FromString(raw)
  del example.features.feature["steps/observation/state"]
  with pytest.raises(errors.DataError, match="file 'f.tfrecord', episode 7.*key 'steps/observation/state'"):
    rlds.validate_episode(opened, example.SerializeToString(), filename="f.tfrecord", index=7, data_cfg=cfg)
  example = tf.train.Example.FromString(raw)
  example.features.feature["steps/action"].float_list.value.append(1.0)
  with pytest.raises(errors.DataError, match="key 'steps/action': .*not a whole number of steps"):
    rlds.validate_episode(opened, example.SerializeToString(), filename="f.tfrecord", index=7, data_cfg=cfg)
  assert rlds.validate_episode(opened, raw, filename="f.tfrecord", index=7, data_cfg=cfg) is None
  # Episode filters are counted skips, not errors: |action| bound and empty instructions.
  cfg.max_abs_action = 1e-4
  assert rlds.validate_episode(opened, raw, filename="f", index=7, data_cfg=cfg) == errors.ACTION_BOUNDS
  cfg.max_abs_action = 1e4
  assert rlds.validate_episode(opened, raw, filename="f", index=7, data_cfg=cfg) is None
  assert json.loads(json.dumps(errors.SkipCounter().as_dict())) == {}
