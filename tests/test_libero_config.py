"""configs/libero.py end to end without LIBERO: fake rendered demonstrations (the npz layout of
``lamp_jax.libero.generate``'s render stage) -> ``lamp_jax.libero.rlds_export`` -> ``python -m lamp_jax.train
--config=configs/libero.py:smoke`` (both stages) -> the served checkpoint's ``sample_actions`` on a LIBERO-shaped
observation (what ``lamp_jax.eval.libero`` sends: image_0 / image_2 uint8[R, R, 3] at the harness resolution,
state float32[8])."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.training import defaults
from lamp_jax.training import trainer as trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "libero.py")
INSTRUCTIONS = ("pick up the black bowl next to the ramekin and place it on the plate",
                "pick up the black bowl in the top drawer of the wooden cabinet and place it on the plate")


def _libero_config_module():
  spec = importlib.util.spec_from_file_location("libero_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _fake_render_episode(rng, length: int, size: int, k: int, t: int, instruction: str, seed: int) -> dict:
  """The arrays ``lamp_jax.libero.generate.render_episode`` writes (shapes and dtypes), with random values."""
  query = np.concatenate([specs.grid_query_uv(k), rng.uniform(0.5, 1.5, (k, 1))], -1).astype(np.float32)
  flow = query[None, :, None, :] + rng.normal(0, 0.01, (length, k, t, 3)).astype(np.float32)
  action = rng.uniform(-1, 1, (length, 7)).astype(np.float32)
  action[:, 6] = (np.arange(length) >= length // 2).astype(np.float32)
  return {
      "image_0": rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8),
      "image_2": rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8),
      "state": rng.normal(0, 1, (length, 8)).astype(np.float32), "action": action,
      "scene_flow": flow, "scene_flow_query": np.repeat(query[None], length, 0),
      "scene_flow_mask": np.ones((length, k, t), bool), "scene_flow_query_mask": np.ones((length, k), bool),
      "language_instruction": np.str_(instruction), "seed": np.int64(seed), "success": np.bool_(True),
      "camera_intrinsics_0": np.eye(3, dtype=np.float32), "camera_extrinsics_0": np.eye(4, dtype=np.float32),
      "camera_intrinsics_2": np.eye(3, dtype=np.float32), "camera_extrinsics_2": np.eye(4, dtype=np.float32),
  }


def test_every_variant_validates_and_fits_every_libero_instruction():
  module = _libero_config_module()
  for variant in ("", "no_motion", "smoke", "smoke_no_motion"):
    c = module.get_config(variant)
    defaults.validate(c)
    assert not c.eval.enabled and not c.sim_data.enabled
    assert c.data.pipeline.datasets[0].name == "libero_spatial_scripted"
    assert tuple(c.model.image_keys) == (specs.IMAGE_PRIMARY, specs.IMAGE_WRIST)
    assert (c.model.action_dim, c.model.proprio_dim) == (7, 8)
    assert (c.model.motion.num_keypoints, c.model.motion.num_steps) == (400, 8)
    steps = sum(int(c.stages[s].steps) for s in c.stage_order)
    if "no_motion" in variant:
      assert c.stage_order == ("action",) and not c.model.use_motion
      assert steps == sum(int(s.steps) for s in module.get_config(variant.replace("no_motion", "").rstrip("_"))
                          .stages.values())
    else:
      assert c.stage_order == ("motion", "action") and c.stages.action.frozen == (r"^motion_expert/",)
    tok = trainer_lib.make_tokenizer(c, c.model)
    max_len = trainer_lib.text_length(c, c.model)
    for text in INSTRUCTIONS:
      ids = tok.encode(text)
      assert 3 not in ids and len(ids) + 2 <= max_len  # no <unk>; bos + words + separator fit
  c = module.get_config("")
  c.libero.suite = "libero_object"  # the dataset name follows the suite
  assert c.data.pipeline.datasets[0].name == "libero_object_scripted"
  assert c.model.motion.cond_len == 2 * (64 // 8) ** 2 + module.MAX_WORDS
  with pytest.raises(ValueError, match="unknown variant"):
    module.get_config("tiny")


@pytest.mark.slow  # trains, exports and serves (~200 s on a quiet 2-core box)
def test_smoke_trains_on_an_export_and_the_checkpoint_serves_libero_observations(tmp_path):
  from lamp_jax.libero import rlds_export

  rng = np.random.default_rng(0)
  render = tmp_path / "demos" / "libero_spatial" / "render"
  render.mkdir(parents=True)
  for task, instruction in enumerate(INSTRUCTIONS):
    for i in range(2):
      ep = _fake_render_episode(rng, 7 + 2 * i + task, 20, 400, 8, instruction, 100_000 + 1000 * task + i)
      np.savez_compressed(render / f"task{task:02d}_ep{i:04d}.npz", **ep)
  info = rlds_export.export(str(tmp_path / "demos" / "libero_spatial"), str(tmp_path / "tfds"))
  assert info["dataset"] == "libero_spatial_scripted" and info["episodes"] == {"train": 4}
  assert (info["num_points"], info["flow_horizon"], info["image_size"]) == (400, 8, 20)

  workdir = tmp_path / "run"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
         "LAMP_JAX_CACHE": str(tmp_path / "cache")}
  proc = subprocess.run([sys.executable, "-m", "lamp_jax.train", f"--config={CONFIG}:smoke",
                         f"--workdir={workdir}", f"--config.libero.data_dir={tmp_path / 'tfds'}",
                         "--config.logging.progress_bar=False"],
                        cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert json.loads(proc.stdout.strip().splitlines()[-1])["final_step"] == 6
  train = [r for r in map(json.loads, open(workdir / "metrics.jsonl")) if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(r["loss/motion"] > 0 and r["loss/action"] == 0 for r in train[:3])  # stage 1: motion
  assert all(r["loss/motion"] == 0 and r["loss/action"] > 0 for r in train[3:])  # stage 2: action
  assert all(r.get("data/unknown_words", 0) == 0 for r in train)

  # What `python -m lamp_jax.serve --checkpoint=WORKDIR` serves (serve.build_policy), on what the LIBERO harness
  # sends (eval.libero.observation_for_policy: 64² here, resized to the model's 24²).
  from lamp_jax import serve

  policy, name = serve.build_policy(str(workdir), None, None, seed=0, use_ema=True)
  assert name.startswith("checkpoint:") and policy.step == 6 and policy.action_horizon == 3
  policy.reset(INSTRUCTIONS[1])
  obs = {"image_0": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
         "image_2": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
         "state": rng.normal(0, 1, 8).astype(np.float32)}
  actions = policy(obs)
  assert actions.dtype == np.float32 and actions.shape == (3, 7) and np.isfinite(actions).all()
