"""Pretrained initialisation of a fresh train state (``config.init``), loaded straight into the state's shardings.

  config.init.paligemma_npz   big_vision PaliGemma ``.npz`` (local path or gs://) -> params['vlm'] (and the EMA
                              copy). '' = keep the random initialisation. ``None`` (the ``paligemma_npz`` variant of
                              configs/bridge.py before the path is given) is an error naming the field.

Loading is strict (``models/weights/big_vision_npz.py``: every tensor present, no extra tensor, shapes checked).
Each process reads the file once on the host and every device receives only its own shard
(``jax.make_array_from_callback``), so a 3B VLM starts on a pod without any device holding a full copy.
Only a fresh state is initialised this way: a resumed run restores its checkpoint instead.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np

VLM = "vlm"


def _local_copy(path: str, tmpdir: str) -> str:
  """gs:// (or any tf.io.gfile URL) -> a local file; local paths are returned unchanged."""
  if "://" not in path:
    return path
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"config field init.paligemma_npz: {path} does not exist")
  local = os.path.join(tmpdir, os.path.basename(path))
  tf.io.gfile.copy(path, local, overwrite=True)
  return local


def _place(host_tree: Any, shardings: Any, abstract: Any, field: str) -> Any:
  """Host numpy tree -> jax Arrays in ``shardings`` (each device gets only its slice)."""
  def put(x, sharding, like):
    x = np.asarray(x, dtype=like.dtype)
    if x.shape != tuple(like.shape):
      raise ValueError(f"config field {field}: a loaded tensor has shape {x.shape}, the model expects {like.shape}")
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, host_tree, shardings, abstract)


def paligemma_npz_path(config: ml_collections.ConfigDict) -> str:
  """The configured path ('' when unset); raises naming the field when a variant requires it and it is missing."""
  init = config.get("init", None)
  if init is None:
    return ""
  path = init.get("paligemma_npz", "")
  if path is None:
    raise ValueError("config field init.paligemma_npz must be set to a big_vision PaliGemma .npz "
                     "(the 'paligemma_npz' variant loads the VLM from it), e.g. --config.init.paligemma_npz=pt_224.npz")
  return str(path)


def apply_pretrained(state, shardings, config: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict):
  """Returns ``state`` with the pretrained weights of ``config.init`` in place (unchanged when none is set).

  Args:
    state: a freshly initialised ``TrainState`` (params top level must contain 'vlm').
    shardings: its shardings (``TrainState`` of NamedShardings).
    config: the run config (reads ``init.paligemma_npz``).
    model_cfg: the stage's model config (``model_cfg.vlm`` describes the PaliGemma to expect).
  """
  path = paligemma_npz_path(config)
  if not path:
    return state
  from lamp_jax.models.weights import big_vision_npz  # pylint: disable=g-import-not-at-top

  if VLM not in state.params:
    raise ValueError(f"config field init.paligemma_npz: the model has no '{VLM}' parameters "
                     f"(top level: {sorted(state.params)})")
  with tempfile.TemporaryDirectory(prefix="lamp_npz_") as tmpdir:
    host = big_vision_npz.load(_local_copy(path, tmpdir), model_cfg.vlm)
  field = "init.paligemma_npz"
  abstract = jax.eval_shape(lambda p: p, state.params[VLM])
  params = dict(state.params)
  params[VLM] = _place(host, shardings.params[VLM], abstract, field)
  new = state.replace(params=params)
  if state.ema_params is not None:
    ema = dict(state.ema_params)
    ema[VLM] = _place(host, shardings.ema_params[VLM], abstract, field)
    new = new.replace(ema_params=ema)
  return new
