r"""Sweeps of latent action model (LAM) training runs on exported simulator frames, for a machine without
TensorFlow, tensorflow-datasets, MuJoCo or a network.

  # here (TensorFlow): the exploration dataset of configs/lam.py:sim_mvp_explore -> one compact .npz (38 MB)
  python launch/lam_sweep.py export --out=lam_explore_frames.npz
  # the accelerator (jax, numpy, scipy, opencv or pillow; flax / optax / ml_collections): train a sweep
  PYTHONPATH=. python launch/lam_sweep.py train --data=lam_explore_frames.npz --sweep=levers --out=$OUT
  PYTHONPATH=. python launch/lam_sweep.py train --data=lam_explore_frames.npz --sweep=mvp3 --lever=ema_codebook \
      --out=$OUT
  # here: tables (KSG MI computed where a run's JSON lacks it)
  python launch/lam_sweep.py analyze --out=$OUT

export
  Reads the simulator dataset the variant's ``sim_data`` settings name (``experiment.ensure_sim_dataset``: the
  trainer's cache, generated when absent), checks that it is exploration data (``sim.generate --policy=explore``:
  every episode ``explore_steps`` long), and writes the frames of ``--cameras`` as their ENCODED PNG bytes (read
  with ``rlds.decode_episode``, which skips image decoding), the raw per-step actions and the episodes' split.
  Split: the pipeline's own (``rlds.file_instructions`` with the config's ``data.pipeline.val_fraction``: the
  last 5 % of the episodes, 20 of 400, are the validation episodes the probe scores as 'test'); held out here.
  The file must stay under ``--max_mb`` (45): front + side fit (38 MB), the top camera does not (about 28 MB more).

train
  For each run of ``--sweep`` (``SWEEPS``; ``--runs`` picks a subset): the run config ``configs/lam.py:<variant>``
  with the run's ``--config``-style overrides (``lam_latents.apply_overrides``), the model of its stage 'main'
  (``defaults.stage_model_config``, the library from ``models.registry``), the optimizer of that stage's config
  over ``--steps`` (``optim.make_optimizer``), the state of ``training.state.create_train_state`` and the
  trainer's own step (``trainer.make_train_step``: ``compute_loss`` with the VQ state mutable, the optimizer
  update, ``after_update``'s codebook restarts / EMA codebook), run ``--eval_every`` steps per jitted call
  (``lax.scan``; the frames live on the device, the step gathers its pairs there). A schedule (lever
  'continuous_then_vq') changes only the model config between phases: the same parameters, optimizer state and
  learning-rate schedule continue (the parameter and state trees of the phases are checked identical).
  Batches: pairs (o_t, o_t+k), k = ``model.future_offsets``, t uniform over the valid starts of the train
  episodes (t + k inside the episode), in the layout of the model's ``dummy_batch`` (checked). The pipeline
  samples every step t and masks the pairs past the episode end instead, so its batches hold fewer valid pairs
  (19 of 24 here).
  Outputs per run in ``--out``: ``<run>.json`` (settings, the loss curve every ``--eval_every`` steps with own vs
  shuffled reconstruction on a fixed train batch, held-out metrics, KSG MI, timings), ``<run>.npz`` (per held-out
  pair: pre-quantisation latent and codes of every view, the net action and the probe's target) and
  ``<run>.params.msgpack`` (``flax.serialization.to_bytes`` of the parameters).

best_lever
  Prints the quantised lever of a 'levers' output whose decoder reads its codes most (the largest held-out
  shuffled-latent penalty; 'continuous' when none reaches ``--min_gap`` %): ``launch/lam_sweep_device.sh`` runs
  'levers', then 'mvp3' with that lever, then 'mvp3' with the continuous latent, in one go on an accelerator.

analyze
  Reads ``--out``'s JSON files and prints one markdown table per sweep (for 'mvp3': mean and 95 % t-interval over
  the seeds, per variant).

Held-out metrics: every valid pair of the held-out episodes in one batch, in a fixed random order (so that the
model's 'lam/reconstruction_shuffled', which decodes each pair with the previous pair's latent, pairs unrelated
motions, not the overlapping neighbour (t - 1, t + k - 1)); ``compute_loss`` of the trained parameters without
the VQ state: the quantised path (``model.vq.bypass`` False) always, and the path the decoder reads
(``lam.decoder_latent``: z itself) where the run ends with ``vq.bypass`` True. KSG MI as
``python -m lamp_jax.probe`` computes it (``probe.report.default_config``: k = 3, z projected to 8 dimensions,
seeds 0, 1, 2, with the shuffled-pairs score), on the held-out pairs of view image_primary: z flattened, the
target the net relative action over k (``probe.targets``) z-scored with the train pairs' statistics, constant
dimensions left out.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import io
import json
import math
import os
import sys
import time
from typing import Any, Sequence

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

if __package__ in (None, ""):  # run as a file: the repository root (configs/, lamp_jax/) on the path
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# None of these imports TensorFlow, tensorflow-datasets or MuJoCo (the accelerator has none): only 'export'
# reads the dataset, and imports its readers itself.
from configs import lam as lam_configs  # noqa: E402
from lamp_jax import specs  # noqa: E402
from lamp_jax.probe import codes as codes_lib  # noqa: E402
from lamp_jax.probe import ksg as ksg_lib  # noqa: E402
from lamp_jax.probe import lam_latents  # noqa: E402
from lamp_jax.probe import mutual_information  # noqa: E402
from lamp_jax.probe import report  # noqa: E402
from lamp_jax.probe import targets as targets_lib  # noqa: E402
from lamp_jax.probe.compare import t_interval, welch_interval  # noqa: E402
from lamp_jax.training import defaults  # noqa: E402
from lamp_jax.training import host_batch  # noqa: E402
from lamp_jax.training import optim  # noqa: E402
from lamp_jax.training import sharding as sharding_lib  # noqa: E402
from lamp_jax.training import state as state_lib  # noqa: E402
from lamp_jax.training import trainer as trainer_lib  # noqa: E402

FORMAT_VERSION = 1
DEFAULT_VARIANT = "sim_mvp_explore"
DEFAULT_CAMERAS = ("image_primary", "image_secondary")
PROBE_VIEW = "image_primary"  # the probe's default view (the model's first)
HELDOUT_ORDER_SEED = 0x5EED
TRAIN_BATCH_SEED = 0x7A1
DATA_STREAM = 0xDA7A

# ------------------------------------------------------------------------------------------------ sweeps --

# Continuous latent: the decoder reads z (``lam.decoder_latent``), no VQ loss terms (the quantiser still runs).
CONTINUOUS = {"model.vq.bypass": True, "model.loss.weights.commitment": 0.0, "model.loss.weights.codebook": 0.0}


@dataclasses.dataclass(frozen=True)
class Lever:
  """Config overrides of a run (``--config.<field>=<value>`` of ``python -m lamp_jax.train``), and an optional
  schedule: phases (fraction of the steps, extra model overrides) run one after the other on the same
  parameters, optimizer state and learning-rate schedule."""

  overrides: dict
  schedule: tuple[tuple[float, dict], ...] = ()


LEVERS = {
    "baseline": Lever({}),
    "commitment_0.05": Lever({"model.loss.weights.commitment": 0.05}),
    "commitment_0.01": Lever({"model.loss.weights.commitment": 0.01}),
    # lam_config.check: the EMA codebook needs the codebook loss at 0.
    "ema_codebook": Lever({"model.vq.ema": True, "model.loss.weights.codebook": 0.0}),
    "codes64_dim16": Lever({"model.vq.num_codes": 64, "model.vq.code_dim": 16}),
    "continuous_then_vq": Lever({}, schedule=((0.5, CONTINUOUS), (0.5, {}))),
    "continuous": Lever(CONTINUOUS),
}
MVP3_VARIANTS = ("sim_single_explore", "sim_mvp_no_cross_explore", "sim_mvp_explore")
MVP3_SEEDS = (0, 1, 2)
# Smoke runs: a small sim model so that a CPU compiles them in seconds (the depths and widths of 'sim' / 2).
SMOKE_MODEL = {"model.idm_depth": 1, "model.fdm_depth": 1, "model.width": 64, "model.mlp_dim": 128}


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep.

  Attributes:
    name: file stem of its outputs.
    variant: ``configs/lam.py`` variant.
    seed: ``config.seed`` (initialisation and per-step keys) and the seed of the pair sampling.
    overrides: {config field: value}, applied to the run config.
    schedule: phases (fraction of the steps, {model field: value}); () = one phase.
    lever: the lever's name (reporting).
  """

  name: str
  variant: str
  seed: int
  overrides: dict
  schedule: tuple[tuple[float, dict], ...] = ()
  lever: str = ""


