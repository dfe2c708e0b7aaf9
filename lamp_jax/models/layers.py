"""Shared building blocks: parameter helpers with logical axis names, norms, positions, attention core.

Axis letters in einsum strings:
  b batch · t query positions · s key/value positions · n query heads · k kv heads · g query heads per kv head
  h head dim · d model width (embed) · f MLP width

Logical axis names (every parameter carries them; configs map them to mesh axes, see training/sharding.py):
  'embed'     model width                       'mlp'        MLP hidden width
  'q_heads'   query heads                        'kv_heads'   key/value heads
  'head_dim'  per-head width                     'vocab'      token vocabulary
  'layers'    stacked (scanned) layer axis       'norm'       norm scales / biases (never sharded)
  'patch_in'  flattened patch inputs (conv / patchify fan-in)
  'cond'      conditioning width (adaLN / time embedding inputs)
  'stem'      channels of a convolutional image stem (small; replicated by the default rules)
  'conv_in' / 'conv_out'  input / output channels of the VAE's convolutions and per-pixel linear maps
              (models/vae.py; replicated by the default rules: a frozen 84 M-parameter VAE at most)
Activations at block inputs carry ACTIVATION_AXES ('activation_batch', 'activation_length', 'activation_embed')
through ``with_logical_constraint`` (the identity unless the trainer installs a constraint).

Precision: parameters are float32; activations run in the module's ``dtype`` (bfloat16 or float32);
softmax, norms and RoPE are always computed in float32 and cast back.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Initializer = Any

LAYERS_AXIS = "layers"

# Logical names of activations (the trainer maps them to mesh axes; see training/sharding.py).
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")

_ACTIVATION_CONSTRAINT: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "lamp_jax_activation_constraint", default=None)


@contextlib.contextmanager
def activation_constraint(constrain: Callable[[jax.Array, Sequence[str | None]], jax.Array]) -> Iterator[None]:
  """Installs ``constrain(x, logical_names) -> x`` for ``with_logical_constraint`` while a step is traced.

  Models only name their activations' axes; the trainer (``training/sharding.activation_sharding``) decides
  what the names mean on its mesh. Outside this context the constraint is the identity.
  """
  token = _ACTIVATION_CONSTRAINT.set(constrain)
  try:
    yield
  finally:
    _ACTIVATION_CONSTRAINT.reset(token)


def with_logical_constraint(x: jax.Array, names: Sequence[str | None] = ACTIVATION_AXES) -> jax.Array:
  """``x`` constrained by the active ``activation_constraint`` (e.g. batch-sharded); ``x`` itself outside one
  (at init, in tests, at inference)."""
  constrain = _ACTIVATION_CONSTRAINT.get()
  if constrain is None:
    return x
  if len(names) != x.ndim:
    raise ValueError(f"activation of shape {x.shape} given {len(names)} logical axis names {tuple(names)}")
  return constrain(x, tuple(names))


def param_with_axes(init: Initializer, names: Sequence[str | None]) -> Initializer:
  """Wraps an initializer so that the created parameter carries logical axis ``names``."""
  return nn.with_logical_partitioning(init, tuple(names))


class DenseGeneral(nn.Module):
  """``nn.DenseGeneral`` whose kernel and bias carry logical axis names.

  ``features`` may be a tuple (e.g. (heads, head_dim)); ``kernel_axes`` names the kernel's axes
  (inputs first, then outputs); the bias takes the output axes.
  """

  features: int | Sequence[int]
  kernel_axes: Sequence[str | None]
  axis: int | Sequence[int] = -1
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=param_with_axes(self.kernel_init, self.kernel_axes),
        bias_init=param_with_axes(self.bias_init, self.kernel_axes[-len(features):]),
        name="dense",
    )(x)


class LayerNorm(nn.Module):
  """LayerNorm computed in float32, result cast to ``dtype``; scale/bias carry the 'norm' axis."""

  epsilon: float = 1e-6
  use_scale: bool = True
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(
        epsilon=self.epsilon,
        use_scale=self.use_scale,
        use_bias=self.use_bias,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        scale_init=param_with_axes(nn.initializers.ones_init(), ("norm",)),
        bias_init=param_with_axes(nn.initializers.zeros_init(), ("norm",)),
        name="ln",
    )(x.astype(jnp.float32))
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """Gemma RMSNorm: ``x / rms(x) * (1 + scale)``, scale initialised at zero, computed in float32."""

  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", param_with_axes(nn.initializers.zeros_init(), ("norm",)), (x.shape[-1],),
                       jnp.float32)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon) * (1.0 + scale)
    return y.astype(self.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, max_wavelength: float = 10_000.0) -> jax.Array:
  """Rotary position embedding (half-split layout, as Gemma / big_vision) computed in float32.

  Args:
    x: float[B, T, N, H] queries or keys (H even).
    positions: int/float[B, T] absolute positions.
  Returns:
    float[B, T, N, H] in x's dtype.
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
  fraction = 2.0 * jnp.arange(head_dim // 2, dtype=jnp.float32) / head_dim
  timescale = max_wavelength**fraction
  angles = positions.astype(jnp.float32)[..., None, None] / timescale  # [B, T, 1, H/2]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x32 = x.astype(jnp.float32)
  first, second = jnp.split(x32, 2, axis=-1)
  out = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return out.astype(x.dtype)


# Implementations of ``dot_product_attention`` (config fields ``attention``; all compute the same function):
#   'heads_major'  default: logits laid out [B, K, T * G, S] so that both matmuls and the softmax read their
#                  operands in place (no transposed copies of the [.., T, S] arrays), the 1/sqrt(H) scale folded
#                  into the queries, the softmax normalisation applied to the [.., T, H] output instead of the
#                  [.., T, S] weights, and no gradient through the max subtraction (the softmax does not depend
#                  on it). Same outputs as 'plain' to float32 rounding (tests/test_layers.py).
#   'plain'        the textbook computation (the reference the rewrites are tested and benchmarked against).
#   'jax_xla' / 'jax_cudnn'  ``jax.nn.dot_product_attention`` with implementation 'xla' / 'cudnn' (cuDNN flash
#                  attention: GPU only, float16 / bfloat16 only); fully masked query rows are zeroed afterwards.
#   'auto'         the models' default: 'jax_cudnn' where cuDNN runs it (GPU, float16 / bfloat16, head dim a
#                  multiple of 8 and <= 256), else 'heads_major' (CPU, TPU, float32). Measured on an H200 at paper
#                  size, bf16: the LaMP stage-2 train step 0.29 s with cuDNN against 0.38 s with 'heads_major'
#                  (docs/results.md).
ATTENTION_IMPLEMENTATIONS = ("auto", "heads_major", "plain", "jax_xla", "jax_cudnn")


def resolve_attention_implementation(implementation: str, dtype, head_dim: int) -> str:
  """'auto' -> the implementation it stands for here (see ``ATTENTION_IMPLEMENTATIONS``); others unchanged."""
  if implementation != "auto":
    return implementation
  cudnn_runs_it = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
                   and head_dim % 8 == 0 and head_dim <= 256)
  return "jax_cudnn" if cudnn_runs_it else "heads_major"


