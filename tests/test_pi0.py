"""The π0 policy: the prefix K/V cache against a joint [prefix; suffix] pass written from the parameters, the
attention-mask blocks, the flow-matching loss and its gradient, Euler sampling, FLOP counts, every variant's
parameter shapes, the expert / VLM consistency check, and train -> checkpoint -> checkpoint policy -> serve with
LaMP's model code unimportable (in-process on synthetic batches; the configs/sim.py:smoke_pi0 command as slow)."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np
import pytest

from configs import common
from lamp_jax import experiment
from lamp_jax import specs
from lamp_jax.eval.checkpoint_policy import CheckpointPolicy
from lamp_jax.models import flops
from lamp_jax.models import flow_matching as fm
from lamp_jax.models import gemma as gemma_lib
from lamp_jax.models import layers
from lamp_jax.models import lamp_config
from lamp_jax.models import observation
from lamp_jax.models import pi0 as pi0_model
from lamp_jax.models import pi0_config
from lamp_jax.models import pi0_expert
from lamp_jax.models import registry
from lamp_jax.serving import client as client_lib
from lamp_jax.serving import server as server_lib
from lamp_jax.training import defaults
from lamp_jax.training import trainer as trainer_lib
from tests import tree_stats

pi0 = registry.get("pi0")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# LaMP's model code: none of it may be needed to train, evaluate or serve π0. (models/dit.py is not in the list:
# its DiT blocks are shared by LaMP's Action Expert and the motion-image head, which π0 can carry.)
LAMP_MODULES = ("lamp_jax.models.lamp", "lamp_jax.models.motion_expert", "lamp_jax.models.guidance",
                "lamp_jax.models.action_expert")

CFG = pi0.model_config("tiny")
B = 2
# XLA CPU compilation dominates these tests; the unoptimised backend compiles ~2x faster, same semantics.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def setup():
  """Random parameters from the abstract tree (no init compilation); a batch with text padding and, in example 1,
  a missing wrist camera (its image tokens are padding)."""
  abstract = pi0.abstract_params(CFG)
  rs = np.random.RandomState(0)
  params = jax.tree.map(lambda s: jnp.asarray(rs.normal(0.0, 0.15, s.shape), s.dtype), abstract)
  batch = pi0.dummy_batch(CFG, B, seed=1)
  batch[specs.OBSERVATION][specs.IMAGE_MASK][specs.IMAGE_WRIST][1] = False
  assert not batch[specs.TASK][specs.TOKEN_MASK].all()  # some text padding
  return pi0.build(CFG), params, batch


def _apply(model, params, *args, method, **kwargs):
  return model.apply({"params": params}, *args, method=method, **kwargs)


def _jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


def _global_norm(tree):
  return tree_stats.global_norm(tree)


# ------------------------------------------------------------------------- a joint pass from the parameters
def _rms_norm(x, scale, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + scale)


def _rope(x, positions, max_wavelength):
  half = x.shape[-1] // 2
  timescale = max_wavelength ** (2.0 * np.arange(half) / x.shape[-1])
  angles = positions[..., None, None] / timescale
  first, second = x[..., :half], x[..., half:]
  return np.concatenate([first * np.cos(angles) - second * np.sin(angles),
                         second * np.cos(angles) + first * np.sin(angles)], axis=-1)


def _gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def joint_pass(vlm_llm, expert_llm, cfg_vlm, cfg_expert, prefix_embeds, suffix_embeds, mask, positions):
  """π0's one transformer with two weight sets, in float64 numpy: every layer projects the prefix with the VLM's
  weights and the suffix with the expert's, attends jointly over [prefix; suffix] under ``mask`` bool[B, N, N]
  and applies each side's output projection and MLP. Returns (prefix, suffix) hidden states after each side's
  final norm."""
  to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)
  w_vlm, w_exp = to64(vlm_llm), to64(expert_llm)
  streams = [np.asarray(prefix_embeds, np.float64), np.asarray(suffix_embeds, np.float64)]
  weights, configs = (w_vlm, w_exp), (cfg_vlm, cfg_expert)
  p = streams[0].shape[1]
  pos = (np.asarray(positions)[:, :p], np.asarray(positions)[:, p:])
  mask = np.asarray(mask)
  for layer in range(cfg_vlm.depth):
    qs, ks, vs = [], [], []
    for x, w, c, po in zip(streams, weights, configs, pos):
      lw = jax.tree.map(lambda a: a[layer], w["layers"])
      y = _rms_norm(x, lw["pre_attention_norm"]["scale"], c.norm_eps)
      q = np.einsum("btd,ndh->btnh", y, lw["attn"]["q_einsum"]["w"])
      k, v = np.einsum("bsd,ckdh->cbskh", y, lw["attn"]["kv_einsum"]["w"])
      qs.append(_rope(q, po, c.rope_max_wavelength))
      ks.append(_rope(k, po, c.rope_max_wavelength))
      vs.append(v)
    q, k, v = (np.concatenate(t, axis=1) for t in (qs, ks, vs))
    group = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    allowed = mask[:, None]
    logits = np.where(allowed, logits, -np.inf)
    top = np.max(np.where(allowed, logits, -1e300), axis=-1, keepdims=True)
    probs = np.where(allowed, np.exp(logits - top), 0.0)
    probs = probs / np.maximum(probs.sum(-1, keepdims=True), 1e-300)  # fully masked (padding) rows: zeros
    attended = np.einsum("bnts,bsnh->btnh", probs, v)
    parts = (attended[:, :p], attended[:, p:])
    new_streams = []
    for x, a, w, c in zip(streams, parts, weights, configs):
      lw = jax.tree.map(lambda t: t[layer], w["layers"])
      x = x + np.einsum("btnh,nhd->btd", a, lw["attn"]["attn_vec_einsum"]["w"])
      y = _rms_norm(x, lw["pre_ffw_norm"]["scale"], c.norm_eps)
      gate = _gelu_tanh(y @ lw["mlp"]["gating_einsum"][0])
      x = x + (gate * (y @ lw["mlp"]["gating_einsum"][1])) @ lw["mlp"]["linear"]
      new_streams.append(x)
    streams = new_streams
  return tuple(_rms_norm(x, w["final_norm"]["scale"], c.norm_eps) for x, w, c in zip(streams, weights, configs))


class JointReference:
  """The uncached π0: the whole [prefix; state; actions] sequence through ``joint_pass`` at every evaluation."""

  def __init__(self, model, params, batch, cfg=CFG):
    self.model, self.params, self.cfg = model, params, cfg
    self.vlm_cfg, self.expert_cfg = pi0_model.vlm_and_expert_configs(cfg)
    self.prefix_embeds, self.prefix_mask = _jit(lambda p, b: _apply(
        model, p, b, method=lambda m, b: m.vlm.embed_prefix(*observation.vlm_inputs(b, m.config))))(params, batch)
    self.proprio = np.asarray(observation.current_proprio(batch, cfg))
    self.mask, self.positions = pi0_expert.attention_inputs(self.prefix_mask, cfg.action_horizon)
    self._embed_suffix = _jit(lambda p, x, t, s: _apply(
        model, p, x, t, s, method=lambda m, x, t, s: m.action_expert.embed_suffix(x, t, s)))

  def suffix_embeds(self, x, tau):
    return self._embed_suffix(self.params, jnp.asarray(x, jnp.float32), jnp.full((x.shape[0],), tau, jnp.float32),
                              self.proprio)

  def hidden(self, suffix):
    return joint_pass(self.params["vlm"]["llm"], self.params["action_expert"]["llm"], self.vlm_cfg.llm,
                      self.expert_cfg, self.prefix_embeds, suffix, self.mask, self.positions)

  def velocity(self, x, tau):
    _, suffix = self.hidden(self.suffix_embeds(x, tau))
    out = self.params["action_expert"]["action_out_proj"]["dense"]
    return suffix[:, 1:] @ np.asarray(out["kernel"], np.float64) + np.asarray(out["bias"], np.float64)


@pytest.fixture(scope="module")
def reference(setup):
  model, params, batch = setup
  return JointReference(model, params, batch)


# ------------------------------------------------------------------------------------------------- tests
def test_parameter_tree_top_level_and_axes(setup):
  _, params, _ = setup
  assert set(params) == set(pi0_model.TOP_LEVEL)
  assert set(params["action_expert"]) == {"state_proj", "action_in_proj", "action_time_mlp_in", "action_time_mlp_out",
                                          "action_out_proj", "llm"}
  assert set(params["action_expert"]["llm"]) == {"layers", "final_norm"}  # no token embedding of its own
  axes = pi0.logical_axes(CFG)
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)) == \
      jax.tree.structure(params)
  expert_axes = axes["action_expert"]
  assert expert_axes["llm"]["layers"]["attn"]["kv_einsum"]["w"] == \
      jax.sharding.PartitionSpec("layers", None, "kv_heads", "embed", "head_dim")
  assert expert_axes["action_time_mlp_in"]["dense"]["kernel"] == jax.sharding.PartitionSpec("embed", "mlp")


def test_attention_mask_three_blocks():
  """Prefix of 3 (the last is padding), the state token, 2 action tokens: hand-written (query, key) pattern."""
  assert pi0_expert.block_ids(3, 2).tolist() == [0, 0, 0, 1, 1, 0]
  mask, positions = pi0_expert.attention_inputs(jnp.asarray([[True, True, False]]), horizon=2)
  expected = np.array([
      # p0 p1 pad st a0 a1
      [1, 1, 0, 0, 0, 0],  # p0: the real prefix, never the suffix
      [1, 1, 0, 0, 0, 0],  # p1
      [0, 0, 0, 0, 0, 0],  # padding attends to nothing
      [1, 1, 0, 1, 0, 0],  # state: prefix + itself
      [1, 1, 0, 1, 1, 1],  # actions: prefix + state + every action token
      [1, 1, 0, 1, 1, 1],
  ], bool)
  np.testing.assert_array_equal(np.asarray(mask[0]), expected)
  np.testing.assert_array_equal(np.asarray(positions[0]), [0, 1, 1, 2, 3, 4])  # padding does not count


def test_prefix_outputs_unchanged_by_suffix_and_equal_the_vlm_alone(setup, reference):
  model, params, batch = setup
  ref = reference
  rs = np.random.RandomState(2)
  suffix_a = ref.suffix_embeds(rs.normal(size=(B, CFG.action_horizon, CFG.action_dim)), 0.3)
  suffix_b = ref.suffix_embeds(rs.normal(size=(B, CFG.action_horizon, CFG.action_dim)), 0.8)
  prefix_a, out_a = ref.hidden(suffix_a)
  prefix_b, out_b = ref.hidden(suffix_b)
  assert np.abs(out_a - out_b).max() > 1e-3  # the suffix itself did change
  np.testing.assert_array_equal(prefix_a, prefix_b)
  alone = _jit(lambda p, b: _apply(model, p, *observation.vlm_inputs(b, CFG),
                                   method=lambda m, *a: m.vlm(*a)["last_hidden"]))(params, batch)
  real = np.asarray(ref.prefix_mask)
  np.testing.assert_allclose(prefix_a[real], np.asarray(alone)[real], rtol=2e-4, atol=2e-4)


def test_cached_sampling_equals_the_joint_pass_recomputed_at_every_step(setup, reference):
  """sample_actions (one VLM pass, its K/V reused by every step) == Euler over the joint [prefix; suffix] pass."""
  model, params, batch = setup
  ref = reference
  noise = np.random.RandomState(3).normal(size=(B, CFG.action_horizon, CFG.action_dim)).astype(np.float32)
  num_steps = 3
  sample = jax.jit(lambda p, b, n: _apply(model, p, b, jax.random.key(0), method="sample_actions",
                                          num_steps=num_steps, noise={"action": n}), compiler_options=FAST_COMPILE)
  got = np.asarray(sample(params, batch, noise))
  x = noise.astype(np.float64)
  for i in range(num_steps):
    x = x + ref.velocity(x, i / num_steps) / num_steps
  assert np.abs(x - noise).max() > 0.1
  np.testing.assert_allclose(got, x, rtol=2e-4, atol=2e-4)


def test_sample_actions_with_noise_is_deterministic_and_two_hand_euler_steps(setup):
  model, params, batch = setup
  noise = np.random.RandomState(4).normal(size=(B, CFG.action_horizon, CFG.action_dim)).astype(np.float32)
  sample = jax.jit(lambda p, b, r, n: _apply(model, p, b, r, method="sample_actions", num_steps=2,
                                             noise={"action": n}), compiler_options=FAST_COMPILE)
  a = np.asarray(sample(params, batch, jax.random.key(0), noise))
  np.testing.assert_array_equal(a, np.asarray(sample(params, batch, jax.random.key(99), noise)))

  def expert_velocity(m, b, x, tau):
    kv, prefix_mask = m.prefix(b)
    return m.action_expert(x, jnp.full((B,), tau), observation.current_proprio(b, m.config), kv, prefix_mask)

  velocity = _jit(lambda p, b, x, tau: _apply(model, p, b, x, tau, method=expert_velocity))
  x1 = noise + 0.5 * np.asarray(velocity(params, batch, noise, 0.0))
  x2 = x1 + 0.5 * np.asarray(velocity(params, batch, x1, 0.5))
  np.testing.assert_allclose(a, x2, rtol=1e-5, atol=1e-5)

  drawn = jax.jit(lambda p, b, r: _apply(model, p, b, r, method="sample_actions", num_steps=2),
                  compiler_options=FAST_COMPILE)
  assert not np.allclose(np.asarray(drawn(params, batch, jax.random.key(0))),
                         np.asarray(drawn(params, batch, jax.random.key(1))))
  with pytest.raises(ValueError, match="noise"):
    jax.eval_shape(lambda p: _apply(model, p, batch, jax.random.key(0), method="sample_actions",
                                    noise={"motion": noise}), params)


def test_time_embedding_is_fed_openpi_time():
  """tau -> openpi's t = 1 - tau; the smallest period (4e-3) gives the first frequency, the largest (4.0) the last."""
  tau = jnp.asarray([0.0, 0.25, 1.0])
  emb = np.asarray(pi0_expert.flow_time_embedding(tau, 6, 4e-3, 4.0))
  t = 1.0 - np.asarray(tau)
  periods = np.array([4e-3, np.sqrt(4e-3 * 4.0), 4.0])
  angles = 2 * np.pi * t[:, None] / periods
  # float32 angles reach 2 pi / 4e-3 ~ 1571 rad: their sines carry ~1e-4 of rounding.
  np.testing.assert_allclose(emb, np.concatenate([np.sin(angles), np.cos(angles)], -1), atol=5e-4)
  np.testing.assert_allclose(emb[2], [0, 0, 0, 1, 1, 1], atol=1e-6)  # tau = 1 (data) is openpi's t = 0


