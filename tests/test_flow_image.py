"""lamp_jax.flow_image: the paper's flow-image encoding (hue = direction, saturation = magnitude, value 1)."""

import matplotlib.colors
import numpy as np
import pytest

from lamp_jax import flow_image


def test_known_colours_and_white_zero_flow():
  m = 2.0
  flow = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0], [1.0, 0.0], [10.0, 0.0],
                   [0.0, -30.0]])
  rgb = flow_image.flow_to_rgb(flow, m)
  assert rgb.dtype == np.uint8 and rgb.shape == (8, 3)
  np.testing.assert_array_equal(rgb, [
      [255, 255, 255],  # zero flow: white
      [255, 0, 0],  # +x (right): red, hue 0
      [128, 255, 0],  # +y (down): hue 1/4
      [0, 255, 255],  # -x: cyan, hue 1/2
      [128, 0, 255],  # -y (up): hue 3/4
      [255, 128, 128],  # half magnitude: half saturation
      [255, 0, 0],  # beyond max_magnitude: saturates, direction kept
      [128, 0, 255],
  ])
  # The value channel is 1 everywhere: some channel is 255 in every pixel.
  rng = np.random.default_rng(0)
  rgb = flow_image.flow_to_rgb(rng.normal(0, 3, (17, 13, 2)), m)
  assert rgb.shape == (17, 13, 3) and (rgb.max(axis=-1) == 255).all()


def test_hsv_conversions_match_matplotlib():
  rng = np.random.default_rng(1)
  hsv = rng.uniform(0, 1, (997, 3))
  np.testing.assert_allclose(flow_image.hsv_to_rgb(hsv[:, 0], hsv[:, 1], hsv[:, 2]),
                             matplotlib.colors.hsv_to_rgb(hsv), atol=1e-12)
  rgb = rng.uniform(0, 1, (997, 3))
  rgb[:7] = rgb[:7, :1]  # greys: saturation 0, hue 0
  np.testing.assert_allclose(np.stack(flow_image.rgb_to_hsv(rgb), axis=-1), matplotlib.colors.rgb_to_hsv(rgb),
                             atol=1e-12)


@pytest.mark.parametrize("max_magnitude", [18.285714, 64.0])
def test_round_trip_up_to_quantisation(max_magnitude):
  rng = np.random.default_rng(2)
  n = 50_000
  angle = rng.uniform(0, 2 * np.pi, n)
  magnitude = rng.uniform(0, 1, n) ** 2 * max_magnitude  # many small flows, where the hue is hardest
  flow = np.stack([magnitude * np.cos(angle), magnitude * np.sin(angle)], -1).reshape(250, 200, 2)
  decoded = flow_image.rgb_to_flow(flow_image.flow_to_rgb(flow, max_magnitude), max_magnitude)
  assert decoded.dtype == np.float32 and decoded.shape == flow.shape
  level = max_magnitude / 255  # one saturation level in pixels
  # The magnitude comes from the min channel alone: within half a level. The vector also carries the hue's
  # quantisation (at most ~pi/6 of a level in displacement, whatever the magnitude).
  assert np.abs(np.hypot(decoded[..., 0], decoded[..., 1]) - magnitude.reshape(250, 200)).max() <= 0.501 * level
  assert np.hypot(*(decoded - flow).reshape(-1, 2).T).max() <= 1.2 * level
  # Longer flow saturates to max_magnitude and keeps its direction.
  long = flow_image.rgb_to_flow(flow_image.flow_to_rgb(np.array([[3.0, -4.0]]) * max_magnitude, max_magnitude),
                                max_magnitude)
  np.testing.assert_allclose(long[0], np.array([0.6, -0.8]) * max_magnitude, atol=1.2 * level)


def test_float_images_decode_like_uint8():
  rng = np.random.default_rng(3)
  rgb = flow_image.flow_to_rgb(rng.normal(0, 5, (11, 7, 2)), 9.0)
  np.testing.assert_allclose(flow_image.rgb_to_flow(rgb.astype(np.float32) / 255, 9.0),
                             flow_image.rgb_to_flow(rgb, 9.0), atol=1e-5)
  # A decoded image whose value is not exactly 1 (e.g. a VAE output) still reads hue and saturation.
  np.testing.assert_allclose(flow_image.rgb_to_flow(rgb / 255 * 0.9, 9.0), flow_image.rgb_to_flow(rgb, 9.0),
                             atol=1e-4)


def test_default_max_magnitude_and_errors():
  assert flow_image.default_max_magnitude(224) == 64.0
  np.testing.assert_allclose(flow_image.default_max_magnitude(64), 64 * 64 / 224)
  with pytest.raises(ValueError, match="max_magnitude"):
    flow_image.flow_to_rgb(np.zeros((2, 2, 2)), 0.0)
  with pytest.raises(ValueError, match=r"float\[\.\.\., H, W, 2\]"):
    flow_image.flow_to_rgb(np.zeros((2, 2, 3)), 1.0)
  with pytest.raises(ValueError, match="non-finite"):
    flow_image.flow_to_rgb(np.full((1, 1, 2), np.nan), 1.0)
  with pytest.raises(ValueError, match="RGB"):
    flow_image.rgb_to_flow(np.zeros((2, 2, 2), np.uint8), 1.0)
