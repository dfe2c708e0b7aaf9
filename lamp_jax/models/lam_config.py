"""Latent action model configs: the named variants as a table, and the derived sizes.

``model_config(variant)`` -> ConfigDict with:
  name 'lam' · variant · dtype (activations) · views (observation camera keys; 2 or more for MVP-LAM)
  future_offsets (k of the pairs (o_t, o_{t+k}); one future frame per offset) · image_size
  idm_input / target: 'features' (patch features of the frozen image encoder) | 'pixels' (pixel patches)
  image_encoder (``siglip.default_config_dict``: the frozen image tower, used when idm_input or target is
  'features'; its image_size follows ``image_size``) · freeze_encoder (stop gradients into it; the configs also
  freeze ``^image_encoder/`` in the optimizer) · pixel_patch_size · width · num_heads · mlp_dim · idm_depth ·
  fdm_depth · remat · remat_policy (``layers.REMAT_POLICIES``) · fdm_residual (False, the paper's plain decoder;
  True: o_t's tokens plus a zero-initialised change, starting at the copy-the-present baseline: an option, see
  docs/lam.md 'Codebook collapse') ·
  vq (``vq.default_config``) · loss.weights {reconstruction, codebook, commitment, cross_view}.

Variants (published sizes; the image encoder is our SigLIP tower, any [B, N, D] patch features fit):
  'univla'   UniVLA's LAM: frozen patch features of o_t and o_{t+k} (DINOv2 in the paper; here SigLIP So400m/14
             at 224^2, 256 patches), 4 learned action queries attending to both frames, VQ 16 codes x 4 tokens x
             128 dims, beta 0.25, dead-code restarts; the forward model predicts o_{t+k}'s features (MSE) from
             o_t's features and the quantised latent. Transformer width 768, 12 + 12 blocks. One view.
  'mvp_lam'  MVP-LAM: UniVLA's architecture trained on synchronised views with the cross-view term (the latent
             of view i decodes view j's future; the decoder is not told the viewpoint). Views primary +
             secondary.
  'moto'     Moto's latent motion tokenizer: frozen ViT patch features (SigLIP B/16 at 224^2) -> M-Former (4
             layers, 8 queries) -> VQ 128 codes x 8 tokens x 32 dims -> 12-layer ViT decoder (width 768, 12
             heads) that reconstructs o_{t+k}'s pixels (16 x 16 patches) from o_t's pixels and the tokens.
  'lara'     LARA's LAM: Moto's (same sizes; LARA aligns a policy layer with its pre-quantisation latent).
  'sim'      the built-in benchmark: 64^2 pixels in and out (8 x 8 patches), width 128, 2 + 2 blocks, VQ 16 x 4 x 32,
             views primary + secondary with the cross-view term: trainable on 2 CPU cores in minutes.
  'tiny'     tests: odd sizes, pixels, 16^2 images.
Temporal stride: k = 5 steps (LARA's stride; about one second at Bridge's 5 Hz, half a second in the simulator).
"""

from __future__ import annotations

import ml_collections

from lamp_jax import specs
from lamp_jax.models import siglip
from lamp_jax.models import vq as vq_lib

NAME = "lam"
VARIANTS = ("tiny", "sim", "univla", "mvp_lam", "moto", "lara")
LOSS_TERMS = ("reconstruction", "codebook", "commitment", "cross_view")
INPUTS = ("features", "pixels")

_ONE_VIEW = (specs.IMAGE_PRIMARY,)
_TWO_VIEWS = (specs.IMAGE_PRIMARY, specs.IMAGE_SECONDARY)
_UNIVLA = dict(dtype="bfloat16", image_size=224, idm_input="features", target="features",
               image_encoder=("So400m/14", {}), pixel_patch_size=14, width=768, num_heads=12, mlp_dim=3072,
               idm_depth=12, fdm_depth=12, vq=dict(num_codes=16, code_length=4, code_dim=128), future_offsets=(5,))
_MOTO = dict(dtype="bfloat16", image_size=224, idm_input="features", target="pixels",
             image_encoder=("B/16", {}), pixel_patch_size=16, width=768, num_heads=12, mlp_dim=3072, idm_depth=4,
             fdm_depth=12, vq=dict(num_codes=128, code_length=8, code_dim=32), future_offsets=(5,), views=_ONE_VIEW,
             cross_view=0.0)
_TABLE = {
    "tiny": dict(dtype="float32", image_size=16, idm_input="pixels", target="pixels",
                 image_encoder=("tiny", {}), pixel_patch_size=4, width=36, num_heads=3, mlp_dim=44, idm_depth=2,
                 fdm_depth=1, vq=dict(num_codes=7, code_length=3, code_dim=11, restart_buffer=13, collapse_patience=5,
                         usage_decay=0.9),
                 future_offsets=(1,), views=_TWO_VIEWS, cross_view=1.0),
    "sim": dict(dtype="float32", image_size=64, idm_input="pixels", target="pixels",
                image_encoder=("tiny", {}), pixel_patch_size=8, width=128, num_heads=4, mlp_dim=256, idm_depth=2,
                fdm_depth=2, vq=dict(num_codes=16, code_length=4, code_dim=32), future_offsets=(5,), views=_TWO_VIEWS,
                cross_view=1.0),
    "univla": dict(_UNIVLA, views=_ONE_VIEW, cross_view=0.0),
    "mvp_lam": dict(_UNIVLA, views=_TWO_VIEWS, cross_view=1.0),
    "moto": _MOTO,
    "lara": _MOTO,
}


