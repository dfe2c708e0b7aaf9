"""The per-frame code cache of latent-action pretraining (data/code_cache.py, data/code_cache_build.py,
``model.latent_pretraining.codes='cache'``): the frames' identity in the pipeline, cached codes equal to the frozen
LAM's on-the-fly codes of the same (un-augmented) frames and the same loss, a second build reads the file, and a
cache of another LAM, dataset or selection, or a corrupt one, is refused naming the file and the field."""

import copy
import io
import json
import logging
import os

import jax
import ml_collections
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.data import code_cache
from lamp_jax.data import code_cache_build
from lamp_jax.data import config as data_config
from lamp_jax.data import errors
from lamp_jax.data import pipeline
from lamp_jax.data import synthetic
from lamp_jax.models import lam_config
from lamp_jax.models import latent_pretraining as lp
from lamp_jax.models import registry

STORED, K, T = (16, 16), 4, 3
LENGTHS = [5, 7, 3]  # odd lengths; the offset 2 leaves the last two steps of every episode without a pair
NAME = "lamp_sim_lpcache"


def _policy(codes: str) -> ml_collections.ConfigDict:
  """The tiny w/o-motion LaMP in its 'latent' stage with a tiny single-view LAM (7 codes x 3 tokens, k = 2)."""
  cfg = registry.get("lamp").model_config("tiny")
  cfg.use_motion = False
  cfg.proprio_dim = 8  # the lamp_sim layout's state
  lam = lam_config.model_config("tiny")
  lam.views, lam.future_offsets = (specs.IMAGE_PRIMARY,), (2,)
  lam.loss.weights.cross_view = 0.0
  lp.add(cfg, lam, num_heads=3, codes=codes)
  cfg.loss.weights.update(dict(motion=0.0, action=0.0, latent_codes=1.0))
  return cfg


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("rlds")
  rng = np.random.default_rng(11)
  episodes = [synthetic.lamp_sim_episode(rng, i, n, STORED, K, T) for i, n in enumerate(LENGTHS)]
  return synthetic.write(NAME, str(root), synthetic.lamp_sim_features(STORED, K, T), episodes, num_shards=2,
                         val_episodes=[synthetic.lamp_sim_episode(rng, 9 + i, 4, STORED, K, T) for i in range(2)])


@pytest.fixture(scope="module")
def model():
  """(on-the-fly config, cached config, library, params) of the tiny policy (the same parameter tree)."""
  fly, cached = _policy(lp.ON_THE_FLY), _policy(lp.CACHE)
  lib = registry.for_config(fly)
  params = lib.init_params(fly, jax.random.key(0), lib.dummy_batch(fly, 2, 0))
  assert jax.tree.structure(params) == jax.tree.structure(
      lib.init_params(cached, jax.random.key(0), lib.dummy_batch(cached, 2, 0)))
  return fly, cached, lib, params


def _data_cfg(data_dir, tmp_path, model_cfg, **entry) -> ml_collections.ConfigDict:
  cfg = data_config.from_requirements(registry.for_config(model_cfg).data_requirements(model_cfg), 3)
  cfg.datasets = [data_config.dataset_entry(NAME, data_dir=data_dir, **entry)]
  cfg.scene_flow_num_points, cfg.scene_flow_horizon = K, T
  cfg.hide_actions = True
  cfg.augment = False
  cfg.stats_cache_dir = str(tmp_path / "stats")
  cfg.codes_cache_dir = str(tmp_path / "codes")
  cfg.shuffle_buffer_size = 1
  cfg.num_parallel_calls = cfg.num_parallel_reads = 1
  cfg.deterministic = True
  return cfg


def _ensure(data_cfg, model_cfg, params):
  source = registry.for_config(model_cfg).frame_codes(model_cfg, params)
  return code_cache_build.ensure(data_cfg, requirements=source.requirements, source=source.source,
                                 encode=source.encode, batch_size=source.batch_size, progress=False), source


