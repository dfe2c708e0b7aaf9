"""Strict diffusers AutoencoderKL import / export: parity with a tiny random diffusers VAE (fp32), bit-exact round
trips, older attention names, strict errors for other architectures, the SDXL layout. Needs the test extra
(torch, diffusers)."""

import json

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.numpy import save_file

from lamp_jax.models import vae
from lamp_jax.models.weights import diffusers_vae
from lamp_jax.models.weights import strict

DIFFUSERS_SDXL_PARAMS = 83_653_863


def our_config(**overrides):
  """Odd sizes: three levels of 8, 12, 20 channels (2, 3, 5 per group), 3 latent channels, 2 resnets per level."""
  cfg = vae.model_config("tiny")
  cfg.update(dict(block_out_channels=(8, 12, 20), layers_per_block=2, latent_channels=3, norm_num_groups=4,
                  scaling_factor=0.41, shift_factor=0.0, image_size=28))
  cfg.update(overrides)
  return cfg


def diffusers_vae_for(cfg, seed=0, std=0.2):
  """A diffusers AutoencoderKL of ``cfg``'s architecture with every tensor random (fp32, eval mode)."""
  kwargs = {k: v for k, v in diffusers_vae.diffusers_config(cfg).items() if not k.startswith("_")}
  torch.manual_seed(seed)
  model = AutoencoderKL(**kwargs).eval()
  with torch.no_grad():
    for _, p in model.named_parameters():
      p.normal_(0.0, std)
  return model


@pytest.fixture(scope="module")
def pair():
  cfg = our_config()
  model = diffusers_vae_for(cfg)
  return cfg, model, diffusers_vae.load_state_dict(model.state_dict(), cfg)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def test_parity_with_diffusers_fp32(pair):
  cfg, model, params = pair
  images = np.random.default_rng(0).uniform(-1, 1, (2, 20, 28, 3)).astype(np.float32)  # non-square
  with torch.no_grad():
    posterior = model.encode(_nchw(images)).latent_dist
    mean_t, logvar_t = _nhwc(posterior.mean), _nhwc(posterior.logvar)
    decoded_t = _nhwc(model.decode(posterior.mean).sample)
  ours = vae.build(cfg)

  @jax.jit
  def run(params, images, latents):
    v = {"params": params}
    mean, logvar = ours.apply(v, images, method="encode")
    return mean, logvar, ours.apply(v, latents, method="decode"), ours.apply(v, images, method="latents")

  mean, logvar, decoded, z = run(params, images, mean_t)
  assert mean.shape == (2, 5, 7, 3) and decoded.shape == (2, 20, 28, 3)
  assert np.abs(mean - mean_t).max() <= 1e-4 and np.abs(logvar - logvar_t).max() <= 1e-4
  assert np.abs(decoded - decoded_t).max() <= 1e-4
  assert np.abs(decoded_t).max() > 0.1 and np.abs(mean_t).max() > 0.1  # errors far below the signal
  # Scaled latents as a diffusers pipeline computes them (no shift): latent_dist.mode() * scaling_factor.
  np.testing.assert_allclose(z, mean_t * 0.41, atol=1e-4)


def test_round_trips_are_bit_exact(pair, tmp_path):
  cfg, model, params = pair
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  # diffusers state dict -> ours -> diffusers state dict.
  back = diffusers_vae.to_diffusers_tensors(params, cfg)
  assert sorted(back) == sorted(state)
  for name, value in state.items():
    assert back[name].dtype == np.float32 and np.array_equal(back[name], value), name
  # save_pretrained directory -> load (with its config.json checked).
  model.save_pretrained(tmp_path / "saved")
  loaded = diffusers_vae.load(tmp_path / "saved", cfg)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  # export -> diffusers from_pretrained -> the same tensors and config; and export -> load -> the same params.
  out = diffusers_vae.export(params, cfg, tmp_path / "exported")
  reloaded = AutoencoderKL.from_pretrained(out).eval()
  for name, value in reloaded.state_dict().items():
    assert np.array_equal(value.numpy(), state[name]), name
  assert reloaded.config.scaling_factor == 0.41 and tuple(reloaded.config.block_out_channels) == (8, 12, 20)
  jax.tree.map(np.testing.assert_array_equal, diffusers_vae.load(out, cfg), params)
  # bfloat16 / float16 checkpoints load exactly (as their float32 values).
  half = diffusers_vae.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}, cfg)
  to_q = model.encoder.mid_block.attentions[0].to_q.weight.detach()
  np.testing.assert_array_equal(strict.flatten(half)["encoder/mid_block/attention/to_q/kernel"],
                                to_q.to(torch.bfloat16).float().numpy().T)


