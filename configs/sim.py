r"""LaMP on the built-in tabletop benchmark, from scratch on a CPU machine.

  python -m lamp_jax.train --config=configs/sim.py:film_cnn_medium --workdir=/tmp/lamp_sim  # the README's command
  python -m lamp_jax.train --config=configs/sim.py --workdir=/tmp/lamp_sim                 # LaMP, PaliGemma
  python -m lamp_jax.train --config=configs/sim.py:no_motion --workdir=/tmp/lamp_sim_no_motion
  python -m lamp_jax.compare --workdirs=/tmp/lamp_sim,/tmp/lamp_sim_no_motion --names=LaMP,w/o-motion
  python -m lamp_jax.train --config=configs/sim.py:smoke --workdir=/tmp/smoke              # a minute: CI
  python -m lamp_jax.train --config=configs/sim.py:pi0 --workdir=/tmp/pi0_sim               # π0, same data / budget

What the default does: generate the ``tabletop4`` demonstrations with exact scene-flow labels (once; shared by
both variants through a cache directory keyed by the generation settings) -> stage 1 'motion': the VLM and the
Motion Expert learn flow matching of the demonstrations' scene flow (no actions used) -> stage 2 'action':
VLM and Motion Expert frozen (as released LaMP), gated guidance + Action Expert learn the actions -> closed-loop
evaluation on held-out seeds -> success table with 95 % CIs and PNG plots in the workdir.

Deviation from released LaMP, stated: there the VLM is a pretrained PaliGemma and stays frozen in stage 2;
here every weight starts random, so the VLM learns in stage 1 (through the motion loss) and keeps learning in
stage 2 (through the action loss), while the Motion Expert — the motion prior — is frozen in stage 2 as
released. ``--config.stages.action.frozen='("^vlm/","^motion_expert/")'`` gives the released freezing.
The w/o-motion ablation (``no_motion``) has no Motion Expert and no guidance; with the same total number of
steps and the same data it trains the VLM and the Action Expert together in one 'action' stage.

Budget: sized so that data generation + both stages + evaluation fit the 45-minute CPU budget of the issue
on the 2-core machine (see the README for measured figures).

π0 (``pi0``): the 'pi0' model library (PaliGemma of the same size as LaMP's + a Gemma action expert attending to
the VLM's per-layer keys / values) trained like the w/o-motion ablation: one 'action' stage, the same steps,
optimizer, flow-matching draws per example, batch and generated demonstrations (scene-flow labels are generated
as for LaMP, so that every variant reads the same cached dataset, and π0 ignores them).

Joint motion-image diffusion (``motion_image``): the w/o-motion policy (VLM + Action Expert, a pi0-like VLA) with
the motion-image head (``lamp_jax/models/motion_image.py``), on the same demonstrations and step budget:

  python -m lamp_jax.train --config=configs/sim.py:motion_image --workdir=/tmp/lamp_sim_motion_image
  python -m lamp_jax.ablate --methods=no_motion,motion_image --seeds=3 --workdir=/tmp/ablate_motion_image

Its data are the same demonstrations generated with exact optical-flow images (k = the action horizon, 8 steps;
``--optical-flow-steps`` is derived from the data config): generation is deterministic, so the episodes, images
and actions equal the w/o-motion variant's (checked when this variant was written), only the cache entry differs.
Before the policy trains, its VAE (``vae``: the 'sim' AutoencoderKL, 0.98 M parameters, 64² flow image -> 8 x 8 x 4
latent) is trained ONCE on these flow images (cached under $LAMP_JAX_CACHE/runs/, shared by every seed), reports
its reconstruction error (report.json, plots/report.png: reconstructions next to the true flow images) and the
latent scaling (1 / std, mean) written into ``model.vae.scaling_factor`` / ``shift_factor``; its weights load into
params['vae'] and stay frozen in every stage. Stages (the paper's): 'warmup' (only the head trains, 200 steps) then
'joint' (VLM, Action Expert and head; the rest of the w/o-motion budget); total steps equal the ablation's.
Deviation, stated: the paper attaches the head to a pretrained pi0 and warms it up on DROID; here everything
starts from scratch, so the warm-up reads a randomly initialised VLM.

The paper's own setting, the head on the π0 policy (``pi0_motion_image``): π0 (``pi0``: PaliGemma + Gemma action
expert) with the same head, VAE prerequisite (the same run, shared), stages ('warmup' 200 steps: only the head;
'joint': VLM, action expert and head) and demonstrations with flow images, on π0's step budget, optimizer and action
draws. The head reads the VLM's last hidden states over the prefix (the pass whose keys / values the expert reads):

  python -m lamp_jax.train --config=configs/sim.py:pi0_motion_image --workdir=/tmp/pi0_sim_motion_image
  python -m lamp_jax.ablate --methods=pi0,pi0_motion_image --seeds=3 --workdir=/tmp/ablate_pi0_motion_image
  python -m lamp_jax.eval.motion_image_report --checkpoint=/tmp/pi0_sim_motion_image --out=/tmp/pi0_mi_report

The last writes predicted vs true flow images of held-out simulator frames (PNG: camera | true | predicted) and
their end-point / image errors (JSON); it works for either policy with the head.

Variants (``:variant``): '' (LaMP) · 'no_motion' · 'pi0' · 'motion_image' · 'pi0_motion_image' · 'vae' (the
motion-image variants' VAE run on its own) · 'smoke' / 'smoke_no_motion' / 'smoke_pi0' / 'smoke_motion_image' /
'smoke_pi0_motion_image' / 'smoke_vae' (tiny sizes, a few steps, 4 demonstrations, 1 evaluation episode per task:
proves the command end to end).

FiLM-CNN variants (the README's main command is 'film_cnn_medium': 36.7 % over three seeds within its 45 minutes,
against about 28 % for the PaliGemma variants; at the default budget 32.1 %, LaMP -1.2 points [-9.6, +7.1] from
its w/o-motion arm; docs/results.md. The variant '' keeps the paper's PaliGemma, trained from scratch, for the
method comparisons of ``ABLATION_METHODS``): 'film_cnn' / 'film_cnn_no_motion' / 'smoke_film_cnn' /
'smoke_film_cnn_no_motion'
replace the prefix encoder by an instruction-FiLM-conditioned CNN (``model.vlm.kind='film_cnn'``,
lamp_jax/models/film_cnn.py) whose spatial-softmax keypoints 0 and 1 are first trained by a grounding stage 0
to find the named object and receptacle on labelled renders of random scenes (``grounding``,
lamp_jax/training/grounding.py); the policy stages then keep that encoder frozen ('^vlm/' in every stage's
``frozen``).

  python -m lamp_jax.train --config=configs/sim.py:film_cnn --workdir=/tmp/lamp_sim_film_cnn

'film_cnn_long' / 'film_cnn_no_motion_long': the same with ``LONG_EXTRA_ACTION_STEPS`` more 'action' steps (equal
budgets for both arms; the learning-rate schedule spans the longer stage): LaMP 47.5 % over seeds 0-2 against 32.1 %
at the default budget; w/o motion 45.4 % (LaMP - w/o motion +2.1 points, Newcombe [-6.8, +10.9]). 'film_cnn_medium' /
'film_cnn_no_motion_medium': ``MEDIUM_EXTRA_ACTION_STEPS`` more, the most that fits the README's 45 minutes.
'film_cnn_trunk' / 'film_cnn_trunk_no_motion' (+ '_long', 'smoke_film_cnn_trunk'): the same, freezing only the
encoder's keypoint trunk (what stage 0 trains, ``film_cnn.keypoint_trunk_pattern``); its last conv stage and token
projections, which stage 0 never trains, learn with the policy. LARA and LAFP on the grounded policy: 'film_cnn_lara'
· 'film_cnn_lara_frozen' · 'film_cnn_lafp' · 'film_cnn_lafp_bc' (+ 'smoke_' / '_long'; ``GROUNDED_VARIANTS``),
compared by ``python -m lamp_jax.ablate --suite_config=configs/sim_film_cnn.py``.

LARA (``lara``, ``lara_frozen``; lara.py, docs/lara.md): LaMP with latent action representation alignment, on
LaMP's data, steps, stages and optimizers. A single-view latent action model (lam_config 'sim': 64^2 pixel patches
in and out, front camera, pairs (o_t, o_{t+H}) with H = the action horizon: the frame after the chunk) rides
along under params['lam']; in stage 'action' the Action Expert's hidden state after layer L-2, last action token,
predicts that model's pre-quantisation latent (term 'align', 0.01) and the model keeps its own loss (term 'lam',
0.01). Stage 'motion' is LaMP's (both terms 0, 'lam' and 'lara_predictor' frozen).
  lara           joint: the latent action model starts random and trains with the policy
  lara_frozen    the paper's frozen-LAM ablation: the latent action model comes from a trained LAM run
                 (``--config.init.lam.path=<workdir of a configs/lam.py:sim_single_h8 run>``, required),
                 frozen (^lam/), no 'lam' term
The smoke variants (``smoke_lara``, ``smoke_lara_frozen``) use the 'tiny' latent action model at the smoke image
size; ``smoke_lara_frozen`` leaves the LAM at its random initialisation (no checkpoint; frozen all the same).

LARA variants: 'lara' · 'lara_frozen' · 'smoke_lara' · 'smoke_lara_frozen'.

LAFP (``lafp``, ``lafp_bc``; lafp.py, docs/lafp.md): the latent action flow policy and its behaviour-cloned
baseline on the w/o-motion policy's data, batch, steps and optimizer (one stage). LaMP's prefix encoder conditions
a DiT that predicts the pre-quantisation latent of a single-view latent action model (front camera, pairs
(o_t, o_{t+H})) by x-prediction flow matching, 3 sampling steps ('lafp'), or regresses it ('lafp_bc'); an MLP
decoder maps a latent (+ proprio) to the action chunk, trained on (1 - tau_i) z_0 + tau_i z_t (tau_i 0.5). The
latent action model comes from a trained LAM run (``--config.init.lam.path=<workdir of a configs/lam.py:sim_single_h8
run>``, required) and stays frozen (^lam/); it never runs at inference.
The smoke variants ('smoke_lafp', 'smoke_lafp_bc') leave it at its random initialisation.
Latent-action pretraining (``latent_pretraining``; lamp_jax/models/latent_pretraining.py,
docs/latent_pretraining.md): the w/o-motion policy (VLM + Action Expert) on the same generated demonstrations,
whose training episodes are split into a small LABELLED set (the first ``LABELLED_EPISODES``) and an ACTION-FREE
set (the rest; read with ``data.hide_actions``: no action value in a batch or in the statistics):
  stage 'latent'  (``LATENT_STEPS``) the VLM and a code head learn to predict the frozen latent action model's
                  codes of (o_t, o_{t+H}) on the action-free episodes (term 'latent_codes'; the model reads no
                  actions; Action Expert and ^lam/ frozen)
  stage 'action'  (the w/o-motion ablation's steps minus ``LATENT_STEPS``) VLM + Action Expert learn the actions
                  on the labelled episodes; the code head is frozen and its term 0 (training-only: dropped from
                  the exported policy)
The latent action model comes from a trained LAM run as for ``lara_frozen`` (``--config.init.lam.path=<workdir
of a configs/lam.py:sim_single_h8 run>``, required; the smoke variant leaves it random). Its codes are computed on
the fly in every step, or with ``--config.model.latent_pretraining.codes=cache`` once per dataset on un-augmented
frames and read from a verified cache (docs/latent_pretraining.md).
  small_labelled  its baseline at the same labelled budget: the w/o-motion policy's 'action' stage alone, the
                  same steps and optimizer, on the labelled episodes only
Latent-pretraining variants: 'latent_pretraining' · 'small_labelled' · 'smoke_latent_pretraining' ·
'smoke_small_labelled'.
The same on the π0-style policy (PaliGemma + Gemma action expert, ``pi0``): ``pi0_latent_pretraining`` (the code
head reads the VLM's last hidden states over the prefix, the pass whose keys / values the expert reads; stage
'latent' freezes ^lam/ and ^action_expert/) and its baseline ``pi0_small_labelled`` (π0's 'action' stage alone on
the labelled episodes), on π0's data, steps and optimizer: 'pi0_latent_pretraining' · 'pi0_small_labelled' ·
'smoke_pi0_latent_pretraining' · 'smoke_pi0_small_labelled'.
On the grounded FiLM-CNN policy (configs/sim_film_cnn_latent.py): ``film_cnn_trunk_latent_pretraining`` and its
baseline ``film_cnn_trunk_small_labelled`` (+ 'smoke_'), the same stages and split on ':film_cnn_trunk_no_motion'
(stage 0, the keypoint trunk frozen in every stage), so that the 'latent' stage pretrains the encoder past the trunk.
"""