def test_loss_gradient_step_and_padding(setup):
  model, params, batch = setup
  rng = jax.random.key(5)

  def loss_fn(p, b):
    return _apply(model, p, b, rng, method="compute_loss")

  value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True), compiler_options=FAST_COMPILE)
  (loss, metrics), grads = value_and_grad(params, batch)
  assert set(metrics) == {"loss", "loss/action"} and np.isfinite(float(loss)) and float(loss) > 0
  np.testing.assert_allclose(loss, metrics["loss/action"], rtol=1e-6)
  for name in pi0_model.TOP_LEVEL:  # the loss reaches the VLM through the shared attention and the expert
    norm = float(_global_norm(grads[name]))
    assert np.isfinite(norm) and norm > 0, name
  stepped = jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)
  (loss_after, _), _ = value_and_grad(stepped, batch)
  assert float(loss_after) < float(loss)  # same draws (tau, eps): a small step downhill lowers the loss

  padded = copy.deepcopy(batch)
  padded[specs.ACTION_PAD_MASK][:, :, 5:] = False
  (loss_padded, _), _ = value_and_grad(params, padded)
  padded[specs.ACTION][:, :, 5:] = 123.0  # values on padded dims cannot change the loss
  (loss_changed, _), _ = value_and_grad(params, padded)
  np.testing.assert_allclose(loss_changed, loss_padded, rtol=1e-6)


