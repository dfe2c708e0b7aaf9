r"""LaMP at paper size on Bridge V2 (cloud TPU pods). Schema: ``lamp_jax/training/defaults.py``.

  python -m lamp_jax.train --config=configs/bridge.py --workdir=gs://bucket/lamp/bridge \
      --config.data.data_dir=gs://bucket/tfds          # the directory holding bridge_dataset/1.0.0
  python -m lamp_jax.perf.aot --config=configs/bridge.py --topology=v5p:4x4x2   # memory plan, no TPU needed

Variants (``configs/bridge.py:<stage>[,<option>...]``):
  stage2 (default)  released LaMP Stage 2: VLM and Motion Expert frozen; gated guidance + Action Expert
                    trained on Bridge V2 (action flow matching only). AdamW (0.9, 0.95), lr 1e-4 cosine to 1e-6,
                    clip 1.0, global batch 512, 15k steps.
  stage1            Motion Expert flow matching (VLM frozen, action path unused). Bridge V2 has no motion labels:
                    stage 1 reads a scene-flow-labelled dataset in the RLDS layout of ``lamp_jax/specs.py``
                    (``--config.data.flow_dataset=<tfds name>`` under ``data.data_dir``; UVD tracks of a 20x20
                    query grid over 32 future steps in image_0's camera). Not released by LaMP; the recipe
                    follows TraceGen (batch 32, lr 2e-4, weight decay 0.05).
  stage1+2          both stages chained in one run (stage 1 then stage 2, each resumable).
Options:
  paligemma_npz     initialise the VLM from a big_vision PaliGemma ``.npz`` (``--config.init.vlm.path=``,
                    local or gs://), e.g. ``pt_224.npz`` (``--config.init.vlm.kind=hf_paligemma`` for a Hugging Face
                    safetensors directory instead).
Every variant tokenises with PaliGemma's SentencePiece model: ``--config.tokenizer.path=paligemma_tokenizer.model``.
  oxe[=<mixture>]   an Open X-Embodiment mixture instead of Bridge V2 alone. ``<mixture>`` is
                    ``<tfds name>@<weight>+<tfds name>@<weight>...`` (default ``bridge@1``: the OXE copy of Bridge);
                    every dataset lives under ``data.data_dir``; weights are multiplied by dataset size (Octo's
                    balanced mixtures); every name needs a registered standardisation (``lamp_jax/data/datasets``;
                    an unknown name fails at start listing the known ones).
                    Example: ``configs/bridge.py:stage2,oxe=bridge@1+my_oxe_dataset@0.5``.

Model: ``lamp_jax.models.lamp_config.model_config('paper')`` — PaliGemma-3B (SigLIP So400m/14 at 224², Gemma 2B),
Motion Expert 12 x 1024 (K=400, T=32), gated guidance, Action Expert DiT 24 x 1024; chunk 10 x 7, proprio 8
(Bridge's 7-D state zero-padded), bf16 activations, float32 parameters.
Mesh: FSDP over every device (``mesh.fsdp=-1``) and no tensor parallelism: each chip holds 1/N of every large
parameter and of the optimizer state and the batch is split over all chips. Slices above 128 chips: SigLIP's
width 1152 = 9 * 128 is not divisible by 256, so keep FSDP at <= 128 and data-parallelise the rest
(``--config.mesh.fsdp=128 --config.mesh.data=-1``; ``python -m lamp_jax.perf.aot`` shows the difference).
"""

from __future__ import annotations

import ml_collections

from configs import common
from lamp_jax.data import config as data_config
from lamp_jax.models import lamp_config
from lamp_jax.training import defaults
from lamp_jax.training import pretrained

STAGES = ("stage1", "stage2", "stage1+2")
OPTIONS = ("paligemma_npz", "oxe")

# Released LaMP Stage 2.
STAGE2_STEPS = 15_000
GLOBAL_BATCH = 512
# Stage 1 (not released): TraceGen's flow-matching recipe.
STAGE1_STEPS = 20_000
STAGE1_BATCH = 32

# Parameters frozen per stage (regular expressions on '/'-joined parameter paths).
FROZEN_STAGE1 = (r"^vlm/", r"^guidance/", r"^action_expert/")
FROZEN_STAGE2 = (r"^vlm/", r"^motion_expert/")

DEFAULT_OXE_MIXTURE = "bridge@1"


