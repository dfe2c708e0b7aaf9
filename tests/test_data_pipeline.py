"""The RLDS pipeline end to end on tiny tfds datasets built here (Bridge V2, OXE bridge and lamp_sim layouts)."""

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from lamp_jax.data import config as data_config
from lamp_jax.data import errors, frame_transforms, inference, inspect, pipeline, rlds, synthetic, traj_transforms

IMG = (32, 32)
OUT = (24, 20)  # odd output size, not a multiple of the stored size
BRIDGE_LENGTHS = [5, 8, 3, 12, 6, 7, 4]  # episode 3 has an empty instruction
OXE_LENGTHS = [6, 5, 7, 4]
SIM_LENGTHS = [5, 4, 6]
K, T = 4, 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("rlds")
  rng = np.random.default_rng(1)
  bridge_eps = [synthetic.bridge_episode(rng, i, n, IMG, missing_cameras=(1, 2, 3) if i % 2 else (2, 3),
                                         instruction="" if i == 3 else "put the cube")
                for i, n in enumerate(BRIDGE_LENGTHS)]
  oxe_eps = [synthetic.oxe_bridge_episode(rng, i, n, IMG) for i, n in enumerate(OXE_LENGTHS)]
  sim_eps = [synthetic.lamp_sim_episode(rng, i, n, IMG, K, T) for i, n in enumerate(SIM_LENGTHS)]
  sim_val = [synthetic.lamp_sim_episode(rng, 9, 5, IMG, K, T), synthetic.lamp_sim_episode(rng, 10, 4, IMG, K, T)]
  return {
      "bridge": synthetic.write("tst_bridge_v2", str(root), synthetic.bridge_features(IMG), bridge_eps,
                                num_shards=3),
      "oxe": synthetic.write("tst_oxe_bridge", str(root), synthetic.oxe_bridge_features(IMG), oxe_eps, num_shards=2),
      "sim": synthetic.write("lamp_sim_tst", str(root), synthetic.lamp_sim_features(IMG, K, T), sim_eps,
                             num_shards=2, val_episodes=sim_val),
      "bridge_eps": bridge_eps, "oxe_eps": oxe_eps, "sim_eps": sim_eps, "root": root,
  }


def make_cfg(data, tmp_path, which=("bridge",), **overrides):
  cfg = data_config.default_data_config()
  entries = {"bridge": data_config.dataset_entry("tst_bridge_v2", data_dir=data["bridge"], standardize="bridge_dataset"),
             "oxe": data_config.dataset_entry("tst_oxe_bridge", data_dir=data["oxe"], standardize="bridge"),
             "sim": data_config.dataset_entry("lamp_sim_tst", data_dir=data["sim"])}
  cfg.datasets = [entries[w] for w in which]
  cfg.batch_size = 6
  cfg.image_size = OUT
  cfg.cameras = ("image_primary", "image_wrist")
  cfg.scene_flow_num_points, cfg.scene_flow_horizon = K, T
  cfg.stats_cache_dir = str(tmp_path / "stats")
  cfg.shuffle_buffer_size = 16
  cfg.num_parallel_calls = 2
  cfg.num_parallel_reads = 2
  cfg.update(overrides)
  return cfg


def one_pass(cfg, *, seed=0):
  """All frames of every dataset's train split once, in order of reading, without augmentation."""
  for entry in cfg.datasets:
    entry.val_split = "train"
  it = pipeline.make_val_iterator(cfg, seed=seed, process_index=0, process_count=1, repeat=False)
  return list(it), it


