r"""Ahead-of-time TPU plan: compile the real train step for a TPU topology on a CPU host, print memory as JSON.

  pip install libtpu          # (setup.py extra 'tpu-aot'); no TPU is needed, only the compiler
  python -m lamp_jax.perf.aot --config=configs/bridge.py --topology=v5p:4x4x2 [--global_batch=512] [--stage=stage2]
  python -m lamp_jax.perf.aot --config=configs/bridge.py --topology=v5e:16x16 --mesh=4,64,1 --out=plan.json

What it does, per stage of the config (``stage_order``, or ``--stage``):
  1. ``jax.experimental.topologies.get_topology_desc(topology, 'tpu')`` gives the slice's devices (compile-only);
  2. the trainer's own public pieces build everything from abstract shapes: the mesh (``training/sharding.py``),
     the stage (model, optimizer with freezing), ``Trainer.abstract_state`` (abstract train state and its
     shardings) and ``Trainer.abstract_batch`` (a global batch of ``jax.ShapeDtypeStruct`` with the trainer's batch
     sharding) — no parameter is ever allocated;
  3. ``Trainer.jit_train_step`` (exactly the step the training loop runs: in/out shardings, donated state,
     activation-sharding rules) ``.lower(...).compile()`` for that topology, then ``compiled.memory_analysis()``.

Printed JSON (one object; ``stages`` has one entry per compiled stage):
  topology, accelerator_type, chips, devices, hosts, device_kind, hbm_per_device_gib, mesh {data, fsdp, tensor},
  global_batch, per_device_batch, and per stage:
    memory_per_device_gib: arguments, outputs, aliased (donated outputs reusing argument buffers), temporaries,
      generated_code, total (= arguments + outputs - aliased + temporaries + generated code: what the
      executable needs resident at its peak, the same sum MaxText prints), peak (XLA's own peak estimate);
    fits (total <= HBM), fits_with_margin (total <= SAFE_FRACTION x HBM), headroom_gib;
    state_per_device_gib by component ('vlm', 'motion_expert', 'guidance', 'action_expert') and by kind
      (params, opt_state, ema); trainable / frozen parameter counts;
    example_partition_specs: a few of the largest parameters per component with their PartitionSpec and the
      fraction of the parameter one device holds;
    replicated_large_params: parameters above 1M elements that the mesh leaves fully replicated;
    lower_seconds, compile_seconds.
  When the TPU compiler itself rejects the program as too large for HBM (``RESOURCE_EXHAUSTED ...
  CompileTimeHbmOom``), the stage's entry says ``fits: false`` with ``oom: {required_gib,
  compiler_hbm_limit_gib}`` (parsed from the compiler's message) instead of the memory breakdown.

Cost: compiling the paper-size model takes ~5 min of one CPU core per stage and ~2.5 GB of host RAM.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Any

import numpy as np

GIB = 2**30
LARGE_PARAM = 1_000_000  # elements; larger parameters are listed when replicated


# ------------------------------------------------------------------------------------------------ devices --


def topology_devices(topology: str) -> list:
  """Compile-only TPU devices of a topology string such as 'v5p:4x4x2' (needs libtpu)."""
  from jax.experimental import topologies

  from lamp_jax.perf import tpu_specs

  tpu_specs.parse_topology(topology)  # clear error on a malformed string before libtpu sees it
  # libtpu takes a machine-wide lock file; compile-only use never touches a chip, so several planning
  # processes (or pytest workers) may load it side by side.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # do not look for a TPU VM metadata server
  try:
    desc = topologies.get_topology_desc(topology, "tpu")
  except Exception as e:  # noqa: BLE001 - libtpu missing or topology unknown to it.
    raise RuntimeError(f"--topology={topology!r}: could not get a TPU topology description ({e}). Is libtpu "
                       "installed (pip install libtpu, or the 'tpu-aot' extra of setup.py)?") from e
  return list(desc.devices)


def parse_mesh(spec: str) -> dict[str, int]:
  """'4,64,1' -> {'data': 4, 'fsdp': 64, 'tensor': 1} (-1 allowed once, as in the config)."""
  parts = [p.strip() for p in spec.split(",")]
  if len(parts) != 3:
    raise ValueError(f"--mesh={spec!r}: expected 'data,fsdp,tensor', e.g. '4,64,1' or '1,-1,1'")
  try:
    return dict(zip(("data", "fsdp", "tensor"), (int(p) for p in parts)))
  except ValueError as e:
    raise ValueError(f"--mesh={spec!r}: sizes must be integers") from e


# ------------------------------------------------------------------------------------------------ reports --


def _gib(x: float) -> float:
  return round(float(x) / GIB, 4)


def _top_level(path) -> str:
  import jax

  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      return str(k.key)
  return "<other>"


def _leaf_bytes_per_device(leaf, sharding) -> int:
  shard = sharding.shard_shape(tuple(leaf.shape))
  return int(math.prod(shard)) * np.dtype(leaf.dtype).itemsize


def state_bytes_per_device(abstract_state, shardings) -> dict[str, dict[str, float]]:
  """GiB one device holds, by kind (params / opt_state / ema) and top-level component of the parameter tree.

  Optimizer-state leaves are attributed to the component whose parameter they mirror (the first dict key of
  their path that names a component); counters and other small leaves go to '<other>'.
  """
  import jax
  from jax.sharding import NamedSharding

  out: dict[str, dict[str, float]] = {}
  for kind in ("params", "opt_state", "ema_params"):
    tree = getattr(abstract_state, kind)
    if tree is None:
      continue
    sh_tree = getattr(shardings, kind)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    shs = jax.tree.leaves(sh_tree, is_leaf=lambda s: isinstance(s, NamedSharding))
    per: dict[str, float] = {}
    components = set(abstract_state.params.keys()) if isinstance(abstract_state.params, dict) else set()
    for (path, leaf), sh in zip(leaves, shs):
      name = "<other>"
      for k in path:
        if isinstance(k, jax.tree_util.DictKey) and str(k.key) in components:
          name = str(k.key)
          break
      per[name] = per.get(name, 0) + _leaf_bytes_per_device(leaf, sh)
    out[kind] = {k: _gib(v) for k, v in sorted(per.items())}
  return out


def parameter_report(abstract_params, param_shardings, frozen_patterns, examples_per_component: int = 3
                     ) -> dict[str, Any]:
  """Parameter counts, example PartitionSpecs of the largest parameters, large replicated parameters."""
  import jax

  from lamp_jax.training import optim
  from lamp_jax.training import sharding as sharding_lib

  rows = sharding_lib.sharding_report(abstract_params, param_shardings)
  labels = jax.tree.leaves(optim.freeze_labels(abstract_params, tuple(frozen_patterns)))
  counts: dict[str, dict[str, int]] = {}
  by_component: dict[str, list] = {}
  replicated = []
  for row, (path, leaf), label in zip(rows, jax.tree_util.tree_flatten_with_path(abstract_params)[0], labels):
    comp = _top_level(path)
    n = int(math.prod(leaf.shape))
    c = counts.setdefault(comp, {"trainable": 0, "frozen": 0})
    c["trainable" if label == optim.TRAINABLE else "frozen"] += n
    by_component.setdefault(comp, []).append((n, optim.param_path(path), row))
    if n > LARGE_PARAM and row["device_fraction"] >= 1.0:
      replicated.append({"path": optim.param_path(path), "shape": "x".join(map(str, leaf.shape))})
  examples = {}
  for comp, items in sorted(by_component.items()):
    items.sort(key=lambda t: -t[0])
    examples[comp] = [{"path": p, "shape": "x".join(map(str, r["shape"])), "spec": r["spec"],
                       "device_fraction": round(r["device_fraction"], 6)} for _, p, r in items[:examples_per_component]]
  return {"param_counts": counts, "example_partition_specs": examples, "replicated_large_params": replicated}


def memory_report(compiled, hbm_bytes: int) -> dict[str, Any]:
  """Per-device memory of a compiled executable against the device's HBM."""
  from lamp_jax.perf import tpu_specs

  m = compiled.memory_analysis()
  if m is None:
    raise RuntimeError("the compiled executable has no memory analysis on this backend")
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
           + m.generated_code_size_in_bytes)
  peak = getattr(m, "peak_memory_in_bytes", 0) or 0
  return {
      "memory_per_device_gib": {
          "arguments": _gib(m.argument_size_in_bytes), "outputs": _gib(m.output_size_in_bytes),
          "aliased": _gib(m.alias_size_in_bytes), "temporaries": _gib(m.temp_size_in_bytes),
          "generated_code": _gib(m.generated_code_size_in_bytes), "total": _gib(total), "peak": _gib(peak)},
      "total_bytes_per_device": int(total),
      "fits": bool(total <= hbm_bytes),
      "fits_with_margin": bool(total <= tpu_specs.SAFE_FRACTION * hbm_bytes),
      "headroom_gib": _gib(hbm_bytes - total),
  }


