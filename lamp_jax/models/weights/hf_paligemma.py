"""Hugging Face transformers ``PaliGemmaForConditionalGeneration`` safetensors <-> lamp_jax parameters (strict).

Tensor names below are those of the transformers 5.x modules (``model.vision_tower.*``,
``model.multi_modal_projector.*``, ``model.language_model.*``). Files use other prefixes, renamed on load:
transformers 4.x / Hub checkpoints ``vision_tower.vision_model.*``, ``multi_modal_projector.*``,
``language_model.model.*``, ``language_model.lm_head.*``; transformers 5.x ``save_pretrained`` writes the same
but ``vision_tower.*`` without ``vision_model``. ``export`` writes the Hub (4.x) layout, which 5.x also loads.

Mapping (D vision width, E LM width, N heads, K kv heads, H head dim, F MLP width, P patch; torch Linear weights
are [out, in]):

  vision_tower.embeddings.patch_embedding.weight [D, 3, P, P]  -> img/embedding/kernel [P, P, 3, D]
  vision_tower.embeddings.position_embedding.weight [n, D]     -> img/pos_embedding [1, n, D]
  vision_tower.encoder.layers.i.self_attn.{q,k,v}_proj [N*H, D] -> .../{query,key,value}/kernel[i] [D, N, H]
  vision_tower.encoder.layers.i.self_attn.out_proj [D, N*H]    -> .../out/kernel[i] [N, H, D]
  vision_tower.encoder.layers.i.{layer_norm1,layer_norm2,mlp.fc1,mlp.fc2} -> LayerNorm_0, LayerNorm_1,
                                                                  MlpBlock_0/Dense_0, MlpBlock_0/Dense_1
  vision_tower.post_layernorm                                  -> img/Transformer/encoder_norm
  multi_modal_projector.linear [E, D]                          -> img/head/kernel [D, E]
  language_model.embed_tokens.weight [V, E]                    -> llm/embedder/input_embedding [V, E]
  language_model.layers.i.self_attn.q_proj [N*H, E]            -> llm/layers/attn/q_einsum/w[i] [N, E, H]
  language_model.layers.i.self_attn.{k,v}_proj [K*H, E]        -> llm/layers/attn/kv_einsum/w[i, 0|1] [K, E, H]
  language_model.layers.i.self_attn.o_proj [E, N*H]            -> llm/layers/attn/attn_vec_einsum/w[i] [N, H, E]
  language_model.layers.i.mlp.{gate,up}_proj [F, E]            -> llm/layers/mlp/gating_einsum[i, 0|1] [E, F]
  language_model.layers.i.mlp.down_proj [E, F]                 -> llm/layers/mlp/linear[i] [F, E]
  language_model.layers.i.{input,post_attention}_layernorm     -> llm/layers/{pre_attention,pre_ffw}_norm/scale[i]
  language_model.norm.weight                                   -> llm/final_norm/scale
  lm_head.weight                                               tied: optional, must equal embed_tokens exactly.

Both RMSNorm conventions are ``x * (1 + scale)``, so norm weights copy unchanged. The SigLIP MAP head
(``vision_tower.head.*``, vision_use_head=True) is not part of PaliGemma: such tensors are reported unexpected.

``layout(model_cfg, extensions=True)`` also places the lamp_jax VLM options transformers has no tensor for, in
the same naming scheme (the PyTorch export of ``lamp_jax.export`` / ``lamp_torch`` uses it; HF files never
contain them):

  model.vision_tower.embeddings.stem.conv_i.weight [C', C, 3, 3] -> img/stem/conv_i/kernel [3, 3, C, C']
  model.vision_tower.embeddings.stem.{conv_i.bias, norm_i.weight, norm_i.bias} -> img/stem/{conv_i/bias,
                                                                  norm_i/scale, norm_i/bias}   (stem 'conv')
  model.vision_tower.embeddings.patch_embedding.weight [D, C', 1, 1] (stem 'conv': the 1x1 projection)
  camera_embedding [C, E]                                      -> camera_embedding [C, E]   (camera_embeddings > 0)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Callable

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from lamp_jax.models import paligemma
from lamp_jax.models.weights import strict

LM_HEAD = "lm_head.weight"
EMBED = "model.language_model.embed_tokens.weight"

# Serialized (file) prefixes -> transformers 5.x module prefixes. Files written by transformers 4.x (the Hub
# checkpoints) use the first column; transformers 5.x writes the same except 'vision_tower.' without 'vision_model.'.
_LEGACY_PREFIXES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.vision_model.", "model.vision_tower."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor <-> the slice ``ours[index]`` of one of our parameters."""

  hf_name: str
  hf_shape: tuple[int, ...]
  ours: str  # our flat parameter name
  index: tuple[int, ...]  # leading indices into our parameter (layer, and 0/1 for stacked pairs)
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
  return x


