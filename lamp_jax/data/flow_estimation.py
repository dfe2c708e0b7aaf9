"""Estimated optical flow for RLDS datasets without exact flow, encoded as flow images (``lamp_jax.flow_image``).

The simulator renders exact flow (``lamp_jax.sim.optical_flow``); real datasets need an estimate. The paper
uses RAFT between o_t and o_{t+k}, with k spanning the action chunk; here the estimators are OpenCV's (CPU,
no weights to download), selected by name:

  'dis'        Dense Inverse Search (Kroeger et al. 2016), preset MEDIUM. The default: fast and accurate to a
               fraction of a pixel on textured images.
  'farneback'  Farnebaeck polynomial expansion (pyramid 0.5 x 4 levels, 15 px window, Gaussian weighting).

Both return flow in pixels with the convention ``frame_a[y, x] ~ frame_b[y + dy, x + dx]`` (where the pixel
of frame a is found in frame b), the same as the simulator's exact flow.

Episodes: the flow image of step t is the flow from o_t to o_{min(t + k, N - 1)}: steps within k of the end are
clamped to the last frame, as the simulator export does (so the last step's image is white: no motion). Choose
``k = data.action_horizon`` (H) so that the motion spans the action chunk a_t .. a_{t+H-1}. An episode of a
single frame has no second frame at all: a :class:`~lamp_jax.data.errors.DataError` of kind
:data:`SINGLE_FRAME`, raised, or counted and skipped with ``skip_bad`` (like every other bad episode).

In the pipeline (``data.optical_flow_estimator``): for datasets without stored flow images,
:func:`encoded_episode_flow_images` runs :class:`EpisodeFlowImages` per episode inside the trajectory map
(``tf.numpy_function`` over the decoded primary-camera frames at their stored resolution, k =
``data.action_horizon``) and PNG-encodes the result, which then takes the place of stored images (frame shuffle,
decode, resize / crop like image_primary). Single-frame episodes are found when the episode is validated (a
counted skip with ``data.skip_bad``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from lamp_jax import flow_image
from lamp_jax.data import errors

SINGLE_FRAME = errors.SINGLE_FRAME  # skip kind: an episode with one frame has no o_{t+k}


def _gray(frame: np.ndarray, name: str) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top

  frame = np.asarray(frame)
  if frame.dtype != np.uint8:
    raise ValueError(f"{name} must be uint8[H, W, 3] or uint8[H, W], got dtype {frame.dtype}")
  if frame.ndim == 3 and frame.shape[-1] == 3:
    return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
  if frame.ndim == 2:
    return np.ascontiguousarray(frame)
  raise ValueError(f"{name} must be uint8[H, W, 3] or uint8[H, W], got shape {frame.shape}")


def _dis(gray_a: np.ndarray, gray_b: np.ndarray) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top

  dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
  return dis.calc(gray_a, gray_b, None)


def _farneback(gray_a: np.ndarray, gray_b: np.ndarray) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top

  return cv2.calcOpticalFlowFarneback(gray_a, gray_b, None, pyr_scale=0.5, levels=4, winsize=15, iterations=5,
                                      poly_n=5, poly_sigma=1.1, flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN)


# Estimator name -> fn(gray uint8[H, W], gray uint8[H, W]) -> float32[H, W, 2].
ESTIMATORS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"dis": _dis, "farneback": _farneback}
DEFAULT_ESTIMATOR = "dis"


def _estimator(method: str):
  if method not in ESTIMATORS:
    raise ValueError(f"unknown optical-flow estimator {method!r}; known: {sorted(ESTIMATORS)}")
  return ESTIMATORS[method]


def estimate_flow(frame_a: np.ndarray, frame_b: np.ndarray, method: str = DEFAULT_ESTIMATOR) -> np.ndarray:
  """Dense flow from ``frame_a`` to ``frame_b``.

  Args:
    frame_a, frame_b: uint8[H, W, 3] RGB (or uint8[H, W] grey) frames of the same size.
    method: a key of :data:`ESTIMATORS`.
  Returns:
    float32[H, W, 2] displacement (dx, dy) in pixels of every pixel of ``frame_a``.
  """
  fn = _estimator(method)
  gray_a, gray_b = _gray(frame_a, "frame_a"), _gray(frame_b, "frame_b")
  if gray_a.shape != gray_b.shape:
    raise ValueError(f"frame_a {gray_a.shape} and frame_b {gray_b.shape} differ in size")
  return np.asarray(fn(gray_a, gray_b), np.float32)


def episode_flow(frames: np.ndarray, k: int, method: str = DEFAULT_ESTIMATOR) -> np.ndarray:
  """float32[N, H, W, 2]: flow from frame t to frame min(t + k, N - 1) for every t of uint8[N, H, W, 3] frames.

  Raises ValueError for k < 1 or fewer than two frames (:class:`EpisodeFlowImages` turns the latter into a
  counted skip).
  """
  _estimator(method)
  if k < 1:
    raise ValueError(f"flow steps k must be >= 1 (k = data.action_horizon spans the action chunk), got {k}")
  frames = np.asarray(frames)
  n = frames.shape[0] if frames.ndim >= 1 else 0
  if n < 2:
    raise ValueError(f"an episode of {n} frame(s) has no frame t + k to estimate flow to")
  gray = [_gray(f, f"frames[{t}]") for t, f in enumerate(frames)]
  fn = ESTIMATORS[method]
  flows = [np.asarray(fn(gray[t], gray[min(t + k, n - 1)]), np.float32) if t < n - 1
           else np.zeros(gray[t].shape + (2,), np.float32) for t in range(n)]
  return np.stack(flows)


@dataclasses.dataclass
class EpisodeFlowImages:
  """Per-episode flow images for datasets without exact flow; single-frame episodes raise or are counted.

  Attributes:
    k: flow steps (o_t -> o_{t+k}); use ``data.action_horizon`` so the motion spans the action chunk.
    max_magnitude: flow-image normaliser in pixels (``flow_image.default_max_magnitude(width)`` is the paper's
      64 px at 224 px width scaled to the width); one dataset-wide constant.
    method: a key of :data:`ESTIMATORS`.
    skip_bad: count and skip (return None) single-frame episodes instead of raising ``DataError``.
    counter: the ``errors.SkipCounter`` skips are recorded in (``counter.total(SINGLE_FRAME)``).
  """

  k: int
  max_magnitude: float
  method: str = DEFAULT_ESTIMATOR
  skip_bad: bool = False
  counter: errors.SkipCounter = dataclasses.field(default_factory=errors.SkipCounter)

  def __post_init__(self):
    _estimator(self.method)
    if self.k < 1:
      raise ValueError(f"EpisodeFlowImages.k must be >= 1 (k = data.action_horizon), got {self.k}")
    if not self.max_magnitude > 0:
      raise ValueError(f"EpisodeFlowImages.max_magnitude must be positive pixels, got {self.max_magnitude}")

  def __call__(self, frames: np.ndarray, *, dataset: str = "", episode: str = "",
               key: str = "image_primary") -> np.ndarray | None:
    """uint8[N, H, W, 3] frames of one episode -> uint8[N, H, W, 3] flow images, or None (a counted skip)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise errors.DataError(f"expected frames uint8[N, H, W, 3] to estimate optical flow from, got "
                             f"{frames.dtype}{list(frames.shape)}", dataset=dataset, episode=episode, key=key,
                             kind=errors.BAD_SHAPE)
    if frames.shape[0] < 2:
      errors.handle(errors.DataError(
          f"an episode of {frames.shape[0]} frame(s) has no frame t + k to estimate optical flow to",
          dataset=dataset, episode=episode, key=key, kind=SINGLE_FRAME), self.skip_bad, self.counter)
      return None
    return flow_image.flow_to_rgb(episode_flow(frames, self.k, self.method), self.max_magnitude)


def encoded_episode_flow_images(encoded_frames, *, k: int, method: str, max_magnitude: float, dataset: str = "",
                                key: str = "image_primary"):
  """TF graph: string[L] encoded frames of one episode -> string[L] PNG flow images (:class:`EpisodeFlowImages`
  on the host; ``max_magnitude`` 0 = ``flow_image.default_max_magnitude`` of the stored width). An episode of one
  frame raises the ``DataError`` of kind :data:`SINGLE_FRAME` (the reader's validation skips it first when
  ``data.skip_bad``)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the estimator itself is numpy / OpenCV)

  frames = tf.map_fn(lambda e: tf.io.decode_image(e, channels=3, expand_animations=False), encoded_frames,
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))

  def run(frames_np):
    scale = float(max_magnitude) or flow_image.default_max_magnitude(frames_np.shape[2])
    images = EpisodeFlowImages(k=int(k), max_magnitude=scale, method=method)(frames_np, dataset=dataset, key=key)
    return images

  images = tf.numpy_function(run, [frames], tf.uint8, stateful=False)
  images.set_shape([None, None, None, 3])
  return tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.TensorSpec([], tf.string))
