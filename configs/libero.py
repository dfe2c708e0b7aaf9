r"""LaMP on the scripted LIBERO demonstrations, from scratch on a CPU machine; evaluated on the official initial
states through the policy server and the LIBERO harness.

The whole path (LIBERO commands in the LIBERO environment of ``launch/libero_env.sh``, the others in ours):

  # 1. demonstrations: record (no rendering) then render 64² images + exact scene flow (K = 20 x 20, T = 8)
  libero-run python -m lamp_jax.libero.generate --suite=libero_spatial --out=/data/libero_demos \
      --episodes-per-task=20 --resolution=64 --num-points=400 --flow-horizon=8 --workers=2
  # 2. RLDS export -> /data/libero_tfds/libero_spatial_scripted/1.0.0
  python -m lamp_jax.libero.rlds_export --suite-dir=/data/libero_demos/libero_spatial --out=/data/libero_tfds
  # 3. train LaMP and the w/o-motion ablation (same data, same total steps)
  python -m lamp_jax.train --config=configs/libero.py --workdir=/runs/libero_lamp \
      --config.libero.suite=libero_spatial --config.libero.data_dir=/data/libero_tfds
  python -m lamp_jax.train --config=configs/libero.py:no_motion --workdir=/runs/libero_no_motion \
      --config.libero.suite=libero_spatial --config.libero.data_dir=/data/libero_tfds
  # 4. serve a checkpoint (our environment) ...
  python -m lamp_jax.serve --checkpoint=/runs/libero_lamp --port=8000
  # 5. ... and evaluate it on the suite's fixed initial states (LIBERO environment)
  libero-run python -m lamp_jax.eval.libero --suite=libero_spatial --port=8000 --resolution=64 \
      --episodes-per-task=50 --output=/runs/libero_lamp/libero_spatial.json

``libero.suite`` names the dataset (``<suite>_scripted``, written by ``lamp_jax.libero.rlds_export``) and
``libero.data_dir`` is the tfds data_dir that holds it (required). The built-in closed-loop evaluation of the
trainer (``eval``, the tabletop simulator) is off: LIBERO runs in its own environment, behind the policy server.
Evaluate at the training resolution (``--resolution=64``): the policy resizes other sizes bilinearly, which is not
how the demonstrations were rendered.

Model: ``lamp_config.model_config('sim')`` (64² images, patch 8, two cameras: image_0 agentview -> image_primary,
image_2 wrist -> image_wrist; state 8; action 7) with the export's scene flow: a 20 x 20 query grid (K = 400) over
T = 8 future steps, patchified 5 x 5 x 2 frames = 64 motion tokens, as the sim config's 8 x 8 x 8 (patch 2).
Regenerating with another ``--num-points`` / ``--flow-horizon`` needs the same values in
``--config.model.motion.num_keypoints`` / ``num_steps`` (the data follows the model; a mismatch with the dataset
fails at start naming the feature). Instructions: a closed word vocabulary of every LIBERO-Spatial / Object / Goal
/ 10 instruction (69 words, at most 19 per instruction).

Stages and recipe follow ``configs/sim.py`` (read its docstring for the deviations from released LaMP): LaMP =
stage 1 'motion' (VLM + Motion Expert, scene-flow flow matching) then stage 2 'action' (Motion Expert frozen);
``no_motion`` = one 'action' stage of the same total steps without Motion Expert and guidance. The step budget
(200 + 800 at batch 16) fits a 2-core CPU machine: 13 min 25 s for LaMP and 8 min 47 s without motion, measured
on a loaded box (README: all measured figures). A from-scratch model this small is not expected to solve LIBERO.

Variants (``:variant``): '' (LaMP) · 'no_motion' · 'smoke' / 'smoke_no_motion' (tiny model, 3 + 3 steps, batch 4:
proves the command end to end on any export with K = 400, T = 8).
"""

import ml_collections

from configs import common
from lamp_jax.data import config as data_config
from lamp_jax.models import lamp_config
from lamp_jax.training import defaults

