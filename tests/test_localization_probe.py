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


def test_dense_labels_mark_the_patch_of_each_object_with_its_colour_and_shape(scenes):
  """In the 'single' scenes the only object is the named one: its label sits in the patch holding its (u, v) and
  encodes the colour of ``rgba`` (tasks.COLORS order) and its shape; every other patch is empty (0)."""
  from lamp_jax.sim import tasks

  grid = 4
  labels = probe.dense_labels(scenes["objects"], grid)
  assert labels.shape == (13, grid * grid) and labels.dtype == np.int32
  colours = np.asarray(list(tasks.COLORS.values()), np.float32)
  for label, uv, rgba in zip(labels, scenes["uv"], scenes["rgba"]):
    col, row = np.minimum((uv * grid).astype(int), grid - 1)
    assert np.count_nonzero(label) == 1 and label[row * grid + col] > 0
    colour, shape = divmod(int(label[row * grid + col]) - 1, len(probe.SHAPES))
    assert np.allclose(colours[colour], rgba) and shape in (0, 1)  # a cube or a cylinder, never a plate


@pytest.mark.slow  # ~40 s on a quiet 2-core box
def test_pretrained_tower_is_the_probe_starting_point(scenes):
  result = probe.run_probe(scenes, encoder="siglip", readout="text_attention", steps=2, num_heldout=5,
                           batch_size=4, eval_every=1, vision_overrides=TINY_VISION, pretrain_steps=2,
                           progress=False)
  assert result["pretraining"]["steps"] == 2
  assert 0.0 <= result["pretraining"]["heldout_object_token_accuracy"] <= 1.0
  assert np.isfinite(result["final_heldout_rmse_px"])
  with pytest.raises(ValueError, match="SigLIP tower"):
    probe.run_probe(scenes, encoder="cnn", readout="flatten", steps=1, num_heldout=5, batch_size=4,
                    pretrain_steps=1, progress=False)
  with pytest.raises(ValueError, match="text_attention"):
    probe.run_probe(scenes, encoder="vlm", readout="text_attention", steps=1, num_heldout=5, batch_size=4,
                    vision_overrides=TINY_VISION, progress=False)


@pytest.mark.parametrize("encoder,readout", [("cnn", "flatten"), ("siglip", "attention"), ("vlm", "mean")])
def test_probe_trains_and_reports_against_the_mean_predictor(scenes, encoder, readout):
  result = probe.run_probe(scenes, encoder=encoder, readout=readout, steps=3, num_heldout=5, batch_size=4,
                           eval_every=2, vision_overrides=TINY_VISION, progress=False)
  assert [row["step"] for row in result["curve"]] == [2, 3]
  assert result["train_scenes"] == 8 and result["heldout_scenes"] == 5
  assert np.isfinite(result["final_heldout_rmse_px"]) and result["mean_predictor_rmse_px"] > 0
  with pytest.raises(ValueError, match="readout"):
    probe.run_probe(scenes, encoder=encoder, readout="max", steps=1, num_heldout=5, batch_size=4)
