"""Our parameter trees <-> the flat tensor names of the PyTorch port (``lamp_torch``), strict both ways.

An export's ``model.safetensors`` holds exactly the ``state_dict()`` of the ``lamp_torch`` module of the model's
kind, in the dtype each JAX parameter is stored in (float32 / bfloat16 / float16, never cast). The names come
from three rules, so that nothing is listed twice:

* The VLM (``vlm/...``): transformers' PaliGemma module names from ``hf_paligemma.layout(extensions=True)``,
  prefixed with ``vlm.`` (``vlm.model.vision_tower.encoder.layers.3.self_attn.q_proj.weight``). Without that
  prefix the tensors load into ``PaliGemmaForConditionalGeneration`` (5.x module names) where layouts match.
* Every other parameter (LaMP's experts and guidance, π0's projections): the JAX path with '/' -> '.', flax's
  ``dense`` / ``ln`` wrapper level dropped, ``kernel`` -> ``weight`` float[out, in] (the kernel's input axes and
  output axes each flattened row-major; the output axes are those of the layer's bias), LayerNorm ``scale`` ->
  ``weight``; a layer stack scanned into a leading [L] axis (logical axis 'layers', the ``blocks`` of
  ``dit.stack``) becomes ``blocks.{i}.`` per layer, as does an unscanned ``blocks_{i}``; other parameters keep
  their shape (``motion_expert.cond_pad``, ``guidance.gate_logit``).
* A Gemma decoder outside the VLM (a ``gemma.Gemma`` parameter tree: ``layers/...`` scanned over [L] and
  ``final_norm``, with or without an ``embedder``; π0's action expert at ``action_expert/llm``): transformers'
  ``GemmaModel`` names under its module path, exactly as the VLM's language model
  (``action_expert.llm.layers.3.self_attn.k_proj.weight``, ``action_expert.llm.norm.weight``,
  ``...embed_tokens.weight``); its sizes are read off the parameter shapes.

Axis letters: L stacked layers · N heads · H head dim · D width.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import jax
import numpy as np

from lamp_jax.models import gemma as gemma_lib
from lamp_jax.models.weights import hf_paligemma
from lamp_jax.models.weights import strict

VLM = "vlm"
STACK_MODULE = "blocks"  # the name dit.stack gives a layer stack
LAYERS_AXIS = "layers"
_UNSCANNED_LAYER = re.compile(rf"^{STACK_MODULE}_(\d+)$")
# A Gemma decoder's parameters relative to its module (gemma.Gemma; the embedder is optional).
GEMMA_MARKER = "layers/attn/q_einsum/w"
GEMMA_PARAMS = ("layers/attn/q_einsum/w", "layers/attn/kv_einsum/w", "layers/attn/attn_vec_einsum/w",
                "layers/mlp/gating_einsum", "layers/mlp/linear", "layers/pre_attention_norm/scale",
                "layers/pre_ffw_norm/scale", "final_norm/scale")
_GEMMA_EMBEDDER = "embedder/input_embedding"
EXACT_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One exported tensor <-> the slice ``ours[index]`` of one of our parameters."""

  name: str  # the tensor's name in model.safetensors (= the lamp_torch state_dict key)
  shape: tuple[int, ...]
  ours: str  # our flat parameter name ('/'-joined)
  index: tuple[int, ...]  # leading indices into our parameter (the layer of a stacked one, ...)
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]


def _identity(x):
  return x


def _linear_entry(name: str, ours: str, index: tuple[int, ...], in_shape: tuple[int, ...],
                  out_shape: tuple[int, ...]) -> Entry:
  n_in, n_out = int(np.prod(in_shape)), int(np.prod(out_shape))
  return Entry(name, (n_out, n_in), ours, index,
               lambda w: w.T.reshape(in_shape + out_shape), lambda w: w.reshape(n_in, n_out).T)


def _torch_module_path(parts: list[str], layer: int | None, ours: str) -> list[str]:
  """JAX module path -> lamp_torch module path: ``blocks_{i}`` -> ``blocks.{i}``, the layer index after the
  stack module of a scanned parameter."""
  out = []
  for part in parts:
    match = _UNSCANNED_LAYER.match(part)
    out += [STACK_MODULE, match.group(1)] if match else [part]
  if layer is not None:
    if STACK_MODULE not in parts:
      raise ValueError(f"parameter {ours} is stacked over layers but has no {STACK_MODULE!r} module to index")
    at = parts.index(STACK_MODULE) + 1
    out = out[:at] + [str(layer)] + out[at:]
  return out


