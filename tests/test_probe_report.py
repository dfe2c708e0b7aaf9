"""The probing report (lamp_jax.probe.report): everything on arrays -> one JSON-able dict, and its plots."""

import json
import os

import numpy as np
import pytest

from lamp_jax import probe


def tiny_config():
  config = probe.default_config()
  config.methods = ("ksg", "ba")
  config.seeds = (0, 1)
  config.ksg.projection_dim = 3
  config.neural.update(hidden_dim=16, depth=2, max_steps=100, eval_every=50, batch_size=128)
  config.linear.update(n_components=5, batch_size=128, learning_rate=1e-2)
  return config


@pytest.fixture(scope="module")
def probed():
  task = probe.gaussian_tasks.linear_gaussian_channel(z_dim=7, a_dim=3, noise_std=0.4, seed=1)
  z, actions = task.sample(2600, seed=0)
  split = np.array(["train"] * 1500 + ["test"] * 600 + ["libero"] * 500)
  z[split == "libero"] += 2.0  # an OOD split with shifted latents, same mapping
  codes = np.random.default_rng(1).integers(0, 11, size=(2600, 4))
  codes[:, 3] = 0  # a code position that never changes
  report = probe.run_probes(z, actions, split, codes=codes, codebook_size=11, config=tiny_config())
  return task, z, actions, split, codes, report


def test_report_is_json_and_consistent_with_the_parts(probed):
  task, z, actions, split, codes, report = probed
  assert json.loads(json.dumps(report)) == report
  assert report["rows"] == {"libero": 500, "test": 600, "train": 1500}
  assert report["ood_splits"] == ["libero"] and report["mi_rows"] == 2100
  summary = report["summary"]
  assert set(summary["mi_bits"]) == {"ksg", "ba"}
  # KSG after projecting 7 -> 3 dimensions: a lower bound, and clearly above its shuffled-pairs score.
  assert summary["mi_bits"]["ksg"]["mean"] < task.bits + 0.1
  assert summary["mi_bits"]["ksg"]["mean"] > 0.3 > abs(summary["mi_bits"]["ksg"]["mismatch_mean"])
  assert len(report["mutual_information"]["ba"]["bits_per_seed"]) == 2
  # The forward probe equals a direct call on the same rows.
  train, test = split == "train", split == "test"
  direct = probe.forward_probe(z[train], actions[train], {"test": (z[test], actions[test])},
                               probe.LinearProbeConfig(n_components=5, batch_size=128, learning_rate=1e-2))
  assert summary["nmse_heldout"] == pytest.approx(direct.nmse["test"])
  assert summary["nmse_ood"]["libero"] == pytest.approx(report["linear_probe"]["nmse"]["libero"])
  assert 0.0 < summary["inverse_nmse_heldout"] < 1.0
  # Code statistics on the MI rows (train + test): 11 codes at 3 positions, one position constant.
  code_stats = probe.code_statistics(codes[train | test], 11)
  assert summary["perplexity"] == pytest.approx(code_stats.perplexity)
  assert report["codes"]["perplexity_per_position"][3] == pytest.approx(1.0)
  assert report["config"]["ksg"]["projection_dim"] == 3


def test_plots_are_written(probed, tmp_path):
  _, z, actions, split, _, report = probed
  paths = probe.write_plots(report, str(tmp_path), z=z[split == "test"], actions=actions[split == "test"])
  assert [os.path.basename(p) for p in paths] == ["mi.png", "code_usage.png", "latent_pca.png"]
  for path in paths:
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_config_and_split_errors_name_the_field():
  z, actions = np.zeros((20, 3)), np.zeros((20, 2))
  split = np.array(["train"] * 10 + ["test"] * 10)
  config = tiny_config()
  config.neural.hidden = 8
  with pytest.raises(ValueError, match=r"config.neural: unknown keys \['hidden'\]"):
    probe.run_probes(z, actions, split, config=config)
  config = tiny_config()
  config.heldout_split = "heldout"
  with pytest.raises(ValueError, match=r"config.heldout_split names \['heldout'\], absent from split"):
    probe.run_probes(z, actions, split, config=config)
  with pytest.raises(ValueError, match="codes given without codebook_size"):
    probe.run_probes(z, actions, split, codes=np.zeros((20, 1), int), config=tiny_config())
  with pytest.raises(ValueError, match="codes has 19 rows but z has 20"):
    probe.run_probes(z, actions, split, codes=np.zeros((19, 1), int), codebook_size=2, config=tiny_config())


def test_only_splits_outside_the_in_distribution_fields_are_ood():
  rng = np.random.default_rng(2)
  z = rng.normal(size=(400, 5))
  actions = z[:, :2] + 0.1 * rng.normal(size=(400, 2))
  split = np.repeat(["train", "val", "test", "sim"], 100)
  config = tiny_config()
  config.methods = ()  # probes only
  config.mi_splits = ("train", "val", "test")
  report = probe.run_probes(z, actions, split, config=config)
  assert report["ood_splits"] == ["sim"] and report["mi_rows"] == 300
  assert set(report["linear_probe"]["nmse"]) == {"train", "test", "sim"}
  assert report["summary"]["mi_bits"] == {} and report["summary"]["perplexity"] is None