def test_batch_matches_specs(data, tmp_path):
  cfg = make_cfg(data, tmp_path, which=("bridge", "sim"), window_size=2,
                 cameras=("image_primary", "image_secondary", "image_wrist"))
  batch = next(pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1))
  B, W, A, S = 6, 2, cfg.max_action_dim, cfg.max_proprio_dim
  obs = batch["observation"]
  for camera in cfg.cameras:
    assert obs[camera].shape == (B, W) + OUT + (3,) and obs[camera].dtype == np.uint8
    assert obs["image_mask"][camera].shape == (B, W) and obs["image_mask"][camera].dtype == bool
    # Missing cameras are zero images.
    assert not obs[camera][~obs["image_mask"][camera]].any()
  assert obs["proprio"].shape == (B, W, S) and obs["proprio"].dtype == np.float32
  assert obs["timestep_pad_mask"].shape == (B, W) and obs["timestep_pad_mask"].dtype == bool
  assert batch["task"]["language_instruction"].shape == (B,)
  assert isinstance(batch["task"]["language_instruction"][0], bytes)
  assert batch["action"].shape == (B, cfg.action_horizon, A) and batch["action"].dtype == np.float32
  assert batch["action_pad_mask"].shape == (B, cfg.action_horizon, A) and batch["action_pad_mask"].dtype == bool
  assert batch["scene_flow"].shape == (B, K, T, 3) and batch["scene_flow_query"].shape == (B, K, 3)
  assert batch["scene_flow_mask"].shape == (B, K, T) and batch["scene_flow_query_mask"].shape == (B, K)
  assert batch["has_scene_flow"].shape == (B,) and batch["has_scene_flow"].dtype == bool
  assert np.isfinite(batch["action"]).all() and np.isfinite(obs["proprio"]).all()
  # Bridge has no scene flow: zeros and masked; Bridge proprio (7) is padded to 8 with zeros.
  bridge = ~batch["has_scene_flow"]
  assert not batch["scene_flow_mask"][bridge].any()
  assert (obs["proprio"][bridge][..., 7] == 0).all()


def test_chunk_indices_hand_computed():
  obs_i, obs_v, act_i, act_v = (x.numpy() for x in traj_transforms.chunk_indices(tf.constant(3), 2, 4))
  np.testing.assert_array_equal(obs_i, [[0, 0], [0, 1], [1, 2]])
  np.testing.assert_array_equal(obs_v, [[False, True], [True, True], [True, True]])
  # Episode (L=3) shorter than H=4: step 0 holds all 3 real actions, then the repeated last one.
  np.testing.assert_array_equal(act_i, [[0, 1, 2, 2], [1, 2, 2, 2], [2, 2, 2, 2]])
  np.testing.assert_array_equal(act_v, [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]])


def _locate(raw_states, proprio_row):
  """(episode, step) whose raw state equals this (unnormalised) proprio row."""
  for e, states in enumerate(raw_states):
    hit = np.where(np.abs(states - proprio_row[: states.shape[1]]).max(-1) < 1e-6)[0]
    if hit.size:
      return e, int(hit[0])
  raise AssertionError("frame not found in the raw episodes")


def test_chunks_match_hand_computed_trajectories(data, tmp_path):
  H, W = 4, 2
  cfg = make_cfg(data, tmp_path, batch_size=5, action_horizon=H, window_size=W, action_normalization="none",
                 proprio_normalization="none", cameras=("image_primary",))
  cfg.datasets[0].standardize_kwargs = {"binarize_gripper": False, "relabel_actions": False}
  batches, _ = one_pass(cfg)
  raw_states = [np.stack([s["observation"]["state"] for s in ep["steps"]]) for ep in data["bridge_eps"]]
  raw_actions = [np.stack([s["action"] for s in ep["steps"]]) for ep in data["bridge_eps"]]
  seen = set()
  for batch in batches:
    for b in range(5):
      e, t = _locate(raw_states, batch["observation"]["proprio"][b, -1])
      seen.add((e, t))
      L = BRIDGE_LENGTHS[e]
      want_idx = np.minimum(t + np.arange(H), L - 1)
      np.testing.assert_allclose(batch["action"][b, :, :7], raw_actions[e][want_idx], atol=1e-6)
      np.testing.assert_array_equal(batch["action_pad_mask"][b, :, 0], t + np.arange(H) <= L - 1)
      assert not batch["action_pad_mask"][b, :, 7:].any()
      obs_idx = np.maximum(t - W + 1 + np.arange(W), 0)
      np.testing.assert_allclose(batch["observation"]["proprio"][b, :, :7], raw_states[e][obs_idx], atol=1e-6)
      np.testing.assert_array_equal(batch["observation"]["timestep_pad_mask"][b], t - W + 1 + np.arange(W) >= 0)
  # Every step of every episode exactly once: first steps, last steps, the 3-step episode (< H).
  assert seen == {(e, t) for e, L in enumerate(BRIDGE_LENGTHS) for t in range(L)}


