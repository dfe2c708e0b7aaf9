"""``python -m lamp_jax.probe`` and its loader (lamp_jax/probe/lam_latents.py) on a tiny LAM trained here on a
synthetic Bridge-layout dataset read by the real pipeline, and the notebook notebooks/probe_latent_actions.ipynb
executed on the same checkpoint.

The checks: the command prints one JSON report with the expected sections and writes its plots; the loader's
latents equal a direct ``encode_latent`` of the trained parameters on the same batch (invalid pairs dropped);
targets are the z-scored net actions of the train rows; the reconstruction helper equals the loss's term; clear
errors for a checkpoint that is not a LAM, a dataset without the probed view, and bad overrides.
"""

import copy
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from configs import lam as lam_configs
from lamp_jax import probe, specs
from lamp_jax.data import config as data_config
from lamp_jax.data import normalization, pipeline, synthetic
from lamp_jax.models import lam as lam_model
from lamp_jax.probe import lam_latents
from lamp_jax.training import trainer as trainer_lib
from tests import toy_train_config

REPO = pathlib.Path(__file__).resolve().parents[1]
IMG = (16, 16)  # the 'tiny' LAM's image size: no resize
LENGTHS, VAL_LENGTHS = [9, 7, 11, 8, 10, 9], [9, 8]
BATCH = 7
SMALL_PROBE = ["methods=('ksg',)", "seeds=(0,)", "linear.batch_size=8", "linear.n_components=5",
               "ksg.projection_dim=4"]


def _dataset(root, name, missing_cameras, seed):
  rng = np.random.default_rng(seed)
  episodes = [synthetic.bridge_episode(rng, i, n, IMG, missing_cameras=missing_cameras) for i, n in enumerate(LENGTHS)]
  val = [synthetic.bridge_episode(rng, 20 + i, n, IMG, missing_cameras=missing_cameras)
         for i, n in enumerate(VAL_LENGTHS)]
  return synthetic.write(name, str(root), synthetic.bridge_features(IMG, encoding_format="png"), episodes,
                         val_episodes=val)