import ml_collections

from configs import common
from lamp_jax.data import config as data_config
from lamp_jax import specs
from lamp_jax.models import film_cnn
from lamp_jax.models import lafp_config
from lamp_jax.models import lam_config
from lamp_jax.models import lamp_config
from lamp_jax.models import lara
from lamp_jax.models import latent_pretraining
from lamp_jax.models import pi0_config
from lamp_jax.models import vae as vae_lib
from lamp_jax.sim import tasks
from lamp_jax.training import defaults
from lamp_jax.training import pretrained

SUITE = "tabletop4"
# Instructions are tokenised by whole words of the suite's vocabulary (tasks.INSTRUCTION_WORDS): the longest,
# "put the yellow cylinder on the orange plate", is 8 words + bos + separator = 10 tokens, as PaliGemma's
# SentencePiece would give; bytes would need 45 (lamp_config.model_config('sim') budgets 48 for them).
MAX_WORDS = 12
# The methods this benchmark compares (python -m lamp_jax.ablate): method -> (variant, smoke variant).
ABLATION_METHODS = {
    "lamp": ("", "smoke"),
    "no_motion": ("no_motion", "smoke_no_motion"),
    "pi0": ("pi0", "smoke_pi0"),
    "lara": ("lara", "smoke_lara"),
    "lara_frozen_lam": ("lara_frozen", "smoke_lara_frozen"),
    "motion_image": ("motion_image", "smoke_motion_image"),
    "pi0_motion_image": ("pi0_motion_image", "smoke_pi0_motion_image"),
    "lafp": ("lafp", "smoke_lafp"),
    "lafp_bc": ("lafp_bc", "smoke_lafp_bc"),
    "latent_pretraining": ("latent_pretraining", "smoke_latent_pretraining"),
    "small_labelled": ("small_labelled", "smoke_small_labelled"),
    "pi0_latent_pretraining": ("pi0_latent_pretraining", "smoke_pi0_latent_pretraining"),
    "pi0_small_labelled": ("pi0_small_labelled", "smoke_pi0_small_labelled"),
}
# Latent-action pretraining: labelled training episodes (the first ones; the rest are action-free) and the
# steps of its 'latent' stage, taken out of the w/o-motion ablation's step budget (smoke: 1 episode, 1 step).
LABELLED_EPISODES = 60
LATENT_STEPS = 600
# Joint motion-image diffusion: warm-up steps (head only) out of the w/o-motion ablation's step budget; the VAE's
# training steps and batch.
MOTION_IMAGE_WARMUP_STEPS = 200
VAE_STEPS, VAE_BATCH = 1200, 16