def test_loss_repeats_equal_a_tiled_batch(setup):
  """loss.action_repeats = R equals R = 1 on the batch tiled R times (same draws; one VLM pass)."""
  model, params, batch = setup
  cfg = copy.deepcopy(CFG)
  cfg.loss.action_repeats = 3
  tiled = jax.tree.map(lambda x: np.concatenate([x] * 3, axis=0), batch)
  rng = jax.random.key(6)
  repeated = jax.jit(lambda p, b: _apply(pi0.build(cfg), p, b, rng, method="compute_loss")[0],
                     compiler_options=FAST_COMPILE)(params, batch)
  plain = jax.jit(lambda p, b: _apply(model, p, b, rng, method="compute_loss")[0],
                  compiler_options=FAST_COMPILE)(params, tiled)
  np.testing.assert_allclose(repeated, plain, rtol=1e-5)
  assert pi0.analytic_flops(cfg, 1, "train_step") > pi0.analytic_flops(CFG, 1, "train_step")


def _matmul_flops(jaxpr) -> float:
  """2 x multiply-adds of every dot_general in a jaxpr, scanned bodies counted ``length`` times."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
      total += 2.0 * np.prod(out) * np.prod([lhs[d] for d in contract])
    for sub in jax_core.jaxprs_in_params(eqn.params):
      total += _matmul_flops(sub) * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
  return total


def test_expert_flops_match_the_traced_matmuls(setup):
  model, params, batch = setup
  kv, prefix_mask = jax.eval_shape(lambda p, b: _apply(model, p, b, method=lambda m, b: m.prefix(b)), params, batch)
  x = jnp.zeros((B, CFG.action_horizon, CFG.action_dim))
  call = lambda p, kv, mask: _apply(model, p, x, jnp.zeros((B,)), jnp.zeros((B, CFG.proprio_dim)), kv, mask,
                                    method=lambda m, *a: m.action_expert(*a))
  traced = _matmul_flops(jax.make_jaxpr(call)(params, kv, prefix_mask).jaxpr)
  _, expert = pi0_model.vlm_and_expert_configs(CFG)
  want = B * flops.gemma_expert_call(expert, CFG.action_horizon, CFG.action_dim, CFG.proprio_dim,
                                     pi0_config.prefix_length(CFG))
  np.testing.assert_allclose(traced, want, rtol=1e-9)
  vlm = flops.paligemma_prefix(CFG.vlm, len(CFG.image_keys), CFG.max_token_len)
  np.testing.assert_allclose(pi0.analytic_flops(CFG, B, "sample_actions"),
                             B * vlm + CFG.num_inference_steps * want, rtol=1e-9)


def test_all_variants_shapes_and_paper_size():
  counts = {}
  for variant in pi0.variants:
    cfg = pi0.model_config(variant)
    params = pi0.abstract_params(cfg)
    assert set(params) == set(pi0_model.TOP_LEVEL), variant
    counts[variant] = {k: _count(v) for k, v in params.items()}
    vlm, expert = pi0_model.vlm_and_expert_configs(cfg)
    layers = params["action_expert"]["llm"]["layers"]
    assert layers["attn"]["kv_einsum"]["w"].shape == (vlm.llm.depth, 2, vlm.llm.num_kv_heads, expert.width,
                                                      vlm.llm.head_dim), variant
    assert params["action_expert"]["action_out_proj"]["dense"]["kernel"].shape == (expert.width, cfg.action_dim)
    assert params["action_expert"]["state_proj"]["dense"]["kernel"].shape == (cfg.proprio_dim, expert.width)
  paper = counts["paper"]
  assert 2.8e9 < paper["vlm"] < 3.0e9, paper  # PaliGemma-3B: SigLIP So400m + Gemma 2B
  assert 2.9e8 < paper["action_expert"] < 3.3e8, paper  # Gemma 300M: 18 layers x 1024 wide
  assert pi0.model_config("paper").dtype == "bfloat16"
  dummy = pi0.model_config("openpi_dummy")
  assert pi0_config.prefix_length(dummy) == 3 * 256 + 48  # 3 cameras x 16 x 16 patches of 14 px at 224^2
  # The expert is the dummy Gemma, computing attention by the model-wide default ('auto').
  assert pi0_model.vlm_and_expert_configs(dummy)[1] == gemma_lib.get_config("dummy", attention=dummy.attention)
  assert dummy.attention == "auto"
  # 'sim' shares LaMP's 'sim' VLM, so that the two policies compare on the same encoder and data.
  lamp_vlm = lamp_config.model_config("sim").vlm.to_dict()
  for key in ("kind", "film_cnn"):  # LaMP's choice of prefix encoder (PaliGemma here); π0 always reads PaliGemma
    lamp_vlm.pop(key)
  assert lamp_config.model_config("sim").vlm.kind == "paligemma"
  assert pi0.model_config("sim").vlm.to_dict() == lamp_vlm
  assert counts["tiny"]["vlm"] < 1e6 and sum(counts["sim"].values()) < 3e6


def test_expert_that_does_not_match_the_vlm_is_rejected():
  cfg = copy.deepcopy(CFG)
  cfg.action.overrides.depth = 2
  with pytest.raises(ValueError, match=r"model\.action\.variant.*model\.vlm\.llm_variant.*depth=2 vs 3"):
    pi0.build(cfg)
  cfg = copy.deepcopy(CFG)
  cfg.action.overrides.head_dim = 8
  cfg.action.overrides.num_heads = 1
  with pytest.raises(ValueError, match=r"num_heads=1 vs 3, head_dim=8 vs 16"):
    pi0.abstract_params(cfg)
  cfg = copy.deepcopy(CFG)
  cfg.action.kind = "dit"
  with pytest.raises(ValueError, match=r"model\.action\.kind='dit'"):
    pi0.build(cfg)


def test_bad_inputs_raise_clear_errors(setup):
  model, params, batch = setup
  bad = copy.deepcopy(batch)
  bad[specs.OBSERVATION][specs.IMAGE_PRIMARY] = bad[specs.OBSERVATION][specs.IMAGE_PRIMARY][:, :, :-1]
  with pytest.raises(ValueError, match="image_primary"):
    jax.eval_shape(lambda p, b: _apply(model, p, b, jax.random.key(0), method="sample_actions"), params, bad)
  bad = copy.deepcopy(batch)
  bad[specs.ACTION] = bad[specs.ACTION][:, :-1]
  with pytest.raises(ValueError, match="action_horizon"):
    jax.eval_shape(lambda p, b: _apply(model, p, b, jax.random.key(0), method="compute_loss"), params, bad)
  assert fm.TIME_DISTRIBUTIONS[1] == CFG.action.time_dist == "pi0_beta"


def _config_file(name: str, variant: str):
  spec = importlib.util.spec_from_file_location(f"config_{name}", os.path.join(REPO, "configs", name))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


@pytest.mark.parametrize("pi0_variant, ablation_variant", [("pi0", "no_motion"), ("smoke_pi0", "smoke_no_motion")])
def test_sim_pi0_runs_on_the_data_and_budget_of_the_ablation(tmp_path, pi0_variant, ablation_variant):
  """configs/sim.py: π0 trains like LaMP's w/o-motion ablation (one 'action' stage: same steps, optimizer, draws per
  example, batch, data pipeline and generated dataset, evaluation)."""
  run, ablation = _config_file("sim.py", pi0_variant), _config_file("sim.py", ablation_variant)
  defaults.validate(run)
  assert run.model.name == "pi0" and ablation.model.name == "lamp"
  assert run.data.to_dict() == ablation.data.to_dict()
  assert experiment.sim_dataset_dir(run, str(tmp_path)) == experiment.sim_dataset_dir(ablation, str(tmp_path))
  assert run.stage_order == ablation.stage_order == ("action",)
  ours, theirs = run.stages.action, ablation.stages.action
  assert ours.steps == theirs.steps and ours.optimizer.to_dict() == theirs.optimizer.to_dict()
  assert ours.frozen == theirs.frozen == ()
  assert ours.model_overrides.loss.action_repeats == theirs.model_overrides.loss.action_repeats
  assert dict(ours.model_overrides.loss.weights) == {"action": 1.0}
  for section in ("eval", "tokenizer", "ema", "sim_data", "checkpoint"):
    assert run[section].to_dict() == ablation[section].to_dict(), section
  for field in ("image_size", "image_keys", "max_token_len", "action_horizon", "action_dim", "proprio_dim",
                "num_inference_steps"):
    assert run.model[field] == ablation.model[field], field
  assert _config_file("pi0.py", "openpi_dummy").model.to_dict() == pi0.model_config("openpi_dummy").to_dict()


# ------------------------------------------------------------------------ train -> checkpoint -> serve
def _block_lamp(monkeypatch):
  """Importing any of LAMP_MODULES fails from here on (modules imported earlier stay usable by reference)."""
  for name in LAMP_MODULES:
    monkeypatch.setitem(sys.modules, name, None)


def _serve_and_compare(policy, twin, observation, instruction, observation_spec=None):
  """Served actions equal the same checkpoint's policy called directly (same seed: the same noise)."""
  server = server_lib.PolicyServer(policy, observation_spec=observation_spec, host="127.0.0.1", port=0).start()
  try:
    with client_lib.PolicyClient("127.0.0.1", server.port) as client:
      assert client.health()["action_horizon"] == policy.action_horizon
      client.reset(instruction)
      served = client.infer(observation)
  finally:
    server.shutdown()
  twin.reset(instruction)
  np.testing.assert_allclose(served, twin(observation), rtol=1e-6, atol=1e-6)
  return served