# What a rematerialised block keeps from its forward pass for the backward pass (``jax.checkpoint_policies``);
# every policy computes the same function and gradients, they trade memory against recomputation:
#   'nothing_saveable'                 keep only the block's inputs, recompute everything (flax's plain nn.remat;
#                                      the default, and openpi's choice for every block)
#   'dots_with_no_batch_dims_saveable' also keep the outputs of matmuls against weights (projections, MLP): the
#                                      backward recomputes only the elementwise ops and the attention's
#                                      batched matmuls
#   'dots_saveable'                    keep every matmul's output, attention's included
REMAT_POLICIES = ("nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")
DEFAULT_REMAT_POLICY = "nothing_saveable"


def check_remat_policy(name: str, field: str) -> None:
  """Raises naming the config ``field`` when ``name`` is not one of ``REMAT_POLICIES``."""
  if name not in REMAT_POLICIES:
    raise ValueError(f"{field}={name!r} is not a rematerialisation policy; choose one of {REMAT_POLICIES}")


def maybe_remat(block: type[nn.Module], remat: bool, policy: str = DEFAULT_REMAT_POLICY, *,
                prevent_cse: bool = False) -> type[nn.Module]:
  """``block`` unchanged, or (``remat``) wrapped in ``nn.remat`` saving what ``policy`` names (``REMAT_POLICIES``)
  for the backward pass. ``prevent_cse=False`` is right inside ``nn.scan`` (jax's advice for checkpoint in scan)."""
  check_remat_policy(policy, "remat_policy")
  if not remat:
    return block
  return nn.remat(block, prevent_cse=prevent_cse, policy=getattr(jax.checkpoint_policies, policy))