_OOM_RE = re.compile(r"required for (?P<what>[\w ]+?) \((?P<need>[\d.]+)(?P<unit>[KMGT])\) exceeds available HBM "
                     r"\((?P<have>[\d.]+)(?P<unit2>[KMGT])\)")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def compile_oom_report(error: Exception, hbm_bytes: int) -> dict[str, Any] | None:
  """The plan entry for a compile that the TPU compiler rejected as out of HBM, or None for other errors.

  XLA refuses to compile a program whose buffers cannot fit (``RESOURCE_EXHAUSTED: ... CompileTimeHbmOom``)
  and names the memory it needed; that is the answer to "does it fit" (no).
  """
  text = str(error)
  if "RESOURCE_EXHAUSTED" not in text and "HbmOom" not in text:
    return None
  m = _OOM_RE.search(text)
  entry: dict[str, Any] = {"fits": False, "fits_with_margin": False, "compile_error": text.splitlines()[0][:500]}
  if m:
    need = float(m.group("need")) * _UNITS[m.group("unit")]
    have = float(m.group("have")) * _UNITS[m.group("unit2")]
    entry["oom"] = {"what": m.group("what"), "required_gib": _gib(need), "compiler_hbm_limit_gib": _gib(have),
                    "published_hbm_gib": _gib(hbm_bytes)}
    entry["headroom_gib"] = _gib(have - need)
  return entry