def sweep_runs(sweep: str, lever: str = "baseline") -> list[Run]:
  """The runs of a named sweep ('levers', 'mvp3' with the overrides of ``lever``, 'smoke')."""
  if sweep == "levers":
    return [Run(f"levers_{name}", DEFAULT_VARIANT, 0, dict(l.overrides), l.schedule, name)
            for name, l in LEVERS.items()]
  if sweep == "mvp3":
    if lever not in LEVERS:
      raise ValueError(f"--lever={lever!r} is not one of {sorted(LEVERS)}")
    l = LEVERS[lever]
    return [Run(f"mvp3_{lever}_{variant}_s{seed}", variant, seed, dict(l.overrides), l.schedule, lever)
            for variant in MVP3_VARIANTS for seed in MVP3_SEEDS]
  if sweep == "smoke":
    l = LEVERS["continuous_then_vq"]
    # One variant: the schedule's quantised phase reuses the first run's compiled step and evaluation.
    return [Run("smoke_baseline", DEFAULT_VARIANT, 0, dict(SMOKE_MODEL), (), "baseline"),
            Run("smoke_continuous_then_vq", DEFAULT_VARIANT, 1, dict(SMOKE_MODEL), l.schedule,
                "continuous_then_vq")]
  raise ValueError(f"--sweep={sweep!r} is not one of {SWEEPS}")


SWEEPS = ("levers", "mvp3", "smoke")
# Flag defaults per sweep (flags given on the command line win).
SWEEP_DEFAULTS = {"smoke": dict(steps=4, batch_size=4, eval_every=2, print_every=2)}
RUN_DEFAULTS = dict(steps=2000, batch_size=16, eval_every=100, print_every=500)

# ----------------------------------------------------------------------------------------- frames file --


def save_frames_file(path: str, encoded: dict[str, list[bytes]], episode_lengths: Sequence[int],
                     actions: np.ndarray, heldout: Sequence[bool], present: dict[str, Sequence[bool]],
                     meta: dict, episode_info: dict[str, np.ndarray] | None = None) -> int:
  """Writes the export format (one uncompressed .npz; PNG bytes do not compress further). Returns its bytes.

  Args:
    path: the .npz to write.
    encoded: {camera: the encoded frames (PNG / JPEG bytes) of every step, episodes back to back}.
    episode_lengths: int[E] steps per episode.
    actions: float32[R, A] raw per-step actions (R = sum of the lengths), a_t taken at frame o_t.
    heldout: bool[E] the episodes held out (the pipeline's validation episodes).
    present: {camera: bool[E]} whether the episode has the camera (the pipeline's ``image_mask``).
    meta: JSON-able description (source, split rule, image size, ...).
    episode_info: optional per-episode arrays (seed, task family, success) stored as ``episode.<name>``.
  """
  lengths = np.asarray(episode_lengths, np.int32)
  rows = int(lengths.sum())
  if np.asarray(actions).shape[0] != rows:
    raise ValueError(f"actions has {np.asarray(actions).shape[0]} rows; the episodes have {rows} steps")
  arrays = {"format_version": np.asarray(FORMAT_VERSION, np.int32), "meta_json": np.asarray(json.dumps(meta)),
            "episode_lengths": lengths, "actions": np.asarray(actions, np.float32),
            "heldout": np.asarray(heldout, bool)}
  for camera, frames in encoded.items():
    if len(frames) != rows:
      raise ValueError(f"camera {camera!r} has {len(frames)} frames; the episodes have {rows} steps")
    sizes = np.asarray([len(b) for b in frames], np.int64)
    arrays[f"offsets.{camera}"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    arrays[f"encoded.{camera}"] = np.frombuffer(b"".join(frames), np.uint8)
    arrays[f"present.{camera}"] = np.asarray(present[camera], bool)
  for name, values in (episode_info or {}).items():
    arrays[f"episode.{name}"] = np.asarray(values)
  with open(path, "wb") as fh:
    np.savez(fh, **arrays)
  return os.path.getsize(path)


@dataclasses.dataclass
class Frames:
  """A decoded export file.

  Attributes:
    images: {camera: uint8[R, S, S, 3]} RGB frames, episodes back to back (R rows).
    present: {camera: bool[R]} the camera exists in the row's episode.
    actions: float32[R, A] raw per-step actions.
    episode_lengths: int64[E]; heldout: bool[E]; meta: the file's description.
  """

  images: dict[str, np.ndarray]
  present: dict[str, np.ndarray]
  actions: np.ndarray
  episode_lengths: np.ndarray
  heldout: np.ndarray
  meta: dict

  @property
  def episode_starts(self) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(self.episode_lengths)[:-1]]).astype(np.int64)

  @property
  def image_size(self) -> int:
    return int(next(iter(self.images.values())).shape[1])


def decode_image(data: bytes) -> np.ndarray:
  """PNG / JPEG bytes -> uint8[H, W, 3] RGB (OpenCV, else Pillow)."""
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if image is None:
    raise ValueError("an encoded frame does not decode")
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR


def load_frames(path: str, cameras: Sequence[str] | None = None) -> Frames:
  """Reads an export file and decodes the frames of ``cameras`` (default: every stored camera)."""
  with np.load(path, allow_pickle=False) as f:
    if int(f["format_version"]) != FORMAT_VERSION:
      raise ValueError(f"{path}: format version {int(f['format_version'])}, this script reads {FORMAT_VERSION}")
    stored = sorted(k[len("encoded."):] for k in f.files if k.startswith("encoded."))
    cameras = stored if cameras is None else list(cameras)
    missing = [c for c in cameras if c not in stored]
    if missing:
      raise ValueError(f"{path} has no frames of camera(s) {missing} (it has {stored}); export them with "
                       "--cameras")
    lengths = f["episode_lengths"].astype(np.int64)
    episode_of_row = np.repeat(np.arange(lengths.size), lengths)
    images, present = {}, {}
    for camera in cameras:
      blob, offsets = f[f"encoded.{camera}"], f[f"offsets.{camera}"]
      images[camera] = np.stack([decode_image(blob[offsets[i]:offsets[i + 1]].tobytes())
                                 for i in range(offsets.size - 1)])
      present[camera] = f[f"present.{camera}"][episode_of_row]
    return Frames(images=images, present=present, actions=f["actions"].astype(np.float32), episode_lengths=lengths,
                  heldout=f["heldout"].astype(bool), meta=json.loads(str(f["meta_json"])))


