"""Optimizer pieces of the trainer: schedule, accumulation, freezing labels, EMA, sharding rules, dtype."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from lamp_jax.training import defaults
from lamp_jax.training import optim
from lamp_jax.training import sharding as sharding_lib
from lamp_jax.training import trainer as trainer_lib
from tests import toy_train_config
from tests import tree_stats


def test_schedule_warmup_then_cosine_to_end_lr():
  cfg = defaults.optimizer_config(lr=1e-3, end_lr=1e-5, warmup_steps=4)
  schedule = optim.learning_rate_schedule(cfg, stage_updates=20)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(2)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(4)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(12)), 1e-5 + 0.5 * (1e-3 - 1e-5), rtol=1e-5)  # cosine midpoint
  np.testing.assert_allclose(float(schedule(20)), 1e-5, rtol=1e-5)


def test_grad_accumulation_equals_one_step_on_the_mean_gradient():
  params = {"w": jnp.asarray([1.0, -2.0, 3.0]), "b": jnp.asarray([0.5])}
  g1 = {"w": jnp.asarray([0.1, 0.2, -0.3]), "b": jnp.asarray([1.0])}
  g2 = {"w": jnp.asarray([0.3, -0.1, 0.5]), "b": jnp.asarray([-3.0])}
  cfg = defaults.optimizer_config(lr=1e-2, end_lr=1e-2, warmup_steps=0, clip_norm=0.0)
  one, _ = optim.make_optimizer(cfg, (), stage_steps=10)
  cfg.grad_accum_steps = 2
  acc, _ = optim.make_optimizer(cfg, (), stage_steps=20)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  u, _ = one.update(mean, one.init(params), params)
  want = jax.tree.map(lambda p, d: p + d, params, u)
  state = acc.init(params)
  u1, state = acc.update(g1, state, params)
  assert tree_stats.max_abs(u1) == 0.0  # No update after 1 micro-batch.
  p1 = jax.tree.map(lambda p, d: p + d, params, u1)
  u2, state = acc.update(g2, state, p1)
  got = jax.tree.map(lambda p, d: p + d, p1, u2)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_frozen_parameters_get_zero_updates_and_no_state():
  params = {"vlm": {"k": jnp.ones((3, 2))}, "action_expert": {"k": jnp.ones((2, 5))}}
  tx, _ = optim.make_optimizer(defaults.optimizer_config(lr=1.0, end_lr=1.0), (r"^vlm/",), stage_steps=5)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, state, params)
  assert float(jnp.abs(updates["vlm"]["k"]).max()) == 0.0
  assert float(jnp.abs(updates["action_expert"]["k"]).min()) > 0.0
  # No Adam moments are allocated for the frozen group.
  sizes = sum(x.size for x in jax.tree.leaves(state))
  assert sizes < 2 * 10 + 2 * 6
  with pytest.raises(ValueError, match=r"stages\.x\.frozen: pattern '\^guidance/' matches no parameter"):
    optim.check_frozen_patterns(params, (r"^guidance/",), "stages.x.frozen")


def test_ema_update_with_warmup():
  ema = {"w": jnp.zeros((2,))}
  new = optim.ema_update(ema, {"w": jnp.ones((2,))}, jnp.asarray(0), decay=0.999, warmup=True)
  np.testing.assert_allclose(np.asarray(new["w"]), 0.9, rtol=1e-6)  # d = min(0.999, 1/10) -> 0.9 of new
  new = optim.ema_update(ema, {"w": jnp.ones((2,))}, jnp.asarray(10**6), decay=0.99, warmup=True)
  np.testing.assert_allclose(np.asarray(new["w"]), 0.01, rtol=1e-4)


@pytest.mark.parametrize("step,decay", [(0, 0.999), (3, 0.5), (10**6, 0.9999)])
def test_ema_of_parameters_equal_to_their_ema_stays_bit_exact(step, decay):
  """A frozen subtree loaded into params and EMA alike must keep an EMA equal to it (the plain
  ``d * e + (1 - d) * p`` rounds: at d = 0.1, 71 of 257 random float32 values moved by an ulp)."""
  w = jnp.asarray(np.random.RandomState(step % 7).standard_normal((257,)), jnp.float32)
  new = optim.ema_update({"w": w}, {"w": w}, jnp.asarray(step), decay=decay, warmup=True)
  np.testing.assert_array_equal(np.asarray(new["w"]), np.asarray(w))


def test_logical_rules_are_shape_aware():
  rules = sharding_lib.DEFAULT_RULES

  class FakeMesh:  # Only .shape is read by logical_to_spec.
    shape = {"data": 2, "fsdp": 4, "tensor": 2}

  assert sharding_lib.logical_to_spec(("embed", "mlp"), (16, 6), FakeMesh, rules) == PartitionSpec("fsdp", "tensor")
  # 'embed' of size 6 is not divisible by fsdp=4: replicated rather than an error.
  assert sharding_lib.logical_to_spec(("embed", "mlp"), (6, 5), FakeMesh, rules) == PartitionSpec(None, None)
  # A mesh axis is used at most once per parameter.
  assert sharding_lib.logical_to_spec(("embed", "cond"), (8, 8), FakeMesh, rules) == PartitionSpec("fsdp", None)
  assert sharding_lib.logical_to_spec(("vocab", "embed"), (32, 8), FakeMesh, rules) == PartitionSpec(
      ("tensor", "fsdp"), None)
  assert sharding_lib.mesh_shape_from_config(defaults.base_config().mesh, 8) == (1, 8, 1)
  with pytest.raises(ValueError, match=r"mesh\.\{data,fsdp,tensor\}"):
    sharding_lib.mesh_shape_from_config(ml_collections.ConfigDict(dict(data=3, fsdp=1, tensor=1)), 8)


def test_activation_constraints_act_only_inside_activation_sharding():
  from lamp_jax.models import dit, gemma, siglip

  assert siglip.ACTIVATION_AXES == gemma.ACTIVATION_AXES == dit.ACTIVATION_AXES

  class FakeMesh:
    shape = {"data": 2, "fsdp": 4, "tensor": 2}

  rules = sharding_lib.DEFAULT_RULES
  names = dit.ACTIVATION_AXES
  # Batch over both data-parallel axes; tokens and width replicated; shape-aware like the parameters.
  spec = sharding_lib.logical_to_spec(names, (16, 7, 12), FakeMesh, rules)
  assert spec == PartitionSpec(("data", "fsdp"), None, None)
  assert sharding_lib.logical_to_spec(names, (6, 7, 12), FakeMesh, rules) == PartitionSpec("data", None, None)
  # A config rule list without activation names gets the default activation rules (never silently replicated).
  assert sharding_lib.rules_from_config([("embed", "fsdp")])[1:] == sharding_lib.ACTIVATION_RULES
  assert sharding_lib.rules_from_config([("activation_batch", "data")])[0] == ("activation_batch", "data")

  x = jnp.ones((2, 3, 5))
  assert sharding_lib.with_logical_constraint(x, names) is x  # Outside the context: untouched.
  mesh = sharding_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1)), jax.devices()[:1])

  def f(y):
    with sharding_lib.activation_sharding(mesh, rules):
      return sharding_lib.with_logical_constraint(y * 2, names)

  assert "sharding_constraint" in jax.jit(f).lower(x).as_text()
  assert "sharding_constraint" not in jax.jit(lambda y: sharding_lib.with_logical_constraint(y * 2, names)).lower(
      x).as_text()
  with pytest.raises(ValueError, match="3 logical axis names"):
    jax.jit(f)(jnp.ones((2, 3)))


def test_compute_dtype_and_stage_overrides_reach_the_model_config():
  config = toy_train_config.get_config("two_stage")
  config.compute_dtype = "bfloat16"
  model_cfg = defaults.stage_model_config(config, "action")
  assert model_cfg.dtype == "bfloat16" and model_cfg.loss.weights.motion == 0.0
  assert config.model.dtype == "float32" and config.model.loss.weights.motion == 1.0  # The run config is untouched.
  config.stages.action.model_overrides = ml_collections.ConfigDict(dict(no_such_field=1))
  with pytest.raises(ValueError, match=r"stages\.action\.model_overrides\.no_such_field"):
    defaults.validate(config)


def test_weight_decay_mask_does_not_count_the_stacked_layers_axis():
  """decay_vectors=False: a scanned [L, D] bias stack is a vector per layer (not decayed), an [L, D, F] kernel
  stack a matrix per layer (decayed); the real LaMP tree's scanned LayerNorm scales are vectors too."""
  import flax.linen as nn
  from lamp_jax.models import registry

  lamp = registry.get("lamp")

  boxed = {"blocks": {"bias": nn.Partitioned(jax.ShapeDtypeStruct((3, 5), jnp.float32), ("layers", "embed")),
                      "kernel": nn.Partitioned(jax.ShapeDtypeStruct((3, 5, 7), jnp.float32),
                                               ("layers", "embed", "mlp"))},
           "head": {"bias": jnp.zeros((5,)), "kernel": jnp.zeros((5, 2))}}
  mask = optim.weight_decay_mask(boxed)
  assert mask == {"blocks": {"bias": False, "kernel": True}, "head": {"bias": False, "kernel": True}}
  cfg = defaults.optimizer_config(lr=1.0, end_lr=1.0, warmup_steps=0, weight_decay=0.5, clip_norm=0.0)
  cfg.decay_vectors = False
  params = nn.meta.unbox(jax.tree.map(lambda x: jnp.ones(x.shape), boxed))
  tx, _ = optim.make_optimizer(cfg, (), stage_steps=3, decay_mask=mask)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)  # zero gradients: only weight decay moves parameters
  assert float(jnp.abs(updates["blocks"]["bias"]).max()) == 0.0 and float(updates["blocks"]["kernel"].min()) < 0
  assert float(jnp.abs(updates["head"]["bias"]).max()) == 0.0 and float(updates["head"]["kernel"].min()) < 0

  tiny = lamp.model_config("tiny")
  batch = lamp.dummy_batch(tiny, 1, 0)
  real = optim.weight_decay_mask(jax.eval_shape(lambda r: lamp.init_variables(tiny, r, batch)["params"],
                                                jax.random.key(0)))
  flat = {optim.param_path(p): v for p, v in jax.tree_util.tree_leaves_with_path(real)}
  stacked_scales = [k for k in flat if "/layers/" in k and k.endswith("/scale")]
  assert stacked_scales and not any(flat[k] for k in stacked_scales)


def test_trainer_trains_with_undecayed_vectors(tmp_path):
  """The trainer derives the weight-decay mask from the model's init when decay_vectors is False."""
  config = toy_train_config.get_config("")
  config.stages.main.optimizer.decay_vectors = False
  t = trainer_lib.Trainer(config, str(tmp_path))
  state = t.train(until_step=2)
  t.close()
  assert int(state.step) == 2 and all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
