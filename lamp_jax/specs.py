"""The batch contract between data, models and training, and the numeric conventions it carries.

Data flows one way: ``lamp_jax.data`` / ``lamp_jax.sim`` produce batches with the keys below,
``lamp_jax.models`` consume them, ``lamp_jax.training`` moves them. Models never import data and data never
imports models; both import this file. Every convention is written down here once.

Axis letters used in shapes across the code base:
  B batch · W observation window (history, the current frame is the last) · H/W_img image height/width
  C channels · Hz action horizon (chunk length; written ``H`` in action shapes) · A action dim (padded)
  S proprio dim · K scene-flow keypoints · T future flow steps · L text tokens
  F future frames (one per offset k of ``DataRequirements.future_offsets``, in that order)

Batch (a nested dict of numpy / jax arrays):

  observation/
    image_primary      uint8[B, W, Himg, Wimg, 3]  third-person reference camera (scene flow lives in it)
    image_wrist        uint8[B, W, Himg, Wimg, 3]  wrist camera (optional key)
    image_secondary    uint8[B, W, Himg, Wimg, 3]  second third-person camera (optional key)
    image_tertiary     uint8[B, W, Himg, Wimg, 3]  third third-person camera (optional key; Bridge image_2,
                                                   the simulator's 'top' camera) — all third-person cameras
                                                   of a batch row show the SAME step (synchronized views)
    image_mask         dict name -> bool[B, W]     False where the camera is missing (image is zeros)
    future/<camera>    uint8[B, F, Himg, Wimg, 3]  (optional, data.future_offsets k_1..k_F and data.future_cameras)
                                                   the frames t + k_f of the current step t, F = len(offsets),
                                                   with exactly the crop and colour jitter of that camera's
                                                   current frame; past the episode end (t + k_f > L - 1) the
                                                   episode's LAST frame, with future_pad_mask False; zeros where
                                                   the camera is missing (image_mask False)
    future_pad_mask    bool[B, F]                   (with future/) True where t + k_f is inside the episode
    proprio            float32[B, W, S]             normalised proprioceptive state
    timestep_pad_mask  bool[B, W]                   False for window steps before the episode start
  task/
    language_instruction  object/bytes[B]           raw text; tokenised on the host by lamp_jax.tokenizer
    tokens             int32[B, L]                  (added by the trainer) token ids, right padded
    token_mask         bool[B, L]                   (added by the trainer) True on real tokens
  action               float32[B, H, A]             normalised action chunk starting at the current step
  action_pad_mask      bool[B, H, A]                False past the episode end (repeated last action) and on
                                                   padded action dimensions; excluded from the loss
  scene_flow           float32[B, K, T, 3]          UVD positions of K tracked points at steps t+1 .. t+T
  scene_flow_query     float32[B, K, 3]             UVD positions of the same points at the query step t
  scene_flow_mask      bool[B, K, T]                True where the tracked point is visible (in view, not
                                                   occluded) at that step
  scene_flow_query_mask bool[B, K]                  True where the query point has valid depth
  has_scene_flow       bool[B]                      False for samples without motion labels (loss masked)
                                                   (the five scene_flow* keys are absent when data.scene_flow is
                                                   False: the model reads no scene flow)
  optical_flow         uint8[B, Himg, Wimg, 3]      (optional, when data.optical_flow is on) flow image of the
                                                   primary camera's dense optical flow from t to t + k
                                                   (lamp_jax.flow_image: hue = direction, saturation =
                                                   magnitude, value 1; zero flow is white)
  has_optical_flow     bool[B]                      (with optical_flow) False where the dataset has none
  frame_codes          int32[B, L_z]                (optional, data.frame_codes set: a model that reads cached
                                                   codes) the codes a frozen encoder (a latent action model)
                                                   gave the example's frame pair (o_t, o_{t+k}), read from the
                                                   dataset's code cache (lamp_jax/data/code_cache.py), computed
                                                   on un-augmented frames
  frame_codes_valid    bool[B]                      (with frame_codes) False where the pair does not count
                                                   (t + k past the episode end, camera absent)
  episode_key          bytes[B]                     (optional, data.frame_ids) '<TFRecord file basename>:<record
                                                   index in the file>' of the example's episode (host only)
  step_index           int32[B]                     (with episode_key) the step t of the example in its episode

What a model reads from this contract is declared once, as a :class:`DataRequirements` (cameras, image size,
window, action horizon / dims, proprio dim, scene-flow (K, T), future-frame offsets and cameras, optical flow,
whether actions are optional); ``lamp_jax.data.config.from_requirements`` builds the data config that produces
it and ``check_requirements`` lists every data field that does not.

UVD convention (owned here, used by the simulator, the data pipeline and the Motion Expert):
  * camera frame: OpenCV — x right, y down, z forward (along the optical axis).
  * u = x_pixel / image_width, v = y_pixel / image_height, both in [0, 1] for points inside the image, with
    pixel ``i`` covering [i, i + 1) so its centre is (i + 0.5) / width. Normalised coordinates survive resizing;
    a crop (x0, y0, w, h) in normalised units maps u -> (u - x0) / w, v -> (v - y0) / h.
  * d = metric z-depth along the optical axis in metres (not the ray length).
  * K query points sit on a sqrt(K) x sqrt(K) grid over the first frame of the window, row-major (v outer,
    u inner), at cell centres: u_j = (j + 0.5) / sqrt(K).

Action convention: 7-D end-effector deltas like Bridge V2 — (dx, dy, dz, droll, dpitch, dyaw, gripper) with
gripper in [0, 1] (1 = open) before normalisation; datasets with other layouts are standardised to this.
"""

