"""Train-time image augmentation on the host with OpenCV: random resized crop + colour jitter of one camera.

Called once per example from the frame map (``frame_transforms.decode_and_augment`` via ``tf.numpy_function``)
with the example's decoded frames of one camera — its W window frames and F future frames — and parameters
sampled in the graph from the example's stateless seed, so every frame of the camera gets the SAME crop and
colour change (a latent action model compares them) and the stream stays deterministic. OpenCV's kernels are
vectorised and release the GIL, about 4x cheaper per frame than TensorFlow's crop_and_resize + adjust_saturation
+ adjust_hue (``python -m lamp_jax.data.inspect --profile`` shows the stages).

Semantics (``frame_transforms.crop_and_resize`` and ``frame_transforms.color_jitter`` are the TF reference that
tests compare with):
  crop     normalised box (x0, y0, bw, bh): output pixel centre j samples source coordinate
           (x0 + (j + 0.5) / w * bw) * W0 - 0.5, bilinear, edge pixels replicated (the specs UV convention, so the
           scene-flow UV transform u -> (u - x0) / bw is exact). ``cv2.warpAffine`` is fixed point: sample positions
           to 1/32 pixel, values rounded to uint8 before the jitter.
  jitter   on values in [0, 1], clipped to [0, 1] after each step, in Octo's order:
             brightness  x + delta
             contrast    (x - mean) * factor + mean, mean per frame and channel (after brightness)
             saturation  HSV saturation * factor, at most 1
             hue         HSV hue + delta (in turns), wrapped
           then rounded to uint8 (half to even, like ``tf.round``). Brightness and contrast are one lookup table
           per frame and channel (the uint8 input has 256 levels); saturation and hue one HSV round trip.
"""

from __future__ import annotations

import cv2
import numpy as np

cv2.setNumThreads(1)  # tf.data runs one call per example on its own threads: no nested thread pools

_LEVELS = np.arange(256, dtype=np.float32) / np.float32(255.0)
_WARP_FLAGS = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP


def crop_matrix(box, source_hw, out_hw) -> np.ndarray:
  """2x3 matrix mapping output pixel (x, y) to source pixel coordinates for the normalised box (x0, y0, bw, bh)."""
  x0, y0, bw, bh = (float(v) for v in box)
  sx = bw * source_hw[1] / out_hw[1]
  sy = bh * source_hw[0] / out_hw[0]
  return np.array([[sx, 0.0, x0 * source_hw[1] + 0.5 * sx - 0.5],
                   [0.0, sy, y0 * source_hw[0] + 0.5 * sy - 0.5]], np.float64)


def crop(image: np.ndarray, box, out_hw) -> np.ndarray:
  """uint8[h0, w0, C] -> uint8[h, w, C]: the normalised box resampled (module docstring)."""
  matrix = crop_matrix(box, image.shape[:2], out_hw)
  out = cv2.warpAffine(np.ascontiguousarray(image), matrix, (int(out_hw[1]), int(out_hw[0])), flags=_WARP_FLAGS,
                       borderMode=cv2.BORDER_REPLICATE)
  return out.reshape(int(out_hw[0]), int(out_hw[1]), -1)


def jitter(image: np.ndarray, brightness: float, contrast: float, saturation: float, hue: float) -> np.ndarray:
  """uint8[h, w, 3] -> uint8[h, w, 3] colour jitter with the given factors (module docstring)."""
  bright = np.clip(_LEVELS + np.float32(brightness), 0.0, 1.0)
  if contrast != 1.0:
    counts = np.stack([cv2.calcHist([image], [c], None, [256], [0, 256]).reshape(256) for c in range(3)], axis=-1)
    mean = (counts * bright[:, None]).sum(0) / np.float32(image.shape[0] * image.shape[1])
    table = np.clip((bright[:, None] - mean) * np.float32(contrast) + mean, 0.0, 1.0)
  else:
    table = np.repeat(bright[:, None], 3, axis=1)
  values = cv2.LUT(image, np.ascontiguousarray(table, np.float32).reshape(256, 1, 3))
  if saturation != 1.0 or hue != 0.0:
    hsv = cv2.cvtColor(values, cv2.COLOR_RGB2HSV)  # H in degrees [0, 360), S and V in [0, 1]
    if saturation != 1.0:
      hsv = cv2.min(cv2.multiply(hsv, (1.0, float(saturation), 1.0, 1.0)), (1e30, 1.0, 1e30, 1e30))
    if hue != 0.0:  # + 360: OpenCV wraps hues >= 360 (not negative ones)
      hsv = cv2.add(hsv, (360.0 * float(hue) + 360.0, 0.0, 0.0, 0.0))
    values = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
  return cv2.convertScaleAbs(values, alpha=255.0)


def augment_frames(images: np.ndarray, box: np.ndarray, color: np.ndarray, out_hw, *, crop_on: bool,
                   jitter_on: bool, present: np.ndarray | None = None) -> np.ndarray:
  """One camera of one example: uint8[N, h0, w0, 3] -> uint8[N, h, w, 3], the same crop / jitter on every frame.

  Args:
    images: the decoded frames (window frames, then future frames) at their stored size.
    box: float32[4] crop box (x0, y0, bw, bh); with ``crop_on=False`` the full image (a plain resize).
    color: float32[4] (brightness delta, contrast factor, saturation factor, hue delta) used when ``jitter_on``.
    present: bool[N]; frames not present (missing camera, padding) are zeros in the output. None: all present.
  """
  box = box if crop_on else (0.0, 0.0, 1.0, 1.0)
  out = np.empty((images.shape[0], int(out_hw[0]), int(out_hw[1]), 3), np.uint8)
  for n in range(images.shape[0]):
    if present is not None and not present[n]:
      out[n] = 0
      continue
    frame = images[n]
    if frame.shape[:2] != tuple(out_hw) or crop_on:
      frame = crop(frame, box, out_hw)
    out[n] = jitter(frame, *(float(c) for c in color)) if jitter_on else frame
  return out
