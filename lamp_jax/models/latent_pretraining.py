"""Latent-action pretraining (UniVLA / LAPA / MVP-LAM recipe): an OPTION of a policy whose VLM prefix learns to
predict a frozen latent action model's CODES before the Action Expert learns actions. Shared by LaMP (the head reads
the prefix encoder's features) and π0 (the head reads ``Pi0.encode``: the VLM's last hidden states over the prefix,
the pass whose keys / values its expert reads).

The policy's VLM (prefix encoder) reads o_t and the instruction; a small head predicts, for the pair
(o_t, o_{t+k}), the L_z codebook indices the frozen latent action model (LAM, lam.py) assigns to it:

  images, tokens ─► vlm ─► prefix float[B, P, D], prefix_mask bool[B, P]
  latent_head: L_z learned queries ─► LayerNorm ─► one multi-head cross-attention onto the LayerNorm'd
               prefix (masked by prefix_mask) ─► + queries ─► LayerNorm ─► Linear(D -> K)
               ─► logits float32[B, L_z, K]
  o_t, o_{t+k} of view ``model.lam.views[0]`` at ``model.lam.future_offsets[0]`` ─► frozen LAM
               ``encode_latent`` ─► codes int32[B, L_z] (nearest codebook entries), valid bool[B]
               (``codes='cache'``: the batch's frame_codes int32[B, L_z], frame_codes_valid bool[B] instead)
  latent_codes = mean over valid examples and the L_z tokens of -log softmax(logits)[code]

Loss term (named, losses.py; added to the policy's own terms when ``model.latent_pretraining`` is set):
  latent_codes   the cross-entropy above (weight 1 in the 'latent' stage, 0 in the 'action' stage)

Head choice: UniVLA appends the latent-action tokens to the VLM's vocabulary and predicts them autoregressively
from the VLM's last positions; LAPA does the same; MVP-LAM follows UniVLA. Here the prefix encoder is
bidirectional and has no text decoder, so a head reads it instead: L_z learned queries, one cross-attention. The
head predicts the L_z tokens in parallel (no autoregression); the LAM's tokens are independent nearest-code
assignments, so nothing is lost by not conditioning one token on the others' ground truth.

The LAM: parameters under params['lam'] (image_encoder?, idm, vq, fdm), loaded from a trained LAM run through
``config.init`` kind 'checkpoint' (``source='/'``) and frozen by the stages (``^lam/``). The codes are integers
(argmin over the codebook), so no gradient reaches the LAM through them; they are also stop-gradiented. Inside the
policy the LAM runs without its 'vq_state' collection (a pure function of its parameters).

Where the codes come from (``model.latent_pretraining.codes``):
  'on_the_fly' (default)  the frozen LAM's ``encode_latent`` in every train step, on the batch's (augmented) o_t
                          and future frame o_{t+k}: the data decodes the future frames (``data_requirements``).
  'cache'                 once per dataset: before a stage that weighs 'latent_codes' starts, the trainer asks the
                          library for the encoder (``frame_codes``: the LAM with its loaded parameters, its
                          fingerprint, the frames it reads) and builds or verifies every dataset's code cache
                          (lamp_jax/data/code_cache.py, code_cache_build.py: one pass over the training
                          episodes, frames NOT augmented); the pipeline attaches frame_codes int32[L_z] and
                          frame_codes_valid to every frame and the loss reads them: no LAM pass and no future frame
                          in the train step. The cache is keyed by dataset, info hash, episode selection and the
                          LAM's fingerprint (``lam_fingerprint``: a sha256 of its parameters, its views, offsets,
                          image size, codebook sizes, dtype and config); a cache that does not match is rebuilt at
                          the default location, and an explicit ``codes_path`` raises naming the file and field.
                          A stated difference: cached codes are those of the un-augmented frames.

Data without action labels: with the 'action' term at weight 0 (the 'latent' stage) the policy's
``data_requirements`` ask for no action chunk (``action_horizon=0``, ``actions_optional=True``), so a stage may
read an action-free dataset (``data.hide_actions``: the pipeline drops the action keys); a stage that weighs the
'action' term on such data fails the data check, naming ``data.hide_actions``.

Training-only: ``sample_actions`` never reads 'lam' or 'latent_head'; ``without`` (used by the policy's
``inference_config``) drops them, so an export keeps exactly the policy's tensors.

Config (``add``): model.latent_pretraining = {num_heads, codes}; model.lam = a LAM model config (lam_config.py) at the
policy's image size; model.loss.weights.latent_codes.
"""

