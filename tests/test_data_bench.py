"""The per-stage profile and the Octo-compatible benchmark CLI, on tiny data (the figures are not checked, their
consistency is). The Octo path runs against a stand-in ``octo`` package: Octo itself is not installable here."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lamp_jax.data import bench, pipeline, profile, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # builds the pipeline six times (~25 s on a quiet 2-core box, 120 s on a loaded one)
def test_stage_profile_rows(tmp_path):
  rng = np.random.default_rng(0)
  episodes = [synthetic.bridge_episode(rng, i, n, (20, 20), missing_cameras=(2, 3)) for i, n in enumerate([5, 7, 6])]
  version_dir = synthetic.write(bench.NAME, str(tmp_path), synthetic.bridge_features((20, 20)), episodes,
                                num_shards=2)
  cfg = bench.data_config(version_dir, 2, str(tmp_path / "stats"))
  cfg.image_size, cfg.batch_size, cfg.shuffle_buffer_size = (16, 16), 4, 8
  result = profile.stage_profile(cfg, num_frames=24, warmup_frames=8)
  assert [row["stage"] for row in result["stages"]] == list(pipeline.STAGES)
  for row in result["stages"]:
    assert row["cpu_ms_per_frame"] > 0 and row["frames_per_s"] > 0
  deltas = sum(row["delta_cpu_ms"] for row in result["stages"])
  assert abs(deltas - result["stages"][-1]["cpu_ms_per_frame"]) < 1e-3  # the deltas add up to the whole
  assert "augment" in profile.format_table(result)


@pytest.mark.slow
def test_bench_cli_with_a_stand_in_octo(tmp_path):
  fake = tmp_path / "fake_octo" / "octo" / "data"
  fake.mkdir(parents=True)
  (fake.parent / "__init__.py").write_text("")
  (fake / "__init__.py").write_text("")
  (fake / "dataset.py").write_text(textwrap.dedent("""
      import tensorflow as tf
      CALLS = []
      def make_interleaved_dataset(dataset_kwargs_list, train, shuffle_buffer_size, batch_size,
                                   traj_transform_kwargs, frame_transform_kwargs):
        assert dataset_kwargs_list[0]["image_obs_keys"] == {"primary": "image_0"} and batch_size == 32
        assert traj_transform_kwargs == {"window_size": 1, "action_horizon": 10}
        image = tf.zeros([batch_size, 1, 224, 224, 3], tf.uint8)
        return tf.data.Dataset.from_tensors({"observation": {"image_primary": image}}).repeat()
      """))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, str(tmp_path / "fake_octo")]))
  out = subprocess.run([sys.executable, "-m", "lamp_jax.data.inspect", "--bench=octo", "--episodes=3",
                        "--image_size=32", "--rounds=1", "--batches=2", "--warmup=1"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900, check=True)
  report = json.loads(out.stdout[out.stdout.index("{\n"):])
  assert report["octo_source"].startswith("measured here")
  assert len(report["ours"]["rounds"]) == len(report["octo"]["rounds"]) == 1
  ratio = report["ours"]["frames_per_s"] / report["octo"]["frames_per_s"]
  assert abs(report["vs_octo"]["frames_per_s_ratio"] - ratio) < 1e-2
  assert report["octo_anchor"] == bench.OCTO_ANCHORS[1] and report["statistics_pass_s"] > 0