def test_empty_instructions_keep_or_skip(data, tmp_path):
  keep, _ = one_pass(make_cfg(data, tmp_path, batch_size=1, cameras=("image_primary",)))
  skip, it = one_pass(make_cfg(data, tmp_path, batch_size=1, cameras=("image_primary",), empty_instruction="skip"))
  assert len(keep) == sum(BRIDGE_LENGTHS) - len(BRIDGE_LENGTHS)  # relabelling drops each episode's last step
  assert len(skip) == len(keep) - (BRIDGE_LENGTHS[3] - 1)
  assert it.skip_counts() == {"tst_bridge_v2": {errors.EMPTY_INSTRUCTION: 1}}
  texts = {x for b in keep for x in b["task"]["language_instruction"]}
  assert texts == {b"", b"put the cube"}


def test_oxe_layout_relabels_from_state(data, tmp_path):
  cfg = make_cfg(data, tmp_path, which=("oxe",), batch_size=2, action_horizon=3, action_normalization="none",
                 proprio_normalization="none", cameras=("image_primary", "image_wrist"))
  batches, _ = one_pass(cfg)
  # drop_first_step and relabelling each remove one step.
  assert len(batches) * 2 == sum(OXE_LENGTHS) - 2 * len(OXE_LENGTHS)
  raw_states = [np.stack([s["observation"]["state"] for s in ep["steps"]]) for ep in data["oxe_eps"]]
  for batch in batches:
    assert not batch["observation"]["image_mask"]["image_wrist"].any()
    for b in range(2):
      e, t = _locate(raw_states, batch["observation"]["proprio"][b, -1])
      assert t >= 1  # the first raw step was dropped
      np.testing.assert_allclose(batch["action"][b, 0, :6], raw_states[e][t + 1, :6] - raw_states[e][t, :6],
                                 atol=1e-6)
      gripper = data["oxe_eps"][e]["steps"][t]["action"]["open_gripper"]
      assert batch["action"][b, 0, 6] == float(gripper)


def test_scene_flow_labels_aligned(data, tmp_path):
  cfg = make_cfg(data, tmp_path, which=("sim",), batch_size=3, proprio_normalization="none")
  batches, _ = one_pass(cfg)
  raw_states = [np.stack([s["observation"]["state"] for s in ep["steps"]]) for ep in data["sim_eps"]]
  for batch in batches:
    assert batch["has_scene_flow"].all()
    for b in range(3):
      e, t = _locate(raw_states, batch["observation"]["proprio"][b, -1])
      step = data["sim_eps"][e]["steps"][t]
      np.testing.assert_allclose(batch["scene_flow"][b], step["scene_flow"], atol=1e-6)
      np.testing.assert_allclose(batch["scene_flow_query"][b], step["scene_flow_query"], atol=1e-6)
      np.testing.assert_array_equal(batch["scene_flow_mask"][b], step["scene_flow_mask"])
  # K / T that do not match the dataset: error naming the config field.
  bad = make_cfg(data, tmp_path, which=("sim",), scene_flow_horizon=T + 2)
  with pytest.raises(errors.DataError, match="scene_flow_horizon"):
    pipeline.make_train_iterator(bad, seed=0, process_index=0, process_count=1)