from __future__ import annotations

import hashlib
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from lamp_jax import specs
from lamp_jax.models import interface
from lamp_jax.models import lam as lam_lib
from lamp_jax.models import lam_config
from lamp_jax.models import lara
from lamp_jax.models import layers
from lamp_jax.models import losses

LOSS_TERM = "latent_codes"
LOSS_TERMS = (LOSS_TERM,)
TOP_LEVEL = ("lam", "latent_head")
# Stream of the LAM's draws inside the policy's loss: fold_in(rng, this).
_LAM_STREAM = 0x1B
# Where the codes come from (model.latent_pretraining.codes): the frozen LAM in every step, or the dataset's cache.
ON_THE_FLY, CACHE = "on_the_fly", "cache"
CODES = (ON_THE_FLY, CACHE)
# Frames per call of the LAM while a code cache is built.
CACHE_BATCH = 64


def add(model_cfg: ml_collections.ConfigDict, lam_cfg: ml_collections.ConfigDict, *, num_heads: int = 1,
        weight: float = 1.0, codes: str = ON_THE_FLY) -> ml_collections.ConfigDict:
  """``model_cfg`` (a policy's model section) with latent-action pretraining: ``model.latent_pretraining``
  ({num_heads, codes}), ``model.lam`` (``lam_cfg`` at the policy's image size) and the weight of 'latent_codes'."""
  m = model_cfg
  if lara.enabled(m):
    raise ValueError("config field model.lara is set: LARA and latent-action pretraining both own model.lam; "
                     "use one of them")
  m.latent_pretraining = ml_collections.ConfigDict(dict(num_heads=int(num_heads), codes=str(codes)))
  lam_cfg = ml_collections.ConfigDict(lam_cfg.to_dict())
  lam_cfg.image_size = int(m.image_size)
  lam_cfg.image_encoder.image_size = int(m.image_size)
  m.lam = lam_cfg
  m.loss.weights[LOSS_TERM] = float(weight)
  return m