def write_synthetic_frames(path: str, episodes: int = 6, steps: int = 9, image_size: int = 64,
                           cameras: Sequence[str] = DEFAULT_CAMERAS, heldout_episodes: int = 2, seed: int = 0) -> int:
  """A small export file of random frames and actions (tests, CPU checks); the last ``heldout_episodes`` are
  held out. Returns its size in bytes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rs = np.random.RandomState(seed)
  rows = episodes * steps
  encoded = {}
  for camera in cameras:
    frames = []
    for _ in range(rows):
      buffer = io.BytesIO()
      Image.fromarray(rs.randint(0, 256, (image_size, image_size, 3), dtype=np.uint8)).save(buffer, format="PNG")
      frames.append(buffer.getvalue())
    encoded[camera] = frames
  actions = rs.uniform(-1, 1, (rows, 7)).astype(np.float32)
  actions[:, 3:5] = 0.0  # constant roll and pitch, as the simulator's
  heldout = np.arange(episodes) >= episodes - heldout_episodes
  meta = {"source": "synthetic", "image_size": image_size, "split": f"last {heldout_episodes} episodes held out"}
  return save_frames_file(path, encoded, [steps] * episodes, actions, heldout,
                          {c: np.ones(episodes, bool) for c in cameras}, meta)


# ------------------------------------------------------------------------------------------------ export --


def exploration_settings(description: str) -> dict:
  """The generation config ``sim.generate`` writes into the dataset description ('Config: {...}; seed=...')."""
  start = description.find("Config: ")
  if start < 0:
    raise ValueError("the dataset description holds no 'Config: {...}' of lamp_jax.sim.generate")
  text = description[start + len("Config: "):]
  return json.JSONDecoder().raw_decode(text)[0]


def export(args: argparse.Namespace) -> None:
  """The ``export`` subcommand (module docstring)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from lamp_jax import experiment  # pylint: disable=g-import-not-at-top
  from lamp_jax.data import rlds  # pylint: disable=g-import-not-at-top

  config = lam_configs.get_config(args.variant)
  if not config.sim_data.enabled:
    raise ValueError(f"configs/lam.py:{args.variant} reads no simulator data (sim_data.enabled is False)")
  version_dir = args.data_dir or experiment.ensure_sim_dataset(config, os.getcwd())
  data_cfg = copy.deepcopy(config.data.pipeline)
  cameras = tuple(c for c in args.cameras.split(",") if c)
  with data_cfg.unlocked():
    data_cfg.cameras = tuple(dict.fromkeys(tuple(data_cfg.cameras) + cameras))
    data_cfg.datasets[0].data_dir = version_dir
  opened = rlds.open_dataset(data_cfg.datasets[0], data_cfg)
  settings = exploration_settings(opened.builder.info.description)
  if settings.get("policy") != "explore":
    raise ValueError(f"{version_dir} is not exploration data (generation config {settings}); "
                     "configs/lam.py:<variant>_explore generates it")
  explore_steps = int(settings["explore_steps"])
  keys = {camera: opened.image_keys.get(camera, "") for camera in cameras}
  absent = [c for c, k in keys.items() if not k]
  if absent:
    raise ValueError(f"dataset {opened.name} maps no observation key to camera(s) {absent}")
  val_fraction = float(data_cfg.val_fraction)
  parts = {"train": rlds.file_instructions(opened, "train", val_fraction),
           "val": rlds.file_instructions(opened, "val", val_fraction)}
  encoded = {c: [] for c in cameras}
  present = {c: [] for c in cameras}
  actions, lengths, heldout = [], [], []
  info = {"seed": [], "task_family": [], "success": []}
  for part, files in parts.items():
    for piece in files:
      records = tf.data.TFRecordDataset(piece.filename).skip(piece.skip)
      if piece.take >= 0:
        records = records.take(piece.take)
      for serialized in records:
        steps, metadata = rlds.decode_episode(opened, serialized)
        length = int(steps["action"].shape[0])
        if length != explore_steps:
          raise ValueError(f"an episode of {version_dir} has {length} steps; exploration episodes have "
                           f"{explore_steps}")
        for camera, key in keys.items():
          encoded[camera].extend(bytes(b) for b in steps["observation"][key].numpy())
          present[camera].append(bool(metadata.get(f"has_{key}", True)))
        actions.append(steps["action"].numpy().astype(np.float32))
        lengths.append(length)
        heldout.append(part == "val")
        info["seed"].append(int(metadata["seed"]))
        info["task_family"].append(metadata["task_family"].numpy().decode())
        info["success"].append(bool(metadata["success"]))
  # The frames must decode to what the pipeline decodes (tf.io.decode_image), in RGB order.
  for camera in cameras:
    for i in range(0, len(encoded[camera]), max(1, len(encoded[camera]) // 32)):
      data = encoded[camera][i]
      if not np.array_equal(decode_image(data), tf.io.decode_image(data, channels=3).numpy()):
        raise ValueError(f"frame {i} of camera {camera!r} decodes differently here and in TensorFlow")
  size = int(config.model.image_size)
  first = decode_image(encoded[cameras[0]][0])
  if first.shape != (size, size, 3):
    raise ValueError(f"frames are {first.shape}; the model reads {size}x{size} (no resize here)")
  meta = {
      "source": {"dataset": opened.name, "version": str(opened.builder.info.version),
                 "generation": settings, "variant": args.variant},
      "cameras": {c: keys[c] for c in cameras}, "image_size": size, "encoding": "png",
      "split": (f"the pipeline's: the last data.pipeline.val_fraction={val_fraction} of split 'train' "
                f"(rlds.file_instructions) held out ({int(sum(heldout))} of {len(heldout)} episodes)"),
      "actions": "raw per-step actions as stored (specs.ACTION layout), a_t taken at o_t",
  }
  out_bytes = save_frames_file(args.out, encoded, lengths, np.concatenate(actions), heldout, present, meta,
                               {k: np.asarray(v) for k, v in info.items()})
  megabytes = out_bytes / 1e6
  per_camera = {c: round(sum(len(b) for b in encoded[c]) / 1e6, 2) for c in cameras}
  print(json.dumps({"out": args.out, "megabytes": round(megabytes, 2), "episodes": len(lengths),
                    "heldout_episodes": int(sum(heldout)), "steps_per_episode": explore_steps,
                    "megabytes_per_camera": per_camera}, indent=1))
  if megabytes > args.max_mb:
    os.remove(args.out)
    raise SystemExit(f"{args.out} would be {megabytes:.1f} MB > --max_mb={args.max_mb}: removed; export fewer "
                     "cameras")


# ------------------------------------------------------------------------------------------------- train --


def pair_starts(lengths: np.ndarray, first_offset: int) -> np.ndarray:
  """Rows t (episodes back to back) whose pair (t, t + k) lies inside the episode: int64[P]."""
  return targets_lib.transition_pairs(lengths, first_offset).first


def pair_batch(data: dict, first: Any, offsets: Sequence[int], views: Sequence[str]) -> dict:
  """The model's batch of the pairs starting at rows ``first`` (jax.numpy; traced inside the train step).

  Args:
    data: 'images' {view: uint8[R, S, S, 3]}, 'present' {view: bool[R]}, 'last_row' int32[R] (the last row of
      the row's episode).
    first: int32[B] rows of o_t.
    offsets: the model's future offsets k_1..k_F.
    views: cameras read.

  Returns:
    {'observation': {view: uint8[B, 1, S, S, 3], 'future': {view: uint8[B, F, S, S, 3]},
    'future_pad_mask': bool[B, F] (t + k_f inside the episode), 'image_mask': {view: bool[B, 1]},
    'timestep_pad_mask': bool[B, 1]}}: the specs.py layout of ``lam.dummy_batch``. Frames stay uint8; the model
    maps them to [-1, 1] itself (x / 127.5 - 1 in ``LatentActionModel._frames``, lamp_jax/models/lam.py), as
    it does for the pipeline's uint8 frames.
  """
  last = data["last_row"][first]
  future_rows = jnp.stack([jnp.minimum(first + k, last) for k in offsets], axis=1)  # [B, F]
  obs = {specs.FUTURE: {}, specs.IMAGE_MASK: {}}
  for view in views:
    obs[view] = data["images"][view][first][:, None]
    obs[specs.FUTURE][view] = data["images"][view][future_rows]
    obs[specs.IMAGE_MASK][view] = data["present"][view][first][:, None]
  obs[specs.FUTURE_PAD_MASK] = jnp.stack([first + k <= last for k in offsets], axis=1)
  obs[specs.TIMESTEP_PAD_MASK] = jnp.ones((first.shape[0], 1), bool)
  return {specs.OBSERVATION: obs}


def _config_key(tree: Any) -> str:

  if isinstance(tree, ml_collections.ConfigDict):
    tree = tree.to_dict()
  return json.dumps(tree, sort_keys=True, default=str)


def _override_strings(overrides: dict) -> list[str]:
  """{field: value} -> the 'field=value' texts of ``--config.`` flags (``lam_latents.apply_overrides``)."""
  return [f"{field}={value}" for field, value in overrides.items()]


def run_config(run: Run, steps: int, batch_size: int):
  """The run config: ``configs/lam.py:<variant>`` with the run's overrides, seed, batch size and steps."""
  config = lam_latents.apply_overrides(lam_configs.get_config(run.variant), _override_strings(run.overrides))
  with config.unlocked():
    config.seed = int(run.seed)
    config.data.global_batch_size = int(batch_size)
    config.data.pipeline.batch_size = int(batch_size)
    config.stages.main.steps = int(steps)
  if tuple(config.stage_order) != ("main",):
    raise ValueError(f"configs/lam.py:{run.variant} has stages {tuple(config.stage_order)}; this script trains "
                     "the single stage 'main'")
  defaults.validate(config)
  return config


def phase_model_configs(config, run: Run, steps: int) -> list[tuple[int, Any]]:
  """[(steps, model config)] of the run's phases (one phase without a schedule)."""
  if not run.schedule:
    return [(steps, defaults.stage_model_config(config, "main"))]
  out, done = [], 0
  for i, (fraction, overrides) in enumerate(run.schedule):
    bad = [f for f in overrides if not f.startswith("model.")]
    if bad:
      raise ValueError(f"run {run.name}: schedule phases change the model only (bypass, loss weights), not {bad}")
    n = steps - done if i == len(run.schedule) - 1 else int(round(fraction * steps))
    phase = lam_latents.apply_overrides(config, _override_strings(overrides))
    out.append((n, defaults.stage_model_config(phase, "main")))
    done += n
  if any(n <= 0 for n, _ in out):
    raise ValueError(f"run {run.name}: --steps={steps} leaves a schedule phase without steps")
  return out


def _trees_equal(a: Any, b: Any) -> bool:
  """Same tree structure, leaf shapes and dtypes."""
  layout = lambda t: jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), t)  # noqa: E731
  return jax.tree.structure(a) == jax.tree.structure(b) and layout(a) == layout(b)


