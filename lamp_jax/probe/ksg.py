"""Kraskov–Stögbauer–Grassberger (KSG) estimator of mutual information I(z; a), in bits.

Estimator 1 of Kraskov, Stögbauer & Grassberger (2004), with the max-norm in every space:

  I(z; a) ≈ ψ(k) + ψ(N) − ⟨ψ(n_z(i) + 1) + ψ(n_a(i) + 1)⟩_i          (nats; divided by ln 2 here)

where ε_i is the max-norm distance from sample i to its k-th nearest neighbour in the joint space (z, a), and
n_z(i), n_a(i) count the other samples strictly closer than ε_i to sample i in the z and the a space alone.

Preprocessing, as MVP-LAM probes latent actions:
  1. z is flattened to float[N, D] (a latent of L codes × d dims gives D = L·d), z and a are z-scored per
     dimension on the evaluated set itself.
  2. Optional fixed random projection of z to ``projection_dim`` dimensions (a seeded Gaussian matrix): KSG is
     unstable in high dimension. A projection is a function of z, so by data processing the projected MI is a
     lower bound on the MI of the full latent. The projected z is z-scored again (an invertible per-dimension
     scaling changes the true MI not at all, but the max-norm neighbourhoods assume comparable scales).
     When D <= projection_dim there is nothing to reduce and z is used as is (``KSGResult.z_dim`` says so).
  3. Low-amplitude noise (``jitter``, relative to unit variance) separates exact duplicates: a VQ latent takes
     few distinct values, and KSG's strict neighbour counts are degenerate at distance 0 (Kraskov et al. add
     1e-10 noise for the same reason). On discrete z the estimate stays heuristic (the mixed
     discrete-continuous case is not what KSG was derived for): report it next to the neural bounds.

Bias (measured with ``ksg_mutual_information``, k = 3, no projection; mean ± std over 20 draws per row;
``python -c "from lamp_jax.probe import ksg; print(ksg.bias_table())"`` prints it again, in 25 s):

  task A: z, a ∈ R¹, correlation ρ = 0.9, true I = 1.198 bits
  task B: z, a ∈ R⁴, four independent pairs with ρ = 0.6, true I = 1.288 bits
  task C: z ∈ R⁸, a = W z + ε ∈ R³ with σ = 1 (``gaussian_tasks.linear_gaussian_channel(8, 3, 1.0)``),
          true I = 1.443 bits

  | n    | task A (1.198) | task B (1.288) | task C (1.443) |
  |------|----------------|----------------|----------------|
  | 100  | 1.197 ± 0.154  | 0.718 ± 0.119  | 0.656 ± 0.060  |
  | 300  | 1.209 ± 0.094  | 0.873 ± 0.079  | 0.806 ± 0.080  |
  | 1000 | 1.216 ± 0.065  | 1.036 ± 0.055  | 0.964 ± 0.046  |
  | 3000 | 1.210 ± 0.022  | 1.118 ± 0.030  | 1.077 ± 0.027  |

KSG underestimates, more so in higher dimension and at larger MI (the k-NN balls of a strongly dependent pair
are elongated, so the max-norm box overcounts marginal neighbours); the bias shrinks slowly with n. Compare
models at equal n, equal k and equal projection only.

Cost: the KD-tree's neighbour counts visit every point inside each ball (hundreds per point at 10^4 points in
8 + 7 dimensions), so the default backend computes all pairwise max-norm distances in float64 blocks with JAX
(O(N²), exact, same counts): 10 000 pairs in 8 + 7 dimensions took 3.3 CPU-s (KD-tree: 5.1), 50 000 pairs
58 CPU-s, on the 2-core CPU box (docs/probing.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import spatial, special

from lamp_jax.probe import arrays, gaussian_tasks

LN2 = math.log(2.0)
BACKENDS = ("brute", "kdtree")
BRUTE_FORCE_BLOCK_ELEMENTS = 1 << 21  # pairwise distances per row block of the brute-force backend


@dataclasses.dataclass(frozen=True)
class KSGConfig:
  """Settings of the KSG estimator.

  Attributes:
    k: neighbours in the joint space (Kraskov et al. recommend 2-4; larger k: less variance, more bias).
    projection_dim: random-projection dimension of z, or None for none. MVP-LAM projects the latent (codes
      included) to a fixed low dimension; the value is not legible in our copy of the paper, 8 is our default.
    jitter: standard deviation of the noise added to the z-scored variables to break exact ties.
    max_points: evaluate on a seeded random subset of at most this many pairs (None: all).
    backend: 'brute' (all pairwise distances, float64, on the JAX device: O(N²), the fast one from a few
      thousand points in 8 + 7 dimensions on) or 'kdtree' (scipy; fast at low dimension and small N).
    workers: threads of the KD-tree queries (scipy's ``workers``; -1 = all cores).
  """

  k: int = 3
  projection_dim: int | None = 8
  jitter: float = 1e-10
  max_points: int | None = None
  backend: str = "brute"
  workers: int = 1


@dataclasses.dataclass(frozen=True)
class KSGResult:
  """One KSG estimate: ``bits`` of I(z; a) on ``num_points`` pairs, z of ``z_dim`` dimensions after projection."""

  bits: float
  num_points: int
  z_dim: int
  a_dim: int


def random_projection(z: np.ndarray, projection_dim: int, seed: int) -> np.ndarray:
  """float[N, D] -> float[N, projection_dim] by a seeded Gaussian matrix with N(0, 1/projection_dim) entries."""
  matrix = np.random.default_rng([seed, 2]).normal(size=(z.shape[1], projection_dim)) / math.sqrt(projection_dim)
  return z @ matrix


def _kdtree_counts(z: np.ndarray, a: np.ndarray, k: int, workers: int) -> tuple[np.ndarray, ...]:
  """(ε float64[N], n_z int[N], n_a int[N]) with scipy KD-trees (max-norm)."""
  joint = np.concatenate([z, a], axis=1)
  distances, _ = spatial.cKDTree(joint).query(joint, k=k + 1, p=np.inf, workers=workers)
  radius = distances[:, k]  # column 0 is the point itself
  inside = np.nextafter(radius, 0.0)  # strict inequality: distance < ε

  def count(x):  # other rows strictly within ε
    return spatial.cKDTree(x).query_ball_point(x, inside, p=np.inf, return_length=True, workers=workers) - 1

  return radius, count(z), count(a)


def _chebyshev_block(rows: jax.Array, points_t: jax.Array) -> jax.Array:
  """Max-norm distances float[B, N] from rows float[B, D] to points (transposed: float[D, N]), one dimension at
  a time (XLA fuses the loop; a [B, N, D] broadcast would not vectorise as well)."""
  distance = jnp.abs(rows[:, 0:1] - points_t[0][None, :])
  for j in range(1, points_t.shape[0]):
    distance = jnp.maximum(distance, jnp.abs(rows[:, j:j + 1] - points_t[j][None, :]))
  return distance


def _kth_smallest(distance: jax.Array, k: int) -> jax.Array:
  """Per row of float[B, N], the smallest v with #(distance <= v) >= k + 1 (ties counted; the row's own zero
  distance included): the distance to the k-th neighbour, as a KD-tree query of k + 1 points returns it."""
  previous = jnp.full(distance.shape[:1], -jnp.inf, distance.dtype)
  count = jnp.zeros(distance.shape[:1], jnp.int32)
  radius = jnp.full(distance.shape[:1], jnp.inf, distance.dtype)
  for _ in range(k + 1):
    value = jnp.min(jnp.where(distance > previous[:, None], distance, jnp.inf), axis=1)
    count = count + jnp.sum(distance == value[:, None], axis=1)
    radius = jnp.where((count >= k + 1) & jnp.isinf(radius), value, radius)
    previous = value
  return radius


@functools.partial(jax.jit, static_argnames=("k", "block_rows"))
def _brute_force_counts_jit(z: jax.Array, a: jax.Array, k: int, block_rows: int) -> tuple[jax.Array, ...]:
  n = z.shape[0]
  num_blocks = -(-n // block_rows)
  pad = num_blocks * block_rows - n
  z_blocks = jnp.pad(z, ((0, pad), (0, 0))).reshape(num_blocks, block_rows, z.shape[1])
  a_blocks = jnp.pad(a, ((0, pad), (0, 0))).reshape(num_blocks, block_rows, a.shape[1])
  z_t, a_t = z.T, a.T

  def block(rows):
    distance_z, distance_a = _chebyshev_block(rows[0], z_t), _chebyshev_block(rows[1], a_t)
    radius = _kth_smallest(jnp.maximum(distance_z, distance_a), k)
    inside = lambda distance: jnp.sum(distance < radius[:, None], axis=1) - 1  # strict; minus the row itself
    return radius, inside(distance_z), inside(distance_a)

  radius, n_z, n_a = jax.lax.map(block, (z_blocks, a_blocks))
  return radius.reshape(-1)[:n], n_z.reshape(-1)[:n], n_a.reshape(-1)[:n]


def _brute_force_counts(z: np.ndarray, a: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
  """(ε, n_z, n_a) from all pairwise max-norm distances, in float64 on the JAX device, in row blocks of about
  2M distances (O(N²) time, O(N) memory)."""
  block_rows = max(1, min(z.shape[0], BRUTE_FORCE_BLOCK_ELEMENTS // z.shape[0]))
  with jax.enable_x64(True):
    outputs = _brute_force_counts_jit(jnp.asarray(z, jnp.float64), jnp.asarray(a, jnp.float64), k, block_rows)
    return tuple(np.asarray(x) for x in outputs)


def ksg_nats(z: np.ndarray, a: np.ndarray, k: int, backend: str = "brute", workers: int = 1) -> float:
  """KSG estimator 1 in nats on already preprocessed float[N, Dz], float[N, Da] (no scaling, no projection).

  ``backend``: 'brute' (all pairwise distances on the JAX device) or 'kdtree' (scipy); identical results.
  """
  n = z.shape[0]
  if not 1 <= k < n:
    raise ValueError(f"KSG needs 1 <= k < N, got k={k} with N={n} samples")
  if backend not in BACKENDS:
    raise ValueError(f"KSG backend must be one of {BACKENDS}, got {backend!r}")
  radius, n_z, n_a = _brute_force_counts(z, a, k) if backend == "brute" else _kdtree_counts(z, a, k, workers)
  if np.any(radius <= 0):
    raise ValueError(f"KSG: {int(np.sum(radius <= 0))} samples have {k} exact duplicates in (z, a); "
                     "use a positive KSGConfig.jitter")
  return float(special.digamma(k) + special.digamma(n) - np.mean(special.digamma(n_z + 1) + special.digamma(n_a + 1)))


def ksg_mutual_information(z: np.ndarray, a: np.ndarray, config: KSGConfig = KSGConfig(),
                           seed: int = 0) -> KSGResult:
  """KSG estimate of I(z; a) in bits, with MVP-LAM's preprocessing (module docstring).

  Args:
    z: float[N, ...] latents (flattened per sample).
    a: float[N, Da] (or float[N]) actions.
    config: estimator settings.
    seed: seeds the projection matrix, the subset (``config.max_points``) and the jitter.

  Returns:
    A ``KSGResult``; ``bits`` may be slightly negative for independent variables (estimator noise).
  """
  z, a = arrays.paired_inputs(z, a)
  rng = np.random.default_rng(seed)
  if config.max_points is not None and z.shape[0] > config.max_points:
    keep = np.sort(rng.choice(z.shape[0], config.max_points, replace=False))
    z, a = z[keep], a[keep]
  z, a = arrays.standardize(z, "z"), arrays.standardize(a, "a")
  if config.projection_dim is not None and z.shape[1] > config.projection_dim:
    z = arrays.standardize(random_projection(z, config.projection_dim, seed), "projected z")
  if config.jitter > 0:
    z = z + config.jitter * rng.normal(size=z.shape)
    a = a + config.jitter * rng.normal(size=a.shape)
  nats = ksg_nats(z, a, config.k, config.backend, config.workers)
  return KSGResult(bits=nats / LN2, num_points=int(z.shape[0]), z_dim=int(z.shape[1]), a_dim=int(a.shape[1]))


def bias_table(draws: int = 20, sizes: tuple[int, ...] = (100, 300, 1000, 3000)) -> str:
  """The module docstring's table: KSG (k = 3, no projection) vs the closed-form MI of three Gaussian tasks."""
  tasks = {"A": gaussian_tasks.correlated_gaussian((0.9,)), "B": gaussian_tasks.correlated_gaussian((0.6,) * 4),
           "C": gaussian_tasks.linear_gaussian_channel(z_dim=8, a_dim=3, noise_std=1.0, seed=0)}
  config = KSGConfig(k=3, projection_dim=None)
  lines = ["| n | " + " | ".join(f"task {name} (true {task.bits:.3f})" for name, task in tasks.items()) + " |"]
  for n in sizes:
    cells = []
    for task in tasks.values():
      estimates = [ksg_mutual_information(*task.sample(n, seed=s), config).bits for s in range(draws)]
      cells.append(f"{np.mean(estimates):.3f} ± {np.std(estimates):.3f}")
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
