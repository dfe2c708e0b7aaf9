"""Frame transforms (TF graph, one training example at a time): decode, resize, augment, scene-flow crop.

Axis letters: W observation window · h, w output image size · K scene-flow points · T future flow steps.

Resizing follows the specs UVD convention (pixel i covers [i, i + 1) in normalised units i / size): at eval time
``tf.image.resize`` (bilinear, half-pixel centres; the inference preprocessor does the same). The train-time
random resized crop samples a box (x0, y0, bw, bh) in normalised units; output pixel centre j samples the source
at y0 + (j + 0.5) / h * bh — the same convention, so a full-image box equals the eval resize. The resampling and
the colour jitter run on the host in OpenCV (``lamp_jax.data.augment``, called through ``tf.numpy_function``);
:func:`crop_and_resize` and :func:`color_jitter` here are their TensorFlow reference (tests compare the two).
Scene-flow UV of the primary camera move with its crop: u -> (u - x0) / bw, v -> (v - y0) / bh; points that
leave [0, 1) are masked. The crop and the colour factors are sampled once per example and camera (stateless,
from the example's seed: :func:`sample_crop`, :func:`sample_color`) and applied identically to all W window
frames and the camera's future frames (``data.future_offsets``). Missing cameras stay zero images.

Optical-flow images (``data.optical_flow``; one per example, the current step) are decoded here too, resized
like the cameras and, at train time, resampled with exactly image_primary's crop box so the flow stays aligned
with the primary camera and its scene flow (no crop when image_primary is not cropped). No colour jitter: the
colours encode the flow. The HSV values are resampled as they are: the encoded flow is NOT rescaled by the crop's
zoom (1 / bw, 1 / bh) or by the resize — it stays in units of the stored image (value = |flow| / max_magnitude
in stored pixels, hue = direction in the stored image's aspect); an exact rescale is not possible from the
encoded image because the magnitude is clipped at max_magnitude. Bilinear resampling blends hues at motion
boundaries, as any resize of an HSV flow image does.
"""

from __future__ import annotations

import math

import tensorflow as tf

from lamp_jax import specs
from lamp_jax.data import augment


def decode_image(encoded: tf.Tensor, size, present=True) -> tf.Tensor:
  """string scalar (JPEG/PNG) -> uint8[h0, w0, 3] at its stored size; zeros of ``size`` when the string is empty
  or the camera is not ``present`` (missing cameras are not decoded at all)."""
  def decode():
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)

  use = tf.logical_and(tf.strings.length(encoded) > 0, tf.cast(present, tf.bool))
  return tf.cond(use, decode, lambda: tf.zeros(list(size) + [3], tf.uint8))


def to_uint8(images: tf.Tensor) -> tf.Tensor:
  """float images in [0, 255] -> uint8 with rounding (the same rounding at train, eval and inference)."""
  return tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.uint8)


def resize(images: tf.Tensor, size) -> tf.Tensor:
  """uint8[..., h0, w0, 3] -> uint8[..., h, w, 3], bilinear with half-pixel centres (eval / inference resize)."""
  images = tf.convert_to_tensor(images)
  if images.shape[-3] == size[0] and images.shape[-2] == size[1]:
    return images
  return to_uint8(tf.image.resize(tf.cast(images, tf.float32), size, method="bilinear", antialias=False))


