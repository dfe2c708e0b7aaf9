"""big_vision PaliGemma ``.npz`` checkpoints <-> lamp_jax PaliGemma parameters (strict).

big_vision saves the flattened parameter tree with '/'-joined names under a ``params/`` prefix, e.g.
``params/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel`` [depth, D, N, H] or
``params/llm/layers/attn/q_einsum/w`` [L, N, D, H]. Our parameter tree mirrors that layout, so the mapping is the
identity except:
  * the ``params/`` prefix is optional on load (files without it are accepted) and always written on save;
  * Gemma layers with as many KV heads as query heads store ``attn/qkv_einsum/w`` [L, 3, N, D, H] in big_vision;
    it is split into our ``q_einsum`` [L, N, D, H] and ``kv_einsum`` [L, 2, N, D, H].
Values are checked against the shapes of the model config and converted to float32 (float16 / bfloat16 / float32
sources only, all exact).

``load_image_tower`` reads only the SigLIP tower (``img/``) of such a file into a stand-alone SigLIP (e.g. a
latent action model's frozen image encoder, config section ``siglip.default_config_dict``); the projection into
the language model (``img/head``) is loaded when the tower has a head of that width and ignored when it has none.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lamp_jax.models import paligemma
from lamp_jax.models import siglip
from lamp_jax.models.weights import strict

PREFIX = "params/"
_QKV = "llm/layers/attn/qkv_einsum/w"
_Q = "llm/layers/attn/q_einsum/w"
_KV = "llm/layers/attn/kv_einsum/w"


def load(path: str | os.PathLike, model_cfg: Any) -> dict[str, Any]:
  """Loads a big_vision PaliGemma .npz into a parameter tree {'img': ..., 'llm': ...} of float32 numpy arrays.

  Args:
    path: the .npz file.
    model_cfg: a PaliGemmaConfig or its ConfigDict section (see paligemma.config_from_dict).
  Raises:
    FileNotFoundError; StrictLoadError listing every missing / unexpected / mismatched tensor by name.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"big_vision checkpoint not found: {path}")
  expected = strict.flatten(paligemma.abstract_params(model_cfg))
  with np.load(path, allow_pickle=False) as npz:
    raw = {name: npz[name] for name in npz.files}
  provided = {}
  for name, value in raw.items():
    provided[name[len(PREFIX):] if name.startswith(PREFIX) else name] = value
  if _QKV in provided and _Q not in provided and _KV not in provided:
    qkv = provided.pop(_QKV)
    if qkv.ndim != 5 or qkv.shape[1] != 3:
      raise strict.StrictLoadError(path, mismatched=[f"{PREFIX}{_QKV}: shape {qkv.shape} is not [L, 3, N, D, H]"])
    provided[_Q], provided[_KV] = qkv[:, 0], qkv[:, 1:]
  strict.check_names(path, expected, provided)
  mismatched = [p for name in expected if (p := strict.check_tensor(name, provided[name], expected[name].shape))]
  if mismatched:
    raise strict.StrictLoadError(path, mismatched=mismatched)
  return strict.unflatten({name: strict.to_float32(provided[name]) for name in expected})


IMAGE_TOWER = "img/"


def load_image_tower(path: str | os.PathLike, vision_cfg: Any) -> dict[str, Any]:
  """Loads the SigLIP tower of a big_vision PaliGemma .npz into a stand-alone SigLIP parameter tree (float32
  numpy), strictly: every tower tensor of ``vision_cfg`` (a ``SigLIPConfig`` or its config section) must be in
  the file with its shape; ``img/head`` may be left over when the tower has no head."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"big_vision checkpoint not found: {path}")
  vision = siglip.config_from_dict(vision_cfg)
  model = siglip.SigLIP(vision)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, vision.image_size,
                                                                            vision.image_size, 3))))
  expected = strict.flatten(abstract["params"])
  with np.load(path, allow_pickle=False) as npz:
    raw = {name: npz[name] for name in npz.files}
  provided = {}
  for name, value in raw.items():
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if name.startswith(IMAGE_TOWER):
      provided[name[len(IMAGE_TOWER):]] = value
  optional = {n for n in provided if n.startswith("head/")} - set(expected)
  strict.check_names(f"{path} ({IMAGE_TOWER})", expected, set(provided) - optional)
  mismatched = [p for name in expected if (p := strict.check_tensor(IMAGE_TOWER + name, provided[name],
                                                                       expected[name].shape))]
  if mismatched:
    raise strict.StrictLoadError(path, mismatched=mismatched)
  return strict.unflatten({name: strict.to_float32(provided[name]) for name in expected})


def save(params: Any, path: str | os.PathLike) -> None:
  """Writes a parameter tree (boxed or plain) as a big_vision-style .npz (``params/``-prefixed, float32)."""
  flat = {PREFIX + name: np.asarray(value, np.float32) for name, value in strict.flatten(params).items()}
  os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
  with open(path, "wb") as f:
    np.savez(f, **flat)
