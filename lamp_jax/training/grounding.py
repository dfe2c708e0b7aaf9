r"""Grounding stage 0: the FiLM-CNN prefix encoder learns where the instruction's objects are, before any policy
training (PaliGemma's detection pretraining in miniature, on free simulator labels).

  python -m lamp_jax.train --config=configs/sim.py ...   (runs it first when config.grounding.enabled)

Why: trained only through the policy's loss (or a coordinate regression), a from-scratch encoder does not learn to
find the object an instruction names within a CPU budget — the gradient that reaches the binding of a colour word
to a few pixels through attention or a spatial softmax is too weak (``lamp_jax.eval.localization_probe``:
regression through the encoder's own spatial-softmax keypoint stays at the mean predictor's 10.9 px for 600
steps on the 'named' task). A dense per-cell target gives every feature-map cell a gradient: the same encoder
trained with this heatmap loss reaches 1.74 px held-out (seeds 0-2: 1.61, 1.81, 1.82; mean predictor 10.96 px) in
600 steps (``python -m lamp_jax.eval.localization_probe --encoder=film_cnn --readout=heatmap --task=named
--steps=600 --keypoints=2 --seed=S``; about 50 s of training on one core).

Task: for each scene of ``lamp_jax.sim.grounding`` (instruction + one image per camera of ``model.image_keys``),
spatial-softmax keypoint r of the encoder (``film_cnn``; ``vlm.film_cnn.keypoints`` >= len(ROLES)) is trained to
point at role r ('object', 'receptacle') in every camera where that role is visible: cross-entropy between the
softmax over the keypoint's h x w logits and a bilinear soft label (the four cells around the label's (u, v)
weighted so that their expected position is exactly (u, v)). Other keypoints and the token projections are left
to the policy stages. The policy run then starts from this encoder (``config.init`` entry 'grounding', kind
'params_npz', the whole 'vlm' subtree).

Config (``config.grounding``, ``training/defaults.py``): enabled · scenes (rendered, cached) · heldout (the last
scenes, never trained on) · steps · batch_size · lr (AdamW, warmup 10 % then cosine to 1 %) · weight_decay ·
eval_every.
Outputs in ``<workdir>/grounding/``: ``encoder_params.npz`` ('/'-joined paths of the encoder's parameters) and
``result.json`` (held-out RMSE in pixels and the fraction within one feature cell, per camera and role, along
training; seconds). A finished stage 0 is reused when the command is rerun.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lamp_jax import specs
from lamp_jax import tokenizer as tokenizer_lib
from lamp_jax.models import film_cnn
from lamp_jax.models import prefix_encoder
from lamp_jax.models.weights import strict
from lamp_jax.training import trainer as trainer_lib

# The simulator camera behind each batch image key (the lamp_sim dataset's standardisation:
# image_primary <- image_0 'front', image_secondary <- image_1 'side', image_wrist <- image_2 'wrist').
SIM_CAMERA = {specs.IMAGE_PRIMARY: "front", specs.IMAGE_SECONDARY: "side", specs.IMAGE_WRIST: "wrist"}
PARAMS_FILE = "encoder_params.npz"
RESULT_FILE = "result.json"


def heatmap_targets(uv: np.ndarray | jax.Array, side: int) -> jax.Array:
  """Bilinear soft labels over a side x side grid of cell centres ((i + 0.5) / side) whose expected position is
  ``uv`` (clamped to the outermost centres at the borders).

  Args:
    uv: float[..., 2] normalised (u, v).
  Returns:
    float32[..., side * side] (row-major: v rows, u columns), summing to 1.
  """
  x = jnp.clip(jnp.asarray(uv, jnp.float32) * side - 0.5, 0.0, side - 1.0)  # continuous cell coordinates
  low = jnp.clip(jnp.floor(x), 0, max(side - 2, 0))
  frac = x - low
  cells = jnp.arange(side, dtype=jnp.float32)
  # Per axis: weight (1 - frac) on cell `low` and frac on `low + 1`.
  axis_weights = (jnp.where(cells == low[..., None], 1.0 - frac[..., None], 0.0)
                  + jnp.where(cells == low[..., None] + 1, frac[..., None], 0.0))  # [..., 2, side]
  weights = axis_weights[..., 1, :, None] * axis_weights[..., 0, None, :]  # [..., v, u]
  return weights.reshape(weights.shape[:-2] + (side * side,))


def expected_uv(logits: jax.Array) -> jax.Array:
  """Expected (u, v) of the softmax over row-major cells: float[..., side * side] -> float32[..., 2]."""
  side = int(round(logits.shape[-1] ** 0.5))
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).reshape(logits.shape[:-1] + (side, side))
  centres = (jnp.arange(side, dtype=jnp.float32) + 0.5) / side
  return jnp.stack([(probs.sum(-2) * centres).sum(-1), (probs.sum(-1) * centres).sum(-1)], axis=-1)


def role_logits(out: dict, num_roles: int) -> jax.Array:
  """The encoder output's keypoint logits of the first ``num_roles`` keypoints: float32[B, C, R, h * w]."""
  logits = out["keypoint_logits"][..., :num_roles]  # [B, C, h, w, R]
  b, c, h, w, r = logits.shape
  return jnp.moveaxis(logits, -1, 2).reshape(b, c, r, h * w)