from __future__ import annotations

import dataclasses

# Top-level keys.
OBSERVATION = "observation"
TASK = "task"
ACTION = "action"
ACTION_PAD_MASK = "action_pad_mask"
SCENE_FLOW = "scene_flow"
SCENE_FLOW_QUERY = "scene_flow_query"
SCENE_FLOW_MASK = "scene_flow_mask"
SCENE_FLOW_QUERY_MASK = "scene_flow_query_mask"
HAS_SCENE_FLOW = "has_scene_flow"
OPTICAL_FLOW = "optical_flow"
HAS_OPTICAL_FLOW = "has_optical_flow"
FRAME_CODES = "frame_codes"
FRAME_CODES_VALID = "frame_codes_valid"
EPISODE_KEY = "episode_key"
STEP_INDEX = "step_index"

# observation/ keys.
IMAGE_PRIMARY = "image_primary"
IMAGE_WRIST = "image_wrist"
IMAGE_SECONDARY = "image_secondary"
IMAGE_TERTIARY = "image_tertiary"
IMAGE_KEYS = (IMAGE_PRIMARY, IMAGE_WRIST, IMAGE_SECONDARY, IMAGE_TERTIARY)
THIRD_PERSON_IMAGE_KEYS = (IMAGE_PRIMARY, IMAGE_SECONDARY, IMAGE_TERTIARY)
IMAGE_MASK = "image_mask"
FUTURE = "future"
FUTURE_PAD_MASK = "future_pad_mask"
PROPRIO = "proprio"
TIMESTEP_PAD_MASK = "timestep_pad_mask"

# task/ keys.
LANGUAGE_INSTRUCTION = "language_instruction"
TOKENS = "tokens"
TOKEN_MASK = "token_mask"