# Every word of the instructions of libero_spatial, libero_object, libero_goal and libero_10 (read from LIBERO's
# benchmark: `[benchmark.get_benchmark_dict()[s]().get_task(i).language for s in suites for i in range(10)]`).
# A word outside it becomes <unk> and is counted by the trainer (metric data/unknown_words).
LIBERO_WORDS = (
    "pick up the black bowl between plate and ramekin place it on next to from table center cookie box in top "
    "drawer of wooden cabinet stove alphabet soup basket cream cheese salad dressing bbq sauce ketchup tomato "
    "butter milk chocolate pudding orange juice open middle put wine bottle inside push front turn rack both moka "
    "pot bottom close white mug left yellow right book back compartment caddy pots microwave")
# The longest instruction has 19 words (+ bos + separator = 21 tokens).
MAX_WORDS = 24
SUITE = "libero_spatial"
# The export of lamp_jax.libero.generate --num-points=400 --flow-horizon=8.
NUM_POINTS, FLOW_HORIZON = 400, 8


def _data(model_cfg, batch_size: int, dataset_name, data_dir) -> ml_collections.ConfigDict:
  d = common.fixed_camera_data(model_cfg, batch_size)  # as configs/sim.py: agentview is a fixed camera
  entry = data_config.dataset_entry("", data_dir=data_dir, standardize="libero_")
  entry.name = dataset_name  # a field reference: follows libero.suite
  d.datasets = [entry]
  return d


def _model(smoke: bool, use_motion: bool) -> ml_collections.ConfigDict:
  m = lamp_config.model_config("sim")
  m.use_motion = use_motion
  m.motion.num_keypoints, m.motion.num_steps = NUM_POINTS, FLOW_HORIZON
  if smoke:
    common.smoke_lamp(m, image_size=24, width=24, mlp_dim=40, time_frequency_dim=16, max_words=MAX_WORDS,
                      action_horizon=3, num_inference_steps=2)
    m.motion.patch_size, m.motion.frames_per_token = 10, 4  # 2 x 2 x 2 = 8 tokens
  else:
    m.motion.patch_size, m.motion.frames_per_token = 5, 2  # 4 x 4 x 4 = 64 tokens, as the sim config
  m.max_token_len = MAX_WORDS
  common.every_prefix_token(m)
  return m


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  variants = ("", "no_motion", "smoke", "smoke_no_motion")
  if arg not in variants:
    raise ValueError(f"unknown variant {arg!r} of configs/libero.py (variants: {variants})")
  smoke = arg.startswith("smoke")
  use_motion = "no_motion" not in arg

  c = defaults.base_config()
  c.seed = 0
  suite = ml_collections.FieldReference(SUITE, field_type=str)
  data_dir = ml_collections.FieldReference("", field_type=str)
  c.libero = ml_collections.ConfigDict(dict(suite=suite, data_dir=data_dir))
  c.model = _model(smoke, use_motion)
  batch = 4 if smoke else 16
  c.data.kind = "pipeline"
  c.data.global_batch_size = batch
  c.data.pipeline = _data(c.model, batch, suite + "_scripted", data_dir)
  if smoke:
    c.data.pipeline.shuffle_buffer_size = 64
  c.tokenizer.kind = "words"
  c.tokenizer.words = LIBERO_WORDS
  c.tokenizer.max_len = int(c.model.max_token_len)
  c.compute_dtype = "float32"  # faster than bfloat16 on this CPU
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

  motion_steps, action_steps = (3, 3) if smoke else (200, 800)
  stage1_opt, stage2_opt = common.cpu_optimizers(warmup_steps=0 if smoke else 100)
  motion_repeats, action_repeats = (1, 1) if smoke else (2, 4)
  c.stage_order, c.stages = common.lamp_stages(use_motion, motion_steps, action_steps, stage1_opt, stage2_opt,
                                               motion_repeats=motion_repeats, action_repeats=action_repeats)
  c.ema.decay = 0.0 if smoke else 0.999
  c.checkpoint.every_steps = 3 if smoke else 200
  c.checkpoint.max_to_keep = 2
  c.logging.every_steps = 1 if smoke else 25
  c.logging.measure_roof = False
  c.eval.enabled = False  # LIBERO evaluation: lamp_jax.serve + lamp_jax.eval.libero (module docstring)
  c.sim_data.enabled = False
  return c
