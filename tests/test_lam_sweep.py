"""launch/lam_sweep.py: the sweeps' definitions, and the 'smoke' sweep trained end to end on a tiny synthetic
frames file (the export format), then tabulated by 'analyze'."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "launch" / "lam_sweep.py"


def _script():
  """The script as a module (registered: its dataclasses look their module up)."""
  if "lam_sweep" not in sys.modules:
    spec = importlib.util.spec_from_file_location("lam_sweep", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["lam_sweep"] = module
    spec.loader.exec_module(module)
  return sys.modules["lam_sweep"]


def test_sweeps_name_the_levers_and_the_seeded_variants():
  sweep = _script()
  levers = {r.lever: r for r in sweep.sweep_runs("levers")}
  assert set(levers) == set(sweep.LEVERS)
  assert levers["ema_codebook"].overrides == {"model.vq.ema": True, "model.loss.weights.codebook": 0.0}
  assert levers["continuous"].overrides == sweep.CONTINUOUS
  assert [p[1] for p in levers["continuous_then_vq"].schedule] == [sweep.CONTINUOUS, {}]
  mvp3 = sweep.sweep_runs("mvp3", "commitment_0.05")
  assert {(r.variant, r.seed) for r in mvp3} == {(v, s) for v in sweep.MVP3_VARIANTS for s in sweep.MVP3_SEEDS}
  assert all(r.overrides == {"model.loss.weights.commitment": 0.05} for r in mvp3)


# ~35 s with an empty compilation cache on 2 cores: an experiment script, kept out of the default suite.
@pytest.mark.slow
def test_smoke_sweep_trains_on_a_synthetic_frames_file(tmp_path, capsys):
  sweep = _script()
  data = tmp_path / "frames.npz"
  sweep.write_synthetic_frames(str(data), episodes=5, steps=8, heldout_episodes=2)
  out = tmp_path / "out"
  sweep.main(["train", f"--data={data}", "--sweep=smoke", f"--out={out}"])
  heldout_pairs = 2 * (8 - 5)  # k = 5: starts t = 0, 1, 2 of each held-out episode
  for run in sweep.sweep_runs("smoke"):
    record = json.loads((out / f"{run.name}.json").read_text())
    assert (out / f"{run.name}.params.msgpack").stat().st_size > 0
    assert record["nonfinite_steps"] == 0 and record["phase_trees_identical"]
    assert [row["step"] for row in record["curve"]] == [2, 4]
    values = [v for k, v in record["heldout"].items() if isinstance(v, float)]
    values += [record["ksg"]["bits_mean"]] + [v for row in record["curve"] for v in row.values()]
    assert values and all(math.isfinite(v) for v in values)
    assert record["heldout"]["pairs"] == heldout_pairs
    with np.load(out / f"{run.name}.npz") as arrays:
      assert arrays["z.image_primary"].shape == (heldout_pairs, 4, 32)
      assert arrays["codes.image_secondary"].shape == (heldout_pairs, 4)
      assert arrays["valid.image_primary"].all()
      assert np.isfinite(arrays["target"]).all() and arrays["net_action"].shape == (heldout_pairs, 7)
  schedule = json.loads((out / "smoke_continuous_then_vq.json").read_text())
  assert [p["vq_bypass"] for p in schedule["phases"]] == [True, False]
  sweep.main(["analyze", f"--out={out}"])
  assert "### sweep smoke (2 runs)" in capsys.readouterr().out


def test_best_lever_is_the_quantised_lever_with_the_largest_heldout_shuffled_penalty(tmp_path, capsys):
  sweep = _script()

  def write(lever, own, shuffled):
    record = {"run": f"levers_{lever}", "lever": lever,
              "heldout": {"quantized/reconstruction": own, "quantized/reconstruction_shuffled": shuffled}}
    (tmp_path / f"levers_{lever}.json").write_text(json.dumps(record))

  write("baseline", 0.05, 0.0500)
  write("commitment_0.05", 0.04, 0.0412)  # +3 %
  write("ema_codebook", 0.04, 0.0404)  # +1 %
  write("continuous", 0.04, 0.08)  # not a quantised lever: never chosen
  sweep.main(["best_lever", f"--out={tmp_path}"])
  assert capsys.readouterr().out.strip() == "commitment_0.05"
  sweep.main(["best_lever", f"--out={tmp_path}", "--min_gap=5"])  # none reads its codes enough
  assert capsys.readouterr().out.strip() == "continuous"


def test_pairs_are_t_and_t_plus_k_of_one_episode_and_the_split_is_by_episode():
  """Frames that carry their row index: o_t+k is row t + k of the same episode, the pad mask marks offsets past
  the episode's end (clamped to its last row), and held-out pairs come only from held-out episodes."""
  sweep = _script()
  lengths = np.asarray([7, 5, 9, 6])
  rows = int(lengths.sum())
  index_images = np.broadcast_to(np.arange(rows, dtype=np.uint8)[:, None, None, None], (rows, 3, 3, 3)).copy()
  frames = sweep.Frames(images={"image_primary": index_images}, present={"image_primary": np.ones(rows, bool)},
                        actions=np.zeros((rows, 7), np.float32), episode_lengths=lengths,
                        heldout=np.asarray([False, True, False, True]), meta={})
  k = 4
  train_rows, heldout_rows, fixed_rows = sweep.pair_rows(frames, k)
  episode = np.repeat(np.arange(lengths.size), lengths)
  start, end = frames.episode_starts, frames.episode_starts + lengths
  valid = [t for t in range(rows) if t + k < end[episode[t]]]
  assert sorted(np.concatenate([train_rows, heldout_rows]).tolist()) == valid
  assert frames.heldout[episode[heldout_rows]].all() and not frames.heldout[episode[train_rows]].any()
  assert set(fixed_rows.tolist()) <= set(train_rows.tolist())

  first = np.asarray([0, 2, 7, 12, 21], np.int32)  # episode starts and rows near their ends
  batch = sweep.pair_batch(sweep.device_arrays(frames), first, (k, 6), ("image_primary",))
  obs = batch["observation"]
  np.testing.assert_array_equal(obs["image_primary"][:, 0, 0, 0, 0], first)
  last = end[episode[first]] - 1
  for column, offset in enumerate((k, 6)):
    np.testing.assert_array_equal(obs["future"]["image_primary"][:, column, 0, 0, 0],
                                  np.minimum(first + offset, last))
    np.testing.assert_array_equal(obs["future_pad_mask"][:, column], first + offset <= last)
  assert start[episode[first]].tolist() == [0, 0, 7, 12, 21]


def test_the_accelerator_side_imports_without_tensorflow_or_mujoco():
  code = ("import sys\nfor name in ('tensorflow', 'tensorflow_datasets', 'mujoco'):\n  sys.modules[name] = None\n"
          f"sys.argv = ['lam_sweep.py', 'train', '--help']\nimport runpy\n"
          f"try:\n  runpy.run_path({str(_SCRIPT)!r}, run_name='__main__')\nexcept SystemExit as e:\n"
          "  sys.exit(e.code)\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=str(_SCRIPT.parents[1]), capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "--sweep" in proc.stdout