# The ':film_cnn' variants' prefix encoder: an instruction-FiLM-conditioned CNN (lamp_jax/models/film_cnn.py)
# with spatial-softmax keypoints, 0 and 1 grounded by stage 0 on the named object and receptacle
# (lamp_jax/training/grounding.py). The other variants keep the from-scratch PaliGemma ('paligemma').
FILM_KEYPOINTS = 4
# The ':film_cnn_long' variants: this many more 'action' steps than their base (LaMP 2400 -> 9600, w/o motion 3000 ->
# 10200: equal budgets). ':film_cnn' trained this long reached 47.5 % [41.3, 53.8] over seeds 0-2 against 32.1 % at
# the default budget (docs/results.md); about an hour per run on an idle 2-core box, resumable.
LONG_EXTRA_ACTION_STEPS = 7200
# The ':film_cnn_medium' variants: this many more 'action' steps (LaMP 2400 -> 4800, w/o motion 3000 -> 5400), the
# most that keeps data generation + stage 0 + both stages + evaluation within the README's 45 minutes on an idle
# 2-core box (stage 2 runs at ~3 steps/s there).
MEDIUM_EXTRA_ACTION_STEPS = 2400
# The ':film_cnn_trunk' variants freeze only the encoder's keypoint trunk, the parameters stage 0 trains
# (film_cnn.keypoint_trunk_pattern: instruction embedding and MLP, the conv / GroupNorm / FiLM stages up to the one
# the keypoints read, keypoint logits): the keypoints stay exactly where stage 0 put them, while what stage 0 never
# trains (the last conv stage, the grid / keypoint / text projections, position and camera embeddings, output norm)
# learns with the policy. ':film_cnn' freezes all of '^vlm/'. ':film_cnn_trunk_motion_image' (+ '_long', 'smoke_')
# adds joint motion-image learning to ':film_cnn_trunk_no_motion' (its warm-up + joint stages, the same total steps):
# the head can shape the policy only through encoder parameters that learn, so this pair (configs/sim_film_cnn_trunk.py)
# is the grounded comparison for it.
# The other methods on the grounded FiLM-CNN encoder, for the comparisons of configs/sim_film_cnn.py: 'film_cnn_' +
# a method ('lara', 'lara_frozen', 'lafp', 'lafp_bc') builds that method on the ':film_cnn' policy
# ('film_cnn_no_motion' for LAFP) with its stage 0 and the encoder frozen in every stage; each has a smoke variant
# ('smoke_' +) and a long one (+ '_long': LONG_EXTRA_ACTION_STEPS more steps in the last stage). Not built: π0
# (its action expert reads PaliGemma's per-layer keys / values), motion image (its head acts on the policy only
# through the shared encoder, frozen here; see ':film_cnn_trunk_motion_image') and latent pretraining (it pretrains
# the encoder; see ':film_cnn_trunk_latent_pretraining' below).
GROUNDED_METHODS = ("lara", "lara_frozen", "lafp", "lafp_bc")
GROUNDED_VARIANTS = tuple(f"{prefix}film_cnn_{method}{suffix}" for method in GROUNDED_METHODS
                          for prefix, suffix in (("", ""), ("smoke_", ""), ("", "_long")))