def test_crop_convention_and_scene_flow_transform():
  image = np.zeros((1, 16, 20, 3), np.uint8)
  image[0, 4, 15] = 255  # pixel centre (u, v) = (15.5 / 20, 4.5 / 16)
  full = frame_transforms.crop_and_resize(tf.constant(image), tf.constant([0.0, 0.0, 1.0, 1.0]), (16, 20))
  np.testing.assert_allclose(full.numpy(), image.astype(np.float32), atol=1e-3)  # full box == identity
  image[0, 15, 0] = 200  # a corner pixel: upsampling must replicate edges like tf.image.resize
  for out in ((9, 7), (37, 41)):  # down- and upsampling: the full box == the eval resize
    resized = frame_transforms.crop_and_resize(tf.constant(image), tf.constant([0.0, 0.0, 1.0, 1.0]), out)
    expected = tf.image.resize(tf.cast(image, tf.float32), out, method="bilinear", antialias=False)
    np.testing.assert_allclose(resized.numpy(), expected.numpy(), atol=1e-3)
  image[0, 15, 0] = 0
  box = tf.constant([0.5, 0.25, 0.5, 0.5])  # x0, y0, w, h: 10x8 source pixels, output 10x8 = pure crop
  crop = frame_transforms.crop_and_resize(tf.constant(image), box, (8, 10)).numpy()
  py, px = np.unravel_index(np.argmax(crop[0, ..., 0]), (8, 10))
  uvd = np.array([[[15.5 / 20, 4.5 / 16, 2.0], [0.1, 0.1, 1.0]]], np.float32)  # [K=1, T=2, 3]
  frame = {"scene_flow": tf.constant(uvd), "scene_flow_mask": tf.constant([[True, True]]),
           "scene_flow_query": tf.constant(uvd[:, 0]), "scene_flow_query_mask": tf.constant([True])}
  moved = frame_transforms.crop_scene_flow(frame, box)
  u, v = moved["scene_flow"].numpy()[0, 0, :2]
  assert (int(u * 10), int(v * 8)) == (px, py)  # the bright pixel is where the transformed UV says
  assert moved["scene_flow"].numpy()[0, 0, 2] == 2.0  # depth unchanged
  np.testing.assert_array_equal(moved["scene_flow_mask"].numpy(), [[True, False]])  # left the crop


def test_determinism_and_resume(data, tmp_path):
  cfg = make_cfg(data, tmp_path, which=("sim",), deterministic=True, batch_size=4, image_size=(12, 10))

  def take(n, seed, start=0):
    it = pipeline.make_train_iterator(cfg, seed=seed, process_index=0, process_count=1, start_batch=start)
    return [next(it) for _ in range(n)]

  a, b, c = take(3, seed=5), take(3, seed=5), take(1, seed=6)
  assert not np.array_equal(a[0]["action"], a[1]["action"])
  for x, y in zip(a, b):
    jax.tree.map(np.testing.assert_array_equal, x, y)
  assert not np.array_equal(a[0]["observation"]["image_primary"], c[0]["observation"]["image_primary"])
  resumed = take(1, seed=5, start=2)  # resume_mode='skip': the same stream from batch 2
  jax.tree.map(np.testing.assert_array_equal, resumed[0], a[2])


