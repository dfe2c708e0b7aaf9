"""configs/bridge.py: every variant parses and validates; command-line overrides reach the data entries; the
paper-size abstract train state builds with jax.eval_shape on 8 simulated devices and is sufficiently sharded."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags
from ml_collections import config_flags

from lamp_jax.training import defaults
from lamp_jax.training import pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "bridge.py")

VARIANTS = ["", "stage1", "stage2", "stage1+2", "stage2,paligemma_npz", "oxe", "stage1+2,oxe=bridge@1+bridge_dataset@0.5"]


def parse(*argv):
  """Parses the config exactly as ``python -m lamp_jax.train`` does (absl + ml_collections config flags; the
  latter reads ``--config.x=`` overrides from ``sys.argv``, so the command line is put there)."""
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True)
  saved = sys.argv
  sys.argv = ["prog", *argv]
  try:
    fv(sys.argv)
  finally:
    sys.argv = saved
  return holder.value


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_parses_and_validates(variant):
  c = parse(f"--config={CONFIG}:{variant}" if variant else f"--config={CONFIG}")
  defaults.validate(c)
  assert c.model.variant == "paper" and c.compute_dtype == "bfloat16"
  assert c.model.vlm.variant == "paligemma_3b" and c.model.image_size == 224
  assert (c.model.action_horizon, c.model.action_dim) == (10, 7)
  assert tuple(c.mesh.values()) == (1, -1, 1)
  p = c.data.pipeline
  assert p.image_size == (224, 224) and tuple(p.cameras) == tuple(c.model.image_keys)
  assert (p.action_horizon, p.max_action_dim, p.max_proprio_dim) == (10, 7, c.model.proprio_dim)
  for name in c.stage_order:
    o = c.stages[name].optimizer
    assert (o.b1, o.b2, o.clip_norm) == (0.9, 0.95, 1.0)
  if "stage2" in c.stage_order:
    s2 = c.stages.stage2
    assert (s2.steps, s2.optimizer.lr, s2.optimizer.end_lr) == (15_000, 1e-4, 1e-6)
    assert set(s2.frozen) == {r"^vlm/", r"^motion_expert/"}
    assert s2.model_overrides.loss.weights.motion == 0.0
  if c.stage_order == ("stage2",):
    assert c.data.global_batch_size == 512


def test_stage_variants_select_stages_and_data():
  assert parse(f"--config={CONFIG}").stage_order == ("stage2",)
  assert parse(f"--config={CONFIG}:stage1+2").stage_order == ("stage1", "stage2")
  oxe = parse(f"--config={CONFIG}:oxe=bridge@2+bridge_dataset@0.5")
  assert [(e.name, e.weight) for e in oxe.data.pipeline.datasets] == [("bridge", 2.0), ("bridge_dataset", 0.5)]
  assert oxe.data.pipeline.balance_weights
  assert [e.name for e in parse(f"--config={CONFIG}").data.pipeline.datasets] == ["bridge_dataset"]


def test_data_dir_and_flow_dataset_overrides_reach_every_dataset_entry():
  c = parse(f"--config={CONFIG}:stage1+2,oxe=bridge@1+bridge_dataset@1", "--config.data.data_dir=gs://bucket/tfds",
            "--config.data.flow_dataset=bridge_scene_flow")
  assert [e.data_dir for e in c.data.pipeline.datasets] == ["gs://bucket/tfds"] * 2
  flow = c.stages.stage1.data_overrides.datasets
  assert [(e.name, e.data_dir, e.standardize) for e in flow] == [("bridge_scene_flow", "gs://bucket/tfds", "lamp_sim_")]
  s1 = parse(f"--config={CONFIG}:stage1", "--config.data.data_dir=/data", "--config.data.flow_dataset=f")
  assert [(e.name, e.data_dir) for e in s1.data.pipeline.datasets] == [("f", "/data")]
  assert s1.data.global_batch_size == 32  # TraceGen's stage-1 batch


def test_paligemma_npz_variant_requires_the_path():
  c = parse(f"--config={CONFIG}:paligemma_npz")
  assert c.init.vlm.path is None and c.init.vlm.target == "vlm" and c.init.vlm.kind == "big_vision_npz"
  with pytest.raises(ValueError, match=r"init\.vlm\.path must be set"):
    pretrained.active_entries(c)
  c = parse(f"--config={CONFIG}:paligemma_npz", "--config.init.vlm.path=gs://b/pt_224.npz")
  assert c.init.vlm.path == "gs://b/pt_224.npz"
  assert parse(f"--config={CONFIG}").init.vlm.path == ""


@pytest.mark.parametrize("bad", ["stage3", "stage1,stage2", "oxe=bridge@-1", "paligemma_npz=x"])
def test_bad_variants_are_rejected_by_name(bad):
  with pytest.raises(Exception, match="bridge.py"):
    parse(f"--config={CONFIG}:{bad}")


# Sufficiently sharded (as MaxText's check): every parameter with more than 1M elements is split 8 ways over
# 'fsdp' (each device holds exactly 1/8), and each device holds at most (1 + 2 %) / 8 of all parameter bytes
# (the 2 % tolerance covers norms, biases and other small replicated leaves). Same for the Adam moments.
SHARDING_SCRIPT = textwrap.dedent(r"""
  import json, math, os, sys
  import numpy as np
  import jax
  jax.config.update("jax_platforms", "cpu")
  from absl import flags
  from ml_collections import config_flags
  from lamp_jax.perf import aot
  from lamp_jax.training import optim, sharding as sharding_lib

  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv)
  fv(["prog", "--config=" + sys.argv[1]])
  config = holder.value
  assert jax.device_count() == 8, jax.devices()
  mesh = sharding_lib.make_mesh(config.mesh)
  out = {"mesh": dict(mesh.shape), "stages": {}}
  with aot.planning_trainer(config, mesh) as trainer:
    for name in config.stage_order:
      stage, state, shardings, batch = aot.abstract_stage(trainer, name)
      optim.check_frozen_patterns(state.params, stage.frozen, "stages." + name + ".frozen")
      rows = sharding_lib.sharding_report(state.params, shardings.params)
      leaves = jax.tree.leaves(state.params)
      total = sum(math.prod(l.shape) * l.dtype.itemsize for l in leaves)
      per_device = sum(math.prod(l.shape) * l.dtype.itemsize * r["device_fraction"] for l, r in zip(leaves, rows))
      large = [(r["path"], r["spec"], r["device_fraction"]) for l, r in zip(leaves, rows) if math.prod(l.shape) > 1_000_000]
      opt_leaves = jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
      opt_sh = jax.tree.leaves(shardings.opt_state, is_leaf=lambda s: hasattr(s, "shard_shape"))
      opt_total = sum(math.prod(l.shape) * l.dtype.itemsize for _, l in opt_leaves)
      opt_dev = sum(math.prod(s.shard_shape(l.shape)) * l.dtype.itemsize for (_, l), s in zip(opt_leaves, opt_sh))
      batch_specs = sorted({str(x.sharding.spec[0]) for x in jax.tree.leaves(batch)})
      out["stages"][name] = dict(top=sorted(state.params.keys()), total=total, per_device=per_device, large=large,
                                 opt_total=opt_total, opt_per_device=opt_dev, batch_specs=batch_specs,
                                 batch=int(jax.tree.leaves(batch)[0].shape[0]))
  print("RESULT" + json.dumps(out))
""")


def test_paper_abstract_state_is_sufficiently_sharded_on_8_devices():
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-c", SHARDING_SCRIPT, f"{CONFIG}:stage1+2"], cwd=REPO, env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert result["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  assert set(result["stages"]) == {"stage1", "stage2"}
  for name, s in result["stages"].items():
    assert s["top"] == ["action_expert", "guidance", "motion_expert", "vlm"]
    assert s["total"] > 3.0e9 * 4  # > 3B float32 parameters: the paper-size model
    assert len(s["large"]) > 20
    for path, spec, fraction in s["large"]:
      assert "fsdp" in spec and fraction == pytest.approx(1 / 8), (name, path, spec, fraction)
    assert s["per_device"] <= s["total"] / 8 * 1.02, (name, s["per_device"] / s["total"])
    assert s["opt_total"] > 0 and s["opt_per_device"] <= s["opt_total"] / 8 * 1.02
    assert s["batch_specs"] == ["('data', 'fsdp')"]
  # Frozen parts have no optimizer state: stage 1 trains the Motion Expert only, stage 2 guidance + Action Expert.
  assert result["stages"]["stage1"]["opt_total"] < result["stages"]["stage2"]["opt_total"]
