"""Gaussian (z, a) tasks whose mutual information is known in closed form: calibration for the MI estimators.

  correlated_gaussian(ρ)        z_i, a_i standard normal, corr(z_i, a_i) = ρ_i, pairs independent:
                                I = −½ Σ_i log(1 − ρ_i²)
  linear_gaussian_channel(...)  z ~ N(0, Σ), a = W z + σ ε, ε ~ N(0, I):
                                I = ½ log det(I + W Σ Wᵀ / σ²)
  independent_gaussian(...)     z, a independent: I = 0

Use them in a notebook to see what an estimator reports at your n, k, network size and steps before reading
its number on latent actions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class GaussianTask:
  """A sampler of paired (z float64[N, Dz], a float64[N, Da]) with its exact MI.

  Attributes:
    name: what the task is (for tables and messages).
    nats: I(z; a) in nats.
    draw: ``draw(n, rng) -> (z, a)``.
    a_total_correlation_nats: Σ_j H(a_j) − H(a) of the action marginal (0 when a's dimensions are
      independent): what a diagonal-Gaussian entropy H(a) overstates.
  """

  name: str
  nats: float
  draw: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
  a_total_correlation_nats: float = 0.0

  @property
  def bits(self) -> float:
    return self.nats / LN2

  @property
  def a_total_correlation_bits(self) -> float:
    return self.a_total_correlation_nats / LN2

  def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n paired samples from a generator seeded with ``seed``."""
    return self.draw(n, np.random.default_rng(seed))


def gaussian_total_correlation_nats(covariance: np.ndarray) -> float:
  """Σ_j H(x_j) − H(x) of a Gaussian x with ``covariance`` float[D, D]: −½ log det of its correlation matrix."""
  scale = np.sqrt(np.diag(covariance))
  _, logdet = np.linalg.slogdet(covariance / np.outer(scale, scale))
  return float(-0.5 * logdet)


def correlated_gaussian(rhos: tuple[float, ...]) -> GaussianTask:
  """len(ρ) independent pairs (z_i, a_i) of standard normals with correlation ρ_i each."""
  rho = np.asarray(rhos, np.float64)
  if rho.ndim != 1 or rho.size == 0 or np.any(np.abs(rho) >= 1):
    raise ValueError(f"rhos must be a non-empty sequence of correlations in (-1, 1), got {rhos}")

  def draw(n, rng):
    z = rng.normal(size=(n, rho.size))
    a = rho * z + np.sqrt(1 - rho**2) * rng.normal(size=(n, rho.size))
    return z, a

  return GaussianTask(name=f"correlated_gaussian(rho={tuple(float(r) for r in rho)})",
                      nats=float(-0.5 * np.sum(np.log1p(-rho**2))), draw=draw)


def linear_gaussian_channel(z_dim: int, a_dim: int, noise_std: float, seed: int = 0,
                            z_correlation: float = 0.3) -> GaussianTask:
  """a = W z + σ ε with a seeded W float[Da, Dz] (entries N(0, 1/Dz)) and z ~ N(0, Σ).

  Σ has unit diagonal and ``z_correlation`` off the diagonal (equicorrelated), so neither z nor a has
  independent dimensions.
  """
  if noise_std <= 0:
    raise ValueError(f"noise_std must be positive, got {noise_std}")
  rng = np.random.default_rng(seed)
  weights = rng.normal(size=(a_dim, z_dim)) / math.sqrt(z_dim)
  z_cov = np.full((z_dim, z_dim), z_correlation) + (1 - z_correlation) * np.eye(z_dim)
  z_chol = np.linalg.cholesky(z_cov)
  signal_cov = weights @ z_cov @ weights.T
  _, logdet = np.linalg.slogdet(np.eye(a_dim) + signal_cov / noise_std**2)

  def draw(n, rng):
    z = rng.normal(size=(n, z_dim)) @ z_chol.T
    return z, z @ weights.T + noise_std * rng.normal(size=(n, a_dim))

  return GaussianTask(name=f"linear_gaussian_channel(z_dim={z_dim}, a_dim={a_dim}, noise_std={noise_std})",
                      nats=float(0.5 * logdet), draw=draw,
                      a_total_correlation_nats=gaussian_total_correlation_nats(
                          signal_cov + noise_std**2 * np.eye(a_dim)))


def independent_gaussian(z_dim: int, a_dim: int) -> GaussianTask:
  """z and a independent standard normals: I = 0."""

  def draw(n, rng):
    return rng.normal(size=(n, z_dim)), rng.normal(size=(n, a_dim))

  return GaussianTask(name=f"independent_gaussian(z_dim={z_dim}, a_dim={a_dim})", nats=0.0, draw=draw)
