"""lamp_jax.eval.localization_probe: labels follow the camera convention; the probe trains and reports."""

import numpy as np
import pytest

from lamp_jax.eval import localization_probe as probe

TINY_VISION = dict(width=24, depth=1, mlp_dim=40, num_heads=2, patch_size=8)


@pytest.fixture(scope="module")
def scenes():
  return probe.render_probe_data(13, 32, "single", progress=False)


def test_labels_land_on_the_named_object(scenes):
  """The pixel at each label (u, v) shows the named object's colour (the only object on the table), i.e. the
  labels use the rendered image's UV convention (u right, v down, normalised by width / height)."""
  size = scenes["images"].shape[1]
  for image, uv, rgba in zip(scenes["images"], scenes["uv"], scenes["rgba"]):
    col, row = np.clip((uv * size).astype(int), 0, size - 1)
    patch = image[max(row - 1, 0):row + 2, max(col - 1, 0):col + 2].reshape(-1, 3).astype(np.float32) / 255
    distance = np.abs(patch - rgba[:3]).sum(-1).min()
    table = np.abs(image[size - 2, size // 2].astype(np.float32) / 255 - rgba[:3]).sum()
    assert distance < 0.5 * table, (uv, rgba, patch)
  assert scenes["images"].dtype == np.uint8 and scenes["uv"].shape == (13, 2)


@pytest.mark.parametrize("encoder,readout", [("cnn", "flatten"), ("siglip", "attention"), ("vlm", "mean")])
def test_probe_trains_and_reports_against_the_mean_predictor(scenes, encoder, readout):
  result = probe.run_probe(scenes, encoder=encoder, readout=readout, steps=3, num_heldout=5, batch_size=4,
                           eval_every=2, vision_overrides=TINY_VISION, progress=False)
  assert [row["step"] for row in result["curve"]] == [2, 3]
  assert result["train_scenes"] == 8 and result["heldout_scenes"] == 5
  assert np.isfinite(result["final_heldout_rmse_px"]) and result["mean_predictor_rmse_px"] > 0
  with pytest.raises(ValueError, match="readout"):
    probe.run_probe(scenes, encoder=encoder, readout="max", steps=1, num_heldout=5, batch_size=4)
