"""π0 model configs: ``--config=configs/pi0.py:<variant>`` with variant 'tiny', 'sim' (default), 'openpi_dummy' or
'paper' (``lamp_jax.models.pi0_config``).

``config.model`` is the model section; ``config.seed`` the PRNG seed. Used by the model-only commands, e.g. the
speed comparison with openpi's dummy π0:

  python -m lamp_jax.bench --config=configs/pi0.py:openpi_dummy --what=inference --repeats=5
  python -m lamp_jax.bench --config=configs/pi0.py:openpi_dummy --what=train_step --batch_size=4 --repeats=3
"""

import ml_collections

from lamp_jax.models import pi0_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = pi0_config.model_config(arg or "sim")
  config.seed = 0
  return config