def test_processes_read_disjoint_files(data, tmp_path):
  cfg = make_cfg(data, tmp_path)
  opened = rlds.open_dataset(cfg.datasets[0], cfg)
  files = rlds.file_instructions(opened, "train", 0.0)
  assert len(files) == 3
  read = []
  for process in range(2):
    mine, record_shard = rlds.shard_for_process(files, process, 2)
    assert record_shard is None
    gen = rlds.episode_records(opened, mine, data_cfg=cfg, seed=process, shuffle=True, repeat=False,
                               counter=errors.SkipCounter())
    read.append({(mine[f].filename, int(i)) for f, i, _ in gen()})
  assert read[0] and read[1] and not read[0] & read[1]
  assert {name for name, _ in read[0] | read[1]} == {f.filename for f in files}
  assert len(read[0] | read[1]) == len(BRIDGE_LENGTHS)
  # Fewer files than processes: every process reads all files but a disjoint, interleaved set of episodes.
  assert rlds.shard_for_process(files, 3, 4) == (files, (3, 4))
  # Without a 'val' split, validation is the last val_fraction of the train episodes, disjoint from train.
  train_part = rlds.file_instructions(opened, "train", 0.3)
  val_part = rlds.file_instructions(opened, "val", 0.3)
  assert sum(f.take for f in train_part) == 5 and sum(f.take for f in val_part) == 2
  # The iterator gives each process global batch / process_count examples.
  it = pipeline.make_train_iterator(cfg, seed=0, process_index=1, process_count=2)
  assert next(it)["action"].shape[0] == cfg.batch_size // 2


def test_mixture_proportions(data, tmp_path):
  cfg = make_cfg(data, tmp_path, which=("bridge", "oxe"), batch_size=50, cameras=("image_primary",),
                 image_size=(8, 8), shuffle_buffer_size=4)
  cfg.datasets[0].weight, cfg.datasets[1].weight = 0.75, 0.25
  it = pipeline.make_train_iterator(cfg, seed=3, process_index=0, process_count=1)
  texts = np.concatenate([next(it)["task"]["language_instruction"] for _ in range(8)])
  share = np.mean(texts == b"open the drawer")
  assert abs(share - 0.25) < 0.06, share  # 400 frames: ~2.8 standard deviations
  cfg.balance_weights = True
  weights = pipeline.mixture_weights(cfg, it.statistics)
  n = np.array([it.statistics[e.name].num_transitions for e in cfg.datasets]) * np.array([0.75, 0.25])
  np.testing.assert_allclose(weights, n / n.sum())


def test_inference_matches_pipeline(data, tmp_path):
  cfg = make_cfg(data, tmp_path, which=("sim",), batch_size=3, window_size=2, action_normalization="normal")
  batches, it = one_pass(cfg)
  stats = it.statistics["lamp_sim_tst"]
  pre = inference.ObservationPreprocessor(cfg, stats, standardize="lamp_sim_tst")
  builder = tfds.builder_from_directory(data["sim"])
  decoded = [list(ep["steps"].as_numpy_iterator()) for ep in builder.as_dataset(split="train")]
  normalised = {(e, t): pre.proprio(s["observation"]["state"])
                for e, steps in enumerate(decoded) for t, s in enumerate(steps)}
  checked = 0
  for batch in batches:
    for b in range(3):
      proprio = batch["observation"]["proprio"][b, -1]
      hits = [key for key, value in normalised.items() if np.allclose(value, proprio, atol=1e-6)]
      assert len(hits) == 1
      e, t = hits[0]
      pre.reset()
      for tt in range(max(0, t - 1), t + 1):  # at t = 0 the window repeats the first frame, like the pipeline
        raw = {k: v for k, v in decoded[e][tt]["observation"].items() if k != "image_1"}  # camera not rendered
        out = pre(raw, "stack the blocks")
      for camera in cfg.cameras:
        np.testing.assert_array_equal(out["observation"][camera][0], batch["observation"][camera][b])
        np.testing.assert_array_equal(out["observation"]["image_mask"][camera][0],
                                      batch["observation"]["image_mask"][camera][b])
      np.testing.assert_allclose(out["observation"]["proprio"][0], batch["observation"]["proprio"][b], atol=1e-6)
      np.testing.assert_array_equal(out["observation"]["timestep_pad_mask"][0],
                                    batch["observation"]["timestep_pad_mask"][b])
      # Actions: normalised chunk -> raw units.
      raw = pre.unnormalize_actions(batch["action"][b, :1])
      np.testing.assert_allclose(raw[0], decoded[e][t]["action"], atol=1e-5)
      checked += 1
  assert checked == sum(SIM_LENGTHS) // 3 * 3