def _transpose(x):
  return x.T


def _conv_kernel_to_ours(w):
  return w.transpose(2, 3, 1, 0)  # torch [out, in, kh, kw] -> flax [kh, kw, in, out]


def _conv_kernel_to_torch(w):
  return w.transpose(3, 2, 0, 1)


def _extension_entries(cfg: paligemma.PaliGemmaConfig) -> list[Entry]:
  """The VLM options outside transformers' PaliGemma: convolutional stem, per-camera embeddings."""
  vis = cfg.vision
  entries = []
  if vis.stem == "conv":
    stem = "model.vision_tower.embeddings.stem."
    channels, in_channels = vis.stem_width, 3
    for i in range(int(vis.patch_size).bit_length() - 1):
      entries += [
          Entry(f"{stem}conv_{i}.weight", (channels, in_channels, 3, 3), f"img/stem/conv_{i}/kernel", (),
                _conv_kernel_to_ours, _conv_kernel_to_torch),
          Entry(f"{stem}conv_{i}.bias", (channels,), f"img/stem/conv_{i}/bias", (), _identity, _identity),
          Entry(f"{stem}norm_{i}.weight", (channels,), f"img/stem/norm_{i}/scale", (), _identity, _identity),
          Entry(f"{stem}norm_{i}.bias", (channels,), f"img/stem/norm_{i}/bias", (), _identity, _identity),
      ]
      in_channels, channels = channels, channels * 2
  if cfg.camera_embeddings:
    entries.append(Entry("camera_embedding", (cfg.camera_embeddings, cfg.llm.width), "camera_embedding", (),
                         _identity, _identity))
  return entries


