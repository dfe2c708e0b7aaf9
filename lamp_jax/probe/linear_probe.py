"""Linear probes between latents and actions, scored by NMSE on held-out and out-of-distribution splits.

Forward probe (how readily z carries the action): PCA of z fitted on the train split (``n_components``; all
methods then feed the probe the same number of inputs) -> one linear layer -> a, trained by AdamW on minibatches
with a cosine learning-rate decay (MVP-LAM: batch 512, 30 epochs, lr 1e-3, no weight decay, no clipping).
Inverse probe (minimality): a -> the PCA coefficients of z. A latent that also encodes things other than the
action (viewpoint, background) keeps variance no linear function of a explains: a high inverse NMSE.

NMSE of predictions ŷ of y on one split = Σ_j mean_i (ŷ_ij − y_ij)² / Σ_j Var_i(y_ij) — the fraction of the
split's variance (all target dimensions pooled) the probe leaves unexplained. The variance is the split's own,
so predicting the split's mean scores 1; 0 is perfect; an OOD split whose mean the probe misses scores > 1.
``nmse_per_dim`` gives MSE_j / Var_j per dimension.

Inputs and targets are z-scored with train statistics before training and predictions are mapped back: the
probe is still affine in the PCA coefficients, but AdamW's step no longer depends on the latent's scale.

Example (a notebook):

  from lamp_jax import probe
  result = probe.forward_probe(z[train], a[train], {"heldout": (z[test], a[test]), "libero": (z_ood, a_ood)})
  result.nmse            # {'train': ..., 'heldout': ..., 'libero': ...}
  probe.inverse_probe(z[train], a[train], {"heldout": (z[test], a[test])}).nmse
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamp_jax.models import layers
from lamp_jax.probe import arrays, networks

SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
  """Linear-probe settings (defaults: MVP-LAM's Table 6, linear-probing column).

  Attributes:
    n_components: PCA components of the probe's latent (inputs of the forward probe, targets of the inverse
      one), clamped to the latent's dimension; None: no PCA. The paper keeps a fixed number that our copy does
      not show legibly; 64 is our reading of the table's 'hidden dim 64' for the probe.
    batch_size: rows per step (clamped to the train size).
    epochs: passes over the train split (each a fresh shuffle).
    learning_rate: AdamW peak learning rate.
    schedule: 'cosine' (decay to 0 over all steps) or 'constant'.
    weight_decay: AdamW decoupled weight decay.
    grad_clip: global-norm gradient clipping (0: none).
  """

  n_components: int | None = 64
  batch_size: int = 512
  epochs: int = 30
  learning_rate: float = 1e-3
  schedule: str = "cosine"
  weight_decay: float = 0.0
  grad_clip: float = 0.0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"LinearProbeConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    if self.n_components is not None and self.n_components < 1:
      raise ValueError(f"LinearProbeConfig.n_components must be >= 1 or None, got {self.n_components}")
    for field in ("batch_size", "epochs"):
      if getattr(self, field) < 1:
        raise ValueError(f"LinearProbeConfig.{field} must be >= 1, got {getattr(self, field)}")


@dataclasses.dataclass(frozen=True)
class PCA:
  """A PCA fitted on one array.

  Attributes:
    mean: float64[D] the fitted array's mean.
    components: float64[K, D] orthonormal principal directions, by decreasing variance.
    explained_variance: float64[K] the variance along each component (ddof 0).
    total_variance: the fitted array's total variance (sum over its D dimensions).
  """

  mean: np.ndarray
  components: np.ndarray
  explained_variance: np.ndarray
  total_variance: float

  @property
  def explained_variance_ratio(self) -> float:
    """Fraction of the fitted array's variance the K components keep."""
    return float(self.explained_variance.sum() / self.total_variance) if self.total_variance > 0 else 1.0

  def transform(self, x: np.ndarray) -> np.ndarray:
    """float[N, D] -> float64[N, K] coefficients."""
    x = arrays.flatten_latents(x)
    if x.shape[1] != self.mean.shape[0]:
      raise ValueError(f"PCA fitted on {self.mean.shape[0]} dimensions was given {x.shape[1]}")
    return (x - self.mean) @ self.components.T

  def inverse_transform(self, coefficients: np.ndarray) -> np.ndarray:
    """float[N, K] -> float64[N, D]: the reconstruction in the K-dimensional principal subspace."""
    return np.asarray(coefficients, np.float64) @ self.components + self.mean


def fit_pca(x: np.ndarray, n_components: int) -> PCA:
  """PCA of float[N, ...] (flattened per row) keeping min(n_components, rank) components.

  The rank is that of the centred array (at most min(N - 1, D)), counted as numpy's ``matrix_rank`` does
  (singular values above max(N, D) · eps · the largest). Directions beyond it carry only rounding noise: kept,
  and then standardised by the probe, they turned held-out rows into values of ~1e14 (a held-out NMSE of 1e28
  with fewer train rows than latent dimensions).
  """
  x = arrays.flatten_latents(x, "PCA input")
  mean = x.mean(0)
  _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
  tolerance = singular[0] * max(x.shape) * np.finfo(np.float64).eps if singular.size else 0.0
  rank = int(np.sum(singular > tolerance))
  if rank == 0:
    raise ValueError(f"PCA input: all {x.shape[0]} rows are equal (zero variance); nothing to probe")
  keep = min(n_components, rank)
  return PCA(mean=mean, components=vt[:keep], explained_variance=singular[:keep]**2 / x.shape[0],
             total_variance=float(x.var(0).sum()))


