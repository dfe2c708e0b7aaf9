"""Flow matching conventions shared by every generative head (motion, actions, later latent actions).

THE time convention of lamp_jax (one convention for the whole code base):

  * flow time ``tau`` in [0, 1]; ``tau = 0`` is pure Gaussian noise, ``tau = 1`` is data.
  * interpolation  ``x_tau = (1 - tau) * eps + tau * x``           (eps ~ N(0, I), x = data)
  * velocity target ``v = d x_tau / d tau = x - eps``
  * sampling: Euler integration of ``dx/dtau = v_theta(x, tau)`` from tau = 0 (noise) to tau = 1 (data).

π0 / openpi use the opposite direction: time ``t`` with ``t = 1`` noise, ``x_t = t * eps + (1 - t) * x``,
target ``u = eps - x`` and Euler steps from t = 1 to 0. The two are related by

  tau = 1 - t,      v = -u,      (x_tau at tau) == (x_t at t = 1 - tau).

``tau_from_pi0`` / ``pi0_from_tau`` and ``velocity_from_pi0`` / ``velocity_to_pi0`` convert. π0's training
time distribution ``t = s * Beta(1.5, 1) + (1 - s)`` (s = 0.999; Beta(1.5, 1) has mean 0.6 and puts more mass
near t = 1, i.e. on noisy inputs) becomes ``tau = 1 - t = s * (1 - Beta(1.5, 1))`` here, so ``tau`` lies in
[0, s] with more mass near tau = 0 (noisy). ``sample_time`` draws from it.

LaMP's one-step partial denoising reads naturally in this convention: from noise (tau = 0) take one Euler
step to ``tau_infer = 0.1`` and evaluate the expert once more at tau_infer (see ``motion_expert``).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

PI0_BETA_ALPHA = 1.5
PI0_BETA_BETA = 1.0
PI0_TIME_SCALE = 0.999


def _broadcast_time(tau: jax.Array, like: jax.Array) -> jax.Array:
  """float[B] (or scalar) -> float[B, 1, ..., 1] broadcastable against ``like`` float[B, ...]."""
  tau = jnp.asarray(tau, jnp.float32)
  if tau.ndim == 0:
    return tau
  return tau.reshape(tau.shape + (1,) * (like.ndim - tau.ndim))


def interpolate(x: jax.Array, eps: jax.Array, tau: jax.Array) -> jax.Array:
  """x_tau = (1 - tau) * eps + tau * x.  x, eps: float[B, ...]; tau: float[B] or scalar."""
  tau = _broadcast_time(tau, x)
  return (1.0 - tau) * eps + tau * x


def velocity_target(x: jax.Array, eps: jax.Array) -> jax.Array:
  """v = x - eps (the constant velocity of the straight path from eps to x)."""
  return x - eps


def sample_time(rng: jax.Array, shape: tuple[int, ...], *, alpha: float = PI0_BETA_ALPHA,
                beta: float = PI0_BETA_BETA, scale: float = PI0_TIME_SCALE) -> jax.Array:
  """π0's time distribution in our convention: tau = scale * (1 - Beta(alpha, beta)). Returns float32[shape]."""
  b = jax.random.beta(rng, alpha, beta, shape, dtype=jnp.float32)
  return scale * (1.0 - b)


TIME_DISTRIBUTIONS = ("uniform", "pi0_beta")


def sample_tau(rng: jax.Array, batch_size: int, kind: str) -> jax.Array:
  """Training times float32[batch_size] of a named distribution: 'uniform' (U[0, 1]) or 'pi0_beta'
  (``sample_time``)."""
  if kind == "uniform":
    return jax.random.uniform(rng, (batch_size,), jnp.float32)
  if kind == "pi0_beta":
    return sample_time(rng, (batch_size,))
  raise ValueError(f"unknown flow-matching time distribution {kind!r} (config field *.time_dist): "
                   f"one of {TIME_DISTRIBUTIONS}")


