"""Latent action models (the ``'lam'`` model library): VQ LAM (UniVLA / Moto style) and MVP-LAM.

Data flow for V views, B examples and F future offsets (pairs P = B * F per view; letters as specs.py,
T tokens per image, L latent tokens, Dc code dim):

  o_t    observation/<view>         uint8[B, 1, S, S, 3] (current frame)  ─┐
  o_t+k  observation/future/<view>  uint8[B, F, S, S, 3]                  ─┤
        ─► per image: frozen image encoder patch features float[T, D] (idm_input / target 'features';
           ``image_encoder``, SigLIP here, any [B, N, D] tower fits) or pixel patches float[T, p*p*3] in [-1, 1]
  inverse dynamics (``idm``, M-Former / UniVLA style): L learned action queries + both frames' tokens (frame
  embedding, 2-D sin-cos positions) through ``idm_depth`` pre-LN blocks of full self-attention -> the queries'
  outputs -> z float32[V * P, L, Dc]  (pre-quantisation latent)
  ``vq`` (vq.py): nearest of K codes per token -> codes int32[V * P, L], straight-through quantised latent
  forward dynamics (``fdm``): the latent's L tokens + o_t's tokens (of the target kind) through ``fdm_depth``
  blocks -> o_t+k's tokens predicted float32[T, Dt]: patch features (MSE, UniVLA / MVP-LAM) or pixels (Moto).

MVP-LAM (``views`` with 2 or more cameras, loss term ``cross_view`` > 0): the latent of view i also decodes view
j's future from view j's current frame, for every ordered pair i != j; the decoder is never told the viewpoint.
Loss terms (``loss.weights``, losses.py):
  reconstruction  self-view prediction MSE, mean over valid pairs of every view
  codebook        ||sg(z) - q||^2 over valid latents (0 weight with the EMA codebook)
  commitment      ||z - sg(q)||^2 over valid latents (weight 0.25 = beta)
  cross_view      MSE of the V(V-1) swapped pairs, a pair valid when both views' pairs are
With cross_view at 0 this is the single-view LAM (same parameters); for one view it must be 0.

Valid pairs: ``observation/future_pad_mask`` True (t + k inside the episode) and the camera present at t
(``observation/image_mask``; absent = present). Invalid pairs enter no loss term and no codebook statistic.

Parameter tree top level: 'image_encoder' (when a 'features' kind is used; frozen: ``freeze_encoder`` stops its
gradients and the configs freeze ``^image_encoder/`` in the optimizer; loadable with ``config.init`` kind
'big_vision_npz' (a PaliGemma's SigLIP tower) or 'checkpoint'), 'idm', 'vq', 'fdm'. State collection: 'vq_state'
(vq.py; restarts of dead codes and the EMA codebook happen in ``LAMLibrary.after_update``).
Configs: lam_config.py.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.models import flops
from lamp_jax.models import interface
from lamp_jax.models import lam_config
from lamp_jax.models import layers
from lamp_jax.models import losses
from lamp_jax.models import siglip
from lamp_jax.models import vq as vq_lib

NAME = lam_config.NAME
LOSS_TERMS = lam_config.LOSS_TERMS
TOP_LEVEL = ("image_encoder", "idm", "vq", "fdm")
# Stream of the quantiser's restart-buffer draws: fold_in(rng, this).
_VQ_STREAM = 0x0B


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """float[N, S, S, C] -> float[N, (S / p)^2, p * p * C], patches row-major, values (row, column, channel)."""
  n, h, w, c = images.shape
  x = images.reshape(n, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: jax.Array, patch: int, size: int) -> jax.Array:
  """Inverse of ``patchify``: float[N, (S / p)^2, p * p * 3] -> float[N, S, S, 3]."""
  n, side = tokens.shape[0], size // patch
  x = tokens.reshape(n, side, side, patch, patch, 3)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, size, size, 3)


def _block_stack_config(cfg: ml_collections.ConfigDict, depth: int) -> siglip.SigLIPConfig:
  """The LAM's transformer stacks are SigLIP encoder stacks (pre-LN, full self-attention, GELU MLP, final LN)."""
  return siglip.SigLIPConfig(width=int(cfg.width), depth=int(depth), mlp_dim=int(cfg.mlp_dim),
                             num_heads=int(cfg.num_heads), patch_size=1, image_size=1, dtype=str(cfg.dtype),
                             remat=bool(cfg.get("remat", False)),
                             remat_policy=str(cfg.get("remat_policy", layers.DEFAULT_REMAT_POLICY)))


