r"""Export a trained policy for PyTorch serving: ``python -m lamp_jax.export --checkpoint=WORKDIR --out=DIR``.

  python -m lamp_jax.export --checkpoint=/tmp/lamp_sim --out=/tmp/lamp_sim_torch [--step=N] [--ema | --no-ema]
  python -m lamp_jax.serve --export=/tmp/lamp_sim_torch --backend=torch      # no JAX in that process
  python -c "import lamp_torch; p = lamp_torch.from_pretrained('/tmp/lamp_sim_torch')"

The checkpoint is read by the policy loader of ``lamp_jax/eval/checkpoint_policy.py`` (run config, stage model
config, normalisation statistics, EMA choice: by default the EMA parameters when the run has them, as
``python -m lamp_jax.serve``; ``--ema`` requires them, ``--no-ema`` takes the raw ones). The directory written
(format: ``lamp_jax/export_format.py``) holds ``model.safetensors`` (the ``lamp_torch`` module's state_dict
names, each tensor in its stored dtype), ``config.json`` and a ``README.md``.

Strict both ways (lamp_jax/models/weights/torch_export.py): a missing, extra or mis-shaped tensor is one error
naming every one. ``load_export(DIR)`` is the import direction (export -> our parameter tree); the round trip
params -> export -> import -> export is bit-exact (tests/test_export.py).

Another policy kind = one entry in ``KINDS`` (a model library with a ``lamp_torch`` port; the tensor names follow from
the rules of torch_export.py) plus its ``lamp_torch`` module and registry entry, keyed by the model config's
``name``; sizes the PyTorch side cannot derive (JAX-side variant tables) are resolved into config.json
(``resolved_sections``: ``vlm`` for every kind, ``expert_llm`` for π0's Gemma expert).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from safetensors import TensorSpec, serialize_file

from lamp_jax import export_format
from lamp_jax import specs
from lamp_jax.eval import checkpoint_policy
from lamp_jax.models import interface
from lamp_jax.models import paligemma
from lamp_jax.models import pi0_expert
from lamp_jax.models import prefix_encoder
from lamp_jax.models import registry
from lamp_jax.models.weights import strict
from lamp_jax.models.weights import torch_export
from lamp_jax.training import checkpoints as ckpt_lib

# Model config ``name`` -> model library (``abstract_params`` / ``logical_axes`` of a model config).
# The model kinds (``model.name``) with a PyTorch port: the keys of ``lamp_torch.registry.MODEL_KINDS``
# (tests/test_export.py checks both agree).
KINDS = ("lamp", "pi0", "lafp")
_ML_DTYPES = {"float32": np.float32, "float16": np.float16}
METADATA = {"format": "pt"}  # what transformers / safetensors.torch expect of a PyTorch checkpoint


def _library(kind: Any) -> interface.ModelLibrary:
  if kind not in KINDS:
    raise ValueError(f"cannot export a model of kind {kind!r} (config field model.name); exportable kinds: "
                     f"{sorted(KINDS)}")
  return registry.get(kind)


def kind_of(model_cfg: ml_collections.ConfigDict) -> str:
  kind = model_cfg.get("name", None)
  _library(kind)
  # lamp_torch re-implements the PaliGemma prefix only; a FiLM-CNN encoder (vlm.kind='film_cnn') has no PyTorch
  # counterpart, so its export is refused here rather than failing inside the tensor layout.
  encoder = prefix_encoder.kind_of(model_cfg.vlm)
  if encoder != "paligemma":
    raise ValueError(f"cannot export a model with config field model.vlm.kind={encoder!r}: the PyTorch export "
                     "(lamp_torch) implements the 'paligemma' prefix encoder only")
  return kind


def layout(model_cfg: ml_collections.ConfigDict) -> tuple[list[torch_export.Entry], Any]:
  """(the export's entries, the abstract parameter tree) of a model config (cached per config: both come from
  tracing the model's init, seconds on CPU)."""
  kind_of(model_cfg)
  return _layout(model_cfg.to_json_best_effort(sort_keys=True))


@functools.lru_cache(maxsize=16)
def _layout(model_json: str) -> tuple[list[torch_export.Entry], Any]:
  model_cfg = model_config_from_json(json.loads(model_json))
  lib = _library(model_cfg.get("name", None))
  abstract = lib.abstract_params(model_cfg)
  return torch_export.layout(model_cfg.vlm, abstract, lib.logical_axes(model_cfg)), abstract


# ------------------------------------------------------------------------------------------ tensors <-> files
def _numpy_dtype(name: str):
  if name == "bfloat16":
    import ml_dtypes  # pylint: disable=import-outside-toplevel

    return ml_dtypes.bfloat16
  return _ML_DTYPES[name]


def write_safetensors(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None):
  """Writes numpy arrays (float32 / bfloat16 / float16) as safetensors, each in its own dtype."""
  specs_ = {}
  keep = []
  for name, value in tensors.items():
    value = np.array(value, order="C")  # own contiguous little-endian buffer, alive during the write
    keep.append(value)
    specs_[name] = TensorSpec(dtype=np.dtype(value.dtype).name, shape=list(value.shape),
                              data_ptr=value.ctypes.data, data_len=value.nbytes)
  serialize_file(specs_, path, metadata=dict(metadata or {}))
  umask = os.umask(0)  # safetensors creates the file 0600; give it the permissions of any other file written here
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file as numpy arrays (bfloat16 via ml_dtypes), memory-mapped.

  A file shorter than its header says (truncated) raises naming the file and the first tensor past its end.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise export_format.ExportFormatError(f"{path} is truncated: {size} bytes, not even a safetensors header")
    header_len = int.from_bytes(head, "little")
    if 8 + header_len > size:
      raise export_format.ExportFormatError(f"{path} is truncated: its header needs {8 + header_len} bytes, the "
                                            f"file has {size}")
    try:
      header = json.loads(f.read(header_len))
    except json.JSONDecodeError as e:
      raise export_format.ExportFormatError(f"{path} has a corrupt safetensors header: {e}") from e
  header.pop("__metadata__", None)
  tags = {v: k for k, v in export_format.SAFETENSORS_DTYPES.items()}
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len) if size > 8 + header_len else None
  available = size - 8 - header_len
  out = {}
  for name, spec in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    if spec["dtype"] not in tags:
      raise export_format.ExportFormatError(f"{path}: tensor {name} has dtype {spec['dtype']}; an export holds "
                                            f"{sorted(tags)} only")
    begin, end = spec["data_offsets"]
    if end > available:
      raise export_format.ExportFormatError(f"{path} is truncated: tensor {name} ends at byte {end} of the data, "
                                            f"the file holds {available}")
    dtype = _numpy_dtype(tags[spec["dtype"]])
    out[name] = (data[begin:end].view(dtype) if end > begin else np.zeros((0,), dtype)).reshape(spec["shape"])
  return out


