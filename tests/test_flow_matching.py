"""Flow-matching conventions, time distribution and the Euler integrators."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lamp_jax.models import flow_matching as fm


def test_interpolation_endpoints_and_pi0_conversion():
  rng = np.random.RandomState(0)
  x, eps = rng.randn(3, 5).astype(np.float32), rng.randn(3, 5).astype(np.float32)
  tau = np.array([0.0, 0.3, 1.0], np.float32)
  xt = fm.interpolate(x, eps, tau)
  np.testing.assert_allclose(xt[0], eps[0])
  np.testing.assert_allclose(xt[2], x[2])
  # π0: x_t = t * eps + (1 - t) * x with t = 1 - tau; u = eps - x = -v.
  t = fm.pi0_from_tau(tau)
  np.testing.assert_allclose(xt, t[:, None] * eps + (1 - t[:, None]) * x, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(fm.tau_from_pi0(t), tau)
  v = fm.velocity_target(x, eps)
  np.testing.assert_allclose(fm.velocity_to_pi0(v), eps - x)
  np.testing.assert_allclose(fm.velocity_from_pi0(eps - x), v)
  # The velocity is the time derivative of the path.
  d = 1e-3
  np.testing.assert_allclose((fm.interpolate(x, eps, 0.5 + d) - fm.interpolate(x, eps, 0.5 - d)) / (2 * d), v,
                             rtol=1e-2, atol=1e-2)


def test_time_distribution_emphasises_noise():
  tau = np.asarray(fm.sample_time(jax.random.key(0), (20000,)))
  assert tau.min() >= 0.0 and tau.max() <= fm.PI0_TIME_SCALE
  # tau = s * (1 - Beta(1.5, 1)): mean s * 0.4, more mass near tau = 0 (noise).
  np.testing.assert_allclose(tau.mean(), 0.999 * 0.4, atol=0.01)
  assert (tau < 0.5).mean() > 0.6


def test_euler_exact_on_constant_field():
  x0 = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
  c = jnp.array([[0.5, -1.0, 2.0]], jnp.float32)
  for steps in (1, 3, 7):
    out = fm.euler_integrate(lambda x, tau: jnp.broadcast_to(c, x.shape), x0, steps, tau_start=0.2, tau_end=0.9)
    np.testing.assert_allclose(out, x0 + 0.7 * c, rtol=1e-6, atol=1e-6)


def test_euler_exact_on_linear_conditional_field():
  # v(x, tau) = (x1 - x) / (1 - tau) is linear in x; its trajectories are straight lines, so Euler is exact.
  rng = np.random.RandomState(1)
  x0, x1 = rng.randn(4, 3).astype(np.float32), rng.randn(4, 3).astype(np.float32)
  for steps in (1, 2, 5, 10):
    out = fm.euler_integrate(lambda x, tau: (x1 - x) / (1.0 - tau), jnp.asarray(x0), steps)
    np.testing.assert_allclose(out, x1, rtol=1e-5, atol=1e-5)
    half = fm.euler_integrate(lambda x, tau: (x1 - x) / (1.0 - tau), jnp.asarray(x0), steps, tau_end=0.5)
    np.testing.assert_allclose(half, fm.interpolate(x1, x0, 0.5), rtol=1e-5, atol=1e-5)


def test_gaussian_target_mean_and_covariance():
  # Data ~ N(mu, Sigma): x_tau ~ N(tau mu, S) with S = tau^2 Sigma + (1 - tau)^2 I and the exact marginal
  # velocity v(x) = mu + (tau Sigma - (1 - tau) I) S^-1 (x - tau mu).
  mu = jnp.array([1.0, -2.0], jnp.float32)
  a = jnp.array([[0.8, 0.0], [0.5, 0.3]], jnp.float32)
  sigma = a @ a.T
  eye = jnp.eye(2)

  def velocity(x, tau):
    s = tau**2 * sigma + (1 - tau) ** 2 * eye
    gain = (tau * sigma - (1 - tau) * eye) @ jnp.linalg.inv(s)
    return mu + (x - tau * mu) @ gain.T

  noise = jax.random.normal(jax.random.key(3), (40000, 2))
  samples = np.asarray(jax.jit(lambda n: fm.euler_integrate(velocity, n, 200))(noise))
  np.testing.assert_allclose(samples.mean(0), mu, atol=0.03)
  np.testing.assert_allclose(np.cov(samples.T), sigma, atol=0.03)


def test_module_integrator_matches_plain_loop():
  class Field(nn.Module):
    @nn.compact
    def __call__(self, x, tau):
      return nn.Dense(x.shape[-1])(x) * (1.0 + tau)

    def integrate(self, x0):
      return fm.euler_integrate_module(self, lambda mdl, x, tau: (mdl(x, tau), x), x0, 4, jnp.zeros_like(x0),
                                       tau_start=0.1, tau_end=0.9)

  x0 = jax.random.normal(jax.random.key(0), (3, 4))
  field = Field()
  params = field.init(jax.random.key(1), x0, 0.0)
  out, aux = field.apply(params, x0, method="integrate")
  expected = fm.euler_integrate(lambda x, tau: field.apply(params, x, tau), x0, 4, tau_start=0.1, tau_end=0.9)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  # aux is the state at the last evaluation (tau = 0.7): one more step from it gives the result.
  np.testing.assert_allclose(aux + 0.2 * field.apply(params, aux, 0.7), out, rtol=1e-5, atol=1e-6)