def eval_model_config(model_cfg, bypass: bool):
  """The model config an evaluation path runs: ``vq.bypass`` set, the VQ loss terms and the EMA flag (which
  only change training) normalised so that the runs of one architecture share the compiled evaluation."""
  cfg = copy.deepcopy(model_cfg)
  with cfg.unlocked():
    cfg.vq.bypass = bool(bypass)
    cfg.vq.ema = False
    cfg.loss.weights.codebook = 0.0
    cfg.loss.weights.commitment = 0.0
  return cfg


@dataclasses.dataclass
class RunSetup:
  """What one run trains: its config, phases, model library, optimizer and the batch layout it reads.

  Attributes:
    run: the sweep's entry.
    config: the run config (``run_config``).
    phases: [(steps, model config)] (``phase_model_configs``).
    lib: the model library (``models.registry``).
    tx, schedule: the stage optimizer over all the run's steps and its learning-rate schedule.
    optimizer_key: identifies ``tx`` among the runs (compiled steps are shared by equal keys).
    mesh, rules: the one-device mesh and the config's logical axis rules (the trainer's).
    views, offsets: cameras and future offsets k the model reads (``data_requirements``).
    init_batch: the model's dummy batch of one example, as the trainer initialises with it.
  """

  run: Run
  config: Any
  phases: list
  lib: Any
  tx: Any
  schedule: Any
  optimizer_key: str
  mesh: Any
  rules: Any
  views: tuple[str, ...]
  offsets: tuple[int, ...]
  init_batch: dict

  @property
  def steps(self) -> int:
    return int(self.config.stages.main.steps)

  @property
  def batch_size(self) -> int:
    return int(self.config.data.global_batch_size)

  def init_params_fn(self, cfg):
    """``rng -> boxed parameters`` of model config ``cfg`` (the trainer's ``_init_params_fn``)."""
    return lambda rng: self.lib.init_variables(cfg, rng, self.init_batch)["params"]

  def init_state_fn(self, cfg):
    """``rng -> {collection: tree}`` of the model's state collections, or None without any."""
    if not self.lib.state_collections:
      return None
    return lambda rng: self.lib.init_model_state(cfg, rng, self.init_batch)