def _gemma_entries(root: str, flat_shapes: Mapping[str, tuple[int, ...]]) -> list[Entry]:
  """Entries of the Gemma decoder whose parameters lie under ``root/`` (module docstring), sizes from shapes."""
  below = {name[len(root) + 1:]: shape for name, shape in flat_shapes.items() if name.startswith(root + "/")}
  extra = sorted(set(below) - set(GEMMA_PARAMS) - {_GEMMA_EMBEDDER})
  missing = sorted(set(GEMMA_PARAMS) - set(below))
  if extra or missing:
    problems = ([f"parameters {[f'{root}/{n}' for n in extra]} are not a Gemma's"] if extra else []) + (
        [f"{[f'{root}/{n}' for n in missing]} are missing"] if missing else [])
    raise ValueError(f"cannot export {root}: it has {GEMMA_MARKER} like a Gemma decoder (gemma.Gemma) but "
                     + " and ".join(problems))
  depth, num_heads, width, head_dim = below["layers/attn/q_einsum/w"]
  _, _, num_kv_heads, _, _ = below["layers/attn/kv_einsum/w"]
  sizes = gemma_lib.GemmaConfig(width=width, depth=depth, mlp_dim=below["layers/mlp/linear"][1],
                                num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
  torch_prefix = ".".join(_torch_module_path(root.split("/"), None, root)) + "."
  entries = [Entry(e.hf_name, tuple(e.hf_shape), e.ours, e.index, e.to_ours, e.to_hf)
             for e in hf_paligemma.gemma_layer_entries(sizes, torch_prefix, root + "/")]
  entries.append(Entry(torch_prefix + "norm.weight", (width,), f"{root}/final_norm/scale", (), _identity,
                       _identity))
  if _GEMMA_EMBEDDER in below:
    entries.append(Entry(torch_prefix + "embed_tokens.weight", tuple(below[_GEMMA_EMBEDDER]),
                         f"{root}/{_GEMMA_EMBEDDER}", (), _identity, _identity))
  return entries


def expert_entries(flat_shapes: Mapping[str, tuple[int, ...]], flat_axes: Mapping[str, tuple]) -> list[Entry]:
  """Entries of every non-VLM parameter: Gemma decoders by transformers' names, the rest by the generic rule
  (module docstring).

  Args:
    flat_shapes: {our flat name: shape} of the whole model.
    flat_axes: {our flat name: logical axis names} (a leading 'layers' marks a stacked parameter).
  """
  gemma_roots = sorted(name[:-len(GEMMA_MARKER) - 1] for name in flat_shapes
                       if name.endswith("/" + GEMMA_MARKER) and name.split("/")[0] != VLM)
  entries = []
  for root in gemma_roots:
    entries += _gemma_entries(root, flat_shapes)
  for ours, shape in sorted(flat_shapes.items()):
    parts = ours.split("/")
    if parts[0] == VLM or any(ours.startswith(root + "/") for root in gemma_roots):
      continue
    stacked = bool(flat_axes.get(ours)) and flat_axes[ours][0] == LAYERS_AXIS
    layers = range(shape[0]) if stacked else [None]
    per_layer = tuple(shape[1:]) if stacked else tuple(shape)
    wrapper = parts[-2] if len(parts) >= 2 else ""
    for layer in layers:
      index = () if layer is None else (layer,)
      if wrapper in ("dense", "ln"):
        module = ".".join(_torch_module_path(parts[:-2], layer, ours))
        if wrapper == "dense" and parts[-1] == "kernel":
          bias_name = "/".join(parts[:-1] + ["bias"])
          if bias_name not in flat_shapes:
            raise ValueError(f"cannot export {ours}: its layer has no bias, whose shape gives the output axes")
          out_rank = len(flat_shapes[bias_name]) - (1 if stacked else 0)
          in_shape, out_shape = per_layer[:len(per_layer) - out_rank], per_layer[len(per_layer) - out_rank:]
          entries.append(_linear_entry(f"{module}.weight", ours, index, in_shape, out_shape))
        elif parts[-1] == "bias":
          entries.append(Entry(f"{module}.bias", (int(np.prod(per_layer)),), ours, index,
                               lambda w, s=per_layer: w.reshape(s), lambda w: w.reshape(-1)))
        elif wrapper == "ln" and parts[-1] == "scale":
          entries.append(Entry(f"{module}.weight", per_layer, ours, index, _identity, _identity))
        else:
          raise ValueError(f"cannot export {ours}: unknown parameter {parts[-1]!r} of a {wrapper!r} layer")
      else:
        name = ".".join(_torch_module_path(parts[:-1], layer, ours) + [parts[-1]])
        entries.append(Entry(name, per_layer, ours, index, _identity, _identity))
  return entries


def vlm_entries(vlm_cfg: Any) -> list[Entry]:
  """The VLM's entries: ``hf_paligemma.layout(extensions=True)`` under ``vlm.`` / ``vlm/``."""
  return [Entry(f"{VLM}.{e.hf_name}", tuple(e.hf_shape), f"{VLM}/{e.ours}", e.index, e.to_ours, e.to_hf)
          for e in hf_paligemma.layout(vlm_cfg, extensions=True)]


def layout(vlm_cfg: Any, abstract_params: Any, logical_axes: Any) -> list[Entry]:
  """Every exported tensor of a model whose parameter tree is {'vlm': PaliGemma, <experts>...}.

  Args:
    vlm_cfg: the model config's ``vlm`` section.
    abstract_params: the model's parameter tree of ShapeDtypeStructs (``<lib>.abstract_params``).
    logical_axes: the matching tree of PartitionSpecs (``<lib>.logical_axes``).
  """
  shapes = {k: tuple(v.shape) for k, v in strict.flatten(abstract_params).items()}
  axes_leaves = jax.tree_util.tree_flatten_with_path(
      logical_axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
  axes = {"/".join(str(k.key) for k in path): tuple(spec) for path, spec in axes_leaves}
  entries = vlm_entries(vlm_cfg) + expert_entries(shapes, axes)
  names = [e.name for e in entries]
  if len(set(names)) != len(names):
    duplicates = sorted({n for n in names if names.count(n) > 1})
    raise ValueError(f"two parameters map to the same exported name: {duplicates}")
  return entries


def _check_coverage(entries: list[Entry], shapes: Mapping[str, tuple[int, ...]]) -> None:
  """Every element of every parameter is assigned by exactly one entry (a bug in a layout otherwise)."""
  filled = {name: 0 for name in shapes}
  for e in entries:
    if e.ours not in filled:
      raise AssertionError(f"layout entry {e.name} points at {e.ours}, which the model does not have")
    filled[e.ours] += int(np.prod(e.shape))
  wrong = sorted(name for name, count in filled.items() if count != int(np.prod(shapes[name])))
  if wrong:
    raise AssertionError(f"layout leaves parameters (partly) unassigned or assigned twice: {wrong}")


def to_torch_tensors(params: Any, entries: list[Entry], abstract_params: Any, source: str = "params"
                     ) -> dict[str, np.ndarray]:
  """Our parameter tree -> {exported name: array in the parameter's own dtype} (strict).

  Raises StrictLoadError naming every missing / unexpected / mis-shaped parameter, or one whose dtype is not
  float32 / bfloat16 / float16.
  """
  flat = strict.flatten(params)
  expected = {k: tuple(v.shape) for k, v in strict.flatten(abstract_params).items()}
  _check_coverage(entries, expected)
  strict.check_names(source, expected, flat)
  problems = []
  for name, shape in expected.items():
    value = flat[name]
    if tuple(np.shape(value)) != shape:
      problems.append(f"{name}: shape {tuple(np.shape(value))} != expected {shape}")
    if np.dtype(value.dtype).name not in EXACT_DTYPES:
      problems.append(f"{name}: dtype {np.dtype(value.dtype).name} is not one of {EXACT_DTYPES}")
  if problems:
    raise strict.StrictLoadError(source, mismatched=problems)
  host = {name: np.asarray(value) for name, value in flat.items()}
  # np.array(order='C') keeps 0-d parameters 0-d (np.ascontiguousarray would make them [1]).
  return {e.name: np.array(e.to_torch(host[e.ours][e.index]), order="C") for e in entries}


def from_torch_tensors(tensors: Mapping[str, np.ndarray], entries: list[Entry], abstract_params: Any,
                       source: str) -> dict[str, Any]:
  """{exported name: array} -> our parameter tree (numpy, each parameter in its tensors' dtype; strict).

  Raises StrictLoadError naming every missing / unexpected / mis-shaped tensor, one of a dtype other than
  float32 / bfloat16 / float16, and parameters assembled from tensors of different dtypes.
  """
  expected = {k: tuple(v.shape) for k, v in strict.flatten(abstract_params).items()}
  _check_coverage(entries, expected)
  by_name = {e.name: e for e in entries}
  missing = sorted(set(by_name) - set(tensors))
  unexpected = sorted(set(tensors) - set(by_name))
  if missing or unexpected:
    raise strict.StrictLoadError(source, missing=missing, unexpected=unexpected)
  problems = []
  for e in entries:
    value = tensors[e.name]
    if tuple(value.shape) != e.shape:
      problems.append(f"{e.name}: shape {tuple(value.shape)} != expected {e.shape} (parameter {e.ours})")
    if np.dtype(value.dtype).name not in EXACT_DTYPES:
      problems.append(f"{e.name}: dtype {np.dtype(value.dtype).name} is not one of {EXACT_DTYPES}")
  dtypes: dict[str, set] = {}
  for e in entries:
    dtypes.setdefault(e.ours, set()).add(np.dtype(tensors[e.name].dtype).name)
  problems += [f"{ours}: assembled from tensors of different dtypes {sorted(d)}"
               for ours, d in sorted(dtypes.items()) if len(d) > 1]
  if problems:
    raise strict.StrictLoadError(source, mismatched=problems)
  params = {name: np.empty(shape, np.dtype(next(iter(dtypes[name])))) for name, shape in expected.items()}
  for e in entries:
    params[e.ours][e.index] = e.to_ours(np.asarray(tensors[e.name]))
  return strict.unflatten(params)