# ------------------------------------------------------------------------------------------ config.json
def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def resolved_sections(model_cfg: ml_collections.ConfigDict) -> dict:
  """config.json sections holding the sizes that the model config names by variant (the variant tables live on
  the JAX side): 'vlm' (SigLIP / Gemma fields, camera_embeddings) and, for a Gemma action expert
  (``action.kind='pi0'``), 'expert_llm' (its ``gemma.GemmaConfig`` fields)."""
  sections = {"vlm": dataclasses.asdict(paligemma.config_from_dict(model_cfg.vlm))}
  action = model_cfg.get("action", None)
  if action is not None and action.get("kind", None) == pi0_expert.KIND:
    sections["expert_llm"] = dataclasses.asdict(pi0_expert.gemma_config(action, str(model_cfg.dtype)))
  return sections


def model_config_from_json(model_json: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The model ConfigDict of a config.json ``model`` section (lists of scalars become tuples, as in training)."""
  return ckpt_lib.config_from_json(dict(model_json))


def _inputs_and_normalization(policy, model_cfg, norm_json: Mapping[str, Any]) -> tuple[dict, dict | None]:
  """config.json ``inputs`` / ``normalization`` from the policy loader's preprocessing."""
  cameras = [str(c) for c in model_cfg.image_keys]
  if policy.preprocessor is None:  # synthetic-data run: images by camera name at model size, raw proprio
    inputs = {"cameras": cameras, "camera_keys": {c: c for c in cameras},
              "image_size": [int(model_cfg.image_size)] * 2, "resize": False, "state_key": "state",
              "proprio_dim": int(model_cfg.proprio_dim), "state_dim": None}
    return inputs, None
  pre, data = policy.preprocessor, policy.data_cfg
  data_cameras = set(data.cameras)
  entry = data.datasets[0]
  inputs = {"cameras": cameras,
            "camera_keys": {c: (pre.image_keys.get(c, "") if c in data_cameras else "") for c in cameras},
            "image_size": [int(s) for s in data.image_size], "resize": True, "state_key": pre.state_key,
            "proprio_dim": int(data.max_proprio_dim), "state_dim": int(pre.stats.proprio.dim)}
  if int(data.max_proprio_dim) != int(model_cfg.proprio_dim):
    raise ValueError(f"data.pipeline.max_proprio_dim={data.max_proprio_dim} != model.proprio_dim="
                     f"{model_cfg.proprio_dim}")
  normalization = {"dataset": entry.name, "action_mode": str(data.action_normalization),
                   "action_mask": [bool(m) for m in pre.action_mask],
                   "proprio_mode": str(data.proprio_normalization),
                   "proprio_mask": [bool(m) for m in pre.proprio_mask],
                   "statistics": norm_json[entry.name]}
  return inputs, normalization


def _tokenizer_json(config: ml_collections.ConfigDict, max_len: int, out_dir: str | None) -> dict:
  tok = config.tokenizer
  out = {"kind": str(tok.kind), "words": str(tok.get("words", "") or ""), "path": "", "max_len": int(max_len),
         "truncate": bool(tok.get("truncate", False))}
  if tok.kind == "sentencepiece":
    out["path"] = export_format.TOKENIZER_FILE
    if out_dir is not None:
      shutil.copyfile(tok.path, os.path.join(out_dir, export_format.TOKENIZER_FILE))
  return out


README = """# Exported {kind} policy

Written by `python -m lamp_jax.export` from `{checkpoint}` (step {step}, `{params}`), format
`{format}` version {version}.

* `model.safetensors`: {count} tensors, {size:.1f} MB, dtypes {dtypes}. Names are the `state_dict()` keys of the
  `lamp_torch` module: `vlm.model.*` are transformers `PaliGemmaForConditionalGeneration` (5.x) module names
  (strip the `vlm.` prefix to load them there; `vlm.camera_embedding` and a convolutional stem have no
  transformers counterpart); a Gemma decoder outside the VLM (π0's `action_expert.llm.*`) has transformers
  `GemmaModel` names; the other expert tensors follow the JAX parameter tree with `kernel` -> `weight`
  [out, in] and stacked layers split into `blocks.<i>`.
* `config.json`: the model config (`model`), the resolved VLM (`vlm`) and π0 expert Gemma (`expert_llm`), the
  tokenizer, the camera mapping and image size (`inputs`), the action / proprio normalisation statistics
  (`normalization`).

Serve without JAX: `python -m lamp_jax.serve --export=<this dir> --backend=torch [--device=cpu]`, or
`lamp_torch.from_pretrained("<this dir>").sample_actions(observation)`. Load back into JAX:
`lamp_jax.export.load_export("<this dir>")`.
"""


# ------------------------------------------------------------------------------------------ export / import
def export_params(params: Any, model_cfg: ml_collections.ConfigDict, out_dir: str, *, inputs: dict,
                  normalization: dict | None, tokenizer: dict, source: dict) -> dict:
  """Writes an export directory from a parameter tree. Returns {'tensors', 'bytes', 'seconds', 'dtypes'}.

  Only what ``sample_actions`` runs is exported: the library's ``inference_config`` of ``model_cfg`` (e.g. LaMP
  without its training-only motion-image head) is written to config.json, and the top-level subtrees it drops
  (e.g. params['motion_image'] and params['vae']) are left out of the tensors; everything else stays strict."""
  start = time.perf_counter()
  kind = kind_of(model_cfg)
  params, model_cfg = _inference_only(params, model_cfg)
  entries, abstract = layout(model_cfg)
  tensors = torch_export.to_torch_tensors(params, entries, abstract)
  os.makedirs(out_dir, exist_ok=True)
  model_path = os.path.join(out_dir, export_format.MODEL_FILE)
  # One metadata entry: safetensors writes its metadata map in hash order, so several would make the bytes of
  # two writes of the same tensors differ.
  write_safetensors(tensors, model_path, metadata=METADATA)
  config = {"format": export_format.FORMAT, "format_version": export_format.FORMAT_VERSION, "kind": kind,
            "model": _config_json(model_cfg), **resolved_sections(model_cfg),
            "tokenizer": tokenizer, "inputs": inputs, "normalization": normalization,
            "action_dim": specs.ACTION_DIM, "source": source}
  with open(os.path.join(out_dir, export_format.CONFIG_FILE), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=1)
  dtypes = sorted({np.dtype(t.dtype).name for t in tensors.values()})
  size = os.path.getsize(model_path)
  with open(os.path.join(out_dir, export_format.README_FILE), "w", encoding="utf-8") as f:
    f.write(README.format(kind=kind, checkpoint=source.get("checkpoint"), step=source.get("step"),
                          params=source.get("params"), format=export_format.FORMAT,
                          version=export_format.FORMAT_VERSION, count=len(tensors), size=size / 1e6,
                          dtypes=", ".join(dtypes)))
  return {"tensors": len(tensors), "bytes": size, "seconds": time.perf_counter() - start, "dtypes": dtypes}


def _inference_only(params: Any, model_cfg: ml_collections.ConfigDict) -> tuple[Any, ml_collections.ConfigDict]:
  """(params without the top-level subtrees inference never reads, the library's ``inference_config``)."""
  lib = _library(model_cfg.get("name", None))
  inference_cfg = lib.inference_config(model_cfg)
  return lib.inference_params(model_cfg, params, abstract=layout(inference_cfg)[1])


def export_checkpoint(checkpoint: str, out_dir: str, *, step: int | None = None, ema: bool | None = None,
                      stage: str | None = None) -> dict:
  """Exports a training checkpoint (``<workdir>`` or ``<workdir>/checkpoints``) to ``out_dir``.

  Args:
    ema: None = the EMA parameters when the run has them (``CheckpointPolicy``'s default); True = require them;
      False = the raw parameters.
  Returns:
    ``export_params``' figures plus 'step', 'params' and 'load_seconds'.
  """

  directory = os.path.abspath(checkpoint)
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if os.path.isdir(directory):  # the kind first: an unexportable model fails before its parameters are read
    checkpointer = ckpt_lib.Checkpointer(directory, read_only=True, async_save=False)
    try:
      if checkpointer.latest_step() is not None:
        _, config_json, _ = checkpointer.restore_json(step)
        kind_of(ml_collections.ConfigDict(config_json.get("model", {})))
    finally:
      checkpointer.close()
  start = time.perf_counter()
  policy = checkpoint_policy.CheckpointPolicy(directory, step=step, use_ema=ema is not False, stage=stage)
  if ema and policy.params_key != "ema_params":
    raise ValueError(f"--ema: checkpoint {policy.checkpoint_dir} step {policy.step} has no EMA parameters "
                     f"(run config ema.decay={policy.config.ema.decay})")
  load_seconds = time.perf_counter() - start
  inputs, normalization = _inputs_and_normalization(policy, policy.model_cfg, policy.norm_stats_json)
  os.makedirs(out_dir, exist_ok=True)
  tokenizer = _tokenizer_json(policy.config, policy.max_len, out_dir)
  source = {"checkpoint": policy.checkpoint_dir, "step": int(policy.step), "params": policy.params_key,
            "stage": stage or str(policy.config.stage_order[-1])}
  params = jax.device_get(policy.params)
  info = export_params(params, policy.model_cfg, out_dir, inputs=inputs, normalization=normalization,
                       tokenizer=tokenizer, source=source)
  return dict(info, step=int(policy.step), params=policy.params_key, load_seconds=load_seconds)


def load_export(export_dir: str) -> tuple[dict, ml_collections.ConfigDict, dict]:
  """The import direction: (our parameter tree of numpy arrays in the stored dtypes, the model ConfigDict,
  config.json) of an export directory (strict: every missing / extra / mis-shaped tensor is named)."""
  config = export_format.read_config(export_dir)
  model_cfg = model_config_from_json(export_format.field(config, "model"))
  kind = export_format.field(config, "kind")
  if model_cfg.get("name", None) != kind:
    raise export_format.ExportFormatError(f"{export_dir}/config.json: kind={kind!r} but model.name="
                                          f"{model_cfg.get('name', None)!r}")
  entries, abstract = layout(model_cfg)
  path = os.path.join(export_dir, export_format.MODEL_FILE)
  params = torch_export.from_torch_tensors(read_safetensors(path), entries, abstract, path)
  return params, model_cfg, config


def predicted_size(model_cfg: ml_collections.ConfigDict, dtype: str | None = None) -> dict:
  """model.safetensors bytes and parameter count of the export of a model config from abstract shapes (nothing
  allocated): the tensors of its library's ``inference_config``, as ``export_params`` writes them (a training
  config's training-only parts, e.g. LAFP's frozen LAM, are not counted).

  ``dtype``: the stored dtype of every tensor (default: the abstract parameters' own, float32).
  """
  entries, abstract = layout(_library(model_cfg.get("name", None)).inference_config(model_cfg))
  dtypes = {k: np.dtype(v.dtype).name for k, v in strict.flatten(abstract).items()}
  specs_ = [(e.name, dtype or dtypes[e.ours], e.shape) for e in entries]
  return {"bytes": export_format.safetensors_size(specs_, METADATA),
          "parameters": int(sum(int(np.prod(e.shape)) for e in entries)), "tensors": len(entries)}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True, help="the run's workdir or its checkpoints/ directory")
  p.add_argument("--out", required=True, help="export directory to write")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                 help="--ema: the EMA parameters (error if the run has none); --no-ema: the raw parameters; "
                      "default: EMA when the run has it")
  p.add_argument("--stage", default=None, help="stage whose model config to use (default: the run's last)")
  p.add_argument("--format", default="torch", choices=("torch",), help="export format (PyTorch safetensors)")
  args = p.parse_args(argv)
  info = export_checkpoint(args.checkpoint, args.out, step=args.step, ema=args.ema, stage=args.stage)
  print(json.dumps(dict(info, out=os.path.abspath(args.out))))


if __name__ == "__main__":
  main()