def model_config(variant: str = "tiny") -> ml_collections.ConfigDict:
  """The latent action model section of a named variant (``VARIANTS``)."""
  if variant not in _TABLE:
    raise ValueError(f"unknown latent action model variant {variant!r}; known: {VARIANTS}")
  row = _TABLE[variant]
  cfg = ml_collections.ConfigDict()
  cfg.name = NAME
  cfg.variant = variant
  cfg.dtype = row["dtype"]
  cfg.views = tuple(row["views"])
  cfg.future_offsets = tuple(row["future_offsets"])
  cfg.image_size = row["image_size"]
  cfg.idm_input = row["idm_input"]
  cfg.target = row["target"]
  encoder_variant, encoder_overrides = row["image_encoder"]
  cfg.image_encoder = siglip.default_config_dict(encoder_variant, overrides=dict(encoder_overrides))
  cfg.image_encoder.image_size = cfg.get_ref("image_size")
  cfg.image_encoder.dtype = cfg.get_ref("dtype")
  cfg.freeze_encoder = True
  cfg.pixel_patch_size = row["pixel_patch_size"]
  cfg.width, cfg.num_heads, cfg.mlp_dim = row["width"], row["num_heads"], row["mlp_dim"]
  cfg.idm_depth, cfg.fdm_depth = row["idm_depth"], row["fdm_depth"]
  cfg.remat = False
  cfg.remat_policy = "nothing_saveable"
  # False: the paper's plain forward model. True predicts o_t+k as o_t plus a learned change (zero-initialised):
  # it kept the sim LAM's codes spread but stalled learning on the colour-shift toy (docs/lam.md).
  cfg.fdm_residual = False
  cfg.vq = vq_lib.default_config(**row["vq"])
  # Named loss terms (losses.py). MVP-LAM: self-view reconstruction (MSE) + codebook + 0.25 commitment, and the
  # cross-view reconstruction (MSE); cross_view = 0 is the single-view LAM (the same model).
  cfg.loss = ml_collections.ConfigDict(dict(weights=ml_collections.ConfigDict(dict(
      reconstruction=1.0, codebook=1.0, commitment=0.25, cross_view=float(row["cross_view"])))))
  return cfg


def check(cfg: ml_collections.ConfigDict) -> None:
  """Rejects inconsistent fields, naming them (called when the model is built)."""
  for field in ("idm_input", "target"):
    if cfg[field] not in INPUTS:
      raise ValueError(f"config field model.{field}={cfg[field]!r} is not one of {INPUTS}")
  if not cfg.views:
    raise ValueError("config field model.views is empty: name the camera(s) the pairs come from")
  if not cfg.future_offsets or min(int(k) for k in cfg.future_offsets) < 1:
    raise ValueError(f"config field model.future_offsets={tuple(cfg.future_offsets)}: give offsets k >= 1")
  weights = {str(k): float(v) for k, v in cfg.loss.weights.items()}
  if weights.get("cross_view", 0.0) > 0 and len(cfg.views) < 2:
    raise ValueError(f"config field model.loss.weights.cross_view > 0 needs 2 or more views; model.views="
                     f"{tuple(cfg.views)}")
  if cfg.vq.ema and weights.get("codebook", 0.0) > 0:
    raise ValueError("config field model.loss.weights.codebook must be 0 with model.vq.ema=True (the codebook "
                     "follows moving averages of the encoder outputs, not the codebook loss)")


def uses_encoder(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the model runs the frozen image encoder (some input or target is 'features')."""
  return "features" in (cfg.idm_input, cfg.target)


def pixel_tokens(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """(tokens, values per token) of an image cut into pixel patches."""
  p, size = int(cfg.pixel_patch_size), int(cfg.image_size)
  if size % p:
    raise ValueError(f"config field model.image_size={size} is not a multiple of model.pixel_patch_size={p}")
  return (size // p) ** 2, p * p * 3


def feature_tokens(cfg: ml_collections.ConfigDict) -> tuple[int, int]:
  """(tokens, width) of the frozen encoder's patch features."""
  enc = siglip.config_from_dict(cfg.image_encoder)
  return enc.num_patches, int(enc.head_width or enc.width)


def input_tokens(cfg: ml_collections.ConfigDict, kind: str) -> tuple[int, int]:
  """(tokens, values per token) of ``kind`` ('features' | 'pixels')."""
  if kind not in INPUTS:
    raise ValueError(f"latent action model input kind {kind!r} is not one of {INPUTS} (config fields model.idm_input"
                     " / model.target)")
  return feature_tokens(cfg) if kind == "features" else pixel_tokens(cfg)
