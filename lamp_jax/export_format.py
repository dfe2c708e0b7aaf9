"""The on-disk format of an exported policy (``python -m lamp_jax.export``), shared by the JAX writer and the
PyTorch reader (``lamp_torch``). Standard library only: the JAX-free serving process imports it.

An export directory holds

  model.safetensors   every parameter under the PyTorch module's ``state_dict()`` name, in its stored dtype
                      (float32 / bfloat16 / float16); the name rules are in lamp_jax/models/weights/torch_export.py
  config.json         {format, format_version, kind, model, vlm, [expert_llm,] tokenizer, inputs, normalization,
                       action_dim, source} (fields below)
  README.md           the layout in words
  tokenizer.model     only for SentencePiece tokenizers (``tokenizer.path`` in config.json points at it)

config.json fields:
  format / format_version  'lamp_jax.export' / FORMAT_VERSION
  kind                the model config's ``name`` ('lamp' | 'pi0' | 'lafp'): the registry key of both sides
  model               the JAX model config as JSON (``model_config`` of the run's stage, overrides applied)
  vlm                 the resolved VLM: {'vision': SigLIPConfig fields, 'llm': GemmaConfig fields,
                      'camera_embeddings': int}
  expert_llm          π0 only (``model.action.kind='pi0'``): the resolved GemmaConfig fields of the action expert
  tokenizer           {'kind': 'bytes' | 'words' | 'sentencepiece', 'words', 'path', 'max_len', 'truncate'}
  inputs              {'cameras': model camera names in model order, 'camera_keys': {camera: raw observation key,
                      '' = never given}, 'image_size': [h, w], 'resize': bool (bilinear resize of any input size,
                      as the data pipeline; False = images must already have image_size), 'state_key': raw state
                      key, 'proprio_dim': the model's proprio width, 'state_dim': raw state width or null}
  normalization       null (synthetic-data runs: proprio = the state cut / zero-padded to proprio_dim, actions
                      as the model gives them) or {'dataset', 'action_mode', 'action_mask', 'proprio_mode',
                      'proprio_mask', 'statistics': DatasetStatistics JSON} (lamp_jax/data/normalization.py)
  action_dim          actions returned per step (the first ``action_dim`` of the un-normalised model actions)
  source              {'checkpoint', 'step', 'params' ('params' | 'ema_params'), 'stage'} (informative)
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

FORMAT = "lamp_jax.export"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
README_FILE = "README.md"
TOKENIZER_FILE = "tokenizer.model"

# safetensors dtype tags of the dtypes an export may hold.
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Rust safetensors writes tensors sorted by dtype (its enum order, descending), then by name.
_DTYPE_ORDER = {"float16": 0, "bfloat16": 1, "float32": 2}


class ExportFormatError(ValueError):
  """An export directory that cannot be read: names the file and the field or tensor at fault."""


def read_config(export_dir: str) -> dict[str, Any]:
  """config.json of an export directory, with its format and version checked."""
  path = os.path.join(export_dir, CONFIG_FILE)
  if not os.path.isdir(export_dir):
    raise FileNotFoundError(f"export directory {export_dir} does not exist")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: not an export directory (python -m lamp_jax.export writes one)")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except json.JSONDecodeError as e:
    raise ExportFormatError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(config, dict):
    raise ExportFormatError(f"{path} must hold a JSON object, got {type(config).__name__}")
  if field(config, "format", path) != FORMAT:
    raise ExportFormatError(f"{path} field format={config['format']!r} is not {FORMAT!r}")
  if field(config, "format_version", path) != FORMAT_VERSION:
    raise ExportFormatError(f"{path} field format_version={config['format_version']!r}; this code reads "
                            f"version {FORMAT_VERSION} (re-export with python -m lamp_jax.export)")
  return config


def field(config: Mapping[str, Any], dotted: str, source: str = CONFIG_FILE) -> Any:
  """``config['a']['b']`` for ``dotted='a.b'``; a missing field raises naming it and the file."""
  node: Any = config
  walked = []
  for key in dotted.split("."):
    walked.append(key)
    if not isinstance(node, Mapping) or key not in node:
      raise ExportFormatError(f"{source} has no field {'.'.join(walked)!r} (needed: {dotted})")
    node = node[key]
  return node


def safetensors_size(tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None = None
                     ) -> int:
  """Bytes of the safetensors file holding ``tensors`` ((name, dtype name, shape) triples), computed from shapes
  alone (no data): 8-byte header length + JSON header padded to 8 bytes + the raw data."""
  specs = sorted(tensors, key=lambda t: (-_DTYPE_ORDER[t[1]], t[0]))
  header: dict[str, Any] = {}
  if metadata:
    header["__metadata__"] = dict(metadata)
  offset = 0
  for name, dtype, shape in specs:
    size = _DTYPE_BYTES[dtype]
    for dim in shape:
      size *= int(dim)
    header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": [int(d) for d in shape],
                    "data_offsets": [offset, offset + size]}
    offset += size
  text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
  return 8 + len(text) + (-len(text)) % 8 + offset
