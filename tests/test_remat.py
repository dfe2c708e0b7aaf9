"""Rematerialisation policies (``layers.REMAT_POLICIES``): an exact rewrite of every block stack.

Each policy must give the loss and gradients of the stack without remat, and the policies must really differ in
what the backward pass keeps (the residuals ``jax.vjp`` closes over), or the config value would do nothing."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lamp_jax.models import dit, gemma, layers, siglip

POLICIES = layers.REMAT_POLICIES


def _random_params(abstract, seed=0, scale=0.2):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), abstract)


def _siglip_case(remat: bool, policy: str):
  cfg = siglip.get_config("tiny", head_width=13, remat=remat, remat_policy=policy)
  model = siglip.SigLIP(cfg)
  images = np.random.default_rng(1).uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32)
  return model, (images,)


def _gemma_case(remat: bool, policy: str):
  cfg = dataclasses.replace(gemma.get_config("tiny"), remat=remat, remat_policy=policy)
  b, t = 2, 7
  embedded = np.random.default_rng(2).standard_normal((b, t, cfg.width)).astype(np.float32)
  input_mask = np.ones((b, t), bool)
  mask = gemma.make_attention_mask(input_mask, np.array([[0, 0, 0, 1, 1, 1, 1]] * b))

  class Run(nn.Module):
    @nn.compact
    def __call__(self, x, positions, attention_mask):
      return gemma.Gemma(cfg, name="llm")(x, positions, attention_mask)["last_hidden"]

  return Run(), (embedded, gemma.positions_from_mask(input_mask), mask)


class _Block(nn.Module):
  """A small pre-LN self-attention + MLP block in dit.stack's calling convention."""
  width: int

  @nn.compact
  def __call__(self, x, scale):
    h = nn.LayerNorm()(x)
    q, k, v = (nn.Dense(self.width, name=n)(h) for n in "qkv")
    attention = jax.nn.softmax(jnp.einsum("btd,bsd->bts", q, k) / np.sqrt(self.width), axis=-1)
    x = x + nn.Dense(self.width, name="out")(jnp.einsum("bts,bsd->btd", attention, v))
    x = x + nn.Dense(self.width, name="down")(jax.nn.gelu(nn.Dense(3 * self.width, name="up")(nn.LayerNorm()(x))))
    return x * scale, None


def _dit_case(remat: bool, policy: str):
  class Run(nn.Module):
    @nn.compact
    def __call__(self, x):
      return dit.stack(_Block, 3, scan=True, remat=remat, remat_policy=policy, num_broadcast_args=1,
                       name="blocks", width=11)(x, jnp.float32(0.9))

  return Run(), (np.random.default_rng(3).standard_normal((2, 5, 11)).astype(np.float32),)


CASES = {"siglip": _siglip_case, "gemma": _gemma_case, "dit_stack": _dit_case}


def _loss_fn(case, remat, policy):
  model, inputs = CASES[case](remat, policy)
  abstract = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *inputs))
  params = _random_params(abstract)

  def loss(p):
    out = model.apply(p, *inputs)
    return jnp.mean(jnp.square(out.astype(jnp.float32)))

  return loss, params


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_remat_policy_gives_the_loss_and_gradients_without_remat(case):
  plain, params = _loss_fn(case, False, "nothing_saveable")
  value, grads = jax.jit(jax.value_and_grad(plain))(params)
  for policy in POLICIES:
    loss, _ = _loss_fn(case, True, policy)
    value_r, grads_r = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(value_r, value, rtol=1e-6, err_msg=policy)
    for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=policy)


@pytest.mark.parametrize("case", sorted(CASES))
def test_remat_policies_keep_less_than_no_remat_and_differ_from_each_other(case):
  """What the backward pass keeps, in bytes: nothing_saveable < dots without batch dims < all dots < no remat."""

  def saved_bytes(remat, policy):
    loss, params = _loss_fn(case, remat, policy)
    backward = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params)  # the vjp closure: its leaves are the residuals
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(backward))

  kept = [saved_bytes(True, policy) for policy in POLICIES] + [saved_bytes(False, "nothing_saveable")]
  assert kept == sorted(kept) and len(set(kept)) == len(kept), dict(zip((*POLICIES, "no remat"), kept))


def test_an_unknown_remat_policy_is_refused_by_field():
  with pytest.raises(ValueError, match="GemmaConfig.remat_policy='dots'"):
    gemma.get_config("tiny", remat_policy="dots")
  with pytest.raises(ValueError, match="SigLIPConfig.remat_policy"):
    siglip.get_config("tiny", remat_policy="everything")
  with pytest.raises(ValueError, match="remat_policy='offload'"):
    layers.maybe_remat(_Block, True, "offload")
  with pytest.raises(ValueError, match="remat_policy='offload'"):  # checked even with remat off
    layers.maybe_remat(_Block, False, "offload")
  assert layers.maybe_remat(_Block, False) is _Block