class Compiled:
  """Jitted functions shared by the runs (seeds reuse them): a train chunk per (model config, optimizer, batch,
  chunk length), an evaluation and a latent encoder per model config, optimizers per optimizer settings."""

  def __init__(self):
    self.optimizers: dict[str, Any] = {}
    self.chunks: dict[tuple, Any] = {}
    self.evals: dict[str, Any] = {}
    self.latents: dict[str, Any] = {}
    self.compile_seconds = 0.0

  def optimizer(self, scfg, steps: int, decay_mask: Any) -> tuple[str, Any, Any]:
    """(key, tx, schedule) of ``optim.make_optimizer`` for the stage config ``scfg`` over ``steps``."""
    key = _config_key({"optimizer": scfg.optimizer, "frozen": list(scfg.frozen), "steps": steps,
                       "decay_mask": None if decay_mask is None else jax.tree.leaves(decay_mask)})
    if key not in self.optimizers:
      self.optimizers[key] = optim.make_optimizer(scfg.optimizer, tuple(scfg.frozen), steps, decay_mask)
    return (key,) + tuple(self.optimizers[key])

  def chunk(self, setup: RunSetup, cfg, length: int, state: Any, device_data: dict):
    """``(state, data, starts int32[length, B]) -> (state, metrics {name: float32[length]})``: ``length``
    train steps of model config ``cfg`` (``trainer.make_train_step``, scanned; each step gathers its pairs from
    the device-resident frames), compiled ahead of time, the state donated."""
    config, scfg = setup.config, setup.config.stages.main
    key = (_config_key(cfg), setup.optimizer_key, setup.batch_size, length, float(config.ema.decay))
    if key not in self.chunks:
      stage = trainer_lib.Stage(index=0, name="main", start=0, end=setup.steps, model_cfg=cfg,
                                model=setup.lib.build(cfg), tx=setup.tx, schedule=setup.schedule,
                                frozen=tuple(scfg.frozen), grad_accum_steps=int(scfg.optimizer.grad_accum_steps),
                                lib=setup.lib)
      step_fn = trainer_lib.make_train_step(stage, float(config.ema.decay), bool(config.ema.warmup))
      mesh, rules, offsets, views = setup.mesh, setup.rules, setup.offsets, setup.views

      def run_chunk(state, data, starts):
        with sharding_lib.activation_sharding(mesh, rules):  # as Trainer.jit_train_step traces the step
          return jax.lax.scan(lambda s, first: step_fn(s, pair_batch(data, first, offsets, views)), state, starts)

      t0 = time.perf_counter()
      starts = jax.ShapeDtypeStruct((length, setup.batch_size), jnp.int32)
      self.chunks[key] = jax.jit(run_chunk, donate_argnums=(0,)).lower(state, device_data, starts).compile()
      self.compile_seconds += time.perf_counter() - t0
    return self.chunks[key]

  def evaluation(self, lib, cfg):
    """Jitted ``(params, batch) -> compute_loss metrics`` of model config ``cfg``, without the VQ state."""
    key = _config_key(cfg)
    if key not in self.evals:
      model = lib.build(cfg)
      self.evals[key] = jax.jit(lambda params, batch: model.apply(
          {"params": params}, batch, jax.random.key(0), train=False, method="compute_loss")[1])
    return self.evals[key]

  def latent_codes(self, lib, cfg):
    """Jitted ``(params, batch) -> {view: encode_latent(batch, view=view, offset_index=0)}`` ('latent'
    float32[B, L, Dc], 'codes' int32[B, L], 'valid' bool[B]): the model's own encoding, as the probe's."""
    key = _config_key(cfg)
    if key not in self.latents:
      model = lib.build(cfg)

      def latents(params, batch):
        return {view: model.apply({"params": params}, batch, jax.random.key(0), view=view, offset_index=0,
                                  method="encode_latent") for view in cfg.views}

      self.latents[key] = jax.jit(latents)
    return self.latents[key]


def setup_run(run: Run, args: argparse.Namespace, frames: Frames, device_data: dict,
              compiled: Compiled) -> RunSetup:
  """The run's config, phases, model library and optimizer, checked against the frames and the model's batch."""
  steps = int(args.steps)
  config = run_config(run, steps, int(args.batch_size))
  phases = phase_model_configs(config, run, steps)
  lib = defaults.model_library(config)
  first_cfg = phases[0][1]
  requirements = lib.data_requirements(first_cfg)
  views = tuple(requirements.cameras)
  if requirements.window != 1 or tuple(requirements.future_cameras) != views:
    raise ValueError(f"run {run.name}: the model reads a window of {requirements.window} frames / future cameras "
                     f"{requirements.future_cameras}; this script builds window 1 and the future of every view")
  if requirements.image_size != frames.image_size:
    raise ValueError(f"run {run.name}: the model reads {requirements.image_size}^2 frames, the file holds "
                     f"{frames.image_size}^2 (no resize here)")
  missing = [v for v in views if v not in frames.images]
  if missing:
    raise ValueError(f"run {run.name}: the frames file has no camera {missing} (model.views={views})")
  init_batch = host_batch.HostBatchPreparer(config, first_cfg)(
      jax.tree.map(np.asarray, lib.dummy_batch(first_cfg, 1, 0)))
  setup = RunSetup(run=run, config=config, phases=phases, lib=lib, tx=None, schedule=None, optimizer_key="",
                   mesh=sharding_lib.make_mesh(config.mesh, devices=jax.devices()[:1]),
                   rules=sharding_lib.rules_from_config(config.sharding.logical_axis_rules), views=views,
                   offsets=tuple(int(k) for k in requirements.future_offsets), init_batch=init_batch)
  # The stage's optimizer over all the run's steps: every phase continues its state and learning-rate schedule.
  scfg = config.stages.main
  decay_mask = None
  if not scfg.optimizer.decay_vectors:  # as Trainer.stage: the mask needs the boxed parameters' axis names
    decay_mask = optim.weight_decay_mask(jax.eval_shape(setup.init_params_fn(first_cfg), jax.random.key(0)))
  setup.optimizer_key, setup.tx, setup.schedule = compiled.optimizer(scfg, steps, decay_mask)
  # Phases differ in the forward only: their parameter and state trees must be the same.
  if len(phases) > 1:
    trees = [nn.unbox(lib.abstract_variables(cfg)) for _, cfg in phases]
    if not all(_trees_equal(trees[0], t) for t in trees[1:]):
      raise ValueError(f"run {run.name}: the schedule's phases build different parameter / state trees")
  # Our pair batch has the tree, dtypes and per-example shapes of the model's dummy batch.
  layout = lambda tree: jax.tree.map(lambda x: (tuple(x.shape[1:]), np.dtype(x.dtype)), tree)  # noqa: E731
  pairs = jax.eval_shape(lambda d, f: pair_batch(d, f, setup.offsets, views), device_data,
                         jax.ShapeDtypeStruct((1,), jnp.int32))
  if layout(pairs) != layout(init_batch):
    raise ValueError(f"run {run.name}: the pair batch {layout(pairs)} differs from the model's dummy batch "
                     f"{layout(init_batch)}")
  return setup


def evaluate(setup: RunSetup, compiled: Compiled, params: Any, batch: dict, cfg) -> dict:
  """Reconstruction metrics of a fixed batch (``compute_loss`` without the VQ state): the quantised path, and
  the continuous one (the decoder reads z) when ``cfg`` has ``vq.bypass``; the copy baseline; the batch's code
  perplexity and fraction of codes used."""
  paths = {"quantized": False, "continuous": True} if cfg.vq.bypass else {"quantized": False}
  out = {}
  for name, bypass in paths.items():
    path_cfg = eval_model_config(cfg, bypass)
    m = jax.device_get(compiled.evaluation(setup.lib, path_cfg)(params, batch))
    out[f"{name}/reconstruction"] = float(m["loss/reconstruction"])
    out[f"{name}/reconstruction_shuffled"] = float(m["lam/reconstruction_shuffled"])
    if float(path_cfg.loss.weights.cross_view) > 0:
      out[f"{name}/cross_view"] = float(m["loss/cross_view"])
    out["copy_baseline"] = float(m["lam/copy_baseline"])
    if name == "quantized":
      out["perplexity"] = float(m["vq/perplexity"])
      out["codes_used_fraction"] = float(m["vq/codes_used"])
  return out


def device_arrays(frames: Frames) -> dict:
  """The arrays ``pair_batch`` gathers from: 'images', 'present' and 'last_row' int32[R] (each row's episode's
  last row)."""
  last_row = np.repeat(frames.episode_starts + frames.episode_lengths, frames.episode_lengths) - 1
  return {"images": frames.images, "present": frames.present, "last_row": last_row.astype(np.int32)}