# ---------------------------------------------------------------------------------------------- compiling --


class _NoData:
  """Stands in for the trainer's data source: the plan compiles from abstract batches and never reads data."""

  kind = "aot"
  norm_stats = None

  def position(self, stage_index: int, offset: int) -> dict:
    return {"kind": self.kind}


@contextlib.contextmanager
def planning_trainer(config, mesh):
  """The trainer itself, on ``mesh``, with a throw-away workdir and no data source (nothing is trained)."""
  from lamp_jax.training import trainer as trainer_lib

  config = copy.deepcopy(config)
  with config.unlocked():
    config.logging.tensorboard = False
    config.logging.wandb_project = ""
    config.logging.measure_roof = False
    config.checkpoint.async_save = False
    config.compilation_cache_dir = ""
  with tempfile.TemporaryDirectory(prefix="lamp_aot_") as workdir:
    # check_config=False: planning traces and compiles every stage itself (the same errors surface there).
    trainer = trainer_lib.Trainer(config, workdir, data=_NoData(), mesh=mesh, check_config=False)
    try:
      yield trainer
    finally:
      trainer.close()


def abstract_stage(trainer, stage_name: str):
  """(stage, abstract state, state shardings, abstract global batch with shardings) of one stage, all built
  by the trainer's own functions from abstract shapes (no parameter or batch is allocated)."""
  stage = trainer.stage(list(trainer.config.stage_order).index(stage_name))
  abstract_state, shardings = trainer.abstract_state(stage)
  return stage, abstract_state, shardings, trainer.abstract_batch(stage)