def nmse(predictions: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
  """(Σ_j MSE_j / Σ_j Var_j, MSE_j / Var_j float64[D]) of ``predictions`` against ``targets``, both float[N, D]."""
  predictions, targets = np.asarray(predictions, np.float64), np.asarray(targets, np.float64)
  mse = np.mean(np.square(predictions - targets), axis=0)
  var = targets.var(0)
  if var.sum() <= 0:
    raise ValueError(f"NMSE: the targets of this split ({targets.shape[0]} rows) have zero variance")
  return float(mse.sum() / var.sum()), mse / np.where(var > 0, var, np.nan)


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """A trained affine map float[N, Din] -> float[N, Dout] with its input PCA and standardisations."""

  pca: PCA | None
  x_mean: np.ndarray
  x_std: np.ndarray
  y_mean: np.ndarray
  y_std: np.ndarray
  params: Any

  def features(self, x: np.ndarray) -> np.ndarray:
    """The probe's standardised inputs float32[N, K] (PCA coefficients when it has a PCA)."""
    x = self.pca.transform(x) if self.pca is not None else arrays.flatten_latents(x, "probe input")
    return ((x - self.x_mean) / self.x_std).astype(np.float32)

  def predict(self, x: np.ndarray) -> np.ndarray:
    """Predictions float64[N, Dout] in the targets' units."""
    out = affine_layer(self.y_mean.shape[0]).apply({"params": self.params}, jnp.asarray(self.features(x)))
    return np.asarray(out, np.float64) * self.y_std + self.y_mean


def affine_layer(out_dim: int) -> layers.DenseGeneral:
  """The probe: one dense layer, zero-initialised (before training it predicts the train mean: NMSE ≈ 1)."""
  return layers.DenseGeneral(out_dim, kernel_axes=("embed", "embed"), kernel_init=nn.initializers.zeros_init())


def _safe_std(x: np.ndarray) -> np.ndarray:
  std = x.std(0)
  return np.where(std > 0, std, 1.0)


def fit_linear_probe(x_train: np.ndarray, y_train: np.ndarray, config: LinearProbeConfig = LinearProbeConfig(),
                     seed: int = 0, pca_inputs: bool = True) -> LinearProbe:
  """Trains the affine probe x -> y on the train split (PCA of x first when ``pca_inputs`` and
  ``config.n_components``)."""
  x_train, y_train = arrays.paired_inputs(x_train, y_train, ("probe input", "probe target"))
  pca = fit_pca(x_train, config.n_components) if pca_inputs and config.n_components is not None else None
  x = pca.transform(x_train) if pca is not None else x_train
  probe = LinearProbe(pca=pca, x_mean=x.mean(0), x_std=_safe_std(x), y_mean=y_train.mean(0), y_std=_safe_std(y_train),
                      params=None)
  features = jnp.asarray(probe.features(x_train))
  targets = jnp.asarray((y_train - probe.y_mean) / probe.y_std, jnp.float32)
  num_rows = features.shape[0]
  batch_size = min(config.batch_size, num_rows)
  steps_per_epoch = math.ceil(num_rows / batch_size)
  # Each epoch a fresh permutation, wrapped around so that every batch is full.
  orders = np.argsort(np.random.default_rng(seed).random((config.epochs, num_rows)), axis=1)
  orders = np.concatenate([orders, orders[:, :steps_per_epoch * batch_size - num_rows]], axis=1)
  rows = orders.reshape(config.epochs * steps_per_epoch, batch_size).astype(np.int32)
  params = _trainer(config, steps_per_epoch, targets.shape[1])(features, targets, rows)
  return dataclasses.replace(probe, params=params)


@functools.lru_cache(maxsize=16)
def _trainer(config: LinearProbeConfig, steps_per_epoch: int, out_dim: int):
  """Jitted ``(features, targets, rows int[steps, B]) -> params``: zero initialisation, then one AdamW step per
  row of ``rows`` (the minibatches, drawn on the host), learning rate by ``config.schedule``."""
  module = affine_layer(out_dim)
  learning_rate = optax.cosine_decay_schedule(config.learning_rate, config.epochs * steps_per_epoch) \
      if config.schedule == "cosine" else config.learning_rate
  optimizer = networks.make_optimizer(learning_rate, config.weight_decay, config.grad_clip)

  def loss_fn(params, x, y):
    return jnp.mean(jnp.square(module.apply({"params": params}, x) - y))

  @jax.jit
  def run(features, targets, rows):
    params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), features[:1])["params"])  # zeros: key unused

    def step(carry, batch_rows):
      params, opt_state = carry
      grads = jax.grad(loss_fn)(params, features[batch_rows], targets[batch_rows])
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    return jax.lax.scan(step, (params, optimizer.init(params)), rows)[0][0]

  return run


