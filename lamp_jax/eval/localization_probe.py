"""Can an image encoder trained from scratch learn to find an object in the built-in benchmark's front camera?

  python -m lamp_jax.eval.localization_probe [--encoder=siglip|vlm|film_cnn|cnn] [--readout=attention] \
      [--task=single|named] [--steps=1000] [--stem=patch] [--posemb=learn] [--pretrain-steps=0] [--keypoints=K]

A supervised probe, separate from policy training. It renders scenes of the tabletop4 pick-and-place families
(seeds from ``PROBE_SEED_OFFSET``, disjoint from the demonstration and evaluation seeds), labels each with the
named object's position in the front camera (normalised (u, v) of ``lamp_jax.specs``' UVD convention: the
object's centre projected with the camera model of ``lamp_jax.sim.cameras``), and trains encoder + readout to
regress (u, v) with a mean squared error. It prints JSON: the held-out RMSE in pixels at every evaluation, next
to the RMSE of the mean predictor (a model that has learned nothing reaches exactly that).

Why: the policies of ``configs/sim.py`` fail the pick-and-place families while ignoring the front camera
(``lamp_jax.eval.input_reliance``). This probe isolates the perception half: if the encoder cannot localise the
object even under direct supervision within the steps the policy trains, behaviour cloning cannot either.

Encoders: 'siglip' — the SigLIP tower of ``lamp_config.model_config('sim')`` (no instruction); 'vlm' — the whole sim
PaliGemma (SigLIP + Gemma prefix with the instruction tokens, as the policy sees them); 'film_cnn' — the
instruction-FiLM-conditioned CNN prefix encoder of ``vlm.kind='film_cnn'`` (``lamp_jax.models.film_cnn``, its
prefix tokens with the instruction, as the policy sees them; ``--keypoints`` spatial-softmax keypoints per image);
'cnn' — three 3x3 stride-2 convolutions with ReLU (a reference point, not part of any model here).
Readouts over the encoder's tokens: 'mean' (average), 'attention' (one learned query, as a MAP head or the
Action Expert's cross-attention reads the prefix), 'flatten' (a dense layer on all tokens: position-specific),
'text_attention' (the query is computed from the instruction: a learned embedding of its word tokens, flattened
in order, through an MLP — the most direct way to bind a colour word to an image token; for 'siglip' / 'cnn').
Dense pretraining (``--pretrain-steps``, 'siglip' / 'vlm'): before the probe, the SigLIP tower learns to classify
every patch token as empty or as the (colour, shape) of the object whose centre projects into it — free labels
from the simulator, a stand-in for the detection / segmentation tasks of PaliGemma's pretraining. The probe then
starts from that tower; the JSON reports the tower's held-out token accuracy.
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
ENCODERS = ("siglip", "vlm", "film_cnn", "cnn")
READOUTS = ("mean", "attention", "flatten", "text_attention", "keypoint", "heatmap")
TASKS = ("single", "named")
SHAPES = ("cube", "cylinder", "plate")  # tasks.shape_of names
MAX_WORDS = 12  # instruction token budget (configs/sim.py)
MAX_OBJECTS = 6


def render_probe_data(num_scenes: int, image_size: int, task: str, seed_offset: int = PROBE_SEED_OFFSET,
                      progress: bool = True) -> dict[str, Any]:
  """Renders ``num_scenes`` reset scenes. Returns images uint8[N, H, W, 3] (front camera), uv float32[N, 2]
  (the named object's normalised image position), instructions list[str], rgba float32[N, 4] (its colour),
  objects float32[N, MAX_OBJECTS, 4]: (u, v, colour index in ``tasks.COLORS``, shape index in ``SHAPES``) of every
  object on the table (rows of u = -1 pad)."""
  from lamp_jax.sim import env as env_lib, tasks  # pylint: disable=g-import-not-at-top

  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  env = env_lib.TabletopEnv(image_size=image_size, cameras=("front",))
  colour_index = {tuple(np.round(v, 4)): i for i, v in enumerate(tasks.COLORS.values())}
  images, uv, texts, rgba, objects = [], [], [], [], []
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
    rows = [(*env.camera("front").project(env.body_pos(name))[:2],
             colour_index[tuple(np.round(instance.colors[name], 4))], SHAPES.index(tasks.shape_of(name)))
            for name in instance.object_poses]
    objects.append(rows + [(-1.0, -1.0, 0, 0)] * (MAX_OBJECTS - len(rows)))
  env.close()
  return {"images": np.stack(images), "uv": np.asarray(uv, np.float32), "instructions": texts,
          "rgba": np.asarray(rgba, np.float32), "objects": np.asarray(objects, np.float32)}


def dense_labels(objects: np.ndarray, grid: int) -> np.ndarray:
  """Per-token classes int32[N, grid * grid] (row-major, as SigLIP's patches) from ``objects`` float32[N, M, 4]:
  0 = no object centre in the patch, else 1 + colour * len(SHAPES) + shape of the object whose centre it holds."""
  labels = np.zeros((objects.shape[0], grid * grid), np.int32)
  for i, rows in enumerate(objects):
    for u, v, colour, shape in rows:
      if u < 0:
        continue
      col, row = min(int(u * grid), grid - 1), min(int(v * grid), grid - 1)
      labels[i, row * grid + col] = 1 + int(colour) * len(SHAPES) + int(shape)
  return labels


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
  vlm_config: Any = None  # paligemma.PaliGemmaConfig for 'siglip' / 'vlm'; film_cnn.FiLMCNNConfig for 'film_cnn'
  vocab_size: int = 64  # word ids of the instruction ('text_attention')

  @nn.compact
  def __call__(self, images, tokens, token_mask):
    from lamp_jax.models import film_cnn, paligemma, siglip  # pylint: disable=g-import-not-at-top

    if self.readout == "text_attention" and self.encoder in ("vlm", "film_cnn"):
      raise ValueError("readout 'text_attention' is for --encoder=siglip / cnn (the VLM and the FiLM-CNN read the "
                       "instruction themselves)")
    if self.readout in ("keypoint", "heatmap") and (self.encoder != "film_cnn" or not self.vlm_config.keypoints):
      raise ValueError(f"readout {self.readout!r} reads the first spatial-softmax keypoint of --encoder=film_cnn "
                       "(needs --keypoints >= 1)")
    if self.encoder == "cnn":
      h = CNNEncoder(name="cnn")(images)
    elif self.encoder == "siglip":
      h = siglip.SigLIP(self.vlm_config.vision, name="siglip")(images)
    else:
      encoder = (film_cnn.FiLMCNNEncoder(self.vlm_config, name="vlm") if self.encoder == "film_cnn"
                 else paligemma.PaliGemma(self.vlm_config, name="vlm"))
      out = encoder(images[:, None], jnp.ones((images.shape[0], 1), bool), tokens, token_mask)
      if self.readout in ("keypoint", "heatmap"):
        # (u, v) of keypoint 0 and its logits float32[B, h * w] over the feature map.
        return out["keypoints"][:, 0, 0], out["keypoint_logits"][:, 0, ..., 0].reshape(images.shape[0], -1)
      h = jnp.where(out["prefix_mask"][..., None], out["last_hidden"], 0.0)
    h = h.astype(jnp.float32)
    if self.readout == "mean":
      pooled = h.mean(axis=1)
    elif self.readout == "attention":
      query = self.param("query", nn.initializers.normal(0.02), (1, 1, h.shape[-1]))
      pooled = nn.MultiHeadDotProductAttention(num_heads=2, name="attention_pool")(
          jnp.broadcast_to(query, (h.shape[0], 1, h.shape[-1])), h)[:, 0]
    elif self.readout == "text_attention":
      words = nn.Embed(self.vocab_size, 64, name="word_embedding")(tokens) * token_mask[..., None]
      query = nn.Dense(h.shape[-1])(nn.gelu(nn.Dense(256)(words.reshape(words.shape[0], -1))))[:, None]
      pooled = nn.MultiHeadDotProductAttention(num_heads=2, name="attention_pool")(query, h)[:, 0]
    else:
      pooled = h.reshape(h.shape[0], -1)
    return nn.Dense(2)(nn.gelu(nn.Dense(128)(pooled)))


def _film_config(image_size: int, film_overrides: dict | None):
  """The FiLM-CNN encoder of ``lamp_config.model_config('sim')`` with vlm.kind='film_cnn', one camera."""
  from lamp_jax.models import film_cnn, lamp_config  # pylint: disable=g-import-not-at-top
  from lamp_jax.sim import tasks  # pylint: disable=g-import-not-at-top

  cfg = lamp_config.model_config("sim").vlm
  cfg.vocab_size = len(tasks.INSTRUCTION_WORDS) + 8
  cfg.image_size = image_size
  for key, value in (film_overrides or {}).items():
    cfg.film_cnn[key] = value
  return film_cnn.config_from_dict(cfg, max_text_len=MAX_WORDS, num_cameras=1)


def _vlm_config(stem: str, posemb: str, vision_overrides: dict | None):
  from lamp_jax.models import lamp_config, paligemma  # pylint: disable=g-import-not-at-top
  from lamp_jax.sim import tasks  # pylint: disable=g-import-not-at-top

  cfg = lamp_config.model_config("sim").vlm
  cfg.vocab_size = len(tasks.INSTRUCTION_WORDS) + 8
  cfg.vision_overrides.stem = stem
  cfg.vision_overrides.posemb = posemb
  for key, value in (vision_overrides or {}).items():
    cfg.vision_overrides[key] = value
  return paligemma.config_from_dict(cfg)


def _adamw(lr: float, steps: int) -> optax.GradientTransformation:
  """AdamW with 50 warmup steps (at most half the steps) and a cosine decay to 1 % of ``lr``."""
  return optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 2), steps, lr * 0.01),
                     weight_decay=1e-4)


class TokenClassifier(nn.Module):
  """SigLIP tower -> per-token logits float32[B, N, 1 + colours * shapes] (dense pretraining)."""

  vlm_config: Any

  @nn.compact
  def __call__(self, images):
    from lamp_jax.models import siglip  # pylint: disable=g-import-not-at-top
    from lamp_jax.sim import tasks  # pylint: disable=g-import-not-at-top

    h = siglip.SigLIP(self.vlm_config.vision, name="img")(images)
    return nn.Dense(1 + len(tasks.COLORS) * len(SHAPES), name="classes")(h.astype(jnp.float32))


def pretrain_tower(data: dict, vlm_config, *, steps: int, num_heldout: int, batch_size: int = 32, lr: float = 1e-3,
                   seed: int = 0, progress: bool = True) -> tuple[Any, dict]:
  """Dense pretraining of the SigLIP tower on ``data['objects']`` (:func:`dense_labels`): per-token cross-entropy,
  empty tokens weighted 0.1 (about 60 of 64 tokens are empty). Returns (the tower's params, dict(steps,
  heldout_object_token_accuracy, heldout_empty_token_accuracy))."""
  images = data["images"].astype(np.float32) / 127.5 - 1.0
  grid = vlm_config.vision.image_size // vlm_config.vision.patch_size
  labels = dense_labels(data["objects"], grid)
  num_train = len(images) - num_heldout
  model = TokenClassifier(vlm_config)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), images[:2]))  # jitted: op by op compiles each op
  optimizer = _adamw(lr, steps)
  opt_state = jax.jit(optimizer.init)(params)

  def loss_fn(p, x, y):
    ce = optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y)
    weights = jnp.where(y == 0, 0.1, 1.0)
    return (ce * weights).sum() / weights.sum()

  @jax.jit
  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed + 1)
  for _ in tqdm.trange(steps, desc="dense pretraining", disable=not progress, leave=False):
    idx = rng.integers(0, num_train, batch_size)
    params, opt_state, _ = train_step(params, opt_state, images[idx], labels[idx])
  predict = jax.jit(model.apply)
  predicted = np.concatenate([np.asarray(predict(params, images[i:i + 100])).argmax(-1)
                              for i in range(num_train, len(images), 100)])
  truth = labels[num_train:]
  occupied = truth > 0
  return params["params"]["img"], {
      "steps": steps, "heldout_object_token_accuracy": round(float((predicted == truth)[occupied].mean()), 4),
      "heldout_empty_token_accuracy": round(float((predicted == truth)[~occupied].mean()), 4)}


def run_probe(data: dict, *, encoder: str = "siglip", readout: str = "attention", steps: int = 1000,
              num_heldout: int = 500, batch_size: int = 32, lr: float = 1e-3, eval_every: int = 100,
              stem: str = "patch", posemb: str = "learn", vision_overrides: dict | None = None, seed: int = 0,
              pretrain_steps: int = 0, film_overrides: dict | None = None, progress: bool = True) -> dict:
  """Trains the probe on ``data`` (from :func:`render_probe_data`; the last ``num_heldout`` scenes are held
  out), after ``pretrain_steps`` of :func:`pretrain_tower` when > 0. Returns dict(curve=[{step,
  heldout_rmse_px, train_mse}], mean_predictor_rmse_px, final_heldout_rmse_px, ...). Optimiser: ``_adamw``."""
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
  tokens, token_mask = tokenizer_lib.tokenize_prompts(words, data["instructions"], MAX_WORDS)
  size = images.shape[1]
  if encoder == "cnn":
    vlm_config = None
  elif encoder == "film_cnn":
    vlm_config = _film_config(size, film_overrides)
  else:
    vlm_config = _vlm_config(stem, posemb, dict(vision_overrides or {}, image_size=size))
  model = LocalisationProbe(encoder, readout, vlm_config, vocab_size=len(tasks.INSTRUCTION_WORDS) + 8)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(seed), images[:2], tokens[:2], token_mask[:2]))
  pretraining = None
  if pretrain_steps:
    if encoder in ("cnn", "film_cnn"):
      raise ValueError("pretrain_steps needs the SigLIP tower (encoder 'siglip' or 'vlm')")
    tower, pretraining = pretrain_tower(data, vlm_config, steps=pretrain_steps, num_heldout=num_heldout,
                                        batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    if encoder == "siglip":
      params["params"]["siglip"] = tower
    else:
      params["params"]["vlm"]["img"] = tower
  optimizer = _adamw(lr, steps)
  opt_state = jax.jit(optimizer.init)(params)

  def loss_fn(p, x, t, m, y):
    if readout not in ("keypoint", "heatmap"):
      return jnp.mean((model.apply(p, x, t, m) - y) ** 2)
    uv_pred, logits = model.apply(p, x, t, m)
    if readout == "keypoint":  # regression through the spatial softmax
      return jnp.mean((uv_pred - y) ** 2)
    side = int(round(logits.shape[-1] ** 0.5))  # cross-entropy against the feature-map cell holding (u, v)
    cell = jnp.clip((y * side).astype(jnp.int32), 0, side - 1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, cell[:, 1] * side + cell[:, 0]).mean()

  @jax.jit
  def train_step(params, opt_state, x, t, m, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, t, m, y)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  predict = jax.jit(lambda *args: model.apply(*args)[0] if readout in ("keypoint", "heatmap") else
                    model.apply(*args))
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
          "pretraining": pretraining, "film_overrides": dict(film_overrides or {}),
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
  p.add_argument("--pretrain-steps", type=int, default=0, help="dense pretraining of the SigLIP tower first (0: none)")
  p.add_argument("--keypoints", type=int, default=None, help="film_cnn: spatial-softmax keypoints per image "
                 "(vlm.film_cnn.keypoints; default: the model config's)")
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
                     pretrain_steps=args.pretrain_steps, progress=not args.no_progress,
                     film_overrides=None if args.keypoints is None else {"keypoints": args.keypoints})
  result["task"] = args.task
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