def _batches(data_cfg, n):
  it = pipeline.make_train_iterator(data_cfg, seed=0, process_index=0, process_count=1)
  try:
    return [next(it) for _ in range(n)]
  finally:
    it.close()


def _with_tokens(lib, model_cfg, batch):
  dummy = lib.dummy_batch(model_cfg, len(batch[specs.STEP_INDEX]), 0)
  return {**{k: v for k, v in batch.items() if k not in (specs.EPISODE_KEY,)}, specs.TASK: dummy[specs.TASK]}


def test_the_hook_and_the_requirements_of_the_two_modes(model):
  fly, cached, lib, params = model
  assert lib.frame_codes(fly, params) is None  # on the fly: no cache
  action_stage = copy.deepcopy(cached)
  action_stage.loss.weights.update(dict(action=1.0, latent_codes=0.0))
  assert lib.frame_codes(action_stage, params) is None  # the term is off: the stage reads no codes
  source = lib.frame_codes(cached, params)
  assert source.requirements.future_offsets == (2,) and source.requirements.cameras == (specs.IMAGE_PRIMARY,)
  assert source.source["lam.params_sha256"] == lp.params_sha256(params["lam"])
  assert lib.data_requirements(fly).future_offsets == (2,)
  assert lib.data_requirements(cached).future_offsets == () and lib.data_requirements(cached).future_cameras == ()
  # A data config written for on-the-fly codes (with future frames) still fits the model that reads cached ones.
  assert data_config.check_requirements(data_config.from_requirements(lib.data_requirements(fly), 3),
                                        lib.data_requirements(cached)) == []
  dummy = lib.dummy_batch(cached, 3, 0)
  assert dummy[specs.FRAME_CODES].shape == (3, 3) and dummy[specs.FRAME_CODES].dtype == np.int32
  assert specs.FUTURE not in dummy[specs.OBSERVATION]
  # Without a LAM pass the step's analytic FLOPs drop by the LAM's encode_latent.
  assert lib.analytic_flops(cached, 4, "train_step") < lib.analytic_flops(fly, 4, "train_step")
  bad = copy.deepcopy(cached)
  bad.latent_pretraining.codes = "precomputed"
  with pytest.raises(ValueError, match=r"model\.latent_pretraining\.codes='precomputed'"):
    lib.build(bad).init(jax.random.key(0), dummy, jax.random.key(1))


