"""A small model library (``lamp_jax.models.interface``) for the trainer's tests: ``model.name`` is its import path
``tests.toy_model``, as a user's method outside the package would be registered.

Two parameter groups mirror LaMP's stages: 'motion_expert' regresses the scene flow from the proprio history
(stage 1 loss), 'action_expert' regresses the action chunk from proprio + motion features (stage 2 loss).
Every parameter carries logical axis names, with widths divisible by 8 so FSDP over 8 devices splits them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lamp_jax import specs
from lamp_jax.models import interface
from lamp_jax.models import layers
from lamp_jax.models import losses

NAME = "tests.toy_model"
LOSS_TERMS = ("motion", "action")


def model_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  width = {"tiny": 16, "sim": 32}[variant]
  return ml_collections.ConfigDict(dict(
      name=NAME, variant=variant, width=width, mlp=2 * width, window=2, proprio_dim=5, action_horizon=3,
      action_dim=7, num_points=9, flow_steps=2, dtype="float32",
      loss=dict(weights=dict(motion=1.0, action=1.0))))


class ToyPolicy(nn.Module):
  cfg: ml_collections.ConfigDict

  def setup(self):
    c = self.cfg
    dtype = jnp.dtype(c.dtype)
    self.motion_in = layers.DenseGeneral(c.width, ("patch_in", "embed"), dtype=dtype)
    self.motion_mlp = layers.DenseGeneral(c.mlp, ("embed", "mlp"), dtype=dtype)
    self.motion_out = layers.DenseGeneral(c.num_points * c.flow_steps * 3, ("mlp", "embed"), dtype=dtype)
    self.action_in = layers.DenseGeneral(c.width, ("patch_in", "embed"), dtype=dtype)
    self.action_mlp = layers.DenseGeneral(c.mlp, ("embed", "mlp"), dtype=dtype)
    self.action_out = layers.DenseGeneral(c.action_horizon * c.action_dim, ("mlp", "embed"), dtype=dtype)
    self.action_norm = layers.LayerNorm(dtype=dtype)

  def _features(self, batch):
    proprio = batch[specs.OBSERVATION][specs.PROPRIO]
    return proprio.reshape(proprio.shape[0], -1)

  def _motion(self, x):
    h = nn.gelu(self.motion_mlp(nn.gelu(self.motion_in(x))))
    return h, self.motion_out(h)

  def _action(self, x, motion_hidden):
    h = nn.gelu(self.action_mlp(self.action_norm(self.action_in(x)))) + motion_hidden
    return self.action_out(h)

  def __call__(self, batch, rng, train: bool = False):
    return self.compute_loss(batch, rng, train)

  def compute_loss(self, batch, rng, train: bool = True):
    c = self.cfg
    x = self._features(batch)
    x = x + 0.01 * jax.random.normal(rng, x.shape)  # Uses the per-step RNG like a flow-matching loss does.
    motion_hidden, flow = self._motion(x)
    target_flow = batch[specs.SCENE_FLOW].reshape(x.shape[0], -1)
    flow_mask = jnp.repeat(batch[specs.SCENE_FLOW_MASK], 3, axis=-1).reshape(x.shape[0], -1)
    flow_mask = flow_mask & batch[specs.HAS_SCENE_FLOW][:, None]
    motion_loss = jnp.sum(jnp.square(flow - target_flow) * flow_mask) / jnp.maximum(jnp.sum(flow_mask), 1)
    action = self._action(x, jax.lax.stop_gradient(motion_hidden)).reshape(x.shape[0], c.action_horizon, c.action_dim)
    mask = batch[specs.ACTION_PAD_MASK]
    action_loss = jnp.sum(jnp.square(action - batch[specs.ACTION]) * mask) / jnp.maximum(jnp.sum(mask), 1)
    weights = losses.active_weights(c.loss.weights, LOSS_TERMS, NAME)
    values = {"motion": motion_loss, "action": action_loss}
    return losses.weighted_total({k: v for k, v in values.items() if k in weights}, weights, LOSS_TERMS)

  def sample_actions(self, batch, rng, noise=None):
    del noise  # deterministic
    c = self.cfg
    x = self._features(batch)
    motion_hidden, _ = self._motion(x)
    return self._action(x, motion_hidden).reshape(x.shape[0], c.action_horizon, c.action_dim).astype(jnp.float32)


def dummy_batch(cfg, batch_size: int = 2, seed: int = 0) -> dict:
  """A learnable synthetic batch: actions and flow are fixed linear functions of the proprio history."""
  r = np.random.default_rng(seed)
  b, w, s = batch_size, cfg.window, cfg.proprio_dim
  proprio = r.normal(size=(b, w, s)).astype(np.float32)
  flat = proprio.reshape(b, -1)
  fixed = np.random.default_rng(1234)
  a_map = fixed.normal(size=(w * s, cfg.action_horizon * cfg.action_dim)).astype(np.float32) * 0.3
  f_map = fixed.normal(size=(w * s, cfg.num_points * cfg.flow_steps * 3)).astype(np.float32) * 0.3
  return {
      specs.OBSERVATION: {specs.PROPRIO: proprio, specs.TIMESTEP_PAD_MASK: np.ones((b, w), bool)},
      specs.TASK: {specs.TOKENS: np.zeros((b, 4), np.int32), specs.TOKEN_MASK: np.ones((b, 4), bool)},
      specs.ACTION: (flat @ a_map).reshape(b, cfg.action_horizon, cfg.action_dim),
      specs.ACTION_PAD_MASK: np.ones((b, cfg.action_horizon, cfg.action_dim), bool),
      specs.SCENE_FLOW: (flat @ f_map).reshape(b, cfg.num_points, cfg.flow_steps, 3),
      specs.SCENE_FLOW_MASK: np.ones((b, cfg.num_points, cfg.flow_steps), bool),
      specs.HAS_SCENE_FLOW: np.ones((b,), bool),
  }


class ToyLibrary(interface.ModelLibrary):
  name = NAME
  variants = ("tiny", "sim")
  methods = frozenset({"sample_actions"})
  flop_modes = ("train_step", "sample_actions")

  def model_config(self, variant: str = "tiny") -> ml_collections.ConfigDict:
    return model_config(variant)

  def build(self, cfg: ml_collections.ConfigDict) -> ToyPolicy:
    return ToyPolicy(cfg)

  def dummy_batch(self, cfg, batch_size: int = 2, seed: int = 0) -> dict:
    return dummy_batch(cfg, batch_size, seed)

  def data_requirements(self, cfg) -> specs.DataRequirements:
    return specs.DataRequirements(cameras=(), image_size=0, window=int(cfg.window),
                                  action_horizon=int(cfg.action_horizon), action_dim=int(cfg.action_dim),
                                  proprio_dim=int(cfg.proprio_dim),
                                  scene_flow=(int(cfg.num_points), int(cfg.flow_steps)))

  def analytic_flops(self, cfg, batch_size: int, mode: str = "train_step") -> float:
    c = cfg
    fwd_per_example = 2 * (2 * (c.window * c.proprio_dim * c.width + c.width * c.mlp)
                           + c.mlp * c.num_points * c.flow_steps * 3 + c.mlp * c.action_horizon * c.action_dim)
    return float(batch_size * fwd_per_example * (3 if mode == "train_step" else 1))


LIBRARY = ToyLibrary()