def heatmap_loss(logits: jax.Array, uv: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean soft cross-entropy over the valid (example, camera, role) entries. logits float[B, C, R, h * w]."""
  side = int(round(logits.shape[-1] ** 0.5))
  ce = -(heatmap_targets(uv, side) * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)).sum(-1)
  valid = valid.astype(jnp.float32)
  return (ce * valid).sum() / jnp.maximum(valid.sum(), 1.0)


def _encoder_config(model_cfg: ml_collections.ConfigDict, text_length: int,
                    roles: tuple[str, ...]) -> film_cnn.FiLMCNNConfig:
  if prefix_encoder.kind_of(model_cfg.vlm) != film_cnn.KIND:
    raise ValueError("config field grounding.enabled needs model.vlm.kind='film_cnn' (stage 0 trains its "
                     f"keypoints), got {prefix_encoder.kind_of(model_cfg.vlm)!r}")
  cfg = film_cnn.config_from_dict(model_cfg.vlm, text_length, len(model_cfg.image_keys))
  if cfg.keypoints < len(roles):
    raise ValueError(f"config field model.vlm.film_cnn.keypoints={cfg.keypoints}: grounding needs one keypoint per "
                     f"role {roles}")
  return cfg


def _cameras(model_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  unknown = [k for k in model_cfg.image_keys if k not in SIM_CAMERA]
  if unknown:
    raise ValueError(f"config field model.image_keys: {unknown} have no simulator camera (known: {sorted(SIM_CAMERA)})")
  return tuple(SIM_CAMERA[k] for k in model_cfg.image_keys)


_expected_uv_jit = jax.jit(expected_uv)  # evaluate() calls it on host logits; op by op it compiled each op


def evaluate(apply_fn, params, data: dict, indices: np.ndarray, image_size: int, batch_size: int = 100) -> dict:
  """Held-out accuracy: per '<camera>/<role>' the RMSE in pixels of the expected keypoint position and the
  fraction of labels whose most likely cell is within one cell of the labelled cell."""
  errors, hits = [], []
  for start in range(0, len(indices), batch_size):
    idx = indices[start:start + batch_size]
    logits = np.asarray(apply_fn(params, *_inputs(data, idx)))
    side = int(round(logits.shape[-1] ** 0.5))
    uv = data["uv"][idx]
    errors.append(np.asarray(_expected_uv_jit(logits)) - uv)
    best = logits.argmax(-1)
    cell = np.clip((uv * side).astype(int), 0, side - 1)
    hits.append((np.abs(best % side - cell[..., 0]) <= 1) & (np.abs(best // side - cell[..., 1]) <= 1))
  errors, hits = np.concatenate(errors), np.concatenate(hits)
  valid = data["valid"][indices]
  out = {}
  for j, camera in enumerate(data["cameras"]):
    for k, role in enumerate(data["roles"]):
      m = valid[:, j, k]
      if m.any():
        out[f"{camera}/{role}"] = {
            "rmse_px": round(float(np.sqrt((errors[m, j, k] ** 2).sum(-1).mean()) * image_size), 3),
            "within_one_cell": round(float(hits[m, j, k].mean()), 4), "labels": int(m.sum())}
  return out


def _inputs(data: dict, idx: np.ndarray):
  images = data["images"][idx].astype(np.float32) / 127.5 - 1.0  # [-1, 1], as LaMP._images
  return (images, np.ones(images.shape[:2], bool), data["tokens"][idx], data["token_mask"][idx])


def train_encoder(data: dict, encoder_cfg: film_cnn.FiLMCNNConfig, g: ml_collections.ConfigDict, seed: int,
                  log=print) -> tuple[dict, dict]:
  """Stage 0 on ``data`` (images uint8[N, C, H, W, 3], tokens, token_mask, uv float[N, C, R, 2], valid
  bool[N, C, R], cameras, roles (R names); the last ``g.heldout`` scenes held out). Returns (the encoder's
  parameters, result dict)."""
  n = len(data["images"])
  num_train = n - int(g.heldout)
  if num_train < int(g.batch_size) or int(g.heldout) < 1:
    raise ValueError(f"config fields grounding.scenes={n} / heldout={g.heldout} leave {num_train} training scenes "
                     f"for batch_size={g.batch_size}")
  module = film_cnn.FiLMCNNEncoder(encoder_cfg)
  # jitted: op by op, the init (and the optimizer's) compiled one small XLA program per operation and shape
  params = nn.unbox(jax.jit(module.init)(jax.random.key(seed), *_inputs(data, np.arange(2))))["params"]
  steps = int(g.steps)
  schedule = optax.warmup_cosine_decay_schedule(0.0, float(g.lr), max(1, steps // 10), steps, float(g.lr) * 0.01)
  optimizer = optax.adamw(schedule, weight_decay=float(g.weight_decay))
  opt_state = jax.jit(optimizer.init)(params)

  logits_fn = role_logits_fn(module, len(data["roles"]))

  @jax.jit
  def train_step(p, opt_state, inputs, uv, valid):
    loss, grads = jax.value_and_grad(lambda q: heatmap_loss(logits_fn(q, *inputs), uv, valid))(p)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  apply_fn = jax.jit(logits_fn)
  heldout = np.arange(num_train, n)
  rng = np.random.default_rng(seed)
  curve, start = [], time.time()
  for step in range(1, steps + 1):
    idx = rng.integers(0, num_train, int(g.batch_size))
    params, opt_state, loss = train_step(params, opt_state, _inputs(data, idx), data["uv"][idx], data["valid"][idx])
    if step % int(g.eval_every) == 0 or step == steps:
      accuracy = evaluate(apply_fn, params, data, heldout, encoder_cfg.image_size)
      curve.append({"step": step, "train_loss": round(float(loss), 4), "heldout": accuracy})
      log(f"[grounding] step {step}/{steps}: loss {float(loss):.3f}, held-out "
          + ", ".join(f"{k} {v['rmse_px']:.2f} px" for k, v in accuracy.items()))
  result = {"steps": steps, "train_scenes": num_train, "heldout_scenes": int(g.heldout),
            "seconds": round(time.time() - start, 1), "heldout": curve[-1]["heldout"], "curve": curve}
  return jax.device_get(params), result


def heldout_scenes(config: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict, load_scenes,
                   roles: tuple[str, ...]) -> tuple[dict, film_cnn.FiLMCNNConfig, np.ndarray]:
  """The labelled scenes of stage 0, tokenised (``config.grounding.scenes``), the encoder config and the indices of
  the held-out scenes (the last ``config.grounding.heldout``). ``load_scenes`` and ``roles`` as for :func:`run`."""
  g = config.grounding
  text_length = trainer_lib.text_length(config, model_cfg)
  encoder_cfg = _encoder_config(model_cfg, text_length, tuple(roles))
  cameras = _cameras(model_cfg)
  data, data_path = load_scenes(int(g.scenes), encoder_cfg.image_size, cameras, bool(config.logging.progress_bar))
  tokenizer = trainer_lib.make_tokenizer(config, model_cfg)
  data["tokens"], data["token_mask"] = tokenizer_lib.tokenize_prompts(
      tokenizer, [str(t) for t in data["instructions"]], text_length)
  data["cameras"], data["roles"], data["path"] = cameras, tuple(roles), data_path
  n = len(data["images"])
  return data, encoder_cfg, np.arange(n - int(g.heldout), n)


def role_logits_fn(module: nn.Module, num_roles: int):
  """``(params, images, image_mask, tokens, token_mask) -> float32[B, C, R, h * w]``: the encoder ``module``'s
  logits of its first ``num_roles`` keypoints (:func:`role_logits`), what stage 0 trains and evaluates."""
  def logits_fn(params, images, image_mask, tokens, token_mask):
    return role_logits(module.apply({"params": params}, images, image_mask, tokens, token_mask), num_roles)
  return logits_fn


def load_params(path: str) -> dict:
  """Stage 0's encoder parameters from ``encoder_params.npz`` ('/'-joined paths) as a nested tree."""
  with np.load(path) as flat:
    return strict.unflatten({k: flat[k] for k in flat.files})


def run(config: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict, workdir: str, load_scenes,
        roles: tuple[str, ...]) -> dict[str, Any]:
  """Stage 0 of a run (reused when ``<workdir>/grounding/`` holds a finished one).

  Args:
    config: the run config (``config.grounding``, tokenizer, seed).
    model_cfg: the model config of the run's first stage (``model.vlm``, ``model.image_keys``).
    workdir: the run's workdir; outputs go to ``<workdir>/grounding/``.
    load_scenes: ``(num_scenes, image_size, cameras, progress) -> (data, path)``, the labelled scenes (the
      simulator's ``lamp_jax.sim.grounding.load_or_render``, passed in by ``lamp_jax.experiment``: training does
      not import the simulator); data holds images, instructions, uv and valid of ``roles``.
    roles: the label roles, one keypoint each (keypoint r learns role r).
  Returns:
    dict(params_path, result).
  """
  out_dir = os.path.join(os.path.abspath(workdir), "grounding")
  params_path, result_path = os.path.join(out_dir, PARAMS_FILE), os.path.join(out_dir, RESULT_FILE)
  if os.path.exists(result_path) and os.path.exists(params_path):
    with open(result_path) as fh:
      return {"params_path": params_path, "result": json.load(fh)}
  data, encoder_cfg, _ = heldout_scenes(config, model_cfg, load_scenes, roles)
  params, result = train_encoder(data, encoder_cfg, config.grounding, seed=int(config.seed))
  result.update(data=data["path"], cameras=list(data["cameras"]), roles=list(roles))
  os.makedirs(out_dir, exist_ok=True)
  np.savez(params_path + ".partial.npz", **{k: np.asarray(v) for k, v in strict.flatten(params).items()})
  os.replace(params_path + ".partial.npz", params_path)
  with open(result_path + ".tmp", "w") as fh:
    json.dump(result, fh, indent=1)
  os.replace(result_path + ".tmp", result_path)
  return {"params_path": params_path, "result": result}
