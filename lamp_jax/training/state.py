"""Train state, built abstractly with ``jax.eval_shape`` and then initialised directly into its shardings.

Nothing is ever materialised on one device and then moved: the init function is jitted with the state's
``out_shardings``, so each device creates only its own shards (what lets a 3B model start on a TPU pod).
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lamp_jax.training import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """step: int32[] train-step calls so far (global, across stages) · params · opt_state (of the current
  stage's optimizer) · ema_params (same tree as params, or None when EMA is off) · rng: uint32[2] base key
  (per-step keys are ``fold_in(rng, step)``, so the random stream is a function of the step) · model_state:
  the model's non-parameter collections ({collection: tree}, ``ModelLibrary.state_collections``; replicated),
  None for models without state (then the checkpoint layout is that of a state without the field)."""
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array
  model_state: Any = None


def _dict_key_suffix(path) -> tuple[str, ...]:
  """The trailing run of dict keys of a tree path (how optimizer-state leaves name their parameter)."""
  keys = []
  for k in reversed(path):
    if isinstance(k, jax.tree_util.DictKey):
      keys.append(str(k.key))
    else:
      break
  return tuple(reversed(keys))


def _param_key(path) -> tuple[str, ...]:
  return tuple(str(k.key) if isinstance(k, jax.tree_util.DictKey) else str(k) for k in path)


def mirror_shardings(abstract_tree: Any, abstract_params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for a tree whose leaves mirror parameters (Adam moments, EMA): a leaf whose trailing dict-key
  path and shape equal a parameter's takes that parameter's sharding; everything else is replicated."""
  by_path = {}
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                              jax.tree.leaves(param_shardings, is_leaf=lambda s: isinstance(s, NamedSharding))):
    by_path[_param_key(path)] = (tuple(leaf.shape), sh)
  replicated = NamedSharding(mesh, PartitionSpec())

  def leaf_sharding(path, leaf):
    suffix = _dict_key_suffix(path)
    for start in range(len(suffix)):
      hit = by_path.get(suffix[start:])
      if hit is not None and hit[0] == tuple(leaf.shape):
        return hit[1]
    return replicated

  return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_tree)


def abstract_params_and_shardings(init_params_fn: Callable[[jax.Array], Any], rng: jax.Array, mesh: Mesh,
                                  rules) -> tuple[Any, Any]:
  """Abstract (unboxed) params and their NamedShardings from the model's boxed init, without allocating."""
  abstract_boxed = jax.eval_shape(init_params_fn, rng)
  param_shardings = sharding_lib.tree_shardings(abstract_boxed, mesh, rules)
  abstract_params = nn.meta.unbox(abstract_boxed)
  return abstract_params, param_shardings


def state_shardings(abstract_state: TrainState, abstract_params: Any, param_shardings: Any,
                    mesh: Mesh) -> TrainState:
  replicated = NamedSharding(mesh, PartitionSpec())
  return TrainState(
      step=replicated,
      params=param_shardings,
      opt_state=mirror_shardings(abstract_state.opt_state, abstract_params, param_shardings, mesh),
      ema_params=None if abstract_state.ema_params is None else param_shardings,
      rng=replicated,
      model_state=jax.tree.map(lambda _: replicated, abstract_state.model_state),
  )


ModelStateFn = Callable[[jax.Array], Any] | None


def _init_fn(init_params_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation, use_ema: bool,
             init_model_state_fn: ModelStateFn = None):
  def init(param_rng, state_rng):
    params = nn.meta.unbox(init_params_fn(param_rng))
    model_state = None if init_model_state_fn is None else nn.meta.unbox(init_model_state_fn(param_rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=params if use_ema else None, rng=state_rng, model_state=model_state)
  return init


def abstract_train_state(init_params_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                         rng: jax.Array, mesh: Mesh, rules, use_ema: bool,
                         init_model_state_fn: ModelStateFn = None) -> tuple[TrainState, TrainState]:
  """(abstract state of ShapeDtypeStructs, state shardings) without allocating any parameter."""
  param_rng, state_rng = jax.random.split(rng)
  abstract_params, param_shardings = abstract_params_and_shardings(init_params_fn, param_rng, mesh, rules)
  abstract_state = jax.eval_shape(_init_fn(init_params_fn, tx, use_ema, init_model_state_fn), param_rng, state_rng)
  return abstract_state, state_shardings(abstract_state, abstract_params, param_shardings, mesh)


def create_train_state(init_params_fn: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                       rng: jax.Array, mesh: Mesh, rules, use_ema: bool,
                       init_model_state_fn: ModelStateFn = None) -> tuple[TrainState, TrainState]:
  """Builds the state abstractly, derives its shardings, then initialises it directly into them.

  Returns (state, shardings). ``init_params_fn(rng)`` returns the model's (boxed) 'params' collection;
  ``init_model_state_fn(rng)`` (optional, called with the same key) its state collections.
  """
  param_rng, state_rng = jax.random.split(rng)
  _, shardings = abstract_train_state(init_params_fn, tx, rng, mesh, rules, use_ema, init_model_state_fn)
  state = jax.jit(_init_fn(init_params_fn, tx, use_ema, init_model_state_fn),
                  out_shardings=shardings)(param_rng, state_rng)
  return state, shardings


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying shardings (the restore target for orbax)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def reinit_optimizer(state: TrainState, tx: optax.GradientTransformation, shardings: TrainState,
                     mesh: Mesh) -> tuple[TrainState, TrainState]:
  """New optimizer state for ``tx`` (a new stage) in the right shardings; params / EMA / step kept."""
  abstract_params = jax.eval_shape(lambda p: p, state.params)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = mirror_shardings(abstract_opt, abstract_params, shardings.params, mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(state.params)
  new_shardings = shardings.replace(opt_state=opt_shardings)
  return state.replace(opt_state=opt_state), new_shardings
