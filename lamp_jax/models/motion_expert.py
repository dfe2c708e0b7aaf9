"""LaMP Motion Expert: a CogVideoX-style 3-D transformer that flow-matches 3-D scene flow.

Axis letters: B batch · K keypoints (a G x G grid, G = sqrt(K), row-major v outer / u inner as specs.py) ·
T future steps · P VLM prefix tokens · C condition tokens (``cond_len``) · N motion tokens · D width ·
p spatial patch size · F frames folded into channels (``frames_per_token``).

MOTION TARGET NORMALISATION (owned here, documented once):
  tracks = concat(scene_flow_query[:, :, None], scene_flow)       float32[B, K, T + 1, 3]  (UVD, specs.py)
  delta_k = tracks[:, :, k + 1] - tracks[:, :, k]  for k = 0..T-1  float32[B, K, T, 3]
  target  = clip(delta / delta_scale, -1, 1)                     delta_scale = ±(0.05, 0.05, 0.04) (u, v, d[m])
  mask_k  = valid(k + 1) & valid(k) & has_scene_flow             valid(0) = scene_flow_query_mask,
                                                                  valid(k + 1) = scene_flow_mask[..., k]
In the loss, masked deltas are set to 0 before interpolation (they are unweighted and, being zero, their
unlabelled values cannot leak into the prediction at valid points). The inverse ``target_to_tracks`` is ``query + cumsum(target * delta_scale)`` (exact when no delta was
clipped). The flow-matching data variable ``x`` is the normalised target; time convention: flow_matching.py.

Architecture (released LaMP / CogVideoX):
  * patchify: the G x G grid by ``patch_size`` and time by ``frames_per_token`` (frames folded into channels)
    -> N = (T / F) * (G / p)^2 tokens of p*p*F*3 values -> Dense(D); absolute 3-D sin-cos positions
    (released: no RoPE); ``use_rope`` adds 3-D RoPE on motion-token queries / keys instead.
  * condition: Dense(D) of the VLM features; masked positions and positions P..C-1 are filled with learned
    padding tokens, giving exactly ``cond_len`` condition tokens. Option ``cond_pool`` (default 1 = released):
    masked mean over windows of that many prefix tokens first (``pool_condition``), for a cheaper expert.
  * exact rewrites (config, default on): ``prune_last_condition`` runs the last block on the motion queries
    only (its condition-stream output is never read); ``scan_unroll`` unrolls the scanned layers.
  * blocks: "expert adaLN-zero" (separate shift/scale/gate for condition and motion tokens from the time
    embedding), one joint full self-attention over [condition; motion] with QK LayerNorm, gated residuals,
    one shared MLP with separately gated residuals.
  * out: LayerNorm + adaLN (shift, scale) + Dense -> unpatchify -> velocity float[B, K, T, 3].
  * the last block's motion-token output float[B, N, D] is the motion representation used for guidance.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lamp_jax.models import dit, layers

Dtype = Any


# ------------------------------------------------------------------------------------------ normalisation
def tracks_to_target(query: jax.Array, tracks: jax.Array, delta_scale) -> jax.Array:
  """UVD tracks -> normalised per-step deltas.  query float[B, K, 3], tracks float[B, K, T, 3] -> [B, K, T, 3]."""
  scale = jnp.asarray(delta_scale, jnp.float32)
  full = jnp.concatenate([query[:, :, None, :], tracks], axis=2).astype(jnp.float32)
  delta = full[:, :, 1:] - full[:, :, :-1]
  return jnp.clip(delta / scale, -1.0, 1.0)


def target_to_tracks(query: jax.Array, target: jax.Array, delta_scale) -> jax.Array:
  """Normalised per-step deltas -> UVD tracks.  query float[B, K, 3], target float[B, K, T, 3] -> [B, K, T, 3]."""
  scale = jnp.asarray(delta_scale, jnp.float32)
  return query[:, :, None, :].astype(jnp.float32) + jnp.cumsum(target.astype(jnp.float32) * scale, axis=2)


def target_mask(query_mask: jax.Array, track_mask: jax.Array, has_flow: jax.Array) -> jax.Array:
  """Validity of each delta.  bool[B, K], bool[B, K, T], bool[B] -> bool[B, K, T] (both endpoints valid)."""
  valid = jnp.concatenate([query_mask[:, :, None], track_mask], axis=2)
  return valid[:, :, 1:] & valid[:, :, :-1] & has_flow[:, None, None]


def loss_weights(target: jax.Array, valid: jax.Array, moving_weight: float = 1.0,
                 moving_threshold: float = 0.1) -> jax.Array:
  """Per-delta weights of the motion loss: float32[B, K, T] from target float[B, K, T, 3], valid bool[B, K, T].

  1 on valid deltas, 0 on invalid ones; with ``moving_weight`` w > 1, deltas whose normalised norm exceeds
  ``moving_threshold`` weigh w. (Released LaMP / TraceGen: w = 1, the plain masked mean.) At the sim suite's
  K = 64 about 95 % of the valid deltas are static, an unconditional flow fits them exactly (x_tau reveals the
  noise when the target is 0), and the expert learned to ignore its condition; w = 20 made it use it.
  """
  weights = valid.astype(jnp.float32)
  if moving_weight != 1.0:
    moving = jnp.linalg.norm(target.astype(jnp.float32), axis=-1) > moving_threshold
    weights = weights * jnp.where(moving, jnp.float32(moving_weight), jnp.float32(1.0))
  return weights


# ------------------------------------------------------------------------------------------ geometry
def grid_side(cfg: ml_collections.ConfigDict) -> int:
  side = int(round(cfg.num_keypoints**0.5))
  if side * side != cfg.num_keypoints:
    raise ValueError(f"motion.num_keypoints={cfg.num_keypoints} is not a perfect square (keypoints form a grid)")
  return side


def token_grid(cfg: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(latent frames, grid rows, grid cols) of motion tokens; validates patch sizes against the config."""
  side = grid_side(cfg)
  if side % cfg.patch_size:
    raise ValueError(f"motion.patch_size={cfg.patch_size} does not divide the keypoint grid side {side}")
  if cfg.num_steps % cfg.frames_per_token:
    raise ValueError(f"motion.frames_per_token={cfg.frames_per_token} does not divide motion.num_steps="
                     f"{cfg.num_steps}")
  return cfg.num_steps // cfg.frames_per_token, side // cfg.patch_size, side // cfg.patch_size


