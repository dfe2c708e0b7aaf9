"""An exported policy behind the same interface as the JAX ``CheckpointPolicy`` (and so the same server).

  policy = lamp_torch.from_pretrained("/tmp/export")           # device='cpu' | 'cuda'
  policy.reset("put the red cube on the plate")
  actions = policy({"image_0": rgb, "image_2": wrist, "state": state})  # float32[H, 7], robot units
  chunk = policy.sample_actions({"image_0": rgb, ..., "state": state, "instruction": "..."},
                                noise={"motion": m, "action": a})  # float32[B, H, 7]

A raw observation (``inputs.camera_keys`` values: uint8[h, w, 3] or uint8[B, h, w, 3]; ``state`` float32[S] or
[B, S]) becomes model inputs exactly as the JAX policy builds them: each camera resized (bilinear, half-pixel,
rounded to uint8) to the model size or zeros and masked when absent, scaled to [-1, 1]; the state normalised
with the exported statistics and mask and zero-padded to ``proprio_dim``; the instruction tokenised by the same
tokenizer code (``lamp_jax.tokenizer``, JAX-free). The model's normalised chunk is un-normalised with the same
statistics and cut to ``action_dim``. Only the current frame is used (LaMP reads the last window frame).

Imports torch, safetensors, numpy and the JAX-free lamp_jax modules ``export_format``, ``tokenizer`` and
``data.normalization`` (test: tests/test_torch_export.py checks that jax / flax / tensorflow stay unimported).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch

from lamp_jax import export_format
from lamp_jax import tokenizer as tokenizer_lib
from lamp_jax.data import normalization
from lamp_torch import config as config_lib
from lamp_torch import preprocess
from lamp_torch import registry

ALLOWED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INSTRUCTION_KEY = "instruction"


class ExportMismatchError(export_format.ExportFormatError):
  """model.safetensors does not hold exactly the tensors config.json's model needs; lists every one."""

  def __init__(self, source: str, missing=(), unexpected=(), mismatched=()):
    self.missing, self.unexpected, self.mismatched = sorted(missing), sorted(unexpected), sorted(mismatched)
    lines = [f"{source} does not match the model described by config.json (the modules are built from "
             "config.json; re-export rather than edit either file):"]
    if self.missing:
      lines.append(f"  {len(self.missing)} missing tensor(s): " + ", ".join(self.missing))
    if self.unexpected:
      lines.append(f"  {len(self.unexpected)} unexpected tensor(s): " + ", ".join(self.unexpected))
    if self.mismatched:
      lines.append(f"  {len(self.mismatched)} mismatched tensor(s): " + "; ".join(self.mismatched))
    super().__init__("\n".join(lines))


def load_state_strict(module: torch.nn.Module, path: str, device: torch.device) -> None:
  """Loads ``path`` into ``module`` keeping each tensor's stored dtype; names, shapes and dtypes checked first."""
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel

  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist (an export directory holds {export_format.MODEL_FILE})")
  try:
    tensors = load_file(path, device=str(device))
  except Exception as e:  # safetensors raises its own error types on truncated / corrupt files
    raise export_format.ExportFormatError(f"{path} cannot be read as safetensors ({type(e).__name__}: {e}); "
                                          "the file is truncated or corrupt") from e
  expected = module.state_dict()
  missing = set(expected) - set(tensors)
  unexpected = set(tensors) - set(expected)
  mismatched = []
  for name in sorted(set(expected) & set(tensors)):
    got, want = tensors[name], expected[name]
    problems = []
    if tuple(got.shape) != tuple(want.shape):
      problems.append(f"shape {tuple(got.shape)} != {tuple(want.shape)} from config.json")
    if got.dtype not in ALLOWED_DTYPES:
      problems.append(f"dtype {got.dtype} is not one of {ALLOWED_DTYPES}")
    if problems:
      mismatched.append(f"{name}: " + ", ".join(problems))
  if missing or unexpected or mismatched:
    raise ExportMismatchError(path, missing, unexpected, mismatched)
  module.load_state_dict(tensors, strict=True, assign=True)


