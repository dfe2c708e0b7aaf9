r"""The built-in benchmark's comparison for joint motion-image learning on the grounded FiLM-CNN policy.

  python -m lamp_jax.ablate --suite_config=configs/sim_film_cnn_trunk.py --methods=no_motion,motion_image,lamp \
      --seeds=3 --workdir=/tmp/ablate_film_cnn_trunk

The motion-image head is trained and never run at inference: it can change the policy only through parameters it
shares with the action head. In configs/sim_film_cnn.py the whole encoder is frozen, so there it could change
nothing; here every arm freezes only the keypoint trunk that stage 0 trains (film_cnn.keypoint_trunk_pattern), and
the encoder's last conv stage, token projections and embeddings learn with the policy (':film_cnn_trunk' variants
of configs/sim.py). Same demonstrations, stage 0, step budget (10,200 steps) and evaluation in every arm.
"""

from configs.sim import VARIANTS, get_config  # the variants and their configs are configs/sim.py's

__all__ = ["ABLATION_METHODS", "VARIANTS", "get_config"]

ABLATION_METHODS = {
    "no_motion": ("film_cnn_trunk_no_motion_long", "smoke_film_cnn_trunk_no_motion"),
    "motion_image": ("film_cnn_trunk_motion_image_long", "smoke_film_cnn_trunk_motion_image"),
    "lamp": ("film_cnn_trunk_long", "smoke_film_cnn_trunk"),
}
