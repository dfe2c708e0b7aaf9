"""LaMP model configs: ``--config=configs/lamp.py:<variant>`` with variant 'tiny', 'sim' (default), 'paper' or
'openpi_dummy' (openpi's π0 test sizes w/o motion: the speed comparison of docs/results.md, "Speed").

``config.model`` is the model section (``lamp_jax.models.lamp_config.model_config``); ``config.seed`` the PRNG
seed. Used by the model-only commands (``lamp_jax.bench``, ``lamp_jax.summary``).
"""

import ml_collections

from lamp_jax.models import lamp_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = lamp_config.model_config(arg or "sim")
  config.seed = 0
  return config
