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
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # The batch dimension is split over both data-parallel axes.

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
)


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
  """Normalises a config rule list into ``((logical, mesh_axes_or_None), ...)`` and validates mesh names."""
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
  return tuple(out)


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