def test_train_checkpoint_policy_serve_in_process_without_lamp(tmp_path, monkeypatch):
  """Two AdamW steps of the tiny π0 on synthetic batches -> checkpoint -> CheckpointPolicy -> policy server."""
  _block_lamp(monkeypatch)
  c = defaults.base_config()
  # The trainer tests' persistent XLA cache: reruns, and the twin policy's identical sample_actions, skip compiles.
  c.compilation_cache_dir = os.path.join(tempfile.gettempdir(), "lamp_jax_tests_xla_cache")
  c.model = pi0.model_config("tiny")
  c.data.global_batch_size = 2
  c.tokenizer.kind, c.tokenizer.words = "words", "push the red cube"
  c.stage_order, c.stages = common.action_stage(2, defaults.optimizer_config(lr=1e-3, warmup_steps=1))
  c.checkpoint.every_steps = 2
  c.logging.every_steps, c.logging.measure_roof, c.logging.progress_bar, c.logging.tensorboard = 1, False, False, False
  trainer = trainer_lib.Trainer(c, str(tmp_path))
  try:
    state = jax.device_get(trainer.train())
  finally:
    trainer.close()
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2] and all(r["loss/action"] > 0 for r in train)

  policy = CheckpointPolicy(str(tmp_path), seed=7)
  assert policy.step == 2 and type(policy.model).__name__ == "Pi0"
  for got, want in zip(jax.tree.leaves(policy.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(got), want)
  rs = np.random.RandomState(8)
  size = CFG.image_size
  observation = {"image_primary": rs.randint(0, 256, (size, size, 3)).astype(np.uint8),
                 "image_wrist": rs.randint(0, 256, (size, size, 3)).astype(np.uint8),
                 "state": rs.normal(size=CFG.proprio_dim).astype(np.float32)}  # the served spec: exact length
  # Synthetic-data runs read the model's camera names (no dataset camera mapping).
  spec = {k: server_lib.ArraySpec("uint8", (None, None, 3)) for k in ("image_primary", "image_wrist")}
  spec["state"] = server_lib.ArraySpec("float32", (None,), required=True, max_dim=64)
  served = _serve_and_compare(policy, CheckpointPolicy(str(tmp_path), seed=7), observation, "push the red cube",
                              observation_spec=spec)
  assert served.shape == (CFG.action_horizon, specs.ACTION_DIM) and np.all(np.isfinite(served))


@pytest.mark.slow  # ~2 min on two idle cores (generation, 2 compilations, 4 closed-loop episodes); longer when shared
def test_sim_smoke_pi0_command_checkpoint_policy_and_serve_without_lamp(tmp_path, monkeypatch):
  """``python -m lamp_jax.train --config=configs/sim.py:smoke_pi0`` with LaMP's model code unimportable: generate ->
  one 'action' stage -> closed-loop eval; then the checkpoint behind the policy server, on a simulator frame."""
  workdir = tmp_path / "run"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3", "MUJOCO_GL": "egl",
         "LAMP_JAX_CACHE": str(tmp_path / "cache")}
  code = (f"import runpy, sys\nfor name in {LAMP_MODULES!r}:\n  sys.modules[name] = None\n"
          "runpy.run_module('lamp_jax.train', run_name='__main__', alter_sys=True)\n")
  proc = subprocess.run([sys.executable, "-c", code, "--config=configs/sim.py:smoke_pi0", f"--workdir={workdir}"],
                        cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  summary = json.loads(proc.stdout.strip().splitlines()[-1])
  assert summary["final_step"] == 6
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(r["loss/action"] > 0 and "loss/motion" not in r and "guidance/gate" not in r for r in train)
  result = json.load(open(workdir / "eval_results.json"))
  assert set(result["per_task"]) == {"put_on_plate", "stack", "push", "drawer"} and result["step"] == 6

  _block_lamp(monkeypatch)
  from lamp_jax.sim import env as env_lib  # pylint: disable=g-import-not-at-top
  from lamp_jax.sim import tasks  # pylint: disable=g-import-not-at-top

  policy = CheckpointPolicy(str(workdir))
  assert policy.step == 6 and type(policy.model).__name__ == "Pi0"
  sim = env_lib.TabletopEnv(image_size=policy.image_size, render=True)
  try:
    task = tasks.sample_task("push", tasks.EVAL_SEED_OFFSET)
    observation = {k: v for k, v in sim.reset(task).items() if k.startswith("image_") or k == "state"}  # as sent
  finally:
    sim.close()
  served = _serve_and_compare(policy, CheckpointPolicy(str(workdir)), observation, task.instruction)
  assert served.shape == (policy.action_horizon, 7) and served.dtype == np.float32 and np.all(np.isfinite(served))


def test_heads_major_attention_gives_the_plain_loss_and_actions(setup):
  """The default attention ('heads_major') of the VLM and the expert equals the plain reference
  (``reference_config``): same loss, gradient and sampled actions."""
  _, params, batch = setup
  plain_cfg = pi0.reference_config(CFG)
  assert (plain_cfg.attention, plain_cfg.vlm.attention, plain_cfg.action.attention) == ("plain",) * 3
  assert CFG.attention == "auto" and layers.resolve_attention_implementation("auto", jnp.float32, 8) == "heads_major"
  vlm, expert = pi0_model.vlm_and_expert_configs(plain_cfg)
  assert (vlm.vision.attention, vlm.llm.attention, expert.attention) == ("plain",) * 3
  noise = np.random.RandomState(6).normal(size=(B, CFG.action_horizon, CFG.action_dim)).astype(np.float32)

  def run(cfg):
    model = pi0.build(cfg)
    loss_grad = jax.value_and_grad(lambda p: _apply(model, p, batch, jax.random.key(5), method="compute_loss")[0])
    sample = lambda p: _apply(model, p, batch, jax.random.key(0), method="sample_actions", num_steps=2,
                              noise={"action": noise})
    return _jit(lambda p: (loss_grad(p), sample(p)))(params)

  ((loss, grads), actions), ((plain_loss, plain_grads), plain_actions) = run(CFG), run(plain_cfg)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-5)
  np.testing.assert_allclose(actions, plain_actions, rtol=1e-4, atol=1e-5)
  for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(g, p, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))