def test_to_global_batch(data, tmp_path):
  cfg = make_cfg(data, tmp_path, which=("sim",), batch_size=2)
  batch = next(pipeline.make_train_iterator(cfg, seed=0, process_index=0, process_count=1))
  mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  out = pipeline.to_global_batch(batch, mesh, ("data",))
  assert "language_instruction" not in out["task"]
  assert isinstance(out["action"], jax.Array) and out["action"].shape == batch["action"].shape
  np.testing.assert_array_equal(np.asarray(out["observation"]["image_primary"]),
                                batch["observation"]["image_primary"])


def test_val_split_and_inspect_cli(data, tmp_path):
  cfg = make_cfg(data, tmp_path, which=("sim",), batch_size=5)
  val = list(pipeline.make_val_iterator(cfg, seed=0, process_index=0, process_count=1, repeat=False))
  assert len(val) == 1  # the dataset's own 'val' split: 5 + 4 steps, one batch of 5
  config_file = tmp_path / "tiny_config.py"
  config_file.write_text(
      "import ml_collections\nfrom lamp_jax.data import config as data_config\n"
      "def get_config(arg=None):\n"
      "  cfg = data_config.default_data_config()\n"
      f"  cfg.datasets = [data_config.dataset_entry('lamp_sim_tst', data_dir={data['sim']!r})]\n"
      f"  cfg.batch_size, cfg.image_size, cfg.stats_cache_dir = 4, (24, 24), {str(tmp_path / 'stats')!r}\n"
      f"  cfg.scene_flow_num_points, cfg.scene_flow_horizon = {K}, {T}\n"
      "  cfg.cameras = ('image_primary', 'image_wrist')\n"
      "  return ml_collections.ConfigDict({'data': cfg})\n")
  plot = tmp_path / "batch.png"
  report = inspect.main([f"--config={config_file}", "--num_batches=2", "--warmup=1", f"--plot={plot}",
                         f"--output={tmp_path / 'r.json'}", "--config.data.batch_size=3"])
  assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(report))
  assert report["datasets"]["lamp_sim_tst"]["num_transitions"] == sum(SIM_LENGTHS)
  # --config.<field>=<value> overrides work as for every command (batch 4 in the file, 3 on the command line).
  assert report["batch"]["observation/image_primary"] == {"shape": [3, 1, 24, 24, 3], "dtype": "uint8"}
  with pytest.raises(SystemExit):
    inspect.main([f"--config={config_file}", "--no_such_flag=1"])
  assert report["throughput"]["frames_per_s"] > 0 and report["throughput"]["cpu_s_per_1000_frames"] > 0
  assert plot.stat().st_size > 1000


def test_subsampled_steps_keep_their_true_action_chunks(data, tmp_path):
  """subsample_length keeps a subset of CHUNKED steps (Octo's order): before the fix the chunks were built from
  the subsampled, non-consecutive steps, so a kept step's chunk held actions of other steps."""
  H = 4
  cfg = make_cfg(data, tmp_path, batch_size=5, action_horizon=H, subsample_length=3, action_normalization="none",
                 proprio_normalization="none", cameras=("image_primary",), shuffle_buffer_size=1)
  cfg.datasets[0].standardize_kwargs = {"binarize_gripper": False, "relabel_actions": False}
  it = pipeline.make_train_iterator(cfg, seed=2, process_index=0, process_count=1)
  raw_states = [np.stack([s["observation"]["state"] for s in ep["steps"]]) for ep in data["bridge_eps"]]
  raw_actions = [np.stack([s["action"] for s in ep["steps"]]) for ep in data["bridge_eps"]]
  for _ in range(6):
    batch = next(it)
    for b in range(5):
      e, t = _locate(raw_states, batch["observation"]["proprio"][b, -1])
      want = raw_actions[e][np.minimum(t + np.arange(H), BRIDGE_LENGTHS[e] - 1)]
      np.testing.assert_allclose(batch["action"][b, :, :7], want, atol=1e-6)
