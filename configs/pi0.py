"""π0 model configs: ``--config=configs/pi0.py:<variant>`` with variant 'tiny', 'sim' (default), 'openpi_dummy' or
'paper' (``lamp_jax.models.pi0_config``), each also with the joint motion-image head: '<variant>_motion_image'
(``pi0_config.with_motion_image``: the paper's 6-block head and the SDXL VAE at 'paper' size).

``config.model`` is the model section; ``config.seed`` the PRNG seed. Used by the model-only commands, e.g. the
speed comparison with openpi's dummy π0, and the deployed program of π0 with the head against π0 without it at the
paper's size (lowered from abstract shapes: nothing allocated):

  python -m lamp_jax.bench --config=configs/pi0.py:openpi_dummy --what=inference --repeats=5
  python -m lamp_jax.bench --config=configs/pi0.py:openpi_dummy --what=train_step --batch_size=4 --repeats=3
  python -m lamp_jax.bench --config=configs/pi0.py:paper_motion_image --what=programs
"""

import ml_collections

from lamp_jax.models import pi0_config

HEAD_SUFFIX = "_motion_image"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "sim"
  size = arg[:-len(HEAD_SUFFIX)] if arg.endswith(HEAD_SUFFIX) else arg
  if size not in pi0_config.VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/pi0.py (variants: {pi0_config.VARIANTS}, each also "
                     f"with the suffix {HEAD_SUFFIX!r})")
  config = ml_collections.ConfigDict()
  config.model = pi0_config.model_config(size)
  if size != arg:
    pi0_config.with_motion_image(config.model)
  config.seed = 0
  return config
