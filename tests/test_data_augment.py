"""Train-time augmentation on the host (lamp_jax.data.augment, OpenCV) against its TensorFlow reference
(frame_transforms.crop_and_resize / color_jitter): crop convention, colour parity, scene-flow alignment."""

import numpy as np
import pytest
import tensorflow as tf

from lamp_jax.data import augment, frame_transforms, synthetic


@pytest.mark.parametrize("factors", [(0.07, 1.08, 0.93, 0.04), (-0.09, 0.91, 1.1, -0.045), (0.1, 1.1, 1.1, 0.05)])
def test_colour_jitter_matches_the_tf_reference(factors):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (23, 29, 3), np.uint8)
  brightness, contrast, saturation, hue = factors
  out = augment.jitter(image, brightness, contrast, saturation, hue)
  x = tf.clip_by_value(tf.constant(image, tf.float32) / 255.0 + brightness, 0.0, 1.0)
  x = tf.clip_by_value(tf.image.adjust_contrast(x, contrast), 0.0, 1.0)
  x = tf.clip_by_value(tf.image.adjust_saturation(x, saturation), 0.0, 1.0)
  x = tf.clip_by_value(tf.image.adjust_hue(x, hue), 0.0, 1.0)
  reference = frame_transforms.to_uint8(x * 255.0).numpy()
  diff = np.abs(out.astype(int) - reference)
  assert diff.max() <= 1 and (diff > 0).mean() < 0.002  # float rounding at .5 boundaries only


def test_crop_matches_the_tf_reference_and_the_eval_resize():
  image = synthetic._image((31, 37), 4, 2)  # smooth gradients and a bright square, like the datasets
  for box, out in (((0.0, 0.0, 1.0, 1.0), (31, 37)), ((0.13, 0.07, 0.81, 0.88), (19, 23)),
                   ((0.05, 0.1, 0.6, 0.5), (41, 43))):  # identity, downsampling, upsampling past the box edge
    got = augment.crop(image, box, out)
    reference = frame_transforms.crop_and_resize(tf.constant(image[None]), tf.constant(box, tf.float32), out)
    diff = np.abs(got.astype(np.float32) - reference.numpy()[0])
    assert diff.max() <= 6.0 and diff.mean() < 0.6, (box, diff.max(), diff.mean())  # positions to 1/32 pixel
  np.testing.assert_array_equal(augment.crop(image, (0.0, 0.0, 1.0, 1.0), (31, 37)), image)


def test_bright_pixel_lands_where_the_cropped_scene_flow_says():
  image = np.zeros((16, 20, 3), np.uint8)
  image[4, 15] = 255  # pixel centre (u, v) = (15.5 / 20, 4.5 / 16)
  box = np.array([0.5, 0.25, 0.5, 0.5], np.float32)
  crop = augment.augment_frames(image[None], box, np.array([0, 1, 1, 0], np.float32), (8, 10), crop_on=True,
                                jitter_on=False)[0]
  py, px = np.unravel_index(np.argmax(crop[..., 0]), (8, 10))
  uvd = np.array([[[15.5 / 20, 4.5 / 16, 2.0]]], np.float32)
  frame = {"scene_flow": tf.constant(uvd), "scene_flow_mask": tf.constant([[True]]),
           "scene_flow_query": tf.constant(uvd[:, 0]), "scene_flow_query_mask": tf.constant([True])}
  u, v = frame_transforms.crop_scene_flow(frame, tf.constant(box))["scene_flow"].numpy()[0, 0, :2]
  assert (int(u * 10), int(v * 8)) == (px, py)


def test_every_frame_of_a_camera_gets_the_same_augmentation():
  rng = np.random.default_rng(1)
  frame = rng.integers(0, 256, (24, 24, 3), np.uint8)
  frames = np.stack([frame, frame, frame])
  out = augment.augment_frames(frames, np.array([0.1, 0.05, 0.8, 0.85], np.float32),
                               np.array([0.05, 1.07, 0.92, 0.03], np.float32), (17, 19), crop_on=True, jitter_on=True)
  assert out.shape == (3, 17, 19, 3)
  np.testing.assert_array_equal(out[0], out[1])
  np.testing.assert_array_equal(out[0], out[2])


def test_frames_not_present_are_zeros_after_the_jitter():
  """A missing or padded frame (image mask False) is a zero image even when the jitter would brighten it."""
  rng = np.random.default_rng(2)
  frames = rng.integers(0, 256, (3, 24, 24, 3), np.uint8)
  box, color = np.array([0.1, 0.05, 0.8, 0.85], np.float32), np.array([0.08, 1.0, 1.0, 0.0], np.float32)
  out = augment.augment_frames(frames, box, color, (17, 19), crop_on=True, jitter_on=True,
                               present=np.array([True, False, True]))
  everything = augment.augment_frames(frames, box, color, (17, 19), crop_on=True, jitter_on=True)
  assert not out[1].any() and everything[1].any()
  np.testing.assert_array_equal(out[[0, 2]], everything[[0, 2]])


def test_the_frame_transform_zeros_frames_not_present():
  """Through the graph (decode, host augmentation): window frames with image mask False come out as zeros."""
  import cv2
  import tensorflow as tf

  from lamp_jax import specs
  from lamp_jax.data import config as data_config
  from lamp_jax.data import frame_transforms

  cfg = data_config.default_data_config()
  cfg.cameras = cfg.augment_cameras = (specs.IMAGE_PRIMARY,)
  cfg.window_size, cfg.image_size = 2, (13, 11)  # stored at the output size: the crop still resamples
  jpeg = cv2.imencode(".jpg", np.random.default_rng(3).integers(0, 256, (13, 11, 3), np.uint8))[1].tobytes()
  frame = {"observation": {specs.IMAGE_PRIMARY: tf.constant([jpeg, jpeg]),
                           specs.IMAGE_MASK: {specs.IMAGE_PRIMARY: tf.constant([False, True])}}}
  for seed in range(6):  # brightness deltas of both signs
    out = frame_transforms.decode_and_augment(frame, tf.constant([seed, 7], tf.int64), cfg, True)
    images = out["observation"][specs.IMAGE_PRIMARY].numpy()
    assert images.shape == (2, 13, 11, 3)
    assert not images[0].any() and images[1].any()