def _positions(tokens: int, width: int) -> jax.Array:
  """Fixed 2-D sin-cos positions of a square token grid: float32[tokens, width]."""
  side = int(round(tokens**0.5))
  if side * side != tokens:
    raise ValueError(f"{tokens} image tokens do not form a square grid")
  return layers.sincos_2d(side, side, width)


def decoder_latent(cfg: ml_collections.ConfigDict, z: jax.Array, quantised: dict) -> jax.Array:
  """What the decoder reads: the straight-through codes, or z itself with ``vq.bypass`` (shape of z)."""
  return z if cfg.vq.get("bypass", False) else quantised["straight_through"].reshape(z.shape)


class InverseDynamics(nn.Module):
  """(current tokens float[N, T, Din], future tokens float[N, T, Din]) -> latent z float32[N, L, Dc]."""

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, current, future):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    width, length = int(cfg.width), int(cfg.vq.code_length)
    n, t, _ = current.shape
    proj = layers.DenseGeneral(width, ("patch_in", "embed"), dtype=dtype, name="input_proj")
    frames = self.param("frame_embedding", layers.param_with_axes(nn.initializers.normal(0.02), (None, "embed")),
                        (2, width), jnp.float32)
    queries = self.param("queries", layers.param_with_axes(nn.initializers.normal(0.02), (None, "embed")),
                         (length, width), jnp.float32)
    pos = _positions(t, width)
    x_now = proj(current.astype(dtype)) + (pos + frames[0]).astype(dtype)
    x_next = proj(future.astype(dtype)) + (pos + frames[1]).astype(dtype)
    x = jnp.concatenate([jnp.broadcast_to(queries.astype(dtype), (n, length, width)), x_now, x_next], axis=1)
    x = siglip.Encoder(_block_stack_config(cfg, cfg.idm_depth), name="encoder")(x)
    z = layers.DenseGeneral(int(cfg.vq.code_dim), ("embed", "code_dim"), dtype=dtype, name="output_proj")(
        x[:, :length])
    return z.astype(jnp.float32)


class ForwardDynamics(nn.Module):
  """(context tokens float[N, T, Dt] of o_t, latent float[N, L, Dc]) -> predicted tokens of o_t+k float32[N, T, Dt].

  With ``fdm_residual`` the prediction is o_t's tokens plus the stack's output, whose projection starts at zero:
  the untrained decoder already predicts "nothing moved" (the copy-the-present baseline), so from the first step
  the reconstruction error it is trained on is the change between the frames. Without it (the paper's decoder,
  the default) the decoder first learns to copy o_t, which on the simulator drowned the latent's gradient and
  collapsed the codes; with it, the colour-shift toy's decoder never learned to read the latent in 150 steps
  (docs/lam.md, 'Codebook collapse', has both measurements).
  """

  config: ml_collections.ConfigDict
  out_dim: int

  @nn.compact
  def __call__(self, context, latent):
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    width, length = int(cfg.width), latent.shape[1]
    t = context.shape[1]
    latent_pos = self.param("latent_positions",
                            layers.param_with_axes(nn.initializers.normal(0.02), (None, "embed")),
                            (length, width), jnp.float32)
    x_latent = layers.DenseGeneral(width, ("code_dim", "embed"), dtype=dtype, name="latent_proj")(
        latent.astype(dtype)) + latent_pos.astype(dtype)
    x_context = layers.DenseGeneral(width, ("patch_in", "embed"), dtype=dtype, name="context_proj")(
        context.astype(dtype)) + _positions(t, width).astype(dtype)
    x = jnp.concatenate([x_latent, x_context], axis=1)
    x = siglip.Encoder(_block_stack_config(cfg, cfg.fdm_depth), name="encoder")(x)
    residual = bool(cfg.get("fdm_residual", False))
    if residual and context.shape[-1] != self.out_dim:
      raise ValueError(f"config field model.fdm_residual=True needs the decoder's context and target tokens of one "
                       f"width; got context {context.shape[-1]} and target {self.out_dim}")
    out = layers.DenseGeneral(self.out_dim, ("embed", "patch_in"), dtype=dtype, name="output_proj",
                              kernel_init=(nn.initializers.zeros_init() if residual else
                                           nn.initializers.lecun_normal()))(x[:, length:])
    out = out.astype(jnp.float32)
    return context.astype(jnp.float32) + out if residual else out


