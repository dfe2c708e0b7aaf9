"""Neural variational estimates of I(z; a) in bits: Barber–Agakov (BA) and MINE (Donsker–Varadhan).

Protocol (MVP-LAM's): the pairs are split at random (``seed``) into train / validation / test; the network
trains on train, is evaluated on validation every ``eval_every`` steps, the best validation checkpoint is kept
(early stopping after ``patience`` evaluations without improvement) and the estimate is reported on test.
z and a are z-scored with the train split's statistics first (an invertible map: the MI is unchanged).

BA:   I(z; a) = H(a) − H(a | z) >= H(a) − E[−log q(a | z)]   for any q.
      q(a | z) = N(μ(z), diag σ²): MLP mean, one learned σ per action dimension. H(a) is a plug-in: the entropy
      of a Gaussian fitted to the train actions. Caveat: a Gaussian fit never underestimates the entropy (the
      Gaussian has the largest entropy for a covariance), and a DIAGONAL fit (``ba_marginal='diagonal'``, the
      paper's choice) also ignores the correlations between action dimensions, overstating H(a) by their
      total correlation Σ_j H(a_j) − H(a) (for Gaussian actions: −½ log det Corr(a)). So BA is a lower bound
      only when the marginal term is exact; with correlated actions the diagonal BA can exceed the true MI.
      ``ba_marginal='full'`` fits a full-covariance Gaussian (exact for Gaussian actions).
MINE: I(z; a) >= E_P[T(z, a)] − log E_{P_z ⊗ P_a}[exp T(z, a)]   (Donsker–Varadhan), for any critic T.
      The product of marginals is sampled by shuffling a within a minibatch (``num_shuffles`` shuffles, the
      second term averaged over them), at train and at evaluation (evaluation: the whole split as one batch).
      The log-mean-exp of a finite sample is biased low, so the estimate can overshoot slightly; it is also
      capped near log(batch) for very high MI.

Defaults (``NeuralMIConfig()``) are the paper's (batch 1024, up to 8000 steps, AdamW lr 1e-3, weight decay
1e-5, clip 1.0, MLP hidden 1024, depth 4) and are sized for an accelerator: with a 512-d latent, one step took
0.27 CPU-s (BA) and 1.4 CPU-s (MINE, 4 shuffles) on the 2-core CPU box, i.e. 36 min / 3.2 h for 8000 steps.
On a CPU use e.g. hidden 256, depth 3, batch 512, 3000 steps (11 / 47 CPU-ms per step); the tests use
hidden 64, depth 2, 600 steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lamp_jax.probe import arrays, networks

LN2 = math.log(2.0)
METHODS = ("ba", "mine")
BA_MARGINALS = ("diagonal", "full")


@dataclasses.dataclass(frozen=True)
class NeuralMIConfig:
  """Training settings of the neural MI estimators (defaults: MVP-LAM's Table 6).

  Attributes:
    batch_size: pairs per step (clamped to the train split's size).
    max_steps: optimisation steps at most.
    learning_rate: AdamW learning rate (constant).
    hidden_dim: MLP width.
    depth: dense layers of the MLP, output layer included (4: three hidden layers).
    weight_decay: AdamW decoupled weight decay.
    grad_clip: global-norm gradient clipping (0: none).
    eval_every: steps between validation evaluations.
    patience: validation evaluations without improvement before stopping (None: train max_steps, still keep
      the best validation checkpoint).
    train_fraction, val_fraction: split sizes; the rest is the test split.
    num_shuffles: MINE's in-batch shuffles per batch (the paper does not give its number).
    ba_marginal: 'diagonal' (the paper) or 'full' Gaussian fit of H(a) (see the module docstring).
  """

  batch_size: int = 1024
  max_steps: int = 8000
  learning_rate: float = 1e-3
  hidden_dim: int = 1024
  depth: int = 4
  weight_decay: float = 1e-5
  grad_clip: float = 1.0
  eval_every: int = 100
  patience: int | None = 10
  train_fraction: float = 0.7
  val_fraction: float = 0.15
  num_shuffles: int = 4
  ba_marginal: str = "diagonal"

  def __post_init__(self):
    if not (0 < self.train_fraction and 0 < self.val_fraction and self.train_fraction + self.val_fraction < 1):
      raise ValueError(f"NeuralMIConfig: train_fraction={self.train_fraction} and val_fraction="
                       f"{self.val_fraction} must be positive and leave a test split (sum < 1)")
    if self.ba_marginal not in BA_MARGINALS:
      raise ValueError(f"NeuralMIConfig.ba_marginal must be one of {BA_MARGINALS}, got {self.ba_marginal!r}")
    for field in ("batch_size", "max_steps", "hidden_dim", "depth", "eval_every", "num_shuffles"):
      if getattr(self, field) < 1:
        raise ValueError(f"NeuralMIConfig.{field} must be >= 1, got {getattr(self, field)}")


@dataclasses.dataclass(frozen=True)
class Splits:
  """Row indices int64[...] of the train / validation / test splits (disjoint, covering all rows)."""

  train: np.ndarray
  val: np.ndarray
  test: np.ndarray


@dataclasses.dataclass(frozen=True)
class NeuralMIResult:
  """One neural estimate.

  Attributes:
    method: 'ba' or 'mine'.
    bits: the estimate on the test split with the best validation checkpoint.
    val_bits: that checkpoint's validation estimate.
    best_step: the step of that checkpoint.
    steps: steps trained (fewer than max_steps when early stopping triggered).
    history: (step, validation bits) of every evaluation.
    num_train, num_val, num_test: split sizes.
  """

  method: str
  bits: float
  val_bits: float
  best_step: int
  steps: int
  history: tuple[tuple[int, float], ...]
  num_train: int
  num_val: int
  num_test: int


def split_indices(num_rows: int, config: NeuralMIConfig, seed: int) -> Splits:
  """A seeded random train / validation / test partition of ``num_rows`` rows."""
  order = np.random.default_rng(seed).permutation(num_rows)
  n_train, n_val = int(round(config.train_fraction * num_rows)), int(round(config.val_fraction * num_rows))
  splits = Splits(train=order[:n_train], val=order[n_train:n_train + n_val], test=order[n_train + n_val:])
  for name in ("train", "val", "test"):
    if getattr(splits, name).size < 2:
      raise ValueError(f"neural MI: the {name} split of {num_rows} rows has fewer than 2 rows; pass more pairs "
                       "or change NeuralMIConfig.train_fraction / val_fraction")
  return splits


def gaussian_entropy_nats(a: np.ndarray, diagonal: bool) -> float:
  """Entropy of the Gaussian fitted (maximum likelihood) to float[N, D]: diagonal or full covariance."""
  if diagonal:
    return float(0.5 * np.sum(np.log(2 * np.pi * np.e * a.var(0))))
  cov = np.atleast_2d(np.cov(a, rowvar=False, bias=True))
  sign, logdet = np.linalg.slogdet(2 * np.pi * np.e * cov)
  if sign <= 0:
    raise ValueError("BA: the train actions' covariance is singular (a constant or duplicated action "
                     "dimension); drop it or use NeuralMIConfig.ba_marginal='diagonal'")
  return float(0.5 * logdet)


def donsker_varadhan_nats(critic: Callable[[jax.Array, jax.Array], jax.Array], z: jax.Array, a: jax.Array,
                          shuffles: jax.Array) -> jax.Array:
  """E_P[T] − mean over shuffles of log mean exp T(z, a[shuffle]): float32[] (nats).

  Args:
    critic: T(z float[..., n, Dz], a float[..., n, Da]) -> float[..., n].
    z, a: float[n, Dz], float[n, Da] paired rows.
    shuffles: int[S, n] permutations of the rows of a (samples of the product of the marginals).
  """
  n = z.shape[0]
  joint = jnp.mean(critic(z, a))
  marginal = critic(jnp.broadcast_to(z, shuffles.shape + z.shape[1:]), a[shuffles])  # [S, n]
  return joint - jnp.mean(jax.nn.logsumexp(marginal, axis=1) - math.log(n))


def permutations(rng: np.random.Generator, count: int, n: int) -> np.ndarray:
  """int32[count, n]: ``count`` independent permutations of range(n)."""
  return np.argsort(rng.random((count, n)), axis=1).astype(np.int32)


class Program(NamedTuple):
  """One method's network and its jitted training / evaluation, built once per network and optimiser setting.

  ``init(key, z, a) -> params`` (unboxed);
  ``run_chunk(params, opt_state, z_train, a_train, rows int[T, B], shuffles int[T, S, B])
  -> (params, opt_state, losses float32[T])``: T steps on the given minibatch rows;
  ``bits(params, z, a, shuffles int[S, n], entropy_nats) -> float32[]`` (BA: ``entropy_nats`` is its plug-in
  H(a) and the shuffles are unused; MINE: the reverse).
  Randomness (rows, shuffles) is drawn on the host with numpy and passed in: no PRNG inside the compiled
  programs, which keeps their compilation short.
  """

  init: Callable[[jax.Array, jax.Array, jax.Array], Any]
  optimizer: optax.GradientTransformation
  run_chunk: Callable[..., Any]
  bits: Callable[..., jax.Array]
  num_shuffles: int


def _program(method: str, config: NeuralMIConfig, a_dim: int) -> Program:
  """The BA or MINE program for ``config`` (cached on the settings that change it: seeds, mismatch runs and
  configs differing only in steps, patience, splits or ``ba_marginal`` reuse its compilations)."""
  return _cached_program(method, a_dim, config.hidden_dim, config.depth, config.learning_rate, config.weight_decay,
                         config.grad_clip, config.num_shuffles)


@functools.lru_cache(maxsize=16)
def _cached_program(method: str, a_dim: int, hidden_dim: int, depth: int, learning_rate: float,
                    weight_decay: float, grad_clip: float, num_shuffles: int) -> Program:
  if method == "ba":
    module = networks.GaussianDecoder(hidden_dim, depth, a_dim)

    def nll(params, z, a):
      mean, log_sigma = module.apply({"params": params}, z)
      return jnp.mean(networks.gaussian_nll_nats(a, mean, log_sigma))

    inputs = lambda z, a: (z,)
    loss = lambda params, z, a, shuffles: nll(params, z, a)
    bits = lambda params, z, a, shuffles, entropy_nats: (entropy_nats - nll(params, z, a)) / LN2
    num_shuffles = 0
  elif method == "mine":
    module = networks.Critic(hidden_dim, depth)

    def dv(params, z, a, shuffles):
      return donsker_varadhan_nats(lambda zz, aa: module.apply({"params": params}, zz, aa), z, a, shuffles)

    inputs = lambda z, a: (z, a)
    loss = lambda params, z, a, shuffles: -dv(params, z, a, shuffles)
    bits = lambda params, z, a, shuffles, entropy_nats: dv(params, z, a, shuffles) / LN2
  else:
    raise ValueError(f"neural MI method must be one of {METHODS}, got {method!r}")
  optimizer = networks.make_optimizer(learning_rate, weight_decay, grad_clip)

  @jax.jit
  def run_chunk(params, opt_state, z_train, a_train, rows, shuffles):
    def step(carry, batch):
      params, opt_state = carry
      batch_rows, batch_shuffles = batch
      value, grads = jax.value_and_grad(loss)(params, z_train[batch_rows], a_train[batch_rows], batch_shuffles)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), value

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (rows, shuffles))
    return params, opt_state, losses

  init = jax.jit(lambda key, z, a: nn.meta.unbox(module.init(key, *inputs(z[:1], a[:1]))["params"]))
  return Program(init, optimizer, run_chunk, jax.jit(bits), num_shuffles)


def estimate(method: str, z: np.ndarray, a: np.ndarray, config: NeuralMIConfig = NeuralMIConfig(),
             seed: int = 0) -> NeuralMIResult:
  """Trains the ``method`` ('ba' | 'mine') estimator on (z, a) and reports it on the test split, in bits.

  Args:
    method: 'ba' (Barber–Agakov) or 'mine' (Donsker–Varadhan with an MLP critic).
    z: float[N, ...] latents (flattened per sample).
    a: float[N, Da] actions.
    config: training settings.
    seed: seeds the split, the initialisation, the minibatches and the shuffles.
  """
  z, a = arrays.paired_inputs(z, a)
  splits = split_indices(z.shape[0], config, seed)
  z_mean, z_std = z[splits.train].mean(0), z[splits.train].std(0)
  a_mean, a_std = a[splits.train].mean(0), a[splits.train].std(0)
  if np.any(a_std == 0):
    raise ValueError(f"neural MI: action dimensions {np.flatnonzero(a_std == 0).tolist()} are constant on the "
                     "train split (their entropy is -inf); drop them")
  z = (z - z_mean) / np.where(z_std > 0, z_std, 1.0)
  a = (a - a_mean) / a_std
  entropy = gaussian_entropy_nats(a[splits.train], diagonal=config.ba_marginal == "diagonal") if method == "ba" \
      else 0.0
  program = _program(method, config, a.shape[1])
  data = {name: (jnp.asarray(z[idx], jnp.float32), jnp.asarray(a[idx], jnp.float32))
          for name, idx in dataclasses.asdict(splits).items()}
  rng = np.random.default_rng([seed, 1])
  shuffles = {name: jnp.asarray(permutations(rng, program.num_shuffles, len(idx)))
              for name, idx in dataclasses.asdict(splits).items() if name != "train"}
  params = program.init(jax.random.PRNGKey(seed), *data["train"])
  best = _train_with_early_stopping(program, params, data, shuffles["val"], config, entropy, rng)
  test_bits = float(program.bits(best["params"], *data["test"], shuffles["test"], entropy))
  return NeuralMIResult(method=method, bits=test_bits, val_bits=best["val_bits"], best_step=best["step"],
                        steps=best["steps"], history=best["history"], num_train=int(splits.train.size),
                        num_val=int(splits.val.size), num_test=int(splits.test.size))


def _train_with_early_stopping(program: Program, params: Any, data: dict[str, tuple[jax.Array, jax.Array]],
                               val_shuffles: jax.Array, config: NeuralMIConfig, entropy_nats: float,
                               rng: np.random.Generator) -> dict[str, Any]:
  """Trains in chunks of ``eval_every`` steps on random minibatches (rows drawn with replacement), evaluating on
  validation after each; keeps the best-validation parameters.

  Returns {'params', 'val_bits', 'step', 'steps', 'history'}.
  """
  z_train, a_train = data["train"]
  n_train = z_train.shape[0]
  batch_size = min(config.batch_size, n_train)
  opt_state = jax.jit(program.optimizer.init)(params)
  best = {"params": params, "val_bits": -math.inf, "step": 0}
  history, step, stale = [], 0, 0
  while step < config.max_steps:
    num_steps = min(config.eval_every, config.max_steps - step)
    rows = rng.integers(0, n_train, size=(num_steps, batch_size), dtype=np.int32)
    shuffles = permutations(rng, num_steps * program.num_shuffles, batch_size).reshape(
        num_steps, program.num_shuffles, batch_size)
    params, opt_state, _ = program.run_chunk(params, opt_state, z_train, a_train, rows, shuffles)
    step += num_steps
    val_bits = float(program.bits(params, *data["val"], val_shuffles, entropy_nats))
    history.append((step, val_bits))
    if math.isfinite(val_bits) and val_bits > best["val_bits"]:
      best, stale = {"params": params, "val_bits": val_bits, "step": step}, 0
    else:
      stale += 1
      if config.patience is not None and stale >= config.patience:
        break
  if not math.isfinite(best["val_bits"]):
    raise FloatingPointError(f"neural MI: no finite validation estimate in {step} steps (history {history[:5]}...); "
                             "lower NeuralMIConfig.learning_rate")
  return {**best, "steps": step, "history": tuple(history)}


def barber_agakov(z: np.ndarray, a: np.ndarray, config: NeuralMIConfig = NeuralMIConfig(),
                  seed: int = 0) -> NeuralMIResult:
  """Barber–Agakov estimate of I(z; a) in bits (``estimate('ba', ...)``; see the module docstring)."""
  return estimate("ba", z, a, config, seed)


def mine(z: np.ndarray, a: np.ndarray, config: NeuralMIConfig = NeuralMIConfig(), seed: int = 0) -> NeuralMIResult:
  """MINE (Donsker–Varadhan) estimate of I(z; a) in bits (``estimate('mine', ...)``; see the module docstring)."""
  return estimate("mine", z, a, config, seed)
