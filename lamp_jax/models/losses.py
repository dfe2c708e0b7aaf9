"""Named, weighted loss terms: the one way every model's ``compute_loss`` combines its objectives.

A model declares its term names; the config gives ``loss.weights = {term: weight}`` (stages override single
weights with ``model_overrides.loss.weights.<term>``). A term of weight 0 is not computed at all; its metric is 0.
Metrics: ``loss/<term>`` for every declared term (unweighted value) and ``loss`` (the weighted total).
"""

from __future__ import annotations

import copy
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections


def active_weights(weights: Mapping[str, float], terms: tuple[str, ...], model: str) -> dict[str, float]:
  """{term: weight > 0} after checking ``weights`` (config field ``model.loss.weights``) against ``terms``.

  Unknown names, negative weights and all-zero weights are errors naming the field. Declared terms that the
  config does not list weigh 0.
  """
  weights = {str(k): float(v) for k, v in dict(weights).items()}
  unknown = sorted(set(weights) - set(terms))
  if unknown:
    raise ValueError(f"config field model.loss.weights.{unknown[0]}: {model!r} has no loss term {unknown[0]!r} "
                     f"(terms: {list(terms)})")
  for name, w in weights.items():
    if w < 0:
      raise ValueError(f"config field model.loss.weights.{name} must be >= 0, got {w}")
  active = {name: w for name, w in weights.items() if w > 0}
  if not active:
    raise ValueError(f"config field model.loss.weights: every term of {model!r} weighs 0 (terms: {list(terms)}): "
                     "nothing to train")
  return active


def weighted_total(values: Mapping[str, jax.Array], weights: Mapping[str, float],
                   terms: tuple[str, ...]) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(total float32[], metrics) from the computed term ``values`` (the active terms) and their ``weights``."""
  zero = jnp.zeros((), jnp.float32)
  metrics = {f"loss/{name}": jnp.asarray(values.get(name, zero), jnp.float32) for name in terms}
  total = zero
  for name, value in values.items():
    total = total + jnp.float32(weights[name]) * value.astype(jnp.float32)
  metrics["loss"] = total
  return total, metrics


def without_sections(cfg: ml_collections.ConfigDict, sections: tuple[str, ...],
                     terms: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """A copy of the model config ``cfg`` without the ``sections`` and the ``terms``' loss weights it has: how a
  training-only option (LARA, latent-action pretraining, a frozen LAM) is taken off for the policy that
  ``sample_actions`` runs and an export keeps."""
  out = copy.deepcopy(cfg)
  with out.unlocked():
    for name in sections:
      if name in out:
        del out[name]
    for term in terms:
      if term in out.loss.weights:
        del out.loss.weights[term]
  return out