def check_attention_implementation(name: str, field: str) -> None:
  """Raises naming the config ``field`` when ``name`` is not one of ``ATTENTION_IMPLEMENTATIONS``."""
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"{field}={name!r} is not an attention implementation; choose one of "
                     f"{ATTENTION_IMPLEMENTATIONS}")


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                          *, scale: float | None = None, implementation: str = "heads_major") -> jax.Array:
  """Multi-head / grouped-query attention with a float32 softmax.

  Args:
    q: float[B, T, N, H] queries (N = K * G query heads).
    k, v: float[B, S, K, H] keys / values (K kv heads, K divides N).
    mask: bool[B, T, S] or bool[B, M, T, S] with M in (1, K) (True = may attend), or None for full attention.
    scale: logit scale, default 1/sqrt(H).
    implementation: one of ``ATTENTION_IMPLEMENTATIONS`` (see there); all give the same result.
  Returns:
    float[B, T, N, H] in q's dtype. Fully masked query rows return zeros, not NaN.
  """
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  if n % kv_heads:
    raise ValueError(f"{n} query heads are not a multiple of {kv_heads} kv heads")
  if mask is not None and mask.ndim not in (3, 4):
    raise ValueError(f"attention mask must be bool[B, T, S] or bool[B, M, T, S], got shape {mask.shape}")
  scale = h**-0.5 if scale is None else scale
  implementation = resolve_attention_implementation(implementation, q.dtype, h)
  if implementation == "heads_major":
    return _heads_major_attention(q, k, v, mask, scale)
  if implementation == "plain":
    return plain_dot_product_attention(q, k, v, mask, scale=scale)
  if implementation in ("jax_xla", "jax_cudnn"):
    return _jax_nn_attention(q, k, v, mask, scale, implementation[len("jax_"):])
  check_attention_implementation(implementation, "implementation")
  raise AssertionError("unreachable")


def plain_dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                                *, scale: float | None = None) -> jax.Array:
  """The textbook attention (the reference of ``dot_product_attention``; same arguments and result)."""
  b, t, n, h = q.shape
  kv_heads = k.shape[2]
  g = n // kv_heads
  scale = h**-0.5 if scale is None else scale
  q = q.reshape(b, t, kv_heads, g, h)
  logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    if mask.ndim == 3:
      mask = mask[:, None, None, :, :]
    elif mask.ndim == 4:
      mask = mask[:, :, None, :, :]
    big_neg = jnp.finfo(jnp.float32).min
    logits = jnp.where(mask, logits, big_neg)
  probs = jax.nn.softmax(logits, axis=-1)
  if mask is not None:
    probs = jnp.where(mask, probs, 0.0)
  out = jnp.einsum("bkgts,bskh->btkgh", probs.astype(v.dtype), v)
  return out.reshape(b, t, n, h)