# Latent-action pretraining on the grounded policy: the ':film_cnn_trunk' freezing, so that the 'latent' stage can
# pretrain the encoder's last conv stage and token projections (':film_cnn' freezes all of it: there the code head
# alone would learn, and it is unused at inference). configs/sim_film_cnn_latent.py compares the pair.
TRUNK_LATENT_VARIANTS = tuple(f"{prefix}film_cnn_trunk_{method}" for method in ("latent_pretraining", "small_labelled")
                              for prefix in ("", "smoke_"))
VARIANTS = ("", "no_motion", "pi0", "motion_image", "pi0_motion_image", "vae", "film_cnn", "film_cnn_no_motion",
            "film_cnn_long", "film_cnn_no_motion_long", "film_cnn_medium", "film_cnn_no_motion_medium",
            "film_cnn_trunk", "film_cnn_trunk_no_motion", "smoke_film_cnn_trunk", "smoke_film_cnn_trunk_no_motion",
            "film_cnn_trunk_long", "film_cnn_trunk_no_motion_long", "film_cnn_trunk_motion_image",
            "smoke_film_cnn_trunk_motion_image", "film_cnn_trunk_motion_image_long", *GROUNDED_VARIANTS, "lara",
            "lara_frozen", "smoke", "smoke_no_motion", "smoke_pi0", "smoke_motion_image", "smoke_pi0_motion_image",
            "smoke_vae", "smoke_film_cnn", "smoke_film_cnn_no_motion", "smoke_lara", "smoke_lara_frozen", "lafp",
            "lafp_bc", "smoke_lafp", "smoke_lafp_bc", "latent_pretraining", "small_labelled",
            "smoke_latent_pretraining", "smoke_small_labelled", "pi0_latent_pretraining", "pi0_small_labelled",
            "smoke_pi0_latent_pretraining", "smoke_pi0_small_labelled", *TRUNK_LATENT_VARIANTS)


