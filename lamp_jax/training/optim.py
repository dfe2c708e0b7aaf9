"""Optimizer of one training stage: AdamW, warmup + cosine decay, clipping, accumulation, freezing, EMA.

A stage's ``optimizer`` config (``ml_collections.ConfigDict``):
  lr               peak learning rate after warmup
  end_lr           learning rate at the end of the cosine decay
  warmup_steps     linear warmup from 0 to ``lr`` (optimizer updates)
  decay_steps      total schedule length incl. warmup (0 = the stage's length in updates)
  b1, b2, eps      AdamW moments
  weight_decay     decoupled weight decay
  decay_vectors    also decay 1-D parameters (norm scales, biases); released LaMP (torch AdamW) does. With False,
                   "1-D" is counted without the stacked-layers axis of scanned modules (a [L, D] bias stack is a
                   vector per layer), read from the parameters' logical axis names (``weight_decay_mask``)
  clip_norm        global-norm gradient clipping (0 = off)
  grad_accum_steps accumulate this many micro-batches per update (``optax.MultiSteps``; 1 = off)

Freezing: ``frozen`` is a list of regular expressions matched (``re.search``) against '/'-joined parameter
paths such as ``vlm/llm/layers/attn/q/dense/kernel``. Frozen parameters get ``optax.set_to_zero`` (no
optimizer state is allocated for them) and therefore stay bit-identical.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

TRAINABLE = "trainable"
FROZEN = "frozen"


def param_path(path) -> str:
  """'/'-joined names of a tree path (dict keys, attribute names, sequence indices)."""
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      parts.append(str(k))
  return "/".join(parts)


def freeze_labels(params: Any, frozen_patterns: Sequence[str]) -> Any:
  """Tree of 'trainable' / 'frozen' labels with the structure of ``params``."""
  compiled = [re.compile(p) for p in frozen_patterns]

  def label(path, _):
    name = param_path(path)
    return FROZEN if any(c.search(name) for c in compiled) else TRAINABLE

  return jax.tree_util.tree_map_with_path(label, params)


def hold_frozen(params: Any, labels: Any) -> Any:
  """``params`` with every leaf labelled ``FROZEN`` (``freeze_labels``) behind ``stop_gradient``: no backward
  pass through the frozen parameters (the train step's freezing; the optimizer's is in ``make_optimizer``)."""
  return jax.tree.map(lambda p, label: jax.lax.stop_gradient(p) if label == FROZEN else p, params, labels)


def check_frozen_patterns(params: Any, frozen_patterns: Sequence[str], field: str) -> None:
  """Every pattern must match at least one parameter, otherwise it is a typo: fail naming the field."""
  names = [param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  for pattern in frozen_patterns:
    try:
      compiled = re.compile(pattern)
    except re.error as e:
      raise ValueError(f"config field {field}: bad regular expression {pattern!r}: {e}") from e
    if not any(compiled.search(n) for n in names):
      top = sorted({n.split("/")[0] for n in names})
      raise ValueError(f"config field {field}: pattern {pattern!r} matches no parameter "
                       f"(top-level parameter groups: {top})")


def learning_rate_schedule(opt_cfg: ml_collections.ConfigDict, stage_updates: int) -> optax.Schedule:
  """Linear warmup to ``lr`` then cosine decay to ``end_lr`` over ``decay_steps`` (default: the stage)."""
  decay_steps = int(opt_cfg.decay_steps) or int(stage_updates)
  warmup = int(opt_cfg.warmup_steps)
  if warmup >= decay_steps:
    return optax.linear_schedule(0.0, float(opt_cfg.lr), max(warmup, 1))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(opt_cfg.lr), warmup_steps=warmup, decay_steps=decay_steps,
      end_value=float(opt_cfg.end_lr))


def weight_decay_mask(abstract_boxed_params: Any) -> Any:
  """Bool tree over the *unboxed* params: True for parameters with >= 2 dimensions besides the stacked-layers axis
  (``layers.LAYERS_AXIS``, the leading axis of scanned modules). Takes the boxed params (``nn.Partitioned``
  leaves carry logical axis names; plain arrays count all their dimensions)."""
  from lamp_jax.models import layers  # pylint: disable=g-import-not-at-top

  def matrix_like(leaf) -> bool:
    names = tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else ()
    ndim = len(jax.tree.leaves(leaf)[0].shape)
    return ndim - sum(name == layers.LAYERS_AXIS for name in names) >= 2

  return jax.tree.map(matrix_like, abstract_boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def make_optimizer(opt_cfg: ml_collections.ConfigDict, frozen_patterns: Sequence[str],
                   stage_steps: int, decay_mask: Any = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The stage's optax transformation (over *unboxed* params) and its learning-rate schedule.

  ``stage_steps`` counts micro-batches (train-step calls); the schedule counts optimizer updates.
  ``decay_mask``: with ``decay_vectors`` False, the bool tree of ``weight_decay_mask`` (None: every parameter
  with ndim >= 2, right only for models without scanned layers).
  """
  accum = int(opt_cfg.grad_accum_steps)
  schedule = learning_rate_schedule(opt_cfg, max(stage_steps // accum, 1))
  if opt_cfg.decay_vectors:
    wd_mask = None
  elif decay_mask is not None:
    wd_mask = decay_mask
  else:
    wd_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
  parts = []
  if float(opt_cfg.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(opt_cfg.clip_norm)))
  parts.append(optax.adamw(schedule, b1=float(opt_cfg.b1), b2=float(opt_cfg.b2), eps=float(opt_cfg.eps),
                           weight_decay=float(opt_cfg.weight_decay), mask=wd_mask))
  tx = optax.chain(*parts)
  if frozen_patterns:
    patterns = tuple(frozen_patterns)
    tx = optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                               lambda params: freeze_labels(params, patterns))
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx, schedule


def ema_update(ema_params: Any, params: Any, step: jax.Array, decay: float, warmup: bool = True) -> Any:
  """``ema <- d * ema + (1 - d) * params`` with d = min(decay, (1 + step) / (10 + step)) when ``warmup``.

  Computed as ``ema + (1 - d) * (params - ema)``: the same value, but a leaf whose EMA already equals its
  parameters (a frozen subtree loaded into both) stays bit-exact, where ``d * e + (1 - d) * e`` rounds."""
  d = jnp.asarray(decay, jnp.float32)
  if warmup:
    s = step.astype(jnp.float32)
    d = jnp.minimum(d, (1.0 + s) / (10.0 + s))
  return jax.tree.map(lambda e, p: (e + (1.0 - d) * (p - e)).astype(e.dtype), ema_params, params)
