"""Device mesh and logical-axis sharding rules (MaxText-like).

The mesh has three named axes:
  'data'    pure data parallelism (parameters replicated, batch split)
  'fsdp'    fully sharded data parallelism (batch split *and* parameters / optimizer state split)
  'tensor'  tensor (model) parallelism over heads / MLP width

Models name every parameter axis with a *logical* name (see ``lamp_jax/models/layers.py``); the config maps
logical names to mesh axes with a list of ``(logical_name, mesh_axes)`` rules. The mapping here is
shape-aware: a mesh axis is used for a parameter dimension only if it divides that dimension and is not
already used by another dimension of the same parameter; otherwise the dimension stays replicated (so tiny
test models with prime-ish sizes still run on 8 devices). ``sharding_report`` lists what was sharded.

Activations carry logical names too, at every transformer block input (SigLIP encoder block, Gemma block,
CogVideoX block, DiT layer: ``sharding.with_logical_constraint(x, ACTIVATION_AXES)`` in the model files):
  'activation_batch'   the batch axis of a float[B, T, D] token tensor   -> ('data', 'fsdp')
  'activation_length'  its token (sequence) axis                         -> replicated
  'activation_embed'   its width axis                                    -> replicated (no sequence / tensor split)
Without these constraints XLA's sharding propagation, seeing FSDP-sharded weights, may leave activations
unsplit over the batch (the AOT plan of the paper-size model then needs ~118 GiB of temporaries per chip).
The constraints only act while a step is traced inside ``activation_sharding(mesh, rules)`` (the trainer does
this for the train step); anywhere else (init, tests, inference) ``with_logical_constraint`` returns its input.
They use the same shape-aware mapping as the parameters (``logical_to_spec``).

Why not flax's ``nn.with_logical_constraint`` under ``nn.logical_axis_rules`` + a global mesh: with a global
mesh and rules active, flax also constrains every boxed parameter initialiser it evaluates, and
``nn.DenseGeneral`` with several feature / input axes evaluates its boxed initialiser on the *flattened* kernel
(rank 2, three axis names) while checking parameter shapes in ``apply`` — a rank error. So the mesh and rules
of the activation constraints live in this module's own context instead of the global mesh.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lamp_jax.models import layers as model_layers

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # The batch dimension is split over both data-parallel axes.

# Activation axes (see the module docstring): batch split over both data-parallel axes, the rest replicated.
ACTIVATION_RULES = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
)

# Default logical-axis rules: FSDP over the model width, tensor parallelism over heads and MLP width.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("cond", "fsdp"),
    ("patch_in", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", ("tensor", "fsdp")),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("stem", None),
    ("conv_in", None),
    ("conv_out", None),
) + ACTIVATION_RULES


def mesh_shape_from_config(mesh_cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int, int]:
  """Resolves ``mesh.{data,fsdp,tensor}`` (one of them may be -1 = 'the rest') against the device count."""
  sizes = [int(mesh_cfg[name]) for name in MESH_AXES]
  for name, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"config field mesh.{name}={size}: must be a positive size or -1 (fill)")
  fill = [i for i, s in enumerate(sizes) if s == -1]
  if len(fill) > 1:
    raise ValueError(f"config fields mesh.{{data,fsdp,tensor}}={sizes}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if fill:
    if num_devices % known:
      raise ValueError(f"config field mesh.{MESH_AXES[fill[0]]}=-1: {num_devices} devices are not divisible by "
                       f"the other mesh axes' product {known}")
    sizes[fill[0]] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"config fields mesh.{{data,fsdp,tensor}}={tuple(sizes)} need {int(np.prod(sizes))} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices: Sequence[Any] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'tensor') mesh with Auto axis types (GSPMD-style propagation)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape_from_config(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def rules_from_config(rules: Iterable[Sequence[Any]] | None) -> tuple[tuple[str, Any], ...]:
  """Normalises a config rule list into ``((logical, mesh_axes_or_None), ...)`` and validates mesh names.

  Activation names the list does not mention get their ``ACTIVATION_RULES`` entry appended (an unmapped
  activation name would otherwise constrain that axis to be replicated).
  """
  if rules is None:
    return DEFAULT_RULES
  out = []
  for i, rule in enumerate(rules):
    if len(rule) != 2:
      raise ValueError(f"config field sharding.logical_axis_rules[{i}]={rule!r}: expected (logical, mesh_axes)")
    logical, mesh_axes = rule
    axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    for a in axes:
      if a not in MESH_AXES:
        raise ValueError(f"config field sharding.logical_axis_rules[{i}]: unknown mesh axis {a!r} "
                         f"(mesh axes are {MESH_AXES})")
    out.append((str(logical), mesh_axes if mesh_axes is None or isinstance(mesh_axes, str) else tuple(mesh_axes)))
  named = {logical for logical, _ in out}
  out.extend(rule for rule in ACTIVATION_RULES if rule[0] not in named)
  return tuple(out)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Iterator[None]:
  """Context in which the models' ``layers.with_logical_constraint`` constrains activations on ``mesh`` by
  ``rules`` (shape-aware, like parameters).

  Enter it inside a jitted function, around the traced computation (``Trainer.jit_train_step`` does): it only
  matters while the step is traced.
  """
  rules = tuple(rules)

  def constrain(x, names):
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(names, x.shape, mesh, rules)))

  with model_layers.activation_constraint(constrain):
    yield


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """The models' activation constraint (``layers.with_logical_constraint``), re-exported for trainer code."""
  return model_layers.with_logical_constraint(x, names)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]]) -> PartitionSpec:
  """Maps a parameter's logical axis names to a PartitionSpec, shape-aware (see module docstring)."""
  rule_map: dict[str, Any] = {}
  for logical, mesh_axes in rules:
    rule_map.setdefault(logical, mesh_axes)  # First matching rule wins, as in flax / MaxText.
  used: set[str] = set()
  spec = []
  for name, dim in zip(names, shape):
    target = rule_map.get(name) if name is not None else None
    if target is None:
      spec.append(None)
      continue
    axes = (target,) if isinstance(target, str) else tuple(target)
    chosen = []
    size = 1
    for a in axes:
      n = mesh.shape[a]
      if a in used or n == 1 or dim % (size * n):
        continue
      chosen.append(a)
      size *= n
    used.update(chosen)
    spec.append(None if not chosen else (chosen[0] if len(chosen) == 1 else tuple(chosen)))
  return PartitionSpec(*spec)