def test_older_attention_names_load(pair, tmp_path):
  cfg, model, params = pair
  old = {}
  for name, value in model.state_dict().items():
    for new, legacy in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
      name = name.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
    old[name] = value
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in old
  jax.tree.map(np.testing.assert_array_equal, diffusers_vae.load_state_dict(old, cfg), params)
  save_file({k: v.numpy() for k, v in old.items()}, str(tmp_path / "old.safetensors"))
  jax.tree.map(np.testing.assert_array_equal, diffusers_vae.load(tmp_path / "old.safetensors", cfg), params)
  both = dict(model.state_dict(), **{"decoder.mid_block.attentions.0.query.weight": old[
      "decoder.mid_block.attentions.0.query.weight"]})
  with pytest.raises(strict.StrictLoadError, match=r"decoder.mid_block.attentions.0.(query|to_q).weight \(duplicate"):
    diffusers_vae.load_state_dict(both, cfg)


def test_another_architecture_is_a_strict_error_naming_tensors(pair, tmp_path):
  cfg, _, _ = pair
  # Two levels of (8, 16) with three resnets each, 4 latent channels: every kind of difference at once.
  other = diffusers_vae_for(our_config(block_out_channels=(8, 16), layers_per_block=3, latent_channels=4))
  with pytest.raises(strict.StrictLoadError) as info:
    diffusers_vae.load_state_dict(other.state_dict(), cfg, source="other_vae")
  err = info.value
  message = str(err)
  assert "checkpoint other_vae does not match" in message
  assert "encoder.down_blocks.2.resnets.0.conv1.weight" in err.missing  # our third level
  assert "decoder.up_blocks.1.upsamplers.0.conv.weight" in err.missing
  assert "encoder.down_blocks.0.resnets.2.conv1.weight" in err.unexpected  # their third resnet
  assert "encoder.down_blocks.1.resnets.0.conv1.weight: shape (16, 8, 3, 3) != expected (12, 8, 3, 3)" in err.mismatched
  assert "quant_conv.weight: shape (8, 8, 1, 1) != expected (6, 6, 1, 1)" in err.mismatched
  for name in err.missing[:3] + err.unexpected[:3]:
    assert name in message
  # One error lists them all: nothing is loaded partially.
  assert len(err.missing) > 10 and len(err.unexpected) > 10 and len(err.mismatched) > 10
  # Same tensors, another config.json (latent scaling): named by field.
  same = diffusers_vae_for(cfg)
  same.register_to_config(scaling_factor=0.13025)
  same.save_pretrained(tmp_path / "rescaled")
  with pytest.raises(strict.StrictLoadError, match=r"config.json: scaling_factor=0.13025 != model config "
                                                    r"scaling_factor=0.41"):
    diffusers_vae.load(tmp_path / "rescaled", cfg)
  config_path = tmp_path / "rescaled" / "config.json"
  config_path.write_text(json.dumps(dict(json.loads(config_path.read_text()), _class_name="UNet2DModel")))
  with pytest.raises(strict.StrictLoadError, match="config.json: describes a UNet2DModel, not an AutoencoderKL"):
    diffusers_vae.load(tmp_path / "rescaled", cfg)


def test_export_is_strict_too(pair):
  cfg, _, params = pair
  flat = strict.flatten(params)
  broken = dict(flat)
  del broken["decoder/conv_out/bias"]
  broken["decoder/extra/kernel"] = np.zeros((1,))
  broken["quant_conv/kernel"] = np.zeros((1, 1, 6, 5), np.float32)
  with pytest.raises(strict.StrictLoadError) as info:
    diffusers_vae.to_diffusers_tensors(strict.unflatten(broken), cfg)
  assert info.value.missing == ["decoder/conv_out/bias"] and info.value.unexpected == ["decoder/extra/kernel"]
  assert info.value.mismatched == ["quant_conv/kernel: shape (1, 1, 6, 5) != expected (1, 1, 6, 6)"]
  with pytest.raises(ValueError, match="double_z=False"):
    diffusers_vae.diffusers_config(our_config(double_z=False))


def test_sdxl_layout_matches_diffusers():
  cfg = vae.model_config("sdxl")
  kwargs = {k: v for k, v in diffusers_vae.diffusers_config(cfg).items() if not k.startswith("_")}
  with torch.device("meta"):  # shapes only, nothing allocated
    model = AutoencoderKL(**kwargs)
  assert sum(p.numel() for p in model.parameters()) == DIFFUSERS_SDXL_PARAMS == vae.param_count(cfg)
  assert {n: tuple(p.shape) for n, p in model.state_dict().items()} == {
      e.name: e.shape for e in diffusers_vae.layout(cfg)}
  assert model.config.scaling_factor == 0.13025
  # config.json of the released SDXL VAE (madebyollin/sdxl-vae-fp16-fix, stabilityai/sdxl-vae) maps to 'sdxl'.
  released = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
              "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
              "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024,
              "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D"] * 4, "force_upcast": False}
  fields = diffusers_vae.config_from_diffusers(json.loads(json.dumps(released)))
  assert vae.config_from_dict(fields) == vae.config_from_dict(cfg)
  with pytest.raises(ValueError, match="act_fn='relu'"):
    diffusers_vae.config_from_diffusers(dict(released, act_fn="relu"))