def test_cached_codes_equal_the_lams_codes_of_the_same_frames_and_give_the_same_loss(dataset, model, tmp_path,
                                                                                     caplog):
  fly, cached, lib, params = model
  data_cfg = _data_cfg(dataset, tmp_path, fly)  # future frames decoded: the on-the-fly LAM reads them
  data_cfg.frame_ids = True
  builds = len(code_cache_build.BUILDS)
  with caplog.at_level(logging.INFO, logger="lamp_jax.data"):
    with_codes, source = _ensure(data_cfg, cached, params)
  assert len(code_cache_build.BUILDS) == builds + 1
  path = code_cache_build.BUILDS[-1]
  assert os.path.dirname(path) == str(tmp_path / "codes") and f"written to {path}" in caplog.text
  cache = _load(path, dataset=NAME, source=json.loads(with_codes.frame_codes))
  # The training selection (the last val_fraction of 'train' is not in it) and every step of every episode.
  assert sorted(cache.lengths.tolist()) == sorted(LENGTHS) and len(cache.codes) == sum(LENGTHS)
  assert all(k.split(":")[0].startswith(f"{NAME}-train.tfrecord") for k in cache.episode_keys)
  # The same frames through the pipeline: cached codes == the frozen LAM's encode_latent on them.
  lam_model = registry.for_config(fly.lam).build(fly.lam)
  encode = jax.jit(lambda p, b: lam_model.apply({"params": p}, b, jax.random.key(3), method="encode_latent"))
  # jitted: op by op, the two losses compiled ~360 small programs
  loss_of = {name: jax.jit(lambda p, b, cfg=cfg: lib.build(cfg).apply({"params": p}, b, jax.random.key(7),
                                                                    method="compute_loss"))
             for name, cfg in (("fly", fly), ("cached", cached))}
  seen = 0
  for batch in _batches(with_codes, 5):
    out = encode(params["lam"], {specs.OBSERVATION: batch[specs.OBSERVATION]})
    np.testing.assert_array_equal(batch[specs.FRAME_CODES], np.asarray(out["codes"]))
    np.testing.assert_array_equal(batch[specs.FRAME_CODES_VALID], np.asarray(out["valid"]))
    for key, t, codes, valid in zip(batch[specs.EPISODE_KEY], batch[specs.STEP_INDEX], batch[specs.FRAME_CODES],
                                    batch[specs.FRAME_CODES_VALID]):
      stored_codes, stored_valid = cache.episode(key.decode())
      np.testing.assert_array_equal(stored_codes[t], codes)
      assert stored_valid[t] == valid == (t + 2 <= len(stored_valid) - 1)
      seen += 1
    # The loss from the cached codes == the loss from the LAM's codes of the same batch (no augmentation).
    step = _with_tokens(lib, fly, batch)
    loss_fly, m_fly = loss_of["fly"](params, step)
    no_future = copy.deepcopy(step)
    for key in (specs.FUTURE, specs.FUTURE_PAD_MASK):
      no_future[specs.OBSERVATION].pop(key)
    loss_cached, m_cached = loss_of["cached"](params, no_future)
    np.testing.assert_allclose(float(loss_cached), float(loss_fly), rtol=1e-6)
    assert float(m_cached["latent/valid_pairs"]) == float(m_fly["latent/valid_pairs"])
  assert seen == 15
  # A second run (a resume) reads the file instead of building it again.
  again, _ = _ensure(data_cfg, cached, params)
  assert len(code_cache_build.BUILDS) == builds + 1 and again.frame_codes == with_codes.frame_codes


def _meta(path) -> str:
  with np.load(path) as npz:
    return str(npz["meta"])


def _load(path, **expected):
  """code_cache.load of ``path`` expecting what its own meta holds, but ``expected``."""
  meta = json.loads(_meta(path))
  fields = dict(dataset=meta["dataset"], info_hash=meta["info_hash"], selection=meta["selection"],
                source=meta["source"])
  fields.update(expected)
  return code_cache.load(path, **fields)


@pytest.fixture(scope="module")
def built(dataset, model, tmp_path_factory):
  """(data config, cache path) of a cache built once for the tiny policy's LAM."""
  _, cached, _, params = model
  tmp = tmp_path_factory.mktemp("built")
  data_cfg = _data_cfg(dataset, tmp, cached)
  _ensure(data_cfg, cached, params)
  return data_cfg, code_cache_build.BUILDS[-1]


def test_a_cache_of_another_lam_is_refused_naming_the_file_and_the_field(built, model, tmp_path):
  data_cfg, path = built
  _, cached, _, params = model
  other = {**params, "lam": jax.tree.map(lambda x: x * 1.5 + 0.01, params["lam"])}
  explicit = copy.deepcopy(data_cfg)
  explicit.datasets[0].codes_path = path
  with pytest.raises(errors.DataError, match=rf"file '{path}'.*field 'source\.lam\.params_sha256'"):
    _ensure(explicit, cached, other)
  # At the default location another LAM has another file (its fingerprint is in the name): it is built there.
  builds = len(code_cache_build.BUILDS)
  _ensure(data_cfg, cached, other)
  assert len(code_cache_build.BUILDS) == builds + 1 and code_cache_build.BUILDS[-1] != path
  # A config field that changes the codes (the codebook size) is named too, with the same parameters.
  source = json.loads(_ensure(explicit, cached, params)[0].frame_codes)
  source["lam.vq.num_codes"] = 9
  with pytest.raises(errors.DataError, match=r"field 'source\.lam\.vq\.num_codes' is 7 in the file"):
    _load(path, source=source)