def pair_rows(frames: Frames, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(train starts, held-out starts in a fixed random order, a fixed train sample of as many starts): rows t
  whose pair (t, t + k) lies inside an episode."""
  starts = pair_starts(frames.episode_lengths, k)
  episode_of_row = np.repeat(np.arange(frames.episode_lengths.size), frames.episode_lengths)
  heldout = frames.heldout[episode_of_row[starts]]
  train_rows, heldout_rows = starts[~heldout], starts[heldout]
  if heldout_rows.size < 2 or train_rows.size < 2:
    raise ValueError(f"the frames file gives {train_rows.size} train and {heldout_rows.size} held-out pairs at "
                     f"k={k}: need 2 or more of each")
  heldout_rows = heldout_rows[np.random.default_rng(HELDOUT_ORDER_SEED).permutation(heldout_rows.size)]
  fixed_train_rows = np.random.default_rng(TRAIN_BATCH_SEED).choice(
      train_rows, heldout_rows.size, replace=heldout_rows.size > train_rows.size)
  return train_rows, heldout_rows, fixed_train_rows


def train_run(run: Run, frames: Frames, device_data: dict, args: argparse.Namespace, compiled: Compiled,
              sweep: str) -> dict:
  """Trains one run and writes its outputs (module docstring). Returns its JSON record."""
  started = time.perf_counter()
  setup = setup_run(run, args, frames, device_data, compiled)
  config, steps, phases, views = setup.config, setup.steps, setup.phases, setup.views
  # The pairs, the probe's target and the saved latents all use the first offset (the probe's offset_index 0).
  k = setup.offsets[0]
  # Initialised from the last phase's model config: the phases' trees are equal (setup_run) and so are their
  # initial values (bypass and loss weights change no parameter's creation); runs that end alike share the
  # program (the persistent compilation cache finds it).
  state, _ = state_lib.create_train_state(setup.init_params_fn(phases[-1][1]), setup.tx,
                                          jax.random.PRNGKey(int(config.seed)), setup.mesh, setup.rules,
                                          use_ema=float(config.ema.decay) > 0,
                                          init_model_state_fn=setup.init_state_fn(phases[-1][1]))
  train_rows, heldout_rows, fixed_train_rows = pair_rows(frames, k)
  gather = jax.jit(pair_batch, static_argnums=(2, 3))
  heldout_batch = gather(device_data, jnp.asarray(heldout_rows, jnp.int32), setup.offsets, views)
  fixed_train_batch = gather(device_data, jnp.asarray(fixed_train_rows, jnp.int32), setup.offsets, views)

  sampler = np.random.default_rng([int(run.seed), DATA_STREAM])
  curve, step, nonfinite, train_seconds = [], 0, 0, 0.0
  eval_every = int(args.eval_every)
  for phase_index, (phase_steps, cfg) in enumerate(phases):
    phase_end = step + phase_steps
    while step < phase_end:
      length = min(eval_every - step % eval_every, phase_end - step)
      chunk = compiled.chunk(setup, cfg, length, state, device_data)
      starts = jnp.asarray(train_rows[sampler.integers(0, train_rows.size, (length, setup.batch_size))], jnp.int32)
      t0 = time.perf_counter()
      state, metrics = chunk(state, device_data, starts)
      metrics = jax.device_get(metrics)
      train_seconds += time.perf_counter() - t0
      step += length
      finite = np.asarray(metrics.pop("finite"), bool)  # a non-finite step left the state unchanged
      nonfinite += int((~finite).sum())
      if nonfinite:  # as the trainer (NonFiniteError): the schedule and the host's step count would drift apart
        raise FloatingPointError(f"{run.name}: {nonfinite} non-finite step(s) by step {step} (loss or gradient "
                                 "norm not finite); the run is stopped")
      row = {"step": step, "phase": phase_index, "lr": float(setup.schedule(step - 1))}
      for name, values in metrics.items():
        values = np.asarray(values, np.float64)[finite]
        row[f"train/{name}"] = float(values.mean()) if values.size else float("nan")
      row.update({f"fixed_train/{name}": value
                  for name, value in evaluate(setup, compiled, state.params, fixed_train_batch, cfg).items()})
      curve.append(row)
      if step % int(args.print_every) == 0 or step == steps:
        path = "continuous" if cfg.vq.bypass else "quantized"
        print(f"[{run.name}] step {step}/{steps} loss {row['train/loss']:.4f} | fixed train batch ({path}): "
              f"recon {row[f'fixed_train/{path}/reconstruction']:.4f} shuffled "
              f"{row[f'fixed_train/{path}/reconstruction_shuffled']:.4f} copy {row['fixed_train/copy_baseline']:.4f}"
              f" | perplexity {row['train/vq/perplexity']:.2f} restarts {row['train/vq/restarts']:.0f} | "
              f"{1e3 * train_seconds / step:.2f} ms/step", flush=True)

  final_cfg = phases[-1][1]
  heldout = evaluate(setup, compiled, state.params, heldout_batch, final_cfg)
  encoded = jax.device_get(compiled.latent_codes(setup.lib, eval_model_config(final_cfg, False))(
      state.params, heldout_batch))
  arrays, heldout["codes"] = latent_arrays(int(final_cfg.vq.num_codes), encoded)
  heldout["pairs"] = int(heldout_rows.size)
  episode_of_row = np.repeat(np.arange(frames.episode_lengths.size), frames.episode_lengths)
  target = probe_targets(frames, train_rows, heldout_rows, k)
  arrays.update({"rows": heldout_rows.astype(np.int64), "episode": episode_of_row[heldout_rows].astype(np.int64),
                 "t": (heldout_rows - frames.episode_starts[episode_of_row[heldout_rows]]).astype(np.int64),
                 "net_action": target["net_action"], "target": target["target"],
                 "target_names": np.asarray(target["names"])})
  ksg = None
  if args.ksg and PROBE_VIEW in views:
    probe_valid = arrays[f"valid.{PROBE_VIEW}"]
    ksg = ksg_mutual_information(arrays[f"z.{PROBE_VIEW}"][probe_valid], target["target"][probe_valid])
  os.makedirs(args.out, exist_ok=True)
  stem = os.path.join(args.out, run.name)
  np.savez(stem + ".npz", **arrays)
  with open(stem + ".params.msgpack", "wb") as fh:
    fh.write(flax.serialization.to_bytes(jax.device_get(state.params)))
  record = {
      "run": run.name, "sweep": sweep, "lever": run.lever, "variant": run.variant, "seed": run.seed,
      "overrides": run.overrides, "schedule": [[fraction, o] for fraction, o in run.schedule],
      "steps": steps, "batch_size": setup.batch_size, "k": k, "views": list(views),
      "phases": [{"steps": n, "vq_bypass": bool(c.vq.bypass), "loss_weights": c.loss.weights.to_dict()}
                 for n, c in phases],
      "phase_trees_identical": True,  # checked by setup_run (an error otherwise)
      "nonfinite_steps": nonfinite, "model": final_cfg.to_dict(), "optimizer": config.stages.main.optimizer.to_dict(),
      "curve": curve, "heldout": heldout, "ksg": ksg,
      "timing": {"train_s": round(train_seconds, 2), "total_s": round(time.perf_counter() - started, 2),
                 # the train calls only: no compilation, no evaluation
                 "ms_per_step": round(1e3 * train_seconds / max(step, 1), 3), "device": str(jax.devices()[0])},
  }
  with open(stem + ".json", "w") as fh:
    json.dump(record, fh, indent=1, default=_json_default)
  return record


def latent_arrays(num_codes: int, encoded: dict) -> tuple[dict, dict]:
  """Per view, the held-out pairs' latents at the first offset ('z.<view>' float32[N, L, Dc], 'codes.<view>'
  int32[N, L], 'valid.<view>' bool[N]) from ``Compiled.latent_codes``' {view: encode_latent output}, and their
  code statistics (``probe.codes``: perplexity, codes used, distinct code tuples)."""
  arrays, stats = {}, {}
  for view, out in encoded.items():
    view_valid = np.asarray(out["valid"], bool)
    arrays[f"z.{view}"] = np.asarray(out["latent"], np.float32)
    arrays[f"codes.{view}"] = np.asarray(out["codes"], np.int32)
    arrays[f"valid.{view}"] = view_valid
    s = codes_lib.code_statistics(arrays[f"codes.{view}"][view_valid], num_codes)
    stats[view] = {"perplexity": s.perplexity, "codes_used": int(np.sum(s.usage > 0)),
                   "distinct_code_tuples": s.num_distinct_latents}
  return arrays, stats


def _json_default(value):
  if isinstance(value, (np.floating, np.integer, np.bool_)):
    return value.item()
  if isinstance(value, (tuple, np.ndarray)):
    return list(value)
  raise TypeError(f"not JSON-able: {type(value).__name__}")


def probe_targets(frames: Frames, train_rows: np.ndarray, heldout_rows: np.ndarray, k: int) -> dict:
  """The probe's target for the held-out pairs (``probe.targets``; ``lam_latents.latents_from_checkpoint``):
  the net action over a_t .. a_t+k-1 (six deltas summed, last gripper), z-scored with the statistics of all
  train pairs, the dimensions constant on them left out. Returns 'net_action' float64[N, 7], 'target'
  float64[N, D], 'names' (the D dimensions kept)."""
  def net(rows):
    windows = frames.actions[np.asarray(rows)[:, None] + np.arange(k)[None, :]]
    return targets_lib.net_action(windows[..., :targets_lib.ACTION_DIM])

  horizon = targets_lib.HorizonStatistics.of(net(train_rows), k)
  varying = horizon.varying_dims()
  heldout_net = net(heldout_rows)
  return {"net_action": heldout_net, "target": horizon.normalize(heldout_net)[:, varying],
          "names": [lam_latents.ACTION_NAMES[i] for i in varying]}


def ksg_mutual_information(z: np.ndarray, target: np.ndarray) -> dict:
  """KSG I(z; target) in bits with the probe's defaults (``probe.report.default_config``), and its shuffled-pairs
  score."""
  cfg = report.default_config()
  est = mutual_information.estimate_mutual_information(
      z.reshape(z.shape[0], -1), target, "ksg", seeds=tuple(cfg.seeds),
      ksg_config=ksg_lib.KSGConfig(**cfg.ksg.to_dict()), mismatch=bool(cfg.mismatch))
  return {"bits_mean": est.bits_mean, "bits_std": est.bits_std, "mismatch_bits_mean": est.mismatch_bits_mean,
          "bits_per_seed": list(est.bits_per_seed), "pairs": est.num_pairs, "view": PROBE_VIEW,
          "settings": cfg.ksg.to_dict()}


def train(args: argparse.Namespace) -> None:
  """The ``train`` subcommand (module docstring)."""
  trainer_lib.enable_compilation_cache(args.compilation_cache)
  runs = sweep_runs(args.sweep, args.lever)
  if args.runs:
    wanted = [r for r in args.runs.split(",") if r]
    unknown = sorted(set(wanted) - {r.name for r in runs})
    if unknown:
      raise SystemExit(f"--runs: {unknown} are not runs of sweep {args.sweep!r} ({[r.name for r in runs]})")
    runs = [r for r in runs if r.name in wanted]
  cameras = sorted({v for r in runs for v in run_config(r, int(args.steps), int(args.batch_size)).model.views})
  t0 = time.perf_counter()
  frames = load_frames(args.data, cameras)
  decode_seconds = time.perf_counter() - t0
  print(f"[lam_sweep] {args.data}: {frames.episode_lengths.size} episodes ({int(frames.heldout.sum())} held out), "
        f"cameras {cameras}, decoded in {decode_seconds:.1f} s; device {jax.devices()[0]}; "
        f"{len(runs)} runs x {args.steps} steps, batch {args.batch_size}", flush=True)
  device_data = jax.device_put(device_arrays(frames))
  compiled = Compiled()
  records = []
  for run in runs:
    records.append(train_run(run, frames, device_data, args, compiled, args.sweep))
  print(f"\n[lam_sweep] compile time {compiled.compile_seconds:.1f} s (train chunks: {len(compiled.chunks)}), "
        f"total {time.perf_counter() - t0:.1f} s\n")
  print(summary_table(records))


# ------------------------------------------------------------------------------------------------ tables --

def _heldout(name: str):
  return lambda r: (r.get("heldout") or {}).get(name)


def _shuffled_gap(path: str):
  """(shuffled / own - 1) in %: how much worse a pair decodes with another pair's latent (0: latent ignored)."""
  def gap(r):
    own, shuffled = _heldout(f"{path}/reconstruction")(r), _heldout(f"{path}/reconstruction_shuffled")(r)
    return None if own is None or shuffled is None or own <= 0 else 100.0 * (shuffled / own - 1.0)
  return gap