def _model(smoke: bool, use_motion: bool, encoder: str = "paligemma") -> ml_collections.ConfigDict:
  m = lamp_config.model_config("sim")
  m.use_motion = use_motion
  if smoke:
    common.smoke_lamp(m, image_size=32, width=32, mlp_dim=64, time_frequency_dim=32, max_words=MAX_WORDS,
                      action_horizon=4, num_inference_steps=3)
    m.motion.num_keypoints, m.motion.num_steps = 16, 4
  m.vlm.kind = encoder
  if encoder == "film_cnn":
    m.vlm.film_cnn.keypoints = FILM_KEYPOINTS
    if smoke:
      m.vlm.film_cnn.update(dict(width=32, channels=(8, 16), kernels=(4, 3), strides=(4, 2), text_width=16,
                                 cond_width=16))
  m.max_token_len = MAX_WORDS
  common.every_prefix_token(m)
  return m


def _pipeline(m: ml_collections.ConfigDict, batch: int, smoke: bool) -> ml_collections.ConfigDict:
  """The data config of every variant. The scene-flow label sizes (K, T) are LaMP's even where the model reads no
  scene flow (scene_flow=False: not read), because they decide what the simulator generates
  (experiment.generation_flags): so LaMP, its ablation and π0 read the same cached demonstrations."""
  d = common.fixed_camera_data(m, batch)
  d.datasets = [data_config.dataset_entry(f"lamp_sim_{SUITE}")]  # data_dir set after generation
  lamp_model = _model(smoke, use_motion=True)
  d.scene_flow_num_points = int(lamp_model.motion.num_keypoints)
  d.scene_flow_horizon = int(lamp_model.motion.num_steps)
  if smoke:
    d.shuffle_buffer_size = 64
  return d


def _vae_model(smoke: bool) -> ml_collections.ConfigDict:
  """The motion-image head's VAE: 'sim' (64² -> 8 x 8 x 4); smoke: 'tiny' (2 levels, 32² -> 16 x 16 x 4)."""
  return vae_lib.model_config("tiny" if smoke else "sim")


def _with_motion_image(c: ml_collections.ConfigDict, smoke: bool) -> ml_collections.ConfigDict:
  """The policy config ``c`` (LaMP's w/o-motion ablation or π0) with the motion-image head, its VAE prerequisite
  and its two stages."""
  m = c.model
  if "motion_image" not in m:  # π0's model section has no head sections of its own
    pi0_config.with_motion_image(m)
  m.motion_image.enabled = True
  if smoke:  # 16 x 16 latents of the tiny VAE in 4 x 4 patches: 16 tokens
    m.motion_image.update(dict(width=32, depth=1, num_heads=2, patch_size=4, time_frequency_dim=32))
  c.data.pipeline = _pipeline(m, int(c.data.global_batch_size), smoke)
  opt = c.stages.action.optimizer
  total, repeats = int(c.stages.action.steps), int(c.stages.action.model_overrides.loss.action_repeats)
  warmup = 1 if smoke else MOTION_IMAGE_WARMUP_STEPS
  silenced = tuple(term for term in ("motion",) if term in m.loss.weights)  # LaMP declares a motion term
  c.stage_order, c.stages = common.motion_image_stages(warmup, total - warmup, opt, opt, action_repeats=repeats,
                                                       silenced_terms=silenced)
  vae_opt = defaults.optimizer_config(lr=1e-3, end_lr=1e-5, warmup_steps=0 if smoke else 100, weight_decay=0.0,
                                      clip_norm=1.0)
  vae_model = _vae_model(smoke)
  vae_model.image_size = int(m.image_size)
  vae_run = common.flow_vae_run(c, vae_model, steps=3 if smoke else VAE_STEPS, batch_size=4 if smoke else VAE_BATCH,
                                optimizer=vae_opt)
  common.add_motion_image_head(c, vae_run)
  return c