def test_a_cache_of_another_dataset_or_selection_is_refused_naming_the_field(built, model):
  data_cfg, path = built
  _, cached, _, params = model
  source = json.loads(_meta(path))["source"]
  with pytest.raises(errors.DataError, match=rf"file '{path}'.*field 'dataset' is '{NAME}' in the file"):
    _load(path, dataset="lamp_sim_other")
  with pytest.raises(errors.DataError, match=r"field 'info_hash'"):
    _load(path, info_hash="0" * 20)
  sliced = copy.deepcopy(data_cfg)
  sliced.datasets[0].update(dict(train_split="train[1:]", val_split="val", codes_path=path))
  with pytest.raises(errors.DataError, match=rf"file '{path}'.*field 'selection' is '_[0-9a-f]+' in the file"):
    _ensure(sliced, cached, params)
  # The pipeline verifies the file it is pointed at too.
  reading = code_cache_build.with_source(sliced, source)
  with pytest.raises(errors.DataError, match=r"field 'selection'"):
    _batches(reading, 1)


def test_a_corrupt_cache_is_refused_or_rebuilt_at_the_default_location(built, model, tmp_path, caplog):
  data_cfg, path = built
  _, cached, _, params = model
  with open(path, "rb") as f:
    raw = f.read()
  truncated = str(tmp_path / "truncated.npz")
  with open(truncated, "wb") as f:
    f.write(raw[: len(raw) // 2])
  explicit = copy.deepcopy(data_cfg)
  explicit.datasets[0].codes_path = truncated
  with pytest.raises(errors.DataError, match=rf"file '{truncated}'.*unreadable code cache"):
    _ensure(explicit, cached, params)
  # Arrays changed under an intact meta: the checksum names it.
  with np.load(path) as npz:
    arrays = {k: npz[k] for k in npz.files}
  arrays["codes"] = (arrays["codes"] + 1) % 7
  tampered = str(tmp_path / "tampered.npz")
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  with open(tampered, "wb") as f:
    f.write(buffer.getvalue())
  explicit.datasets[0].codes_path = tampered
  with pytest.raises(errors.DataError, match=rf"file '{tampered}'.*field 'checksum'.*corrupt"):
    _ensure(explicit, cached, params)
  # The default-location file, corrupted, is rebuilt (with a warning naming it), then reads again.
  with open(path, "wb") as f:
    f.write(raw[:100])
  builds = len(code_cache_build.BUILDS)
  with caplog.at_level(logging.WARNING, logger="lamp_jax.data"):
    _ensure(data_cfg, cached, params)
  assert len(code_cache_build.BUILDS) == builds + 1 and code_cache_build.BUILDS[-1] == path
  assert f"code cache {path} does not verify" in caplog.text
  with open(path, "rb") as f:
    assert f.read() == raw  # the same codes again


def test_an_episode_the_cache_lacks_is_an_error_naming_it(built, model, tmp_path):
  data_cfg, path = built
  _, cached, _, params = model
  cache = _load(path)
  per_episode = {k: cache.episode(k) for k in cache.episode_keys[1:]}  # the first episode left out
  partial = code_cache.make(per_episode, dataset=NAME, info_hash=cache.meta["info_hash"],
                            selection=cache.meta["selection"], source=cache.meta["source"])
  partial_path = str(tmp_path / "partial.npz")
  code_cache.write(partial, partial_path)
  reading = copy.deepcopy(data_cfg)
  reading.datasets[0].codes_path = partial_path
  reading = code_cache_build.with_source(reading, cache.meta["source"])
  with pytest.raises(errors.DataError, match=rf"code cache file {partial_path}: the cache has no episode of this "
                     rf"length .*\[{NAME}-train.tfrecord-00000-of-00002:0\] \[5\] \[-1\]"):
    _batches(reading, 6)
