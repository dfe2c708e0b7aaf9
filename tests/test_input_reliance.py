"""lamp_jax.eval.input_reliance: the loss under inputs rolled along the batch."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax import specs
from lamp_jax.eval import input_reliance
from lamp_jax.models import lamp_config, registry

lamp = registry.get("lamp")



def test_an_ignored_input_has_ratio_one_and_used_inputs_do_not():
  cfg = lamp.model_config("tiny")
  cfg.use_proprio = False  # the model cannot see the state: shuffling it must change nothing, exactly
  abstract = lamp.abstract_params(cfg)
  rs = np.random.RandomState(0)
  params = jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, 0.15, s.shape), s.dtype), abstract)
  model = lamp.build(cfg)
  loss_fn = jax.jit(lambda p, b, r: model.apply({"params": p}, b, r, train=False, method="compute_loss")[0],
                    compiler_options={"xla_backend_optimization_level": 0})
  batches = [lamp.dummy_batch(cfg, 3, seed=s) for s in (1, 2)]
  result = input_reliance.input_reliance(loss_fn, params, batches, cfg.image_keys, seed=4)
  ratios = result["ratio_to_real"]
  assert set(ratios) == {"cameras", *(f"camera:{k}" for k in cfg.image_keys), "instruction", "proprio"}
  assert ratios["proprio"] == 1.0
  assert ratios["cameras"] != 1.0 and ratios["instruction"] != 1.0
  assert result["batches"] == 2
  # The perturbation pairs each example with the previous one's input and leaves the original batch alone.
  batch = batches[0]
  before = copy.deepcopy(batch[specs.TASK][specs.TOKENS])
  rolled = input_reliance.perturbations(cfg.image_keys)["instruction"](batch)
  np.testing.assert_array_equal(rolled[specs.TASK][specs.TOKENS][1], before[0])
  np.testing.assert_array_equal(batch[specs.TASK][specs.TOKENS], before)
  with pytest.raises(ValueError, match="at least 2"):
    input_reliance.input_reliance(loss_fn, params, [lamp.dummy_batch(cfg, 1, seed=0)], cfg.image_keys)
