"""LARA (latent action representation alignment): an OPTION of a flow-matching policy, shared by LaMP and π0.

The policy's action expert, in the forward pass of its flow-matching loss, has a hidden state at every block; a
linear predictor maps the hidden state of the LAST action token after block ``L - block_from_end`` (L = the
expert's depth) onto the latent action of a latent action model (LAM, lam.py) for the same observation pair
(o_t, o_{t+k}):

  hidden float[B', D] (B' = R * B with action_repeats R) ─► predictor Linear(D -> L_z * Dc) ─► p float32[B', Dz]
  o_t, o_{t+k} per LAM view ─► LAM inverse model ─► z float32[V, B, F, L_z, Dc] (PRE-quantisation), flattened
  align = 1 - mean over valid pairs (v, b, f) and repeats of cos(p[r * B + b], z[v, b, f])

Loss terms (named, losses.py; added to the policy's own terms when ``model.lara`` is set):
  align   the cosine loss above (paper: 0.01)
  lam     the LAM's own weighted loss (its ``model.lam.loss.weights``) on the same pairs (paper: 0.01): the LAM
          is trained jointly with the policy. 0 for the frozen-LAM variant.

Joint vs frozen (``model.lara.joint``): joint, the alignment's gradient reaches both the policy (through the
predictor) and the LAM (through z), and the 'lam' term keeps the LAM a dynamics model; frozen, z is a stop-gradient
target, the 'lam' term must be 0 and the configs freeze ``^lam/`` (the LAM comes from a trained LAM run through
``config.init`` kind 'checkpoint').

Parameters (policy top level): 'lam' (the LAM: image_encoder?, idm, vq, fdm) and 'lara_predictor' (kernel, bias).
Both are training-only: ``sample_actions`` never reads them. The LAM runs inside the policy WITHOUT its 'vq_state'
collection (a pure function of its parameters): no dead-code restarts or EMA codebook during joint training
(``check`` rejects ``model.lam.vq.ema``); the codebook learns from its gradient term.

Config (``add``): model.lara = {block_from_end (2 = the paper's L-2; 0 = the last block), joint}; model.lam = a LAM
model config (lam_config.py) at the policy's image size; model.loss.weights.{align, lam}.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.models import lam as lam_lib
from lamp_jax.models import lam_config
from lamp_jax.models import layers
from lamp_jax.models import losses

LOSS_TERMS = ("align", "lam")
TOP_LEVEL = ("lam", "lara_predictor")
# Stream of the LAM's draws inside the policy's loss: fold_in(rng, this).
_LAM_STREAM = 0x1A
_EPS = 1e-6


def add(model_cfg: ml_collections.ConfigDict, lam_cfg: ml_collections.ConfigDict, *, block_from_end: int = 2,
        joint: bool = True, align_weight: float = 0.01, lam_weight: float = 0.01) -> ml_collections.ConfigDict:
  """``model_cfg`` (a policy's model section) with LARA on: ``model.lara``, ``model.lam`` (``lam_cfg`` at the
  policy's image size) and the loss weights of 'align' and 'lam' (0 when not ``joint``)."""
  m = model_cfg
  m.lara = ml_collections.ConfigDict(dict(block_from_end=int(block_from_end), joint=bool(joint)))
  lam_cfg = ml_collections.ConfigDict(lam_cfg.to_dict())
  lam_cfg.image_size = int(m.image_size)
  lam_cfg.image_encoder.image_size = int(m.image_size)
  m.lam = lam_cfg
  m.loss.weights.align = float(align_weight)
  m.loss.weights.lam = float(lam_weight) if joint else 0.0
  return m


def enabled(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the policy config has LARA on (a ``model.lara`` section)."""
  return cfg.get("lara", None) is not None


def without(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``cfg`` with LARA off (a copy; ``cfg`` itself when it is off): no ``lara`` / ``lam`` sections and no 'align' /
  'lam' loss weights. The alignment is training-only, so this is the policy ``sample_actions`` runs (what an
  export keeps: its parameter tree lacks ``lam`` and ``lara_predictor``)."""
  return losses.without_sections(cfg, ("lara", "lam"), LOSS_TERMS) if enabled(cfg) else cfg


def loss_terms(cfg: ml_collections.ConfigDict, base: tuple[str, ...]) -> tuple[str, ...]:
  """The policy's declared loss terms: its own ``base`` terms, plus 'align' and 'lam' with LARA on."""
  return tuple(base) + (LOSS_TERMS if enabled(cfg) else ())


def latent_dim(cfg: ml_collections.ConfigDict) -> int:
  """Dz = L_z * Dc of the LAM's (flattened) latent: the predictor's output width."""
  return int(cfg.lam.vq.code_length) * int(cfg.lam.vq.code_dim)


def hidden_after(cfg: ml_collections.ConfigDict, depth: int) -> int:
  """The number of expert blocks run before the aligned hidden state: depth - ``model.lara.block_from_end``."""
  k = int(cfg.lara.block_from_end)
  if not 0 <= k < depth:
    raise ValueError(f"config field model.lara.block_from_end={k}: the action expert has {depth} blocks; give "
                     f"0 (the last block's output) .. {depth - 1}")
  return depth - k


def check(cfg: ml_collections.ConfigDict) -> None:
  """Rejects inconsistent LARA fields, naming them (called when the policy is built)."""
  if cfg.get("lam", None) is None or cfg.lam.get("name", None) != lam_config.NAME:
    raise ValueError("config field model.lara is set but model.lam is not a latent action model config "
                     f"(name {lam_config.NAME!r}; lara.add sets both)")
  lam_config.check(cfg.lam)
  if int(cfg.lam.image_size) != int(cfg.image_size):
    raise ValueError(f"config field model.lam.image_size={cfg.lam.image_size} differs from the policy's "
                     f"model.image_size={cfg.image_size}: one data pipeline feeds both at one image size")
  weights = {str(k): float(v) for k, v in cfg.loss.weights.items()}
  if not bool(cfg.lara.joint) and weights.get("lam", 0.0) > 0:
    raise ValueError("config field model.loss.weights.lam > 0 with model.lara.joint=False: the frozen-LAM variant "
                     "does not train the LAM (set the weight to 0 and freeze ^lam/)")
  if bool(cfg.lam.vq.ema) and bool(cfg.lara.joint):
    raise ValueError("config field model.lam.vq.ema=True with model.lara.joint=True: inside a policy the LAM runs "
                     "without its 'vq_state' collection, so an EMA codebook would never move; use the gradient "
                     "codebook (vq.ema=False, loss.weights.codebook > 0)")


class Predictor(nn.Module):
  """``p = W h + b``: float[B', D] -> float32[B', Dz] (the learnable projection of the policy's hidden state)."""

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden):
    return layers.DenseGeneral(self.features, ("embed", None), dtype=self.dtype, name="proj")(
        hidden.astype(self.dtype)).astype(jnp.float32)


def build(cfg: ml_collections.ConfigDict) -> tuple[nn.Module, nn.Module]:
  """(the LAM module, the predictor module) of a policy config with LARA on (assign them in the policy's setup as
  ``self.lam`` and ``self.lara_predictor``)."""
  check(cfg)
  return lam_lib.LatentActionModel(cfg.lam), Predictor(latent_dim(cfg), dtype=jnp.dtype(cfg.dtype))


def cosine_loss(prediction: jax.Array, latents: jax.Array, valid: jax.Array,
                stop_target: bool) -> tuple[jax.Array, jax.Array]:
  """(1 - mean cosine, mean cosine) between predictions and the latents of the same examples' valid pairs.

  Args:
    prediction: float32[R * B, Dz] (copy r of example b at r * B + b).
    latents: float32[V, B, F, Dz] the LAM's flattened pre-quantisation latents.
    valid: bool[V, B, F] the pairs that count (0 loss when none does).
    stop_target: no gradient to the latents (frozen LAM).
  """
  v, b, f, dz = latents.shape
  if prediction.shape[0] % b or prediction.shape[1] != dz:
    raise ValueError(f"the LARA predictor gives {prediction.shape}; expected [R * {b}, {dz}] (the LAM latent "
                     "code_length * code_dim of model.lam.vq)")
  repeats = prediction.shape[0] // b
  target = jax.lax.stop_gradient(latents) if stop_target else latents
  p = prediction.astype(jnp.float32).reshape(repeats, 1, b, 1, dz)
  z = target.astype(jnp.float32)[None]
  p = p / jnp.sqrt(jnp.sum(jnp.square(p), -1, keepdims=True) + _EPS)
  z = z / jnp.sqrt(jnp.sum(jnp.square(z), -1, keepdims=True) + _EPS)
  cos = jnp.sum(p * z, -1)  # [R, V, B, F]
  mask = jnp.broadcast_to(valid.astype(jnp.float32)[None], cos.shape)
  mean = jnp.sum(cos * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  return jnp.where(jnp.sum(mask) > 0, 1.0 - mean, 0.0), mean


def loss_values(cfg: ml_collections.ConfigDict, lam: nn.Module, predictor: nn.Module, batch: dict, rng: jax.Array,
                hidden: jax.Array | None, weights: dict) -> tuple[dict, dict]:
  """({'align': ..., 'lam': ...} of the active terms, metrics) for a policy's ``compute_loss``.

  Args:
    cfg: the policy config (LARA on).
    lam, predictor: the policy's submodules (``build``).
    batch: the specs.py batch with the LAM's future frames.
    rng: the policy's loss key (the LAM draws from fold_in(rng, _LAM_STREAM)).
    hidden: float[R * B, D] the last action token's hidden state at the aligned block (None when 'align' is off).
    weights: the policy's active weights.
  """
  values, metrics = {}, {}
  if "align" not in weights and "lam" not in weights:
    return values, metrics
  z, valid, lam_loss, lam_metrics = lam.pair_latents(batch, jax.random.fold_in(rng, _LAM_STREAM),
                                                     with_loss="lam" in weights)
  if "lam" in weights:
    values["lam"] = lam_loss
    metrics.update({f"lam/{k}" if not k.startswith("lam/") else k: v for k, v in lam_metrics.items()})
  if "align" in weights:
    if hidden is None:
      raise ValueError("config field model.loss.weights.align > 0 needs model.loss.weights.action > 0: the "
                       "alignment reads the action expert's forward pass of the action loss")
    v, b, f = valid.shape
    values["align"], metrics["lara/cosine"] = cosine_loss(
        predictor(hidden), z.reshape(v, b, f, -1), valid, stop_target=not bool(cfg.lara.joint))
    metrics["lara/valid_pairs"] = jnp.mean(valid.astype(jnp.float32))
  return values, metrics


def init_touch(cfg: ml_collections.ConfigDict, lam: nn.Module, predictor: nn.Module, batch: dict, rng: jax.Array,
               width: int) -> jax.Array:
  """Creates the LAM's and the predictor's parameters in the policy's ``init`` (returns a scalar to discard)."""
  loss = lam(batch, jax.random.fold_in(rng, _LAM_STREAM))
  return loss + jnp.sum(predictor(jnp.zeros((1, width), jnp.float32)))


def data_requirements(cfg: ml_collections.ConfigDict, base: specs.DataRequirements) -> specs.DataRequirements:
  """The policy's requirements plus the LAM's: its views among the cameras, its future frames."""
  if not enabled(cfg):
    return base
  lam_req = lam_lib.LIBRARY.data_requirements(cfg.lam)
  cameras = tuple(base.cameras) + tuple(c for c in lam_req.cameras if c not in base.cameras)
  return specs.DataRequirements(**{**base.__dict__, "cameras": cameras, "future_offsets": lam_req.future_offsets,
                                   "future_cameras": lam_req.future_cameras})


def add_dummy_future(cfg: ml_collections.ConfigDict, batch: dict, seed: int) -> dict:
  """``batch`` (a policy's dummy batch) with the LAM's views and future frames (drawn from their own stream: the
  policy's other draws are unchanged). Identity without LARA."""
  if not enabled(cfg):
    return batch
  return dummy_future(cfg, batch, seed)


def dummy_future(cfg: ml_collections.ConfigDict, batch: dict, seed: int) -> dict:
  """``batch`` with the views and future frames of the LAM config ``cfg.lam`` (random uint8 images drawn from
  their own stream of ``seed``; all pairs valid). Shared by the policy options that carry a LAM."""
  rs = np.random.RandomState(seed + 0x1A4A)
  obs = dict(batch[specs.OBSERVATION])
  b = next(iter(obs[specs.PROPRIO].shape[:1]))
  window = obs[specs.PROPRIO].shape[1]
  size, offsets = int(cfg.image_size), tuple(int(k) for k in cfg.lam.future_offsets)
  masks = dict(obs.get(specs.IMAGE_MASK, {}))
  future = {}
  for view in cfg.lam.views:
    if view not in obs:
      obs[view] = rs.randint(0, 256, (b, window, size, size, 3)).astype(np.uint8)
      masks[view] = np.ones((b, window), bool)
    future[view] = rs.randint(0, 256, (b, len(offsets), size, size, 3)).astype(np.uint8)
  obs[specs.IMAGE_MASK] = masks
  obs[specs.FUTURE] = future
  obs[specs.FUTURE_PAD_MASK] = np.ones((b, len(offsets)), bool)
  return {**batch, specs.OBSERVATION: obs}


def train_flops(cfg: ml_collections.ConfigDict, batch_size: int, weights: dict, expert_width: int) -> float:
  """Matmul FLOPs LARA adds to a train step: the LAM's train step when 'lam' is on (its encoder forward once,
  the rest 3 x forward), else its inverse model over every view's pairs (3 x forward when joint, 1 x frozen);
  the predictor (3 x forward, every repeat). 0 when neither term is on."""
  if not enabled(cfg) or (weights.get("align", 0.0) <= 0 and weights.get("lam", 0.0) <= 0):
    return 0.0
  lam = lam_lib.LIBRARY
  if weights.get("lam", 0.0) > 0:
    total = lam.analytic_flops(cfg.lam, batch_size, "train_step")
  else:
    pairs = len(cfg.lam.views) * len(cfg.lam.future_offsets)
    total = pairs * lam.analytic_flops(cfg.lam, batch_size, "encode_latent") * (3 if bool(cfg.lara.joint) else 1)
  repeats = int(cfg.loss.get("action_repeats", 1))
  return float(total + 3 * 2 * batch_size * repeats * latent_dim(cfg) * int(expert_width))
