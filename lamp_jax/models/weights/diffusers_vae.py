"""diffusers ``AutoencoderKL`` state dicts / safetensors <-> lamp_jax ``models.vae`` parameters (strict).

Every tensor of the model config is mapped; names, shapes and dtypes are checked; missing, unexpected and
mis-shaped tensors are ALL listed in one :class:`~lamp_jax.models.weights.strict.StrictLoadError`. The export is
the exact inverse (transposes only), so diffusers -> lamp_jax -> diffusers is bit-exact.

Mapping (C channels; torch Conv2d weights are [out, in, kh, kw], Linear weights [out, in]; ours are
NHWC-convolution kernels [kh, kw, in, out] and Dense kernels [in, out]):

  <conv>.weight [O, I, k, k]            -> <conv>/kernel [k, k, I, O]        (conv_in, conv1, conv2,
  <conv>.bias [O]                       -> <conv>/bias [O]                    conv_shortcut, conv_out,
                                                                              quant_conv, post_quant_conv)
  <norm>.weight / .bias [C]             -> <norm>/scale / bias [C]           (norm1, norm2, conv_norm_out,
                                                                              group_norm)
  ...attentions.0.to_{q,k,v}.weight [C, C]  -> .../attention/to_{q,k,v}/kernel [C, C] (transposed)
  ...attentions.0.to_out.0.weight [C, C]    -> .../attention/to_out/kernel [C, C] (transposed)
  {encoder,decoder}.*.down_blocks.i / up_blocks.i / resnets.j / mid_block.resnets.j
                                        -> down_blocks_i / up_blocks_i / resnets_j / mid_block/resnets_j
  encoder.down_blocks.i.downsamplers.0.conv -> encoder/down_blocks_i/downsample
  decoder.up_blocks.i.upsamplers.0.conv     -> decoder/up_blocks_i/upsample

Older diffusers attention names (``query``, ``key``, ``value``, ``proj_attn`` in place of ``to_q``, ``to_k``,
``to_v``, ``to_out.0``) are renamed on load; a file holding both spellings of one tensor is an error.

Sources: a safetensors file; a directory holding one (``diffusion_pytorch_model.safetensors`` as written by
``save_pretrained``, sharded with its ``.index.json``, or a pipeline's ``vae/`` subfolder); or an in-memory state
dict of torch tensors / numpy arrays. A ``config.json`` beside the weights is checked against the model config
(scaling, shift, latent channels, ...: values the tensors cannot show).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
from typing import Any, Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from lamp_jax.models import vae
from lamp_jax.models.weights import strict

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_ATTENTION_RE = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One diffusers tensor <-> one of our parameters; ``kind`` 'conv' | 'linear' | 'vector' says how it maps."""

  name: str  # diffusers state-dict name
  shape: tuple[int, ...]  # diffusers shape
  ours: str  # our flat parameter name ('a/b/c')
  kind: str


def _to_ours(kind: str, w: np.ndarray) -> np.ndarray:
  if kind == "conv":
    return w.transpose(2, 3, 1, 0)
  if kind == "linear":
    return w.T
  return w


def _to_diffusers(kind: str, w: np.ndarray) -> np.ndarray:
  if kind == "conv":
    return w.transpose(3, 2, 0, 1)
  if kind == "linear":
    return w.T
  return w