def _ksg(name: str):
  return lambda r: (r.get("ksg") or {}).get(name)


def _codes_used(r):
  codes = (r.get("heldout") or {}).get("codes") or {}
  view = codes.get(PROBE_VIEW) or next(iter(codes.values()), {})
  return view.get("codes_used")


# (header, value of a run record, format); held-out pairs unless said otherwise; 'z': the decoder reads z
# (vq.bypass); '+%': shuffled latents' reconstruction over own latents' (0: the decoder ignores the latent).
COLUMNS = (("recon", _heldout("quantized/reconstruction"), ".4f"),
           ("shuffled +%", _shuffled_gap("quantized"), "+.2f"),
           ("recon z", _heldout("continuous/reconstruction"), ".4f"),
           ("shuffled z +%", _shuffled_gap("continuous"), "+.2f"),
           ("copy", _heldout("copy_baseline"), ".4f"),
           ("perplexity", _heldout("perplexity"), ".2f"),
           ("codes used (view 1)", _codes_used, ".0f"),
           ("KSG bits", _ksg("bits_mean"), ".3f"),
           ("KSG shuffled", _ksg("mismatch_bits_mean"), ".3f"))


def _fmt(value: float | None, spec: str) -> str:
  return "-" if value is None or not math.isfinite(value) else format(value, spec)