def _pi0_model(smoke: bool) -> ml_collections.ConfigDict:
  m = pi0_config.model_config("sim")
  if smoke:  # the sizes of LaMP's smoke VLM
    common.smoke_pi0(m, image_size=32, width=32, mlp_dim=64, max_words=MAX_WORDS, action_horizon=4,
                     num_inference_steps=3)
  m.max_token_len = MAX_WORDS
  return m


def _add_lara(m: ml_collections.ConfigDict, smoke: bool, joint: bool) -> ml_collections.ConfigDict:
  """LaMP's model with LARA: a single-view latent action model on the front camera, pairs (o_t, o_{t+H})."""
  lam = lam_config.model_config("tiny" if smoke else "sim")
  lam.views = (specs.IMAGE_PRIMARY,)
  lam.future_offsets = (int(m.action_horizon),)
  lam.loss.weights.cross_view = 0.0
  # The smoke Action Expert has 2 layers (one cross / self pair): align at its output (block L).
  return lara.add(m, lam, block_from_end=0 if smoke else 2, joint=joint)


def _lara_stages(c: ml_collections.ConfigDict, joint: bool) -> None:
  """LaMP's stages with LARA in stage 'action' only (stage 'motion' trains neither the LAM nor the predictor)."""
  motion, action = c.stages.motion, c.stages.action
  motion.model_overrides.loss.weights.align = 0.0
  motion.model_overrides.loss.weights.lam = 0.0
  motion.frozen = tuple(motion.frozen) + (r"^lam/", r"^lara_predictor/")
  if not joint:
    action.frozen = tuple(action.frozen) + (r"^lam/",)


def _lafp(c: ml_collections.ConfigDict, smoke: bool, objective: str) -> ml_collections.ConfigDict:
  """The w/o-motion config ``c`` turned into LAFP (``objective`` 'flow') or its BC baseline ('bc'): the same prefix
  encoder and DiT sizes, data, batch, steps and optimizer (one stage); a single-view latent action model on the
  front camera, pairs (o_t, o_{t+H}), loaded from a trained LAM run into params['lam'] and frozen."""
  m = c.model
  lam = lafp_config.single_view_lam("tiny" if smoke else "sim", int(m.action_horizon))
  c.model = lafp_config.from_policy(m, lam, objective=objective)
  c.data.pipeline = _pipeline(c.model, int(c.data.global_batch_size), smoke)
  (stage,) = c.stage_order
  c.stages[stage].frozen = (r"^lam/",)
  with c.stages[stage].unlocked():
    c.stages[stage].model_overrides = ml_collections.ConfigDict()
  c.init = ml_collections.ConfigDict(dict(lam=pretrained.init_entry("checkpoint", "lam", path="" if smoke else None,
                                                                    source="/")))
  return c


def episode_split(episodes: int, val_fraction: float, labelled: int) -> tuple[str, str, str]:
  """(labelled train_split, action-free train_split, val_split) of the generated 'train' split of ``episodes``:
  the validation carve-out is the data pipeline's (the last ``val_fraction``), the labelled set the first
  ``labelled`` of the rest, the action-free set the others."""
  train = max(1, min(episodes - 1, int(round(episodes * (1.0 - val_fraction))))) if episodes > 1 else episodes
  if not 0 < labelled < train:
    raise ValueError(f"configs/sim.py LABELLED_EPISODES={labelled}: give 1 .. {train - 1} of the {train} training "
                     f"episodes (sim_data.episodes={episodes}, data.pipeline.val_fraction={val_fraction})")
  return f"train[:{labelled}]", f"train[{labelled}:{train}]", f"train[{train}:]"


