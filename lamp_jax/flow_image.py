"""Optical flow <-> flow image: the one HSV colour encoding used by the simulator export and the data pipeline.

Encoding (joint motion-image diffusion, appendix A): for a flow field ``(dx, dy)`` in pixels,

  hue        = atan2(dy, dx) / 2 pi  (mod 1)        direction; image axes (x right, y down), so +x is red (hue 0)
                                                     and +y (down) is yellow-green (hue 1/4)
  saturation = min(|flow| / max_magnitude, 1)      magnitude, normalised by a dataset-wide maximum
  value      = 1
  HSV -> RGB, uint8, the same resolution as the camera image. Zero flow is white; full-magnitude flow is a
  fully saturated colour; flow longer than ``max_magnitude`` saturates (its direction is kept).

``max_magnitude`` is a dataset-wide constant in pixels. The paper uses 64 px at 224 x 224 (the largest flow of
its datasets); :func:`default_max_magnitude` scales that to another image width (the same fraction of the image),
e.g. 18.3 px for the simulator's 64 x 64 frames.

:func:`rgb_to_flow` inverts the encoding up to uint8 quantisation (for visualising decoded flow images): the
magnitude is exact to within ``max_magnitude / 255`` (one saturation level) and, away from white, the direction to
within about one hue level; pixels that saturated (|flow| > max_magnitude) decode to length ``max_magnitude``.

This module depends on numpy only: ``lamp_jax.sim`` and ``lamp_jax.data`` both import it and never each other.
"""

from __future__ import annotations

import numpy as np

# The paper's normaliser: 64 px, the dataset-wide maximum flow magnitude at 224 x 224.
PAPER_MAX_MAGNITUDE = 64.0
PAPER_IMAGE_WIDTH = 224


def default_max_magnitude(image_width: int) -> float:
  """The paper's 64 px at 224 px width, scaled to ``image_width`` (pixels)."""
  if image_width <= 0:
    raise ValueError(f"image_width must be positive, got {image_width}")
  return PAPER_MAX_MAGNITUDE * float(image_width) / PAPER_IMAGE_WIDTH


def _check_max_magnitude(max_magnitude: float) -> float:
  max_magnitude = float(max_magnitude)
  if not max_magnitude > 0 or not np.isfinite(max_magnitude):
    raise ValueError(f"max_magnitude must be a positive number of pixels, got {max_magnitude}")
  return max_magnitude


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
  """float[...] hue in [0, 1), saturation and value in [0, 1] -> float64[..., 3] RGB in [0, 1]."""
  hue, saturation, value = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (hue, saturation, value)))
  h6 = (hue % 1.0) * 6.0
  sector = np.floor(h6).astype(np.int64) % 6
  frac = h6 - np.floor(h6)
  p = value * (1.0 - saturation)
  q = value * (1.0 - saturation * frac)
  t = value * (1.0 - saturation * (1.0 - frac))
  # (r, g, b) per sector of the colour wheel.
  r = np.choose(sector, [value, q, p, p, t, value])
  g = np.choose(sector, [t, value, value, q, p, p])
  b = np.choose(sector, [p, p, t, value, value, q])
  return np.stack([r, g, b], axis=-1)


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """float[..., 3] RGB in [0, 1] -> (hue in [0, 1), saturation, value); hue = 0 where saturation = 0."""
  rgb = np.asarray(rgb, np.float64)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = rgb.max(axis=-1)
  chroma = value - rgb.min(axis=-1)
  saturation = np.where(value > 0, chroma / np.where(value > 0, value, 1.0), 0.0)
  safe = np.where(chroma > 0, chroma, 1.0)
  hue6 = np.where(value == r, ((g - b) / safe) % 6.0,
                  np.where(value == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  hue = np.where(chroma > 0, hue6 / 6.0, 0.0) % 1.0
  return hue, saturation, value


def flow_to_rgb(flow: np.ndarray, max_magnitude: float) -> np.ndarray:
  """Flow image of a flow field.

  Args:
    flow: float[..., H, W, 2] pixel displacement (dx, dy).
    max_magnitude: dataset-wide normaliser in pixels (:func:`default_max_magnitude`).
  Returns:
    uint8[..., H, W, 3] RGB; zero flow is white (255, 255, 255).
  """
  max_magnitude = _check_max_magnitude(max_magnitude)
  flow = np.asarray(flow)
  if flow.ndim < 1 or flow.shape[-1] != 2:
    raise ValueError(f"flow must be float[..., H, W, 2] (dx, dy), got shape {flow.shape}")
  if not np.all(np.isfinite(flow)):
    raise ValueError("flow contains non-finite values")
  dx, dy = flow[..., 0].astype(np.float64), flow[..., 1].astype(np.float64)
  hue = (np.arctan2(dy, dx) / (2.0 * np.pi)) % 1.0
  saturation = np.clip(np.hypot(dx, dy) / max_magnitude, 0.0, 1.0)
  rgb = hsv_to_rgb(hue, saturation, np.ones_like(saturation))
  return np.round(rgb * 255.0).astype(np.uint8)


def rgb_to_flow(rgb: np.ndarray, max_magnitude: float) -> np.ndarray:
  """Inverse of :func:`flow_to_rgb` up to quantisation.

  Args:
    rgb: uint8[..., H, W, 3] flow image, or float[..., H, W, 3] in [0, 1] (e.g. a VAE decoder's output mapped
      from [-1, 1]; clipped to [0, 1]). Only hue and saturation are read: the value channel of a decoded image
      that is not exactly 1 does not bias the magnitude (saturation = 1 - min / max).
    max_magnitude: the normaliser the image was encoded with.
  Returns:
    float32[..., H, W, 2] flow (dx, dy) in pixels.
  """
  max_magnitude = _check_max_magnitude(max_magnitude)
  rgb = np.asarray(rgb)
  if rgb.ndim < 1 or rgb.shape[-1] != 3:
    raise ValueError(f"flow image must be [..., H, W, 3] RGB, got shape {rgb.shape}")
  if np.issubdtype(rgb.dtype, np.integer):
    rgb01 = rgb.astype(np.float64) / 255.0
  else:
    rgb01 = np.clip(rgb.astype(np.float64), 0.0, 1.0)
  hue, saturation, _ = rgb_to_hsv(rgb01)
  magnitude = saturation * max_magnitude
  angle = hue * 2.0 * np.pi
  return np.stack([magnitude * np.cos(angle), magnitude * np.sin(angle)], axis=-1).astype(np.float32)