def masked_mse(prediction: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over unmasked entries (float32 scalar, 0 if nothing is valid).

  prediction/target float[B, ...]; mask bool or float weights broadcastable to them (e.g. [B, K, T] -> add a
  trailing axis): the weighted mean.
  """
  mask = jnp.broadcast_to(mask, prediction.shape).astype(jnp.float32)
  err = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
  return jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def flow_matching_loss(rng: jax.Array, data: jax.Array, predict_velocity: Callable[[jax.Array, jax.Array], jax.Array],
                       *, time_dist: str, mask: jax.Array | None = None) -> jax.Array:
  """The conditional flow-matching loss every generative head uses (actions, motion, motion images, latents).

  Draws tau ~ ``time_dist`` per example and eps ~ N(0, I), forms x_tau = (1 - tau) eps + tau x and regresses
  ``predict_velocity(x_tau float32[B, ...], tau float32[B]) -> float[B, ...]`` on v = x - eps.

  Args:
    rng: PRNG key (split into the time and noise draws).
    data: x float32[B, ...] (masked entries should already be zeros: they then cannot influence the loss).
    predict_velocity: the model's velocity for a noisy input and its times.
    time_dist: 'uniform' | 'pi0_beta' (``sample_tau``).
    mask: bool or float weights broadcastable to ``data`` (None = every entry).
  Returns:
    float32[] the (weighted) mean squared velocity error.
  """
  rng_t, rng_e = jax.random.split(rng)
  tau = sample_tau(rng_t, data.shape[0], time_dist)
  eps = jax.random.normal(rng_e, data.shape, jnp.float32)
  velocity = predict_velocity(interpolate(data, eps, tau), tau)
  return masked_mse(velocity, velocity_target(data, eps), jnp.ones((), bool) if mask is None else mask)


def tau_from_pi0(t: jax.Array) -> jax.Array:
  """π0 time (t = 1 noise) -> our tau (tau = 0 noise)."""
  return 1.0 - t


def pi0_from_tau(tau: jax.Array) -> jax.Array:
  """Our tau (tau = 0 noise) -> π0 time (t = 1 noise)."""
  return 1.0 - tau


def velocity_from_pi0(u: jax.Array) -> jax.Array:
  """π0 velocity u = eps - x -> our v = x - eps."""
  return -u


def velocity_to_pi0(v: jax.Array) -> jax.Array:
  """Our v = x - eps -> π0 velocity u = eps - x."""
  return -v


def euler_step(x: jax.Array, velocity: jax.Array, dt: float | jax.Array) -> jax.Array:
  """One explicit Euler step x + dt * v (computed in x's dtype)."""
  return x + jnp.asarray(dt, x.dtype) * velocity.astype(x.dtype)


def euler_integrate(velocity_fn: Callable[[jax.Array, jax.Array], jax.Array], x0: jax.Array, num_steps: int,
                    *, tau_start: float = 0.0, tau_end: float = 1.0) -> jax.Array:
  """Integrates dx/dtau = velocity_fn(x, tau) with ``num_steps`` equal Euler steps as a ``lax.fori_loop``.

  Args:
    velocity_fn: (x float[B, ...], tau float32 scalar) -> float[B, ...].
    x0: the state at ``tau_start`` (noise when tau_start = 0).
    num_steps: static number of steps (>= 1).
  Returns:
    x at ``tau_end``, same shape/dtype as x0.
  """
  x, _ = euler_integrate_with_aux(lambda x, tau: (velocity_fn(x, tau), ()), x0, num_steps, (),
                                  tau_start=tau_start, tau_end=tau_end)
  return x


def euler_integrate_with_aux(step_fn: Callable, x0: jax.Array, num_steps: int, aux0,
                             *, tau_start: float = 0.0, tau_end: float = 1.0):
  """Euler integration that also carries the auxiliary output of the last velocity evaluation.

  Args:
    step_fn: (x, tau) -> (velocity, aux); ``aux`` must have the structure / shapes of ``aux0``.
    x0: state at tau_start. num_steps: static int >= 1. aux0: initial aux (returned if never overwritten).
  Returns:
    (x at tau_end, aux of the evaluation at the last step's start time tau_end - dt).
  """
  if num_steps < 1:
    raise ValueError(f"euler_integrate needs num_steps >= 1, got {num_steps}")
  dt = (tau_end - tau_start) / num_steps

  def body(i, carry):
    x, _ = carry
    tau = jnp.asarray(tau_start, jnp.float32) + i.astype(jnp.float32) * jnp.float32(dt)
    velocity, aux = step_fn(x, tau)
    return euler_step(x, velocity, dt), aux

  return jax.lax.fori_loop(0, num_steps, body, (x0, aux0))


def euler_integrate_module(module: nn.Module, step_fn: Callable, x0: jax.Array, num_steps: int, aux0,
                           *, tau_start: float = 0.0, tau_end: float = 1.0):
  """``euler_integrate_with_aux`` for a bound Flax module: the loop is a lifted ``nn.while_loop``.

  Use this inside a Flax method whose velocity calls submodules (plain ``lax`` loops cannot close over
  bound modules). Parameters must already exist (call the submodules once before, e.g. during ``init``).

  Args:
    module: the bound module lifted into the loop.
    step_fn: (module, x, tau float32 scalar) -> (velocity, aux).
  Returns:
    (x at tau_end, aux of the last evaluation).
  """
  if num_steps < 1:
    raise ValueError(f"euler_integrate_module needs num_steps >= 1, got {num_steps}")
  dt = (tau_end - tau_start) / num_steps

  def cond_fn(_, carry):
    return carry[0] < num_steps

  def body_fn(mdl, carry):
    i, x, _ = carry
    tau = jnp.asarray(tau_start, jnp.float32) + i.astype(jnp.float32) * jnp.float32(dt)
    velocity, aux = step_fn(mdl, x, tau)
    return i + 1, euler_step(x, velocity, dt), aux

  _, x, aux = nn.while_loop(cond_fn, body_fn, module, (jnp.asarray(0, jnp.int32), x0, aux0))
  return x, aux
