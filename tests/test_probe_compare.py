"""Comparing probe reports over training seeds (lamp_jax.probe.compare) and its seed statistics."""

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lamp_jax import probe
from lamp_jax.probe import compare


def test_t_interval_matches_scipys_t_interval():
  values = [5.225, 5.792, 4.618, 6.1]
  mean, half = compare.t_interval(values)
  low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
  np.testing.assert_allclose([mean - half, mean + half], [low, high], rtol=1e-12)
  assert compare.t_interval([None, 2.0, float("nan"), 4.0]) == pytest.approx((3.0, compare.t_interval([2.0, 4.0])[1]))
  mean, half = compare.t_interval([1.5])
  assert mean == 1.5 and np.isnan(half)


def test_welch_interval_matches_scipys_welch_test():
  a, b = [5.225, 5.792, 4.618], [6.648, 5.953, 6.550]
  diff, half = compare.welch_interval(a, b)
  low, high = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  np.testing.assert_allclose([diff - half, diff + half], [low, high], rtol=1e-9)
  assert compare.welch_interval([1.0, 1.0], [0.5, 0.5]) == (0.5, 0.0)
  with pytest.raises(ValueError, match="at least 2 values per group, got 1 and 2"):
    compare.welch_interval([1.0], [1.0, 2.0])


def _probe_config():
  config = probe.default_config()
  config.methods = ("ksg",)
  config.seeds = (0, 1)
  config.inverse_probe = False
  config.ksg.projection_dim = 7
  config.linear.update(n_components=7, batch_size=128, learning_rate=3e-2, epochs=20)
  return config


def _write_report(directory, noise_std, seed, config=None):
  """A real run_probes report of a linear-Gaussian channel: small noise_std = a latent that carries the action."""
  task = probe.gaussian_tasks.linear_gaussian_channel(z_dim=7, a_dim=3, noise_std=noise_std, seed=seed)
  z, actions = task.sample(700, seed=seed)
  split = np.array(["train"] * 500 + ["test"] * 200)
  report = probe.run_probes(z, actions, split, config=config or _probe_config())
  directory.mkdir(parents=True)
  (directory / "report.json").write_text(json.dumps(report))
  return report


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Three 'seeds' of a latent that carries the action (noise 0.2) and three of one that barely does (3.0)."""
  root = tmp_path_factory.mktemp("probe_runs")
  reports = {"good": [], "poor": []}
  for seed in range(3):
    reports["good"].append(_write_report(root / f"good_s{seed}", 0.2, seed))
    reports["poor"].append(_write_report(root / f"poor_s{seed}", 3.0, seed))
  return root, reports


def test_group_statistics_and_welch_differences(runs):
  root, reports = runs
  groups = {label: [compare.load_report(str(root / f"{label}_s{s}")) for s in range(3)] for label in ("poor", "good")}
  result = compare.compare_reports(groups)
  good = result["groups"]["good"]["metrics"]
  ksg_good = [r["summary"]["mi_bits"]["ksg"]["mean"] for r in reports["good"]]
  assert good["ksg_bits"]["values"] == pytest.approx(ksg_good)
  assert (good["ksg_bits"]["mean"], good["ksg_bits"]["half_width"]) == pytest.approx(compare.t_interval(ksg_good))
  assert set(good) == {"ksg_bits", "ksg_mismatch_bits", "nmse_heldout"}  # no BA / MINE / codes / inverse probe
  # Default: every group minus the first; the action-carrying latent has more MI and a lower NMSE, clearly.
  by_metric = {d["metric"]: d for d in result["differences"]}
  assert {(d["a"], d["b"]) for d in result["differences"]} == {("good", "poor")}
  assert by_metric["ksg_bits"]["low"] > 0.5
  assert by_metric["nmse_heldout"]["high"] < 0
  nmse_good = [r["summary"]["nmse_heldout"] for r in reports["good"]]
  nmse_poor = [r["summary"]["nmse_heldout"] for r in reports["poor"]]
  assert by_metric["nmse_heldout"]["difference"] == pytest.approx(compare.welch_interval(nmse_good, nmse_poor)[0])
  explicit = compare.compare_reports(groups, differences=[("poor", "good")])
  assert explicit["differences"][0]["difference"] == pytest.approx(-by_metric[explicit["differences"][0]["metric"]]
                                                                     ["difference"])
  table = compare.markdown_tables(result)
  assert "| good | 3 |" in table and "good − poor" in table


def test_errors_name_the_file_and_the_setting(runs, tmp_path):
  root, _ = runs
  with pytest.raises(FileNotFoundError, match="no probe report at .*nowhere"):
    compare.load_report(str(tmp_path / "nowhere"))
  (tmp_path / "other.json").write_text(json.dumps({"steps": 3}))
  with pytest.raises(ValueError, match="other.json: not a probe report"):
    compare.load_report(str(tmp_path / "other.json"))
  good = [compare.load_report(str(root / f"good_s{s}")) for s in range(3)]
  # Probed with another KSG projection: not comparable, unless asked (then listed).
  config = _probe_config()
  config.ksg.projection_dim = 4
  _write_report(tmp_path / "other_projection", 0.3, 0, config)
  other = compare.load_report(str(tmp_path / "other_projection"))
  with pytest.raises(ValueError, match=r"config.ksg: .* in .*good_s0.* vs .* in .*other_projection"):
    compare.compare_reports({"good": good, "other": [other]})
  result = compare.compare_reports({"good": good, "other": [other]}, allow_config_mismatch=True)
  assert result["warnings"] and result["groups"]["other"]["metrics"]["ksg_bits"]["half_width"] is None
  assert result["differences"] == []  # one run: no interval for 'other'
  # A metric in some runs of a group only.
  partial = [dict(r) for r in good]
  partial[1] = json.loads(json.dumps(good[1]))
  partial[1]["summary"]["nmse_heldout"] = None
  with pytest.raises(ValueError, match=r"metric 'nmse_heldout' is in some runs but not in .*good_s1"):
    compare.compare_reports({"good": partial})
  with pytest.raises(ValueError, match="no group 'mvp'"):
    compare.compare_reports({"good": good}, differences=[("mvp", "good")])
  with pytest.raises(ValueError, match="expected LABEL=PATH"):
    compare.parse_group("good")
  with pytest.raises(ValueError, match="expected A,B"):
    compare.parse_difference("good-poor")


def test_command_prints_markdown_and_json(runs):
  root, _ = runs
  args = [sys.executable, "-m", "lamp_jax.probe.compare",
          "--group=poor=" + ",".join(str(root / f"poor_s{s}") for s in range(3)),
          "--group=good=" + ",".join(str(root / f"good_s{s}" / "report.json") for s in range(3))]
  markdown = subprocess.run(args + ["--format=markdown"], capture_output=True, text=True, check=True).stdout
  assert "| poor | 3 |" in markdown and "good − poor" in markdown
  result = json.loads(subprocess.run(args + ["--difference=poor,good"], capture_output=True, text=True,
                                     check=True).stdout)
  assert {(d["a"], d["b"]) for d in result["differences"]} == {("poor", "good")}
  missing = subprocess.run(args[:3] + [f"--group=x={root / 'nowhere'}"], capture_output=True, text=True)
  assert missing.returncode != 0 and "no probe report at" in missing.stderr