def parse_arg(arg: str | None) -> tuple[str, dict[str, str]]:
  """'stage1+2,oxe=bridge@1' -> ('stage1+2', {'oxe': 'bridge@1'}). The stage defaults to stage2."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  stages = [p for p in parts if p in STAGES]
  options, unknown = {}, []
  for p in parts:
    if p in STAGES:
      continue
    key, _, value = p.partition("=")
    if key in OPTIONS and key not in options and (key == "oxe" or not value):
      options[key] = value or (DEFAULT_OXE_MIXTURE if key == "oxe" else "")
    else:
      unknown.append(p)
  if unknown or len(stages) > 1:
    raise ValueError(f"configs/bridge.py:{arg}: unknown or repeated variant parts {unknown or stages}; "
                     f"use one of {STAGES} plus any of {OPTIONS} (oxe[=name@w+name@w]), comma-separated")
  return (stages[0] if stages else "stage2"), options


def parse_mixture(spec: str) -> list[tuple[str, float]]:
  """'bridge@1+fractal20220817_data@0.5' -> [('bridge', 1.0), ('fractal20220817_data', 0.5)]."""
  out = []
  for item in (s.strip() for s in spec.split("+") if s.strip()):
    name, _, weight = item.partition("@")
    try:
      w = float(weight) if weight else 1.0
    except ValueError as e:
      raise ValueError(f"configs/bridge.py variant oxe={spec}: bad weight in {item!r}") from e
    if not name or w <= 0:
      raise ValueError(f"configs/bridge.py variant oxe={spec}: {item!r} needs a name and a positive weight")
    out.append((name, w))
  if not out:
    raise ValueError(f"configs/bridge.py variant oxe={spec}: empty mixture")
  return out


def _pipeline(model_cfg: ml_collections.ConfigDict, datasets: list) -> ml_collections.ConfigDict:
  """The data pipeline section matched to the model's cameras, image size, chunk and motion label shapes."""
  p = common.data_for(model_cfg, GLOBAL_BATCH)  # batch: replaced by the per-process share at run time
  p.datasets = datasets
  return p


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  stage, options = parse_arg(arg)
  c = defaults.base_config()
  c.seed = 0
  c.model = lamp_config.model_config("paper")
  c.compute_dtype = "bfloat16"

  # --- data -------------------------------------------------------------------------------------------
  # One field the user sets (tfds data_dir holding <name>/<version>); every dataset entry refers to it.
  data_dir = ml_collections.FieldReference("", field_type=str)
  c.data.kind = "pipeline"
  c.data.data_dir = data_dir
  c.data.global_batch_size = GLOBAL_BATCH
  if "oxe" in options:
    entries = [data_config.dataset_entry(name, data_dir=data_dir, weight=w)
               for name, w in parse_mixture(options["oxe"])]
  else:
    entries = [data_config.dataset_entry("bridge_dataset", data_dir=data_dir)]
  c.data.pipeline = _pipeline(c.model, entries)
  if "oxe" in options:
    c.data.pipeline.balance_weights = True
  c.data.flow_dataset = ""  # stage 1: tfds name of the scene-flow-labelled dataset (specs.py RLDS layout)

  # --- mesh: FSDP over all devices -------------------------------------------------------------------------
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

  # --- stages -------------------------------------------------------------------------------------------
  stage2_opt = defaults.optimizer_config(lr=1e-4, end_lr=1e-6, warmup_steps=0, weight_decay=1e-4, clip_norm=1.0)
  stage2 = defaults.stage_config(
      STAGE2_STEPS, frozen=FROZEN_STAGE2, optimizer=stage2_opt,
      model_overrides=dict(loss=dict(weights=dict(motion=0.0, action=1.0))))
  stage1_opt = defaults.optimizer_config(lr=2e-4, end_lr=2e-6, warmup_steps=0, weight_decay=0.05, clip_norm=1.0)
  stage1 = defaults.stage_config(
      STAGE1_STEPS, frozen=FROZEN_STAGE1, optimizer=stage1_opt,
      model_overrides=dict(loss=dict(weights=dict(motion=1.0, action=0.0))))
  c.stages = ml_collections.ConfigDict(dict(stage1=stage1, stage2=stage2))
  c.stage_order = {"stage1": ("stage1",), "stage2": ("stage2",), "stage1+2": ("stage1", "stage2")}[stage]
  if stage in ("stage1", "stage1+2"):
    # Stage 1 reads the flow-labelled dataset; its batch is TraceGen's (set data.global_batch_size to 32 for a
    # stage-1-only run to match it exactly; chained runs keep one batch size for both stages).
    flow_name = c.data.get_ref("flow_dataset")
    flow_entry = data_config.dataset_entry("", data_dir=data_dir, standardize="lamp_sim_")
    flow_entry.name = flow_name
    c.data.pipeline.datasets = [flow_entry] if stage == "stage1" else c.data.pipeline.datasets
    if stage == "stage1":
      c.data.global_batch_size = STAGE1_BATCH
      c.data.pipeline.batch_size = STAGE1_BATCH
    else:
      c.stages.stage1.data_overrides = ml_collections.ConfigDict(dict(datasets=[flow_entry]))

  # --- tokenizer: PaliGemma's SentencePiece model (paligemma_tokenizer.model; local path or gs://) ---------------
  c.tokenizer.kind = "sentencepiece"
  c.tokenizer.path = ""  # required: --config.tokenizer.path=...
  c.tokenizer.max_len = c.model.max_token_len

  # --- pretrained VLM ---------------------------------------------------------------------------------------
  # path '' = random init. The paligemma_npz option makes the path required (None until set on the command line).
  c.init = ml_collections.ConfigDict(dict(
      vlm=pretrained.init_entry("big_vision_npz", "vlm", None if "paligemma_npz" in options else "")))

  # --- run bookkeeping ------------------------------------------------------------------------------------
  c.ema.decay = 0.0  # the released recipe keeps no EMA
  c.checkpoint.every_steps, c.checkpoint.max_to_keep, c.checkpoint.async_save = 1000, 3, True
  c.logging.every_steps = 50
  c.logging.measure_roof = False  # the host-CPU matmul roof means nothing on TPU
  c.eval.enabled = False  # closed-loop Bridge evaluation (SimplerEnv-WidowX) runs outside the trainer
  return c
