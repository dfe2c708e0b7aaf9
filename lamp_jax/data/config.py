"""The data config (``config.data`` in every training config): one documented ConfigDict.

Example::

    from lamp_jax.data import config as data_config
    cfg = data_config.default_data_config()
    cfg.datasets = [data_config.dataset_entry("bridge_dataset", data_dir="gs://.../bridge_dataset/1.0.0")]
"""

from __future__ import annotations

import ml_collections


def dataset_entry(name: str, *, data_dir: str = "", standardize: str = "", weight: float = 1.0,
                  **overrides) -> ml_collections.ConfigDict:
  """One dataset of a mixture.

  Args:
    name: tfds builder name (e.g. ``bridge_dataset``, ``bridge``, ``lamp_sim_pick``).
    data_dir: the builder's version directory (``.../<name>/<version>``, opened with
      ``tfds.builder_from_directory``) or a tfds ``data_dir`` that contains ``<name>/``.
    standardize: registry key of the standardisation (``lamp_jax.data.datasets``); empty = look up ``name``.
    weight: sampling weight in the mixture (normalised; multiplied by the size when ``balance_weights``).
    overrides: per-dataset fields below (``image_keys``, ``standardize_kwargs``, ``stats_path``, ...).
  """
  entry = ml_collections.ConfigDict({
      "name": name,
      "data_dir": data_dir,
      "standardize": standardize,
      "weight": float(weight),
      # Camera mapping spec key -> dataset observation key ('' = this dataset has no such camera: zeros + mask).
      # Empty dict = the registry's default for this dataset.
      "image_keys": ml_collections.ConfigDict({}),
      # Keyword arguments of the standardisation function (e.g. relabel_actions for Bridge).
      "standardize_kwargs": ml_collections.ConfigDict({}),
      # Per-dimension normalisation masks: True = normalise. Empty = registry default (gripper left raw).
      "action_normalization_mask": (),
      "proprio_normalization_mask": (),
      # Explicit statistics JSON to use instead of the cache (checked against the dataset hash).
      "stats_path": "",
      # Explicit per-frame code cache (.npz, lamp_jax/data/code_cache.py) to use instead of the one under
      # codes_cache_dir; checked against the dataset, the episode selection and the encoder (a mismatch raises).
      "codes_path": "",
      # Split names; '' for val_split = the dataset's own 'val' split if present, else the last val_fraction.
      "train_split": "train",
      "val_split": "",
  })
  entry.update(overrides)
  return entry


