r"""configs/sim_film_cnn.py's method comparison at the ':film_cnn' default budget (3000 steps, not 10,200).

  python -m lamp_jax.train --config=configs/lam.py:sim_single_h8 --workdir=/tmp/lam_h8   # the LAM LAFP loads
  python -m lamp_jax.ablate --suite_config=configs/sim_film_cnn_short.py --methods=lamp,no_motion,lara,lafp,lafp_bc \
      --seeds=3 --workdir=/tmp/ablate_film_cnn_short --config.init.lam.path=/tmp/lam_h8

The same policies, stage 0, frozen encoder, data and evaluation as the long suite, with the base variants' steps
(LaMP 600 'motion' + 2400 'action', every other method 3000 in its last stage): 20-30 minutes per run on an idle
2-core box instead of about an hour, so that a 3-seed table of several methods fits in an afternoon. At this budget
':film_cnn' reached 32.1 % and ':film_cnn_no_motion' 33.3 % over seeds 0-2 (docs/results.md).
"""

from configs.sim import VARIANTS, get_config  # the variants and their configs are configs/sim.py's
from configs.sim_film_cnn import ABLATION_METHODS as _LONG

__all__ = ["ABLATION_METHODS", "VARIANTS", "get_config"]

_LONG_SUFFIX = "_long"
if not all(variant.endswith(_LONG_SUFFIX) for variant, _ in _LONG.values()):
  raise ValueError(f"configs/sim_film_cnn.py declares a variant without {_LONG_SUFFIX!r}: {_LONG}")
# {method: (the long suite's variant without '_long', the same smoke variant)}
ABLATION_METHODS = {method: (variant[:-len(_LONG_SUFFIX)], smoke) for method, (variant, smoke) in _LONG.items()}