class LatentActionModel(nn.Module):
  """The latent action model. Methods take the specs.py batch and an explicit PRNG key ``rng``:

  * ``compute_loss(batch, rng, *, train=True) -> (loss float32[], metrics)``
  * ``encode_latent(batch, rng, *, view=None, offset_index=0) -> dict`` (see its docstring)
  * ``__call__(batch, rng)``: the loss with every parameter touched (used by ``init``).
  """

  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    lam_config.check(cfg)
    if lam_config.uses_encoder(cfg):
      self.image_encoder = siglip.SigLIP(siglip.config_from_dict(cfg.image_encoder))
    self.idm = InverseDynamics(cfg)
    self.vq = vq_lib.VectorQuantizer(cfg.vq)
    self.fdm = ForwardDynamics(cfg, out_dim=lam_config.input_tokens(cfg, cfg.target)[1])

  # ---------------------------------------------------------------------------------------- inputs
  def _frames(self, batch, views, past_end_valid: bool = False):
    """(current float32[V, B, S, S, 3], future float32[V, B, F, S, S, 3] in [-1, 1], valid bool[V, B, F]).

    ``past_end_valid``: a pair whose t + k lies past the episode end counts too, as the pair (o_t, last frame)
    (the data pipeline clamps the future index to the episode's last frame: traj_transforms.future_indices)."""
    cfg = self.config
    obs = batch[specs.OBSERVATION]
    size, offsets = int(cfg.image_size), tuple(cfg.future_offsets)
    missing = [v for v in views if v not in obs]
    if missing:
      raise ValueError(f"batch['observation'] has no camera {missing[0]!r} of config field model.views={views} "
                       f"(it has {sorted(k for k in obs if k.startswith('image_') and k != specs.IMAGE_MASK)})")
    future = obs.get(specs.FUTURE)
    if not isinstance(future, dict) or specs.FUTURE_PAD_MASK not in obs:
      raise ValueError(f"batch['observation'] has no '{specs.FUTURE}' frames and '{specs.FUTURE_PAD_MASK}': a latent "
                       f"action model reads observation/{specs.FUTURE}/<camera> uint8[B, F, {size}, {size}, 3] at the "
                       f"offsets model.future_offsets={offsets} (the data config must produce them)")
    currents, futures, valids = [], [], []
    pad = obs[specs.FUTURE_PAD_MASK].astype(bool)
    for view in views:
      now = obs[view]
      if now.ndim != 5 or now.shape[2:] != (size, size, 3):
        raise ValueError(f"batch['observation'][{view!r}] has shape {now.shape}; expected uint8[B, W, {size}, {size}, "
                         f"3] (config field model.image_size={size})")
      if view not in future:
        raise ValueError(f"batch['observation']['{specs.FUTURE}'] has no camera {view!r} of config field "
                         f"model.views={views} (it has {sorted(future)})")
      nxt = future[view]
      expected = (now.shape[0], len(offsets), size, size, 3)
      if tuple(nxt.shape) != expected:
        raise ValueError(f"batch['observation']['{specs.FUTURE}'][{view!r}] has shape {tuple(nxt.shape)}; expected "
                         f"{expected} (one frame per offset of model.future_offsets={offsets})")
      if tuple(pad.shape) != expected[:2]:
        raise ValueError(f"batch['observation']['{specs.FUTURE_PAD_MASK}'] has shape {tuple(pad.shape)}; expected "
                         f"{expected[:2]}")
      currents.append(now[:, -1].astype(jnp.float32) / 127.5 - 1.0)
      futures.append(nxt.astype(jnp.float32) / 127.5 - 1.0)
      mask = obs.get(specs.IMAGE_MASK, {}).get(view)
      present = jnp.ones((now.shape[0],), bool) if mask is None else mask[:, -1].astype(bool)
      valids.append((jnp.ones_like(pad) if past_end_valid else pad) & present[:, None])
    return jnp.stack(currents), jnp.stack(futures), jnp.stack(valids)

  def _tokens(self, images, kind):
    """float32[N, S, S, 3] in [-1, 1] -> float[N, T, D] of ``kind`` ('features' frozen, or pixel patches)."""
    if kind == "pixels":
      return patchify(images, int(self.config.pixel_patch_size))
    features = self.image_encoder(images)
    return jax.lax.stop_gradient(features) if self.config.freeze_encoder else features

  def _latents(self, current, future, valid, rng):
    """Latents of the pairs of the views given.

    Args: current float32[V, B, S, S, 3], future float32[V, B, F, S, S, 3] (in [-1, 1]), valid bool[V, B, F].
    Returns (z float32[V, B * F, L, Dc], the quantiser's outputs over the V * B * F pairs, the inverse model's
    tokens of the current frames float[V * B, T, D] and of the future frames float[V * B * F, T, D]).
    """
    cfg = self.config
    v, b, f = future.shape[:3]
    size = int(cfg.image_size)
    now_tokens = self._tokens(current.reshape(v * b, size, size, 3), cfg.idm_input)
    next_tokens = self._tokens(future.reshape(v * b * f, size, size, 3), cfg.idm_input)
    t, d = now_tokens.shape[1:]
    pair_now = jnp.broadcast_to(now_tokens.reshape(v * b, 1, t, d), (v * b, f, t, d)).reshape(v * b * f, t, d)
    z = self.idm(pair_now, next_tokens)
    quantised = self.vq(z, valid.reshape(-1), jax.random.fold_in(rng, _VQ_STREAM))
    return z.reshape(v, b * f, *z.shape[1:]), quantised, now_tokens, next_tokens

  # ---------------------------------------------------------------------------------------- public methods
  def __call__(self, batch, rng):
    """The loss with every term on (creates all parameters in ``init``)."""
    cfg = self.config
    loss, _, _, _ = self._loss(batch, rng, {name: 1.0 for name in LOSS_TERMS} if len(cfg.views) > 1 else
                               {name: 1.0 for name in LOSS_TERMS if name != "cross_view"})
    return loss

  def compute_loss(self, batch, rng, *, train: bool = True):
    """Weighted named terms (module docstring; weights ``loss.weights``). ``train`` is accepted for the
    interface: the model has no stochastic regulariser. Returns (loss float32[], metrics: 'loss', 'loss/<term>',
    the quantiser's 'vq/...', 'lam/valid_pairs' (fraction of the pairs that count), 'lam/copy_baseline' (the
    self-view MSE of predicting o_t+k by o_t: the floor a decoder that ignores the motion reaches) and
    'lam/reconstruction_shuffled' (the self-view MSE with the latents rolled across the batch: above
    'loss/reconstruction' only when the decoder reads WHICH latent it gets))."""
    del train
    total, metrics, _, _ = self._loss(batch, rng, losses.active_weights(self.config.loss.weights, LOSS_TERMS, NAME),
                                      shuffled_metric=True)
    return total, metrics

  def pair_latents(self, batch, rng, *, with_loss: bool = False):
    """The pre-quantisation latents of every view's pairs, and (``with_loss``) the model's own weighted loss of
    the same forward pass (one inverse-model pass serves both; policies that align to the latents use it).

    Returns (z float32[V, B, F, L, Dc] (views in ``model.views`` order, offsets in ``model.future_offsets``
    order), valid bool[V, B, F], loss float32[] or None, metrics (empty without the loss)).
    """
    if with_loss:
      total, metrics, z, valid = self._loss(batch, rng, losses.active_weights(self.config.loss.weights, LOSS_TERMS,
                                                                              NAME))
      return z, valid, total, metrics
    current, future, valid = self._frames(batch, tuple(self.config.views))
    z, _, _, _ = self._latents(current, future, valid, rng)
    v, b, f = valid.shape
    return z.reshape(v, b, f, *z.shape[2:]), valid, None, {}

  def _shuffled_reconstruction(self, context, target, latent, pair_valid):
    """The self-view reconstruction when every valid pair decodes with ANOTHER valid pair's latent: float32[],
    no gradient.

    The direct test that the decoder reads the latent: equal to 'loss/reconstruction' (same pairs, same weights)
    when the decoder ignores which latent it gets, above it when the latent carries the pair's motion. Within each
    view, the valid pairs in batch order borrow the latent of the previous valid pair (the first borrows the last's),
    a derangement of the valid pairs whenever there are two or more. Args: context float[V, P, T, Dt] (o_t's
    tokens), target float[V, P, T, Dt] (o_t+k's), latent float32[V, P, L, Dc] (quantised), pair_valid bool[V, P].
    """
    v, p, t, dt = context.shape
    rank = jnp.cumsum(pair_valid, axis=1) - 1  # [V, P]: the pair's place among its view's valid pairs
    count = jnp.maximum(jnp.sum(pair_valid, axis=1, keepdims=True), 1)
    valid_first = jnp.argsort(~pair_valid, axis=1, stable=True)  # [V, P]: the valid pairs' indices, in order
    source = jnp.take_along_axis(valid_first, jnp.mod(rank - 1, count), axis=1)
    borrowed = jnp.take_along_axis(jax.lax.stop_gradient(latent), source[:, :, None, None], axis=1)
    prediction = self.fdm(context.reshape(v * p, t, dt), borrowed.reshape(v * p, *latent.shape[2:]))
    error = jnp.mean(jnp.square(prediction - target.reshape(v * p, t, dt).astype(jnp.float32)), axis=(1, 2))
    return jax.lax.stop_gradient(vq_lib.masked_mean(error, pair_valid.reshape(-1)))

  def _loss(self, batch, rng, weights, shuffled_metric: bool = False):
    """(total, metrics, z float32[V, B, F, L, Dc], valid bool[V, B, F]). ``shuffled_metric`` adds
    'lam/reconstruction_shuffled' (one more decoder pass, no gradient)."""
    cfg = self.config
    views = tuple(cfg.views)
    current, future, valid = self._frames(batch, views)
    v, b, f = valid.shape
    z, quantised, now_tokens, next_tokens = self._latents(current, future, valid, rng)
    size = int(cfg.image_size)
    if cfg.target == cfg.idm_input:  # the inverse model's tokens are the decoder's context and target
      context, target = now_tokens, next_tokens
    else:
      context = self._tokens(current.reshape(v * b, size, size, 3), cfg.target)
      target = self._tokens(future.reshape(v * b * f, size, size, 3), cfg.target)
    t, dt = context.shape[1:]
    context = jnp.broadcast_to(context.reshape(v, b, 1, t, dt), (v, b, f, t, dt)).reshape(v, b * f, t, dt)
    target = target.reshape(v, b * f, t, dt)
    latent = decoder_latent(cfg, z, quantised)
    pair_valid = valid.reshape(v, b * f)
    # Decoder inputs: self pairs (i, i) for every view, then the cross pairs (i -> j, i != j) when that term is on.
    sources = list(range(v))
    targets = list(range(v))
    if "cross_view" in weights:
      cross = [(i, j) for i in range(v) for j in range(v) if i != j]
      sources += [i for i, _ in cross]
      targets += [j for _, j in cross]
    src, dst = np.asarray(sources), np.asarray(targets)
    n_pairs = len(sources) * b * f
    prediction = self.fdm(context[dst].reshape(n_pairs, t, dt), latent[src].reshape(n_pairs, *latent.shape[2:]))
    error = jnp.mean(jnp.square(prediction - target[dst].reshape(n_pairs, t, dt).astype(jnp.float32)), axis=(1, 2))
    error = error.reshape(len(sources), b * f)
    values = {}
    if "reconstruction" in weights:
      values["reconstruction"] = vq_lib.masked_mean(error[:v].reshape(-1), pair_valid.reshape(-1))
    if "codebook" in weights:
      values["codebook"] = quantised["codebook_loss"]
    if "commitment" in weights:
      values["commitment"] = quantised["commitment_loss"]
    if "cross_view" in weights:
      cross_valid = pair_valid[src[v:]] & pair_valid[dst[v:]]
      values["cross_view"] = vq_lib.masked_mean(error[v:].reshape(-1), cross_valid.reshape(-1))
    total, metrics = losses.weighted_total(values, weights, LOSS_TERMS)
    if shuffled_metric:
      metrics["lam/reconstruction_shuffled"] = self._shuffled_reconstruction(context, target, latent, pair_valid)
    metrics.update(quantised["metrics"])
    metrics["lam/valid_pairs"] = jnp.mean(valid.astype(jnp.float32))
    # The error of predicting o_t+k by o_t itself (what a decoder that ignores the latent can reach on a scene
    # that barely moves): the self-view reconstruction must go below it for the latent to carry the motion.
    copy_error = jnp.mean(jnp.square(context - target), axis=(2, 3))  # [V, B * F]
    metrics["lam/copy_baseline"] = jax.lax.stop_gradient(vq_lib.masked_mean(copy_error.reshape(-1),
                                                                            pair_valid.reshape(-1)))
    return total, metrics, z.reshape(v, b, f, *z.shape[2:]), valid

  def encode_latent(self, batch, rng, *, view: str | None = None, offset_index: int = 0,
                    past_end_valid: bool = False):
    """The latent action of one view's pair (o_t, o_{t+k}), k = future_offsets[offset_index].

    Returns {'latent': pre-quantisation z float32[B, L, Dc], 'codes': int32[B, L], 'quantized': the codes'
    codebook rows float32[B, L, Dc], 'valid': bool[B] (the pair counts: future inside the episode, camera
    present)}. The same computation as ``compute_loss`` (same encoder, inverse model and quantiser).
    ``past_end_valid``: pairs past the episode end count too, as (o_t, the episode's last frame) (``_frames``).
    """
    cfg = self.config
    view = cfg.views[0] if view is None else view
    if view not in tuple(cfg.views):
      raise ValueError(f"encode_latent(view={view!r}): not one of config field model.views={tuple(cfg.views)}")
    if not 0 <= offset_index < len(cfg.future_offsets):
      raise ValueError(f"encode_latent(offset_index={offset_index}): model.future_offsets has "
                       f"{len(cfg.future_offsets)} entries")
    current, future, valid = self._frames(batch, (view,), past_end_valid)
    pick = slice(offset_index, offset_index + 1)
    future, valid = future[:, :, pick], valid[:, :, pick]
    z, quantised, _, _ = self._latents(current, future, valid, rng)
    b = current.shape[1]
    return {"latent": z.reshape(b, *z.shape[2:]), "codes": quantised["codes"].reshape(b, -1),
            "quantized": quantised["quantized"].reshape(b, *z.shape[2:]), "valid": valid.reshape(b)}