def default_data_config() -> ml_collections.ConfigDict:
  """All fields of the data pipeline, with defaults that follow Octo's released Bridge recipe."""
  cfg = ml_collections.ConfigDict()
  # --- which data -------------------------------------------------------------------------------------
  cfg.datasets = []  # list of dataset_entry(...) ConfigDicts; a mixture when longer than one
  cfg.balance_weights = False  # multiply each weight by the dataset's number of transitions
  cfg.val_fraction = 0.05  # used when a dataset has no 'val' split: train = first 95 %, val = last 5 %
  # --- batch shape (see lamp_jax/specs.py) -------------------------------------------------------------
  cfg.batch_size = 32  # GLOBAL batch; each process gets batch_size // process_count
  cfg.window_size = 1  # W: observation history, the current frame is the last
  cfg.action_horizon = 10  # H: future action chunk starting at the current step
  cfg.max_action_dim = 7  # A: actions are zero-padded to this many dimensions (pad mask False there)
  cfg.max_proprio_dim = 8  # S: proprio is zero-padded to this many dimensions
  cfg.image_size = (224, 224)  # (height, width) of every camera image in the batch
  cfg.cameras = ("image_primary", "image_wrist")  # spec image keys emitted (subset of specs.IMAGE_KEYS)
  # Future frames observation/future/<camera> uint8[B, F, h, w, 3] + observation/future_pad_mask bool[B, F]: the
  # frame t + k of every offset k (>= 1; k = action_horizon is the frame right after the action chunk), for the
  # cameras listed (a subset of ``cameras``), with exactly the crop and colour jitter of the camera's current frame.
  # Past the episode end the image is the episode's last frame and the pad mask False. Empty: nothing decoded.
  cfg.future_offsets = ()
  cfg.future_cameras = ()
  # Stored images whose aspect ratio differs from image_size (distorted by the resize) or that have 1 / 4 channels
  # (converted to RGB): 'log' = accept, one warning per dataset, key and stored geometry; 'error' = DataError.
  cfg.image_mismatch = "log"
  # --- motion labels ------------------------------------------------------------------------------------
  # True: the batch has the scene_flow* keys (zeros and has_scene_flow=False for datasets without labels);
  # False: no scene-flow keys (a model that reads no scene flow; nothing carried per frame).
  cfg.scene_flow = True
  cfg.scene_flow_num_points = 400  # K (must match the dataset's scene_flow labels when it has them)
  cfg.scene_flow_horizon = 32  # T
  # Optional optical-flow images (batch keys optical_flow uint8[B, Himg, Wimg, 3] + has_optical_flow bool[B]):
  # the HSV-encoded flow image of the current step t (same time index as scene_flow), decoded after the frame
  # shuffle, resized like the cameras and, at train time, given exactly image_primary's random resized crop (no
  # colour jitter: the colours encode the flow). Datasets whose layout has no optical-flow field, or that were
  # generated without it (lamp_sim without --optical-flow-steps), give zero images and has_optical_flow=False.
  # False: the keys are absent and nothing is decoded.
  cfg.optical_flow = False
  # Datasets without exact flow images (their layout has no optical-flow field, or they were generated without it):
  # 'off' = zero images and has_optical_flow=False (above); 'dis' | 'farneback' = estimate them
  # (lamp_jax.data.flow_estimation, OpenCV) per episode on the decoded primary-camera frames at their stored
  # resolution, before the frame shuffle: the flow from o_t to o_{min(t + k, L - 1)} with k = action_horizon (the
  # motion spans the action chunk), encoded as PNG flow images and then read like stored ones. Needs the
  # dataset's image_primary. Single-frame episodes have no o_{t+k}: a DataError naming the episode (kind
  # 'single_frame'), or a counted skip with skip_bad (found when validate_episodes checks the episode).
  cfg.optical_flow_estimator = "off"
  # Flow-image normaliser in pixels of the stored frames (saturation = |flow| / this): 0 = the paper's 64 px at
  # 224 px width scaled to the stored width (lamp_jax.flow_image.default_max_magnitude). Used by the estimator and
  # by the simulator's generation of exact flow images (experiment.generation_flags).
  cfg.optical_flow_max_magnitude = 0.0
  # --- action labels ------------------------------------------------------------------------------------------
  # True: the data are treated as action-free (latent-action pretraining): the batches carry no 'action' /
  # 'action_pad_mask', and the statistics pass reads no action value (the action statistics are those of zeros;
  # the cache keeps them apart). A model that reads actions fails check_requirements naming this field.
  cfg.hide_actions = False
  # --- normalisation --------------------------------------------------------------------------------------
  cfg.action_normalization = "bounds"  # 'normal' (z-score) | 'bounds' (p01-p99 -> [-1,1]) | 'bounds_minmax' | 'none'
  cfg.proprio_normalization = "normal"
  cfg.stats_cache_dir = ""  # '' = $LAMP_JAX_CACHE or ~/.cache/lamp_jax/dataset_statistics
  # --- cached per-frame codes (lamp_jax/data/code_cache.py) -------------------------------------------------
  # JSON fingerprint of the frozen encoder whose cached codes every training frame carries (batch keys frame_codes
  # int32[B, L_z], frame_codes_valid bool[B]); '' = none. Set by the trainer for a stage whose model reads cached
  # codes (ModelLibrary.frame_codes), after it built or verified the cache of every dataset of the stage.
  cfg.frame_codes = ""
  cfg.codes_cache_dir = ""  # '' = $LAMP_JAX_CACHE/frame_codes or ~/.cache/lamp_jax/frame_codes
  # True: batch keys episode_key bytes[B] ('<file basename>:<record index>', host only) and step_index int32[B].
  cfg.frame_ids = False
  # --- trajectory transforms -------------------------------------------------------------------------------
  cfg.subsample_length = 0  # >0: keep a random (seeded) subset of this many steps of longer episodes (Octo)
  cfg.empty_instruction = "keep"  # 'keep' | 'skip' episodes whose instruction is empty (counted)
  cfg.max_abs_action = 0.0  # >0: drop episodes with any raw |action| above this (counted)
  # --- frame transforms --------------------------------------------------------------------------------------
  cfg.augment = True  # train-time augmentation; never at validation / inference
  cfg.augment_cameras = ("image_primary", "image_secondary")  # wrist cameras are usually not cropped
  cfg.crop_scale = (0.8, 1.0)  # random resized crop: area fraction
  cfg.crop_ratio = (0.9, 1.1)  # random resized crop: aspect ratio (width / height)
  cfg.brightness = 0.1  # max additive delta (images in [0, 1])
  cfg.contrast = (0.9, 1.1)
  cfg.saturation = (0.9, 1.1)
  cfg.hue = 0.05
  # --- throughput -----------------------------------------------------------------------------------------
  cfg.shuffle_buffer_size = 10_000  # frames (encoded images: cheap), before decode
  cfg.file_cycle_length = 4  # files read round-robin per dataset
  cfg.num_parallel_reads = 8  # threads for episode parsing, split across datasets by weight
  cfg.num_parallel_calls = 8  # threads for trajectory transforms (split by weight) and frame decode
  cfg.prefetch = 2  # batches
  cfg.ram_budget_gb = 0  # >0: tf.data autotune RAM budget
  # Check every episode on the host the first time it is read: keys, shapes, NaN / inf in every float key, image
  # headers (truncated / corrupt images), length; errors name the file, episode and key (or are counted skips).
  cfg.validate_episodes = True
  # --- robustness / reproducibility ---------------------------------------------------------------------------
  # True: bad episodes / files are counted (once per dataset; per pass in SkipCounter.occurrences) and logged
  # instead of raising DataError.
  cfg.skip_bad = False
  cfg.deterministic = False  # fixed seed + deterministic tf.data ordering (slower: no out-of-order maps)
  # Resuming in deterministic mode: 'skip' = produce and drop start_batch batches (the exact same stream);
  # 'reseed' = fold start_batch into the seed (instant, reproducible, but a different stream than uninterrupted).
  cfg.resume_mode = "skip"
  return cfg


