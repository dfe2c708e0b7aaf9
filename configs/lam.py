r"""Latent action models (VQ LAM, MVP-LAM) through the one trainer. Schema: ``lamp_jax/training/defaults.py``.

  python -m lamp_jax.train --config=configs/lam.py:sim_mvp --workdir=/tmp/lam_sim_mvp        # MVP-LAM, simulator
  python -m lamp_jax.train --config=configs/lam.py:sim_single --workdir=/tmp/lam_sim_single  # single-view LAM
  python -m lamp_jax.train --config=configs/lam.py:smoke --workdir=/tmp/lam_smoke            # a minute, synthetic
  python -m lamp_jax.bench --config=configs/lam.py:univla --what=train_step --batch_size=2    # model sizes

Variants (``:variant``):
  Simulator (the 'sim' model: 64^2 pixels in and out; data generated once with randomised third-person camera
  poses per episode and three synchronised third-person cameras, ``--randomize-cameras --cameras=front,side,top``;
  pairs (o_t, o_t+5), 0.5 s at 10 Hz):
    sim_mvp            MVP-LAM on views front + side (image_primary, image_secondary), cross-view term on
    sim_mvp3           MVP-LAM on front + side + top (image_tertiary)
    sim_mvp_no_cross   the same two views, cross-view term off (the ablation: multi-view data alone)
    sim_single         single-view LAM on the front camera
    sim_single_h8      the same with pairs (o_t, o_t+8): the LAM that configs/sim.py's 'lara_frozen', 'lafp' and
                       latent-pretraining variants load (``--config.init.lam.path=<its workdir>``; 8 = their action
                       horizon, ``POLICY_LAM_OFFSET``). On the demonstrations its latent carries little of the
                       action (KSG 0.6 bits, linear NMSE 1.02); 'sim_single_h8_explore' with
                       ``--config.model.loss.weights.commitment=0.05 --config.stages.main.steps=3000`` is the one
                       the LAFP figures of docs/results.md load
    <any of these>_explore   the same on exploration ("play") data: the random explorer's 24-step episodes
                       (``sim.generate --policy=explore``), whose actions are random given the frame
  Bridge V2 (``--config.data.pipeline.datasets`` points at bridge_dataset; 224^2, SigLIP So400m/14 features frozen,
  pairs (o_t, o_t+5) = 1 s at 5 Hz; MVP-LAM's recipe: batch 32, grad clip 1.0, VQ beta 0.25, 160k steps):
    bridge_univla      single view (image_0)
    bridge_mvp         MVP-LAM on image_0 + image_1 (episodes without image_1 have it masked: their pairs of
                       that view do not count)
    bridge_mvp_no_cross
  Model sizes on synthetic batches (``python -m lamp_jax.bench``, ``lamp_jax.summary``): tiny · sim · univla ·
  mvp_lam · moto · lara (``lam_config`` documents them); smoke: 'tiny' trained for a few steps on synthetic
  batches whose latent action is recoverable (``lam.colour_shift_pairs``).

Data: the pipeline must emit ``observation/future/<camera>`` and ``observation/future_pad_mask`` (specs.py) at
the model's ``future_offsets`` for its ``views``; ``data.pipeline.augment`` is off because the two frames of a
pair must see the same crop and colour jitter (a different crop is a fake motion).
Frozen image encoder: stage 'main' freezes ``^image_encoder/`` (and the model stops its gradients); initialise it
with ``--config.init.image_encoder.path=<PaliGemma .npz>`` (its SigLIP tower, big_vision layout).
"""

from __future__ import annotations

import ml_collections

from configs import common
from lamp_jax import specs
from lamp_jax.data import config as data_config
from lamp_jax.models import lam_config
from lamp_jax.training import defaults
from lamp_jax.training import pretrained

SIM_SUITE = "tabletop4"
SIM_VIEWS = {"sim_mvp": (specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY),
             "sim_mvp3": (specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY, specs.IMAGE_TERTIARY),
             "sim_mvp_no_cross": (specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY),
             "sim_single": (specs.IMAGE_PRIMARY,)}
BRIDGE_VIEWS = {"bridge_univla": (specs.IMAGE_PRIMARY,),
                "bridge_mvp": (specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY),
                "bridge_mvp_no_cross": (specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY)}
MODEL_SIZES = lam_config.VARIANTS
EXPLORE_SUFFIX = "_explore"
# The LAM of configs/sim.py's latent-action policies: their pairs are (o_t, o_{t+H}) at the policy's action horizon
# H = 8 (lafp_config.single_view_lam, lara); the model's and the pipeline's offsets must both say so.
POLICY_LAM_VARIANT, POLICY_LAM_OFFSET = "sim_single_h8", 8
VARIANTS = (tuple(SIM_VIEWS) + tuple(v + EXPLORE_SUFFIX for v in SIM_VIEWS)
            + (POLICY_LAM_VARIANT, POLICY_LAM_VARIANT + EXPLORE_SUFFIX)
            + tuple(BRIDGE_VIEWS) + MODEL_SIZES + ("smoke",))
# Generation flags of the multi-view simulator data (every sim variant reads the same cached dataset).
SIM_FLAGS = ("--workers=2", "--randomize-cameras", "--cameras=front,side,top")
SIM_STEPS = 1500
BRIDGE_STEPS = 160_000