def num_motion_tokens(cfg: ml_collections.ConfigDict) -> int:
  f, h, w = token_grid(cfg)
  return f * h * w


def patchify(x: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
  """float[B, K, T, 3] -> float[B, N, p*p*F*3], tokens in (frame, row, col) order."""
  b = x.shape[0]
  f, h, w = token_grid(cfg)
  p, fr = cfg.patch_size, cfg.frames_per_token
  x = x.reshape(b, h, p, w, p, f, fr, 3)  # rows (h, p) · cols (w, p) · time (f, fr) · uvd
  x = x.transpose(0, 5, 1, 3, 2, 4, 6, 7)  # b f h w p p fr c
  return x.reshape(b, f * h * w, p * p * fr * 3)


def unpatchify(tokens: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
  """float[B, N, p*p*F*3] -> float[B, K, T, 3] (inverse of ``patchify``)."""
  b = tokens.shape[0]
  f, h, w = token_grid(cfg)
  p, fr = cfg.patch_size, cfg.frames_per_token
  x = tokens.reshape(b, f, h, w, p, p, fr, 3).transpose(0, 2, 4, 3, 5, 1, 6, 7)  # b h p w p f fr c
  return x.reshape(b, h * p * w * p, f * fr, 3)


def rope_3d(x: jax.Array, positions: jax.Array) -> jax.Array:
  """3-D RoPE: head dim split into (time, row, col) chunks, each rotated by its coordinate.

  x float[B, N, heads, H]; positions float[N, 3] (frame, row, col). Returns float[B, N, heads, H].
  """
  head_dim = x.shape[-1]
  spatial = ((head_dim - head_dim // 4) // 2) // 2 * 2
  temporal = head_dim - 2 * spatial
  if temporal % 2 or temporal <= 0 or spatial <= 0:
    raise ValueError(f"3-D RoPE needs an even head dim >= 8, got {head_dim}")
  chunks = jnp.split(x, [temporal, temporal + spatial], axis=-1)
  pos = jnp.broadcast_to(positions[None], (x.shape[0],) + positions.shape)
  return jnp.concatenate([layers.apply_rope(c, pos[..., i]) for i, c in enumerate(chunks)], axis=-1)


def pool_condition(features: jax.Array, feature_mask: jax.Array, pool: int) -> tuple[jax.Array, jax.Array]:
  """Masked mean of each window of ``pool`` consecutive prefix tokens (the ``motion.cond_pool`` option).

  features float[B, P, Dv], feature_mask bool[B, P] -> float[B, ceil(P / pool), Dv], bool[B, ceil(P / pool)]
  (a window is valid when any of its tokens is). ``pool=1`` returns the inputs unchanged (released LaMP).
  Windows follow the prefix order (per camera row-major image patches, then text), so with e.g. pool=4 on
  an 8 x 8 patch grid a window is 4 horizontally adjacent patches. This changes the model (fewer condition
  tokens: set motion.cond_len to match); it is an option for cheaper motion conditioning, not a rewrite.
  """
  if pool < 1:
    raise ValueError(f"motion.cond_pool={pool} must be >= 1")
  if pool == 1:
    return features, feature_mask
  b, p, d = features.shape
  windows = -(-p // pool)
  extra = windows * pool - p
  features = jnp.pad(features, ((0, 0), (0, extra), (0, 0))).reshape(b, windows, pool, d)
  weights = jnp.pad(feature_mask, ((0, 0), (0, extra))).reshape(b, windows, pool).astype(features.dtype)
  count = jnp.sum(weights, axis=-1, keepdims=True)
  pooled = jnp.sum(features * weights[..., None], axis=2) / jnp.maximum(count, 1.0)
  return pooled, count[..., 0] > 0


# ------------------------------------------------------------------------------------------ modules
class CogVideoXBlock(nn.Module):
  """Expert adaLN-zero block over (condition, motion) token streams. Call: ((c, m), temb, positions).

  ``motion_only=True`` (used for the last block, whose condition-stream output nobody reads) computes the
  attention queries, the attention output and the MLP of the motion tokens only (keys / values still come from
  all tokens) and returns the condition stream unchanged. The motion-stream output is the same function of the
  same parameters as with ``motion_only=False``; the returned condition stream is then stale, not the block's.
  """

  num_heads: int
  head_dim: int
  mlp_dim: int
  use_rope: bool = False
  motion_only: bool = False
  dtype: Dtype = jnp.float32
  attention: str = "heads_major"  # layers.ATTENTION_IMPLEMENTATIONS

  @nn.compact
  def __call__(self, streams, temb: jax.Array, positions: jax.Array):
    cond, motion = (layers.with_logical_constraint(s, dit.ACTIVATION_AXES) for s in streams)
    num_cond = cond.shape[1]
    width = motion.shape[-1]

    shift, scale, gate, c_shift, c_scale, c_gate = dit.Modulation(6, width, self.dtype, name="attn_mod")(temb)
    norm1 = layers.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")
    motion_in = dit.modulate(norm1(motion), shift, scale)
    x = jnp.concatenate([dit.modulate(norm1(cond), c_shift, c_scale), motion_in], axis=1)

    def rope_motion(qk):  # RoPE only on motion tokens, as CogVideoX.
      return jnp.concatenate([qk[:, :num_cond], rope_3d(qk[:, num_cond:], positions)], axis=1)

    attention = dit.Attention(self.num_heads, self.head_dim, qk_norm=True, dtype=self.dtype,
                              implementation=self.attention, name="attn")
    if self.motion_only:
      q_transform = (lambda q: rope_3d(q, positions)) if self.use_rope else None
      k_transform = rope_motion if self.use_rope else None
      attn = attention(motion_in, x, q_transform=q_transform, k_transform=k_transform)
      motion = motion + gate.astype(self.dtype) * attn
      shift, scale, gate, _, _, _ = dit.Modulation(6, width, self.dtype, name="mlp_mod")(temb)
      norm2 = layers.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")
      h = dit.Mlp(self.mlp_dim, self.dtype, name="mlp")(dit.modulate(norm2(motion), shift, scale))
      return (cond, motion + gate.astype(self.dtype) * h), None

    transform = rope_motion if self.use_rope else None
    attn = attention(x, q_transform=transform, k_transform=transform)
    cond = cond + c_gate.astype(self.dtype) * attn[:, :num_cond]
    motion = motion + gate.astype(self.dtype) * attn[:, num_cond:]

    shift, scale, gate, c_shift, c_scale, c_gate = dit.Modulation(6, width, self.dtype, name="mlp_mod")(temb)
    norm2 = layers.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")
    x = jnp.concatenate([dit.modulate(norm2(cond), c_shift, c_scale), dit.modulate(norm2(motion), shift, scale)],
                        axis=1)
    h = dit.Mlp(self.mlp_dim, self.dtype, name="mlp")(x)
    cond = cond + c_gate.astype(self.dtype) * h[:, :num_cond]
    motion = motion + gate.astype(self.dtype) * h[:, num_cond:]
    return (cond, motion), None


class MotionExpert(nn.Module):
  """Velocity field over normalised scene-flow deltas, conditioned on VLM features.

  ``__call__(x_tau float[B, K, T, 3], tau float[B], features float[B, P, Dv], feature_mask bool[B, P])``
  returns ``(velocity float32[B, K, T, 3], hidden float[B, N, D])``.
  """

  config: ml_collections.ConfigDict
  dtype: Dtype = jnp.float32
  attention: str = "heads_major"  # layers.ATTENTION_IMPLEMENTATIONS

  @nn.compact
  def __call__(self, x_tau: jax.Array, tau: jax.Array, features: jax.Array, feature_mask: jax.Array):
    cfg = self.config
    b, k, t, c = x_tau.shape
    if (k, t, c) != (cfg.num_keypoints, cfg.num_steps, 3):
      raise ValueError(f"MotionExpert input has shape {x_tau.shape}; config expects [B, motion.num_keypoints="
                       f"{cfg.num_keypoints}, motion.num_steps={cfg.num_steps}, 3]")
    features, feature_mask = pool_condition(features, feature_mask, cfg.get("cond_pool", 1))
    prefix = features.shape[1]
    if prefix > cfg.cond_len:
      raise ValueError(f"VLM prefix has {prefix} tokens (after motion.cond_pool={cfg.get('cond_pool', 1)}) but "
                       f"motion.cond_len={cfg.cond_len}; raise motion.cond_len")
    width = cfg.width
    frames, rows, cols = token_grid(cfg)

    # Condition tokens: projected VLM features, learned padding where masked and beyond the prefix.
    cond = layers.DenseGeneral(width, ("embed", "embed"), dtype=self.dtype, name="cond_proj")(
        features.astype(self.dtype))
    pad = self.param("cond_pad", layers.param_with_axes(nn.initializers.normal(0.02), (None, "embed")),
                     (cfg.cond_len, width), jnp.float32).astype(self.dtype)
    cond = jnp.pad(cond, ((0, 0), (0, cfg.cond_len - prefix), (0, 0)))
    mask = jnp.pad(feature_mask, ((0, 0), (0, cfg.cond_len - prefix)))
    cond = jnp.where(mask[..., None], cond, pad[None])

    # Motion tokens with absolute 3-D sin-cos positions.
    motion = layers.DenseGeneral(width, ("patch_in", "embed"), dtype=self.dtype, name="patch_embed")(
        patchify(x_tau.astype(self.dtype), cfg))
    motion = motion + layers.sincos_3d(frames, rows, cols, width)[None].astype(self.dtype)
    ff, rr, cc = jnp.meshgrid(jnp.arange(frames), jnp.arange(rows), jnp.arange(cols), indexing="ij")
    positions = jnp.stack([ff.reshape(-1), rr.reshape(-1), cc.reshape(-1)], axis=-1).astype(jnp.float32)

    temb = dit.TimestepEmbedder(width, cfg.time_frequency_dim, self.dtype, name="time_embed")(
        jnp.broadcast_to(jnp.asarray(tau, jnp.float32), (b,)))
    # The last block's condition-stream output is never read: that block runs on the motion queries only.
    last = {"motion_only": True} if cfg.get("prune_last_condition", True) else None
    blocks = dit.stack(CogVideoXBlock, cfg.depth, scan=cfg.scan_layers, remat=cfg.remat,
                       remat_policy=cfg.get("remat_policy", layers.DEFAULT_REMAT_POLICY),
                       unroll=cfg.get("scan_unroll", 1), last_layer_kwargs=last, num_broadcast_args=2,
                       name="blocks", num_heads=cfg.num_heads, head_dim=width // cfg.num_heads,
                       mlp_dim=cfg.mlp_ratio * width, use_rope=cfg.use_rope, dtype=self.dtype,
                       attention=self.attention)
    _, hidden = blocks((cond, motion), temb, positions)

    shift, scale = dit.Modulation(2, width, self.dtype, name="out_mod")(temb)
    out = dit.modulate(layers.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm_out")(hidden), shift, scale)
    out = layers.DenseGeneral(cfg.patch_size**2 * cfg.frames_per_token * 3, ("embed", "patch_in"),
                              dtype=self.dtype, name="proj_out")(out)
    return unpatchify(out, cfg).astype(jnp.float32), hidden