def layout(model_cfg: Any) -> list[Entry]:
  """Every diffusers tensor of the model config and where it lives in our parameter tree."""
  cfg = vae.config_from_dict(model_cfg)
  entries: list[Entry] = []

  def conv(d, o, cin, cout, k):
    entries.extend([Entry(d + ".weight", (cout, cin, k, k), o + "/kernel", "conv"),
                    Entry(d + ".bias", (cout,), o + "/bias", "vector")])

  def norm(d, o, c):
    entries.extend([Entry(d + ".weight", (c,), o + "/scale", "vector"),
                    Entry(d + ".bias", (c,), o + "/bias", "vector")])

  def linear(d, o, cin, cout):
    entries.extend([Entry(d + ".weight", (cout, cin), o + "/kernel", "linear"),
                    Entry(d + ".bias", (cout,), o + "/bias", "vector")])

  def resnet(d, o, cin, cout):
    norm(d + ".norm1", o + "/norm1", cin)
    conv(d + ".conv1", o + "/conv1", cin, cout, 3)
    norm(d + ".norm2", o + "/norm2", cout)
    conv(d + ".conv2", o + "/conv2", cout, cout, 3)
    if cin != cout:
      conv(d + ".conv_shortcut", o + "/conv_shortcut", cin, cout, 1)

  def mid(d, o, c):
    resnet(d + ".resnets.0", o + "/resnets_0", c, c)
    if cfg.mid_block_add_attention:
      norm(d + ".attentions.0.group_norm", o + "/attention/group_norm", c)
      for proj in ("to_q", "to_k", "to_v"):
        linear(f"{d}.attentions.0.{proj}", f"{o}/attention/{proj}", c, c)
      linear(d + ".attentions.0.to_out.0", o + "/attention/to_out", c, c)
    resnet(d + ".resnets.1", o + "/resnets_1", c, c)

  chans = cfg.block_out_channels
  last = len(chans) - 1
  conv("encoder.conv_in", "encoder/conv_in", cfg.in_channels, chans[0], 3)
  prev = chans[0]
  for i, c in enumerate(chans):
    for j in range(cfg.layers_per_block):
      resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder/down_blocks_{i}/resnets_{j}", prev if j == 0 else c, c)
    if i < last:
      conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder/down_blocks_{i}/downsample", c, c, 3)
    prev = c
  mid("encoder.mid_block", "encoder/mid_block", chans[-1])
  norm("encoder.conv_norm_out", "encoder/conv_norm_out", chans[-1])
  conv("encoder.conv_out", "encoder/conv_out", chans[-1], cfg.moment_channels, 3)
  if cfg.use_quant_conv:
    conv("quant_conv", "quant_conv", cfg.moment_channels, cfg.moment_channels, 1)
  if cfg.use_post_quant_conv:
    conv("post_quant_conv", "post_quant_conv", cfg.latent_channels, cfg.latent_channels, 1)

  rev = tuple(reversed(chans))
  conv("decoder.conv_in", "decoder/conv_in", cfg.latent_channels, rev[0], 3)
  mid("decoder.mid_block", "decoder/mid_block", rev[0])
  prev = rev[0]
  for i, c in enumerate(rev):
    for j in range(cfg.layers_per_block + 1):
      resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder/up_blocks_{i}/resnets_{j}", prev if j == 0 else c, c)
    if i < last:
      conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder/up_blocks_{i}/upsample", c, c, 3)
    prev = c
  norm("decoder.conv_norm_out", "decoder/conv_norm_out", chans[0])
  conv("decoder.conv_out", "decoder/conv_out", chans[0], cfg.out_channels, 3)
  return entries


@functools.lru_cache(maxsize=16)
def _our_shapes(cfg: vae.VAEConfig) -> dict[str, tuple[int, ...]]:
  """{our flat parameter name: shape} of an architecture (``vae.abstract_params``; cached: tracing takes seconds)."""
  return {name: tuple(s.shape) for name, s in strict.flatten(vae.abstract_params(cfg)).items()}


# ------------------------------------------------------------------------------------------ reading
def _weight_files(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"diffusers AutoencoderKL checkpoint not found: {path}")
  if not glob.glob(os.path.join(path, "*.safetensors")) and os.path.isdir(os.path.join(path, "vae")):
    return _weight_files(os.path.join(path, "vae"))  # a pipeline directory: its VAE subfolder
  index = os.path.join(path, WEIGHTS_NAME + ".index.json")
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if len(files) == 1:
    return files
  if os.path.join(path, WEIGHTS_NAME) in files:
    return [os.path.join(path, WEIGHTS_NAME)]
  if not files:
    raise FileNotFoundError(f"no *.safetensors file in {path}")
  raise FileNotFoundError(f"{path} holds several safetensors files and no {WEIGHTS_NAME}: "
                          f"{[os.path.basename(f) for f in files]}; pass the file to load")


def _config_json(path: str) -> str | None:
  if os.path.isfile(path):
    candidate = os.path.join(os.path.dirname(path), CONFIG_NAME)
  else:
    folder = path if glob.glob(os.path.join(path, "*.safetensors")) else os.path.join(path, "vae")
    candidate = os.path.join(folder, CONFIG_NAME)
  return candidate if os.path.isfile(candidate) else None


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor (torch is not imported here)
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16 view of a torch tensor; float32 is exact
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _rename(name: str) -> str:
  m = _OLD_ATTENTION_RE.match(name)
  return f"{m.group(1)}{_OLD_ATTENTION[m.group(2)]}.{m.group(3)}" if m else name