def _heads_major_attention(q, k, v, mask, scale):
  """'heads_major' (see ``ATTENTION_IMPLEMENTATIONS``). Axis letters: q = T * G query rows of one kv head."""
  b, t, n, h = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  g = n // kv_heads
  # [B, T, K, G, H] -> [B, K, T * G, H]: a bitcast when K == 1 (multi-query attention).
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv_heads, g, h)
  q = q.transpose(0, 2, 1, 3, 4).reshape(b, kv_heads, t * g, h)
  k = k.transpose(0, 2, 1, 3)  # [B, K, S, H]
  v = v.transpose(0, 2, 1, 3)
  logits = jnp.einsum("bkqh,bksh->bkqs", q, k, preferred_element_type=jnp.float32)
  if mask is not None:
    mask = mask[:, None] if mask.ndim == 3 else mask  # [B, M, T, S], M in (1, K)
    m = mask.shape[1]
    mask = jnp.broadcast_to(mask[:, :, :, None, :], (b, m, t, g, s)).reshape(b, m, t * g, s)
    logits = jnp.where(mask, logits, -jnp.inf)
  # The softmax is invariant to the shift: no gradient flows through it (exact, and saves the max's backward).
  shift = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)  # fully masked rows: exp(-inf) = 0 below, no NaN
  weights = jnp.exp(logits - shift)  # unnormalised, in [0, 1]
  total = jnp.sum(weights, axis=-1, keepdims=True)
  out = jnp.einsum("bkqs,bksh->bkqh", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
  out = out / jnp.maximum(total, jnp.finfo(jnp.float32).tiny)  # fully masked rows: 0 / tiny = 0
  out = out.astype(q.dtype).reshape(b, kv_heads, t, g, h).transpose(0, 2, 1, 3, 4)
  return out.reshape(b, t, n, h)


# cuDNN's fused attention refuses to train unless both sequence lengths are even ("Unsupported sequence length Q 11,
# KV 827", and "Q 11, KV 11" without a mask; seen on an H200 with jax 0.11.2): queries and keys are padded to this
# multiple (padded keys masked out, padded query rows sliced off).
CUDNN_LENGTH_MULTIPLE = 2


def _pad_axis(x: jax.Array, axis: int, multiple: int) -> jax.Array:
  pad = -x.shape[axis] % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def _jax_nn_attention(q, k, v, mask, scale, implementation, pad_multiple: int | None = None):
  """``jax.nn.dot_product_attention`` (its fully masked rows average all values: zeroed here).

  ``pad_multiple``: pad the query and key lengths to this multiple first (exact: padded keys are masked out,
  padded queries dropped); default ``CUDNN_LENGTH_MULTIPLE`` for 'cudnn', 1 for 'xla'."""
  if pad_multiple is None:
    pad_multiple = CUDNN_LENGTH_MULTIPLE if implementation == "cudnn" else 1
  t = q.shape[1]
  if pad_multiple > 1 and (t % pad_multiple or k.shape[1] % pad_multiple):
    if mask is None:
      mask = jnp.ones((q.shape[0], t, k.shape[1]), bool)
    q = _pad_axis(q, 1, pad_multiple)
    k, v = _pad_axis(k, 1, pad_multiple), _pad_axis(v, 1, pad_multiple)
    mask = _pad_axis(_pad_axis(mask, -1, pad_multiple), -2, pad_multiple)  # padding is False: never attended
    return _jax_nn_attention(q, k, v, mask, scale, implementation, pad_multiple=1)[:, :t]
  if mask is not None:
    mask = mask[:, None] if mask.ndim == 3 else mask  # [B, 1 or K, T, S]; jax.nn broadcasts over query heads
    if mask.shape[1] not in (1, q.shape[2]):
      mask = jnp.repeat(mask, q.shape[2] // mask.shape[1], axis=1)
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation=implementation)
  if mask is not None:
    any_key = jnp.any(mask, axis=-1)  # [B, 1 or N, T]
    out = jnp.where(jnp.moveaxis(any_key, 1, 2)[..., None], out, jnp.zeros((), out.dtype))
  return out


def sincos_1d(positions: np.ndarray | jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sin-cos embedding of (possibly fractional) positions. Returns float32[..., dim] as [sin | cos]."""
  if dim % 2:
    raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
  half = dim // 2
  freqs = jnp.exp(-np.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sincos_2d(height: int, width: int, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """2-D sin-cos grid embedding (MoCo v3 / big_vision layout). Returns float32[height * width, dim]."""
  if dim % 4:
    raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
  yy, xx = np.mgrid[:height, :width]
  emb_x = sincos_1d(xx.reshape(-1), dim // 2, max_period)
  emb_y = sincos_1d(yy.reshape(-1), dim // 2, max_period)
  return jnp.concatenate([emb_x, emb_y], axis=-1)


def sincos_3d(frames: int, height: int, width: int, dim: int, temporal_fraction: float = 0.25,
              max_period: float = 10_000.0) -> jax.Array:
  """3-D (time, height, width) sin-cos embedding as CogVideoX: [temporal | spatial(x, y)] channels.

  CogVideoX gives 1/4 of the channels to time and 3/4 to space (split evenly between x and y).

  Returns float32[frames * height * width, dim] in (time, height, width) row-major order.
  """
  if dim % 2:
    raise ValueError(f"3-D sin-cos embedding needs an even dim, got {dim}")
  dim_s = int(dim * (1.0 - temporal_fraction)) // 4 * 4  # spatial channels (multiple of 4)
  dim_t = dim - dim_s  # temporal channels (even), 1/4 of the width for widths divisible by 16
  spatial = sincos_2d(height, width, dim_s, max_period)  # [h*w, dim_s]
  temporal = sincos_1d(np.arange(frames), dim_t, max_period)  # [f, dim_t]
  spatial = jnp.broadcast_to(spatial[None], (frames, height * width, dim_s))
  temporal = jnp.broadcast_to(temporal[:, None], (frames, height * width, dim_t))
  return jnp.concatenate([temporal, spatial], axis=-1).reshape(frames * height * width, dim)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0, scale: float = 1000.0) -> jax.Array:
  """DiT-style sinusoidal embedding of flow times t in [0, 1] (scaled by ``scale``). float32[B] -> [B, dim]."""
  return sincos_1d(t * scale, dim, max_period)