def plan_config(config, topology: str, global_batch: int | None = None, mesh: dict[str, int] | None = None,
                stages: list[str] | None = None, examples_per_component: int = 3, progress=None) -> dict[str, Any]:
  """Compiles the config's train step(s) for ``topology`` and returns the plan (see the module docstring)."""
  import jax

  from lamp_jax.training import sharding as sharding_lib
  from lamp_jax.training import state as state_lib
  from lamp_jax.perf import tpu_specs

  devices = topology_devices(topology)
  hbm = tpu_specs.hbm_bytes_per_device(devices[0])
  config = copy.deepcopy(config)
  with config.unlocked():
    if global_batch:
      config.data.global_batch_size = int(global_batch)
    for k, v in (mesh or {}).items():
      config.mesh[k] = int(v)
  stage_names = list(stages or config.stage_order)
  for name in stage_names:
    if name not in config.stage_order:
      raise ValueError(f"--stage={name!r} is not in the config's stage_order {tuple(config.stage_order)}")
  mesh_obj = sharding_lib.make_mesh(config.mesh, devices)
  batch_shards = mesh_obj.shape["data"] * mesh_obj.shape["fsdp"]
  result: dict[str, Any] = {
      "topology": topology, "accelerator_type": tpu_specs.accelerator_type(topology),
      "chips": tpu_specs.num_chips(topology), "devices": len(devices), "hosts": tpu_specs.num_hosts(topology),
      "device_kind": devices[0].device_kind, "hbm_per_device_gib": _gib(hbm),
      "mesh": {k: int(v) for k, v in mesh_obj.shape.items()},
      "global_batch": int(config.data.global_batch_size),
      "per_device_batch": int(config.data.global_batch_size) / batch_shards,
      "stages": {},
  }
  with planning_trainer(config, mesh_obj) as trainer:
    for name in stage_names:
      if progress:
        progress(f"[aot] {topology} stage {name}: building the abstract state")
      stage, abstract_state, shardings, abstract_batch = abstract_stage(trainer, name)
      jitted = trainer.jit_train_step(stage, shardings, jax.tree.map(lambda x: x.sharding, abstract_batch))
      if progress:
        progress(f"[aot] {topology} stage {name}: lowering")
      t0 = time.perf_counter()
      lowered = jitted.lower(state_lib.abstract_with_shardings(abstract_state, shardings), abstract_batch)
      t1 = time.perf_counter()
      if progress:
        progress(f"[aot] {topology} stage {name}: compiling ({t1 - t0:.1f} s to lower)")
      try:
        compiled = lowered.compile()
      except Exception as e:  # noqa: BLE001 - only the compiler's out-of-memory verdict is a plan result.
        oom = compile_oom_report(e, hbm)
        if oom is None:
          raise
        compiled = None
      t2 = time.perf_counter()
      entry = memory_report(compiled, hbm) if compiled is not None else oom
      entry["state_per_device_gib"] = state_bytes_per_device(abstract_state, shardings)
      entry.update(parameter_report(abstract_state.params, shardings.params, stage.frozen, examples_per_component))
      entry["lower_seconds"] = round(t1 - t0, 2)
      entry["compile_seconds"] = round(t2 - t1, 2)
      result["stages"][name] = entry
      del compiled, lowered
  result["fits"] = all(s["fits"] for s in result["stages"].values())
  return result


# ---------------------------------------------------------------------------------------------------- CLI --


def main(argv=None) -> int:
  from absl import app, flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file("config", None, "Run config: configs/<name>.py[:variant].",
                                                lock_config=False)
  topology = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:4x4x2, v5e:16x16, v6e:8x8, v4:4x4x4.")
  global_batch = flags.DEFINE_integer("global_batch", 0, "Global batch size (0 = the config's).")
  stage = flags.DEFINE_multi_string("stage", None, "Stage(s) to compile (default: every stage of stage_order).")
  mesh = flags.DEFINE_string("mesh", "", "Override mesh sizes as 'data,fsdp,tensor' (-1 = the rest).")
  out = flags.DEFINE_string("out", "", "Also write the JSON plan to this file.")
  examples = flags.DEFINE_integer("examples", 3, "Example PartitionSpecs per component.")
  flags.register_validator("topology", lambda v: v is not None, message="--topology is required")

  def run(args):
    if len(args) > 1:
      raise app.UsageError(f"unexpected arguments: {args[1:]}")
    if config_flag.value is None:
      raise app.UsageError("--config is required")
    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    plan = plan_config(config_flag.value, topology.value, global_batch.value or None,
                       parse_mesh(mesh.value) if mesh.value else None, stage.value, examples.value, progress)
    text = json.dumps(plan, indent=2)
    if out.value:
      with open(out.value, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text, flush=True)
    return 0

  app.run(run, argv=argv)
  return 0


if __name__ == "__main__":
  # Quiet, CPU-only host process: libtpu is used as a compiler only.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  main()
