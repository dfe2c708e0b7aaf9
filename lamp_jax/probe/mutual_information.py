"""I(z; a) in bits by one of three estimators, mean ± std over seeds, with a mismatch sanity score.

  estimator  what it is                                         reads as
  'ksg'      k-nearest-neighbour estimate (``probe.ksg``)        biased low in high dimension / at high MI
  'ba'       Barber–Agakov bound, Gaussian decoder q(a | z)     ``probe.neural_mi``: low unless q is exact;
                                                                the diagonal H(a) plug-in can push it high
  'mine'     Donsker–Varadhan bound, MLP critic                 ``probe.neural_mi``: low; noisy

Seeds: each seed reruns the whole estimator — for KSG a new random projection (and subset), for the neural
bounds a new train / validation / test split, initialisation and minibatch order. The std is the sample std
(ddof 1) over seeds, 0 for one seed.

Mismatch score: the same estimator, same seed, on the pairs with a shuffled (a random permutation of the rows
of a, a fresh one per seed), i.e. on a sample of the product of the marginals. Its true MI is 0, so it shows
the estimator's own floor and spread; a latent whose MI is not clearly above its mismatch score carries no
measurable action information. (MVP-LAM permutes the pairing of the test split only, after training; here the
neural estimators are trained on shuffled pairs too, which tests the whole procedure — overfitting
included — rather than one trained network.)

Example (a notebook):

  from lamp_jax import probe
  est = probe.estimate_mutual_information(z, actions, "ksg", seeds=(0, 1, 2))
  print(f"{est.bits_mean:.3f} ± {est.bits_std:.3f} bits (mismatch {est.mismatch_bits_mean:.3f})")
  small = probe.NeuralMIConfig(hidden_dim=64, depth=2, max_steps=1000, batch_size=256)
  est = probe.estimate_mutual_information(z, actions, "ba", neural_config=small)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from lamp_jax.probe import arrays, ksg, neural_mi

METHODS = ("ksg", "ba", "mine")


@dataclasses.dataclass(frozen=True)
class MIEstimate:
  """An estimator's result over seeds (all in bits).

  Attributes:
    method: 'ksg', 'ba' or 'mine'.
    seeds: the seeds, in order.
    bits_per_seed, bits_mean, bits_std: the estimates.
    mismatch_bits_per_seed, mismatch_bits_mean, mismatch_bits_std: on shuffled pairs (None when not run).
    num_pairs: pairs given.
    details: per seed, what the estimator reports besides its number (KSG: points and dimensions; neural:
      split sizes, steps, best step).
  """

  method: str
  seeds: tuple[int, ...]
  bits_per_seed: tuple[float, ...]
  bits_mean: float
  bits_std: float
  mismatch_bits_per_seed: tuple[float, ...] | None
  mismatch_bits_mean: float | None
  mismatch_bits_std: float | None
  num_pairs: int
  details: tuple[dict[str, Any], ...]

  def to_dict(self) -> dict[str, Any]:
    """JSON-able (plain floats, ints, lists, dicts)."""
    out = dataclasses.asdict(self)
    for key, value in out.items():
      if isinstance(value, tuple):
        out[key] = list(value)
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (ddof 1; 0 for a single value) of ``values``."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def shuffled_pairs(a: np.ndarray, seed: int) -> np.ndarray:
  """``a`` with its rows permuted (a stream independent of the estimators' own use of ``seed``)."""
  return np.asarray(a)[np.random.default_rng([seed, 0x5EED]).permutation(len(a))]


def _estimate_once(method: str, z: np.ndarray, a: np.ndarray, seed: int, ksg_config: ksg.KSGConfig,
                   neural_config: neural_mi.NeuralMIConfig) -> tuple[float, dict[str, Any]]:
  if method == "ksg":
    result = ksg.ksg_mutual_information(z, a, ksg_config, seed)
    return result.bits, {"num_points": result.num_points, "z_dim": result.z_dim, "a_dim": result.a_dim}
  result = neural_mi.estimate(method, z, a, neural_config, seed)
  return result.bits, {"val_bits": result.val_bits, "best_step": result.best_step, "steps": result.steps,
                       "num_train": result.num_train, "num_val": result.num_val, "num_test": result.num_test}


def estimate_mutual_information(z: np.ndarray, a: np.ndarray, method: str, seeds: Sequence[int] = (0, 1, 2),
                       ksg_config: ksg.KSGConfig = ksg.KSGConfig(),
                       neural_config: neural_mi.NeuralMIConfig = neural_mi.NeuralMIConfig(),
                       mismatch: bool = True) -> MIEstimate:
  """Estimates I(z; a) in bits with ``method`` once per seed (and on shuffled pairs when ``mismatch``).

  Args:
    z: float[N, ...] latents (every per-sample axis is flattened: float[N, L, D] -> float[N, L·D]).
    a: float[N, Da] actions (e.g. ``probe.targets.net_relative_action_targets``).
    method: 'ksg', 'ba' or 'mine'.
    seeds: one estimate per seed.
    ksg_config: KSG settings (used by 'ksg').
    neural_config: training settings (used by 'ba' and 'mine').
    mismatch: also run the estimator on shuffled pairs.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  seeds = tuple(int(s) for s in seeds)
  if not seeds:
    raise ValueError("seeds is empty: give at least one seed")
  z, a = arrays.paired_inputs(z, a)
  bits, details, mismatch_bits = [], [], []
  for seed in seeds:
    value, info = _estimate_once(method, z, a, seed, ksg_config, neural_config)
    bits.append(value)
    details.append(info)
    if mismatch:
      mismatch_bits.append(_estimate_once(method, z, shuffled_pairs(a, seed), seed, ksg_config, neural_config)[0])
  mean, std = mean_std(bits)
  mismatch_mean, mismatch_std = mean_std(mismatch_bits) if mismatch else (None, None)
  return MIEstimate(method=method, seeds=seeds, bits_per_seed=tuple(bits), bits_mean=mean, bits_std=std,
                    mismatch_bits_per_seed=tuple(mismatch_bits) if mismatch else None,
                    mismatch_bits_mean=mismatch_mean, mismatch_bits_std=mismatch_std, num_pairs=int(z.shape[0]),
                    details=tuple(details))