def layout(model_cfg: Any, *, extensions: bool = False) -> list[Entry]:
  """Every HF tensor of the model config and where it lives in our parameter tree.

  ``extensions=True`` adds the tensors of the options transformers does not have (module docstring); without
  it, such a config's parameters are reported missing / unexpected by the strict checks.
  """
  cfg = paligemma.config_from_dict(model_cfg)
  vis, llm = cfg.vision, cfg.llm
  d, nv, hv, f, p = vis.width, vis.num_heads, vis.head_dim, vis.mlp_dim, vis.patch_size
  e, v = llm.width, llm.vocab_size
  patch_shape = (d, 3, p, p)
  if extensions and vis.stem == "conv":  # the 1x1 projection of the stem's last feature map
    patch_shape = (d, vis.stem_width * 2**(int(p).bit_length() - 2), 1, 1)
  entries = [
      Entry("model.vision_tower.embeddings.patch_embedding.weight", patch_shape, "img/embedding/kernel", (),
            _conv_kernel_to_ours, _conv_kernel_to_torch),
      Entry("model.vision_tower.embeddings.patch_embedding.bias", (d,), "img/embedding/bias", (),
            _identity, _identity),
      Entry("model.vision_tower.post_layernorm.weight", (d,), "img/Transformer/encoder_norm/scale", (),
            _identity, _identity),
      Entry("model.vision_tower.post_layernorm.bias", (d,), "img/Transformer/encoder_norm/bias", (),
            _identity, _identity),
      Entry("model.multi_modal_projector.linear.weight", (e, d), "img/head/kernel", (), _transpose, _transpose),
      Entry("model.multi_modal_projector.linear.bias", (e,), "img/head/bias", (), _identity, _identity),
      Entry(EMBED, (v, e), "llm/embedder/input_embedding", (), _identity, _identity),
      Entry("model.language_model.norm.weight", (e,), "llm/final_norm/scale", (), _identity, _identity),
  ]
  if vis.posemb == "learn":
    entries.append(Entry("model.vision_tower.embeddings.position_embedding.weight", (vis.num_patches, d),
                         "img/pos_embedding", (), lambda w: w[None], lambda w: w[0]))

  block = "img/Transformer/encoderblock/"
  for i in range(vis.depth):
    hf = f"model.vision_tower.encoder.layers.{i}."
    for hf_norm, our_norm in (("layer_norm1", "LayerNorm_0"), ("layer_norm2", "LayerNorm_1")):
      entries += [Entry(hf + hf_norm + ".weight", (d,), block + our_norm + "/scale", (i,), _identity, _identity),
                  Entry(hf + hf_norm + ".bias", (d,), block + our_norm + "/bias", (i,), _identity, _identity)]
    attn = block + "MultiHeadDotProductAttention_0/"
    for hf_proj, ours in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
      entries += [
          Entry(hf + f"self_attn.{hf_proj}.weight", (nv * hv, d), attn + ours + "/kernel", (i,),
                lambda w, d=d: w.T.reshape(d, nv, hv), lambda w, d=d: w.reshape(d, nv * hv).T),
          Entry(hf + f"self_attn.{hf_proj}.bias", (nv * hv,), attn + ours + "/bias", (i,),
                lambda w: w.reshape(nv, hv), lambda w: w.reshape(nv * hv)),
      ]
    entries += [
        Entry(hf + "self_attn.out_proj.weight", (d, nv * hv), attn + "out/kernel", (i,),
              lambda w: w.T.reshape(nv, hv, d), lambda w: w.reshape(nv * hv, d).T),
        Entry(hf + "self_attn.out_proj.bias", (d,), attn + "out/bias", (i,), _identity, _identity),
        Entry(hf + "mlp.fc1.weight", (f, d), block + "MlpBlock_0/Dense_0/kernel", (i,), _transpose, _transpose),
        Entry(hf + "mlp.fc1.bias", (f,), block + "MlpBlock_0/Dense_0/bias", (i,), _identity, _identity),
        Entry(hf + "mlp.fc2.weight", (d, f), block + "MlpBlock_0/Dense_1/kernel", (i,), _transpose, _transpose),
        Entry(hf + "mlp.fc2.bias", (d,), block + "MlpBlock_0/Dense_1/bias", (i,), _identity, _identity),
    ]

  entries += gemma_layer_entries(llm, "model.language_model.", "llm/")
  if extensions:
    entries += _extension_entries(cfg)
  return entries


def gemma_layer_entries(llm: Any, hf_prefix: str, our_prefix: str) -> list[Entry]:
  """The decoder layers of a Gemma (``gemma.Gemma``'s scanned ``layers/...``) under transformers' ``GemmaModel``
  names: ``{hf_prefix}layers.{i}.self_attn.q_proj.weight`` <-> ``{our_prefix}layers/attn/q_einsum/w`` [i], ...
  (the module docstring's ``language_model.layers`` rows).

  Args:
    llm: the decoder's sizes (a ``gemma.GemmaConfig``: depth, width, num_heads, num_kv_heads, head_dim, mlp_dim).
    hf_prefix: the torch module path of the ``GemmaModel`` with a trailing '.' (PaliGemma's
      'model.language_model.').
    our_prefix: our parameter path of the ``gemma.Gemma`` with a trailing '/' (PaliGemma's 'llm/').
  """
  e, n, k, h, fl = llm.width, llm.num_heads, llm.num_kv_heads, llm.head_dim, llm.mlp_dim
  entries = []
  for i in range(llm.depth):
    hf = f"{hf_prefix}layers.{i}."
    ours = f"{our_prefix}layers/"
    entries += [
        Entry(hf + "self_attn.q_proj.weight", (n * h, e), ours + "attn/q_einsum/w", (i,),
              lambda w: w.reshape(n, h, e).transpose(0, 2, 1), lambda w: w.transpose(0, 2, 1).reshape(n * h, e)),
        Entry(hf + "self_attn.o_proj.weight", (e, n * h), ours + "attn/attn_vec_einsum/w", (i,),
              lambda w: w.reshape(e, n, h).transpose(1, 2, 0), lambda w: w.transpose(2, 0, 1).reshape(e, n * h)),
        Entry(hf + "mlp.gate_proj.weight", (fl, e), ours + "mlp/gating_einsum", (i, 0), _transpose, _transpose),
        Entry(hf + "mlp.up_proj.weight", (fl, e), ours + "mlp/gating_einsum", (i, 1), _transpose, _transpose),
        Entry(hf + "mlp.down_proj.weight", (e, fl), ours + "mlp/linear", (i,), _transpose, _transpose),
        Entry(hf + "input_layernorm.weight", (e,), ours + "pre_attention_norm/scale", (i,), _identity, _identity),
        Entry(hf + "post_attention_layernorm.weight", (e,), ours + "pre_ffw_norm/scale", (i,), _identity,
              _identity),
    ]
    for c, proj in enumerate(("k_proj", "v_proj")):
      entries.append(Entry(hf + f"self_attn.{proj}.weight", (k * h, e), ours + "attn/kv_einsum/w", (i, c),
                           lambda w: w.reshape(k, h, e).transpose(0, 2, 1),
                           lambda w: w.transpose(0, 2, 1).reshape(k * h, e)))
  return entries


