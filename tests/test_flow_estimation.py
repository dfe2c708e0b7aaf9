"""lamp_jax.data.flow_estimation: OpenCV flow estimators on images shifted by known amounts, episode flow images."""

import numpy as np
import pytest

from lamp_jax import flow_image
from lamp_jax.data import errors, flow_estimation

H, W = 96, 128
MARGIN = 12  # interior: away from the borders, where part of the pattern leaves the frame


def texture(dx: float = 0.0, dy: float = 0.0, height: int = H, width: int = W) -> np.ndarray:
  """uint8[H, W, 3] smooth random texture, translated by (dx, dy) pixels (a continuous pattern: sub-pixel
  shifts are exact, nothing wraps around)."""
  ys, xs = np.mgrid[:height, :width].astype(np.float64)
  x, y = xs - dx, ys - dy
  rng = np.random.default_rng(0)
  img = np.zeros((height, width))
  for _ in range(12):
    fx, fy = rng.uniform(0.05, 0.35, 2) * rng.choice([-1, 1], 2)
    img += np.sin(fx * x + fy * y + rng.uniform(0, 2 * np.pi))
  img = (img + 12) / 24
  return np.repeat(np.round(img * 255).astype(np.uint8)[..., None], 3, axis=-1)


@pytest.mark.parametrize("method", sorted(flow_estimation.ESTIMATORS))
@pytest.mark.parametrize("shift", [(3.0, -2.0), (1.5, 0.5)])
def test_estimators_recover_a_known_shift(method, shift):
  flow = flow_estimation.estimate_flow(texture(), texture(*shift), method)
  assert flow.dtype == np.float32 and flow.shape == (H, W, 2)
  interior = flow[MARGIN:-MARGIN, MARGIN:-MARGIN]
  error = np.abs(interior - np.asarray(shift, np.float32))
  assert error.max() < 0.5, (method, shift, error.max())


def test_default_is_dis_and_unknown_names_are_listed():
  assert flow_estimation.DEFAULT_ESTIMATOR == "dis"
  with pytest.raises(ValueError, match=r"unknown optical-flow estimator 'raft'; known: \['dis', 'farneback'\]"):
    flow_estimation.estimate_flow(texture(), texture(), "raft")
  with pytest.raises(ValueError, match="differ in size"):
    flow_estimation.estimate_flow(texture(), texture(height=H - 8))


def test_episode_flow_images_span_k_steps_and_clamp_at_the_end():
  # The camera pans 1 px right per step; flow t -> min(t + k, N - 1).
  n, k = 5, 2
  frames = np.stack([texture(dx=float(t)) for t in range(n)])
  max_magnitude = flow_image.default_max_magnitude(W)
  estimator = flow_estimation.EpisodeFlowImages(k=k, max_magnitude=max_magnitude)
  images = estimator(frames, dataset="toy", episode="0")
  assert images.dtype == np.uint8 and images.shape == (n, H, W, 3)
  decoded = flow_image.rgb_to_flow(images, max_magnitude)[:, MARGIN:-MARGIN, MARGIN:-MARGIN]
  expected_dx = [min(t + k, n - 1) - t for t in range(n)]  # 2, 2, 2, 1, 0
  for t, dx in enumerate(expected_dx):
    assert np.abs(decoded[t, ..., 0] - dx).max() < 0.5 and np.abs(decoded[t, ..., 1]).max() < 0.5, t
  np.testing.assert_array_equal(images[-1], 255)  # the last step: zero flow, white
  # Same encoding as the simulator export: the images are flow_to_rgb of the estimated flow.
  np.testing.assert_array_equal(images, flow_image.flow_to_rgb(flow_estimation.episode_flow(frames, k),
                                                               max_magnitude))


def test_single_frame_episode_is_a_clear_error_or_a_counted_skip():
  one = texture()[None]
  estimator = flow_estimation.EpisodeFlowImages(k=3, max_magnitude=10.0)
  with pytest.raises(errors.DataError, match=r"dataset 'toy', episode 7, key 'image_primary'.*1 frame"):
    estimator(one, dataset="toy", episode="7")
  skipping = flow_estimation.EpisodeFlowImages(k=3, max_magnitude=10.0, skip_bad=True)
  assert skipping(one, dataset="toy", episode="7") is None
  assert skipping(np.stack([texture(), texture(1.0)]), dataset="toy", episode="8") is not None
  assert skipping.counter.total(flow_estimation.SINGLE_FRAME) == 1
  assert skipping.counter.as_dict() == {"toy": {flow_estimation.SINGLE_FRAME: 1}}
  with pytest.raises(ValueError, match="k must be >= 1"):
    flow_estimation.EpisodeFlowImages(k=0, max_magnitude=10.0)
  with pytest.raises(errors.DataError, match=r"uint8\[N, H, W, 3\]"):
    estimator(one.astype(np.float32), dataset="toy", episode="9")