def from_requirements(requirements, batch_size: int) -> ml_collections.ConfigDict:
  """``default_data_config`` with every field a model fixes, from its ``specs.DataRequirements``.

  Cameras, square image size, window, action horizon / dims (kept at their defaults where the model needs no
  actions: 0), proprio dim, scene flow (``scene_flow`` on with K / T, or off), future frames and optical flow.
  """
  d = default_data_config()
  d.batch_size = int(batch_size)
  d.window_size = int(requirements.window)
  if requirements.action_horizon:
    d.action_horizon = int(requirements.action_horizon)
  if requirements.action_dim:
    d.max_action_dim = int(requirements.action_dim)
  if requirements.proprio_dim:
    d.max_proprio_dim = int(requirements.proprio_dim)
  d.image_size = (int(requirements.image_size), int(requirements.image_size))
  d.cameras = tuple(requirements.cameras)
  d.scene_flow = requirements.scene_flow is not None
  if requirements.scene_flow is not None:
    d.scene_flow_num_points, d.scene_flow_horizon = (int(v) for v in requirements.scene_flow)
  d.future_offsets = tuple(int(k) for k in requirements.future_offsets)
  d.future_cameras = tuple(requirements.future_cameras)
  d.optical_flow = bool(requirements.optical_flow)
  return d


def check_requirements(data_cfg, requirements) -> list[str]:
  """What ``data_cfg`` does not give a model with these ``specs.DataRequirements``: one line per mismatch, naming
  the data field, its value and the model's (empty list: the batches fit the model)."""
  problems = []

  def mismatch(field, value, wanted, what):
    problems.append(f"data.{field}={value!r} but the model {what} {wanted!r}")

  missing = [c for c in requirements.cameras if c not in tuple(data_cfg.cameras)]
  if missing:
    mismatch("cameras", tuple(data_cfg.cameras), tuple(requirements.cameras), f"reads cameras {missing} of")
  size = (int(requirements.image_size),) * 2
  # A model that reads no camera (e.g. a state-only policy) takes whatever image size the data has.
  if requirements.cameras and tuple(int(s) for s in data_cfg.image_size) != size:
    mismatch("image_size", tuple(data_cfg.image_size), size, "reads square images of size")
  if int(data_cfg.window_size) != int(requirements.window):
    mismatch("window_size", int(data_cfg.window_size), int(requirements.window), "reads an observation window of")
  if requirements.action_horizon and data_cfg.get("hide_actions", False):
    problems.append(f"data.hide_actions=True (action-free data) but the model reads action chunks of "
                    f"{int(requirements.action_horizon)} steps (a stage that reads actions needs labelled data: "
                    "set its model's loss.weights.action to 0 or data.hide_actions to False)")
  if requirements.action_horizon and int(data_cfg.action_horizon) != int(requirements.action_horizon):
    mismatch("action_horizon", int(data_cfg.action_horizon), int(requirements.action_horizon),
             "predicts action chunks of")
  if requirements.action_dim and int(data_cfg.max_action_dim) != int(requirements.action_dim):
    mismatch("max_action_dim", int(data_cfg.max_action_dim), int(requirements.action_dim), "has action_dim")
  if requirements.proprio_dim and int(data_cfg.max_proprio_dim) != int(requirements.proprio_dim):
    mismatch("max_proprio_dim", int(data_cfg.max_proprio_dim), int(requirements.proprio_dim), "has proprio_dim")
  if requirements.scene_flow is not None:
    if not data_cfg.get("scene_flow", True):
      mismatch("scene_flow", False, True, "reads scene flow:")
    got = (int(data_cfg.scene_flow_num_points), int(data_cfg.scene_flow_horizon))
    if got != tuple(int(v) for v in requirements.scene_flow):
      mismatch("scene_flow_num_points, scene_flow_horizon", got, tuple(requirements.scene_flow),
               "reads scene flow (K, T) =")
  offsets = tuple(int(k) for k in data_cfg.get("future_offsets", ()))
  # A model that reads no future frames accepts data that has them: the trainer drops them from its stage's data
  # (e.g. a latent-pretraining stage reading cached codes, on a run's data config written for on-the-fly codes).
  if requirements.future_offsets and offsets != tuple(int(k) for k in requirements.future_offsets):
    mismatch("future_offsets", offsets, tuple(requirements.future_offsets), "reads future frames at offsets")
  missing = [c for c in requirements.future_cameras if c not in tuple(data_cfg.get("future_cameras", ()))]
  if missing:
    mismatch("future_cameras", tuple(data_cfg.get("future_cameras", ())), tuple(requirements.future_cameras),
             f"reads future frames of {missing} among")
  if requirements.optical_flow and not data_cfg.get("optical_flow", False):
    mismatch("optical_flow", False, True, "reads optical flow:")
  return problems