def _safetensors_files(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"Hugging Face checkpoint not found: {path}")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f)["weight_map"]
    return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
  files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {path}")
  return files


def _rename_legacy(name: str) -> str:
  for old, new in _LEGACY_PREFIXES:
    if name.startswith(old):
      return new + name[len(old):]
  return name


def _to_file_name(name: str) -> str:
  """transformers 5.x module name -> the Hub (4.x) file name that ``export`` writes."""
  for old, new in (("model.language_model.", "language_model.model."),
                   ("model.vision_tower.", "vision_tower.vision_model."),
                   ("model.multi_modal_projector.", "multi_modal_projector.")):
    if name.startswith(old):
      return new + name[len(old):]
  return name


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """All tensors of a safetensors file or directory as numpy arrays (bfloat16 via ml_dtypes).

  Returns (tensors by transformers 5.x module name, {5.x module name: name in the file}).
  """
  tensors, file_names = {}, {}
  for file in _safetensors_files(os.fspath(path)):
    with safe_open(file, framework="flax") as f:
      for name in f.keys():
        new = _rename_legacy(name)
        if new in tensors:
          raise strict.StrictLoadError(file, unexpected=[f"{name} (duplicate of {file_names[new]})"])
        tensors[new] = np.asarray(f.get_tensor(name))
        file_names[new] = name
  return tensors, file_names


def load(path: str | os.PathLike, model_cfg: Any) -> dict[str, Any]:
  """Loads HF PaliGemma safetensors (file or directory) into our parameter tree of float32 numpy arrays.

  Raises:
    FileNotFoundError; StrictLoadError listing every missing / unexpected / mismatched tensor by name
    (an untied ``lm_head.weight`` counts as mismatched: Gemma ties it to the embedding).
  """
  source = os.fspath(path)
  tensors, file_names = read_tensors(source)
  entries = layout(model_cfg)
  expected_names = {e.hf_name for e in entries} | {LM_HEAD}
  unexpected = [file_names[name] for name in tensors if name not in expected_names]
  missing = [e.hf_name for e in entries if e.hf_name not in tensors]
  if missing or unexpected:  # missing: transformers 5.x module names; unexpected: names as in the file
    raise strict.StrictLoadError(source, missing=missing, unexpected=unexpected)
  mismatched = [p for e in entries
                if (p := strict.check_tensor(file_names[e.hf_name], tensors[e.hf_name], e.hf_shape))]
  if LM_HEAD in tensors and not mismatched:
    if tensors[LM_HEAD].shape != tensors[EMBED].shape or not np.array_equal(tensors[LM_HEAD], tensors[EMBED]):
      mismatched.append(f"{file_names[LM_HEAD]}: differs from {file_names[EMBED]} (lamp_jax's Gemma ties the "
                        "output projection to the embedding)")
  if mismatched:
    raise strict.StrictLoadError(source, mismatched=mismatched)

  expected = strict.flatten(paligemma.abstract_params(model_cfg))
  params = {name: np.empty(s.shape, np.float32) for name, s in expected.items()}
  filled = {name: 0 for name in expected}
  for e in entries:
    params[e.ours][e.index] = e.to_ours(strict.to_float32(tensors[e.hf_name]))
    filled[e.ours] += int(np.prod(params[e.ours][e.index].shape))
  unfilled = [name for name, count in filled.items() if count != params[name].size]
  if unfilled:  # a bug in `layout`, not in the checkpoint
    raise AssertionError(f"HF layout leaves parameters (partly) unassigned: {unfilled}")
  return strict.unflatten(params)