def _is_box(x) -> bool:
  return isinstance(x, nn.Partitioned)


def tree_shardings(abstract_boxed_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
  """NamedShardings for a (possibly abstract) tree whose leaves may be ``nn.LogicallyPartitioned`` boxes.

  The returned tree has the structure of the *unboxed* tree (boxes replaced by their sharding); leaves
  without logical names (step counters, RNG keys, Adam counts) are replicated.
  """
  def leaf_sharding(x):
    if _is_box(x):
      names = x.names
      shape = x.value.shape
      return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(leaf_sharding, abstract_boxed_tree, is_leaf=_is_box)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding of a batch array: leading (batch) axis over ('data', 'fsdp'), the rest replicated."""
  if ndim == 0:
    return NamedSharding(mesh, PartitionSpec())
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
  return jax.tree.map(lambda x: batch_sharding(mesh, np.ndim(x)), batch)


def global_batch_from_local(local_batch: Any, mesh: Mesh) -> Any:
  """Assembles per-process numpy batches (leading axis = this process's share) into global jax Arrays."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

  return jax.tree.map(put, local_batch)


def sharding_report(abstract_params: Any, shardings: Any) -> list[dict[str, Any]]:
  """Per parameter: path, shape, PartitionSpec and the fraction of it each device holds."""
  rows = []
  flat_p = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  flat_s = jax.tree.leaves(shardings, is_leaf=lambda s: isinstance(s, NamedSharding))
  for (path, leaf), sharding in zip(flat_p, flat_s):
    shape = tuple(leaf.shape)
    shard = sharding.shard_shape(shape)
    frac = float(np.prod(shard)) / max(float(np.prod(shape)), 1.0)
    rows.append({"path": jax.tree_util.keystr(path), "shape": shape, "spec": str(sharding.spec),
                 "device_fraction": frac})
  return rows