def _with_latent_pretraining(c: ml_collections.ConfigDict, smoke: bool, pretrain: bool) -> ml_collections.ConfigDict:
  """The one-stage config ``c`` (the w/o-motion LaMP or π0) on the labelled episodes; with ``pretrain`` also the
  code head, the frozen latent action model and the 'latent' stage on the action-free episodes (module
  docstring)."""
  m = c.model
  total = int(c.stages.action.steps)
  latent_steps = 1 if smoke else LATENT_STEPS
  labelled, action_free, val = episode_split(int(c.sim_data.episodes), float(c.data.pipeline.val_fraction),
                                             1 if smoke else LABELLED_EPISODES)
  c.stages.action.steps = total - latent_steps
  if pretrain:
    lam = lam_config.model_config("tiny" if smoke else "sim")
    lam.views = (specs.IMAGE_PRIMARY,)
    lam.future_offsets = (int(m.action_horizon),)
    lam.loss.weights.cross_view = 0.0
    latent_pretraining.add(m, lam)
    c.data.pipeline = _pipeline(m, int(c.data.global_batch_size), smoke)
  entry = c.data.pipeline.datasets[0]
  entry.train_split, entry.val_split = labelled, val
  if not pretrain:
    return c
  free = ml_collections.ConfigDict(entry.to_dict())
  free.train_split = action_free
  action = c.stages.action
  action.frozen = tuple(action.frozen) + (r"^lam/", r"^latent_head/")
  action.model_overrides.loss.weights[latent_pretraining.LOSS_TERM] = 0.0
  # Only 'latent_codes' in the 'latent' stage (LaMP's 'motion' too is off; π0 has no such term).
  latent_weights = {term: 0.0 for term in ("motion", "action") if term in m.loss.weights}
  latent_weights[latent_pretraining.LOSS_TERM] = 1.0
  latent = defaults.stage_config(
      latent_steps, frozen=(r"^lam/", r"^action_expert/"), optimizer=action.optimizer,
      model_overrides=dict(loss=dict(weights=latent_weights)),
      data_overrides=dict(datasets=[free], hide_actions=True))
  c.stage_order = ("latent", "action")
  c.stages = ml_collections.ConfigDict(dict(latent=latent, action=action))
  # The trained latent action model (the whole run's parameters) into params['lam'].
  c.init = ml_collections.ConfigDict(dict(lam=pretrained.init_entry("checkpoint", "lam", path="" if smoke else None,
                                                                    source="/")))
  return c