def to_hf_tensors(params: Any, model_cfg: Any) -> dict[str, np.ndarray]:
  """Our parameter tree -> {HF 5.x name: float32 array}; strict in the same way as ``load``."""
  flat = strict.flatten(params)
  expected = strict.flatten(paligemma.abstract_params(model_cfg))
  strict.check_names("params", expected, flat)
  mismatched = [f"{name}: shape {tuple(np.shape(flat[name]))} != expected {tuple(s.shape)}"
                for name, s in expected.items() if tuple(np.shape(flat[name])) != tuple(s.shape)]
  if mismatched:
    raise strict.StrictLoadError("params", mismatched=mismatched)
  flat = {name: np.asarray(value, np.float32) for name, value in flat.items()}
  return {e.hf_name: np.ascontiguousarray(e.to_hf(flat[e.ours][e.index])) for e in layout(model_cfg)}


def hf_config(model_cfg: Any, image_token_index: int | None = None) -> dict[str, Any]:
  """config.json contents for transformers' PaliGemmaForConditionalGeneration.

  ``image_token_index`` defaults to ``vocab_size`` (outside the vocabulary: transformers then embeds image
  placeholders with token 0 before overwriting them with image features, so no embedding row is needed).
  """
  cfg = paligemma.config_from_dict(model_cfg)
  vis, llm = cfg.vision, cfg.llm
  if vis.posemb != "learn":
    raise ValueError("HF SigLIP has learned position embeddings only; SigLIPConfig.posemb must be 'learn'")
  image_token_index = llm.vocab_size if image_token_index is None else int(image_token_index)
  return {
      "architectures": ["PaliGemmaForConditionalGeneration"],
      "model_type": "paligemma",
      "dtype": "float32",
      "image_token_index": image_token_index,
      "projection_dim": llm.width,
      "hidden_size": llm.width,
      "tie_word_embeddings": True,
      "text_config": {
          "model_type": "gemma",
          "hidden_size": llm.width,
          "intermediate_size": llm.mlp_dim,
          "num_hidden_layers": llm.depth,
          "num_attention_heads": llm.num_heads,
          "num_key_value_heads": llm.num_kv_heads,
          "head_dim": llm.head_dim,
          "vocab_size": llm.vocab_size,
          "hidden_act": "gelu_pytorch_tanh",
          "rms_norm_eps": llm.norm_eps,
          "rope_parameters": {"rope_theta": llm.rope_max_wavelength, "rope_type": "default"},
          "tie_word_embeddings": True,
          "use_bidirectional_attention": True,
          "num_image_tokens": vis.num_patches,
      },
      "vision_config": {
          "model_type": "siglip_vision_model",
          "hidden_size": vis.width,
          "intermediate_size": vis.mlp_dim,
          "num_hidden_layers": vis.depth,
          "num_attention_heads": vis.num_heads,
          "patch_size": vis.patch_size,
          "image_size": vis.image_size,
          "num_channels": 3,
          "hidden_act": "gelu_pytorch_tanh",
          "layer_norm_eps": vis.norm_eps,
          "projection_dim": llm.width,
          "vision_use_head": False,
      },
  }


def export(params: Any, model_cfg: Any, out_dir: str | os.PathLike, image_token_index: int | None = None) -> str:
  """Writes ``model.safetensors`` (float32, Hub layout names, tied lm_head omitted) and ``config.json`` to ``out_dir``.

  ``PaliGemmaForConditionalGeneration.from_pretrained(out_dir)`` loads the result. Returns ``out_dir``.
  """
  out_dir = os.fspath(out_dir)
  tensors = {_to_file_name(name): value for name, value in to_hf_tensors(params, model_cfg).items()}
  os.makedirs(out_dir, exist_ok=True)
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config(model_cfg, image_token_index), f, indent=2)
  return out_dir