def sample_crop(seed: tf.Tensor, scale, ratio) -> tf.Tensor:
  """float32[4] crop box (x0, y0, bw, bh) in normalised units: area fraction ~ U(scale), aspect ~ logU(ratio)."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  area = tf.random.stateless_uniform([], seeds[0], scale[0], scale[1])
  log_ratio = tf.random.stateless_uniform([], seeds[1], math.log(ratio[0]), math.log(ratio[1]))
  aspect = tf.exp(log_ratio)
  bw = tf.minimum(tf.sqrt(area * aspect), 1.0)
  bh = tf.minimum(tf.sqrt(area / aspect), 1.0)
  x0 = tf.random.stateless_uniform([], seeds[2]) * (1.0 - bw)
  y0 = tf.random.stateless_uniform([], seeds[3]) * (1.0 - bh)
  return tf.stack([x0, y0, bw, bh])


def crop_and_resize(images: tf.Tensor, box: tf.Tensor, size) -> tf.Tensor:
  """uint8[W, h0, w0, 3] -> float32[W, h, w, 3]: the normalised box resampled with half-pixel centres.

  Output pixel centre j samples source pixel-centre coordinate p(j) = (start + (j + 0.5) / out * extent) * src
  - 0.5. The source is padded by one replicated pixel on every side so that samples beyond the outer pixel
  centres (when upsampling) take the edge value, exactly like ``tf.image.resize``.
  """
  shape = tf.shape(images)
  padded = tf.pad(tf.cast(images, tf.float32), [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
  src_h, src_w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
  x0, y0, bw, bh = box[0], box[1], box[2], box[3]

  def corners(start, extent, src, out):
    # crop_and_resize samples c1 * (n - 1) + j * (c2 - c1) * (n - 1) / (out - 1) on the padded axis (n = src + 2).
    first = (start + 0.5 / out * extent) * src - 0.5 + 1.0
    last = (start + (out - 0.5) / out * extent) * src - 0.5 + 1.0
    return first / (src + 1.0), last / (src + 1.0)

  y1, y2 = corners(y0, bh, src_h, float(size[0]))
  x1, x2 = corners(x0, bw, src_w, float(size[1]))
  boxes = tf.tile(tf.stack([y1, x1, y2, x2])[None], [shape[0], 1])
  return tf.image.crop_and_resize(padded, boxes, tf.range(shape[0]), size, method="bilinear")


def color_jitter(images: tf.Tensor, seed: tf.Tensor, data_cfg) -> tf.Tensor:
  """float32[W, h, w, 3] in [0, 255] -> jittered with the factors of :func:`sample_color` (TF reference of
  ``augment.jitter``: Octo's order, values clipped to [0, 1] after each step; same factors for every frame)."""
  brightness, contrast, saturation, hue = tf.unstack(sample_color(seed, data_cfg))
  x = tf.clip_by_value(images / 255.0 + brightness, 0.0, 1.0)
  x = tf.clip_by_value(tf.image.adjust_contrast(x, contrast), 0.0, 1.0)
  x = tf.clip_by_value(tf.image.adjust_saturation(x, saturation), 0.0, 1.0)
  x = tf.clip_by_value(tf.image.adjust_hue(x, hue), 0.0, 1.0)
  return x * 255.0


def jitter_enabled(data_cfg) -> bool:
  return bool(data_cfg.brightness > 0 or tuple(data_cfg.contrast) != (1.0, 1.0) or
              tuple(data_cfg.saturation) != (1.0, 1.0) or data_cfg.hue > 0)


def sample_color(seed: tf.Tensor, data_cfg) -> tf.Tensor:
  """float32[4] (brightness delta ~ U(+-brightness), contrast ~ U(contrast), saturation ~ U(saturation), hue delta
  ~ U(+-hue)); identity values for disabled ones. The draws of tf.image.stateless_random_* for the same seeds."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  uniform = lambda s, low, high: tf.random.stateless_uniform([], s, low, high)  # noqa: E731
  brightness = uniform(seeds[0], -data_cfg.brightness, data_cfg.brightness) if data_cfg.brightness > 0 else 0.0
  contrast = (uniform(seeds[1], data_cfg.contrast[0], data_cfg.contrast[1])
              if tuple(data_cfg.contrast) != (1.0, 1.0) else 1.0)
  saturation = (uniform(seeds[2], data_cfg.saturation[0], data_cfg.saturation[1])
                if tuple(data_cfg.saturation) != (1.0, 1.0) else 1.0)
  hue = uniform(seeds[3], -data_cfg.hue, data_cfg.hue) if data_cfg.hue > 0 else 0.0
  return tf.cast(tf.stack([brightness, contrast, saturation, hue]), tf.float32)


def crop_scene_flow(frame: dict, box: tf.Tensor) -> dict:
  """Move scene-flow UV into the crop (x0, y0, bw, bh); mask points that leave it. UV -> (UV - origin) / size."""
  origin = tf.stack([box[0], box[1]])
  extent = tf.stack([box[2], box[3]])

  def transform(uvd):
    uv = (uvd[..., :2] - origin) / extent
    inside = tf.reduce_all(tf.logical_and(uv >= 0.0, uv < 1.0), axis=-1)
    return tf.concat([uv, uvd[..., 2:]], axis=-1), inside

  frame = dict(frame)
  flow, inside = transform(frame[specs.SCENE_FLOW])
  frame[specs.SCENE_FLOW] = flow
  frame[specs.SCENE_FLOW_MASK] = tf.logical_and(frame[specs.SCENE_FLOW_MASK], inside)
  query, inside_q = transform(frame[specs.SCENE_FLOW_QUERY])
  frame[specs.SCENE_FLOW_QUERY] = query
  frame[specs.SCENE_FLOW_QUERY_MASK] = tf.logical_and(frame[specs.SCENE_FLOW_QUERY_MASK], inside_q)
  return frame


def _host_augment(images: tf.Tensor, box: tf.Tensor, color: tf.Tensor, size, *, crop_on: bool,
                  jitter_on: bool, present: tf.Tensor | None = None) -> tf.Tensor:
  """uint8[N, h0, w0, 3] -> uint8[N, h, w, 3] through ``augment.augment_frames`` (OpenCV, on this thread); frames
  not ``present`` (bool[N]) come out as zeros, zeroed on the host rather than by a graph-side select that broadcasts
  the mask to every pixel (that select showed in ``perf``; removing it measured within the bench's noise)."""
  def run(images_np, box_np, color_np, present_np):
    return augment.augment_frames(images_np, box_np, color_np, size, crop_on=crop_on, jitter_on=jitter_on,
                                  present=present_np)

  if present is None:
    present = tf.ones([tf.shape(images)[0]], tf.bool)
  out = tf.numpy_function(run, [images, box, color, present], tf.uint8, stateful=False)
  out.set_shape([images.shape[0], size[0], size[1], 3])
  return out


def _decode_stack(encoded: tf.Tensor, present: tf.Tensor, size, count: int) -> tf.Tensor:
  """string[N] -> uint8[N, h0, w0, 3] at the stored size (zeros of ``size`` where not present)."""
  if count == 1:  # no copy into a stack
    return decode_image(encoded[0], size, present[0])[None]
  return tf.stack([decode_image(encoded[n], size, present[n]) for n in range(count)])


def decode_and_augment(frame: dict, seed: tf.Tensor, data_cfg, train: bool) -> dict:
  """Decode every camera's W encoded frames (and F future frames) to uint8[., h, w, 3]; augment when
  ``train and data_cfg.augment``: one crop box and one set of colour factors per example and camera, applied on
  the host by ``augment.augment_frames`` to the window and the future frames alike."""
  size = tuple(int(s) for s in data_cfg.image_size)
  observation = dict(frame["observation"])
  future = dict(observation.get(specs.FUTURE, {}))
  augment_on = train and bool(data_cfg.augment)
  jitter_on = augment_on and jitter_enabled(data_cfg)
  window = int(data_cfg.window_size)
  camera_seeds = tf.random.experimental.stateless_split(seed, len(data_cfg.cameras) * 2)
  primary_box = None  # the crop box of image_primary when it is cropped (shared with the optical flow)
  frame = dict(frame)
  for i, camera in enumerate(data_cfg.cameras):
    encoded = observation[camera]  # string[W]
    present = observation[specs.IMAGE_MASK][camera]  # bool[W]
    count = window
    if camera in future:  # the future frames ride along: same decode, same crop, same jitter
      num_future = int(future[camera].shape[0])
      encoded = tf.concat([encoded, future[camera]], axis=0)
      present = tf.concat([present, tf.fill([num_future], present[-1])], axis=0)
      count += num_future
    crop_on = augment_on and camera in tuple(data_cfg.augment_cameras)
    if augment_on:
      box = sample_crop(camera_seeds[2 * i], data_cfg.crop_scale, data_cfg.crop_ratio) if crop_on else \
          tf.constant([0.0, 0.0, 1.0, 1.0])
      color = sample_color(camera_seeds[2 * i + 1], data_cfg)
      images = tf.cond(
          tf.reduce_any(present),
          lambda: _host_augment(_decode_stack(encoded, present, size, count), box, color, size, crop_on=crop_on,
                                jitter_on=jitter_on, present=present),
          lambda: tf.zeros([count, size[0], size[1], 3], tf.uint8))
      if crop_on and camera == specs.IMAGE_PRIMARY:
        if specs.SCENE_FLOW in frame:
          frame = crop_scene_flow(frame, box)
        primary_box = box
    else:  # frames not present decode to zeros, and stay zeros through the resize
      images = resize(_decode_stack(encoded, present, size, count), size)
    images.set_shape([count, size[0], size[1], 3])
    observation[camera] = images[:window]
    if camera in future:
      future[camera] = images[window:]
  if future:
    observation[specs.FUTURE] = future
  frame["observation"] = observation
  if specs.OPTICAL_FLOW in frame:
    frame[specs.OPTICAL_FLOW] = decode_optical_flow(frame[specs.OPTICAL_FLOW], frame[specs.HAS_OPTICAL_FLOW], size,
                                                    primary_box)
  return frame


def decode_optical_flow(encoded: tf.Tensor, present: tf.Tensor, size, box=None) -> tf.Tensor:
  """string scalar (encoded HSV flow image) -> uint8[h, w, 3]: resized like the cameras, or resampled with the
  crop ``box`` (image_primary's, by the same host resampling, so both stay aligned). Zeros where not ``present``.
  Never colour-jittered."""
  image = decode_image(encoded, size, present)[None]
  if box is None:
    out = resize(image, size)
  else:
    out = _host_augment(image, box, tf.constant([0.0, 1.0, 1.0, 0.0]), size, crop_on=True, jitter_on=False)
  out = tf.where(tf.cast(present, tf.bool), out, tf.zeros_like(out))[0]
  out.set_shape([size[0], size[1], 3])
  return out