def _freeze_encoder(c: ml_collections.ConfigDict, trunk_only: bool = False) -> None:
  """The FiLM-CNN variants keep the stage-0 encoder frozen in every policy stage (``trunk_only``: its keypoint
  trunk, ``film_cnn.keypoint_trunk_pattern``). Trained on, its keypoints left the named object (held-out
  front/object 2.2 px after stage 0 -> 42 px after the policy stages) and the policy ignored the front camera
  (input_reliance ratio 1.000; 25 % success, seed 0); frozen, it reads the front camera (1.40 / 1.09, seeds 0 / 1)
  at 35.0 % / 27.5 % success (docs/results.md: every CI overlaps)."""
  pattern = "^vlm/"
  if trunk_only:
    pattern = film_cnn.keypoint_trunk_pattern(
        film_cnn.config_from_dict(c.model.vlm, int(c.model.max_token_len), len(c.model.image_keys)))
  for name in c.stage_order:
    if pattern not in tuple(c.stages[name].frozen):
      c.stages[name].frozen = tuple(c.stages[name].frozen) + (pattern,)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/sim.py (variants: {VARIANTS})")
  for suffix, extra in (("_long", LONG_EXTRA_ACTION_STEPS), ("_medium", MEDIUM_EXTRA_ACTION_STEPS)):
    if arg.endswith(suffix):  # the last stage ('action'; 'joint' for motion_image) trains longer
      c = get_config(arg[:-len(suffix)])
      last = c.stages[c.stage_order[-1]]
      last.steps = int(last.steps) + extra
      return c
  grounded = "film_cnn" in arg
  # The w/o-motion policy LAFP builds on (the FiLM-CNN one for the grounded variants).
  no_motion = ("smoke_" if arg.startswith("smoke") else "") + ("film_cnn_no_motion" if grounded else "no_motion")
  if "lafp" in arg:
    c = _lafp(get_config(no_motion), arg.startswith("smoke"), "bc" if arg.endswith("_bc") else "flow")
    if grounded:
      _freeze_encoder(c)
    return c
  if arg.endswith(("latent_pretraining", "small_labelled")):
    smoke = arg.startswith("smoke")
    trunk = "film_cnn_trunk" in arg  # on the grounded policy whose encoder past the keypoint trunk learns
    policy = "pi0" if "pi0" in arg else "film_cnn_trunk_no_motion" if trunk else "no_motion"
    base = ("smoke_" if smoke else "") + policy
    c = _with_latent_pretraining(get_config(base), smoke, pretrain=arg.endswith("latent_pretraining"))
    if trunk:  # the 'latent' stage is new: freeze the trunk in it too
      _freeze_encoder(c, trunk_only=True)
    return c
  if arg in ("vae", "smoke_vae"):  # the motion-image variant's VAE run alone
    return get_config("smoke_motion_image" if arg == "smoke_vae" else "motion_image").prerequisites.vae.config
  if arg.endswith("motion_image"):
    trunk = "film_cnn_trunk" in arg  # on the grounded policy whose encoder past the keypoint trunk learns
    base = ("smoke_" if arg.startswith("smoke") else "") + (
        "pi0" if "pi0" in arg else "film_cnn_trunk_no_motion" if trunk else "no_motion")
    c = _with_motion_image(get_config(base), arg.startswith("smoke"))
    if trunk:  # the head's stages replace the base's: freeze the trunk in them too
      _freeze_encoder(c, trunk_only=True)
    return c
  smoke = arg.startswith("smoke")
  is_pi0 = arg.endswith("pi0")
  is_lara = "lara" in arg
  joint = not arg.endswith("lara_frozen")
  use_motion = "no_motion" not in arg and not is_pi0
  encoder = "film_cnn" if "film_cnn" in arg else "paligemma"

  c = defaults.base_config()
  c.seed = 0
  c.model = _pi0_model(smoke) if is_pi0 else _model(smoke, use_motion, encoder)
  if is_lara:
    _add_lara(c.model, smoke, joint)
  # ~36 GFLOP per stage-2 step at batch 32 (analytic_flops) against a measured ~210 GFLOP/s matmul roof.
  batch = 4 if smoke else 32
  c.data.kind = "pipeline"
  c.data.global_batch_size = batch
  c.data.pipeline = _pipeline(c.model, batch, smoke)
  c.tokenizer.kind = "words"
  c.tokenizer.words = " ".join(tasks.INSTRUCTION_WORDS)
  c.tokenizer.max_len = int(c.model.max_token_len)
  c.compute_dtype = "float32"  # Measured faster than bfloat16 on this CPU.
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1

  c.sim_data.enabled = True
  c.sim_data.suite = SUITE
  c.sim_data.episodes = 4 if smoke else 600
  # Image size, scene-flow points and horizon of the generated labels follow data.pipeline
  # (experiment.generation_flags), which is derived from the model's data requirements; an override of
  # model.motion.num_keypoints / num_steps needs data.pipeline.scene_flow_num_points / _horizon too
  # (defaults.validate names both when they disagree).
  c.sim_data.extra_flags = ("--workers=2",)
  # Stage 0 (':film_cnn' variants): the encoder learns where the instruction's object and receptacle are in both
  # cameras, on labelled renders of random scenes (cached), before the policy stages.
  c.grounding.enabled = encoder == "film_cnn"
  if smoke:
    c.grounding.update(dict(scenes=24, heldout=8, steps=2, batch_size=4, eval_every=2))

  motion_steps, action_steps = (3, 3) if smoke else (600, 2400)
  stage1_opt, stage2_opt = common.cpu_optimizers(warmup_steps=0 if smoke else 100)
  # Flow-matching draws per example (lamp_config: loss.*_repeats). The experts are small next to the VLM here (per
  # example: VLM 192 MFLOP, Motion Expert 66, Action Expert 34), so 4 action draws per example cost +27 % per
  # stage-2 step for a 4x larger action-expert batch; released LaMP draws once (batch 512 on GPUs).
  motion_repeats, action_repeats = (1, 1) if smoke else (2, 4)
  if is_pi0:  # the w/o-motion ablation's single stage
    c.stage_order, c.stages = common.action_stage(motion_steps + action_steps, stage2_opt,
                                                  action_repeats=action_repeats)
  else:
    c.stage_order, c.stages = common.lamp_stages(use_motion, motion_steps, action_steps, stage1_opt, stage2_opt,
                                                 motion_repeats=motion_repeats, action_repeats=action_repeats)
  if encoder == "film_cnn":
    _freeze_encoder(c, trunk_only="film_cnn_trunk" in arg)
  if is_lara:
    _lara_stages(c, joint)
    if not joint:  # the trained latent action model (the whole run's parameters) into params['lam']
      c.init = ml_collections.ConfigDict(dict(lam=pretrained.init_entry("checkpoint", "lam", path="" if smoke else None,
                                                                        source="/")))
  c.ema.decay = 0.0 if smoke else 0.999
  c.checkpoint.every_steps = 3 if smoke else 200
  c.checkpoint.max_to_keep = 2
  c.logging.every_steps = 1 if smoke else 25
  c.logging.measure_roof = not smoke
  c.eval.enabled = True
  c.eval.suite = SUITE
  c.eval.episodes_per_task = 1 if smoke else 20
  c.eval.every_steps = 0  # e.g. --config.eval.every_steps=400 for success curves during training
  c.eval.periodic_episodes_per_task = 2
  c.eval.execute_steps = 0 if smoke else 4  # execute 4 of the H = 8 predicted actions, then re-plan
  c.eval.seed = 0
  return c