def least_squares_predictor(probe: LinearProbe, x_train: np.ndarray, y_train: np.ndarray):
  """The closed-form (ordinary least squares) affine map on the same features as ``probe``: x -> float64[N, Dout].

  The trained probe should approach it; a gap means too few steps (few rows per batch, few epochs)."""
  features = np.c_[probe.features(x_train).astype(np.float64), np.ones(len(x_train))]
  coefficients = np.linalg.lstsq(features, arrays.flatten_latents(y_train), rcond=None)[0]
  return lambda x: np.c_[probe.features(x).astype(np.float64), np.ones(len(x))] @ coefficients


@dataclasses.dataclass(frozen=True)
class LinearProbeResult:
  """NMSE of a probe per evaluated split ('train' included), and what it was fed.

  Attributes:
    nmse: split name -> pooled NMSE of the trained probe.
    nmse_per_dim: split name -> per-target-dimension NMSE of the trained probe.
    nmse_least_squares: split name -> pooled NMSE of the closed-form least-squares map on the same features
      (the optimum of the train loss: the trained probe's train NMSE cannot go below it).
    num_rows: split name -> rows.
    input_dim: the probe's input dimension (PCA components for the forward probe).
    target_dim: the probe's output dimension.
    pca_explained_variance_ratio: variance of the latent the PCA keeps (train split); None without PCA.
  """

  nmse: dict[str, float]
  nmse_per_dim: dict[str, list[float]]
  nmse_least_squares: dict[str, float]
  num_rows: dict[str, int]
  input_dim: int
  target_dim: int
  pca_explained_variance_ratio: float | None

  def to_dict(self) -> dict[str, Any]:
    """JSON-able."""
    return dataclasses.asdict(self)


def _score(probe: LinearProbe, x_train: np.ndarray, y_train: np.ndarray,
           eval_sets: Mapping[str, tuple[np.ndarray, np.ndarray]], pca: PCA | None) -> LinearProbeResult:
  """NMSE of the probe and of its least-squares counterpart on train and every (x, y) of ``eval_sets``."""
  closed_form = least_squares_predictor(probe, x_train, y_train)
  scores, per_dim, reference, rows = {}, {}, {}, {}
  for name, (x, y) in {"train": (x_train, y_train), **eval_sets}.items():
    x, y = arrays.paired_inputs(x, y, ("probe input", "probe target"))
    scores[name], dims = nmse(probe.predict(x), y)
    reference[name] = nmse(closed_form(x), y)[0]
    per_dim[name], rows[name] = [float(v) for v in dims], int(x.shape[0])
  return LinearProbeResult(nmse=scores, nmse_per_dim=per_dim, nmse_least_squares=reference, num_rows=rows,
                           input_dim=int(probe.x_mean.shape[0]), target_dim=int(probe.y_mean.shape[0]),
                           pca_explained_variance_ratio=None if pca is None else pca.explained_variance_ratio)


def forward_probe(z_train: np.ndarray, a_train: np.ndarray, eval_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
                 config: LinearProbeConfig = LinearProbeConfig(), seed: int = 0) -> LinearProbeResult:
  """Forward probe z -> a: trained on (z_train, a_train), NMSE on train and on each ``eval_sets`` split.

  Args:
    z_train: float[N, ...] latents of the train split.
    a_train: float[N, Da] its actions.
    eval_sets: split name -> (z, a), e.g. {'heldout': ..., 'libero_goal': ...} ('train' is reserved).
    config: probe settings.
    seed: minibatch order (the probe starts at zero).
  """
  if "train" in eval_sets:
    raise ValueError("eval_sets: the name 'train' is reserved for the train split's own NMSE")
  probe = fit_linear_probe(z_train, a_train, config, seed)
  return _score(probe, z_train, a_train, eval_sets, probe.pca)


def inverse_probe(z_train: np.ndarray, a_train: np.ndarray, eval_sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  config: LinearProbeConfig = LinearProbeConfig(), seed: int = 0) -> LinearProbeResult:
  """Inverse probe a -> PCA(z) (the PCA fitted on z_train): NMSE on train and on each ``eval_sets`` split.

  Arguments as ``forward_probe`` (``eval_sets`` values are still (z, a)).
  """
  if "train" in eval_sets:
    raise ValueError("eval_sets: the name 'train' is reserved for the train split's own NMSE")
  z_train = arrays.flatten_latents(z_train, "z_train")
  pca = fit_pca(z_train, config.n_components) if config.n_components is not None else None
  to_target = pca.transform if pca is not None else (lambda z: arrays.flatten_latents(z, "z"))
  probe = fit_linear_probe(a_train, to_target(z_train), config, seed, pca_inputs=False)
  swapped = {name: (a, to_target(z)) for name, (z, a) in eval_sets.items()}
  return _score(probe, a_train, to_target(z_train), swapped, pca)