def summary_table(records: list[dict]) -> str:
  """One markdown row per run (``COLUMNS``) and its train step time."""
  head = ["run", "steps"] + [name for name, _, _ in COLUMNS] + ["ms/step"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for r in records:
    cells = [r["run"], str(r["steps"])] + [_fmt(value(r), spec) for _, value, spec in COLUMNS]
    lines.append("| " + " | ".join(cells + [_fmt(r["timing"]["ms_per_step"], ".3g")]) + " |")
  return "\n".join(lines)


def mvp_difference_lines(records: list[dict]) -> list[str]:
  """mvp3: per lever, MVP-LAM's KSG bits minus each ablation's, with the Welch interval over seeds."""
  lines = []
  for lever in sorted({r["lever"] for r in records}):
    ksg = {}
    for r in records:
      value = _ksg("bits_mean")(r)
      if r["lever"] == lever and value is not None:
        ksg.setdefault(r["variant"], []).append(value)
    mvp = ksg.get(MVP3_VARIANTS[-1], [])
    for other in MVP3_VARIANTS[:-1]:
      if len(mvp) >= 2 and len(ksg.get(other, [])) >= 2:
        diff, half = welch_interval(mvp, ksg[other])
        lines.append(f"  {lever}: KSG bits {MVP3_VARIANTS[-1]} - {other}: {diff:+.2f} ± {half:.2f}")
  return lines


def seed_table(records: list[dict]) -> str:
  """mvp3: per (lever, variant) the mean ± 95 % t-interval half-width over seeds of every column."""
  groups: dict[tuple[str, str], list[dict]] = {}
  for r in records:
    groups.setdefault((r["lever"], r["variant"]), []).append(r)
  head = ["lever", "variant", "seeds"] + [name for name, _, _ in COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for (lever, variant), rows in sorted(groups.items()):
    cells = [lever, variant, ",".join(str(r["seed"]) for r in sorted(rows, key=lambda r: r["seed"]))]
    for _, value, spec in COLUMNS:
      mean, half = t_interval([value(r) for r in rows])
      cells.append(_fmt(mean, spec) + ("" if not math.isfinite(half) else f" ± {format(half, spec.lstrip('+'))}"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def analyze(args: argparse.Namespace) -> None:
  """The ``analyze`` subcommand: tables of every sweep in ``--out`` (KSG computed where missing)."""
  paths = sorted(glob.glob(os.path.join(args.out, "*.json")))
  if not paths:
    raise SystemExit(f"no run JSON in {args.out}")
  sweeps: dict[str, list[dict]] = {}
  for path in paths:
    with open(path) as fh:
      record = json.load(fh)
    if "run" not in record or "heldout" not in record:
      continue
    if not record.get("ksg") and PROBE_VIEW in record.get("views", ()):
      with np.load(os.path.splitext(path)[0] + ".npz") as arrays:
        valid = arrays[f"valid.{PROBE_VIEW}"]
        record["ksg"] = ksg_mutual_information(arrays[f"z.{PROBE_VIEW}"][valid], arrays["target"][valid])
    sweeps.setdefault(record["sweep"], []).append(record)
  for sweep, records in sorted(sweeps.items()):
    print(f"\n### sweep {sweep} ({len(records)} runs)\n")
    print(summary_table(records))
    if sweep == "mvp3":
      print("\nmean ± 95 % t-interval half-width over seeds\n")
      print(seed_table(records))
      print("\nMVP-LAM minus each ablation (95 % Welch interval over seeds):")
      print("\n".join(mvp_difference_lines(records)))
    print("\nlast logged fixed-train-batch reconstruction, own / shuffled latents (the path the decoder reads):")
    for r in records:
      last = r["curve"][-1]
      path = "continuous" if r["phases"][-1]["vq_bypass"] else "quantized"
      own, shuffled = last.get(f"fixed_train/{path}/reconstruction"), last.get(
          f"fixed_train/{path}/reconstruction_shuffled")
      gap = (shuffled / own - 1.0) * 100 if own else float("nan")
      print(f"  {r['run']}: step {last['step']} {own:.4f} / {shuffled:.4f} ({gap:+.1f} %)")


def best_lever(args: argparse.Namespace) -> None:
  """The ``best_lever`` subcommand: prints the quantised lever of a 'levers' output directory whose decoder reads
  its codes most (largest held-out shuffled-vs-own reconstruction gap on the quantised path); 'continuous' when no
  quantised lever's gap reaches ``--min_gap`` %."""
  gaps = {}
  for path in sorted(glob.glob(os.path.join(args.out, "levers_*.json"))):
    with open(path) as fh:
      record = json.load(fh)
    if record.get("lever") and record["lever"] != "continuous" and record.get("heldout"):
      gap = _shuffled_gap("quantized")(record)
      if gap is not None:
        gaps[record["lever"]] = gap
  best = max(gaps, key=gaps.get) if gaps else None
  print(f"[lam_sweep] held-out shuffled gap (%) per quantised lever: {gaps}", file=sys.stderr)
  print(best if best is not None and gaps[best] >= args.min_gap else "continuous")


# -------------------------------------------------------------------------------------------------- main --


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("export", help="dataset -> frames file (needs TensorFlow)")
  p.add_argument("--out", default="lam_explore_frames.npz", help="the .npz to write")
  p.add_argument("--variant", default=DEFAULT_VARIANT, help="configs/lam.py variant whose sim_data is read")
  p.add_argument("--data_dir", default="", help="tfds version directory (default: the variant's cache entry)")
  p.add_argument("--cameras", default=",".join(DEFAULT_CAMERAS),
                 help="spec cameras to keep (image_tertiary = the top camera adds ~28 MB)")
  p.add_argument("--max_mb", type=float, default=45.0, help="refuse a larger file")
  p = sub.add_parser("train", help="train a sweep on a frames file (no TensorFlow)")
  p.add_argument("--data", required=True, help="the frames file of 'export'")
  p.add_argument("--sweep", required=True, choices=SWEEPS)
  p.add_argument("--lever", default="baseline", choices=sorted(LEVERS), help="overrides of the 'mvp3' runs")
  p.add_argument("--runs", default="", help="comma-separated run names (default: every run of the sweep)")
  p.add_argument("--out", default=os.environ.get("OUT", ""), help="output directory (default: $OUT)")
  for name, value in RUN_DEFAULTS.items():
    p.add_argument(f"--{name}", type=int, default=None, help=f"default {value} (smoke: "
                   f"{SWEEP_DEFAULTS['smoke'][name]})")
  p.add_argument("--ksg", action=argparse.BooleanOptionalAction, default=True,
                 help="KSG MI of the held-out latents (--no-ksg: 'analyze' computes it)")
  p.add_argument("--compilation_cache", default="",
                 help="JAX persistent compilation cache directory (a rerun, or the next sweep on the same "
                      "machine, skips the compiles it shares)")
  p = sub.add_parser("analyze", help="markdown tables of a train output directory")
  p.add_argument("--out", default=os.environ.get("OUT", ""), help="the train output directory")
  p = sub.add_parser("best_lever", help="print the quantised lever whose codes the decoder reads most")
  p.add_argument("--out", default=os.environ.get("OUT", ""), help="the 'levers' train output directory")
  p.add_argument("--min_gap", type=float, default=2.0, help="least held-out shuffled gap (%%) that counts")
  args = parser.parse_args(argv)
  if args.command == "train":
    for name, value in RUN_DEFAULTS.items():
      if getattr(args, name) is None:
        setattr(args, name, SWEEP_DEFAULTS.get(args.sweep, {}).get(name, value))
    if not args.out:
      parser.error("train needs --out (or $OUT)")
  if args.command in ("analyze", "best_lever") and not args.out:
    parser.error(f"{args.command} needs --out (or $OUT)")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  {"export": export, "train": train, "analyze": analyze, "best_lever": best_lever}[args.command](args)


if __name__ == "__main__":
  main()