def _renamed(source: str, items) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors under current diffusers names, {current name: name in the source}); old attention names renamed."""
  tensors, source_names = {}, {}
  for name, value in items:
    new = _rename(name)
    if new in tensors:
      raise strict.StrictLoadError(source, unexpected=[f"{name} (duplicate of {source_names[new]})"])
    tensors[new] = value
    source_names[new] = name
  return tensors, source_names


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """All tensors of a safetensors file or directory as numpy arrays (bfloat16 via ml_dtypes).

  Returns (tensors by current diffusers name, {current name: name in the file}).
  """
  path = os.fspath(path)

  def items():
    for file in _weight_files(path):
      with safe_open(file, framework="flax") as f:
        for name in f.keys():
          yield name, np.asarray(f.get_tensor(name))

  return _renamed(path, items())


# Config fields that the tensors cannot show, compared with a config.json beside the weights.
_CHECKED_CONFIG_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
                          "norm_num_groups", "scaling_factor", "shift_factor", "mid_block_add_attention",
                          "use_quant_conv", "use_post_quant_conv")


def config_from_diffusers(diffusers_config: Mapping[str, Any]) -> dict[str, Any]:
  """diffusers ``AutoencoderKL`` config (config.json contents) -> our ``VAEConfig`` field values.

  Raises ValueError for configs this VAE does not implement (other block types, activation, spatial norm).
  """
  c = dict(diffusers_config)
  n = len(c.get("block_out_channels", (64,)))
  problems = []
  if tuple(c.get("down_block_types", ("DownEncoderBlock2D",) * n)) != ("DownEncoderBlock2D",) * n:
    problems.append(f"down_block_types={c.get('down_block_types')} (only DownEncoderBlock2D)")
  if tuple(c.get("up_block_types", ("UpDecoderBlock2D",) * n)) != ("UpDecoderBlock2D",) * n:
    problems.append(f"up_block_types={c.get('up_block_types')} (only UpDecoderBlock2D)")
  if c.get("act_fn", "silu") != "silu":
    problems.append(f"act_fn={c.get('act_fn')!r} (only 'silu')")
  if problems:
    raise ValueError("diffusers config not supported by lamp_jax.models.vae: " + "; ".join(problems))
  defaults = vae.VAEConfig()
  out = {}
  for field in _CHECKED_CONFIG_FIELDS:
    diffusers_default = {"block_out_channels": (64,), "layers_per_block": 1, "norm_num_groups": 32,
                         "shift_factor": None}.get(field, getattr(defaults, field))
    value = c.get(field, diffusers_default)
    out[field] = tuple(value) if field == "block_out_channels" else value
  out["shift_factor"] = float(out["shift_factor"] or 0.0)
  out["double_z"] = True
  return out


def _config_problems(diffusers_config: Mapping[str, Any], model_cfg: Any, source: str) -> list[str]:
  ours = vae.config_from_dict(model_cfg)
  theirs = config_from_diffusers(diffusers_config)
  problems = []
  for field, value in theirs.items():
    mine = getattr(ours, field)
    if field == "shift_factor":
      mine = float(mine or 0.0)
    if field in ("scaling_factor", "shift_factor"):
      same = np.isclose(float(value), float(mine), rtol=0, atol=1e-12)
    else:
      same = value == mine
    if not same:
      problems.append(f"{source}: {field}={value!r} != model config {field}={mine!r}")
  return problems


def _load_tensors(source: str, tensors: dict[str, Any], source_names: dict[str, str], model_cfg: Any,
                  config_problems: list[str] = ()) -> dict[str, Any]:
  cfg = vae.config_from_dict(model_cfg)
  if not cfg.double_z:
    raise ValueError("model config double_z=False: a diffusers AutoencoderKL always has double_z=True")
  entries = layout(cfg)
  expected = {e.name for e in entries}
  missing = [e.name for e in entries if e.name not in tensors]
  unexpected = [source_names[name] for name in tensors if name not in expected]
  mismatched = list(config_problems)
  mismatched += [p for e in entries if e.name in tensors
                 and (p := strict.check_tensor(source_names[e.name], tensors[e.name], e.shape))]
  if missing or unexpected or mismatched:
    raise strict.StrictLoadError(source, missing=missing, unexpected=unexpected, mismatched=mismatched)

  abstract = _our_shapes(cfg)
  params = {}
  for e in entries:
    value = _to_ours(e.kind, strict.to_float32(tensors[e.name]))
    if tuple(value.shape) != abstract[e.ours]:  # a bug in `layout`, not in the checkpoint
      raise AssertionError(f"diffusers layout maps {e.name} to {e.ours} of shape {abstract[e.ours]}, "
                           f"got {value.shape}")
    params[e.ours] = np.ascontiguousarray(value)
  unfilled = sorted(set(abstract) - set(params))
  if unfilled:  # a bug in `layout`
    raise AssertionError(f"diffusers layout leaves parameters unassigned: {unfilled}")
  return strict.unflatten(params)


def load(path: str | os.PathLike, model_cfg: Any) -> dict[str, Any]:
  """Loads a diffusers AutoencoderKL safetensors file / directory into our parameter tree (float32 numpy).

  Raises:
    FileNotFoundError; StrictLoadError listing every missing / unexpected / mis-shaped tensor by name, and
    every config.json field (beside the weights) that differs from ``model_cfg``.
  """
  source = os.fspath(path)
  tensors, names = read_tensors(source)
  problems = []
  config_path = _config_json(source)
  if config_path is not None:
    with open(config_path) as f:
      diffusers_cfg = json.load(f)
    if diffusers_cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
      raise strict.StrictLoadError(source, mismatched=[
          f"{config_path}: describes a {diffusers_cfg['_class_name']}, not an AutoencoderKL"])
    problems = _config_problems(diffusers_cfg, model_cfg, config_path)
  return _load_tensors(source, tensors, names, model_cfg, problems)


def load_state_dict(state_dict: Mapping[str, Any], model_cfg: Any, source: str = "state_dict") -> dict[str, Any]:
  """An in-memory diffusers state dict (torch tensors or numpy arrays, e.g. ``AutoencoderKL.state_dict()``)
  -> our parameter tree; as strict as :func:`load` (``source`` names it in errors)."""
  tensors, names = _renamed(source, ((name, _to_numpy(value)) for name, value in state_dict.items()))
  return _load_tensors(source, tensors, names, model_cfg)


# ------------------------------------------------------------------------------------------ writing
def to_diffusers_tensors(params: Any, model_cfg: Any) -> dict[str, np.ndarray]:
  """Our parameter tree -> {diffusers name: float32 array} (current names); names and shapes checked."""
  cfg = vae.config_from_dict(model_cfg)
  flat = strict.flatten(params)
  abstract = _our_shapes(cfg)
  missing = sorted(set(abstract) - set(flat))
  unexpected = sorted(set(flat) - set(abstract))
  mismatched = [f"{name}: shape {tuple(np.shape(flat[name]))} != expected {shape}"
                for name, shape in abstract.items() if name in flat and tuple(np.shape(flat[name])) != shape]
  if missing or unexpected or mismatched:
    raise strict.StrictLoadError("params", missing=missing, unexpected=unexpected, mismatched=mismatched)
  return {e.name: np.ascontiguousarray(_to_diffusers(e.kind, np.asarray(flat[e.ours], np.float32)))
          for e in layout(cfg)}


def diffusers_config(model_cfg: Any, sample_size: int | None = None) -> dict[str, Any]:
  """config.json contents for diffusers' ``AutoencoderKL`` with this architecture."""
  cfg = vae.config_from_dict(model_cfg)
  if not cfg.double_z:
    raise ValueError("model config double_z=False has no diffusers AutoencoderKL equivalent (always double_z)")
  n = len(cfg.block_out_channels)
  if sample_size is None:
    sample_size = int(model_cfg["image_size"]) if not isinstance(model_cfg, vae.VAEConfig) else 512
  return {
      "_class_name": "AutoencoderKL",
      "in_channels": cfg.in_channels,
      "out_channels": cfg.out_channels,
      "down_block_types": ["DownEncoderBlock2D"] * n,
      "up_block_types": ["UpDecoderBlock2D"] * n,
      "block_out_channels": list(cfg.block_out_channels),
      "layers_per_block": cfg.layers_per_block,
      "act_fn": "silu",
      "latent_channels": cfg.latent_channels,
      "norm_num_groups": cfg.norm_num_groups,
      "sample_size": sample_size,
      "scaling_factor": cfg.scaling_factor,
      "shift_factor": float(cfg.shift_factor) if cfg.shift_factor else None,
      "latents_mean": None,
      "latents_std": None,
      "force_upcast": True,
      "use_quant_conv": cfg.use_quant_conv,
      "use_post_quant_conv": cfg.use_post_quant_conv,
      "mid_block_add_attention": cfg.mid_block_add_attention,
  }


def export(params: Any, model_cfg: Any, out_dir: str | os.PathLike) -> str:
  """Writes ``diffusion_pytorch_model.safetensors`` (float32) and ``config.json`` to ``out_dir``;
  ``diffusers.AutoencoderKL.from_pretrained(out_dir)`` loads it and :func:`load` reads it back bit-exactly."""
  out_dir = os.fspath(out_dir)
  tensors = to_diffusers_tensors(params, model_cfg)
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, WEIGHTS_NAME), metadata={"format": "pt"})
  with open(os.path.join(out_dir, CONFIG_NAME), "w") as f:
    json.dump(diffusers_config(model_cfg), f, indent=2)
  return out_dir