def _lam_config(data_dir, stats_dir):
  c = lam_configs.get_config("smoke")  # the 'tiny' LAM: views primary + secondary, k = 1
  c.data.kind = "pipeline"
  c.data.global_batch_size = BATCH
  d = lam_configs.lam_data(c.model, BATCH)
  d.datasets = [data_config.dataset_entry("tst_lam_probe", data_dir=data_dir, standardize="bridge_dataset",
                                          standardize_kwargs={"binarize_gripper": False, "relabel_actions": False})]
  d.update(dict(stats_cache_dir=stats_dir, action_normalization="normal", shuffle_buffer_size=16,
                num_parallel_calls=1, num_parallel_reads=1, max_action_dim=7, max_proprio_dim=7))
  c.data.pipeline = d
  c.compilation_cache_dir = os.path.join(tempfile.gettempdir(), "lamp_jax_tests_xla_cache")
  c.checkpoint.async_save = False
  c.checkpoint.every_steps = 3
  c.logging.tensorboard = False
  c.stages.main.steps = 3
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 3-step LAM run on a dataset with cameras image_0 / image_1 (primary / secondary), and a dataset of the
  same name without image_1."""
  root = tmp_path_factory.mktemp("lam_probe")
  both = _dataset(root / "both", "tst_lam_probe", (2, 3), seed=0)
  primary_only = _dataset(root / "primary_only", "tst_lam_probe", (1, 2, 3), seed=1)
  config = _lam_config(both, str(root / "stats"))
  workdir = str(root / "run")
  t = trainer_lib.Trainer(config, workdir)
  try:
    state = jax.device_get(t.train())
  finally:
    t.close()
  return {"workdir": workdir, "params": state.params, "config": config, "primary_only": primary_only,
          "root": root}


@pytest.mark.slow
def test_cli_prints_the_json_report_and_writes_the_plots(run, tmp_path):
  out = tmp_path / "probe_out"
  cmd = [sys.executable, "-m", "lamp_jax.probe", f"--checkpoint={run['workdir']}", "--batches=3",
         "--test_batches=2", f"--out={out}", "--noprogress", "--probe.max_rows_per_episode=3"] + [
             f"--probe.{o}" for o in SMALL_PROBE]
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout)
  assert {k: v for k, v in report.items() if k != "plots"} == json.loads((out / "report.json").read_text())
  for key in ("summary", "mutual_information", "linear_probe", "inverse_probe", "codes", "rows", "config",
              "source"):
    assert key in report, key
  assert set(report["mutual_information"]) == {"ksg"} and report["config"]["seeds"] == [0]
  assert set(report["linear_probe"]["nmse"]) == {"train", "test"}
  assert report["codes"]["codebook_size"] == 7 and 1.0 <= report["summary"]["perplexity"] <= 7.0
  source = report["source"]
  assert source["view"] == specs.IMAGE_PRIMARY and source["stride"] == 1 and source["step"] == 3
  assert source["examples"] == {"train": 3 * BATCH, "test": 2 * BATCH}
  labelling = source["labelling"]
  assert labelling["examples"] == 5 * BATCH and labelling["wall_s"] > 0 and labelling["cpu_s"] > 0
  np.testing.assert_allclose(labelling["examples_per_s"], 5 * BATCH / labelling["wall_s"])
  rows = report["rows"]
  assert report["config"]["max_rows_per_episode"] == 3 and source["max_rows_per_episode"] == 3
  assert source["repeats_by"] == {"train": "identity", "test": "identity"}
  for split, batches in (("train", 3), ("test", 2)):
    assert rows[split] + source["dropped_pairs"][split] + source["duplicate_rows_dropped"][split] + source[
        "thinned_rows"][split] == batches * BATCH
    per_episode = source["rows_per_episode"][split]
    assert 1 <= per_episode["max"] <= 3 and source["episodes"][split] >= 1
    np.testing.assert_allclose(per_episode["mean"] * source["episodes"][split], rows[split])
  assert sum(source["thinned_rows"].values()) > 0  # 35 examples of 8 episodes: some have more than 3 rows
  assert sorted(os.path.basename(p) for p in report["plots"]) == ["code_usage.png", "latent_pca.png", "mi.png"]
  assert all(os.path.getsize(p) > 1000 for p in report["plots"])


@pytest.mark.slow
def test_loader_latents_equal_a_direct_encode_latent_of_the_trained_params(run):
  lam = lam_latents.load_lam(run["workdir"])
  assert lam.step == 3 and lam.params_key == "params"  # the smoke config keeps no EMA
  for a, b in zip(jax.tree.leaves(lam.params), jax.tree.leaves(run["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  d = lam_latents.data_config(lam)
  it = pipeline.make_val_iterator(d, seed=0, process_index=0, process_count=1, repeat=False)
  try:
    batch = jax.tree.map(np.array, next(it))  # writable copies
  finally:
    it.close()
  batch[specs.OBSERVATION][specs.FUTURE_PAD_MASK][2] = False  # a pair past its episode end is not a row
  assert batch[specs.EPISODE_KEY].shape == (BATCH,)  # the probe's data config turns data.frame_ids on
  without_ids = {k: v for k, v in batch.items() if k not in (specs.EPISODE_KEY, specs.STEP_INDEX)}
  for view in (specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY):
    model = lam_model.LIBRARY.build(run["config"].model)
    direct = jax.device_get(model.apply({"params": run["params"]}, batch, jax.random.key(0), view=view,
                                        method="encode_latent"))
    valid = np.asarray(direct["valid"])
    assert not valid[2] and valid.sum() >= 1
    got = lam_latents.encode_batches(lam, [batch], view=view, offset_index=0)
    assert got["dropped"] == int((~valid).sum()) and got["examples"] == BATCH
    np.testing.assert_allclose(got["z"], np.asarray(direct["latent"])[valid].reshape(valid.sum(), -1),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["codes"], np.asarray(direct["codes"])[valid])
    np.testing.assert_array_equal(got["action"], batch[specs.ACTION][valid][:, :1])
    assert got["duplicates"] == 0 and got["repeats_by"] == "identity"
    np.testing.assert_array_equal(got["step_index"], batch[specs.STEP_INDEX][valid])
    # The same batch twice (a stream past one pass): each repeated row is left out once and counted.
    twice = lam_latents.encode_batches(lam, [batch, batch], view=view, offset_index=0)
    assert twice["duplicates"] == int(valid.sum()) and twice["dropped"] == 2 * int((~valid).sum())
    for key in ("z", "codes", "quantized", "action"):
      np.testing.assert_array_equal(twice[key], got[key])
    # Without frame ids (user batches) the value check finds the same exact repeats.
    by_value = lam_latents.encode_batches(lam, [without_ids, without_ids], view=view, offset_index=0)
    assert by_value["repeats_by"] == "value" and by_value["duplicates"] == int(valid.sum())
    np.testing.assert_array_equal(by_value["z"], got["z"])
    kept = lam_latents.encode_batches(lam, [batch, batch], view=view, offset_index=0, drop_duplicates=False)
    assert kept["duplicates"] == 0 and kept["z"].shape[0] == 2 * int(valid.sum())


@pytest.mark.slow
def test_targets_are_net_actions_z_scored_with_the_train_rows(run):
  out = lam_latents.latents_from_checkpoint(run["workdir"], train_batches=2, test_batches=2, progress=False)
  split = out["split"]
  n = out["z"].shape[0]
  assert out["codes"].shape == (n, 3) and out["z"].shape == (n, 3 * 11) and out["targets"].shape == (n, 7)
  assert set(split.tolist()) == {"train", "test"} and out["stride"] == 1
  train = split == "train"
  np.testing.assert_allclose(out["targets"][train].mean(0), 0, atol=1e-9)
  assert out["target_names"] == lam_latents.ACTION_NAMES and out["constant_dims"] == ()  # all vary here
  np.testing.assert_allclose(out["targets"], out["horizon_stats"].normalize(out["net_actions"]))
  # k = 1: the net action is the raw first action of the chunk (gripper raw: bridge does not normalise it).
  statistics = pipeline.dataset_statistics(lam_latents.data_config(out["lam"]))["tst_lam_probe"]
  raw = normalization.unnormalize_actions(out["actions"][:, 0], statistics, "normal", [True] * 6 + [False])
  np.testing.assert_allclose(out["net_actions"], raw, rtol=1e-5, atol=1e-6)
  assert set(np.unique(out["net_actions"][:, 6]).tolist()) <= {0.0, 1.0}
  # Rows by episode: every row's episode, no (episode, step) twice, train and test episodes apart.
  assert out["episode"].shape == (n,) and out["step_index"].shape == (n,)
  assert out["repeats_by"] == {"train": "identity", "test": "identity"}
  identity = list(zip(out["episode"].tolist(), out["step_index"].tolist()))
  assert len(set(identity)) == n
  episodes = {name: set(out["episode"][split == name].tolist()) for name in ("train", "test")}
  assert episodes["train"] and episodes["test"] and not episodes["train"] & episodes["test"]
  assert all(":" in key for key in out["episode_keys"]) and len(out["episode_keys"]) == out["episode"].max() + 1
  for name in ("train", "test"):
    assert out["rows_per_episode"][name]["episodes"] == len(episodes[name]) and out["thinned"][name] == 0
  thin = lam_latents.latents_from_checkpoint(out["lam"], train_batches=2, test_batches=2, progress=False,
                                             max_rows_per_episode=1)
  for name in ("train", "test"):
    rows = thin["episode"][thin["split"] == name]
    assert len(rows) == len(set(rows.tolist())) == thin["rows_per_episode"][name]["episodes"]  # one per episode
    assert thin["thinned"][name] == int((split == name).sum()) - len(rows)  # the same stream, thinned


@pytest.mark.slow
def test_reconstruction_equals_the_loss_reconstruction_term(run):
  cfg = copy.deepcopy(run["config"].model)
  batch = lam_model.dummy_batch(cfg, 5, seed=3)
  lam = lam_latents.load_lam(run["workdir"])
  model = lam_model.LIBRARY.build(cfg)
  _, metrics = jax.device_get(model.apply({"params": run["params"]}, batch, jax.random.key(0),
                                          method="compute_loss"))
  per_view = [lam_latents.reconstruct_future(lam, batch, view=v) for v in cfg.views]
  np.testing.assert_allclose(np.mean([r["mse"].mean() for r in per_view]), metrics["loss/reconstruction"],
                             rtol=1e-5)
  r = per_view[0]
  assert r["predicted"].shape == (5,) + IMG + (3,) and r["predicted"].dtype == np.uint8
  np.testing.assert_array_equal(r["future"], batch[specs.OBSERVATION][specs.FUTURE][cfg.views[0]][:, 0])


@pytest.mark.slow
def test_errors_name_the_model_the_view_and_the_field(run, tmp_path):
  # Not a LAM: the trainer tests' toy model.
  toy = toy_train_config.get_config("")
  toy.checkpoint.async_save = False
  toy.logging.tensorboard = False
  toy.stages.main.steps = 2
  t = trainer_lib.Trainer(toy, str(tmp_path / "toy"))
  try:
    t.train()
  finally:
    t.close()
  with pytest.raises(ValueError, match=r"model\.name='tests\.toy_model', not a latent action model"):
    lam_latents.load_lam(str(tmp_path / "toy"))
  # The same run's data directory swapped for a dataset without the secondary camera.
  override = f"data.pipeline.datasets.0.data_dir={run['primary_only']}"
  out = lam_latents.latents_from_checkpoint(run["workdir"], overrides=[override], train_batches=1, test_batches=1,
                                            progress=False)
  assert out["z"].shape[0] > 0  # the primary view is there
  with pytest.raises(ValueError, match=r"no valid \('image_secondary', future\) pair .* does the dataset have the "
                                       r"view 'image_secondary'"):
    lam_latents.latents_from_checkpoint(run["workdir"], overrides=[override], view=specs.IMAGE_SECONDARY,
                                        train_batches=1, test_batches=1, progress=False)
  with pytest.raises(ValueError, match=r"not one of the checkpoint's config field model\.views"):
    lam_latents.latents_from_checkpoint(run["workdir"], view=specs.IMAGE_WRIST, progress=False)
  with pytest.raises(ValueError, match=r"--config\.data\.pipeline\.nope: no such config field"):
    lam_latents.load_lam(run["workdir"], overrides=["data.pipeline.nope=1"])


def test_first_occurrences_keeps_the_first_of_each_repeated_row_across_all_columns():
  z = np.array([[0.5, 1.0], [0.5, 1.0], [0.5, 2.0], [0.5, 1.0], [np.nan, 0.0], [np.nan, 0.0]], np.float32)
  action = np.array([[1], [1], [1], [2], [3], [3]], np.float32)
  # Rows 1 and 5 repeat rows 0 and 4 in both columns; row 3 repeats row 0's z with another action: kept.
  np.testing.assert_array_equal(lam_latents.first_occurrences(z, action), [0, 2, 3, 4])
  np.testing.assert_array_equal(lam_latents.first_occurrences(z), [0, 2, 4])
  assert lam_latents.first_occurrences(z[:0], action[:0]).shape == (0,)


def test_overrides_are_parsed_as_the_fields_type():
  config = probe.default_config()
  out = lam_latents.apply_overrides(config, ["methods=('ksg', 'ba')", "seeds=(4,)", "neural.max_steps=30",
                                             "neural.learning_rate=1", "mismatch=false", "neural.patience=None",
                                             "train_split=first", "linear.n_components=None"])
  assert out.methods == ("ksg", "ba") and out.seeds == (4,) and out.neural.max_steps == 30
  assert out.neural.learning_rate == 1.0 and isinstance(out.neural.learning_rate, float)
  assert out.mismatch is False and out.neural.patience is None and out.train_split == "first"
  assert config.methods != out.methods  # a copy
  with pytest.raises(ValueError, match=r"--config\.neural\.max_steps='many'"):
    lam_latents.apply_overrides(config, ["neural.max_steps=many"])
  with pytest.raises(ValueError, match=r"expected --config\.<field>=<value>"):
    lam_latents.apply_overrides(config, ["seeds"])
  rest, cfg, prb = __import__("lamp_jax.probe.__main__", fromlist=["split_overrides"]).split_overrides(
      ["prog", "--checkpoint=x", "--config.seed=3", "--probe.seeds=(1,)"])
  assert rest == ["prog", "--checkpoint=x"] and cfg == ["seed=3"] and prb == ["seeds=(1,)"]


@pytest.mark.slow
def test_the_notebook_runs_on_the_tiny_checkpoint(run, tmp_path, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top

  notebook = nbformat.read(REPO / "notebooks" / "probe_latent_actions.ipynb", as_version=4)
  for key, value in dict(LAMP_PROBE_CHECKPOINT=run["workdir"], LAMP_PROBE_QUICK="1", LAMP_PROBE_SEEDS="0",
                         LAMP_PROBE_TRAIN_BATCHES="3", LAMP_PROBE_TEST_BATCHES="2", PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
                         TF_CPP_MIN_LOG_LEVEL="3").items():
    monkeypatch.setenv(key, value)
  # No time limit per cell (timeout=None); the kernel is this interpreter's.
  client = nbclient.NotebookClient(notebook, timeout=None, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  for expected in ("ksg", "ba", "mine", "forward probe z -> a  NMSE held-out", "perplexity", "view image_primary"):
    assert expected in text, expected
  figures = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
  assert len(figures) == 4  # MI + NMSE, code usage, latent PCA, reconstructions (the tiny LAM predicts pixels)