def enabled(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the policy config has latent-action pretraining (a ``model.latent_pretraining`` section)."""
  return cfg.get("latent_pretraining", None) is not None


def reads_cached_codes(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the codes come from the dataset's code cache (``model.latent_pretraining.codes='cache'``): the batch
  carries them (``frame_codes``, ``frame_codes_valid``) and the LAM does not run in the train step."""
  return enabled(cfg) and str(cfg.latent_pretraining.get("codes", ON_THE_FLY)) == CACHE


def without(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``cfg`` without the option (a copy; ``cfg`` itself when it is off): no ``latent_pretraining`` / ``lam``
  sections and no 'latent_codes' weight: the policy ``sample_actions`` runs (no 'lam' / 'latent_head')."""
  return losses.without_sections(cfg, ("latent_pretraining", "lam"), (LOSS_TERM,)) if enabled(cfg) else cfg


def loss_terms(cfg: ml_collections.ConfigDict, base: tuple[str, ...]) -> tuple[str, ...]:
  """The policy's declared loss terms: its ``base`` terms, plus 'latent_codes' with the option on."""
  return tuple(base) + (LOSS_TERMS if enabled(cfg) else ())


def check(cfg: ml_collections.ConfigDict, width: int) -> None:
  """Rejects inconsistent fields, naming them (called when the policy is built)."""
  if lara.enabled(cfg):
    raise ValueError("config fields model.lara and model.latent_pretraining are both set: they share model.lam; "
                     "use one of them")
  if cfg.get("lam", None) is None or cfg.lam.get("name", None) != lam_config.NAME:
    raise ValueError("config field model.latent_pretraining is set but model.lam is not a latent action model "
                     f"config (name {lam_config.NAME!r}; latent_pretraining.add sets both)")
  lam_config.check(cfg.lam)
  if int(cfg.lam.image_size) != int(cfg.image_size):
    raise ValueError(f"config field model.lam.image_size={cfg.lam.image_size} differs from the policy's "
                     f"model.image_size={cfg.image_size}: one data pipeline feeds both at one image size")
  codes = str(cfg.latent_pretraining.get("codes", ON_THE_FLY))
  if codes not in CODES:
    raise ValueError(f"config field model.latent_pretraining.codes={codes!r} is not one of {CODES}")
  heads = int(cfg.latent_pretraining.num_heads)
  if heads < 1 or width % heads:
    raise ValueError(f"config field model.latent_pretraining.num_heads={heads} must be >= 1 and divide the prefix "
                     f"width {width}")


class LatentCodeHead(nn.Module):
  """(prefix float[B, P, D], prefix_mask bool[B, P]) -> code logits float32[B, L_z, K] (module docstring)."""

  code_length: int
  num_codes: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, prefix, prefix_mask):
    b, _, width = prefix.shape
    head_dim = width // self.num_heads
    heads = (self.num_heads, head_dim)
    queries = self.param("queries", layers.param_with_axes(nn.initializers.normal(0.02), (None, "embed")),
                         (self.code_length, width), jnp.float32)
    x = jnp.broadcast_to(queries.astype(self.dtype), (b, self.code_length, width))
    q_in = layers.LayerNorm(dtype=self.dtype, name="query_norm")(x)
    context = layers.LayerNorm(dtype=self.dtype, name="prefix_norm")(prefix.astype(self.dtype))
    q = layers.DenseGeneral(heads, ("embed", "q_heads", "head_dim"), dtype=self.dtype, name="query")(q_in)
    k = layers.DenseGeneral(heads, ("embed", "kv_heads", "head_dim"), dtype=self.dtype, name="key")(context)
    v = layers.DenseGeneral(heads, ("embed", "kv_heads", "head_dim"), dtype=self.dtype, name="value")(context)
    mask = jnp.broadcast_to(prefix_mask.astype(bool)[:, None, :], (b, self.code_length, prefix.shape[1]))
    attended = layers.plain_dot_product_attention(q, k, v, mask)
    x = x + layers.DenseGeneral(width, ("q_heads", "head_dim", "embed"), axis=(-2, -1), dtype=self.dtype,
                                name="out")(attended)
    x = layers.LayerNorm(dtype=self.dtype, name="out_norm")(x)
    logits = layers.DenseGeneral(self.num_codes, ("embed", None), dtype=self.dtype, name="logits")(x)
    return logits.astype(jnp.float32)


def build(cfg: ml_collections.ConfigDict, width: int) -> tuple[nn.Module, nn.Module]:
  """(the LAM module, the head module) of a policy config with the option on (assign them in the policy's setup
  as ``self.lam`` and ``self.latent_head``); ``width`` is the prefix width D."""
  check(cfg, width)
  head = LatentCodeHead(code_length=int(cfg.lam.vq.code_length), num_codes=int(cfg.lam.vq.num_codes),
                        num_heads=int(cfg.latent_pretraining.num_heads), dtype=jnp.dtype(cfg.dtype))
  return lam_lib.LatentActionModel(cfg.lam), head


def code_cross_entropy(logits: jax.Array, codes: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy, top-1 accuracy) of code logits against the LAM's codes over the valid examples.

  Args:
    logits: float32[B, L_z, K].
    codes: int32[B, L_z] codebook indices.
    valid: bool[B] the examples whose pair counts (0 loss and accuracy when none does).
  """
  b, length, _ = logits.shape
  if tuple(codes.shape) != (b, length):
    raise ValueError(f"the LAM's codes have shape {tuple(codes.shape)}; the latent head predicts {(b, length)} "
                     "(model.lam.vq.code_length tokens per example)")
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_p, codes.astype(jnp.int32)[..., None], axis=-1)[..., 0]  # [B, L_z]
  hit = (jnp.argmax(logits, -1) == codes).astype(jnp.float32)
  mask = jnp.broadcast_to(valid.astype(jnp.float32)[:, None], (b, length))
  count = jnp.maximum(jnp.sum(mask), 1.0)
  return -jnp.sum(picked * mask) / count, jnp.sum(hit * mask) / count


def lam_codes(lam: nn.Module, batch: dict, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(codes int32[B, L_z], valid bool[B]) of the frozen LAM for view ``model.lam.views[0]`` and the first offset
  (``encode_latent``; the key is fold_in(rng, _LAM_STREAM), as in the policy's loss)."""
  out = lam.encode_latent(batch, jax.random.fold_in(rng, _LAM_STREAM))
  return jax.lax.stop_gradient(out["codes"]), out["valid"]


def batch_codes(cfg: ml_collections.ConfigDict, batch: dict) -> tuple[jax.Array, jax.Array]:
  """(codes int32[B, L_z], valid bool[B]) the data pipeline attached from the dataset's code cache."""
  if specs.FRAME_CODES not in batch or specs.FRAME_CODES_VALID not in batch:
    raise ValueError(f"config field model.latent_pretraining.codes='{CACHE}' but the batch has no "
                     f"'{specs.FRAME_CODES}' / '{specs.FRAME_CODES_VALID}': the trainer attaches them from the code "
                     "cache (data.frame_codes, ModelLibrary.frame_codes); set codes='on_the_fly' to run the LAM")
  codes = batch[specs.FRAME_CODES]
  if codes.ndim != 2 or codes.shape[1] != int(cfg.lam.vq.code_length):
    raise ValueError(f"batch['{specs.FRAME_CODES}'] has shape {tuple(codes.shape)}; the LAM of config field model.lam "
                     f"gives int32[B, {int(cfg.lam.vq.code_length)}] (model.lam.vq.code_length)")
  return jnp.asarray(codes, jnp.int32), jnp.asarray(batch[specs.FRAME_CODES_VALID], bool)


def loss_values(cfg: ml_collections.ConfigDict, head: nn.Module, lam: nn.Module, batch: dict, rng: jax.Array,
                prefix: jax.Array, prefix_mask: jax.Array, weights: dict) -> tuple[dict, dict]:
  """({'latent_codes': ...} when its weight is on, metrics) for a policy's ``compute_loss``.

  Args:
    cfg: the policy's model config (``model.latent_pretraining.codes``: the LAM's codes or the batch's).
    head, lam: the policy's submodules (``build``).
    batch: the specs.py batch (no action keys needed) with the LAM's future frames, or with ``codes='cache'``
      the cached ``frame_codes`` int32[B, L_z] and ``frame_codes_valid`` bool[B].
    rng: the policy's loss key.
    prefix, prefix_mask: the VLM's prefix float[B, P, D] and bool[B, P].
    weights: the policy's active weights.
  """
  if LOSS_TERM not in weights:
    return {}, {}
  codes, valid = batch_codes(cfg, batch) if reads_cached_codes(cfg) else lam_codes(lam, batch, rng)
  loss, accuracy = code_cross_entropy(head(prefix, prefix_mask), codes, valid)
  return {LOSS_TERM: loss}, {"latent/code_accuracy": accuracy,
                             "latent/valid_pairs": jnp.mean(valid.astype(jnp.float32))}


def _lam_init_batch(cfg: ml_collections.ConfigDict, batch_size: int) -> dict:
  """Zero frames of the LAM's views and offsets (all pairs valid): what ``init`` touches the LAM with when the
  policy's batch has no future frames (``codes='cache'``)."""
  size, offsets = int(cfg.lam.image_size), len(tuple(cfg.lam.future_offsets))
  obs = {specs.IMAGE_MASK: {}, specs.FUTURE: {}, specs.FUTURE_PAD_MASK: jnp.ones((batch_size, offsets), bool)}
  for view in cfg.lam.views:
    obs[view] = jnp.zeros((batch_size, 1, size, size, 3), jnp.uint8)
    obs[specs.IMAGE_MASK][view] = jnp.ones((batch_size, 1), bool)
    obs[specs.FUTURE][view] = jnp.zeros((batch_size, offsets, size, size, 3), jnp.uint8)
  return {specs.OBSERVATION: obs}


def init_touch(cfg: ml_collections.ConfigDict, head: nn.Module, lam: nn.Module, batch: dict, rng: jax.Array,
               prefix: jax.Array, prefix_mask: jax.Array) -> jax.Array:
  """Creates the LAM's and the head's parameters in the policy's ``init`` (returns a scalar to discard)."""
  lam_batch = _lam_init_batch(cfg, prefix.shape[0]) if reads_cached_codes(cfg) else batch
  loss = lam(lam_batch, jax.random.fold_in(rng, _LAM_STREAM))
  return loss + jnp.sum(head(prefix, prefix_mask))


def reads_actions(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the policy's loss reads action labels: the 'action' term weighs more than 0."""
  return float(cfg.loss.weights.get("action", 0.0)) > 0


def data_requirements(cfg: ml_collections.ConfigDict, base: specs.DataRequirements) -> specs.DataRequirements:
  """The policy's requirements plus the LAM's views and future frames (none with ``codes='cache'``: the codes come
  with the batch, attached by the trainer through ``frame_codes``); without the 'action' term (the 'latent' stage)
  no action chunk is read (``action_horizon=0``, ``action_dim=0``, ``actions_optional``)."""
  if not enabled(cfg):
    return base
  fields = dict(base.__dict__)
  if not reads_cached_codes(cfg):
    lam_req = lam_lib.LIBRARY.data_requirements(cfg.lam)
    fields.update(cameras=tuple(base.cameras) + tuple(c for c in lam_req.cameras if c not in base.cameras),
                  future_offsets=lam_req.future_offsets, future_cameras=lam_req.future_cameras)
  if not reads_actions(cfg):
    fields.update(action_horizon=0, action_dim=0, actions_optional=True)
  return specs.DataRequirements(**fields)


def add_dummy_future(cfg: ml_collections.ConfigDict, batch: dict, seed: int) -> dict:
  """``batch`` (a policy's dummy batch) with the LAM's views and future frames (lara.py's draws), or with
  ``codes='cache'`` random cached codes (``frame_codes`` int32[B, L_z], ``frame_codes_valid`` bool[B], all valid),
  and without the action keys when the policy reads no actions (the 'latent' stage: synthetic batches are
  action-free like its data). Identity without the option."""
  if not enabled(cfg):
    return batch
  if reads_cached_codes(cfg):
    b = int(np.shape(batch[specs.OBSERVATION][specs.PROPRIO])[0])
    rs = np.random.RandomState(seed + 0x1C0D)
    batch = {**batch, specs.FRAME_CODES: rs.randint(0, int(cfg.lam.vq.num_codes),
                                                    (b, int(cfg.lam.vq.code_length))).astype(np.int32),
             specs.FRAME_CODES_VALID: np.ones((b,), bool)}
  else:
    batch = lara.dummy_future(cfg, batch, seed)
  if not reads_actions(cfg):
    batch = {k: v for k, v in batch.items() if k not in (specs.ACTION, specs.ACTION_PAD_MASK)}
  return batch


def train_flops(cfg: ml_collections.ConfigDict, batch_size: int, weights: dict, prefix: int, width: int) -> float:
  """Matmul FLOPs the option adds to a train step: the frozen LAM's ``encode_latent`` (forward only) and the head
  (3 x forward: query / key / value / output projections, attention, logits). 0 when 'latent_codes' is off."""
  if not enabled(cfg) or weights.get(LOSS_TERM, 0.0) <= 0:
    return 0.0
  length, k = int(cfg.lam.vq.code_length), int(cfg.lam.vq.num_codes)
  head = (2 * length * width * width * 2 + 2 * prefix * width * width * 2 + 2 * 2 * length * prefix * width
          + 2 * length * width * k)
  lam = 0.0 if reads_cached_codes(cfg) else lam_lib.LIBRARY.analytic_flops(cfg.lam, 1, "encode_latent")
  return float(batch_size * (lam + 3 * head))


def params_sha256(tree) -> str:
  """sha256 (hex) over a parameter tree's paths, dtypes, shapes and bytes (numpy or device arrays)."""
  digest = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
    array = np.ascontiguousarray(np.asarray(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def lam_fingerprint(lam_cfg: ml_collections.ConfigDict, lam_params) -> dict:
  """What changes the LAM's codes, as named fields (a cache's ``source``, lamp_jax/data/code_cache.py): its
  parameters' hash, the view / offset / image size / codebook sizes / dtype fields, and a hash of its whole config
  but the loss weights (architecture fields the named ones do not cover)."""
  config = {k: v for k, v in lam_cfg.to_dict().items() if k != "loss"}
  return {
      "lam.params_sha256": params_sha256(lam_params),
      "lam.views": [str(v) for v in lam_cfg.views],
      "lam.future_offsets": [int(k) for k in lam_cfg.future_offsets],
      "lam.image_size": int(lam_cfg.image_size),
      "lam.vq.code_length": int(lam_cfg.vq.code_length),
      "lam.vq.num_codes": int(lam_cfg.vq.num_codes),
      "lam.dtype": str(lam_cfg.dtype),
      "lam.config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
      "codes": "encode_latent(view=model.lam.views[0], offset=model.lam.future_offsets[0]).codes",
  }


def frame_codes(cfg: ml_collections.ConfigDict, params) -> interface.FrameCodes | None:
  """The frozen LAM as the encoder of the dataset's code cache (``ModelLibrary.frame_codes``) when the policy
  reads cached codes (``codes='cache'``) and weighs 'latent_codes' (the 'latent' stage); else None.

  Args:
    cfg: the stage's model config.
    params: the policy's parameters (with the loaded LAM under params['lam']; device arrays, gathered here).
  """
  if not reads_cached_codes(cfg) or float(cfg.loss.weights.get(LOSS_TERM, 0.0)) <= 0:
    return None
  lam_params = params["lam"]
  lam_params = multihost_utils.process_allgather(lam_params, tiled=True) if jax.process_count() > 1 else \
      jax.device_get(lam_params)
  model = lam_lib.LatentActionModel(cfg.lam)
  on_device = jax.device_put(lam_params)
  encode_fn = jax.jit(lambda p, b: model.apply({"params": p}, b, jax.random.key(0), method="encode_latent"))

  def encode(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    out = encode_fn(on_device, {specs.OBSERVATION: batch[specs.OBSERVATION]})
    return np.asarray(out["codes"], np.int32), np.asarray(out["valid"], bool)

  return interface.FrameCodes(requirements=lam_lib.LIBRARY.data_requirements(cfg.lam),
                              source=lam_fingerprint(cfg.lam, lam_params), encode=encode, batch_size=CACHE_BATCH)
