"""Episode videos (MP4 or GIF) with optional predicted scene flow drawn on the primary camera frames."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
  return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def draw_scene_flow(image: np.ndarray, flow: np.ndarray, mask: np.ndarray | None = None,
                    query: np.ndarray | None = None, scale: int = 4) -> np.ndarray:
  """Draw UVD tracks on an image.

  Args:
    image: uint8[H, W, 3].
    flow: float[K, T, 3] UVD (normalised u, v) at the future steps.
    mask: bool[K, T] visible steps (None: all).
    query: float[K, 3] UVD at the current step (the start of each track; None: start at step 1).
    scale: integer upscaling of the image before drawing (thin tracks on tiny images).
  Returns:
    uint8[scale * H, scale * W, 3]; tracks go from white (now) to red (step T).
  """
  out = _upscale(np.asarray(image, np.uint8), scale).copy()
  height, width = out.shape[:2]
  flow = np.asarray(flow, np.float64)
  k, t = flow.shape[:2]
  mask = np.ones((k, t), bool) if mask is None else np.asarray(mask, bool)
  tracks = flow[..., :2]
  if query is not None:
    tracks = np.concatenate([np.asarray(query, np.float64)[:, None, :2], tracks], axis=1)
    mask = np.concatenate([mask[:, :1], mask], axis=1)
  n = tracks.shape[1]
  colours = np.stack([np.full(n, 255.0), np.linspace(255, 0, n), np.linspace(255, 0, n)], axis=1).astype(np.uint8)
  samples = np.linspace(0.0, 1.0, 2 * scale + 2)
  for i in range(n - 1):
    ok = mask[:, i] & mask[:, i + 1]
    a, b = tracks[ok, i], tracks[ok, i + 1]
    pts = a[:, None, :] + samples[None, :, None] * (b - a)[:, None, :]
    x = np.floor(pts[..., 0] * width).astype(int).reshape(-1)
    y = np.floor(pts[..., 1] * height).astype(int).reshape(-1)
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    out[y[inside], x[inside]] = colours[i + 1]
  return out


def write_video(frames: Sequence[np.ndarray], path: str, fps: int = 10) -> str:
  """Writes uint8[H, W, 3] frames to ``path`` (.mp4 via ffmpeg, or .gif). Returns the path."""
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top

  if not frames:
    raise ValueError(f"no frames to write to {path}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  frames = [np.asarray(f, np.uint8) for f in frames]
  if path.endswith(".gif"):
    imageio.mimsave(path, frames, duration=1.0 / fps, loop=0)
  else:
    imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
  return path
