"""The vector quantiser: straight-through gradient, losses by hand, perplexity, dead-code restarts, data
initialisation, EMA codebook, collapse counting, padding that must not count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax.models import vq as vq_lib

K, L, D = 5, 3, 7


def _config(**overrides):
  base = dict(num_codes=K, code_length=L, code_dim=D, restart_buffer=11, usage_decay=0.5, dead_fraction=0.5,
              collapse_patience=3, init_from_data=False)
  base.update(overrides)
  return vq_lib.default_config(**base)


def _init(cfg, z, valid):
  module = vq_lib.VectorQuantizer(cfg)
  variables = nn.unbox(module.init(jax.random.key(0), z, valid, jax.random.key(1)))
  return module, variables


def _train_step(module, cfg, variables, z, valid, rng):
  """One forward pass with the state mutable, then ``update_codebook`` (what the trainer's step does)."""
  out, written = module.apply(variables, z, valid, rng, mutable=[vq_lib.STATE])
  codebook, state, metrics = vq_lib.update_codebook(variables["params"]["codebook"], written[vq_lib.STATE],
                                                    jax.random.fold_in(rng, 1), cfg)
  return out, metrics, {"params": {"codebook": codebook}, vq_lib.STATE: state}


def test_straight_through_is_identity_on_the_encoder_side_and_q_forward():
  rs = np.random.RandomState(0)
  z = jnp.asarray(rs.normal(size=(4, L, D)), jnp.float32)
  q = jnp.asarray(rs.normal(size=(4, L, D)), jnp.float32)
  w = jnp.asarray(rs.normal(size=(4, L, D)), jnp.float32)
  np.testing.assert_allclose(vq_lib.straight_through(z, q), q, atol=1e-6)  # z + (q - z): rounding only
  grad = jax.grad(lambda z: jnp.sum(w * vq_lib.straight_through(z, q)))(z)
  np.testing.assert_allclose(grad, w, rtol=0, atol=0)
  # Through the module: d(sum w * decoder input)/dz = w, whatever the codebook.
  cfg = _config()
  module, variables = _init(cfg, z, jnp.ones((4,), bool))
  grad = jax.grad(lambda z: jnp.sum(w * module.apply(variables, z, jnp.ones((4,), bool))["straight_through"]))(z)
  np.testing.assert_allclose(grad, w, atol=1e-6)


def test_losses_and_codes_by_hand_with_a_padded_row():
  codebook = np.array([[0.0] * D, [1.0] * D, [-1.0] * D, [3.0] * D, [0.5] * D], np.float32)
  z = np.zeros((3, L, D), np.float32)
  z[0] = 0.2  # nearest 0: distance per dim 0.2
  z[1] = 0.9  # nearest 1 (0.1 away; 0.5 is 0.4 away)
  z[2] = 100.0  # padding: must not count anywhere
  valid = np.array([True, True, False])
  cfg = _config()
  module = vq_lib.VectorQuantizer(cfg)
  out = module.apply({"params": {"codebook": codebook}}, jnp.asarray(z), jnp.asarray(valid))
  np.testing.assert_array_equal(out["codes"][:2], [[0] * L, [1] * L])
  np.testing.assert_array_equal(out["quantized"][1], np.ones((L, D)))
  want = (0.2**2 + 0.1**2) / 2  # mean over the two valid latents of the per-element squared distance
  assert float(out["codebook_loss"]) == pytest.approx(want, rel=1e-5)
  assert float(out["commitment_loss"]) == pytest.approx(want, rel=1e-5)
  # Gradients: the codebook loss moves only the codebook, the commitment loss only the encoder.
  g_code = jax.grad(lambda c: module.apply({"params": {"codebook": c}}, jnp.asarray(z), jnp.asarray(valid))[
      "codebook_loss"])(jnp.asarray(codebook))
  expected = np.zeros_like(codebook)
  expected[0] = 2 * (0.0 - 0.2) / (2 * L * D) * L  # L tokens of latent 0 use code 0
  expected[1] = 2 * (1.0 - 0.9) / (2 * L * D) * L
  np.testing.assert_allclose(g_code, expected, rtol=1e-5, atol=1e-8)
  g_z = jax.grad(lambda z: module.apply({"params": {"codebook": jnp.asarray(codebook)}}, z, jnp.asarray(valid))[
      "commitment_loss"])(jnp.asarray(z))
  np.testing.assert_allclose(g_z[0], np.full((L, D), 2 * 0.2 / (2 * L * D)), rtol=1e-5)
  np.testing.assert_array_equal(g_z[2], 0.0)
  metrics = out["metrics"]
  assert float(metrics["vq/codes_used"]) == pytest.approx(2 / K)
  assert float(metrics["vq/dead_codes"]) == K - 2  # no state: codes unused in the batch


def test_perplexity_known_values():
  assert float(vq_lib.perplexity(jnp.ones((13,)))) == pytest.approx(13.0, rel=1e-6)
  assert float(vq_lib.perplexity(jnp.array([0.0, 5.0, 0.0]))) == pytest.approx(1.0)
  assert float(vq_lib.perplexity(jnp.array([2.0, 2.0, 0.0, 0.0]))) == pytest.approx(2.0, rel=1e-6)
  assert float(vq_lib.perplexity(jnp.zeros((4,)))) == pytest.approx(1.0)
  # Uniform use of every code through the module: perplexity = K.
  codebook = np.eye(K, D, dtype=np.float32) * 3
  z = np.repeat(codebook[:, None], L, axis=1)  # latent i sits on code i
  out = vq_lib.VectorQuantizer(_config()).apply({"params": {"codebook": codebook}}, jnp.asarray(z),
                                                jnp.ones((K,), bool))
  assert float(out["metrics"]["vq/perplexity"]) == pytest.approx(K, rel=1e-5)
  assert float(out["metrics"]["vq/position_perplexity"]) == pytest.approx(K, rel=1e-5)


def test_dead_code_restart_revives_unused_codes():
  cfg = _config()
  rs = np.random.RandomState(1)
  z = jnp.asarray(rs.normal(0.0, 0.1, (6, L, D)), jnp.float32)
  valid = jnp.ones((6,), bool)
  module, variables = _init(cfg, z, valid)
  codebook = np.asarray(variables["params"]["codebook"]).copy()
  codebook[0] = 0.0
  codebook[1:] = 50.0  # far from every latent: never chosen, so they die
  variables["params"]["codebook"] = jnp.asarray(codebook)
  restarted = 0.0
  for step in range(6):
    out, metrics, variables = _train_step(module, cfg, variables, z, valid, jax.random.key(step))
    restarted += float(metrics["vq/restarted_codes"])
    if restarted:
      break
  # usage of codes 1..4 halves each step from 1/K; dead below 0.5 / K: after the first step.
  assert restarted == K - 1 and int(variables[vq_lib.STATE]["restarts"]) == K - 1
  new = np.asarray(variables["params"]["codebook"])
  buffer = np.asarray(variables[vq_lib.STATE]["recent_latents"])
  flat = np.asarray(z).reshape(-1, D)
  for code in new[1:]:  # each revived code is one of the step's latents
    assert np.min(np.abs(flat - code).max(axis=1)) < 1e-6 and np.min(np.abs(buffer - code).max(axis=1)) < 1e-6
  np.testing.assert_array_equal(new[0], 0.0)
  np.testing.assert_allclose(variables[vq_lib.STATE]["usage"][1:], 1.0 / K)  # grace period
  before = float(out["metrics"]["vq/codes_used"])
  after = float(module.apply(variables, z, valid)["metrics"]["vq/codes_used"])
  assert before == pytest.approx(1 / K) and after > before


def test_init_from_data_replaces_every_code_by_distinct_latents_once():
  cfg = _config(init_from_data=True, restart=False, restart_buffer=23)
  rs = np.random.RandomState(2)
  z = jnp.asarray(rs.normal(size=(8, L, D)), jnp.float32)
  module, variables = _init(cfg, z, jnp.ones((8,), bool))
  _, metrics, variables = _train_step(module, cfg, variables, z, jnp.ones((8,), bool), jax.random.key(0))
  assert float(metrics["vq/restarted_codes"]) == K and bool(variables[vq_lib.STATE]["codebook_ready"])
  codebook = np.asarray(variables["params"]["codebook"])
  flat = np.asarray(z).reshape(-1, D)
  rows = [int(np.argmin(np.abs(flat - c).max(axis=1))) for c in codebook]
  assert all(np.abs(flat[r] - c).max() < 1e-6 for r, c in zip(rows, codebook))
  _, metrics, variables2 = _train_step(module, cfg, variables, z, jnp.ones((8,), bool), jax.random.key(1))
  assert float(metrics["vq/restarted_codes"]) == 0  # only once
  np.testing.assert_array_equal(variables2["params"]["codebook"], codebook)


def test_padding_does_not_enter_usage_buffer_or_losses():
  cfg = _config(restart_buffer=64)
  rs = np.random.RandomState(3)
  z = rs.normal(size=(4, L, D)).astype(np.float32)
  valid = np.array([True, False, True, False])
  module, variables = _init(cfg, jnp.asarray(z), jnp.asarray(valid))
  outs = []
  for fill in (0.0, 1e3):
    changed = z.copy()
    changed[~valid] = fill
    outs.append(module.apply(variables, jnp.asarray(changed), jnp.asarray(valid), jax.random.key(5),
                             mutable=[vq_lib.STATE]))
  (a, state_a), (b, state_b) = outs
  for key in ("codebook_loss", "commitment_loss"):
    assert float(a[key]) == float(b[key])
  for key in ("usage", "recent_latents"):
    np.testing.assert_array_equal(state_a[vq_lib.STATE][key], state_b[vq_lib.STATE][key])
  kept = np.asarray(state_a[vq_lib.STATE]["recent_latents"])
  valid_rows = z[valid].reshape(-1, D)
  assert all(np.min(np.abs(valid_rows - row).max(axis=1)) < 1e-6 for row in kept)
  # No valid latent at all: the state is left as it was, the losses are 0.
  out, state = module.apply(variables, jnp.asarray(z), jnp.zeros((4,), bool), jax.random.key(5),
                            mutable=[vq_lib.STATE])
  assert float(out["codebook_loss"]) == 0.0
  np.testing.assert_array_equal(state[vq_lib.STATE]["usage"], variables[vq_lib.STATE]["usage"])
  assert not bool(state[vq_lib.STATE]["recent_filled"])


def test_ema_codebook_follows_the_assigned_latents_in_closed_form():
  decay = 0.8
  cfg = _config(ema=True, ema_decay=decay, restart=False)
  codebook = np.zeros((K, D), np.float32)
  codebook[1:] = np.arange(1, K)[:, None] * 10.0
  z = np.zeros((2, L, D), np.float32)
  z[0], z[1] = 1.0, 3.0  # both nearest to code 0
  module, variables = _init(cfg, jnp.asarray(z), jnp.ones((2,), bool))
  variables["params"]["codebook"] = jnp.asarray(codebook)
  _, _, variables = _train_step(module, cfg, variables, jnp.asarray(z), jnp.ones((2,), bool), jax.random.key(0))
  # Seeded with cluster size 1 and sum = the code (0), then one EMA step with 2L assignments summing to 4L.
  size = decay * 1 + (1 - decay) * 2 * L
  total = decay * 0.0 + (1 - decay) * (1.0 + 3.0) * L
  new = np.asarray(variables["params"]["codebook"])
  np.testing.assert_allclose(new[0], total / size, rtol=1e-5)
  # Unassigned codes keep their value (sum and size decay together).
  np.testing.assert_allclose(new[1:], codebook[1:], rtol=1e-5)


def test_collapse_is_a_counted_event():
  cfg = _config(collapse_patience=3, restart=False)
  z = jnp.full((6, L, D), 0.3, jnp.float32)  # every latent identical: one code per position
  valid = jnp.ones((6,), bool)
  module, variables = _init(cfg, z, valid)
  events = []
  for step in range(7):
    out, _, variables = _train_step(module, cfg, variables, z, valid, jax.random.key(step))
    events.append(float(out["metrics"]["vq/collapse_events"]))
  assert float(out["metrics"]["vq/position_perplexity"]) == pytest.approx(1.0)
  # 3 consecutive collapsed steps make one event (seen by the metrics of the step after), then counting restarts.
  assert events == [0, 0, 1, 1, 1, 2, 2]
  assert int(variables[vq_lib.STATE]["collapse_events"]) == 2


@pytest.mark.parametrize("usage_decay, dead_fraction", [(0.6, 0.2), (0.9, 0.03), (0.7, 0.1)])
def test_restart_fires_on_a_collapsed_state_after_steps_until_dead(usage_decay, dead_fraction):
  """A collapsed quantiser (every latent nearest to code 0, the other codes never chosen) restarts the unused
  codes exactly ``steps_until_dead`` steps in (the smallest n with usage_decay^n < dead_fraction), from the
  buffered latents; the restarted codes split latents that differ only slightly (the encoder's collapsed but
  not identical outputs), so usage rises above one code."""
  cfg = _config(usage_decay=usage_decay, dead_fraction=dead_fraction, restart_buffer=13)
  expected = vq_lib.steps_until_dead(cfg)
  assert usage_decay ** expected < dead_fraction <= usage_decay ** (expected - 1)
  rs = np.random.RandomState(3)
  z = jnp.asarray(1.0 + 1e-3 * rs.normal(size=(6, L, D)), jnp.float32)  # spread 1e-3 around one point
  valid = jnp.ones((6,), bool)
  module, variables = _init(cfg, z, valid)
  codebook = np.full((K, D), 40.0, np.float32)
  codebook[0] = 1.0
  variables["params"]["codebook"] = jnp.asarray(codebook)
  fired_at = None
  for step in range(1, expected + 2):
    out, metrics, variables = _train_step(module, cfg, variables, z, valid, jax.random.key(step))
    assert float(out["metrics"]["vq/perplexity"]) == pytest.approx(1.0)
    if float(metrics["vq/restarted_codes"]):
      fired_at = step
      break
  assert fired_at == expected and float(metrics["vq/restarted_codes"]) == K - 1
  after = module.apply(variables, z, valid)["metrics"]
  assert float(after["vq/perplexity"]) > 2.0


def test_steps_until_dead_of_the_shipped_configs_fit_a_short_run():
  """The default rule declares a never-used code dead within 50 steps (it took 349 with usage_decay 0.99)."""
  assert vq_lib.steps_until_dead(vq_lib.default_config()) <= 50
  assert vq_lib.steps_until_dead(vq_lib.default_config(usage_decay=0.99, dead_fraction=0.03)) == 349
  with pytest.raises(ValueError, match="vq.usage_decay"):
    vq_lib.steps_until_dead(vq_lib.default_config(usage_decay=1.0))