def lam_data(model_cfg: ml_collections.ConfigDict, batch_size: int) -> ml_collections.ConfigDict:
  """The pipeline fields a latent action model fixes (``common.data_for``: its views at ``image_size``, one
  current frame, the future frames of its offsets), the action chunk up to the largest future offset (read by
  probes, not by the model), no augmentation."""
  d = common.data_for(model_cfg, batch_size)
  d.action_horizon = max(int(k) for k in model_cfg.future_offsets)
  d.augment = False
  return d


def _single_stage(c: ml_collections.ConfigDict, steps: int, optimizer: ml_collections.ConfigDict) -> None:
  frozen = (r"^image_encoder/",) if lam_config.uses_encoder(c.model) else ()
  c.stage_order = ("main",)
  c.stages = ml_collections.ConfigDict(dict(main=defaults.stage_config(steps, frozen=frozen, optimizer=optimizer)))


def _model(size: str, views: tuple[str, ...], cross_view: bool) -> ml_collections.ConfigDict:
  m = lam_config.model_config(size)
  m.views = tuple(views)
  m.loss.weights.cross_view = 1.0 if cross_view and len(views) > 1 else 0.0
  return m


def get_config(arg: str = "sim_mvp") -> ml_collections.ConfigDict:
  arg = arg or "sim_mvp"
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/lam.py (variants: {VARIANTS})")
  if arg.removesuffix(EXPLORE_SUFFIX) == POLICY_LAM_VARIANT:
    c = get_config("sim_single" + arg[len(POLICY_LAM_VARIANT):])
    c.model.future_offsets = (POLICY_LAM_OFFSET,)
    c.data.pipeline.future_offsets = (POLICY_LAM_OFFSET,)
    c.data.pipeline.action_horizon = POLICY_LAM_OFFSET
    return c
  c = defaults.base_config()
  c.seed = 0
  c.logging.measure_roof = False
  c.checkpoint.max_to_keep = 2

  explore = arg.endswith(EXPLORE_SUFFIX)
  if explore:
    arg = arg[:-len(EXPLORE_SUFFIX)]
  if arg in SIM_VIEWS:
    c.model = _model("sim", SIM_VIEWS[arg], cross_view="no_cross" not in arg)
    batch = 32
    c.data.kind = "pipeline"
    c.data.global_batch_size = batch
    d = lam_data(c.model, batch)
    d.datasets = [data_config.dataset_entry(f"lamp_sim_{SIM_SUITE}")]  # data_dir set after generation
    d.max_action_dim, d.max_proprio_dim = specs.ACTION_DIM, specs.SIM_STATE_DIM
    # The generator always writes scene flow; the smallest labels keep generation cheap (the LAM reads none).
    d.scene_flow_num_points, d.scene_flow_horizon = 16, 4
    d.shuffle_buffer_size, d.num_parallel_calls, d.num_parallel_reads = 5000, 2, 2
    d.deterministic, d.resume_mode = True, "skip"
    c.data.pipeline = d
    c.sim_data.enabled = True
    c.sim_data.suite = SIM_SUITE
    c.sim_data.episodes = 400
    c.sim_data.extra_flags = SIM_FLAGS + (("--policy=explore",) if explore else ())
    c.compute_dtype = "float32"
    _, optimizer = common.cpu_optimizers(warmup_steps=50)
    _single_stage(c, SIM_STEPS, optimizer)
    c.checkpoint.every_steps = 250
    c.logging.every_steps = 25
  elif arg in BRIDGE_VIEWS:
    c.model = _model("mvp_lam", BRIDGE_VIEWS[arg], cross_view="no_cross" not in arg)
    batch = 32
    c.data.kind = "pipeline"
    c.data.global_batch_size = batch
    d = lam_data(c.model, batch)
    d.datasets = [data_config.dataset_entry("bridge_dataset")]
    d.max_action_dim, d.max_proprio_dim = specs.ACTION_DIM, 8
    c.data.pipeline = d
    c.compute_dtype = "bfloat16"
    optimizer = defaults.optimizer_config(lr=1e-4, end_lr=1e-6, warmup_steps=1000, weight_decay=1e-4,
                                          clip_norm=1.0)
    _single_stage(c, BRIDGE_STEPS, optimizer)
    # Required: the frozen tower's weights (a PaliGemma .npz; its SigLIP So400m/14 at 224^2).
    c.init = ml_collections.ConfigDict(dict(image_encoder=pretrained.init_entry("big_vision_npz", "image_encoder",
                                                                                path=None)))
    c.checkpoint.every_steps = 5000
    c.logging.every_steps = 100
  else:  # model sizes and smoke: synthetic batches (the model's dummy_batch)
    size = "tiny" if arg == "smoke" else arg
    c.model = lam_config.model_config(size)
    c.data.kind = "synthetic"
    c.data.global_batch_size = 16 if arg == "smoke" else 8
    optimizer = defaults.optimizer_config(lr=3e-3, end_lr=3e-4, warmup_steps=0, weight_decay=1e-4, clip_norm=1.0)
    _single_stage(c, 8 if arg == "smoke" else 100, optimizer)
    c.checkpoint.every_steps = 4 if arg == "smoke" else 100
    c.logging.every_steps = 1 if arg == "smoke" else 10
    c.logging.progress_bar = arg != "smoke"
  return c