class ExportedPolicy:
  """A policy from an export directory. ``sample_actions`` is batched; ``reset`` / ``__call__`` are the
  evaluator's and server's one-observation interface (``CheckpointPolicy``'s).

  Args:
    export_dir: directory written by ``python -m lamp_jax.export``.
    device: 'cpu', 'cuda' or a torch.device.
    seed: seed of the sampling noise (a torch.Generator on ``device``; it advances at every call).
  """

  def __init__(self, export_dir: str, device: str | torch.device = "cpu", seed: int = 0):
    self.export_dir = os.path.abspath(export_dir)
    raw = export_format.read_config(self.export_dir)
    source = os.path.join(self.export_dir, export_format.CONFIG_FILE)
    self.config = config_lib.wrap(raw, "", source)
    self.device = torch.device(device)
    self.kind = self.config["kind"]
    self.model = registry.build_model(self.config)
    load_state_strict(self.model, os.path.join(self.export_dir, export_format.MODEL_FILE), self.device)
    self.model.to(self.device).eval()
    self._setup_inputs()
    self.generator = torch.Generator(device=self.device)
    self.generator.manual_seed(int(seed))
    self._instruction: str | None = None

  def _setup_inputs(self) -> None:
    cfg = self.config
    inputs, tok = cfg["inputs"], cfg["tokenizer"]
    self.cameras = tuple(inputs["cameras"])
    self.camera_keys = {cam: inputs["camera_keys"][cam] for cam in self.cameras}
    self.image_size = tuple(int(s) for s in inputs["image_size"])
    self.resize = bool(inputs["resize"])
    self.state_key = inputs["state_key"]
    self.proprio_dim = int(inputs["proprio_dim"])
    self.state_dim = None if inputs.get("state_dim") is None else int(inputs["state_dim"])
    self.action_dim = int(cfg["action_dim"])
    self.action_horizon = int(cfg["model"]["action_horizon"])
    tok_cfg = dict(tok)
    if tok_cfg.get("kind") == "sentencepiece":
      tok_cfg["path"] = os.path.join(self.export_dir, tok["path"])
    self.tokenizer = tokenizer_lib.from_config(tok_cfg)
    self.max_len, self.truncate = int(tok["max_len"]), bool(tok.get("truncate", False))
    norm = cfg.get("normalization")
    self.stats = None
    if norm is not None:
      import json  # pylint: disable=import-outside-toplevel

      self.stats = normalization.DatasetStatistics.from_json(json.dumps(norm["statistics"]), source="export")
      self.action_mode, self.action_mask = norm["action_mode"], tuple(norm["action_mask"])
      self.proprio_mode, self.proprio_mask = norm["proprio_mode"], tuple(norm["proprio_mask"])

  @property
  def camera_map(self) -> dict[str, str]:
    """{model camera: raw observation key} of the cameras this policy reads (the server's observation spec)."""
    return {cam: key for cam, key in self.camera_keys.items() if key}

  def observation_spec(self) -> dict[str, tuple[str, tuple[int | None, ...], bool]]:
    """{raw key: (dtype, shape (None = any size), required)} of the observations this policy reads: every
    camera (exactly ``image_size`` when the export does not resize) and the state (the statistics' width)."""
    image_shape = (None, None, 3) if self.resize else self.image_size + (3,)
    spec = {key: ("uint8", image_shape, True) for key in self.camera_map.values()}
    spec[self.state_key] = ("float32", (self.state_dim,) if self.state_dim is not None else (None,), True)
    return spec

  # -- inputs ---------------------------------------------------------------------------------------------

  def _image(self, observation: Mapping[str, Any], key: str, batch: int | None):
    image = np.asarray(observation[key])
    if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3:
      raise ValueError(f"observation[{key!r}] must be uint8[h, w, 3] or uint8[B, h, w, 3], got "
                       f"{image.dtype}{list(image.shape)}")
    if (image.ndim == 4) != (batch is not None) or (batch is not None and image.shape[0] != batch):
      raise ValueError(f"observation[{key!r}] has shape {list(image.shape)}; the observation's batch is "
                       f"{'unbatched' if batch is None else batch}")
    if self.resize:
      image = preprocess.resize(image, self.image_size)
    elif tuple(image.shape[-3:-1]) != self.image_size:
      raise ValueError(f"observation[{key!r}] is {image.shape[-3]}x{image.shape[-2]}; this policy takes "
                       f"{self.image_size[0]}x{self.image_size[1]} images (config.json inputs.image_size, no "
                       "resize)")
    return image if batch is not None else image[None]

  def _proprio(self, state: np.ndarray) -> np.ndarray:
    """float32[B, S'] raw -> float32[B, proprio_dim] (``ObservationPreprocessor.proprio`` / ``_frame``)."""
    if self.stats is None:
      proprio = np.zeros((state.shape[0], self.proprio_dim), np.float32)
      n = min(state.shape[1], self.proprio_dim)
      proprio[:, :n] = state[:, :n]
      return proprio
    proprio = normalization.normalize_proprio(state, self.stats, self.proprio_mode, self.proprio_mask)
    pad = self.proprio_dim - proprio.shape[-1]
    if pad < 0:
      raise ValueError(f"observation[{self.state_key!r}] has {proprio.shape[-1]} dims > proprio_dim="
                       f"{self.proprio_dim}")
    return np.pad(proprio, ((0, 0), (0, pad)))

  def model_inputs(self, observation: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A raw (optionally batched) observation with its ``instruction`` -> the model's input tensors."""
    if self.state_key not in observation:
      raise ValueError(f"observation has no {self.state_key!r} (keys: {sorted(observation)})")
    if INSTRUCTION_KEY not in observation:
      raise ValueError(f"observation has no {INSTRUCTION_KEY!r} (the task text; reset(instruction) sets it for "
                       "__call__)")
    state = np.asarray(observation[self.state_key], np.float32)
    if state.ndim not in (1, 2):
      raise ValueError(f"observation[{self.state_key!r}] must be float32[S] or [B, S], got shape "
                       f"{list(state.shape)}")
    batch = state.shape[0] if state.ndim == 2 else None
    state = state if batch is not None else state[None]
    if self.state_dim is not None and state.shape[1] > self.state_dim:
      raise ValueError(f"observation[{self.state_key!r}] has {state.shape[1]} dims; the normalisation statistics "
                       f"have {self.state_dim} (config.json inputs.state_dim)")
    size = state.shape[0]
    images, masks = [], []
    for cam in self.cameras:
      key = self.camera_keys[cam]
      if key and observation.get(key) is not None:
        images.append(self._image(observation, key, batch))
        masks.append(np.ones((size,), bool))
      else:  # a camera this robot does not send: zeros, masked out (as the JAX policy)
        images.append(np.zeros((size,) + self.image_size + (3,), np.uint8))
        masks.append(np.zeros((size,), bool))
    instructions = observation[INSTRUCTION_KEY]
    instructions = [instructions] if isinstance(instructions, (str, bytes)) else list(instructions)
    if len(instructions) != size:
      raise ValueError(f"observation[{INSTRUCTION_KEY!r}] has {len(instructions)} entries for a batch of {size}")
    tokens, token_mask = tokenizer_lib.tokenize_prompts(self.tokenizer, instructions, self.max_len,
                                                        truncate=self.truncate)
    images = torch.from_numpy(np.stack(images, axis=1)).to(self.device)
    return {
        "images": images.to(torch.float32) / 127.5 - 1.0,
        "image_mask": torch.from_numpy(np.stack(masks, axis=1)).to(self.device),
        "tokens": torch.from_numpy(tokens).to(self.device),
        "token_mask": torch.from_numpy(token_mask).to(self.device),
        "proprio": torch.from_numpy(self._proprio(state)).to(self.device),
    }

  # -- sampling -------------------------------------------------------------------------------------------

  def draw_noise(self, batch_size: int) -> dict[str, torch.Tensor]:
    """Standard normal draws for one ``sample_actions`` call (from the policy's generator)."""
    return {name: torch.randn(shape, generator=self.generator, dtype=torch.float32, device=self.device)
            for name, shape in self.model.noise_shapes(batch_size).items()}

  def unnormalize(self, actions: np.ndarray) -> np.ndarray:
    """Normalised model actions float32[..., A] -> robot units float32[..., action_dim]."""
    if self.stats is not None:
      actions = normalization.unnormalize_actions(actions, self.stats, self.action_mode, self.action_mask)
    return np.asarray(actions[..., :self.action_dim], np.float32)

  @torch.no_grad()
  def sample_normalized(self, inputs: Mapping[str, torch.Tensor], noise: Mapping[str, Any] | None = None
                        ) -> np.ndarray:
    """The model's normalised chunk float32[B, H, A] for prepared ``inputs`` (see ``model_inputs``)."""
    noise = self.draw_noise(inputs["tokens"].shape[0]) if noise is None else dict(noise)
    return self.model.sample_actions(inputs, noise).float().cpu().numpy()

  def sample_actions(self, observation: Mapping[str, Any], noise: Mapping[str, Any] | None = None) -> np.ndarray:
    """Actions float32[B, H, action_dim] in robot units for a raw observation with its ``instruction``.

    ``noise``: the random draws to replace, ``model.noise_shapes``: LaMP {'motion': float32[B, K, T, 3] (use_motion
    models only), 'action': float32[B, H, A]}, π0 {'action'}, LAFP {'latent': float32[B, L_z, Dc]}; the JAX
    ``sample_actions(noise=...)`` of each model takes the same dict.
    """
    return self.unnormalize(self.sample_normalized(self.model_inputs(observation), noise))

  # -- the evaluator / server interface -------------------------------------------------------------------

  def reset(self, instruction: str) -> None:
    tokenizer_lib.tokenize_prompts(self.tokenizer, [instruction], self.max_len, truncate=self.truncate)
    self._instruction = instruction

  def __call__(self, observation: Mapping[str, Any]) -> np.ndarray:
    """One unbatched observation -> float32[H, action_dim] (``reset(instruction)`` first)."""
    if self._instruction is None:
      raise RuntimeError("ExportedPolicy.reset(instruction) must be called before the first observation")
    return self.sample_actions({**observation, INSTRUCTION_KEY: self._instruction})[0]


def from_pretrained(export_dir: str, device: str | torch.device = "cpu", seed: int = 0) -> ExportedPolicy:
  """The policy of an export directory (``python -m lamp_jax.export --out=DIR``)."""
  return ExportedPolicy(export_dir, device=device, seed=seed)