@dataclasses.dataclass(frozen=True)
class DataRequirements:
  """What a model reads from the batch: ``ModelLibrary.data_requirements(cfg)`` returns one; the data config is
  derived from it (``data.config.from_requirements``) and checked against it before any work starts."""

  cameras: tuple[str, ...]  # observation image keys read (current frame)
  image_size: int  # square images, pixels
  window: int = 1  # observation history W
  action_horizon: int = 0  # H; 0 = no action labels read
  action_dim: int = 0  # A
  proprio_dim: int = 0  # S
  scene_flow: tuple[int, int] | None = None  # (K, T) when the model reads scene flow
  future_offsets: tuple[int, ...] = ()  # k of the observation/future frames read
  future_cameras: tuple[str, ...] = ()
  optical_flow: bool = False
  actions_optional: bool = False  # True: trains on action-free data (latent-action pretraining)
  text_tokens: int = 0  # token budget L of task/tokens (0 = no instruction read)
  vocab_size: int = 0  # rows of the token embedding (the tokenizer's vocabulary must fit; 0 = not checked)


def grid_query_uv(num_points: int):
  """Normalised (u, v) of the sqrt(K) x sqrt(K) query grid, row-major. Returns float32[K, 2]."""
  import numpy as np

  side = int(round(num_points**0.5))
  if side * side != num_points:
    raise ValueError(f"scene-flow keypoint count K={num_points} is not a perfect square")
  centres = (np.arange(side, dtype=np.float32) + 0.5) / side
  vv, uu = np.meshgrid(centres, centres, indexing="ij")
  return np.stack([uu.reshape(-1), vv.reshape(-1)], axis=-1)


# ----------------------------------------------------------------------------------------------------------
# RLDS layout of the built-in simulator datasets (written by lamp_jax.sim.generate, read by lamp_jax.data).
#
# tfds builder name ``lamp_sim_<suite>``, version 1.0.0, split 'train' (and 'val' when generated).
#   steps/
#     observation/
#       image_0   Image uint8[Hi, Wi, 3] (PNG)   primary third-person camera ('front'); scene-flow reference camera
#       image_1   Image uint8[Hi, Wi, 3] (PNG)   second third-person camera ('side'); zeros when not rendered
#       image_2   Image uint8[Hi, Wi, 3] (PNG)   wrist camera
#       image_3   Image uint8[Hi, Wi, 3] (PNG)   (only generated with --cameras=...,top) third third-person
#                                              camera ('top', high above the far side of the table)
#       state     float32[8]  eef position xyz (m, world) · eef roll/pitch/yaw (rad) · finger opening (m) ·
#                             gripper command in [0, 1] (1 = open)
#     action                 float32[7]     (dx, dy, dz, droll, dpitch, dyaw, gripper) — see action convention
#     language_instruction   string
#     scene_flow             float32[K, T, 3]  UVD in image_0's camera at steps t+1 .. t+T; past the episode end
#                                              the last frame is held (the scene is static)
#     scene_flow_query       float32[K, 3]     UVD of the grid query points at step t
#     scene_flow_mask        bool[K, T]        visible (in view and not occluded by the depth test)
#     scene_flow_query_mask  bool[K]           query point has valid depth
#     observation/optical_flow  Image uint8[Hi, Wi, 3] (PNG; only when generated with --optical-flow-steps=k)
#                                              HSV-encoded dense flow of image_0 from t to t + k
#     camera_intrinsics_<k>  float32[3, 3]  (only with --camera-params-per-step or --randomize-cameras) image_k's
#     camera_extrinsics_<k>  float32[4, 4]  intrinsics (pixels) / world_from_camera (OpenCV axes) at this step
#     is_first, is_last, is_terminal  bool;  reward, discount  float32
#   episode_metadata/
#     file_path  string ('lamp_sim/<suite>/<task_family>/<seed>')   task_family  string   seed  int64
#     success  bool   has_image_<k> (k = 0 .. 2, and 3 with 'top'), has_language  bool
#     camera_intrinsics_<k>  float32[3, 3]  (pixels at Hi x Wi) at step 0
#     camera_extrinsics_<k>  float32[4, 4]  world_from_camera, OpenCV camera axes, at step 0 (the third-person
#                                           cameras are fixed within an episode: nominal poses, or with
#                                           --randomize-cameras poses drawn from the episode seed)
SIM_DATASET_PREFIX = "lamp_sim_"
SIM_STATE_DIM = 8
ACTION_DIM = 7
