"""Raw observation -> model inputs without JAX or TensorFlow, numerically identical to the JAX policy's path
(``lamp_jax.data.inference.ObservationPreprocessor`` / ``CheckpointPolicy``):

* ``resize``: ``tf.image.resize(method='bilinear', antialias=False)`` (half-pixel centres) of the uint8 image in
  float32 with TensorFlow's exact operation order, then rounded half-to-even and clipped to uint8
  (``frame_transforms.resize`` + ``to_uint8``); images already of the target size pass unchanged.
* proprio / actions: ``lamp_jax.data.normalization`` itself (numpy only), with the exported statistics.

Imports numpy and JAX-free lamp_jax modules only.
"""

from __future__ import annotations

import numpy as np


def _resize_weights(out_size: int, in_size: int):
  """TensorFlow's half-pixel bilinear source indices (lower, upper) and weight of ``upper``, in float32."""
  scale = np.float32(in_size) / np.float32(out_size)
  pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  floor = np.floor(pos)
  lower = np.maximum(floor, 0).astype(np.int64)
  upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.int64)
  return lower, upper, (pos - floor).astype(np.float32)


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8[..., h0, w0, 3] -> uint8[..., h, w, 3] exactly as the data pipeline's eval-time resize."""
  h0, w0 = images.shape[-3:-1]
  h, w = int(size[0]), int(size[1])
  if (h0, w0) == (h, w):
    return images
  x = images.astype(np.float32)
  y_lo, y_hi, y_lerp = _resize_weights(h, h0)
  x_lo, x_hi, x_lerp = _resize_weights(w, w0)
  top, bottom = x[..., y_lo, :, :], x[..., y_hi, :, :]
  x_lerp = x_lerp[:, None]
  top = top[..., x_lo, :] + (top[..., x_hi, :] - top[..., x_lo, :]) * x_lerp
  bottom = bottom[..., x_lo, :] + (bottom[..., x_hi, :] - bottom[..., x_lo, :]) * x_lerp
  out = top + (bottom - top) * y_lerp[:, None, None]
  return np.clip(np.round(out), 0.0, 255.0).astype(np.uint8)
