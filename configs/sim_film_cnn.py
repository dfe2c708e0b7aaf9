r"""The built-in benchmark's method comparison on the grounded FiLM-CNN encoder, at the long budget.

  python -m lamp_jax.ablate --suite_config=configs/sim_film_cnn.py --methods=lamp,no_motion,lara,lafp --seeds=3 \
      --workdir=/tmp/ablate_film_cnn
  python -m lamp_jax.train --config=configs/sim_film_cnn.py:film_cnn_lara_long --workdir=W   # one run by hand

Why a second suite: with the from-scratch PaliGemma of ``configs/sim.py`` no policy finds the named object within
the CPU budget (every method scores 25-30 %, put-on-plate and stack 0 %), so no method can show a difference
there. The ':film_cnn' policies (stage 0 grounds the encoder, which then stays frozen) read the cameras and reach
47.5 % at the long budget (seeds 0-2 pooled; docs/results.md). Every method here is built on that policy with the same
demonstrations, stage 0, frozen encoder, total step budget (10,200 steps: LaMP's 600 + 9,600, the others' 10,200)
and evaluation; the variants are configs/sim.py's (``GROUNDED_VARIANTS``), this file only declares the table.

Not here: π0 and π0 + motion image (π0's action expert reads PaliGemma's per-layer keys / values, which the
FiLM-CNN does not have) and latent-action pretraining (it pretrains the encoder, which these variants freeze).
'lara_frozen_lam', 'lafp' and 'lafp_bc' load a trained latent action model: add ``--config.init.lam.path=<a
configs/lam.py:sim_single_h8 run>`` to the ablate command (it reaches only
the methods whose config has the field), as in configs/sim.py.

Joint motion-image learning is not declared either: its head shapes the policy only through the features it
shares with the action head, and this encoder is frozen (token projections included), so the head could change
nothing but the optimizer's noise. The fair version, both arms on the ':film_cnn_trunk' freezing (the encoder's
last conv stage and projections learn), is configs/sim_film_cnn_trunk.py.
"""

from configs.sim import VARIANTS, get_config  # the variants and their configs are configs/sim.py's

__all__ = ["ABLATION_METHODS", "VARIANTS", "get_config"]

ABLATION_METHODS = {
    "lamp": ("film_cnn_long", "smoke_film_cnn"),
    "no_motion": ("film_cnn_no_motion_long", "smoke_film_cnn_no_motion"),
    "lara": ("film_cnn_lara_long", "smoke_film_cnn_lara"),
    "lara_frozen_lam": ("film_cnn_lara_frozen_long", "smoke_film_cnn_lara_frozen"),
    "lafp": ("film_cnn_lafp_long", "smoke_film_cnn_lafp"),
    "lafp_bc": ("film_cnn_lafp_bc_long", "smoke_film_cnn_lafp_bc"),
}