# ------------------------------------------------------------------------------------------ helpers
def colour_shift_pairs(model_cfg: ml_collections.ConfigDict, batch_size: int = 2,
                       seed: int = 0) -> tuple[dict, np.ndarray]:
  """(batch, action int32[B]): a random numpy batch following specs.py whose latent action is recoverable.

  Every view shows a random mosaic (one colour per pixel patch of ``pixel_patch_size``, values in [64, 192));
  at offset k the example's action has shifted one colour channel by k * 64 levels (action 0: red up, 1: red
  down, 2: green up, 3: green down), the same action in every view (what cross-view reconstruction relies
  on). All pairs are valid."""
  rs = np.random.RandomState(seed)
  b, size, patch = batch_size, int(model_cfg.image_size), int(model_cfg.pixel_patch_size)
  offsets = tuple(int(k) for k in model_cfg.future_offsets)
  cells = max(1, size // patch)
  action = rs.randint(0, 4, (b,))
  delta = np.zeros((b, 1, 1, 3), np.int32)
  delta[np.arange(b), 0, 0, action // 2] = np.where(action % 2 == 0, 64, -64)
  obs = {specs.IMAGE_MASK: {}, specs.FUTURE: {}}
  for view in model_cfg.views:
    mosaic = rs.randint(64, 192, (b, cells, cells, 3))
    now = np.repeat(np.repeat(mosaic, -(-size // cells), axis=1), -(-size // cells), axis=2)[:, :size, :size]
    obs[view] = now.astype(np.uint8)[:, None]
    obs[specs.IMAGE_MASK][view] = np.ones((b, 1), bool)
    obs[specs.FUTURE][view] = np.stack([np.clip(now + k * delta, 0, 255) for k in offsets], axis=1).astype(np.uint8)
  obs[specs.FUTURE_PAD_MASK] = np.ones((b, len(offsets)), bool)
  obs[specs.TIMESTEP_PAD_MASK] = np.ones((b, 1), bool)
  return {specs.OBSERVATION: obs}, action.astype(np.int32)


def dummy_batch(model_cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict:
  """``colour_shift_pairs``' batch (everything the model reads)."""
  return colour_shift_pairs(model_cfg, batch_size, seed)[0]


# ------------------------------------------------------------------------------------------ the library
class LAMLibrary(interface.ModelLibrary):
  """The 'lam' model library (``interface.ModelLibrary``)."""

  name = NAME
  variants = lam_config.VARIANTS
  methods = frozenset({"encode_latent"})
  flop_modes = ("train_step", "encode_latent", "decode")
  state_collections = (vq_lib.STATE,)

  def model_config(self, variant: str = "tiny") -> ml_collections.ConfigDict:
    return lam_config.model_config(variant)

  def build(self, cfg: ml_collections.ConfigDict) -> LatentActionModel:
    return LatentActionModel(cfg)

  def dummy_batch(self, cfg: ml_collections.ConfigDict, batch_size: int = 2, seed: int = 0) -> dict:
    return dummy_batch(cfg, batch_size, seed)

  def data_requirements(self, cfg: ml_collections.ConfigDict) -> specs.DataRequirements:
    return specs.DataRequirements(cameras=tuple(cfg.views), image_size=int(cfg.image_size), window=1,
                                  future_offsets=tuple(int(k) for k in cfg.future_offsets),
                                  future_cameras=tuple(cfg.views), actions_optional=True)

  def after_update(self, cfg, params, model_state, rng):
    """Sets the EMA codebook and restarts dead codes (``vq.update_codebook``)."""
    codebook, state, metrics = vq_lib.update_codebook(params["vq"]["codebook"], model_state[vq_lib.STATE]["vq"],
                                                      rng, cfg.vq)
    params = {**params, "vq": {**params["vq"], "codebook": codebook}}
    model_state = {**model_state, vq_lib.STATE: {**model_state[vq_lib.STATE], "vq": state}}
    return params, model_state, metrics

  def analytic_flops(self, cfg: ml_collections.ConfigDict, batch_size: int, mode: str) -> float:
    """Modes: 'encode_latent' (one view, one offset: encoder on both frames when a 'features' kind is used,
    inverse model, quantiser), 'decode' (one forward-model pass per example: one view, one offset) and
    'train_step' (the frozen encoder forward only, everything else 3 x forward: every view's pairs through the
    inverse model and, for the decoder, V self pairs plus V(V-1) cross pairs when the cross-view term is on;
    plus the forward-only decoder pass of the V self pairs with shuffled latents, 'lam/reconstruction_shuffled')."""
    v, f = len(cfg.views), len(cfg.future_offsets)
    t_in, d_in = lam_config.input_tokens(cfg, cfg.idm_input)
    t_out, d_out = lam_config.input_tokens(cfg, cfg.target)
    width, mlp, length = int(cfg.width), int(cfg.mlp_dim), int(cfg.vq.code_length)
    dc, k = int(cfg.vq.code_dim), int(cfg.vq.num_codes)
    encoder = flops.siglip_tower(siglip.config_from_dict(cfg.image_encoder)) if lam_config.uses_encoder(cfg) else 0.0
    idm = (cfg.idm_depth * flops.transformer_layer(length + 2 * t_in, width, mlp) + 2 * 2 * t_in * d_in * width
           + 2 * length * width * dc)
    quantise = 2 * length * dc * k
    fdm = (cfg.fdm_depth * flops.transformer_layer(length + t_out, width, mlp) + 2 * length * dc * width
           + 2 * t_out * d_out * width + 2 * t_out * width * d_out)
    if mode == "encode_latent":
      return float(batch_size * (2 * encoder + idm + quantise))
    if mode == "decode":
      return float(batch_size * fdm)
    if mode != "train_step":
      raise ValueError(f"unknown analytic_flops mode {mode!r} of 'lam' (modes: {self.flop_modes})")
    weights = self.loss_weights(cfg)
    decoder_pairs = v * v if weights.get("cross_view", 0.0) > 0 else v
    images = v * (1 + f)  # each view's current frame once, its F future frames
    trainable = v * f * (idm + quantise) + decoder_pairs * f * fdm
    shuffled = v * f * fdm  # forward only, no gradient
    return float(batch_size * (images * encoder + 3 * trainable + shuffled))


LIBRARY = LAMLibrary()
