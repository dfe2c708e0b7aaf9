"""Can an image encoder trained from scratch learn to find an object in the built-in benchmark's front camera?

  python -m lamp_jax.eval.localization_probe [--encoder=siglip] [--readout=attention] [--task=single] \
      [--steps=1000] [--stem=patch] [--posemb=learn]

A supervised probe, separate from policy training. It renders scenes of the tabletop4 pick-and-place families
(seeds from ``PROBE_SEED_OFFSET``, disjoint from the demonstration and evaluation seeds), labels each with the
named object's position in the front camera (normalised (u, v) of ``lamp_jax.specs``' UVD convention: the
object's centre projected with the camera model of ``lamp_jax.sim.cameras``), and trains encoder + readout to
regress (u, v) with a mean squared error. It prints JSON: the held-out RMSE in pixels at every evaluation, next
to the RMSE of the mean predictor (a model that has learned nothing reaches exactly that).

Why: the policies of ``configs/sim.py`` fail the pick-and-place families while ignoring the front camera
(``lamp_jax.eval.input_reliance``). This probe isolates the perception half: if the encoder cannot localise the
object even under direct supervision within the steps the policy trains, behaviour cloning cannot either.

Encoders: 'siglip' — the SigLIP tower of ``lamp.model_config('sim')`` (no instruction); 'vlm' — the whole sim
PaliGemma (SigLIP + Gemma prefix with the instruction tokens, as the policy sees them); 'cnn' — three 3x3
stride-2 convolutions with ReLU (a reference point, not part of any model here).
Readouts over the encoder's tokens: 'mean' (average), 'attention' (one learned query, as a MAP head or the
Action Expert's cross-attention reads the prefix), 'flatten' (a dense layer on all tokens: position-specific).
Tasks: 'single' — only the named object on the table (localisation alone); 'named' — the full scene, where the
instruction names one of several objects (binding + localisation; needs --encoder=vlm to be solvable).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

PROBE_SEED_OFFSET = 9_000_000  # tasks.EVAL_SEED_OFFSET and the demonstration seeds lie far below
FAMILIES = ("put_on_plate", "stack")
ENCODERS, READOUTS, TASKS = ("siglip", "vlm", "cnn"), ("mean", "attention", "flatten"), ("single", "named")


def render_probe_data(num_scenes: int, image_size: int, task: str, seed_offset: int = PROBE_SEED_OFFSET,
                      progress: bool = True) -> dict[str, Any]:
  """Renders ``num_scenes`` reset scenes. Returns images uint8[N, H, W, 3] (front camera), uv float32[N, 2]
  (the named object's normalised image position), instructions list[str], rgba float32[N, 4] (its colour)."""
  from lamp_jax.sim import env as env_lib, tasks  # pylint: disable=g-import-not-at-top

  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  env = env_lib.TabletopEnv(image_size=image_size, cameras=("front",))
  images, uv, texts, rgba = [], [], [], []
  for i in tqdm.trange(num_scenes, desc="render probe scenes", disable=not progress, leave=False):
    instance = tasks.FAMILIES[FAMILIES[i % len(FAMILIES)]].sample(np.random.default_rng(seed_offset + i))
    target = instance.params["object"]
    if task == "single":  # every other object stays parked off the table
      instance = dataclasses.replace(instance, object_poses={target: instance.object_poses[target]})
    observation = env.reset(instance)
    images.append(observation["image_0"])
    uv.append(env.camera("front").project(env.body_pos(target))[:2])
    texts.append(instance.instruction)
    rgba.append(instance.colors[target])
  env.close()
  return {"images": np.stack(images), "uv": np.asarray(uv, np.float32), "instructions": texts,
          "rgba": np.asarray(rgba, np.float32)}


class CNNEncoder(nn.Module):
  """float[B, H, W, 3] -> float[B, H/8 * W/8, 128] tokens (three 3x3 stride-2 convolutions, ReLU)."""

  @nn.compact
  def __call__(self, images):
    x = images
    for channels in (32, 64, 128):
      x = nn.relu(nn.Conv(channels, (3, 3), strides=(2, 2))(x))
    return x.reshape(x.shape[0], -1, x.shape[-1])


class LocalisationProbe(nn.Module):
  """Encoder tokens float[B, N, D] -> readout -> MLP -> (u, v) float32[B, 2]."""

  encoder: str
  readout: str
  vlm_config: Any = None  # paligemma.PaliGemmaConfig for 'siglip' / 'vlm'

  @nn.compact
  def __call__(self, images, tokens, token_mask):
    from lamp_jax.models import paligemma, siglip  # pylint: disable=g-import-not-at-top

    if self.encoder == "cnn":
      h = CNNEncoder(name="cnn")(images)
    elif self.encoder == "siglip":
      h = siglip.SigLIP(self.vlm_config.vision, name="siglip")(images)
    else:
      out = paligemma.PaliGemma(self.vlm_config, name="vlm")(
          images[:, None], jnp.ones((images.shape[0], 1), bool), tokens, token_mask)
      h = jnp.where(out["prefix_mask"][..., None], out["last_hidden"], 0.0)
    h = h.astype(jnp.float32)
    if self.readout == "mean":
      pooled = h.mean(axis=1)
    elif self.readout == "attention":
      query = self.param("query", nn.initializers.normal(0.02), (1, 1, h.shape[-1]))
      pooled = nn.MultiHeadDotProductAttention(num_heads=2, name="attention_pool")(
          jnp.broadcast_to(query, (h.shape[0], 1, h.shape[-1])), h)[:, 0]
    else:
      pooled = h.reshape(h.shape[0], -1)
    return nn.Dense(2)(nn.gelu(nn.Dense(128)(pooled)))


def _vlm_config(stem: str, posemb: str, vision_overrides: dict | None):
  from lamp_jax.models import lamp, paligemma  # pylint: disable=g-import-not-at-top
  from lamp_jax.sim import tasks  # pylint: disable=g-import-not-at-top

  cfg = lamp.model_config("sim").vlm
  cfg.vocab_size = len(tasks.INSTRUCTION_WORDS) + 8
  cfg.vision_overrides.stem = stem
  cfg.vision_overrides.posemb = posemb
  for key, value in (vision_overrides or {}).items():
    cfg.vision_overrides[key] = value
  return paligemma.config_from_dict(cfg)


def run_probe(data: dict, *, encoder: str = "siglip", readout: str = "attention", steps: int = 1000,
              num_heldout: int = 500, batch_size: int = 32, lr: float = 1e-3, eval_every: int = 100,
              stem: str = "patch", posemb: str = "learn", vision_overrides: dict | None = None, seed: int = 0,
              progress: bool = True) -> dict:
  """Trains the probe on ``data`` (from :func:`render_probe_data`; the last ``num_heldout`` scenes are held
  out). Returns dict(curve=[{step, heldout_rmse_px, train_mse}], mean_predictor_rmse_px, final_heldout_rmse_px,
  ...). AdamW with 50 warmup steps (at most half the steps) and a cosine decay to 1 % of ``lr``."""
  from lamp_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from lamp_jax.sim import tasks  # pylint: disable=g-import-not-at-top

  if encoder not in ENCODERS or readout not in READOUTS:
    raise ValueError(f"encoder must be one of {ENCODERS} and readout one of {READOUTS}, got {encoder!r}, "
                     f"{readout!r}")
  images = data["images"].astype(np.float32) / 127.5 - 1.0  # [-1, 1], as the policy's images
  uv = data["uv"]
  num_train = len(uv) - num_heldout
  if num_train < batch_size or num_heldout < 1:
    raise ValueError(f"{len(uv)} scenes leave {num_train} for training (batch {batch_size}) and {num_heldout} "
                     "held out")
  words = tokenizer_lib.WordTokenizer(tasks.INSTRUCTION_WORDS)
  tokens, token_mask = tokenizer_lib.tokenize_prompts(words, data["instructions"], 12)
  size = images.shape[1]
  vlm_config = None if encoder == "cnn" else _vlm_config(stem, posemb, dict(vision_overrides or {}, image_size=size))
  model = LocalisationProbe(encoder, readout, vlm_config)
  params = nn.unbox(model.init(jax.random.key(seed), images[:2], tokens[:2], token_mask[:2]))
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 2), steps, lr * 0.01)
  optimizer = optax.adamw(schedule, weight_decay=1e-4)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, x, t, m, y):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x, t, m) - y) ** 2))(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(model.apply)
  heldout = slice(num_train, len(uv))

  def heldout_rmse_px(params):
    preds = [np.asarray(predict(params, images[heldout][i:i + 100], tokens[heldout][i:i + 100],
                                token_mask[heldout][i:i + 100])) for i in range(0, num_heldout, 100)]
    return float(np.sqrt(((np.concatenate(preds) - uv[heldout]) ** 2).sum(-1).mean()) * size)

  rng = np.random.default_rng(seed)
  curve, start = [], time.perf_counter()
  for step in tqdm.trange(1, steps + 1, desc=f"probe {encoder}/{readout}", disable=not progress, leave=False):
    idx = rng.integers(0, num_train, batch_size)
    params, opt_state, loss = train_step(params, opt_state, images[idx], tokens[idx], token_mask[idx], uv[idx])
    if step % eval_every == 0 or step == steps:
      curve.append({"step": step, "heldout_rmse_px": round(heldout_rmse_px(params), 3),
                    "train_mse": round(float(loss), 6)})
  mean_rmse = float(np.sqrt(((uv[heldout] - uv[:num_train].mean(0)) ** 2).sum(-1).mean()) * size)
  return {"encoder": encoder, "readout": readout, "stem": stem, "posemb": posemb, "steps": steps,
          "train_scenes": num_train, "heldout_scenes": num_heldout, "image_size": size, "batch_size": batch_size,
          "lr": lr, "mean_predictor_rmse_px": round(mean_rmse, 3), "final_heldout_rmse_px": curve[-1]["heldout_rmse_px"],
          "seconds": round(time.perf_counter() - start, 1), "curve": curve}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--encoder", choices=ENCODERS, default="siglip")
  p.add_argument("--readout", choices=READOUTS, default="attention")
  p.add_argument("--task", choices=TASKS, default="single")
  p.add_argument("--stem", choices=("patch", "conv"), default="patch", help="SigLIP stem (siglip.SigLIPConfig)")
  p.add_argument("--posemb", choices=("learn", "sincos2d"), default="learn")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--scenes", type=int, default=3500, help="rendered scenes, the last --heldout held out")
  p.add_argument("--heldout", type=int, default=500)
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--no-progress", action="store_true", help="no progress bars (logs)")
  args = p.parse_args(argv)
  data = render_probe_data(args.scenes, args.image_size, args.task, progress=not args.no_progress)
  result = run_probe(data, encoder=args.encoder, readout=args.readout, steps=args.steps, num_heldout=args.heldout,
                     batch_size=args.batch_size, lr=args.lr, stem=args.stem, posemb=args.posemb, seed=args.seed,
                     progress=not args.no_progress)
  result["task"] = args.task
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
